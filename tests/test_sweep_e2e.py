"""End to end: `launch.sweep` running the REAL `launch.train --config=smoke` (local backend,
Pong, seeds 0-1), then `--status`, an idempotent re-run, and `launch.report` on the two runs.

tests/test_sweep.py covers the sweep machinery against tests/fake_run.py; this test checks the
sweep, the trainer and the report agree on the workdir contract (docs/CONTRACTS.md): argument
passing, config.json/metrics.jsonl for the status, final.json/eval.csv for the report.
The runs inherit JAX_COMPILATION_CACHE_DIR (tests/conftest.py), so they share the compiled
learner with the other subprocess tests of the session.
"""

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _run(args, env, timeout=300):
  proc = subprocess.run(
      [sys.executable, "-m", *args],
      cwd=ROOT,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )
  assert (
      proc.returncode == 0
  ), f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


def test_sweep_real_train_status_rerun_report(tmp_path):
  env = dict(os.environ)
  cache = env.get("JAX_COMPILATION_CACHE_DIR")
  assert cache, "tests/conftest.py should set JAX_COMPILATION_CACHE_DIR"
  root, out = tmp_path / "runs", tmp_path / "report"

  def sweep(seeds, parallel):
    return _run(
        [
            "launch.sweep",
            "--config=smoke",
            "--games=pong",
            f"--seeds={seeds}",
            f"--root={root}",
            f"--max_parallel={parallel}",
            "--gpus=none",
        ],
        env,
    )

  # 1. seed 0 alone compiles the learner into the cache; then the sweep is extended to seeds
  #    0-1 with two slots: seed 0 is skipped, seed 1 trains (two cold compiles side by side
  #    would take ~100 s on 2 cores). Both end at their 400-step budget.
  text = sweep("0", 1)
  assert "1 to run" in text and "1/1 runs done" in text, text
  text = sweep("0-1", 2)
  assert "1 done (skipped)" in text and "1 to run" in text and "2/2 runs done" in text, text
  assert text.count("[start]") == 1 and "seed_1 (slot 0" in text, text
  manifest = json.loads((root / "smoke" / "sweep.json").read_text())
  assert (manifest["games"], manifest["seeds"]) == (["Pong"], [0, 1])
  wds = [root / "smoke" / "Pong" / f"seed_{s}" for s in (0, 1)]
  finals = []
  for seed, wd in enumerate(wds):
    final = json.loads((wd / "final.json").read_text())
    assert (final["game"], final["seed"], final["config_name"]) == ("Pong", seed, "smoke")
    assert final["steps"] == final["budget_steps"] == 400 and final["eval_episodes"] == 2
    log = (wd / "log.txt").read_text()
    assert log.count("### ") == 1 and "--game=Pong" in log and f"--seed={seed}" in log
    assert not (wd / "run.lock").exists() and not (wd / "exit.json").exists()
    finals.append(final)
  # the runs were given the session's compilation cache (they compiled into it)
  assert any(Path(cache).iterdir()), f"nothing compiled into {cache}"

  # 2. --status: both done at step 400 of 400 (from metrics.jsonl and config.json)
  status = _run(["launch.sweep", f"--root={root}", "--status"], env)
  rows = [l.split() for l in status.splitlines() if l.startswith("smoke ")]
  assert [r[:5] for r in rows] == [
      ["smoke", "Pong", "0", "done", "400/400"],
      ["smoke", "Pong", "1", "done", "400/400"],
  ], status
  assert "2 runs: 0 pending, 0 running, 2 done, 0 failed, 0 interrupted" in status

  # 3. the same sweep again starts nothing and leaves the runs untouched
  logs = [(wd / "log.txt").read_text() for wd in wds]
  text = sweep("0-1", 2)
  assert "2 done (skipped)" in text and "0 to run" in text and "[start]" not in text, text
  assert [(wd / "log.txt").read_text() for wd in wds] == logs

  # 4. the report: a Pong row over 2 seeds, flagged as not a 100k result
  text = _run(["launch.report", f"--root={root}", f"--out={out}", "--reps=200"], env)
  assert "2/2 runs finished" in text and "NOT an Atari 100k result" in text, text
  expected = float(np.mean([f["mean_score"] for f in finals]))
  with open(out / "per_game.csv", newline="") as f:
    per_game = list(csv.DictReader(f))
  assert [(r["config"], r["game"], r["seeds"], r["seeds_asked"]) for r in per_game] == [
      ("smoke", "pong", "2", "2")
  ]
  assert np.isclose(float(per_game[0]["mean"]), expected)
  with open(out / "runs.csv", newline="") as f:
    runs = list(csv.DictReader(f))
  assert [(r["seed"], r["state"], r["steps"], r["budget"], r["eval_episodes"]) for r in runs] == [
      ("0", "done", "400", "400", "2"),
      ("1", "done", "400", "400", "2"),
  ]
  assert [float(r["score"]) for r in runs] == [f["mean_score"] for f in finals]
  with open(out / "aggregates.csv", newline="") as f:
    agg = [r for r in csv.DictReader(f) if r["algorithm"] == "smoke"]
  assert agg and all(r["atari_100k"] == "False" and r["runs_per_game"] == "2" for r in agg)

  md = (out / "report.md").read_text()
  assert re.search(r"^\| smoke \| \*\*NO\*\* \| 400 \| 1/26 \| 2 \(2\) \|$", md, re.M), md
  assert "budget 400 env steps: NOT an Atari 100k result" in md
  assert "| smoke (NOT 100k) | 2 |" in md
  pong = [l for l in md.splitlines() if l.startswith("| pong |")]
  assert len(pong) == 1 and pong[0].endswith(" (2) |") and "!" not in pong[0], pong
  assert pong[0].split("|")[-2].split()[0] == f"{expected:.1f}", pong[0]
