r"""Tables and plots of a sweep: per-game scores beside the published ones, rliable aggregates.

  python -m launch.report --root=DIR --out=OUT [--root=DIR2 ...] [--reps=50000] [--seed=0]

Reads every run (final.json, eval.csv, metrics.jsonl, config.json) in any of these layouts:
  ROOT/<label>/<game>/seed_<s>/  a launch.sweep root (ROOT/<label>/sweep.json: the runs asked for);
                                 ROOT may also be one <label> folder of a sweep
  ROOT/<game>/seed_<s>/          a `launch.train --games/--seeds --workdir=ROOT` root; its label is
                                 the runs' config_name (config.json), else ROOT's folder name
  ROOT/                          one run's workdir (config.json or final.json in ROOT)
A root holding no run in any of them is an error (exit 2). Writes to OUT:
  report.md             everything below as Markdown, with warnings
  runs.csv              one row per run: state, score, HNS, steps, budget, note
  per_game.csv          per configuration and game: seeds, mean and 95% t-CI over seeds, mean HNS,
                        and the random, human, DER, SPR, BBF columns of scores.csv
  aggregates.csv        IQM, median, mean, optimality gap of HNS with 95% stratified-bootstrap CIs
  interval_estimates.png, performance_profile.png, learning_curves.png (periodic evals from
                        metrics.jsonl, else training returns; only if some run logged them)
  diagnostics.png       the representation diagnostics (`diag_` lines of metrics.jsonl: srank,
                        dormant units, SPR cosine, ...), when some run logged them
A configuration whose budget is not 100k env steps, or whose runs use a test-size network (the
`smoke` and `bbf_smoke` configs: CPU-size runs, not SPR or BBF results), is marked "NOT 100k" in
the tables and plots.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import math
import textwrap
from pathlib import Path
from typing import Collection, Sequence

import numpy as np
from absl import flags

from envs import games
from launch import common, grid, runstate, stats
from spr import workdir as run_files

PUBLISHED = ("DER", "SPR", "BBF")
NOT_100K = "NOT 100k"  # the mark of a configuration that is not an Atari 100k result
# Named configs of a test-size network (agents/spr/config.py): their runs are never read as an
# Atari 100k result, whatever their budget.
TEST_SIZE_CONFIGS = ("smoke", "bbf_smoke")


class NoRunsError(FileNotFoundError):
  """A root that holds no run in any layout the report reads (a one-line message)."""


@dataclasses.dataclass
class RunRecord:
  label: str
  game: str  # the score tables' key: ROM id (`ms_pacman`); a game not in them as written
  seed: int
  workdir: str
  state: str  # done | partial | pending | running | failed | interrupted
  score: float | None = None
  hns: float | None = None
  steps: int | None = None
  budget: int | None = None
  eval_episodes: int | None = None
  note: str = ""
  config_name: str = ""  # final.json's (the named config the run's settings started from)


@dataclasses.dataclass
class ConfigSummary:
  label: str
  games: list[str]  # games with at least one finished run
  asked_games: list[str]
  asked_seeds: int
  seeds: dict[str, int]  # game -> finished runs
  budgets: list[int]
  is_100k: bool
  warnings: list[str]


@dataclasses.dataclass
class ReportOptions:
  reps: int = 50000
  profile_reps: int = 2000
  seed: int = 0
  published: Sequence[str] = PUBLISHED
  expected_seeds: int = 0  # 0: from sweep.json, else the most seeds any game has
  scores_csv: str = ""
  plots: bool = True


# --------------------------------------------------------------------------------------------
# Reading runs
# --------------------------------------------------------------------------------------------
def _read_eval_csv(path: Path) -> list[float] | None:
  try:
    with open(path, newline="") as f:
      return [float(r["score"]) for r in csv.DictReader(f)]
  except (OSError, KeyError, ValueError):
    return None


def read_run(label: str, game: str, seed: int, wd: Path, table: dict) -> RunRecord:
  rec = RunRecord(label, game, seed, str(wd), "pending")
  final = run_files.read_final(wd)
  if final is None:
    st = runstate.read_state(wd)
    rec.state, rec.steps, rec.budget, rec.note = st.state, st.step, st.budget, st.error
    if run_files.final_is_broken(wd):
      rec.state, rec.note = "failed", (
          "final.json does not parse; rerun the run to redo " "its final evaluation"
      )
    return rec
  if final.get("game"):
    key = _table_key(str(final["game"]))
    if key is None:
      rec.note = f"unknown game {final['game']!r} in final.json"
    else:
      rec.game = key
  rec.steps = int(final["steps"]) if final.get("steps") is not None else None
  rec.budget = int(final["budget_steps"]) if final.get("budget_steps") is not None else rec.steps
  rec.eval_episodes = final.get("eval_episodes")
  rec.config_name = str(final.get("config_name") or "")
  rec.score = float(final["mean_score"]) if final.get("mean_score") is not None else None
  episodes = _read_eval_csv(wd / run_files.EVAL)
  if episodes:
    rec.eval_episodes = len(episodes)
    m = float(np.mean(episodes))
    if rec.score is None:
      rec.score = m
    elif not math.isclose(m, rec.score, rel_tol=1e-6, abs_tol=1e-6):
      rec.note = f"final.json mean_score {rec.score:g} != eval.csv mean {m:g}"
  elif (wd / run_files.EVAL).exists():
    rec.note = "eval.csv unreadable"
  if rec.score is None:
    rec.state, rec.note = "failed", "final.json without mean_score and no eval.csv"
    return rec
  if rec.steps is not None and rec.budget is not None and rec.steps < rec.budget:
    rec.state = "partial"
    rec.note = f"final.json at step {rec.steps} of a {rec.budget}-step budget"
  else:
    rec.state = "done"
  if rec.game in table:
    rec.hns = float(stats.hns(rec.score, table[rec.game]["random"], table[rec.game]["human"]))
  return rec


def _seed_dirs(d: Path) -> dict[Path, int]:
  """d/seed_<s> folders -> s."""
  out = {}
  for wd in d.glob("seed_*"):
    try:
      if wd.is_dir():
        out[wd] = int(wd.name.split("_", 1)[1])
    except ValueError:
      continue
  return out


def score_table(path: str = "") -> dict[str, dict[str, float]]:
  """The reference columns of each game of a score table (envs.games.read_scores; default the
  project's): ROM id -> {random, human, DER, SPR, BBF}, in file order."""
  try:
    rows = games.read_scores(path or None)
  except ValueError as e:
    raise grid.GridError(str(e)) from None
  return {
      g.rom: {"random": g.random, "human": g.human, "DER": g.der, "SPR": g.spr, "BBF": g.bbf}
      for g in rows
  }


def _table_key(name: str) -> str | None:
  """The score tables' key (ROM id) of an Atari 100k game in any spelling; None otherwise."""
  try:
    return grid.rom_id(grid.atari_game(name))
  except grid.GridError:
    return None


def _game_of_dir(name: str) -> str:
  """A game folder's or a sweep.json entry's game as the tables' key (folders and manifests
  name games canonically, `MsPacman`; older sweeps by ROM id)."""
  return _table_key(name) or name  # not one of the 26 (e.g. Catch): never aggregated


def _run_files(wd: Path) -> dict:
  """config.json, else final.json of a run (the identity a run records), else {}."""
  for name in (run_files.CONFIG, run_files.FINAL):
    d = runstate.read_json_object(wd / name)
    if d:
      return d
  return {}


def _is_run_dir(d: Path) -> bool:
  return (d / run_files.CONFIG).is_file() or (d / run_files.FINAL).is_file()


def _sweep_label(
    label_dir: Path, root_of_label: Path, label: str
) -> tuple[dict, dict[Path, tuple[str, int]]]:
  """A sweep's <label> folder: its manifest and every run asked for in it or present."""
  man = grid.read_manifest(label_dir) or {}
  wds: dict[Path, tuple[str, int]] = {}
  for g in man.get("games", []):
    for s in man.get("seeds", []):
      wds[grid.run_dir(root_of_label, label, g, s)] = (_game_of_dir(g), int(s))
  for game_dir in sorted(p for p in label_dir.iterdir() if p.is_dir()):
    for wd, seed in _seed_dirs(game_dir).items():
      wds.setdefault(wd, (_game_of_dir(game_dir.name), seed))
  return man, wds


def _multi_run_labels(root: Path, wds: Sequence[Path]) -> dict[Path, str]:
  """Label of each run of a `launch.train --games/--seeds` root: the config_name its config.json
  records (one label when the runs agree, the usual case); the root's folder name without one."""
  names = {wd: str(_run_files(wd).get("config_name") or "") for wd in wds}
  found = set(filter(None, names.values()))
  if len(found) == 1:
    name = found.pop()
    return {wd: name for wd in wds}
  return {wd: names[wd] or root.name for wd in wds}


def find_runs(root: Path) -> list[tuple[str, dict, dict[Path, tuple[str, int]]]]:
  """The runs of one root in any layout the report reads: [(label, manifest, {workdir: (game,
  seed)})], labels unprefixed. Raises NoRunsError when there is none (saying what it looked for)."""
  groups: list[tuple[str, dict, dict[Path, tuple[str, int]]]] = []
  if (root / "sweep.json").is_file():  # one <label> folder of a sweep
    man, wds = _sweep_label(root, root.parent, root.name)
    groups.append((root.name, man, wds))
  elif _is_run_dir(root):  # one run's workdir
    ident = _run_files(root)
    try:
      seed = (
          int(ident["seed"]) if ident.get("seed") is not None else int(root.name.split("_", 1)[1])
      )
    except (ValueError, IndexError):
      seed = 0
    game = _game_of_dir(str(ident.get("game") or root.parent.name))
    groups.append((str(ident.get("config_name") or root.name), {}, {root: (game, seed)}))
  else:
    multi: dict[Path, tuple[str, int]] = {}
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
      seeds = _seed_dirs(child)
      if seeds:  # ROOT/<game>/seed_<s>: launch.train --games/--seeds
        for wd, seed in seeds.items():
          multi[wd] = (_game_of_dir(child.name), seed)
        continue
      man, wds = _sweep_label(child, root, child.name)  # ROOT/<label>/<game>/seed_<s>
      if wds:
        groups.append((child.name, man, wds))
    labels = _multi_run_labels(root, list(multi))
    for lab in dict.fromkeys(labels.values()):
      groups.append((lab, {}, {wd: gs for wd, gs in multi.items() if labels[wd] == lab}))
  if not any(wds for _, _, wds in groups):
    raise NoRunsError(
        f"no runs under {root}: looked for <root>/<label>/<game>/seed_<s>/ (launch.sweep), "
        f"<root>/<game>/seed_<s>/ (launch.train --games/--seeds) and config.json or final.json "
        f"in {root} itself (one run)"
    )
  return groups


def collect(roots: Sequence[Path], table: dict) -> tuple[list[RunRecord], dict[str, dict]]:
  """Every run under the roots (present or asked for in sweep.json) -> records, manifests.
  With several roots, labels are prefixed by the root's folder name (`root/label`)."""
  records: list[RunRecord] = []
  manifests: dict[str, dict] = {}
  for root in roots:
    for lab, man, wds in find_runs(root):
      label = lab if len(roots) == 1 or lab == root.name else f"{root.name}/{lab}"
      manifests[label] = man
      for wd, (game, seed) in sorted(wds.items(), key=lambda kv: (kv[1][0], kv[1][1], str(kv[0]))):
        if game == grid.JOINT:
          continue  # multi-game pretraining: no per-game score
        records.append(read_run(label, game, seed, wd, table))
  return records, manifests


def summarise(
    label: str, recs: list[RunRecord], man: dict, opts: ReportOptions, all_games: Sequence[str]
) -> ConfigSummary:
  done = [r for r in recs if r.state == "done"]
  seeds: dict[str, int] = {}
  for r in done:
    seeds[r.game] = seeds.get(r.game, 0) + 1
  asked_games = list(
      dict.fromkeys(_game_of_dir(g) for g in man.get("games") or [])
      or dict.fromkeys(r.game for r in recs)
  )
  asked_seeds = opts.expected_seeds or len(man.get("seeds", [])) or max(seeds.values(), default=0)
  games = [g for g in all_games if g in seeds]
  budgets = sorted({r.budget for r in done if r.budget is not None})
  warnings = []
  is_100k = budgets == [grid.BUDGET_100K] and all(r.budget is not None for r in done)
  if done and not is_100k:
    warnings.append(
        f"budget {', '.join(map(str, budgets)) or 'unknown'} env steps: " "NOT an Atari 100k result"
    )
  small = sorted({r.config_name for r in done if r.config_name in TEST_SIZE_CONFIGS})
  if small:
    is_100k = False
    warnings.append(
        f"test-size network (config {', '.join(small)}): a CPU-size run, NOT an Atari 100k "
        "result and not comparable with the published scores"
    )
  partial = [r for r in recs if r.state == "partial"]
  if partial:
    warnings.append(
        f"{len(partial)} run(s) stopped before their budget (excluded), e.g. {partial[0].workdir}"
    )
  unfinished = [r for r in recs if r.state not in ("done", "partial")]
  if unfinished:
    by_state: dict[str, int] = {}
    for r in unfinished:
      by_state[r.state] = by_state.get(r.state, 0) + 1
    warnings.append(
        f"{len(unfinished)} run(s) not finished (excluded): "
        + ", ".join(f"{n} {s}" for s, n in sorted(by_state.items()))
    )
  few = [f"{g} ({seeds.get(g, 0)})" for g in asked_games if seeds.get(g, 0) < asked_seeds]
  if few:
    warnings.append(f"fewer than {asked_seeds} seeds: " + ", ".join(few))
  if len(games) < len(all_games):
    warnings.append(
        f"{len(games)} of {len(all_games)} games finished: aggregates are over "
        "these games only and not comparable with published 26-game aggregates"
    )
  short = sorted(
      {r.eval_episodes for r in done if r.eval_episodes is not None and r.eval_episodes < 100}
  )
  if short:
    warnings.append(f"final evaluation with {short[0]} episodes (the protocol uses 100)")
  notes = [r for r in done if r.note]
  if notes:
    warnings.append(f"{len(notes)} run(s) with notes, e.g. {notes[0].workdir}: {notes[0].note}")
  return ConfigSummary(label, games, asked_games, asked_seeds, seeds, budgets, is_100k, warnings)


# --------------------------------------------------------------------------------------------
# Building the report
# --------------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 1) -> str:
  if x is None or (isinstance(x, float) and math.isnan(x)):
    return "-"
  return f"{x:.{digits}f}"


def _write_csv(path: Path, rows: list[dict]) -> None:
  with open(path, "w", newline="") as f:
    if not rows:
      return
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)


