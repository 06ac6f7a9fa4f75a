"""Statistics for sweep reports: per-game CIs over seeds and rliable aggregates.

Aggregates (IQM, median, mean, optimality gap of human-normalised scores) and their 95%
stratified-bootstrap CIs come from rliable (Agarwal et al. 2021). rliable ignores its
`random_state`: `aggregate_estimates` seeds numpy's global RNG so a given seed gives the same CIs.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

METRICS = ("IQM", "Median", "Mean", "Optimality gap")


def hns(score, random: float, human: float):
  """Human-normalised score: (score - random) / (human - random)."""
  return (np.asarray(score, dtype=float) - random) / (human - random)


@dataclasses.dataclass
class Interval:
  mean: float
  lo: float
  hi: float
  n: int


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
  """Mean over seeds with a Student-t CI (nan bounds for fewer than 2 values)."""
  x = np.asarray(values, dtype=float)
  n = int(x.size)
  if n == 0:
    return Interval(float("nan"), float("nan"), float("nan"), 0)
  m = float(x.mean())
  if n < 2:
    return Interval(m, float("nan"), float("nan"), n)
  from scipy import stats as sps  # pylint: disable=import-outside-toplevel

  half = float(sps.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / np.sqrt(n))
  return Interval(m, m - half, m + half, n)


def _aggregate_fn(x: np.ndarray) -> np.ndarray:
  from rliable import metrics  # pylint: disable=import-outside-toplevel

  return np.array(
      [
          metrics.aggregate_iqm(x),
          metrics.aggregate_median(x),
          metrics.aggregate_mean(x),
          metrics.aggregate_optimality_gap(x),
      ]
  )


def aggregate_estimates(
    score_dict: Mapping[str, np.ndarray], reps: int = 50000, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, tuple[float, float, float]]]:
  """algorithm -> metric -> (point, lo, hi); score_dict: algorithm -> (runs x games) HNS."""
  from rliable import library as rly  # pylint: disable=import-outside-toplevel

  out: dict[str, dict[str, tuple[float, float, float]]] = {}
  for (
      algo,
      scores,
  ) in score_dict.items():  # one call per algorithm: its CIs do not depend on the others
    scores = np.asarray(scores, float)
    if scores.shape[0] == 1:  # one run per game (published numbers): resampling is degenerate
      point = _aggregate_fn(scores)
      out[algo] = {m: (float(point[i]),) * 3 for i, m in enumerate(METRICS)}
      continue
    np.random.seed(seed)
    points, cis = rly.get_interval_estimates(
        {algo: scores}, _aggregate_fn, reps=reps, confidence_interval_size=level
    )
    out[algo] = {
        m: (float(points[algo][i]), float(cis[algo][0, i]), float(cis[algo][1, i]))
        for i, m in enumerate(METRICS)
    }
  return out


def performance_profiles(
    score_dict: Mapping[str, np.ndarray], tau: np.ndarray, reps: int = 2000, seed: int = 0
):
  """rliable score-distribution profiles with stratified-bootstrap CIs (seeded)."""
  from rliable import library as rly  # pylint: disable=import-outside-toplevel

  np.random.seed(seed)
  return rly.create_performance_profile(
      {k: np.asarray(v, float) for k, v in score_dict.items()}, tau, reps=reps
  )


def balanced(
    per_game: Mapping[str, Sequence[tuple[int, float]]], games: Sequence[str]
) -> tuple[np.ndarray, int]:
  """(seed, value) lists per game -> (n x games) matrix with the n lowest seeds of each game,
  n = the fewest seeds any game has (rliable needs the same number of runs per game)."""
  n = min(len(per_game.get(g, ())) for g in games) if games else 0
  cols = [[v for _, v in sorted(per_game[g])[:n]] for g in games]
  return np.asarray(cols, dtype=float).T.reshape(n, len(games)), n
