"""Several runs in one process (`launch.train --games/--seeds`, agents/spr/multi_trainer.py):
per-run workdirs, the same trajectory as each run trained alone, per-run resume."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.spr.multi_trainer import run_workdir
from launch.grid import parse_seeds
from spr import checkpoint

ROOT = Path(__file__).resolve().parents[1]
# --done_checkpoints=all: the rerun test below resumes finished runs from step 150.
FLAGS = [
    "--config=smoke",
    "--steps=200",
    "--eval_episodes=1",
    "--checkpoint_every=50",
    "--done_checkpoints=all",
    # One diagnostics line at step 200 (learn_start is 100), on 8 samples: a batch computes them
    # run by run (lax.map), each as the run alone does.
    "--diagnostics_every=100",
    "--diagnostics_batch_size=8",
]


def run(cmd):
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  if proc.returncode != 0:
    raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def batch_cmd(root, env_workers=0):
  return [
      sys.executable,
      "-m",
      "launch.train",
      "--games=Pong,Breakout",
      "--seeds=0-1",
      f"--workdir={root}",
      f"--env_workers={env_workers}",
      *FLAGS,
  ]


def leaves(workdir, step=200):
  return checkpoint.read_file(Path(workdir) / "checkpoints" / f"ckpt_{step}.npz")["content"][
      "leaves"
  ]


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
  """The 4-run batch, its envs in 2 worker processes (the runs alone below keep theirs in
  process: their exactly equal replays, actions and episodes show the workers change nothing)."""
  root = tmp_path_factory.mktemp("multi") / "smoke"
  proc = run(batch_cmd(root, env_workers=2))
  return root, proc


def test_parse_seeds():
  assert parse_seeds("0-3") == [0, 1, 2, 3]
  assert parse_seeds("0,2,5") == [0, 2, 5]
  assert parse_seeds("0-1,7") == [0, 1, 7]
  for bad in ("", "a", "3-1", "0,0"):
    with pytest.raises(ValueError):
      parse_seeds(bad)


def test_every_run_writes_its_own_workdir(batch):
  root, proc = batch
  for game in ("Pong", "Breakout"):
    for seed in (0, 1):
      wd = run_workdir(root, game, seed)
      assert wd == root / game / f"seed_{seed}"
      config = json.loads((wd / "config.json").read_text())
      assert (config["game"], config["seed"], config["config_name"]) == (game, seed, "smoke")
      lines = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
      diag = [l for l in lines if "diag_srank_latent" in l]
      lines = [l for l in lines if "loss" in l]
      assert [l["step"] for l in lines] == [100, 200] and [l["step"] for l in diag] == [200]
      assert 1 <= diag[0]["diag_srank_latent"] <= 8 and "diag_greedy_top_action_share" in diag[0]
      assert lines[-1]["updates"] == 100 and all(np.isfinite(l["loss"]) for l in lines)
      final = json.loads((wd / "final.json").read_text())
      assert final["game"] == game and final["seed"] == seed and final["steps"] == 200
      assert final["eval_episodes"] == 1
      assert sorted(p.name for p in (wd / "checkpoints").iterdir()) == [
          "ckpt_150.npz",
          "ckpt_200.npz",
      ]
      assert f"{game} seed {seed}: mean score" in proc.stdout
  # Two vmapped batches: Pong (6 actions) and Breakout (4 actions); envs in 2 workers.
  assert "envs stepped by 2 worker processes" in proc.stderr
  assert "batch of 2 runs (6 actions)" in proc.stderr
  assert "batch of 2 runs (4 actions)" in proc.stderr


@pytest.mark.parametrize("game, seed", [("Pong", 1), ("Breakout", 0)])
def test_run_in_batch_follows_the_run_alone(batch, tmp_path, game, seed):
  """100 updates: the same actions, replay and counters exactly, parameters and optimiser
  state within float tolerance (XLA's batched kernels may reassociate sums)."""
  root, _ = batch
  alone = tmp_path / "alone"
  run(
      [
          sys.executable,
          "-m",
          "launch.train",
          f"--game={game}",
          f"--seed={seed}",
          f"--workdir={alone}",
          *FLAGS,
      ]
  )
  a, b = leaves(alone), leaves(run_workdir(root, game, seed))
  assert len(a) == len(b)
  exact = 0
  for x, y in zip(a, b):
    assert x.shape == y.shape and x.dtype == y.dtype
    if x.dtype.kind in "iub":  # replay frames/actions/terminals, counters, RNG key
      np.testing.assert_array_equal(x, y)
    else:
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    exact += 1
  assert exact == len(a)
  host_a, host_b = (
      checkpoint.read_file(d / "checkpoints" / "ckpt_200.npz")["content"]["host"]
      for d in (alone, run_workdir(root, game, seed))
  )
  assert host_a["episodes"] == host_b["episodes"] and host_a["action"] == host_b["action"]
  diag = lambda d: [
      l
      for l in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
      if "diag_spr_cos" in l
  ]
  [in_batch], [by_itself] = diag(run_workdir(root, game, seed)), diag(alone)
  assert set(in_batch) == set(by_itself)
  for key, value in by_itself.items():
    # Not compared: the closed forms of this batch's statistics (16 pairs in 32 dimensions: rank
    # deficient, so solves and polar factors are ill-conditioned) and singular-value ratios of
    # rank-deficient matrices (divided by ~0) amplify the float differences between the batch
    # and the run alone.
    unstable = "predictor_batch_" in key or key.endswith("eigenvalue_spread")
    if key.startswith("diag_") and value is not None and not unstable:
      assert in_batch[key] == pytest.approx(value, rel=1e-3, abs=1e-4), key


def test_rerun_skips_finished_and_resumes_unfinished_runs_per_run(batch):
  """Two runs lose their last checkpoint and final.json (as if killed after step 150): the
  rerun skips the two finished runs and resumes the others, in two batches of one (different
  action counts), from their own checkpoints. Integers (replay, actions, counters, RNG) come out
  identical; floats within tolerance: a batch of 1 and a batch of 2 are different XLA programs."""
  root, _ = batch
  resumed = [run_workdir(root, "Pong", 0), run_workdir(root, "Breakout", 1)]
  before = {wd: (leaves(wd), (wd / "eval.csv").read_text()) for wd in resumed}
  untouched = run_workdir(root, "Pong", 1)
  final_untouched = (untouched / "final.json").read_text()
  for wd in resumed:
    (wd / "final.json").unlink()
    (wd / "checkpoints" / "ckpt_200.npz").unlink()
  proc = run(batch_cmd(root, env_workers=0))  # env states saved by workers, resumed in process
  assert proc.stderr.count("already finished; skipped") == 2
  assert "batch of 1 runs (6 actions) from step 150" in proc.stderr
  for wd in resumed:
    old_leaves, old_eval = before[wd]
    for x, y in zip(old_leaves, leaves(wd)):
      if x.dtype.kind in "iub":
        np.testing.assert_array_equal(x, y)
      else:
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    assert (wd / "eval.csv").read_text() == old_eval
    lines = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if "loss" in l] == [100, 200]  # nothing written twice
    assert [l["step"] for l in lines if "diag_srank_latent" in l] == [200]
  assert (untouched / "final.json").read_text() == final_untouched