def build(roots: Sequence[Path | str], out: Path | str, opts: ReportOptions) -> dict:
  """Writes the report files; returns {"aggregates", "per_game", "summaries", "records"}."""
  roots = [Path(r).expanduser().resolve() for r in roots]
  for r in roots:
    if not r.is_dir():
      raise FileNotFoundError(f"root {r} does not exist")
  out = Path(out)
  out.mkdir(parents=True, exist_ok=True)
  table = score_table(opts.scores_csv)
  all_games = list(table)
  records, manifests = collect(roots, table)
  labels = list(dict.fromkeys(r.label for r in records))
  summaries = {
      lab: summarise(
          lab, [r for r in records if r.label == lab], manifests.get(lab, {}), opts, all_games
      )
      for lab in labels
  }

  # per-game table
  per_game: list[dict] = []
  for lab in labels:
    for g in all_games:
      vals = [r for r in records if r.label == lab and r.game == g and r.state == "done"]
      if not vals and g not in summaries[lab].asked_games:
        continue
      iv = stats.mean_ci([r.score for r in vals])
      row = {
          "config": lab,
          "game": g,
          "seeds": iv.n,
          "seeds_asked": summaries[lab].asked_seeds,
          "mean": iv.mean,
          "ci_lo": iv.lo,
          "ci_hi": iv.hi,
          "hns_mean": float(np.mean([r.hns for r in vals])) if vals else float("nan"),
      }
      row.update({k: table[g][k] for k in ("random", "human", *PUBLISHED)})
      row["flag"] = "fewer seeds than asked" if iv.n < summaries[lab].asked_seeds else ""
      per_game.append(row)

  # aggregates on the games every configuration has finished
  agg_games = [g for g in all_games if labels and all(g in summaries[lab].games for lab in labels)]
  score_dict: dict[str, np.ndarray] = {}
  runs_per_game: dict[str, int] = {}
  for lab in labels:
    per = {
        g: [
            (r.seed, r.hns) for r in records if r.label == lab and r.game == g and r.state == "done"
        ]
        for g in agg_games
    }
    if agg_games:
      score_dict[lab], runs_per_game[lab] = stats.balanced(per, agg_games)
  for name in opts.published:
    if agg_games:
      score_dict[f"{name} (published)"] = np.array(
          [[stats.hns(table[g][name], table[g]["random"], table[g]["human"]) for g in agg_games]]
      )
      runs_per_game[f"{name} (published)"] = 1
  aggregates = stats.aggregate_estimates(score_dict, opts.reps, opts.seed) if score_dict else {}
  agg_rows = [
      {
          "algorithm": a,
          "metric": m,
          "point": v[0],
          "ci_lo": v[1],
          "ci_hi": v[2],
          "runs_per_game": runs_per_game[a],
          "games": len(agg_games),
          "atari_100k": (summaries[a].is_100k if a in summaries else True),
      }
      for a, ms in aggregates.items()
      for m, v in ms.items()
  ]

  # files
  _write_csv(out / "runs.csv", [dataclasses.asdict(r) for r in records])
  _write_csv(out / "per_game.csv", per_game)
  _write_csv(out / "aggregates.csv", agg_rows)
  not_100k = {lab for lab in labels if not summaries[lab].is_100k}
  figures = (
      _plots(out, score_dict, aggregates, records, labels, all_games, agg_games, not_100k, opts)
      if opts.plots
      else []
  )
  (out / "report.md").write_text(
      _markdown(
          roots,
          opts,
          labels,
          summaries,
          per_game,
          aggregates,
          runs_per_game,
          agg_games,
          all_games,
          table,
          figures,
      )
  )
  return {
      "aggregates": aggregates,
      "per_game": per_game,
      "summaries": summaries,
      "records": records,
      "agg_games": agg_games,
      "figures": figures,
  }


