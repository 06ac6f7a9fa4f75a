"""The GPU suite: one prepared command that measures what a GPU can tell us, in eight minutes.

    pip install -U "jax[cuda12]"                      # once, on the GPU machine
    python -m launch.gpu_suite --out=gpu_suite_out    # about 8 minutes on one H200 (--budget_s)
    python -m launch.gpu_suite --out=/tmp/suite --dry_run   # the same steps, tiny configs, CPU

Steps, in this order, each with a wall-time budget (a step that overruns it is killed, recorded
as `timed_out`, and the suite goes on):

  1. environment - device name and kind, device count, JAX / jaxlib / CUDA versions, and a check
     that the learner update really runs on the accelerator: the update is jitted and compiled,
     its compiled program is searched for host callbacks and host transfers (a loss silently
     computed on the host is a known trap of the reference code), it runs under
     `jax.transfer_guard("disallow")`, and its outputs must live on a GPU device with
     `jax.default_backend() == "gpu"` (with --dry_run on CPU the check reports "cpu" and passes).
  2. single - `launch.bench`'s single-run table (ms per update, fused env step, acting) of `spr`
     and `bbf`.
  3. multi - `launch.bench`'s multi-run table of `spr` at 1, 4, 16 and 26 runs (then `bbf_rr2`
     if time is left): updates/s, env steps/s through env worker processes, device memory peak,
     compile time.
  4. train - a timed stretch of the real `spr` config through the multi-run path
     (`launch.train --games=... --seeds=0`): first 1 game, then a batch of games (the 26 x 1 seed
     if that is estimated to fit, else fewer: `choose_train_games`), each until `--train_steps`
     env steps after learn_start or its time box, then killed (no checkpoint, no evaluation).
     From its metrics.jsonl windows it EXTRAPOLATES the wall time of a full 100k run and of the
     26-game table (labelled as an extrapolation wherever printed).
  5. probes - `launch.bench --probes` (env threads vs processes, evaluation act vmap / lax.map
     and the padded evaluation tail, init jit).

Budgets: each step gets a share of the time left (weights `_WEIGHTS`; what a fast step leaves
goes to the later ones), or a fixed `--step_budget_s=name=seconds`. Within a step, each part
(one subprocess: one config, one batch of games) gets a share of the step's time left.

Every step is a subprocess: this process never initialises JAX (on a GPU JAX preallocates most of
the device memory in the first process that uses it), a crash or an out-of-memory (26 runs of
BBF) ends only its step, and an overrunning step can be killed (SIGKILL to its process group,
env worker processes included) - a compile stuck in XLA cannot be interrupted in-process. The
subprocesses share a persistent XLA compilation cache (`--work_dir`), so a program compiled by
one step (the update of step 1, the 1-run step of step 3) is loaded, not recompiled, by the next.

Output (`--out`), written after every step, so a suite killed part way keeps what it finished:
  summary.md           the summary table (step | status | key figure | seconds)
  tables.md            every step's tables (markdown)
  suite.json           the flags, the machine, and every step's summary
  steps/NN_<step>.json the raw result of one step (its parts, commands, exit codes, figures)
  raw/NN_<step>.jsonl  the rows `launch.bench --json` wrote (row by row, as measured)
  logs/NN_<step>_<part>.log   stdout + stderr of each subprocess
The training stretches' workdirs and the compilation cache live in `--work_dir` (by default a
temporary folder, removed at the end).
`--bundle=PATH.tgz` keeps a tar.gz of the whole output folder, rewritten after every step: one
file to bring back from a machine that returns only a few.
Exit codes (launch/common.py): 0 when every selected step ended `ok`, 1 otherwise, 2 bad flags,
130 stopped by SIGTERM or Ctrl-C (what was finished is kept).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from absl import flags

from launch import common, runstate

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("environment", "single", "multi", "train", "probes")
# Shares of the time left (see `Suite._allot`): compiles dominate steps 1-3 on a GPU; the
# training stretch starts up to 26 runs and compiles two batched steps (without and with updates)
# per action count (the 26 games have 9).
_WEIGHTS = dict(environment=0.10, single=0.20, multi=0.27, train=0.33, probes=0.10)
MIN_STEP_S = 3.0  # a step with less time than this left is skipped (it could not even start)
TARGET_FULL_RUN_S = 600.0  # issue 13's targets on one H200: a full 100k SPR run in <= 10 min,
TARGET_SPEEDUP = 10.0  # and 26 concurrent runs >= 10x the throughput of one
TABLE_GAMES = 26

_OUT = flags.DEFINE_string("out", None, "Output folder (created): tables, JSON, logs.")
_DRY_RUN = flags.DEFINE_boolean(
    "dry_run",
    False,
    "Tiny configs (smoke, bbf_smoke), runs 1,2 and "
    "a few hundred steps, on the CPU: the whole sequence in a few "
    "minutes (a test runs it so that the suite cannot rot).",
)
_BUDGET_S = flags.DEFINE_float("budget_s", 480.0, "Total wall-time budget of the steps (s).")
_ONLY = flags.DEFINE_list("only", list(STEPS), f"Steps to run, of {list(STEPS)} (in that order).")
_STEP_BUDGET_S = flags.DEFINE_list(
    "step_budget_s",
    [],
    "Fixed budgets of some steps, " "'name=seconds' (e.g. train=200); the others share the rest.",
)
_BUNDLE = flags.DEFINE_string(
    "bundle",
    None,
    "Also keep a .tar.gz of --out at this path, "
    "rewritten after every step (a device machine returns only a few "
    "files).",
)
_WORK_DIR = flags.DEFINE_string(
    "work_dir",
    None,
    "Scratch folder (training workdirs, XLA "
    "compilation cache), kept; default: a new temporary folder, "
    "removed at the end.",
)
_REQUIRE_GPU = flags.DEFINE_boolean(
    "require_gpu",
    None,
    "Skip the steps after the environment "
    "check when JAX has no GPU (default: true unless --dry_run).",
)
# The knobs of launch.bench (same names and meanings), passed through to it.
_SINGLE_CONFIGS = flags.DEFINE_list(
    "single_configs",
    None,
    "Configs of the single-run table " "(default spr,bbf; dry run smoke,bbf_smoke).",
)
_RUNS = flags.DEFINE_string(
    "runs",
    None,
    "Concurrent runs of the multi-run table (bench --runs; " "default 1,4,16,26; dry run 1,2).",
)
_MULTI_CONFIGS = flags.DEFINE_list(
    "multi_configs",
    None,
    "Configs of the multi-run table, each "
    "in its own process; the first always runs, the others if "
    "time is left (default spr,bbf_rr2; dry run smoke,bbf_smoke).",
)
_FILL = flags.DEFINE_integer("fill", None, "bench --fill (default 5000; dry run 300).")
_REPEATS = flags.DEFINE_integer("repeats", None, "bench --repeats (default 20; dry run 3).")
_GAME = flags.DEFINE_string("game", "Pong", "bench --game (sets the action count).")
_TRAIN_CONFIG = flags.DEFINE_string(
    "train_config", None, "Config of the training stretch " "(default spr; dry run smoke)."
)
_TRAIN_GAMES = flags.DEFINE_string(
    "train_games",
    None,
    "Games of the batched training stretch: 'all' (the 26), a list, or "
    "'auto': all 26 if they should fit the time left, else the 13 games of 18 actions, else 4 of "
    "them (see choose_train_games; default auto; dry run Pong,Breakout).",
)
_TRAIN_STEPS = flags.DEFINE_integer(
    "train_steps",
    None,
    "Env steps after learn_start to time "
    "(default 1000; dry run 100); the time box may stop it first.",
)
_TRAIN_LOG_EVERY = flags.DEFINE_integer(
    "train_log_every",
    None,
    "metrics.jsonl window of the "
    "stretch in env steps (default 100; dry run 25); "
    "should divide learn_start.",
)


@dataclasses.dataclass
class Part:
  """One subprocess of a step."""

  name: str
  command: list[str]
  weight: float = 1.0
  optional: bool = False  # skipped (without failing the step) when less than min_s is left
  min_s: float = MIN_STEP_S
  monitor: Callable[[], bool] | None = None  # polled; True: the part reached its goal, stop it
  on_start: Callable[[], None] | None = None  # called just before the subprocess starts


@dataclasses.dataclass
class Settings:
  """The resolved settings of one suite run (dry-run or GPU defaults, then the flags)."""

  dry_run: bool
  budget_s: float
  only: list[str]
  step_budget_s: dict[str, float]
  require_gpu: bool
  single_configs: list[str]
  runs: str
  multi_configs: list[str]
  fill: int
  repeats: int
  game: str
  env_config: str
  probe_config: str
  train_config: str
  train_single_game: str
  train_games: list[str] | None  # None: auto (see choose_train_games)
  train_steps: int
  train_log_every: int
  optional_min_s: float


def resolve_settings() -> Settings:
  dry = _DRY_RUN.value
  pick = lambda flag, gpu, cpu: flag.value if flag.value is not None else (cpu if dry else gpu)
  unknown = [s for s in _ONLY.value if s not in STEPS]
  if unknown:
    raise ValueError(f"--only: unknown steps {unknown}; steps are {list(STEPS)}")
  fixed = {}
  for item in _STEP_BUDGET_S.value:
    name, _, seconds = item.partition("=")
    if name not in STEPS or not seconds:
      raise ValueError(
          f"--step_budget_s: expected name=seconds with a name of {list(STEPS)}, " f"got {item!r}"
      )
    fixed[name] = float(seconds)
  games_text = pick(_TRAIN_GAMES, "auto", "Pong,Breakout")
  from envs import games  # no JAX: the game table only

  train_games = (
      None
      if games_text == "auto"
      else list(games.GAMES)
      if games_text == "all"
      else [games.canonical_name(g) for g in games_text.split(",") if g.strip()]
  )
  return Settings(
      dry_run=dry,
      budget_s=_BUDGET_S.value,
      only=list(_ONLY.value),
      step_budget_s=fixed,
      require_gpu=pick(_REQUIRE_GPU, True, False),
      single_configs=pick(_SINGLE_CONFIGS, ["spr", "bbf"], ["smoke", "bbf_smoke"]),
      runs=pick(_RUNS, "1,4,16,26", "1,2"),
      multi_configs=pick(_MULTI_CONFIGS, ["spr", "bbf_rr2"], ["smoke", "bbf_smoke"]),
      fill=pick(_FILL, 5000, 300),
      repeats=pick(_REPEATS, 20, 3),
      game=games.canonical_name(_GAME.value),
      env_config="smoke" if dry else "spr",
      probe_config="smoke" if dry else "spr",
      train_config=pick(_TRAIN_CONFIG, "spr", "smoke"),
      train_single_game=games.canonical_name(_GAME.value),
      train_games=train_games,
      train_steps=pick(_TRAIN_STEPS, 1000, 100),
      train_log_every=pick(_TRAIN_LOG_EVERY, 100, 25),
      optional_min_s=5.0 if dry else 60.0,
  )


# ------------------------------------------------------------------ subprocesses and time boxes
def _kill_group(proc: subprocess.Popen) -> None:
  """SIGKILL to the process group this suite started (the step and its env workers)."""
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  try:
    proc.wait(timeout=30)
  except subprocess.TimeoutExpired:  # pragma: no cover - a process stuck in the kernel
    pass


def run_command(
    command: list[str],
    log_path: Path,
    budget_s: float,
    env: dict[str, str],
    monitor: Callable[[], bool] | None = None,
    poll_s: float = 0.25,
) -> dict:
  """Runs `command` (stdout + stderr to `log_path`) for at most `budget_s` seconds.

  Returns {outcome: exited | stopped | timed_out, rc, seconds}: `stopped` when `monitor()`
  returned True (the part reached its goal and was killed on purpose). The command runs in a
  process group of its own, killed as a whole when the command is stopped or overruns, and
  also when it exited (an orphaned worker must not outlive its step)."""
  t0 = time.monotonic()
  outcome = None
  with open(log_path, "wb") as log:
    log.write(f"$ {shlex.join(command)}\n".encode())
    log.flush()
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
      while outcome is None:
        try:
          proc.wait(timeout=poll_s)
          outcome = "exited"
        except subprocess.TimeoutExpired:
          if monitor is not None and monitor():
            outcome = "stopped"
          elif time.monotonic() - t0 >= budget_s:
            outcome = "timed_out"
    finally:
      _kill_group(proc)
  return dict(outcome=outcome, rc=proc.returncode, seconds=time.monotonic() - t0)


def _cap_log(path: Path, limit: int = 1_000_000) -> None:
  """Keeps a log small enough to come back from a device machine: its head and its tail."""
  if path.exists() and path.stat().st_size > limit:
    data = path.read_bytes()
    path.write_bytes(
        data[: limit // 5] + b"\n[... cut by gpu_suite ...]\n" + data[-limit * 4 // 5 :]
    )


def _write(path: Path, text: str) -> None:
  """Atomic write: a suite killed mid-write leaves the previous version, never half a file."""
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _jsonl(path: Path) -> list[dict]:
  """The complete JSON lines of `path` (a last line cut by a kill is ignored)."""
  rows = []
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  return rows


def _fmt(value: Any, digits: int = 1) -> str:
  if value is None:
    return "-"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


# ------------------------------------------------------------------------ step 1, in a subprocess
_HOST_MARKERS = {
    # custom calls into Python (jax.pure_callback, io_callback, debug.print, host_callback)
    "host callback": r'custom_call_target="[^"]*callback[^"]*"',
    "outfeed": r"\boutfeed\(",
    "infeed": r"\binfeed\(",
    "send/recv": r"\b(send|recv)(-done)?\(",
    "host memory space": r"S\(5\)",  # arrays placed in pinned host memory
}


def host_markers(hlo_text: str) -> list[str]:
  """Which signs of host work appear in a compiled program's HLO text."""
  return [name for name, pattern in _HOST_MARKERS.items() if re.search(pattern, hlo_text)]


