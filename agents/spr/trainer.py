"""One SPR / BBF training run: train, checkpoint, resume, evaluate, report.

    final = train("Pong", 0, make_config("spr"), "runs/spr/Pong/seed_0")

A run alone is a set of one run of the engine (agents/spr/engine.py): the same loop, checkpoints
and evaluations as a run trained with others, on the learner's own (unbatched) jitted step.
Everything needed to continue exactly is checkpointed, so a resumed run produces the same result
as an uninterrupted one.
"""

from __future__ import annotations

from pathlib import Path

from agents.spr import engine
from agents.spr.config import SPRConfig

# The names entry points and tests use for one run.
from agents.spr.engine import RunSpec, run_identity, start_or_resume  # pylint: disable=unused-import
from agents.spr.evaluation import (
    final_eval_seed,
    make_eval_act_fn,  # pylint: disable=unused-import
    periodic_eval_seed,
    write_final,
)
from spr.runtime import NonFiniteLossError, Preempted  # pylint: disable=unused-import


def train(
    game: str,
    seed: int,
    config: SPRConfig,
    workdir: str | Path,
    config_name: str = "spr",
    env_workers: int = -1,
) -> dict:
  """Trains (or resumes) one run and returns the contents of its final.json.

  `env_workers`: processes stepping the envs; 0: in this process; -1: `envs.pool.auto_workers`
  (none on a 2-core machine). Results do not depend on it."""
  [final] = engine.train_runs(
      [RunSpec(game, seed, workdir)], config, config_name, env_workers=env_workers
  )
  return final
