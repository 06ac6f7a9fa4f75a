"""launch/common.py: one table of exit codes for every entry point, and how exceptions map to it."""

import subprocess
import sys
from pathlib import Path

import pytest

from launch import common

ROOT = Path(__file__).resolve().parents[1]


def test_the_project_errors_map_to_their_exit_codes():
  from agents.sgi import finetune, pretrainer
  from agents.spr import trainer
  from spr import checkpoint, dqn_replay, workdir

  assert common.exit_status(trainer.Preempted("SIGINT: checkpointed at step 7", 130)) == (
      130,
      "SIGINT: checkpointed at step 7",
  )  # a clean stop: not an `error:` line
  for error in (
      workdir.WorkdirError("w is in use by pid 1"),
      checkpoint.CheckpointError("c"),
      dqn_replay.DataError("d"),
      finetune.PretrainedMismatch("p"),
  ):
    assert common.exit_status(error) == (common.USAGE, f"error: {error}")
  for error in (trainer.NonFiniteLossError("nan"), pretrainer.NonFiniteLossError("nan")):
    assert common.exit_status(error) == (common.NON_FINITE, "error: nan")
  full = OSError(28, "No space left on device", "/w/metrics.jsonl")
  assert common.exit_status(full) == (
      common.IO_ERROR,
      "error: file-system error: No space left on device (/w/metrics.jsonl)",
  )
  assert common.exit_status(ValueError("a bug")) is None  # keeps its traceback
  assert (common.USAGE, common.NON_FINITE, common.IO_ERROR) == (2, 3, 74)


def test_bad_input_is_one_error_line_and_exit_2(capsys):
  with pytest.raises(SystemExit) as stopped, common.bad_input():
    int("x")
  assert stopped.value.code == 2
  assert capsys.readouterr().err == "error: invalid literal for int() with base 10: 'x'\n"
  with pytest.raises(KeyError), common.bad_input():  # not the kinds named: not bad input
    raise KeyError("k")
  with pytest.raises(SystemExit), common.bad_input(KeyError):
    raise KeyError("k")


# launch.train and launch.pretrain are left out: their config modules (agents/*/config.py)
# import JAX when their flags are defined.
@pytest.mark.parametrize(
    "module",
    [
        "launch.collect",
        "launch.sweep",
        "launch.report",
        "launch.bench",
        "launch.gpu_suite",
        "theory.check",
    ],
)
def test_bad_flags_and_arguments_exit_2_without_loading_jax(module):
  code = (
      "import atexit, runpy, sys; "
      "atexit.register(lambda: print('jax loaded:', 'jax' in sys.modules)); "
      f"runpy.run_module({module!r}, run_name='__main__')"
  )
  for args, message in (
      (["--bogus=1"], "error: Unknown command line flag 'bogus'"),
      (["stray"], "error: unexpected arguments: stray"),
  ):
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "jax loaded: False"