def _cuda_versions() -> dict:
  """Versions reported by JAX's CUDA plugin (none without one)."""
  out = {}
  try:
    from jax._src.lib import cuda_versions  # pylint: disable=import-outside-toplevel
  except Exception:  # noqa: BLE001 - private module; absent or renamed
    return out
  if cuda_versions is None:
    return out
  for name in sorted(dir(cuda_versions)):
    if name.endswith("_version") and not name.startswith("_"):
      try:
        out[name] = getattr(cuda_versions, name)()
      except Exception:  # noqa: BLE001 - needs arguments, or no device
        pass
  return out


def _packages() -> dict:
  from importlib import metadata

  wanted = re.compile(
      r"^(jax|jaxlib|jax[-_]cuda.*|nvidia[-_].*|dm-haiku|optax|numpy|ale-py|"
      r"gymnasium|opencv.*)$",
      re.I,
  )
  return {
      d.metadata["Name"]: d.version
      for d in metadata.distributions()
      if d.metadata["Name"] and wanted.match(d.metadata["Name"])
  }


def environment_check(config_name: str, path: str) -> dict:
  """Step 1 (run in its own process): the environment and where the learner update runs.

  Writes the result to `path` twice: once the environment is known, and again with the update
  check (so a compile that overruns its time box still leaves the versions)."""
  t0 = time.perf_counter()
  import jax
  import jax.numpy as jnp
  import numpy as np

  devices = jax.devices()
  result: dict[str, Any] = dict(
      backend=jax.default_backend(),
      device_count=len(devices),
      device_kind=devices[0].device_kind,
      platform=devices[0].platform,
      devices=[dict(id=d.id, platform=d.platform, kind=d.device_kind) for d in devices],
      jax_version=jax.__version__,
      cuda=_cuda_versions(),
      packages=_packages(),
      python=platform.python_version(),
      cpu_count=os.cpu_count(),
      host=_cpu_name(),
  )
  try:
    result["jaxlib_version"] = __import__("jaxlib").__version__
  except Exception:  # noqa: BLE001
    result["jaxlib_version"] = None
  try:
    stats = devices[0].memory_stats() or {}
    result["device_memory_limit_gb"] = stats.get("bytes_limit", 0) / 1e9 or None
  except Exception:  # noqa: BLE001 - no memory stats on CPU
    result["device_memory_limit_gb"] = None
  info = jax.print_environment_info(return_string=True)
  print(info, flush=True)
  result["environment_info"] = info
  result["import_s"] = time.perf_counter() - t0
  _write(Path(path), json.dumps(result, indent=1))

  from agents.spr.config import make_config
  from agents.spr.learner import learner_for

  config = make_config(config_name)
  learner = learner_for(config, 6)  # Pong's action count: launch.bench's program, cached

  def fresh_state():
    state = learner.init(jax.random.PRNGKey(0))
    return state._replace(env_step=state.env_step + config.learn_start)

  state = fresh_state()
  update = jax.jit(learner.update, donate_argnums=0)
  t = time.perf_counter()
  compiled = update.lower(state).compile()
  compile_s = time.perf_counter() - t
  markers = host_markers(compiled.as_text())
  # No implicit host<->device transfer may happen inside the call: the state is on the device.
  # One that does is a finding (recorded), and the update is then timed without the guard.
  transfer_error = None
  try:
    with jax.transfer_guard("disallow"):
      state, metrics = compiled(state)
      jax.block_until_ready(metrics.loss)
  except Exception as e:  # noqa: BLE001 - the guard's error type is not public
    transfer_error = f"{type(e).__name__}: {e}"[:500]
    state = fresh_state()  # the failed call may have consumed the donated state
    state, metrics = compiled(state)
  guard = "disallow" if transfer_error is None else "allow"
  times = []
  for _ in range(5):
    t = time.perf_counter()
    with jax.transfer_guard(guard):
      state, metrics = compiled(state)
      jax.block_until_ready(metrics.loss)
    times.append((time.perf_counter() - t) * 1e3)
  leaves = jax.tree.leaves((state, metrics))
  out_devices = sorted({str(d) for x in leaves for d in x.devices()})
  out_platforms = sorted({d.platform for x in leaves for d in x.devices()})
  on_gpu = (
      jax.default_backend() == "gpu"
      and out_platforms == ["gpu"]
      and not markers
      and transfer_error is None
  )
  result["update_check"] = dict(
      config=config_name,
      backend=jax.default_backend(),
      output_devices=out_devices,
      output_platforms=out_platforms,
      host_markers=markers,
      transfer_error=transfer_error,
      compile_s=compile_s,
      update_ms=float(np.median(times)),
      loss_finite=bool(jnp.isfinite(metrics.loss)),
      on_gpu=on_gpu,
  )
  result["seconds"] = time.perf_counter() - t0
  _write(Path(path), json.dumps(result, indent=1))
  print(json.dumps(result["update_check"]), flush=True)
  return result


