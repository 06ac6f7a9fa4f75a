"""Train an SPR agent on an Atari 100k game.

    python -m launch.train --game=Pong --seed=0 --workdir=runs/pong_0
    python -m launch.train --game=Pong --config=smoke --workdir=/tmp/smoke
    python -m launch.train --game=Pong --workdir=DIR --steps=50000 --spr_weight=2

Every field of `agents.spr.config.SPRConfig` is a flag of the same name that overrides the named
configuration. Re-running the same command on the same workdir resumes from the last
checkpoint; a finished run says so and exits 0. Exit codes: 0 done, 2 bad input, 3 non-finite
loss (the last good checkpoint is kept),
143 stopped by SIGTERM after writing a checkpoint (rerun to resume).
"""
from __future__ import annotations

import dataclasses
import sys

from absl import app, flags, logging

from agents.spr import config as spr_config

_GAME = flags.DEFINE_string("game", "Pong", "Atari 100k game (ALE name, case-insensitive).")
_SEED = flags.DEFINE_integer("seed", 0, "Run seed (network init, exploration, env no-ops).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the run (created; resumed if present).")
_CONFIG = flags.DEFINE_string("config", "spr", f"Named configuration: {sorted(spr_config.CONFIGS)}.")

# One override flag per config field, parsed by the config module (typed, with clear errors).
_OVERRIDES = {
    f.name: flags.DEFINE_string(f.name, None, f"Override of config field {f.name} "
                                f"(default of 'spr': {f.default!r}).")
    for f in dataclasses.fields(spr_config.SPRConfig)
}


def fail(message: str, code: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def resolve_config():
  overrides = {}
  for name, flag in _OVERRIDES.items():
    if flag.value is not None:
      overrides[name] = spr_config.parse_value(name, flag.value)
  return spr_config.make_config(_CONFIG.value, overrides)


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  # Imported here so that `--help` and bad flags answer without loading JAX.
  from agents.spr import trainer
  from envs import games
  from launch.common import configure_jax_cache
  from spr.workdir import WorkdirError

  configure_jax_cache()

  if not _WORKDIR.value:
    fail("--workdir is required")
  try:
    game = games.canonical_name(_GAME.value)
    config = resolve_config()
  except ValueError as e:
    fail(str(e))
  try:
    final = trainer.train(game, _SEED.value, config, _WORKDIR.value, config_name=_CONFIG.value)
  except WorkdirError as e:
    fail(str(e))
  except trainer.NonFiniteLossError as e:
    fail(str(e), code=3)
  except trainer.Preempted as e:
    fail(str(e), code=143)
  print(f"{final['game']} seed {final['seed']}: mean score {final['mean_score']:.2f} over "
        f"{final['eval_episodes']} episodes, HNS {final['hns']:.3f} "
        f"({final['steps']} steps, {_WORKDIR.value}/final.json)")


def run():
  logging.set_verbosity(logging.INFO)
  app.run(main)


if __name__ == "__main__":
  run()
