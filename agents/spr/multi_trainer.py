"""Many independent SPR / BBF runs (seeds and games) trained together in one process.

    finals = train_many([RunSpec("Pong", 0, "runs/spr/Pong/seed_0"), ...], config, "spr")

The runs go through the engine (agents/spr/engine.py), which groups them by action count and
advances each group with one vmapped learner call per env step. Each run's workdir is exactly
what `agents.spr.trainer.train` writes for the same run, so sweeps and reports read them alike,
and a run started in a batch can be resumed alone (or the other way round).
"""

from __future__ import annotations

from pathlib import Path

from agents.spr import engine
from agents.spr.config import SPRConfig
from agents.spr.engine import RunSpec
from envs import games


def run_workdir(root: str | Path, game: str, seed: int) -> Path:
  """The workdir of one run of a multi-run command: `<root>/<Game>/seed_<seed>` (a sweep,
  launch/grid.py, uses `ROOT/<label>/<Game>/seed_<s>`: pass `ROOT/<label>` as the root)."""
  return Path(root) / games.canonical_name(game) / f"seed_{int(seed)}"


def train_many(
    specs: list[RunSpec],
    config: SPRConfig,
    config_name: str = "spr",
    progress: bool | None = None,
    env_workers: int = -1,
) -> list[dict]:
  """Trains (or resumes) every run of `specs` together; returns their final.json contents in
  the order of `specs` (`engine.train_runs`)."""
  return engine.train_runs(specs, config, config_name, progress, env_workers)


__all__ = ["RunSpec", "train_many", "run_workdir"]