def _cpu_name() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


# ------------------------------------------------------------------- the training stretch (step 4)
def _read_metrics(path: Path) -> list[dict]:
  return [r for r in _jsonl(path) if "steps_per_s" in r]


class TrainWatch:
  """Polled while a training stretch runs: reads the runs' metrics.jsonl and says when every run
  has logged `learn_start + train_steps`; notes when the first window appeared (for the start-up
  time: process start to the first env step)."""

  def __init__(self, workdir: Path, games: list[str], train_steps: int):
    self.paths = [workdir / g / "seed_0" / "metrics.jsonl" for g in games]
    self.config_path = workdir / games[0] / "seed_0" / "config.json"
    self.train_steps = train_steps
    self.t_launch = time.monotonic()  # reset by `start` when the part's process starts
    self.first_seen: tuple[float, float] | None = None  # (seconds since launch, its time_s)
    self.target: int | None = None

  def start(self) -> None:
    self.t_launch = time.monotonic()

  def __call__(self) -> bool:
    if self.target is None:
      try:
        self.target = int(_config_json(self.config_path)["learn_start"]) + self.train_steps
      except (OSError, ValueError, KeyError):
        return False
    last = []
    for p in self.paths:
      rows = _read_metrics(p)
      if rows and self.first_seen is None:
        self.first_seen = (time.monotonic() - self.t_launch, float(rows[0]["time_s"]))
      last.append(rows[-1]["step"] if rows else 0)
    return min(last) >= self.target


