"""Evaluating the policies of one or many runs, and writing a run's results.

A run's evaluation episodes depend only on its acting parameters and its seed: the periodic
evaluations use `periodic_eval_seed(seed, step)` and the final one `final_eval_seed(seed)`, and
the episodes' envs are seeded from those by `envs.evaluation`. Runs evaluated together (a group
of the engine) act through one jitted call over the run axis and play in one env pool, and each
gets the episodes it gets alone (tests/test_multi_eval.py).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from agents.spr.config import SPRConfig
from agents.spr.learner import SPRLearner
from envs import games
from envs.evaluation import evaluate_runs
from envs.pool import EnvPool
from spr import workdir as wd

EVAL_SEED_OFFSET = 1_000_003  # evaluation envs use their own seed stream
# Envs alive at once in one batched evaluation (each holds an emulator, ~1 MB of host memory);
# a group with more runs x episodes is evaluated in chunks of whole runs.
MAX_EVAL_ENVS = 4096


def final_eval_seed(seed: int) -> int:
  """Seed of a run's final evaluation (`envs.evaluation.evaluate` derives the episodes' from it)."""
  return int(seed) + EVAL_SEED_OFFSET


def periodic_eval_seed(seed: int, step: int) -> int:
  """Seed of the periodic evaluation at env step `step`: derived from the step, so a resumed
  run replays the same evaluation."""
  return int(seed) + EVAL_SEED_OFFSET + 7919 * int(step)


def eval_record(step: int, elapsed: float, episodes: list[tuple[float, int]]) -> dict:
  """The metrics.jsonl line of a periodic evaluation."""
  scores = [s for s, _ in episodes]
  return dict(
      step=step,
      time_s=round(elapsed, 3),
      eval_mean_score=float(np.mean(scores)),
      eval_episodes=len(scores),
  )


# ------------------------------------------------------------------------------ act functions
def make_eval_act_fn(learner: SPRLearner, params, batch: int) -> Callable[[np.ndarray], np.ndarray]:
  """Batched greedy actions of one run (noise off, no augmentation); pads to a fixed batch so
  that the evaluation compiles once whatever the number of episodes still running."""

  def act(stacks: np.ndarray) -> np.ndarray:
    n = stacks.shape[0]
    if n >= batch:  # already full size (the evaluator pads to powers of two): no copy
      return np.asarray(learner.greedy_actions(params, stacks))
    padded = np.zeros((batch,) + stacks.shape[1:], np.uint8)
    padded[:n] = stacks
    return np.asarray(learner.greedy_actions(params, padded))[:n]

  return act


@functools.lru_cache(maxsize=None)
def batched_greedy(learner: SPRLearner):
  """The single-run greedy action function (noise off) over a leading run axis of the acting
  parameters and the stacks, jitted: one call acts for every episode of every run.

  vmapped on accelerators; on CPU `lax.map` (a loop over runs inside the one call): convolutions
  vmapped over per-run weights are about 2x slower there (docs/BENCHMARKS.md, probes); the mapped
  actions equal the separate calls'."""
  greedy = learner._greedy_actions  # pylint: disable=protected-access
  if jax.default_backend() == "cpu":
    return jax.jit(lambda acting, stacks: jax.lax.map(lambda a: greedy(*a), (acting, stacks)))
  return jax.jit(jax.vmap(greedy))


def make_runs_eval_act_fn(learner: SPRLearner, acting: Any, batch: int):
  """`envs.evaluation.evaluate_runs`'s act_fn for acting parameters stacked over R runs: uint8
  [R, B, 4, 84, 84] -> [R, B]. Pads every run to `batch` rows, as `make_eval_act_fn` does, so
  each run's network sees the batch shape it sees alone and the evaluation compiles once."""
  fn = batched_greedy(learner)

  def act(stacks: np.ndarray) -> np.ndarray:
    n = stacks.shape[1]
    if n >= batch:
      return np.asarray(fn(acting, stacks))
    padded = np.zeros((stacks.shape[0], batch) + stacks.shape[2:], np.uint8)
    padded[:, :n] = stacks
    return np.asarray(fn(acting, padded))[:, :n]

  return act


def select_runs(tree: Any, rows: list[int]) -> Any:
  """Runs `rows` of a pytree stacked over runs (a gather on the device)."""
  index = np.asarray(rows, np.int32)
  return jax.tree.map(lambda x: x[index], tree)


# ------------------------------------------------------------------------------ evaluation
def evaluate_policies(
    learner: SPRLearner,
    acting: Any,
    runs: list[tuple[str, int]],
    num_episodes: int,
    epsilon: float,
    pool: EnvPool | None = None,
    protocol: str = "dopamine",
    stacked: bool = True,
) -> list[list]:
  """`num_episodes` evaluation episodes of each run, all runs together: run r is (game, seed)
  `runs[r]` acting with row r of `acting` (stacked over runs; `stacked=False`: one run's own
  acting parameters). Returns one episode list per run, what `envs.evaluation.evaluate` returns
  for that run alone. `pool` steps the envs; `protocol`: the runs' `config.env_protocol`."""
  if not stacked:
    act = make_eval_act_fn(learner, acting, num_episodes)
    one_run = lambda stacks: np.asarray(act(stacks[0])).reshape(1, -1)
    return evaluate_runs(one_run, runs, num_episodes, epsilon=epsilon, pool=pool, protocol=protocol)
  per_chunk = max(1, MAX_EVAL_ENVS // num_episodes)
  results: list[list] = []
  for lo in range(0, len(runs), per_chunk):
    rows = list(range(lo, min(lo + per_chunk, len(runs))))
    part = acting if len(rows) == len(runs) else select_runs(acting, rows)
    act = make_runs_eval_act_fn(learner, part, num_episodes)
    results.extend(
        evaluate_runs(
            act,
            runs[lo : lo + per_chunk],
            num_episodes,
            epsilon=epsilon,
            pool=pool,
            protocol=protocol,
        )
    )
  return results


def write_final(
    path: Path,
    episodes: list[tuple[float, int]],
    host: dict,
    game: str,
    seed: int,
    config: SPRConfig,
    config_name: str,
    eval_seconds: float,
) -> dict:
  """Writes eval.csv, then final.json (last: it marks the run done); returns final.json's dict."""
  wd.write_eval_csv(path, episodes)
  scores = [s for s, _ in episodes]
  mean = float(np.mean(scores)) if scores else math.nan
  final = dict(
      game=game,
      seed=int(seed),
      config_name=config_name,
      steps=int(host["step"]),
      budget_steps=int(config.steps),
      eval_episodes=len(episodes),
      mean_score=mean,
      # Catch (a non-Atari sanity task) has no human-normalised score: NaN, as without scores.
      hns=(
          games.human_normalized_score(game, mean) if scores and games.is_atari(game) else math.nan
      ),
      wall_time_s=round(host["elapsed"] + eval_seconds, 2),
      train_episodes=len(host["episodes"]),
  )
  wd.write_json_atomic(path / wd.FINAL, final)
  logging.info(
      "finished %s seed %d: mean score %.2f over %d episodes (HNS %.3f)",
      game,
      seed,
      mean,
      len(episodes),
      final["hns"],
  )
  return final
