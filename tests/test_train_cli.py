"""End-to-end runs of `python -m launch.train` with the `smoke` config: every output file,
resume after a kill, same-seed determinism, and the bad inputs."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def train_cmd(workdir, *extra, seed=0, game="Pong"):
  return [
      sys.executable,
      "-m",
      "launch.train",
      "--config=smoke",
      f"--game={game}",
      f"--seed={seed}",
      f"--workdir={workdir}",
      *extra,
  ]


def run(cmd, check=True):
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  if check and proc.returncode != 0:
    raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def final_leaves(workdir, step=400):
  from spr import checkpoint

  return checkpoint.read_file(Path(workdir) / "checkpoints" / f"ckpt_{step}.npz")["content"][
      "leaves"
  ]


def assert_same_run(a, b):
  la, lb = final_leaves(a), final_leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)
  assert (Path(a) / "eval.csv").read_text() == (Path(b) / "eval.csv").read_text()
  fa, fb = (json.loads((Path(d) / "final.json").read_text()) for d in (a, b))
  assert fa["mean_score"] == fb["mean_score"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("smoke") / "run"
  proc = run(train_cmd(workdir))
  return workdir, proc


def test_smoke_run_writes_every_output_file(finished_run):
  workdir, proc = finished_run
  config = json.loads((workdir / "config.json").read_text())
  assert config["config_name"] == "smoke" and config["game"] == "Pong" and config["seed"] == 0
  assert config["steps"] == 400 and config["n_step"] == 3

  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [100, 200, 300, 400]
  assert all(np.isfinite(l["loss"]) and l["steps_per_s"] > 0 for l in lines)
  assert (
      lines[-1]["updates"] == 300
  )  # one update per step once more than 100 (learn_start) are stored

  rows = (workdir / "eval.csv").read_text().splitlines()
  assert rows[0] == "episode,score,length" and len(rows) == 3
  final = json.loads((workdir / "final.json").read_text())
  scores = [float(r.split(",")[1]) for r in rows[1:]]
  assert final["mean_score"] == pytest.approx(np.mean(scores))
  assert final["steps"] == final["budget_steps"] == 400 and final["eval_episodes"] == 2
  # Pong: random -20.7, human 14.6.
  assert final["hns"] == pytest.approx((final["mean_score"] + 20.7) / (14.6 + 20.7))
  # A finished run keeps its last checkpoint only (--done_checkpoints=last).
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["ckpt_400.npz"]
  assert "mean score" in proc.stdout


def test_finished_run_says_so_and_exits_zero(finished_run):
  workdir, _ = finished_run
  before = (workdir / "final.json").read_text()
  proc = run(train_cmd(workdir))
  assert "already finished" in proc.stderr
  assert (workdir / "final.json").read_text() == before


def env_workers_of(pid):
  """Pids of the env worker processes (envs/pool.py) whose parent is `pid`."""
  found = []
  for stat in Path("/proc").glob("[0-9]*/stat"):
    try:
      fields = stat.read_text().rsplit(")", 1)[1].split()
      cmdline = (stat.parent / "cmdline").read_bytes()
    except (OSError, IndexError):
      continue
    if int(fields[1]) == pid and b"envs.pool_worker" in cmdline:
      found.append(int(stat.parent.name))
  return found


def running(pid):
  """Whether `pid` is alive (an exited orphan nobody has reaped yet is a zombie: not running)."""
  try:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def test_kill_and_resume_gives_the_uninterrupted_result(finished_run, tmp_path):
  """kill -9 at the first checkpoint, rerun: the same parameters, replay and evaluation as the
  uninterrupted run. Both legs run their evaluation envs in 2 worker processes (the reference
  ran them in process) and have a periodic evaluation (at step 300: it reads the state, changes
  nothing), so the workers are alive from the start and the killed trainer's exit with it."""
  reference, _ = finished_run
  workdir = tmp_path / "killed"
  cmd = train_cmd(workdir, "--env_workers=2", "--eval_every=300", "--eval_every_episodes=1")
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpt = workdir / "checkpoints" / "ckpt_100.npz"
  deadline = time.time() + 300
  while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  workers = env_workers_of(proc.pid)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert ckpt.exists(), "the run never wrote its first checkpoint"
  assert not (workdir / "final.json").exists(), "killed too late to test resuming"
  assert len(workers) == 2
  deadline = time.time() + 30
  while any(map(running, workers)) and time.time() < deadline:
    time.sleep(0.1)
  assert not any(map(running, workers)), "orphaned env workers"
  run(cmd)
  assert_same_run(reference, workdir)
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  for kind, last in (("loss", 400), ("eval_mean_score", 300)):  # no duplicated lines
    steps = [l["step"] for l in lines if kind in l]
    assert steps == sorted(set(steps)) and steps[-1] == last, (kind, steps)