def _config_json(config_path: Path) -> dict:
  """A run's config.json: its identity and every resolved hyperparameter (flat)."""
  return json.loads(config_path.read_text())


def train_analysis(workdir: Path, games: list[str], watch: TrainWatch, log_path: Path) -> dict:
  """Rates of a training stretch and the EXTRAPOLATED wall time of a full run of its batch.

  The loop advances every run of the batch in one loop iteration, so the batch's time at step s
  is the latest `time_s` any run logged at s. Windows: up to learn_start (random acting, no
  updates; its first window compiles the no-update step), the first window after learn_start
  (compiles the step with updates), then the steady windows, whose rate is extrapolated:

    full run = start-up + time to learn_start + update compile + (steps - learn_start) / rate

  Not included: the final evaluation (100 episodes per run) and the checkpoints (every 10k
  steps), which the stretch skips."""
  try:
    config = _config_json(workdir / games[0] / "seed_0" / "config.json")
  except (OSError, ValueError):
    return dict(games=len(games), reached_step=0, note="no config.json: the run did not start")
  learn_start, steps = int(config["learn_start"]), int(config["steps"])
  per_step: dict[int, list[float]] = {}
  for p in watch.paths:
    for r in _read_metrics(p):
      per_step.setdefault(int(r["step"]), []).append(float(r["time_s"]))
  # Steps every run has logged, with the batch's time.
  points = sorted((s, max(ts)) for s, ts in per_step.items() if len(ts) == len(watch.paths))
  log = log_path.read_text(errors="replace") if log_path.exists() else ""
  workers = re.findall(r"envs stepped by (\d+) worker processes", log)
  out: dict[str, Any] = dict(
      games=len(games),
      learn_start=learn_start,
      steps=steps,
      env_workers=int(workers[-1]) if workers else 0,
      reached_step=points[-1][0] if points else 0,
      points=points,
  )
  if watch.first_seen is not None:
    out["startup_s"] = max(0.0, watch.first_seen[0] - watch.first_seen[1])
  pre = [(s, t) for s, t in points if s <= learn_start]
  post = [(s, t) for s, t in points if s > learn_start]
  if pre and pre[-1][0] == learn_start:
    out["to_learn_start_s"] = pre[-1][1]
  if len(pre) >= 2:  # the first window also compiles the no-update step
    (s0, t0), (sk, tk) = pre[0], pre[-1]
    pre_rate = (sk - s0) / max(tk - t0, 1e-9)
    out.update(pre_rate_per_run=pre_rate, pre_compile_s=max(0.0, t0 - s0 / pre_rate))
  if len(post) >= 2 and "to_learn_start_s" in out:
    (s1, t1), (s2, t2) = post[0], post[-1]
    rate = (s2 - s1) / max(t2 - t1, 1e-9)  # env steps/s of one run (= of the batch's loop)
    out.update(
        rate_per_run=rate,
        rate_total=rate * len(games),
        steady_steps=s2 - s1,
        update_compile_s=max(0.0, t1 - out["to_learn_start_s"] - (s1 - learn_start) / rate),
    )
    out["extrapolated_full_run_s"] = (
        out.get("startup_s", 0.0)
        + out["to_learn_start_s"]
        + out["update_compile_s"]
        + (steps - learn_start) / rate
    )
  return out


def _all_games() -> tuple[str, ...]:
  from envs import games

  return games.GAMES


def _action_counts() -> dict[str, int]:
  """The 26 games' minimal action counts (runs of one count form one vmapped group)."""
  from envs import games
  from envs.atari import AtariEnv

  counts = {}
  for game in games.GAMES:
    env = AtariEnv(game, seed=0)
    counts[game] = env.num_actions
    env.close()
  return counts


def choose_train_games(
    action_counts: dict[str, int],
    one: dict,
    multi_rows: list[dict],
    remaining_s: float,
    log_every: int,
) -> tuple[list[str], dict]:
  """The batch of the second training stretch: the first of (all 26 games; the largest set of
  games sharing an action count, one vmapped group; 4 of those) whose estimated time fits 85%
  of `remaining_s`, else the last.

  Estimate, from the 1-game stretch `one` (train_analysis) and the multi-run table's rows of
  the same config: each group (action count) pays the 1-game stretch's fixed costs again (start-up
  with the network init compile, the no-update and update step compiles), and the batch runs
  learn_start + 3 windows at the 1-game rate times the table's speed-up at the largest measured
  run count <= N (no gain beyond it; none without a table)."""
  by_count: dict[int, list[str]] = {}
  for game, count in action_counts.items():
    by_count.setdefault(count, []).append(game)
  biggest = max(by_count.values(), key=len)
  candidates = [list(action_counts), biggest, biggest[:4]]
  if "rate_per_run" not in one:
    return candidates[-1], dict(
        reason="the 1-game stretch measured no rate: the smallest batch",
        remaining_s=remaining_s,
        estimates=[],
    )
  fixed = one.get("startup_s", 0.0) + one.get("pre_compile_s", 0.0) + one["update_compile_s"]
  steps = one["learn_start"] + 3 * log_every
  rows = sorted((r["runs"], r["speedup"]) for r in multi_rows)
  estimates = []
  for games in candidates:
    n, groups = len(games), len({action_counts[g] for g in games})
    speedup = max([1.0] + [v for k, v in rows if k <= n][-1:])
    need = groups * fixed + steps * n / (one["rate_per_run"] * speedup)
    estimates.append(dict(games=n, groups=groups, speedup=speedup, need_s=need))
  for games, e in zip(candidates, estimates):
    if e["need_s"] <= 0.85 * remaining_s:
      return games, dict(
          reason=f"estimated {e['need_s']:.0f} s of {remaining_s:.0f} s left",
          remaining_s=remaining_s,
          estimates=estimates,
      )
  return candidates[-1], dict(
      reason=f"none estimated to fit {remaining_s:.0f} s: the smallest",
      remaining_s=remaining_s,
      estimates=estimates,
  )