def _plot_label(algo: str, not_100k: Collection[str], width: int = 24) -> str:
  """A y-axis label: long names wrapped (not cut: two labels stay distinct), the mark below."""
  text = "\n".join(textwrap.wrap(algo, width, break_on_hyphens=False)) or algo
  return text + (f"\n({NOT_100K})" if algo in not_100k else "")


def interval_figure(
    aggregates: dict[str, dict[str, tuple[float, float, float]]],
    not_100k: Collection[str] = (),
    num_games: int | None = None,
):
  """The interval-estimate plot: per metric, each algorithm's point (tick) and 95% CI (bar).

  Drawn here rather than by rliable's plot_interval_estimates, whose fixed row height lets
  labels overlap and whose axes end at the data: each row gets the height its label needs,
  every axis spans its intervals, points and 0 (a negative IQM shows left of the 0 line), and
  configurations in `not_100k` are marked "(NOT 100k)" on their label (in red) and in a note.
  Returns the matplotlib Figure.
  """
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  algos = list(aggregates)
  labels = [_plot_label(a, not_100k) for a in algos]
  lines = max(lab.count("\n") + 1 for lab in labels)
  row_h = 0.16 * lines + 0.2  # inches per row: the tallest label fits with space between rows
  fig, axes = plt.subplots(
      1,
      len(stats.METRICS),
      figsize=(2.6 * len(stats.METRICS) + 1.6, row_h * len(algos) + 1.3),
      sharey=True,
      layout="constrained",
  )
  colors = dict(zip(algos, plt.cm.tab10.colors * 3))
  y = np.arange(len(algos))[::-1]  # first algorithm on top
  for ax, m in zip(axes, stats.METRICS):
    pts = np.array([aggregates[a][m][0] for a in algos])
    lo = np.array([aggregates[a][m][1] for a in algos])
    hi = np.array([aggregates[a][m][2] for a in algos])
    ax.barh(y, hi - lo, left=lo, height=0.6, color=[colors[a] for a in algos], alpha=0.75)
    ax.vlines(pts, y - 0.34, y + 0.34, color="k", lw=1.5)
    one = np.isclose(lo, hi)  # published rows: one number per game, no interval to draw
    ax.plot(pts[one], y[one], "D", color="k", ms=4)
    xmin, xmax = min(lo.min(), pts.min(), 0.0), max(hi.max(), pts.max(), 0.0)
    pad = 0.06 * (xmax - xmin or 1.0)
    ax.set_xlim(xmin - pad, xmax + pad)
    ax.axvline(0.0, color="0.5", lw=0.8, ls=":")
    ax.set_title(m, fontsize=10)
    ax.grid(True, axis="x", alpha=0.25)
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
      ax.spines[side].set_visible(False)
  axes[0].set_yticks(y, labels, fontsize=8)
  axes[0].set_ylim(-0.6, len(algos) - 0.4)
  for tick, a in zip(axes[0].get_yticklabels(), algos):
    if a in not_100k:
      tick.set_color("C3")
  games = f" over {num_games} game(s)" if num_games else ""
  fig.supxlabel(
      f"Human-normalised score{games} (bar: 95% stratified-bootstrap CI, tick: point "
      "estimate, diamond: one published number per game)",
      fontsize=8,
  )
  if not_100k:
    fig.text(
        0.0,
        0.0,
        f"({NOT_100K}): a budget other than 100k env steps or a test-size network, NOT an "
        "Atari 100k result (not comparable with the published rows)",
        fontsize=8,
        color="C3",
        va="top",
    )
  return fig