def test_same_seed_same_result_other_seed_differs(finished_run, tmp_path):
  reference, _ = finished_run
  run(train_cmd(tmp_path / "again"))
  assert_same_run(reference, tmp_path / "again")
  run(train_cmd(tmp_path / "seed1", seed=1))
  a, b = final_leaves(reference), final_leaves(tmp_path / "seed1")
  assert any(x.shape == y.shape and not np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--game=Pongg"], "Unknown Atari 100k game"),
        (["--config=nope"], "unknown config"),
        (["--steps=abc"], "malformed value 'abc' for --steps"),
        (["--noisy=maybe"], "malformed value 'maybe' for --noisy"),
        (["--n_step=0"], "n_step must be >= 1"),
        (["--learn_start=2"], "learn_start must be >= 10 with n_step=3, spr_steps=2"),
        (["--seeds=0-1", "--init_from=/nowhere"], "--init_from: /nowhere does not exist"),
        (["--seed=-1"], "--seed must be >= 0"),
        (["--seed=abc"], "flag --seed=abc"),
        (["--bogus=1"], "Unknown command line flag 'bogus'"),
        (["--gamma=2"], "gamma must be in (0, 1]"),
        (["--learning_rate=-1"], "learning_rate and adam_eps must be > 0"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, args, message):
  proc = run(train_cmd(tmp_path / "w", *args), check=False)
  assert proc.returncode == 2
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
  assert not (tmp_path / "w" / "checkpoints").exists()


def test_unknown_game_lists_the_valid_names(tmp_path):
  proc = run(train_cmd(tmp_path / "w", game="Pongg"), check=False)
  assert proc.returncode == 2 and "MsPacman" in proc.stderr and "Breakout" in proc.stderr


def test_workdir_with_another_config_is_refused(finished_run):
  workdir, _ = finished_run
  proc = run(train_cmd(workdir, "--spr_weight=2"), check=False)
  assert proc.returncode == 2
  assert "different config" in proc.stderr and "spr_weight" in proc.stderr


def test_nan_loss_stops_with_the_step_and_keeps_last_good_checkpoint(tmp_path):
  workdir = tmp_path / "nan"
  proc = run(train_cmd(workdir, "--learning_rate=1e38"), check=False)
  assert proc.returncode == 3, proc.stderr[-2000:]
  line = [l for l in proc.stderr.splitlines() if l.startswith("error:")][0]
  assert "non-finite loss at env step" in line
  step = int(line.split("env step ")[1].split()[0])
  assert 100 <= step <= 400
  kept = sorted(int(p.stem.split("_")[1]) for p in (workdir / "checkpoints").glob("ckpt_*.npz"))
  assert all(s < step for s in kept)
  assert not (workdir / "final.json").exists()


def test_periodic_evaluations_are_logged_as_learning_curve_points(tmp_path):
  run(train_cmd(tmp_path / "w", "--eval_every=200", "--eval_every_episodes=1"))
  lines = [json.loads(l) for l in (tmp_path / "w" / "metrics.jsonl").read_text().splitlines()]
  evals = [l for l in lines if "eval_mean_score" in l]
  assert [(l["step"], l["eval_episodes"]) for l in evals] == [(200, 1)]
  assert -21 <= evals[0]["eval_mean_score"] <= 21  # a Pong score


def test_interrupted_run_ctrl_c_second_writer_and_stale_lines(finished_run, tmp_path):
  """One interrupted run, three guarantees (one run to keep the suite short):
  - lines an earlier attempt killed before its first checkpoint logged are dropped by the new run
    (metrics.jsonl would read 100, 200, 100, ...);
  - a second launch.train on the running workdir gets one `error:` line naming the holder's pid,
    exit 2, and touches nothing;
  - SIGINT (Ctrl-C) is a clean stop like SIGTERM: a checkpoint at the step where it arrived, a
    message that is not an `error:`, exit 130; rerunning the command finishes the run exactly as
    the uninterrupted one."""
  reference, _ = finished_run
  workdir = tmp_path / "interrupted"
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text(
      "".join(json.dumps({"step": s, "loss": 1.0, "stale": True}) + "\n" for s in (100, 200))
  )
  proc = subprocess.Popen(
      train_cmd(workdir), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
  )
  first = workdir / "checkpoints" / "ckpt_100.npz"
  deadline = time.time() + 300
  while not first.exists() and proc.poll() is None and time.time() < deadline:
    time.sleep(0.02)
  proc.send_signal(signal.SIGSTOP)  # hold it mid-run while the second writer tries
  try:
    before = (workdir / "metrics.jsonl").read_text()
    assert "stale" not in before
    second = run(train_cmd(workdir), check=False)
    assert second.returncode == 2, second.stderr[-2000:]
    errors = [l for l in second.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and f"in use by pid {proc.pid} " in errors[0], second.stderr[-2000:]
    assert (workdir / "metrics.jsonl").read_text() == before
  finally:
    proc.send_signal(signal.SIGCONT)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=300)
  assert not (workdir / "final.json").exists(), "interrupted too late to test"
  assert proc.returncode == 130, stderr[-2000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith("SIGINT: checkpointed at step") and "Traceback" not in stderr, last
  steps = [int(p.stem.split("_")[1]) for p in (workdir / "checkpoints").glob("ckpt_*.npz")]
  assert max(steps) >= 100 and f"step {max(steps)} " in last
  run(train_cmd(workdir))
  assert_same_run(reference, workdir)
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [100, 200, 300, 400] and not any("stale" in l for l in lines)


def test_a_broken_final_json_is_not_done_and_the_rerun_redoes_the_evaluation(
    finished_run, tmp_path
):
  """One rule for every tool: a final.json that does not parse means "not done". The sweep's
  status says so, and launch.train re-runs the final evaluation from the last checkpoint."""
  import shutil

  from launch import runstate
  from spr import workdir as wd

  reference, _ = finished_run
  copy = tmp_path / "copy"
  shutil.copytree(reference, copy)
  good = json.loads((copy / "final.json").read_text())
  (copy / "final.json").write_text('{"game": "Pong", "mean_sc')  # damaged after the fact
  assert not wd.is_finished(copy) and wd.final_is_broken(copy)
  state = runstate.read_state(copy)
  assert state.state == "failed" and "final.json does not parse" in state.error
  proc = run(train_cmd(copy))
  assert "does not parse" in proc.stderr
  again = json.loads((copy / "final.json").read_text())
  assert again["mean_score"] == good["mean_score"] and again["steps"] == good["steps"]
  assert runstate.read_state(copy).state == "done"


def test_a_workdir_under_a_file_is_a_one_line_file_system_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  proc = run(train_cmd(blocker / "w"), check=False)
  assert proc.returncode == 74, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "file-system error" in errors[0] and str(blocker) in errors[0]
  assert "Traceback" not in proc.stderr and blocker.read_text() == "not a folder"


def test_a_full_size_run_on_a_cpu_says_how_long_and_how_to_use_a_gpu(caplog):
  import logging

  from agents.spr import engine
  from agents.spr.config import make_config

  with caplog.at_level(logging.INFO, logger="absl"):
    engine._announce_device(make_config("spr"))  # pylint: disable=protected-access
    engine._announce_device(make_config("smoke"))  # pylint: disable=protected-access
  text = caplog.text
  assert "running on CPU" in text
  assert text.count('pip install -U "jax[cuda12]"') == 1  # spr only: smoke is tiny
  assert "196000 gradient updates" in text
