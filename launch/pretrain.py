"""SGI pretraining (reward-free) on logged Atari data in the DQN Replay layout.

    python -m launch.pretrain --data_dir=DIR --games=Pong --workdir=W
    python -m launch.pretrain --data_dir=DIR --games=Pong --workdir=W --config=smoke
    python -m launch.pretrain --data_dir=DIR --games=MsPacman --checkpoints=1,25,50 --workdir=W

DIR/<Game>/<run>/replay_logs/... as written by `launch.collect` or the real DQN Replay Dataset.
Observations are decompressed once into `.npy` files (default: `npy_cache/` beside each run's
replay_logs; --cache_dir to put them elsewhere) and memory-mapped. Every field of
`agents.sgi.config.SGIConfig` is a flag of the same name. Re-running resumes from the last
checkpoint; finetune with `python -m launch.train --config=sgi --init_from=W`.
Exit codes: 0 done, 2 bad input (flags, missing/corrupt data), 3 non-finite loss.
"""
from __future__ import annotations

import dataclasses

from absl import app, flags, logging

from launch.common import IO_ERROR, fail, io_error, parse_flags
from agents.sgi import config as sgi_config

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Root of the data: <data_dir>/<Game>/<run>/...")
_GAMES = flags.DEFINE_string("games", "Pong", "Comma-separated games to pretrain on.")
_RUNS = flags.DEFINE_string("runs", "", "Comma-separated run folders (default: all).")
_CHECKPOINTS = flags.DEFINE_string("checkpoints", "", "Comma-separated checkpoint indices "
                                   "(default: all found).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", "", "Folder for the decompressed .npy frames "
                                 "(default: npy_cache/ beside each replay_logs).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the run (created; resumed if present).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed (network init, sampling, augmentation).")
_CONFIG = flags.DEFINE_string("config", "sgi_m", f"Named configuration: {sorted(sgi_config.CONFIGS)}.")
_OVERRIDES = {
    f.name: flags.DEFINE_string(f.name, None, f"Override of config field {f.name} "
                                f"(default of 'sgi_m': {f.default!r}).")
    for f in dataclasses.fields(sgi_config.SGIConfig)
}


def _list(text: str) -> list[str]:
  return [t.strip() for t in text.split(",") if t.strip()]


def main(argv):
  if len(argv) > 1:
    fail(f"unexpected arguments: {' '.join(argv[1:])}")
  from agents.sgi import pretrainer
  from envs import games as games_lib
  from launch.common import configure_jax_cache
  from spr.dqn_replay import DataError
  from spr.checkpoint import CheckpointError
  from spr.workdir import WorkdirError

  configure_jax_cache()
  if not _WORKDIR.value:
    fail("--workdir is required")
  if not _DATA_DIR.value:
    fail("--data_dir is required")
  try:
    games = [games_lib.canonical_name(g) for g in _list(_GAMES.value)]
    if not games:
      raise ValueError("--games is empty")
    checkpoints = [int(c) for c in _list(_CHECKPOINTS.value)]
    overrides = {n: sgi_config.parse_value(n, f.value) for n, f in _OVERRIDES.items()
                 if f.value is not None}
    config = sgi_config.make_config(_CONFIG.value, overrides)
  except ValueError as e:
    fail(str(e))
  try:
    final = pretrainer.pretrain(_DATA_DIR.value, games, config, _WORKDIR.value,
                                config_name=_CONFIG.value, seed=_SEED.value,
                                runs=_list(_RUNS.value) or None, checkpoints=checkpoints or None,
                                cache_dir=_CACHE_DIR.value or None)
  except (WorkdirError, DataError, CheckpointError) as e:
    fail(str(e))
  except ValueError as e:  # e.g. games with different action sets
    fail(str(e))
  except pretrainer.NonFiniteLossError as e:
    fail(str(e), code=3)
  except OSError as e:  # a workdir under a file, unwritable, a full disk: nothing saved is lost
    fail(io_error(e), code=IO_ERROR)
  print(f"pretrained on {','.join(final['games'])}: {final['steps']} steps, "
        f"{final['samples_per_s']:.1f} samples/s ({_WORKDIR.value}/pretrained.npz)")


def run():
  logging.set_verbosity(logging.INFO)
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