def _plots(
    out: Path, score_dict, aggregates, records, labels, all_games, agg_games, not_100k, opts
) -> list[str]:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from rliable import plot_utils  # pylint: disable=import-outside-toplevel

  figures = []
  if aggregates:
    algos = list(aggregates)
    fig = interval_figure(aggregates, not_100k, len(agg_games))
    fig.savefig(out / "interval_estimates.png", bbox_inches="tight", dpi=120)
    plt.close(fig)
    figures.append("interval_estimates.png")
    tau = np.linspace(0.0, 8.0, 81)
    profiles, profile_cis = stats.performance_profiles(
        score_dict, tau, opts.profile_reps, opts.seed
    )
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = dict(zip(algos, plt.cm.tab10.colors))
    plot_utils.plot_performance_profiles(
        profiles,
        tau,
        performance_profile_cis=profile_cis,
        ax=ax,
        colors=colors,
        xlabel=r"Human Normalized Score $(\tau)$",
    )
    from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel

    ax.legend(
        [Line2D([0], [0], color=colors[a], lw=2) for a in algos],
        [a + (f" ({NOT_100K})" if a in not_100k else "") for a in algos],
        loc="upper right",
        fontsize=8,
    )
    fig.savefig(out / "performance_profile.png", bbox_inches="tight", dpi=120)
    plt.close(fig)
    figures.append("performance_profile.png")
  # periodic evaluations if the runs have them; else the training-episode returns launch.train
  # logs (`train_return`, mean over the episodes ended since the previous metrics line)
  curve_key = "eval_mean_score"
  curves = _learning_curves(records, labels, curve_key)
  if not curves:
    curve_key = "train_return"
    curves = _learning_curves(records, labels, curve_key)
  games = [g for g in all_games if any(g in curves[lab] for lab in curves)] if curves else []
  if games:  # none when every run with a curve is outside the game table (e.g. Catch)
    ncol = min(6, len(games))
    nrow = -(-len(games) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3 * ncol, 2.4 * nrow), squeeze=False)
    for ax, g in zip(axes.flat, games):
      for lab in labels:
        if g in curves.get(lab, {}):
          steps, mean, lo, hi = curves[lab][g]
          ax.plot(steps, mean, label=lab + (f" ({NOT_100K})" if lab in not_100k else ""))
          ax.fill_between(steps, lo, hi, alpha=0.2)
      ax.set_title(g, fontsize=9)
      ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(games) :]:
      ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("env steps")
    fig.supylabel(
        ("eval mean score" if curve_key == "eval_mean_score" else "training return")
        + " (mean, min-max over seeds)"
    )
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=100)
    plt.close(fig)
    figures.append("learning_curves.png")
  panels = _diagnostic_curves(records, labels)
  if panels:
    ncol = min(4, len(panels))
    nrow = -(-len(panels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.4 * nrow), squeeze=False)
    for ax, (key, per_label) in zip(axes.flat, panels.items()):
      for lab, (steps, mean, lo, hi) in per_label.items():
        ax.plot(steps, mean, label=lab)
        ax.fill_between(steps, lo, hi, alpha=0.2)
      ax.set_title(key.removeprefix("diag_"), fontsize=9)
      ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
      ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.supxlabel("env steps")
    fig.supylabel("mean, min-max over the seeds of a line")
    fig.tight_layout()
    fig.savefig(out / "diagnostics.png", dpi=100)
    plt.close(fig)
    figures.append("diagnostics.png")
  return figures


