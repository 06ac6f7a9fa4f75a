"""The report on synthetic score files: per-game CIs, rliable aggregates against numpy by hand,
bootstrap reproducibility, missing / partial / short-budget runs."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.games import canonical_name
from launch import grid, report, stats

REPO = Path(__file__).resolve().parent.parent
GAMES = ["alien", "breakout", "pong"]
# made-up reference table: HNS = (score - random) / (human - random) is easy to redo by hand
TABLE = {
    "alien": (0.0, 100.0, 10.0, 20.0, 30.0),
    "breakout": (10.0, 110.0, 15.0, 40.0, 200.0),
    "pong": (-20.0, 80.0, -10.0, 30.0, 90.0),
}
REPS = 2000


def write_table(path):
  with open(path, "w") as f:
    f.write("game,ale_id,random,human,DER,SPR,BBF\n")
    for g, (r, h, d, s, b) in TABLE.items():
      f.write(f"{g},ALE/{canonical_name(g)}-v5,{r},{h},{d},{s},{b}\n")
  return str(path)


def write_run(
    root,
    label,
    game,
    seed,
    score,
    steps=100_000,
    budget=100_000,
    final=True,
    evals=(),
    wd=None,
    config_name=None,
):
  """One run's files; in a sweep's layout unless `wd` is given (config_name: label's default)."""
  wd = wd or grid.run_dir(root, label, game, seed)
  wd.mkdir(parents=True)
  config_name = label if config_name is None else config_name
  (wd / "config.json").write_text(
      json.dumps({"config_name": config_name, "game": game, "seed": seed, "steps": budget})
  )
  with open(wd / "metrics.jsonl", "w") as f:
    for step, val in evals:
      f.write(
          json.dumps({"step": step, "time_s": 1.0, "eval_mean_score": val, "eval_episodes": 10})
          + "\n"
      )
    f.write(json.dumps({"step": steps, "time_s": 2.0}) + "\n")
  if final:
    eps = [score - 1.0, score + 1.0] * 50  # 100 episodes, mean = score
    (wd / "eval.csv").write_text(
        "episode,score,length\n" + "".join(f"{i},{s},10\n" for i, s in enumerate(eps))
    )
    (wd / "final.json").write_text(
        json.dumps(
            {
                "game": canonical_name(game),
                "seed": seed,
                "config_name": config_name,
                "steps": steps,
                "budget_steps": budget,
                "eval_episodes": 100,
                "mean_score": score,
                "hns": 0.0,
                "wall_time_s": 1.0,
            }
        )
    )
  return wd


def write_manifest(root, label, games, seeds):
  (root / label).mkdir(parents=True, exist_ok=True)
  (root / label / "sweep.json").write_text(
      json.dumps({"label": label, "games": games, "seeds": seeds})
  )


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
  """Two configurations x 3 games x 5 seeds, scores from a fixed RNG; returns (root, hns)."""
  root = tmp_path_factory.mktemp("sweep")
  rng = np.random.default_rng(123)
  hns = {}
  for label, shift in (("A", 0.3), ("B", 1.0)):
    write_manifest(root, label, GAMES, list(range(5)))
    mat = np.zeros((5, 3))
    for j, g in enumerate(GAMES):
      r, h = TABLE[g][:2]
      for s in range(5):
        x = float(np.round(rng.normal(shift, 0.6), 3))
        mat[s, j] = x
        write_run(
            root,
            label,
            g,
            s,
            r + x * (h - r),
            evals=[(50_000, 1.0 + s), (100_000, 2.0 + s)] if label == "A" else (),
        )
    hns[label] = mat
  return root, hns, write_table(root.parent / "scores_test.csv")


def hand_iqm(x):
  flat = np.sort(np.asarray(x).ravel())
  k = int(0.25 * flat.size)  # scipy.stats.trim_mean(…, 0.25) drops k from each end
  return flat[k : flat.size - k].mean()


def hand_metrics(x):
  x = np.asarray(x)
  # rliable: IQM over all runs x games; median and mean over games of the per-game mean
  return {
      "IQM": hand_iqm(x),
      "Median": np.median(x.mean(axis=0)),
      "Mean": x.mean(axis=0).mean(),
      "Optimality gap": 1.0 - np.minimum(x, 1.0).mean(),
  }


def hand_stratified_ci(x, metric, reps, seed):
  """Percentile CI of a stratified bootstrap: runs resampled within each game."""
  rng = np.random.default_rng(seed)
  n, m = x.shape
  vals = [metric(x[rng.integers(0, n, size=(n, m)), np.arange(m)]) for _ in range(reps)]
  return np.percentile(vals, [2.5, 97.5])


def test_report_matches_hand_computation(synthetic, tmp_path):
  root, hns, table = synthetic
  res = report.build(
      [root],
      tmp_path / "out",
      report.ReportOptions(reps=REPS, profile_reps=200, seed=0, scores_csv=table),
  )
  agg = res["aggregates"]
  assert set(agg) == {"A", "B", "DER (published)", "SPR (published)", "BBF (published)"}
  for label in ("A", "B"):
    x = hns[label]
    for metric, expected in hand_metrics(x).items():
      point, lo, hi = agg[label][metric]
      assert point == pytest.approx(expected, abs=1e-9), (label, metric)
      assert lo <= point <= hi
    lo_h, hi_h = hand_stratified_ci(x, hand_iqm, 4000, seed=7)
    _, lo, hi = agg[label]["IQM"]
    width = hi_h - lo_h
    assert abs(lo - lo_h) < 0.12 * width and abs(hi - hi_h) < 0.12 * width, (lo, hi, lo_h, hi_h)
  # published columns: one number per game, the same formulas
  der = np.array([[(TABLE[g][2] - TABLE[g][0]) / (TABLE[g][1] - TABLE[g][0]) for g in GAMES]])
  for metric, expected in hand_metrics(der).items():
    assert agg["DER (published)"][metric] == pytest.approx((expected,) * 3, abs=1e-9)

  # per-game table: mean and Student-t CI over the 5 seeds, next to the reference columns
  rows = list(csv.DictReader(open(tmp_path / "out" / "per_game.csv")))
  row = next(r for r in rows if r["config"] == "B" and r["game"] == "breakout")
  r0, h0 = TABLE["breakout"][:2]
  scores = r0 + hns["B"][:, 1] * (h0 - r0)
  half = 2.7764451051977987 * scores.std(ddof=1) / np.sqrt(5)  # t(0.975, df=4)
  assert float(row["mean"]) == pytest.approx(scores.mean(), abs=1e-6)
  assert float(row["ci_lo"]) == pytest.approx(scores.mean() - half, abs=1e-6)
  assert float(row["ci_hi"]) == pytest.approx(scores.mean() + half, abs=1e-6)
  assert (row["seeds"], row["seeds_asked"], row["flag"]) == ("5", "5", "")
  assert (float(row["DER"]), float(row["SPR"]), float(row["BBF"])) == TABLE["breakout"][2:]

  md = (tmp_path / "out" / "report.md").read_text()
  assert "| A | yes | 100000 | 3/3 | 5 (5) |" in md
  assert "NOT" not in md
  for f in ("interval_estimates.png", "performance_profile.png", "learning_curves.png"):
    assert (tmp_path / "out" / f).stat().st_size > 1000, f
  with open(tmp_path / "out" / "aggregates.csv") as f:
    assert len(list(csv.DictReader(f))) == 5 * 4


def test_bootstrap_reproducible_for_a_seed():
  x = np.random.default_rng(0).normal(0.5, 0.5, size=(5, 6))
  a = stats.aggregate_estimates({"x": x}, reps=500, seed=3)
  b = stats.aggregate_estimates({"x": x}, reps=500, seed=3)
  c = stats.aggregate_estimates({"x": x}, reps=500, seed=4)
  assert a == b
  assert a["x"]["IQM"][1:] != c["x"]["IQM"][1:]
  assert a["x"]["IQM"][0] == c["x"]["IQM"][0]
  # one algorithm's CIs do not depend on which others are in the report
  d = stats.aggregate_estimates({"y": x + 1, "x": x}, reps=500, seed=3)
  assert d["x"] == a["x"]


def test_missing_partial_and_short_budget_runs(tmp_path):
  root = tmp_path / "root"
  table = write_table(tmp_path / "scores.csv")
  write_manifest(root, "C", ["pong", "breakout"], [0, 1, 2])
  for s in range(3):
    write_run(root, "C", "pong", s, 10.0 * s)
  write_run(root, "C", "breakout", 0, 50.0)
  write_run(root, "C", "breakout", 1, 99.0, steps=50_000)  # final.json before the budget: partial
  # breakout seed 2: never started (missing directory)
  write_run(root, "C", "alien", 0, 0.0, final=False, steps=2_000)  # unasked, unfinished
  write_manifest(root, "D", ["pong", "breakout"], [0, 1])
  for g in ("pong", "breakout"):
    for s in range(2):
      write_run(root, "D", g, s, 30.0 + s, steps=10_000, budget=10_000)
  res = report.build(
      [root],
      tmp_path / "out",
      report.ReportOptions(reps=200, seed=0, scores_csv=table, plots=False),
  )
  states = {(r.label, r.game, r.seed): r.state for r in res["records"]}
  assert states[("C", "breakout", 1)] == "partial"
  assert states[("C", "breakout", 2)] == "pending"
  assert states[("C", "alien", 0)] == "interrupted"
  c, d = res["summaries"]["C"], res["summaries"]["D"]
  assert c.seeds == {"pong": 3, "breakout": 1} and c.asked_seeds == 3 and c.is_100k
  assert not d.is_100k and d.budgets == [10_000]
  rows = {(r["config"], r["game"]): r for r in res["per_game"]}
  assert rows[("C", "breakout")]["seeds"] == 1 and rows[("C", "breakout")]["flag"]
  assert rows[("C", "breakout")]["mean"] == 50.0  # the partial run is not averaged in
  assert ("C", "alien") not in rows  # neither asked for nor finished: only in runs.csv
  # aggregates: games finished by every configuration, seeds balanced to the fewest (1 here)
  assert res["agg_games"] == ["breakout", "pong"]
  with open(tmp_path / "out" / "aggregates.csv") as f:
    agg = {(r["algorithm"], r["metric"]): r for r in csv.DictReader(f)}
  assert agg[("C", "IQM")]["runs_per_game"] == "1" and agg[("D", "IQM")]["runs_per_game"] == "2"
  assert agg[("D", "IQM")]["atari_100k"] == "False" and agg[("C", "IQM")]["atari_100k"] == "True"
  c_hns = [(50.0 - 10.0) / 100.0, (0.0 + 20.0) / 100.0]  # breakout seed 0, pong seed 0
  assert float(agg[("C", "Mean")]["point"]) == pytest.approx(np.mean(c_hns))

  md = (tmp_path / "out" / "report.md").read_text()
  assert (
      "| D | **NO** | 10000 |" in md and "NOT an Atari 100k result" in md and "D (NOT 100k)" in md
  )
  assert "fewer than 3 seeds: breakout (1)" in md
  assert "1 run(s) stopped before their budget" in md
  assert "2 run(s) not finished (excluded): 1 interrupted, 1 pending" in md
  assert "| breakout |" in md and "50.0 (1)!" in md


def test_report_reads_older_sweeps_game_folders(tmp_path):
  """Sweeps before the one game table named game folders (and sweep.json's games) by ROM id:
  such runs are read as today's, under the same game."""
  table = write_table(tmp_path / "scores.csv")
  root = tmp_path / "root"
  write_manifest(root, "C", ["pong", "breakout"], [0, 1])
  write_run(root, "C", "pong", 0, 1.0, wd=root / "C" / "pong" / "seed_0")
  write_run(root, "C", "breakout", 0, 50.0)
  assert (root / "C" / "Breakout" / "seed_0").is_dir()
  res = report.build(
      [root], tmp_path / "out", report.ReportOptions(reps=50, scores_csv=table, plots=False)
  )
  assert {(r.label, r.game, r.seed, r.state) for r in res["records"]} == {
      ("C", "pong", 0, "done"),
      ("C", "pong", 1, "pending"),
      ("C", "breakout", 0, "done"),
      ("C", "breakout", 1, "pending"),
  }
  assert res["summaries"]["C"].asked_games == ["pong", "breakout"]


def test_report_cli_errors(tmp_path):
  r = subprocess.run(
      [
          sys.executable,
          "-m",
          "launch.report",
          f"--root={tmp_path / 'nope'}",
          f"--out={tmp_path / 'o'}",
      ],
      capture_output=True,
      text=True,
      cwd=REPO,
      timeout=60,
  )
  assert r.returncode == 2 and r.stderr.strip().endswith("does not exist")


def write_multi_run(root, game, seed, score, config_name="bbf", **kw):
  """A run as `launch.train --games/--seeds --workdir=ROOT` writes it: ROOT/<Game>/seed_<s>."""
  return write_run(
      root,
      None,
      game,
      seed,
      score,
      wd=root / canonical_name(game) / f"seed_{seed}",
      config_name=config_name,
      **kw,
  )


def test_report_reads_multi_run_roots(tmp_path):
  table = write_table(tmp_path / "scores.csv")
  multi = tmp_path / "batch"
  for g, r0 in (("pong", -20.0), ("breakout", 10.0)):
    for s in range(2):
      write_multi_run(multi, g, s, r0 - 10.0 * (s + 1), steps=10_000, budget=10_000)  # HNS < 0
  write_multi_run(multi, "alien", 0, 0.0, final=False, steps=2_000)  # interrupted, no final.json
  res = report.build(
      [multi],
      tmp_path / "out",
      report.ReportOptions(reps=200, profile_reps=50, seed=0, scores_csv=table),
  )
  states = {(r.label, r.game, r.seed): r.state for r in res["records"]}
  assert states == {
      ("bbf", "alien", 0): "interrupted",
      ("bbf", "breakout", 0): "done",
      ("bbf", "breakout", 1): "done",
      ("bbf", "pong", 0): "done",
      ("bbf", "pong", 1): "done",
  }
  s = res["summaries"]["bbf"]
  assert s.seeds == {"pong": 2, "breakout": 2} and not s.is_100k and s.budgets == [10_000]
  assert res["agg_games"] == ["breakout", "pong"]
  iqm = res["aggregates"]["bbf"]["IQM"]
  assert iqm[0] < 0
  md = (tmp_path / "out" / "report.md").read_text()
  assert "| bbf | **NO** | 10000 | 2/3 |" in md and "bbf (NOT 100k)" in md
  assert (tmp_path / "out" / "interval_estimates.png").stat().st_size > 1000

  # the interval plot of these aggregates: the negative IQM inside the axis, the mark on the plot
  import matplotlib
  import matplotlib.pyplot as plt

  matplotlib.use("Agg")
  fig = report.interval_figure(res["aggregates"], {"bbf"}, len(res["agg_games"]))
  iqm_ax = fig.axes[list(report.stats.METRICS).index("IQM")]
  assert iqm_ax.get_title() == "IQM"
  assert iqm_ax.get_xlim()[0] < min(iqm) and iqm_ax.get_xlim()[1] > 0
  texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
  assert "bbf\n(NOT 100k)" in texts  # the y label of the run
  assert any(t.startswith("(NOT 100k): a budget other than 100k env steps") for t in texts)
  fig.canvas.draw()  # labels of the rows do not overlap
  boxes = [t.get_window_extent() for t in fig.axes[0].get_yticklabels()]
  assert len(boxes) == 4 and not any(
      a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :]
  )
  plt.close(fig)

  # no config_name in config.json: the root's folder name; with a sweep root beside it, both read
  other = tmp_path / "named"
  write_multi_run(other, "pong", 0, 5.0, config_name="")
  sweep = tmp_path / "sweep"
  write_manifest(sweep, "C", ["pong"], [0, 1])
  write_run(sweep, "C", "pong", 0, 1.0)
  res = report.build(
      [other, sweep],
      tmp_path / "out2",
      report.ReportOptions(reps=50, scores_csv=table, plots=False),
  )
  states = {(r.label, r.game, r.seed): r.state for r in res["records"]}
  assert states == {
      ("named", "pong", 0): "done",
      ("sweep/C", "pong", 0): "done",
      ("sweep/C", "pong", 1): "pending",
  }
  # one <label> folder of a sweep, and one run's workdir, as roots
  res = report.build(
      [sweep / "C"], tmp_path / "out3", report.ReportOptions(reps=50, scores_csv=table, plots=False)
  )
  assert {(r.label, r.game, r.seed, r.state) for r in res["records"]} == {
      ("C", "pong", 0, "done"),
      ("C", "pong", 1, "pending"),
  }
  res = report.build(
      [multi / "Pong" / "seed_1"],
      tmp_path / "out4",
      report.ReportOptions(reps=50, scores_csv=table, plots=False),
  )
  assert [(r.label, r.game, r.seed, r.state) for r in res["records"]] == [
      ("bbf", "pong", 1, "done")
  ]


