"""SGI pretraining (reward-free) on logged Atari data in the DQN Replay layout.

    python -m launch.pretrain --data_dir=DIR --games=Pong --workdir=W
    python -m launch.pretrain --data_dir=DIR --games=Pong --workdir=W --config=smoke
    python -m launch.pretrain --data_dir=DIR --games=MsPacman --checkpoints=1,25,50 --workdir=W

DIR/<Game>/<run>/replay_logs/... as written by `launch.collect` or the real DQN Replay Dataset.
Observations are decompressed once into `.npy` files (default: `npy_cache/` beside each run's
replay_logs; --cache_dir to put them elsewhere) and memory-mapped. Every field of
`agents.sgi.config.SGIConfig` is a flag of the same name. Re-running resumes from the last
checkpoint; finetune with `python -m launch.train --config=sgi --init_from=W`.
Exit codes (launch/common.py): 0 done, 2 bad input (flags, missing/corrupt data), 3 non-finite
loss, 74 a file-system error.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from agents.sgi import config as sgi_config
from launch import common

_DATA_DIR = flags.DEFINE_string("data_dir", None, "Root of the data: <data_dir>/<Game>/<run>/...")
_GAMES = flags.DEFINE_string("games", "Pong", "Comma-separated games to pretrain on.")
_RUNS = flags.DEFINE_string("runs", "", "Comma-separated run folders (default: all).")
_CHECKPOINTS = flags.DEFINE_string(
    "checkpoints", "", "Comma-separated checkpoint indices " "(default: all found)."
)
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir",
    "",
    "Folder for the decompressed .npy frames " "(default: npy_cache/ beside each replay_logs).",
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder of the run (created; resumed if present).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed (network init, sampling, augmentation).")
_CONFIG = flags.DEFINE_string(
    "config", "sgi_m", f"Named configuration: {sorted(sgi_config.CONFIGS)}."
)
_OVERRIDES = {
    f.name: flags.DEFINE_string(
        f.name, None, f"Override of config field {f.name} " f"(default of 'sgi_m': {f.default!r})."
    )
    for f in dataclasses.fields(sgi_config.SGIConfig)
}


def _list(text: str) -> list[str]:
  return [t.strip() for t in text.split(",") if t.strip()]


def main():
  from agents.sgi import pretrainer
  from envs import games as games_lib

  common.configure_jax_cache()
  if not _WORKDIR.value:
    common.fail("--workdir is required")
  if not _DATA_DIR.value:
    common.fail("--data_dir is required")
  # A ValueError here is bad input, in the flags or in the data (games with different action
  # sets, a run or checkpoint that is not there).
  with common.bad_input():
    games = [games_lib.canonical_name(g) for g in _list(_GAMES.value)]
    if not games:
      raise ValueError("--games is empty")
    checkpoints = [int(c) for c in _list(_CHECKPOINTS.value)]
    overrides = {
        n: sgi_config.parse_value(n, f.value) for n, f in _OVERRIDES.items() if f.value is not None
    }
    config = sgi_config.make_config(_CONFIG.value, overrides)
    final = pretrainer.pretrain(
        _DATA_DIR.value,
        games,
        config,
        _WORKDIR.value,
        config_name=_CONFIG.value,
        seed=_SEED.value,
        runs=_list(_RUNS.value) or None,
        checkpoints=checkpoints or None,
        cache_dir=_CACHE_DIR.value or None,
    )
  print(
      f"pretrained on {','.join(final['games'])}: {final['steps']} steps, "
      f"{final['samples_per_s']:.1f} samples/s ({_WORKDIR.value}/pretrained.npz)"
  )


def run():
  common.run(main, verbose=True)


if __name__ == "__main__":
  run()