# Representation diagnostics drawn by the report (SPRLearner.diagnostics; `diag_` lines of
# metrics.jsonl), in this order, when some run logged them.
DIAGNOSTIC_PANELS = (
    "diag_srank_latent",
    "diag_srank_projection",
    "diag_dormant_encoder",
    "diag_dormant_head",
    "diag_greedy_top_action_share",
    "diag_spr_cos",
    "diag_drift_projection",
    "diag_grad_norm_encoder",
    "diag_grad_norm_transition",
)


# Up to this many games, diagnostics are drawn per (label, game): a collapse in one game is not
# averaged away by the others; above it, per label.
DIAGNOSTICS_PER_GAME_UP_TO = 4


def _diagnostic_curves(records, labels) -> dict:
  """key -> line -> (steps, mean, min, max) over every run of the line of the
  `DIAGNOSTIC_PANELS` and of the run's own predictor's `diag_predictor_*_orthogonality_gap` (not
  the `predictor_batch_*` closed forms, which stay in metrics.jsonl). A line is a label and, with
  at most `DIAGNOSTICS_PER_GAME_UP_TO` games in the report, a game ("spr Boxing"): its seeds."""
  per_game = len({r.game for r in records}) <= DIAGNOSTICS_PER_GAME_UP_TO
  line_of = lambda r: f"{r.label} {r.game}" if per_game else r.label
  lines = list(dict.fromkeys(line_of(r) for lab in labels for r in records if r.label == lab))
  series: dict = {}  # key -> line -> [ {step: value} per run ]
  for r in records:
    pts: dict = {}
    try:
      with open(Path(r.workdir) / run_files.METRICS) as f:
        for line in f:
          try:
            d = json.loads(line)
          except ValueError:
            continue
          if not isinstance(d, dict) or "step" not in d:
            continue
          for key, value in d.items():
            if key.startswith("diag_") and isinstance(value, (int, float)):
              pts.setdefault(key, {})[int(d["step"])] = float(value)
    except OSError:
      continue
    for key, run_pts in pts.items():
      series.setdefault(key, {}).setdefault(line_of(r), []).append(run_pts)
  keys = [k for k in DIAGNOSTIC_PANELS if k in series]
  keys += sorted(
      k
      for k in series
      if k.startswith("diag_predictor_")
      and not k.startswith("diag_predictor_batch_")
      and "orthogonality" in k
  )
  out: dict = {}
  for key in keys:
    for lab in lines:
      runs = series[key].get(lab)
      if not runs:
        continue
      steps = sorted(set().union(*runs))
      vals = [[s[t] for s in runs if t in s] for t in steps]
      out.setdefault(key, {})[lab] = (
          np.array(steps),
          np.array([np.mean(v) for v in vals]),
          np.array([np.min(v) for v in vals]),
          np.array([np.max(v) for v in vals]),
      )
  return out


