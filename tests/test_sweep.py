"""Sweeps: grid expansion, run states, the local backend (throttling, GPUs, skip-if-done,
resume after a kill or crash), requeue after a forced timeout, SLURM parameters.

Jobs are tests/fake_run.py (same workdir contract as launch.train), not the real trainer.
"""

import json
import os
import pickle
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch import backends, grid, jobspec, runstate

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FAKE_ENV = {"PYTHONPATH": str(TESTS)}


def fake_specs(root, games=("pong",), seeds=(0,), **overrides):
  sweep = grid.SweepDef(
      configs=["fake"],
      games=list(games),
      seeds=list(seeds),
      fixed=[(k, str(v)) for k, v in overrides.items()],
  )
  return [
      jobspec.build_spec(p, root, sweep, module="fake_run", env=FAKE_ENV) for p in sweep.points()
  ]


def attempts(spec):
  lines = (spec.path / "attempts.jsonl").read_text().splitlines()
  return [json.loads(x) for x in lines]


def metric_steps(spec):
  return [json.loads(x)["step"] for x in (spec.path / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------ grid
def test_grid_expansion_labels_and_commands(tmp_path):
  sweep = grid.SweepDef(
      configs=["spr", "der"],
      games=grid.parse_games("MsPacman,pong"),
      seeds=grid.parse_seeds("0-2"),
      fixed=[("steps", "1000")],
      grid=["lr=1e-4,3e-4"],
  )
  points = sweep.points()
  assert len(points) == 2 * 2 * 2 * 3
  labels = sorted({p.label for p in points})
  assert labels == [
      "der+steps=1000+lr=1e-4",
      "der+steps=1000+lr=3e-4",
      "spr+steps=1000+lr=1e-4",
      "spr+steps=1000+lr=3e-4",
  ]
  assert len({(p.label, p.game, p.seed) for p in points}) == len(points)
  p = next(
      p
      for p in points
      if p.label == "spr+steps=1000+lr=3e-4" and p.game == "MsPacman" and p.seed == 2
  )
  spec = jobspec.build_spec(p, tmp_path, sweep)
  wd = tmp_path / "spr+steps=1000+lr=3e-4" / "MsPacman" / "seed_2"
  assert spec.module == "launch.train" and spec.workdir == str(wd)
  assert spec.args == (
      "--config=spr",
      "--game=MsPacman",
      "--seed=2",
      f"--workdir={wd}",
      "--steps=1000",
      "--lr=3e-4",
  )

  assert len(grid.parse_games("all")) == 26
  assert grid.parse_games("ms_pacman,MSPACMAN,UpNDown") == ["MsPacman", "UpNDown"]
  assert grid.parse_seeds("0,2,5-7") == [0, 2, 5, 6, 7]
  assert grid.parse_seeds(" 7 , 0-1,") == [7, 0, 1]  # the order given; blanks ignored
  for bad in ("3-1", "a", "-1", "0-", "", " , ", "1,1", "0-2,2"):
    with pytest.raises(grid.GridError, match="seed"):
      grid.parse_seeds(bad)
  with pytest.raises(grid.GridError, match="unknown game 'zork'"):
    grid.parse_games("pong,zork")
  with pytest.raises(grid.GridError):
    grid.SweepDef(configs=["a", "b"], games=["pong"], seeds=[0], name="x").points()


def test_pretrain_and_finetune_specs(tmp_path):
  pre = grid.SweepDef(configs=["sgi"], games=["pong", "alien"], seeds=[0], entry="pretrain")
  spec = jobspec.build_spec(pre.points()[0], tmp_path / "pre", pre)
  assert spec.module == "launch.pretrain" and "--games=Pong" in spec.args
  joint = grid.SweepDef(
      configs=["sgi"], games=["pong", "alien"], seeds=[0, 1], entry="pretrain", joint=True
  )
  pts = joint.points()
  assert len(pts) == 2 and pts[0].game == grid.JOINT
  assert "--games=Pong,Alien" in jobspec.build_spec(pts[0], tmp_path, joint).args
  ft = grid.SweepDef(
      configs=["sgi_ft"],
      games=["pong"],
      seeds=[3],
      init_from=str(tmp_path / "pre/sgi/{game}/seed_{seed}"),
  )
  spec = jobspec.build_spec(ft.points()[0], tmp_path / "ft", ft)
  assert spec.module == "launch.train"
  assert f"--init_from={tmp_path}/pre/sgi/Pong/seed_3" in spec.args


def test_workdirs_of_older_sweeps_are_still_found(tmp_path):
  """Sweeps before the one game table named game folders by ROM id (`ms_pacman`); such a
  workdir is resumed or skipped, listed once by --status, and merged into sweep.json."""
  from launch import sweep

  root = tmp_path / "runs"
  old = root / "spr" / "ms_pacman" / "seed_0"
  old.mkdir(parents=True)
  (old / "final.json").write_text("{}")
  (root / "spr" / "sweep.json").write_text(json.dumps({"games": ["ms_pacman"], "seeds": [0]}))
  sweep_def = grid.SweepDef(configs=["spr"], games=grid.parse_games("MsPacman"), seeds=[0, 1])
  points = sweep_def.points()
  specs = [jobspec.build_spec(p, root, sweep_def) for p in points]
  assert [s.path for s in specs] == [old, root / "spr" / "MsPacman" / "seed_1"]
  assert "--game=MsPacman" in specs[0].args
  todo, done, _ = backends.runnable(specs)
  assert (done, todo) == ([specs[0]], [specs[1]])
  specs[1].path.mkdir(parents=True)
  assert sweep.discovered_runs(root) == [
      ("spr", "MsPacman", 0, old),
      ("spr", "MsPacman", 1, specs[1].path),
  ]
  grid.write_manifest(root, "spr", sweep_def, points, {})
  assert grid.read_manifest(root / "spr")["games"] == ["MsPacman"]
  # a finetuning sweep finds the pretraining workdir an older sweep wrote
  pre = tmp_path / "pre" / "ms_pacman" / "seed_0"
  pre.mkdir(parents=True)
  template = str(tmp_path / "pre" / "{game}" / "seed_{seed}")
  assert jobspec.init_from_path(template, points[0]) == str(pre)
  assert jobspec.init_from_path(template, points[1]) == str(tmp_path / "pre/MsPacman/seed_1")


def test_cli_bad_input_one_line_errors(tmp_path):
  def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "launch.sweep", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )

  r = run("--config=spr", "--games=pong,zork", f"--root={tmp_path}", "--dry_run")
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith(
      "error: unknown game 'zork'"
  )
  r = run("--config=spr", "--seeds=5-2", f"--root={tmp_path}", "--dry_run")
  assert r.returncode == 2 and "error: bad seed range" in r.stderr
  r = run(f"--root={tmp_path / 'nope'}", "--status")
  assert r.returncode == 2 and "does not exist" in r.stderr
  r = run("--config=spr", "--games=pong", "--seeds=0-1", f"--root={tmp_path}", "--dry_run")
  assert r.returncode == 0 and r.stdout.count("-m launch.train") == 2
  # Every configuration is resolved before any job starts (issue 12: doomed sweeps).
  for args, message in (
      (["--config=nope"], "unknown config 'nope'"),
      (["--config=spr", "--set=bogus=1"], "unknown setting 'bogus'"),
      (["--config=spr", "--grid=n_step=0,3"], "n_step must be >= 1"),
  ):
    r = run(*args, "--games=pong", "--seeds=0", f"--root={tmp_path / 'doomed'}")
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("error: ") and message in last, r.stderr
    assert "no job was started" in last and not (tmp_path / "doomed").exists()


# ------------------------------------------------------------------------------ states
def test_run_states_from_workdir(tmp_path):
  wd = tmp_path / "run"
  assert runstate.read_state(wd).state == "pending"
  wd.mkdir()
  (wd / "config.json").write_text(json.dumps({"steps": 100}))
  (wd / "metrics.jsonl").write_text(
      '{"step": 10, "time_s": 1}\n{"step": 20, "time_s": 2}\n{"step": 3'
  )
  st = runstate.read_state(wd)
  assert (st.state, st.step, st.budget) == ("interrupted", 20, 100)
  (wd / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
  assert runstate.read_state(wd).state == "running"
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  (wd / "run.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
  assert runstate.read_state(wd).state == "interrupted"
  (wd / "run.lock").write_text(
      json.dumps({"pid": 1, "host": "other-node"})
  )  # fresh heartbeat elsewhere
  assert runstate.read_state(wd).state == "running"
  old = time.time() - runstate.STALE_S - 5
  os.utime(wd / "run.lock", (old, old))
  assert runstate.read_state(wd).state == "interrupted"
  (wd / "run.lock").unlink()
  (wd / "log.txt").write_text("Traceback ...\nValueError: bad learning rate\n\n")
  (wd / "exit.json").write_text(json.dumps({"returncode": 1}))
  st = runstate.read_state(wd)
  assert (st.state, st.error) == ("failed", "ValueError: bad learning rate")
  # The cause, not absl's closing hint: an entry point's `error:` line, else the exception.
  (wd / "log.txt").write_text(
      "I1129 some log\nerror: unknown setting 'bogus'\n"
      "Pass --helpshort or --helpfull to see help on flags.\n"
  )
  assert runstate.read_state(wd).error == "error: unknown setting 'bogus'"
  (wd / "exit.json").write_text(json.dumps({"returncode": -9}))
  assert runstate.read_state(wd) == runstate.RunState("interrupted", 20, 100, "killed by SIGKILL")
  (wd / "final.json").write_text('{"mean_sc')  # does not parse: not done
  st = runstate.read_state(wd)
  assert st.state == "failed" and "final.json does not parse" in st.error
  (wd / "final.json").write_text("{}")
  assert runstate.read_state(wd).state == "done"


# ------------------------------------------------------------------------------ local backend
def test_local_backend_throttles_assigns_gpus_and_skips_done(tmp_path):
  specs = fake_specs(tmp_path, games=("pong", "alien"), seeds=(0, 1, 2), steps=6, sleep=0.15)
  opts = backends.LocalOptions(max_parallel=2, gpus=[0, 1], poll_s=0.2)
  states = backends.run_local(specs, tmp_path / ".submitit" / "%j", opts, log=lambda m: None)
  assert {s.state for s in states.values()} == {"done"}
  spans = []
  for s in specs:
    a = attempts(s)
    assert len(a) == 2  # one start, one end: ran once
    spans.append((a[0]["t0"], a[1]["end"], a[0]["cuda"], a[0]["mem_fraction"]))
  events = sorted([(t0, 1) for t0, _, _, _ in spans] + [(t1, -1) for _, t1, _, _ in spans])
  live, peak = 0, 0
  for _, d in events:
    live += d
    peak = max(peak, live)
  assert peak == 2, "at most max_parallel runs at a time (and the slots were used)"
  for i, (a0, a1, ga, _) in enumerate(spans):
    for b0, b1, gb, _ in spans[i + 1 :]:
      if a0 < b1 and b0 < a1:
        assert ga != gb, "runs that overlap in time are on different GPUs"
  assert {c for *_, c, _ in spans} <= {"0", "1"} and all(m is None for *_, m in spans)

  # skip-if-done: a second sweep starts nothing
  logs = []
  backends.run_local(specs, tmp_path / ".submitit" / "%j", opts, log=logs.append)
  assert "6 done (skipped)" in logs[0] and "0 to run" in logs[0]
  assert all(len(attempts(s)) == 2 for s in specs)

  # several runs per GPU: each gets a share of its memory, and of the cores for its env
  # workers (envs/pool.py reads SPR_CORES)
  cores = str(max(1, len(os.sched_getaffinity(0)) // 4))
  assert backends._slot_env(1, backends.LocalOptions(max_parallel=4, gpus=[0, 1])) == {
      "CUDA_VISIBLE_DEVICES": "1",
      "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.45",
      "SPR_CORES": cores,
  }
  assert "SPR_CORES" not in backends._slot_env(0, backends.LocalOptions(max_parallel=1))


def test_local_backend_resumes_after_kill_and_crash(tmp_path):
  from launch import sweep

  (killed,) = fake_specs(tmp_path, games=("pong",), steps=6, kill_at=3)
  (crashed,) = fake_specs(tmp_path, games=("alien",), steps=6, crash_at=2)
  opts = backends.LocalOptions(max_parallel=2, poll_s=0.2)
  states = backends.run_local(
      [killed, crashed], tmp_path / ".submitit" / "%j", opts, log=lambda m: None
  )
  assert states[killed.workdir] == runstate.RunState("interrupted", 3, 6, "killed by SIGKILL")
  assert states[crashed.workdir] == runstate.RunState(
      "failed", 2, 6, "RuntimeError: forced crash at step 2"
  )
  table = sweep.format_status(
      [
          ("fake", "pong", 0, killed.path),
          ("fake", "alien", 0, crashed.path),
          ("fake", "boxing", 0, tmp_path / "none"),
      ]
  )
  assert "interrupted  3/6" in table and "RuntimeError: forced crash at step 2" in table
  assert "3 runs: 1 pending, 0 running, 0 done, 1 failed, 1 interrupted" in table

  states = backends.run_local(
      [killed, crashed], tmp_path / ".submitit" / "%j", opts, log=lambda m: None
  )
  assert {s.state for s in states.values()} == {"done"}
  assert [a["start_step"] for a in attempts(killed) if "start_step" in a] == [0, 3]
  assert [a["start_step"] for a in attempts(crashed) if "start_step" in a] == [0, 2]
  assert metric_steps(killed) == [1, 2, 3, 4, 5, 6] and metric_steps(crashed) == [1, 2, 3, 4, 5, 6]
  assert not (killed.path / "run.lock").exists()
  assert (killed.path / "log.txt").read_text().count("### ") == 2


def test_requeue_after_forced_timeout_finishes_run(tmp_path):
  (spec,) = fake_specs(tmp_path, steps=16, sleep=0.25)  # 4 s of work
  # submitit local executor: USR2 2 s into each 4 s attempt -> stop trainer -> requeue
  opts = backends.LocalOptions(
      max_parallel=1, timeout_min=4 / 60, signal_delay_s=2, grace_s=1, max_requeues=6, poll_s=0.2
  )
  states = backends.run_local([spec], tmp_path / "sub" / "%j", opts, log=lambda m: None)
  assert states[spec.workdir].state == "done"
  starts = [a["start_step"] for a in attempts(spec) if "start_step" in a]
  assert len(starts) >= 2 and starts[0] == 0 and all(b > a for a, b in zip(starts, starts[1:]))
  assert metric_steps(spec) == list(range(1, 17))
  logs = "".join(p.read_text() for p in (tmp_path / "sub").rglob("*_log.*"))
  assert "Requeued job" in logs
  final = json.loads((spec.path / "final.json").read_text())
  assert final["steps"] == final["budget_steps"] == 16


# ------------------------------------------------------------------------------ SLURM
def test_slurm_executor_parameters_and_array(tmp_path, monkeypatch):
  from submitit.slurm import slurm

  monkeypatch.setattr(
      slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 2)
  )  # pretend srun exists
  opts = backends.SlurmOptions(
      partition="gpu",
      time_min=720,
      gpus_per_job=1,
      cpus_per_job=10,
      mem_gb=64,
      array_parallelism=8,
      max_requeues=7,
      signal_delay_s=120,
      grace_s=60,
      setup=["source /opt/venv/bin/activate"],
      additional={"account": "rl"},
  )
  ex = backends.make_slurm_executor(tmp_path / "%j", opts)
  inner = ex._executor
  assert isinstance(inner, slurm.SlurmExecutor) and inner.max_num_timeout == 7
  text = inner._make_submission_file_text("CMD", "uid")
  for line in (
      "#SBATCH --partition=gpu",
      "#SBATCH --time=720",
      "#SBATCH --gpus-per-node=1",
      "#SBATCH --cpus-per-task=10",
      "#SBATCH --mem=64GB",
      "#SBATCH --signal=USR2@120",
      "#SBATCH --account=rl",
      "#SBATCH --ntasks-per-node=1",
      "source /opt/venv/bin/activate",
  ):
    assert line in text, line
  array_text = slurm._make_sbatch_string(
      command="CMD", folder=tmp_path, map_count=26, **inner.parameters
  )
  assert "#SBATCH --array=0-25%8" in array_text
  with pytest.raises(ValueError):
    backends.make_slurm_executor(tmp_path, backends.SlurmOptions(time_min=1.5))

  # submission: one RunJob per unfinished run, in one batch (= one job array)
  specs = fake_specs(tmp_path, seeds=(0, 1, 2))
  specs[1].path.mkdir(parents=True)
  (specs[1].path / "final.json").write_text("{}")

  class Stub:
    submitted, batches = [], 0

    def batch(self):
      import contextlib

      Stub.batches += 1
      return contextlib.nullcontext()

    def submit(self, fn):
      Stub.submitted.append(fn)
      return type("J", (), {"job_id": f"42_{len(Stub.submitted) - 1}"})()

  submitted = backends.submit_slurm(specs, tmp_path, opts, log=lambda m: None, executor=Stub())
  assert len(submitted) == 2 and Stub.batches == 1
  assert [j.spec for j in Stub.submitted] == [specs[0], specs[2]]
  job = pickle.loads(pickle.dumps(Stub.submitted[0]))  # what submitit pickles
  assert job.spec == specs[0] and job.grace_s == 60
  delayed = job.checkpoint()  # requeue semantics: the same run again
  assert isinstance(delayed.function, backends.RunJob) and delayed.function.spec == specs[0]