# --------------------------------------------------------------------------------- the suite
class Suite:
  """Runs the steps in order, each time-boxed, and writes everything after each step."""

  def __init__(self, settings: Settings, out: Path, work_dir: Path, bundle: Path | None = None):
    self.s = settings
    self.out = out
    self.bundle = bundle
    self.work = work_dir
    self.t0 = time.monotonic()
    self.started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    self.results: list[dict] = []
    self.abort_reason = ""
    for sub in ("steps", "raw", "logs"):
      (out / sub).mkdir(parents=True, exist_ok=True)
    self.env = dict(os.environ, PYTHONUNBUFFERED="1")
    self.env.setdefault("JAX_COMPILATION_CACHE_DIR", str(work_dir / "xla-cache"))
    self.env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if settings.dry_run:
      self.env.setdefault("JAX_PLATFORMS", "cpu")
    else:
      # 26 BBF train states are 53 GB, and a batch is stacked from per-run states (twice that
      # for a moment): give XLA's allocator more than its default 75% of the device.
      self.env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.90")

  # -------------------------------------------------------------------------------- budgets
  def elapsed(self) -> float:
    return time.monotonic() - self.t0

  def _allot(self, name: str) -> float:
    """The step's budget: its fixed --step_budget_s, else its weight's share of the time left
    once the later fixed budgets are set aside."""
    if name in self.s.step_budget_s:
      return self.s.step_budget_s[name]
    later = STEPS[STEPS.index(name) :]
    selected = [n for n in later if n in self.s.only]
    reserved = sum(self.s.step_budget_s.get(n, 0.0) for n in selected if n != name)
    shares = [_WEIGHTS[n] for n in selected if n not in self.s.step_budget_s]
    left = max(0.0, self.s.budget_s - self.elapsed() - reserved)
    return left * _WEIGHTS[name] / sum(shares)

  # ----------------------------------------------------------------------------------- run
  def run(self) -> int:
    print(
        f"GPU suite{' (dry run)' if self.s.dry_run else ''}: {len(self.s.only)} steps in "
        f"{self.s.budget_s:.0f} s, output in {self.out}",
        flush=True,
    )
    print("| step | status | key figure | seconds |\n|---|---|---|---|", flush=True)
    self._save()
    interrupted = False
    for index, name in enumerate(STEPS, 1):
      if interrupted:
        result = self._skipped(index, name, "the suite was interrupted")
      elif name not in self.s.only:
        result = self._skipped(index, name, "not selected (--only)")
      elif self.abort_reason:
        result = self._skipped(index, name, self.abort_reason)
      else:
        budget = self._allot(name)
        if budget < MIN_STEP_S and name not in self.s.step_budget_s:
          result = self._skipped(
              index, name, f"{budget:.0f} s left of --budget_s=" f"{self.s.budget_s:.0f}"
          )
        else:
          try:
            result = getattr(self, f"_step_{name}")(index, budget)
          except KeyboardInterrupt:
            interrupted = True
            result = dict(
                self._skipped(
                    index, name, "interrupted (SIGTERM or Ctrl-C) while " "running: killed"
                ),
                status="failed",
                key_figure="interrupted",
                seconds=0.0,
            )
      self.results.append(result)
      _write(self.out / "steps" / f"{index:02d}_{name}.json", json.dumps(result, indent=1))
      self._save()
      print(
          f"| {name} | {result['status']} | {result['key_figure']} | " f"{result['seconds']:.0f} |",
          flush=True,
      )
      if result.get("markdown") and result["status"] != "skipped":
        print(result["markdown"] + "\n", flush=True)
    print(
        f"\nsummary ({self.elapsed():.0f} s; {self.out}/summary.md, tables.md, " f"steps/*.json):",
        flush=True,
    )
    print(self._summary_md(), flush=True)
    if interrupted:
      return 128 + signal.SIGINT
    return (
        common.OK
        if all(
            r["status"] == "ok" or r.get("reason") == "not selected (--only)" for r in self.results
        )
        else common.FAILED
    )

  def _skipped(self, index: int, name: str, reason: str) -> dict:
    return dict(
        step=name,
        index=index,
        status="skipped",
        reason=reason,
        seconds=0.0,
        budget_s=0.0,
        key_figure=f"skipped: {reason}",
        parts=[],
        result={},
        markdown="",
    )

  def _run_parts(self, index: int, name: str, parts: list[Part], budget: float) -> list[dict]:
    """Runs the parts in order; each gets its weight's share of the step's time left."""
    deadline = time.monotonic() + budget
    done = []
    for i, part in enumerate(parts):
      left = deadline - time.monotonic()
      share = left * part.weight / sum(p.weight for p in parts[i:])
      log = self.out / "logs" / f"{index:02d}_{name}_{part.name}.log"
      record = dict(
          name=part.name,
          command=shlex.join(part.command),
          budget_s=share,
          log=str(log.relative_to(self.out)),
          optional=part.optional,
      )
      # An optional part needs its minimum; a required one runs with whatever is left.
      if (share < part.min_s) if part.optional else (share <= 0):
        record.update(
            status="skipped",
            seconds=0.0,
            rc=None,
            reason=f"only {share:.0f} s left in the step's budget",
        )
        done.append(record)
        continue
      if part.on_start is not None:
        part.on_start()
      ran = run_command(part.command, log, share, self.env, part.monitor)
      _cap_log(log)
      status = {
          "exited": "ok" if ran["rc"] == 0 else "failed",
          "stopped": "ok",
          "timed_out": "timed_out",
      }[ran["outcome"]]
      reason = ""
      if status == "failed":
        reason = f"exit code {ran['rc']}: {runstate.cause_in_log(log)[:300]}"
      elif status == "timed_out":
        reason = f"killed after its budget of {share:.0f} s"
      record.update(
          status=status, seconds=ran["seconds"], rc=ran["rc"], outcome=ran["outcome"], reason=reason
      )
      done.append(record)
    return done

  @staticmethod
  def _status(parts: list[dict]) -> tuple[str, str]:
    """A step's status from its parts': failed > timed_out > ok; skipped optional parts do not
    count, a step whose every part was skipped is skipped."""
    counted = [p for p in parts if not (p["status"] == "skipped" and p["optional"])]
    reasons = "; ".join(f"{p['name']}: {p['reason']}" for p in parts if p.get("reason"))
    for status in ("failed", "timed_out", "skipped"):
      if any(p["status"] == status for p in counted):
        return status, reasons
    return ("ok" if counted else "skipped"), reasons

  def _finish(
      self,
      index: int,
      name: str,
      budget: float,
      t0: float,
      parts: list[dict],
      result: dict,
      key: str,
      markdown: str,
      status: str | None = None,
      reason: str | None = None,
  ) -> dict:
    auto_status, auto_reason = self._status(parts)
    return dict(
        step=name,
        index=index,
        status=status or auto_status,
        reason=auto_reason if reason is None else reason,
        seconds=time.monotonic() - t0,
        budget_s=budget,
        key_figure=key,
        parts=parts,
        result=result,
        markdown=markdown,
    )

  # --------------------------------------------------------------------------------- steps
  def _bench(self, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "launch.bench",
        f"--game={self.s.game}",
        f"--fill={self.s.fill}",
        f"--repeats={self.s.repeats}",
        *args,
    ]

  def _step_environment(self, index: int, budget: float) -> dict:
    t0 = time.monotonic()
    path = self.out / "raw" / f"{index:02d}_environment.json"
    code = (
        "import sys; from launch.gpu_suite import environment_check; "
        "environment_check(sys.argv[1], sys.argv[2])"
    )
    parts = self._run_parts(
        index,
        "environment",
        [Part("check", [sys.executable, "-c", code, self.s.env_config, str(path)])],
        budget,
    )
    try:
      env = json.loads(path.read_text())
    except (OSError, ValueError):
      env = {}
    check = env.get("update_check", {})
    status = reason = None
    if check:
      where = ", ".join(check["output_platforms"])
      verdict = (
          "yes"
          if check["on_gpu"]
          else f"no: {where}{' (dry run: expected)' if self.s.dry_run else ''}"
      )
      if check["host_markers"]:
        verdict += f"; host work in the compiled update: {', '.join(check['host_markers'])}"
      if check["transfer_error"]:
        verdict += f"; a host transfer in the call ({check['transfer_error'][:120]})"
      if not check["on_gpu"] and not self.s.dry_run:
        status, reason = "failed", f"the update does not run on a GPU ({verdict})"
        if self.s.require_gpu:
          self.abort_reason = (
              f"no GPU: JAX backend {check['backend']} (install jax[cuda12]; "
              "--require_gpu=false measures anyway)"
          )
    else:
      verdict = "not checked"
    cuda = env.get("cuda", {})
    cuda_text = (
        ", ".join(
            f"{k.replace('_get_version', '').replace('_version', '')} {v}" for k, v in cuda.items()
        )
        or "-"
    )
    rows = [
        [
            "device",
            f"{env.get('device_kind', '-')} x {env.get('device_count', '-')} "
            f"({env.get('platform', '-')})",
        ],
        ["JAX default backend", env.get("backend")],
        ["JAX / jaxlib", f"{env.get('jax_version')} / {env.get('jaxlib_version')}"],
        ["CUDA (JAX's plugin)", cuda_text],
        ["device memory limit (GB)", env.get("device_memory_limit_gb")],
        [
            "host",
            f"{env.get('host', '-')}, {env.get('cpu_count', '-')} cores, "
            f"Python {env.get('python', '-')}",
        ],
        [f"update of `{self.s.env_config}` on the GPU", verdict],
        ["update outputs on", ", ".join(check.get("output_devices", [])) or "-"],
        [
            "update compile (s) / update (ms)",
            f"{_fmt(check.get('compile_s'))} / {_fmt(check.get('update_ms'), 2)}",
        ],
    ]
    markdown = "### 1. Environment\n\n" + _md_table(["field", "value"], rows)
    key = (
        f"{env['device_kind']} x{env['device_count']}, backend {env['backend']}, update on "
        f"GPU: {verdict}"
        if env
        else "no figures"
    )
    result = {k: v for k, v in env.items() if k != "environment_info"}
    return self._finish(
        index, "environment", budget, t0, parts, result, key, markdown, status, reason
    )

  def _step_single(self, index: int, budget: float) -> dict:
    t0 = time.monotonic()
    raw = self.out / "raw" / f"{index:02d}_single.jsonl"
    raw.unlink(missing_ok=True)
    parts = self._run_parts(
        index,
        "single",
        [
            Part(
                name,
                self._bench(f"--config={name}", "--runs=", f"--json={raw}"),
                weight=1.5 if name.startswith("bbf") else 1.0,
            )
            for name in self.s.single_configs
        ],
        budget,
    )
    rows = {r["config"]: r for r in _jsonl(raw) if r.get("table") == "single"}
    names = self.s.single_configs
    measures = [
        ("learner update (ms)", "update_ms", 2),
        ("fused env step: add + updates + act (ms)", "step_ms", 2),
        ("updates per env step", "updates_per_step", 0),
        ("acting latency, 1 state (ms)", "act_ms", 2),
        ("env steps/s (training env, random actions)", "env_steps_per_s", 0),
        ("replay fill: env + device add (steps/s)", "fill_steps_per_s", 0),
        ("update compile (s)", "compile_s", 1),
        ("parameters", "parameters", 0),
    ]
    # A config's last row: the full one, or the update alone when the fused step was cut short.
    table = [
        [label] + [_fmt(rows[n][k], d) if k in rows.get(n, {}) else "not measured" for n in names]
        for label, k, d in measures
    ]
    markdown = "### 2. Single run (`launch.bench`)\n\n" + _md_table(["measure", *names], table)
    key = (
        ", ".join(
            f"{n} {rows[n]['update_ms']:.1f} ms/update"
            + (f", {rows[n]['step_ms']:.1f} ms/step" if "step_ms" in rows[n] else "")
            for n in names
            if n in rows
        )
        or "no figures"
    )
    return self._finish(index, "single", budget, t0, parts, dict(rows=rows), key, markdown)

  def _step_multi(self, index: int, budget: float) -> dict:
    t0 = time.monotonic()
    raw = self.out / "raw" / f"{index:02d}_multi.jsonl"
    raw.unlink(missing_ok=True)
    configs = self.s.multi_configs
    parts = self._run_parts(
        index,
        "multi",
        [
            Part(
                name,
                self._bench(
                    "--single=false",
                    f"--runs={self.s.runs}",
                    f"--multi_configs={name}",
                    f"--json={raw}",
                ),
                weight=2.0 if i == 0 else 1.0,
                optional=i > 0,
                min_s=self.s.optional_min_s,
            )
            for i, name in enumerate(configs)
        ],
        budget,
    )
    rows = [r for r in _jsonl(raw) if r.get("table") == "multi"]
    table = [
        [
            r["config"],
            r["runs"],
            _fmt(r["step_ms"]),
            _fmt(r["updates_per_s"]),
            _fmt(r["learner_steps_per_s"]),
            f"{r['env_workers']:.0f} ({r['workers']}) / {r['env_loop']:.0f}",
            _fmt(r["end_to_end"]),
            f"{r['speedup']:.2f}x",
            _fmt(r["device_peak_gb"]),
            _fmt(r["state_gb"], 2),
            _fmt(r["compile_s"]),
        ]
        for r in rows
    ]
    markdown = (
        "### 3. Multi-run table (`launch.bench --single=false`)\n\n"
        + _md_table(
            [
                "config",
                "runs",
                "fused step (ms)",
                "updates/s",
                "learner env steps/s",
                "env steps/s: workers (n) / in process",
                "end-to-end env steps/s",
                "vs 1 run",
                "device peak (GB)",
                "train states (GB)",
                "compile (s)",
            ],
            table,
        )
        + "\n\nDevice peak: the process's peak so far (rows in increasing runs per config)."
    )
    keys = []
    for name in configs:
      mine = [r for r in rows if r["config"] == name]
      if mine:
        top = mine[-1]
        keys.append(
            f"{name} {top['runs']} runs: {top['updates_per_s']:.0f} updates/s, "
            f"{top['speedup']:.1f}x 1 run"
        )
    return self._finish(
        index,
        "multi",
        budget,
        t0,
        parts,
        dict(rows=rows),
        "; ".join(keys) or "no figures",
        markdown,
    )

  def _train_part(self, label: str, games: list[str]) -> tuple[Part, TrainWatch]:
    workdir = self.work / "train" / label
    if workdir.exists():  # the suite's own scratch from an earlier call
      shutil.rmtree(workdir)
    watch = TrainWatch(workdir, games, self.s.train_steps)
    return (
        Part(
            label,
            [
                sys.executable,
                "-m",
                "launch.train",
                f"--config={self.s.train_config}",
                f"--games={','.join(games)}",
                "--seeds=0",
                f"--workdir={workdir}",
                "--eval_episodes=0",
                f"--log_every={self.s.train_log_every}",
                "--checkpoint_every=1000000000",
            ],
            monitor=watch,
            on_start=watch.start,
        ),
        watch,
    )

  def _train_one(
      self, index: int, label: str, games: list[str], budget: float
  ) -> tuple[dict, dict]:
    """Runs one stretch; returns its part record and its analysis."""
    part, watch = self._train_part(label, games)
    [record] = self._run_parts(index, "train", [part], budget)
    if record["status"] == "skipped":
      return record, {}
    a = train_analysis(self.work / "train" / label, games, watch, self.out / record["log"])
    # A stretch stopped by its time box is a result when it measured a steady rate.
    if record["status"] == "timed_out" and "rate_per_run" in a:
      record.update(
          status="ok",
          reason=f"time box reached at step {a['reached_step']} "
          f"({a['steady_steps']} steady steps measured)",
      )
    elif record["status"] == "ok" and "rate_per_run" not in a:
      record.update(status="failed", reason="no steady window measured")
    return record, a

  def _step_train(self, index: int, budget: float) -> dict:
    t0 = time.monotonic()
    deadline = t0 + budget
    single = self.s.train_single_game
    records, analyses, batches = [], {}, [("1game", [single])]
    # Part 1: one game through the multi-run path (a third of the step).
    record, a = self._train_one(index, "1game", [single], budget / 3)
    records.append(record)
    analyses["1game"] = a
    # Part 2: the batch of games; with --train_games=auto the largest that should fit.
    choice = None
    games = self.s.train_games
    if games is None:
      multi = [
          r
          for r in next(
              (x["result"].get("rows", []) for x in self.results if x["step"] == "multi"), []
          )
          if r["config"] == self.s.train_config
      ]
      try:
        counts = _action_counts()
      except Exception as e:  # noqa: BLE001 - no emulator: the training stretch fails alike
        games, choice = list(_all_games()), dict(reason=f"no action counts ({e}): all games")
      else:
        games, choice = choose_train_games(
            counts, a, multi, deadline - time.monotonic(), self.s.train_log_every
        )
    if games != [single]:
      label = f"{len(games)}games"
      batches.append((label, games))
      record, a = self._train_one(index, label, games, deadline - time.monotonic())
      records.append(record)
      analyses[label] = a
    one = analyses.get("1game", {})
    many = analyses.get(batches[-1][0], {}) if len(batches) > 1 else {}
    table = []
    for label, games in batches:
      a = analyses.get(label, {})
      table.append(
          [
              f"{len(games)} game{'s' if len(games) > 1 else ''}",
              a.get("env_workers"),
              _fmt(a.get("startup_s")),
              _fmt(a.get("to_learn_start_s")),
              _fmt(a.get("update_compile_s")),
              a.get("reached_step", 0),
              _fmt(a.get("rate_per_run")),
              _fmt(a.get("rate_total")),
              _fmt(a["extrapolated_full_run_s"] / 60, 1) if "extrapolated_full_run_s" in a else "-",
          ]
      )
    lines = []
    result = dict(batches=analyses, config=self.s.train_config, batch_choice=choice)
    steps = one.get("steps") or many.get("steps")
    if "extrapolated_full_run_s" in one:
      full = one["extrapolated_full_run_s"]
      result["extrapolated_full_run_s"] = full
      verdict = (
          "dry run: the targets concern `spr` on a GPU"
          if self.s.dry_run
          else f"target <= {TARGET_FULL_RUN_S / 60:.0f} min on one H200: "
          f"{'met' if full <= TARGET_FULL_RUN_S else 'not met'}"
      )
      lines.append(
          f"- EXTRAPOLATED full {steps}-step `{self.s.train_config}` run (1 game, no "
          f"final evaluation or checkpoints): {full / 60:.1f} min ({verdict})."
      )
    if "extrapolated_full_run_s" in many:
      n = many["games"]
      batches_needed = math.ceil(TABLE_GAMES / n)
      table_s = batches_needed * many["extrapolated_full_run_s"]
      result["extrapolated_table_s"] = table_s
      lines.append(
          f"- EXTRAPOLATED {TABLE_GAMES}-game table, 1 seed per game "
          f"({batches_needed} process{'es' if batches_needed > 1 else ''} of {n} games "
          "one after another, each as the measured batch; no final evaluation or "
          f"checkpoints): {table_s / 60:.1f} min; a table of S seeds: S times that."
      )
      if "rate_per_run" in one:
        speedup = many["rate_total"] / one["rate_per_run"]
        result["throughput_vs_1_run"] = speedup
        lines.append(
            f"- {n} runs vs 1: {speedup:.1f}x the env steps/s (target >= "
            f"{TARGET_SPEEDUP:.0f}x for 26 runs)."
        )
    markdown = (
        f"### 4. Training stretch (`launch.train --games=... --seeds=0`, config "
        f"`{self.s.train_config}`; extrapolations)\n\n"
        + _md_table(
            [
                "batch",
                "env workers",
                "start-up (s)",
                "to learn_start (s)",
                "update compile (s)",
                "step reached",
                "env steps/s per run",
                "env steps/s total",
                "EXTRAPOLATED full run (min)",
            ],
            table,
        )
        + ("\n\n" + "\n".join(lines) if lines else "")
    )
    keys = []
    if "extrapolated_full_run_s" in result:
      keys.append(f"full run ~{result['extrapolated_full_run_s'] / 60:.1f} min")
    if "extrapolated_table_s" in result:
      keys.append(f"{TABLE_GAMES}-game table ~{result['extrapolated_table_s'] / 60:.1f} min")
    key = ("EXTRAPOLATED: " + ", ".join(keys)) if keys else "no steady rate measured"
    if choice is not None:
      markdown += (
          f"\n- Batch chosen by --train_games=auto: {len(batches[-1][1])} games "
          f"({choice['reason']})."
      )
    return self._finish(index, "train", budget, t0, records, result, key, markdown)

  def _step_probes(self, index: int, budget: float) -> dict:
    t0 = time.monotonic()
    raw = self.out / "raw" / f"{index:02d}_probes.jsonl"
    raw.unlink(missing_ok=True)
    parts = self._run_parts(
        index,
        "probes",
        [
            Part(
                "probes",
                [
                    sys.executable,
                    "-m",
                    "launch.bench",
                    "--probes",
                    f"--config={self.s.probe_config}",
                    f"--json={raw}",
                ],
            )
        ],
        budget,
    )
    got = [r for r in _jsonl(raw) if r.get("table") == "probes"]
    rows = got[-1]["rows"] if got else []
    markdown = "### 5. Design probes (`launch.bench --probes`)\n\n" + _md_table(
        ["probe", "value"], [[r["name"], r["value"]] for r in rows]
    )
    ms = {r["name"]: r["value"] for r in rows}
    padded = {
        k.rsplit(", ", 1)[-1].replace(" (ms)", ""): float(v)
        for k, v in ms.items()
        if "100 stacks" in k
    }
    unpadded = [float(v) for k, v in ms.items() if "unpadded" in k]
    key = "no figures"
    if padded and unpadded and unpadded[0] > 0:
      key = (
          "eval act 2 runs x 100 stacks: "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in padded.items())
          + f"; unpadded tail {unpadded[0]:.2f} ms"
      )
    return self._finish(index, "probes", budget, t0, parts, dict(rows=rows), key, markdown)

  # ------------------------------------------------------------------------------- output
  def _summary_md(self) -> str:
    return _md_table(
        ["step", "status", "key figure", "seconds"],
        [[r["step"], r["status"], r["key_figure"], f"{r['seconds']:.0f}"] for r in self.results],
    )

  def _save(self) -> None:
    head = (
        f"# GPU suite{' (dry run, CPU)' if self.s.dry_run else ''}\n\nStarted "
        f"{self.started}; {self.elapsed():.0f} s so far of a {self.s.budget_s:.0f} s budget. "
        "Figures marked EXTRAPOLATED are extrapolations from a timed stretch.\n\n"
    )
    _write(self.out / "summary.md", head + self._summary_md() + "\n")
    _write(
        self.out / "tables.md",
        head + "\n\n".join(r["markdown"] for r in self.results if r.get("markdown")) + "\n",
    )
    _write(
        self.out / "suite.json",
        json.dumps(
            dict(
                started=self.started,
                seconds=self.elapsed(),
                finished=len(self.results) == len(STEPS),
                settings=dataclasses.asdict(self.s),
                command=shlex.join(sys.argv),
                host=dict(node=platform.node(), cpu=_cpu_name(), cores=os.cpu_count()),
                steps=[
                    {k: v for k, v in r.items() if k not in ("markdown", "result", "parts")}
                    for r in self.results
                ],
            ),
            indent=1,
        ),
    )
    if self.bundle is not None:
      tmp = self.bundle.with_name(self.bundle.name + ".tmp")
      with tarfile.open(tmp, "w:gz") as tar:
        tar.add(self.out, arcname=self.out.name)
      os.replace(tmp, self.bundle)


def main():
  if not _OUT.value:
    common.fail("--out is required")
  with common.bad_input():
    settings = resolve_settings()
  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  work = Path(_WORK_DIR.value) if _WORK_DIR.value else Path(tempfile.mkdtemp(prefix="gpu-suite-"))
  work.mkdir(parents=True, exist_ok=True)

  def on_term(signum, frame):  # a SIGTERM ends the running step like Ctrl-C: killed, recorded
    del signum, frame
    raise KeyboardInterrupt

  signal.signal(signal.SIGTERM, on_term)
  bundle = Path(_BUNDLE.value) if _BUNDLE.value else None
  if bundle is not None:
    if bundle.resolve().is_relative_to(out.resolve()):
      common.fail("--bundle must be outside --out (it archives --out)")
    bundle.parent.mkdir(parents=True, exist_ok=True)
  try:
    return Suite(settings, out, work, bundle).run()
  finally:
    if not _WORK_DIR.value:  # the suite's own temporary folder
      shutil.rmtree(work, ignore_errors=True)


def run():
  common.run(main)


if __name__ == "__main__":
  run()
