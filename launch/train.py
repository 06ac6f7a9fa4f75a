"""Train an SPR agent on an Atari 100k game.

    python -m launch.train --game=Pong --seed=0 --workdir=runs/pong_0
    python -m launch.train --game=Pong --config=smoke --workdir=/tmp/smoke
    python -m launch.train --game=Pong --workdir=DIR --steps=50000 --spr_weight=2
    python -m launch.train --games=Pong,Breakout --seeds=0-3 --workdir=runs/spr   # 8 runs, 1 process

With --games and/or --seeds (lists) every (game, seed) pair is its own run, trained together in
one process (agents/spr/engine.py: one vmapped jitted step per batch of runs with the same
action count), each in `<workdir>/<Game>/seed_<seed>` with the files a single run writes (a
sweep's layout is ROOT/<label>/<Game>/seed_<s>: pass --workdir=ROOT/<label> to share it).
Periodic (--eval_every) and final evaluations of a batch run together, and --init_from loads the
pretrained network into every new run, as for a single run.

Every field of `agents.spr.config.SPRConfig` is a flag of the same name that overrides the named
configuration. Re-running the same command on the same workdir resumes from the last
checkpoint; a finished run says so and exits 0. Exit codes (launch/common.py): 0 done, 2 bad
input (or a workdir in use), 3 non-finite loss (the last good checkpoint is kept), 74 a
file-system error, 130 / 143 stopped by Ctrl-C / SIGTERM after writing a checkpoint (rerun to
resume).
"""

from __future__ import annotations

import dataclasses

from absl import flags

from agents.spr import config as spr_config
from launch import common, grid

_GAME = flags.DEFINE_string("game", "Pong", "Atari 100k game (ALE name, case-insensitive).")
_SEED = flags.DEFINE_integer("seed", 0, "Run seed (network init, exploration, env no-ops).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the run (created; resumed if present).")
_CONFIG = flags.DEFINE_string(
    "config", "spr", f"Named configuration: {sorted(spr_config.CONFIGS)}."
)
_GAMES = flags.DEFINE_string("games", None, "Several games, comma-separated: multi-run mode.")
_DONE_CHECKPOINTS = flags.DEFINE_enum(
    "done_checkpoints",
    "last",
    ["last", "all", "none"],
    "Checkpoints a finished run keeps: the last (what re-running its final evaluation needs), "
    "all, or none (only its outputs: config.json, metrics.jsonl, eval.csv, final.json).",
)
_SEEDS = flags.DEFINE_string("seeds", None, "Several seeds ('0-3', '0,2,5'): multi-run mode.")
_ENV_WORKERS = flags.DEFINE_integer(
    "env_workers",
    -1,
    "Worker processes stepping the emulators: the evaluation envs, and in "
    "multi-run mode the training envs too (0: all in this process; -1: one per core but one, "
    "none on a machine with 2 cores or fewer). Results do not depend on it.",
)

# One override flag per config field, parsed by the config module (typed, with clear errors).
_OVERRIDES = {
    f.name: flags.DEFINE_string(
        f.name, None, f"Override of config field {f.name} " f"(default of 'spr': {f.default!r})."
    )
    for f in dataclasses.fields(spr_config.SPRConfig)
}


def resolve_config():
  overrides = {}
  for name, flag in _OVERRIDES.items():
    if flag.value is not None:
      overrides[name] = spr_config.parse_value(name, flag.value)
  return spr_config.make_config(_CONFIG.value, overrides)


def main():
  # Imported here so that `--help` and bad flags answer without loading JAX.
  from agents.spr import trainer
  from envs import games

  common.configure_jax_cache()
  if not _WORKDIR.value:
    common.fail("--workdir is required")
  with common.bad_input():
    game = games.canonical_name(_GAME.value)
    config = resolve_config()
  if _SEED.value < 0:
    common.fail(f"--seed must be >= 0, got {_SEED.value}")
  if _ENV_WORKERS.value < -1:
    common.fail(
        f"--env_workers must be -1 (auto), 0 (in this process) or more, got "
        f"{_ENV_WORKERS.value}"
    )
  if _GAMES.value is not None or _SEEDS.value is not None:
    return _main_many(config)
  final = trainer.train(
      game,
      _SEED.value,
      config,
      _WORKDIR.value,
      config_name=_CONFIG.value,
      env_workers=_ENV_WORKERS.value,
  )
  _prune_done(_WORKDIR.value)
  _print_final(final, _WORKDIR.value)


def _print_final(final: dict, workdir) -> None:
  print(
      f"{final['game']} seed {final['seed']}: mean score {final['mean_score']:.2f} over "
      f"{final['eval_episodes']} episodes, HNS {final['hns']:.3f} "
      f"({final['steps']} steps, {workdir}/final.json)"
  )


def _prune_done(workdir) -> None:
  """A finished run's checkpoints, as --done_checkpoints says (a checkpoint holds the whole
  replay: ~0.75 GB for spr, ~2 GB for bbf)."""
  from pathlib import Path

  from spr import checkpoint

  keep = {"last": 1, "all": None, "none": 0}[_DONE_CHECKPOINTS.value]
  if keep is not None:
    checkpoint.prune(Path(workdir) / "checkpoints", keep)


def _main_many(config) -> None:
  """--games / --seeds: every (game, seed) pair trained together in one process."""
  from agents.spr import multi_trainer
  from envs import games

  with common.bad_input():
    game_list = [
        games.canonical_name(g)
        for g in (_GAMES.value.split(",") if _GAMES.value else [_GAME.value])
        if g.strip()
    ]
    seeds = grid.parse_seeds(_SEEDS.value) if _SEEDS.value else [_SEED.value]
  if len(set(game_list)) != len(game_list):
    common.fail(f"duplicate games in --games={_GAMES.value}")
  specs = [
      multi_trainer.RunSpec(g, s, multi_trainer.run_workdir(_WORKDIR.value, g, s))
      for g in game_list
      for s in seeds
  ]
  finals = multi_trainer.train_many(specs, config, _CONFIG.value, env_workers=_ENV_WORKERS.value)
  for spec, final in zip(specs, finals):
    _prune_done(spec.workdir)
    _print_final(final, spec.workdir)


def run():
  common.run(main, verbose=True)


if __name__ == "__main__":
  run()