def test_interval_plot_long_labels_do_not_overlap():
  import matplotlib
  import matplotlib.pyplot as plt

  matplotlib.use("Agg")
  names = [f"sweep_{i}/spr_lr=3e-4,target_update_period=1,seed_set_{i}" for i in range(6)]
  agg = {
      a: {m: (0.1 * i, 0.1 * i - 0.05, 0.1 * i + 0.05) for m in report.stats.METRICS}
      for i, a in enumerate(names)
  }
  fig = report.interval_figure(agg, set(names[:2]))
  fig.canvas.draw()
  ticks = fig.axes[0].get_yticklabels()
  assert [t.get_text().replace("\n", "") for t in ticks] == [
      a + ("(NOT 100k)" if i < 2 else "") for i, a in enumerate(names)
  ]
  boxes = [t.get_window_extent() for t in ticks]
  assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
  plt.close(fig)


def test_report_cli_root_without_runs(tmp_path):
  empty = tmp_path / "empty"
  (empty / "notes").mkdir(parents=True)  # a folder, but no run in any layout
  (empty / "notes" / "x.txt").write_text("x")
  with pytest.raises(report.NoRunsError, match="no runs under"):
    report.build([empty], tmp_path / "o", report.ReportOptions(plots=False))
  r = subprocess.run(
      [sys.executable, "-m", "launch.report", f"--root={empty}", f"--out={tmp_path / 'o'}"],
      capture_output=True,
      text=True,
      cwd=REPO,
      timeout=60,
  )
  assert r.returncode == 2, r.stderr
  err = r.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"error: no runs under {empty}: looked for "), err
  assert "<root>/<label>/<game>/seed_<s>/" in err[0] and "<root>/<game>/seed_<s>/" in err[0]
  assert not r.stdout


