"""launch.gpu_suite on the CPU: the dry run goes through every step and writes its tables and
JSON; a step that overruns its budget is killed, recorded as timed out, and the suite goes on.

The suite runs as a subprocess (as on a GPU machine); launch.gpu_suite is not imported here
(its absl flags would collide with other entry points' in a shared pytest process)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["environment", "single", "multi", "train", "probes"]
STEP_KEYS = {
    "step",
    "index",
    "status",
    "reason",
    "seconds",
    "budget_s",
    "key_figure",
    "parts",
    "result",
    "markdown",
}


def _suite(out, *args, timeout=600):
  return subprocess.run(
      [
          sys.executable,
          "-m",
          "launch.gpu_suite",
          f"--out={out}",
          "--dry_run",
          f"--work_dir={out}-work",
          *args,
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def _step(out, index, name):
  data = json.loads((out / "steps" / f"{index:02d}_{name}.json").read_text())
  assert STEP_KEYS <= set(data), data.keys()
  return data


def test_dry_run_runs_every_step_and_writes_tables_and_json(tmp_path):
  # The dry run's defaults, trimmed to one config per bench step to keep this test short; the
  # stretch's second game shares Pong's action count (one group: the 2-run program launch.bench
  # compiled in step 3 comes from the compilation cache).
  out = tmp_path / "suite"
  proc = _suite(
      out,
      "--budget_s=900",
      "--single_configs=smoke",
      "--multi_configs=smoke",
      "--train_games=Pong,Qbert",
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  # The final lines: the summary table, one row per step.
  tail = proc.stdout.strip().splitlines()[-len(STEPS) :]
  assert [l.split("|")[1].strip() for l in tail] == STEPS, tail
  assert all(l.split("|")[2].strip() == "ok" for l in tail), tail

  suite = json.loads((out / "suite.json").read_text())
  assert suite["finished"] and suite["settings"]["dry_run"]
  assert [s["step"] for s in suite["steps"]] == STEPS
  assert "| environment | ok |" in (out / "summary.md").read_text()
  tables = (out / "tables.md").read_text()
  for heading in (
      "1. Environment",
      "2. Single run",
      "3. Multi-run table",
      "4. Training stretch",
      "5. Design probes",
  ):
    assert heading in tables
  assert "EXTRAPOLATED" in tables

  env = _step(out, 1, "environment")
  check = env["result"]["update_check"]
  assert env["result"]["backend"] == "cpu" and env["result"]["jax_version"]
  assert check["output_platforms"] == ["cpu"] and not check["on_gpu"]  # a dry run: not a failure
  assert check["host_markers"] == [] and check["transfer_error"] is None
  assert check["loss_finite"] and check["update_ms"] > 0

  single = _step(out, 2, "single")
  assert single["result"]["rows"]["smoke"]["update_ms"] > 0

  multi = _step(out, 3, "multi")
  assert [(r["config"], r["runs"]) for r in multi["result"]["rows"]] == [("smoke", 1), ("smoke", 2)]
  assert all(r["updates_per_s"] > 0 and r["compile_s"] > 0 for r in multi["result"]["rows"])

  train = _step(out, 4, "train")
  assert [p["name"] for p in train["parts"]] == ["1game", "2games"]
  assert all(p["outcome"] == "stopped" for p in train["parts"])  # target reached, then killed
  for batch in train["result"]["batches"].values():
    assert batch["reached_step"] >= batch["learn_start"] + 100  # dry run's --train_steps
    assert batch["rate_per_run"] > 0 and batch["extrapolated_full_run_s"] > 0
  assert train["result"]["extrapolated_table_s"] > 0
  assert train["key_figure"].startswith("EXTRAPOLATED")

  probes = _step(out, 5, "probes")
  assert any("unpadded" in r["name"] for r in probes["result"]["rows"])

  for raw in ("01_environment.json", "02_single.jsonl", "03_multi.jsonl", "05_probes.jsonl"):
    assert (out / "raw" / raw).stat().st_size > 0
  logs = sorted(p.name for p in (out / "logs").iterdir())
  assert logs == [
      "01_environment_check.log",
      "02_single_smoke.log",
      "03_multi_smoke.log",
      "04_train_1game.log",
      "04_train_2games.log",
      "05_probes_probes.log",
  ]


def test_a_step_over_its_budget_is_timed_out_and_the_suite_goes_on(tmp_path):
  """environment gets 0.5 s (killed), single then runs to the end; multi's first config
  overruns its share of 6 s and the optional second one is skipped for lack of time."""
  out = tmp_path / "suite"
  proc = _suite(
      out,
      "--only=environment,single,multi",
      "--single_configs=smoke",
      "--multi_configs=smoke,bbf_smoke",
      "--step_budget_s=environment=0.5,multi=6",
  )
  assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
  env = _step(out, 1, "environment")
  assert env["status"] == "timed_out" and "killed after its budget" in env["reason"]
  assert env["seconds"] < 30
  assert _step(out, 2, "single")["status"] == "ok"
  multi = _step(out, 3, "multi")
  assert multi["status"] == "timed_out"
  smoke, bbf = multi["parts"]
  assert smoke["status"] == "timed_out" and bbf["status"] == "skipped" and bbf["optional"]
  suite = json.loads((out / "suite.json").read_text())
  assert [(s["step"], s["status"]) for s in suite["steps"]] == [
      ("environment", "timed_out"),
      ("single", "ok"),
      ("multi", "timed_out"),
      ("train", "skipped"),
      ("probes", "skipped"),
  ]
  assert suite["steps"][3]["reason"] == "not selected (--only)"
  assert "| environment | timed_out |" in (out / "summary.md").read_text()


def test_host_work_in_a_compiled_program_is_found():
  """The environment check's detector: a host callback inside a jitted function is reported,
  a plain program is clean (run in a subprocess: see the module docstring)."""
  code = """if True:
    import jax, jax.numpy as jnp, numpy as np
    from launch.gpu_suite import host_markers
    text = lambda f: jax.jit(f).lower(jnp.ones(3)).compile().as_text()
    cb = lambda x: jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)
    print(host_markers(text(cb)), host_markers(text(lambda x: jnp.sin(x) * 2)))"""
  proc = subprocess.run(
      [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip() == "['host callback'] []"


def test_auto_batch_is_the_largest_that_should_fit():
  """--train_games=auto: all games when the estimate fits, else one action-count group, else 4
  of its games; the 1-game stretch's fixed costs are paid once per group (pure function, run in
  a subprocess: see the module docstring)."""
  code = """if True:
    from launch.gpu_suite import choose_train_games
    counts = dict(A=18, B=18, C=18, D=18, E=18, F=6, G=4)
    one = dict(rate_per_run=100.0, startup_s=10, pre_compile_s=5, update_compile_s=15,
               learn_start=2000)
    rows = [dict(runs=1, speedup=1.0), dict(runs=4, speedup=3.0)]
    for left in (1000, 150, 10):  # 85% of it must cover the estimate
      games, info = choose_train_games(counts, one, rows, left, 100)
      print(",".join(games), [round(e["need_s"]) for e in info["estimates"]])
    print(",".join(choose_train_games(counts, {}, rows, 1000, 100)[0]))"""
  proc = subprocess.run(
      [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  # All 7 games: 3 groups x 30 s + 2300 steps x 7 runs / (100 x 3.0) steps/s = 144 s; the 5 games
  # of 18 actions: 30 + 2300 x 5 / 300 = 68 s; 4 of them: 30 + 2300 x 4 / 300 = 61 s.
  assert proc.stdout.splitlines() == [
      "A,B,C,D,E,F,G [144, 68, 61]",
      "A,B,C,D,E [144, 68, 61]",
      "A,B,C,D [144, 68, 61]",
      "A,B,C,D",
  ]
