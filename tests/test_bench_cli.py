"""launch.bench end to end on the smoke config: both tables print, name the machine, and hold
numbers; the memory table equals the state's bytes."""

import re
import subprocess
import sys
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
  proc = subprocess.run(
      [sys.executable, "-m", "launch.bench", *args],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_bench_prints_both_tables_on_the_smoke_config():
  out = _run("--config=smoke", "--fill=60", "--repeats=2", "--runs=1", "--multi_configs=smoke")
  assert "machine: " in out and "JAX" in out
  update_ms = float(re.search(r"^update_ms: ([0-9.]+)$", out, re.M).group(1))
  assert update_ms > 0
  row = [l for l in out.splitlines() if l.startswith("| smoke | 1 |")]
  assert len(row) == 1
  cells = [c.strip() for c in row[0].strip("|").split("|")]
  assert float(cells[3]) > 0 and cells[7] == "1.00x"  # updates/s, speed-up of 1 run over itself
  # env steps/s in process / in 1 worker process (EnvPool), then the worker count
  in_process, workers, count = re.fullmatch(r"(\d+) / (\d+) \((\d+)\)", cells[5]).groups()
  assert int(in_process) > 0 and int(workers) > 0 and count == "1"


def test_memory_table_accounts_for_frames_and_parameters():
  """SPR: 100k single 84x84 frames (0.706 GB) plus parameters, Adam moments and the SPR target
  (one update behind: 4 copies of the network's float32 parameters) plus per-transition replay
  fields."""
  from agents.spr.config import make_config
  from agents.spr.learner import SPRLearner

  out = _run("--memory=spr")
  row = [l for l in out.splitlines() if l.startswith("| spr |")][0]
  frames, per_run, runs26 = (float(c) for c in row.strip("|").split("|")[1:])
  assert frames == round(100_000 * 84 * 84 / 1e9, 3)
  params = jax.eval_shape(
      SPRLearner(make_config("spr"), 18).network.init,
      jax.random.PRNGKey(0),
      jax.ShapeDtypeStruct((1, 4, 84, 84), "float32"),
  )
  network_gb = sum(x.size for x in jax.tree.leaves(params)) * 4 / 1e9
  other = per_run - frames - 4 * network_gb  # actions, rewards, terminals, priorities, ...
  assert 0 <= other < 100_000 * 64 / 1e9, (per_run, frames, network_gb)
  assert abs(runs26 - 26 * per_run) < 0.1
