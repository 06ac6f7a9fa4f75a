"""launch.diagnose's refusals (its values are checked against a run's own log in
tests/test_engine.py::test_diagnostics_are_logged_and_leave_the_run_unchanged)."""

import os
from pathlib import Path
import subprocess
import sys

import pytest

from launch import diagnose

ROOT = Path(__file__).resolve().parents[1]


def test_a_folder_without_config_is_refused_in_one_line(tmp_path):
  with pytest.raises(ValueError, match="is not a launch.train run"):
    diagnose.diagnose_run(tmp_path)
  out = subprocess.run(
      [sys.executable, "-m", "launch.diagnose", f"--workdir={tmp_path}"],
      capture_output=True,
      text=True,
      cwd=ROOT,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
      timeout=120,
  )
  assert out.returncode == 2, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "config.json" in lines[0], lines
  assert not out.stdout


def test_table_has_a_row_per_run():
  result = dict(
      workdir="w",
      step=5,
      network="trained",
      batch_size=16,
      top_action="LEFT",
      diagnostics={"srank_latent": 3.0, "greedy_top_action_share": 1.0},
  )
  rows = diagnose.table([result, dict(result, workdir="v")]).splitlines()
  assert len(rows) == 4 and rows[0].startswith("| run | step | network | samples | top action |")
  cells = [c.strip() for c in rows[2].strip("|").split("|")]
  assert cells[:7] == ["w", "5", "trained", "16", "LEFT", "3.000", "-"] and cells[9] == "1.000"


def test_run_config_reads_an_older_config_json_with_its_legacy_values():
  """A run written before a setting existed is diagnosed (and its constant-action episodes are
  played) with the legacy value: the env protocol that reproduces it (not today's default), and
  the diagnostics batch of today (agents/spr/config.py: LEGACY_VALUES)."""
  from agents.spr import engine
  from agents.spr.config import make_config

  stored = engine.run_identity("smoke", "Pong", 0, make_config("smoke", {}))
  assert diagnose.run_config(stored).env_protocol == "spr"
  del stored["env_protocol"], stored["diagnostics_batch_size"]
  config = diagnose.run_config(stored)
  assert config.env_protocol == "dopamine" and config.diagnostics_batch_size == 256