def _learning_curves(records, labels, key: str = "eval_mean_score") -> dict:
  """label -> game -> (steps, mean, min, max) over seeds of metrics.jsonl's `key` (non-null)."""
  curves: dict = {}
  for lab in labels:
    for g in dict.fromkeys(r.game for r in records if r.label == lab):
      series = []
      for r in records:
        if r.label != lab or r.game != g:
          continue
        pts = {}
        try:
          with open(Path(r.workdir) / run_files.METRICS) as f:
            for line in f:
              try:
                d = json.loads(line)
              except ValueError:
                continue
              if isinstance(d, dict) and d.get(key) is not None and "step" in d:
                pts[int(d["step"])] = float(d[key])
        except OSError:
          continue
        if pts:
          series.append(pts)
      if not series:
        continue
      steps = sorted(set().union(*series))
      vals = [[s[t] for s in series if t in s] for t in steps]
      curves.setdefault(lab, {})[g] = (
          np.array(steps),
          np.array([np.mean(v) for v in vals]),
          np.array([np.min(v) for v in vals]),
          np.array([np.max(v) for v in vals]),
      )
  return curves


def _markdown(
    roots,
    opts,
    labels,
    summaries,
    per_game,
    aggregates,
    runs_per_game,
    agg_games,
    all_games,
    table,
    figures,
) -> str:
  L = [
      "# Atari 100k report",
      "",
      f"Roots: {', '.join(map(str, roots))}  ",
      f"Generated {datetime.datetime.now():%Y-%m-%d %H:%M}; scores are raw game scores (final "
      f"evaluation mean per run); HNS = (score - random) / (human - random).",
      "",
  ]
  L += [
      "## Configurations",
      "",
      "| config | Atari 100k result | budget (env steps) | games finished | seeds per game (asked) |",
      "|---|---|---|---|---|",
  ]
  for lab in labels:
    s = summaries[lab]
    counts = sorted(set(s.seeds.values()))
    seeds = (
        "-" if not counts else (str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}")
    )
    L.append(
        f"| {lab} | {'yes' if s.is_100k else '**NO**'} | {', '.join(map(str, s.budgets)) or '-'} "
        f"| {len(s.games)}/{len(all_games)} | {seeds} ({s.asked_seeds}) |"
    )
  warn = [(lab, w) for lab in labels for w in summaries[lab].warnings]
  if warn:
    L += ["", "### Warnings", ""] + [f"- **{lab}**: {w}" for lab, w in warn]
  L += ["", "## Aggregate human-normalised scores", ""]
  if aggregates:
    L += [
        f"Over {len(agg_games)} game(s){'' if len(agg_games) == len(all_games) else ': ' + ', '.join(agg_games)}; "
        f"95% stratified-bootstrap CIs (rliable, {opts.reps} reps, seed {opts.seed}). "
        "Runs per game: the fewest seeds any game has (lowest seeds kept). Published rows are one "
        "number per game: their intervals are degenerate, not confidence intervals.",
        "",
        "| algorithm | runs/game | " + " | ".join(stats.METRICS) + " |",
        "|---|---|" + "---|" * len(stats.METRICS),
    ]
    for a, ms in aggregates.items():
      flag = "" if a not in summaries or summaries[a].is_100k else f" ({NOT_100K})"
      cells = [f"{ms[m][0]:.3f} [{ms[m][1]:.3f}, {ms[m][2]:.3f}]" for m in stats.METRICS]
      L.append(f"| {a}{flag} | {runs_per_game[a]} | " + " | ".join(cells) + " |")
  else:
    L.append("No game has a finished run in every configuration: no aggregates.")
  L += [
      "",
      "## Per game",
      "",
      "Mean over seeds with a 95% Student-t CI, (n) = finished seeds; `!` = fewer seeds than asked.",
      "",
      "| game | random | human | " + " | ".join(opts.published) + " | " + " | ".join(labels) + " |",
      "|---|---:|---:|" + "---:|" * (len(opts.published) + len(labels)),
  ]
  by_key = {(r["config"], r["game"]): r for r in per_game}
  for g in all_games:
    if not any((lab, g) in by_key for lab in labels):
      continue
    cells = []
    for lab in labels:
      r = by_key.get((lab, g))
      if r is None or r["seeds"] == 0:
        cells.append("-" if r is None else "- (0)!")
        continue
      ci = "" if r["seeds"] < 2 else f" [{_fmt(r['ci_lo'])}, {_fmt(r['ci_hi'])}]"
      cells.append(f"{_fmt(r['mean'])}{ci} ({r['seeds']}){'!' if r['flag'] else ''}")
    pub = [_fmt(table[g][p]) for p in opts.published]
    L.append(
        f"| {g} | {_fmt(table[g]['random'])} | {_fmt(table[g]['human'])} | "
        + " | ".join(pub)
        + " | "
        + " | ".join(cells)
        + " |"
    )
  if figures:
    L += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
  L += ["", "Files: runs.csv (every run), per_game.csv, aggregates.csv.", ""]
  return "\n".join(L)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