def test_diagnostic_curves_average_the_seeds_of_a_line(tmp_path, monkeypatch):
  """The `diag_` lines of metrics.jsonl become diagnostics.png: per key and line, the mean and
  min-max over the line's runs at each step; non-numeric (null) values are skipped. A line is a
  (label, game) with few games in the report (a collapse in one game is not averaged away), a
  label with many. The closed forms of the diagnostics batch (`predictor_batch_*`) are not drawn."""
  root = tmp_path / "sweep"
  runs = []
  for game, seed, srank, cos in (
      ("Pong", 0, 10.0, 0.5),
      ("Pong", 1, 20.0, None),
      ("Boxing", 0, 30.0, 0.7),
  ):
    wd = write_run(root, "A", game, seed, 1.0)
    with open(wd / "metrics.jsonl", "a") as f:
      f.write(
          json.dumps(
              {
                  "step": 5000,
                  "diag_srank_latent": srank,
                  "diag_spr_cos": cos,
                  "diag_predictor_linear_orthogonality_gap": 2.0,
                  "diag_predictor_batch_lrp_orthogonality_gap": 3.0,
              }
          )
          + "\n"
      )
    runs.append(report.RunRecord(label="A", game=game, seed=seed, workdir=str(wd), state="done"))
  curves = report._diagnostic_curves(runs, ["A"])  # pylint: disable=protected-access
  assert list(curves) == [
      "diag_srank_latent",
      "diag_spr_cos",
      "diag_predictor_linear_orthogonality_gap",
  ]
  assert list(curves["diag_srank_latent"]) == ["A Pong", "A Boxing"]
  steps, mean, lo, hi = curves["diag_srank_latent"]["A Pong"]
  assert list(steps) == [5000] and (mean[0], lo[0], hi[0]) == (15.0, 10.0, 20.0)
  _, mean, lo, hi = curves["diag_srank_latent"]["A Boxing"]
  assert (mean[0], lo[0], hi[0]) == (30.0, 30.0, 30.0)
  _, mean, lo, hi = curves["diag_spr_cos"]["A Pong"]  # seed 1's null is skipped
  assert (mean[0], lo[0], hi[0]) == pytest.approx((0.5, 0.5, 0.5))
  monkeypatch.setattr(report, "DIAGNOSTICS_PER_GAME_UP_TO", 1)  # many games: one line a label
  curves = report._diagnostic_curves(runs, ["A"])  # pylint: disable=protected-access
  _, mean, lo, hi = curves["diag_srank_latent"]["A"]
  assert (mean[0], lo[0], hi[0]) == (20.0, 10.0, 30.0)
  _, mean, lo, hi = curves["diag_spr_cos"]["A"]
  assert (mean[0], lo[0], hi[0]) == pytest.approx((0.6, 0.5, 0.7))
  monkeypatch.undo()
  res = report.build(
      [root], tmp_path / "out", report.ReportOptions(reps=200, profile_reps=50, seed=0)
  )
  assert "diagnostics.png" in res["figures"] and (tmp_path / "out" / "diagnostics.png").exists()


def test_a_test_size_network_is_never_an_atari_100k_result(tmp_path):
  """Runs of the `smoke` / `bbf_smoke` networks (CPU-size) are marked NOT 100k even with the
  100k budget; the same runs under the `spr` config name are a 100k result."""
  root = tmp_path / "sweep"
  for label, config_name in (("cpu", "smoke"), ("full", "spr")):
    for seed in (0, 1):
      write_run(root, label, "Pong", seed, -20.0 + seed, config_name=config_name)
  res = report.build([root], tmp_path / "out", report.ReportOptions(reps=200, seed=0, plots=False))
  assert not res["summaries"]["cpu"].is_100k and res["summaries"]["full"].is_100k
  md = (tmp_path / "out" / "report.md").read_text()
  assert "| cpu | **NO** | 100000 |" in md and "| full | yes | 100000 |" in md
  assert "test-size network (config smoke): a CPU-size run, NOT an Atari 100k result" in md
  assert "cpu (NOT 100k)" in md
