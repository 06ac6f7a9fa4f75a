"""launch.bench end to end on the smoke config: both tables print, name the machine, and hold
numbers; the memory table equals the state's bytes."""
import re
import subprocess
import sys
from pathlib import Path

import jax

ROOT = Path(__file__).resolve().parents[1]


def _run(*args):
  proc = subprocess.run([sys.executable, "-m", "launch.bench", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
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


def test_memory_table_counts_every_byte_of_the_train_state():
  from agents.spr.config import make_config
  from agents.spr.learner import SPRLearner

  out = _run("--memory=spr")
  row = [l for l in out.splitlines() if l.startswith("| spr |")][0]
  per_run = float(row.strip("|").split("|")[2])
  shapes = jax.eval_shape(SPRLearner(make_config("spr"), 18).init, jax.random.PRNGKey(0))
  want = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes)) / 1e9
  assert abs(per_run - want) < 1e-3 and want > 0