FLAGS = flags.FLAGS


def define_flags() -> None:
  """Flags are defined only when run as a program (importing this module defines none)."""
  flags.DEFINE_multi_string("root", [], "Sweep root(s); repeat or comma-separate for several.")
  flags.DEFINE_string("out", "", "Output directory.")
  flags.DEFINE_integer("reps", 50000, "Bootstrap repetitions for aggregate CIs.")
  flags.DEFINE_integer("profile_reps", 2000, "Bootstrap repetitions for performance-profile bands.")
  flags.DEFINE_integer("seed", 0, "Seed of the bootstrap (same seed, same CIs).")
  flags.DEFINE_string(
      "published", ",".join(PUBLISHED), "Published columns to compare with (DER,SPR,BBF or none)."
  )
  flags.DEFINE_integer("expected_seeds", 0, "Seeds per game asked for (0: from sweep.json).")
  flags.DEFINE_string("scores_csv", "", "Reference score table (default: envs/scores.csv).")
  flags.DEFINE_bool("plots", True, "Write the PNG figures.")


def main():
  roots = [r for item in FLAGS.root for r in item.split(",") if r.strip()]
  if not roots:
    common.fail("--root is required")
  if not FLAGS.out:
    common.fail("--out is required")
  published = (
      []
      if FLAGS.published.lower() in ("", "none")
      else [p.strip() for p in FLAGS.published.split(",")]
  )
  bad = [p for p in published if p not in PUBLISHED]
  if bad:
    common.fail(f"unknown published column(s) {bad} (choose from {', '.join(PUBLISHED)})")
  if FLAGS.reps < 1:
    common.fail("--reps must be positive")
  opts = ReportOptions(
      reps=FLAGS.reps,
      profile_reps=FLAGS.profile_reps,
      seed=FLAGS.seed,
      published=published,
      expected_seeds=FLAGS.expected_seeds,
      scores_csv=FLAGS.scores_csv,
      plots=FLAGS.plots,
  )
  with common.bad_input(FileNotFoundError, grid.GridError):  # a root without runs, a bad table
    res = build(roots, FLAGS.out, opts)
  n_done = sum(r.state == "done" for r in res["records"])
  print(f"{n_done}/{len(res['records'])} runs finished; report in {Path(FLAGS.out) / 'report.md'}")
  for lab, s in res["summaries"].items():
    for w in s.warnings:
      print(f"warning: {lab}: {w}")
  return common.OK


if __name__ == "__main__":
  define_flags()
  common.run(main)
