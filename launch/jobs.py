"""One run of a sweep as a job: `RunSpec` (module, args, workdir), its state, and its backends.

A run is `python -m MODULE ARGS...` whose workdir follows docs/CONTRACTS.md. Running the same
command again on the same workdir resumes from its last checkpoint, and a finished run
(final.json) exits 0 at once; everything here relies on that and nothing more.

Files this module adds to a workdir:
  log.txt    stdout+stderr of every attempt, appended; each attempt starts with a `### ` line.
  run.lock   JSON {pid, child_pid, host, job_id, started, cmd} while a runner owns the run; its
             mtime is refreshed every HEARTBEAT_S seconds; removed when the attempt ends.
  exit.json  JSON {returncode, requeued, ended, host} written when an attempt ends.

Run states (read_state), first match wins:
  done         final.json exists.
  running      run.lock is live: its pid is alive on this host, or (lock from another host,
               e.g. a SLURM node) its heartbeat is younger than STALE_S.
  failed       exit.json with a non-zero return code that is not an interruption, or exit 0
               without final.json; `error` = last non-empty line of log.txt.
  interrupted  started but not running and not failed: requeued after a timeout/preemption,
               killed by SIGTERM/SIGINT/SIGKILL/SIGUSR* (or exited 128+N after catching one:
               launch.train's 143 = checkpointed on SIGTERM), or a stale lock (runner killed).
               A sweep resumes it from its checkpoint.
  pending      nothing written yet.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from submitit import helpers

from launch import grid

LOCK = "run.lock"
EXIT = "exit.json"
LOG = "log.txt"
FINAL = "final.json"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
HEARTBEAT_S = 15.0
STALE_S = 180.0
_INTERRUPT_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGKILL, signal.SIGUSR1, signal.SIGUSR2}
STATES = ("pending", "running", "done", "failed", "interrupted")


class RunLockedError(RuntimeError):
    """Another live runner owns this workdir."""


# --------------------------------------------------------------------------------------------
# Reading a workdir
# --------------------------------------------------------------------------------------------
def _tail_lines(path: Path, max_bytes: int = 65536) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = data.splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # first line is probably cut
    return lines


def last_log_line(workdir: Path) -> str:
    """The cause of a failed job, from its log: the last `error:` line of an entry point, else
    the last exception line of a traceback, else the last line that is not absl's closing hint
    ("Pass --helpshort or --helpfull to see help on flags.")."""
    lines = [line.strip() for line in _tail_lines(Path(workdir) / LOG) if line.strip()]
    for line in reversed(lines):
        if line.startswith(("error:", "FATAL Flags parsing error:")):
            return line
    for line in reversed(lines):
        head = line.split(":", 1)[0]
        if ":" in line and head.replace(".", "").replace("_", "").isalnum() and (
                head.endswith(("Error", "Exception", "Interrupt"))):
            return line
    for line in reversed(lines):
        if not line.startswith("Pass --helpshort or --helpfull"):
            return line
    return ""


def latest_step(workdir: Path) -> int | None:
    """The last `step` in metrics.jsonl (a torn last line is skipped)."""
    for line in reversed(_tail_lines(Path(workdir) / METRICS)):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            return int(rec["step"])
    return None


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is dead for us
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def lock_is_live(workdir: Path, now: float | None = None) -> bool:
    path = Path(workdir) / LOCK
    lock = _read_json(path)
    if lock is None:
        # a lock being written right now is live; an unreadable old one is not
        try:
            return (now or time.time()) - path.stat().st_mtime < 2.0
        except OSError:
            return False
    if lock.get("host") == socket.gethostname():
        return _pid_alive(int(lock.get("pid", -1)))
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except OSError:
        return False
    return age < STALE_S


@dataclasses.dataclass
class RunState:
    state: str  # one of STATES
    step: int | None = None  # latest step in metrics.jsonl
    budget: int | None = None  # config.json `steps`
    error: str = ""  # failed: last non-empty line of log.txt; interrupted: why


def _interrupt_signal(rc: int) -> int | None:
    """The interrupting signal behind exit status rc: -N (killed by N) or 128+N (a trainer
    that caught N, checkpointed and exited, e.g. launch.train's 143 after SIGTERM); else None."""
    sig = -rc if rc < 0 else rc - 128 if rc > 128 else None
    return sig if sig in {int(s) for s in _INTERRUPT_SIGNALS} else None


def _describe_rc(rc: int) -> str:
    if rc > 128 and _interrupt_signal(rc) is not None:
        return f"exit code {rc} (stopped by {signal.Signals(rc - 128).name})"
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


def read_state(workdir: Path | str) -> RunState:
    wd = Path(workdir)
    step = latest_step(wd)
    cfg = _read_json(wd / CONFIG) or {}
    budget = cfg.get("steps")
    budget = int(budget) if isinstance(budget, (int, float)) else None
    if _read_json(wd / FINAL) is not None:  # spr.workdir.read_final's rule: parses = done
        return RunState("done", step, budget)
    if lock_is_live(wd):
        return RunState("running", step, budget)
    if (wd / FINAL).exists():
        return RunState("failed", step, budget,
                        "final.json does not parse; rerun the run to redo its final evaluation")
    ex = _read_json(wd / EXIT)
    if ex is not None:
        rc = int(ex.get("returncode", 1))
        if ex.get("requeued"):
            return RunState("interrupted", step, budget, "requeued after timeout/preemption")
        if _interrupt_signal(rc) is not None:
            return RunState("interrupted", step, budget, _describe_rc(rc))
        if rc == 0:
            return RunState("failed", step, budget, "exited 0 without final.json")
        return RunState("failed", step, budget, last_log_line(wd) or _describe_rc(rc))
    if (wd / LOCK).exists():
        return RunState("interrupted", step, budget, "runner gone (stale run.lock)")
    if any((wd / f).exists() for f in (LOG, METRICS, CONFIG)):
        return RunState("interrupted", step, budget, "started, not running")
    return RunState("pending", step, budget)


# --------------------------------------------------------------------------------------------
# RunSpec: the job itself
# --------------------------------------------------------------------------------------------
def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the trainer gets SIGTERM if its runner dies (no orphaned GPU processes)."""
    try:
        import ctypes  # pylint: disable=import-outside-toplevel

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except Exception:  # pylint: disable=broad-except
        pass


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """`python -m module *args` on `workdir`; env: extra environment variables for the child."""

    module: str
    args: tuple[str, ...]
    workdir: str
    env: tuple[tuple[str, str], ...] = ()

    @property
    def path(self) -> Path:
        return Path(self.workdir)

    def command(self) -> list[str]:
        return [sys.executable, "-u", "-m", self.module, *self.args]

    def state(self) -> RunState:
        return read_state(self.path)

    def is_done(self) -> bool:
        return (self.path / FINAL).exists()

    def start(self, extra_env: dict[str, str] | None = None) -> "Attempt":
        return Attempt(self, extra_env or {})

    def run(self, extra_env: dict[str, str] | None = None) -> int:
        """Runs (or resumes) the run to completion in a subprocess; returns its exit code."""
        if self.is_done():
            return 0
        attempt = self.start(extra_env)
        try:
            return attempt.wait()
        finally:
            attempt.close()


class Attempt:
    """One process of a run: owns run.lock (with heartbeat), appends to log.txt."""

    def __init__(self, spec: RunSpec, extra_env: dict[str, str]):
        self.spec = spec
        self.requeued = False
        self.returncode: int | None = None
        wd = spec.path
        wd.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        (wd / EXIT).unlink(missing_ok=True)
        env = dict(os.environ)
        env.update(dict(spec.env))
        env.update(extra_env)
        self._log = open(wd / LOG, "a", buffering=1)
        self._log.write(
            f"### {time.strftime('%Y-%m-%d %H:%M:%S')} start on {socket.gethostname()} "
            f"(CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES', '')!r}): "
            f"{' '.join(self.spec.command()[1:])}\n"
        )
        self._log.flush()
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            spec.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        self._write_lock(child_pid=self.proc.pid)
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, daemon=True)
        self._beat.start()

    # lock ---------------------------------------------------------------------------------
    def _lock_payload(self, child_pid: int | None = None) -> str:
        job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or ""
        return json.dumps({"pid": os.getpid(), "child_pid": child_pid, "host": socket.gethostname(),
                           "job_id": job_id, "started": time.time(), "cmd": self.spec.command()})

    def _acquire_lock(self) -> None:
        path = self.spec.path / LOCK
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if lock_is_live(self.spec.path):
                    raise RunLockedError(f"{self.spec.workdir} is owned by a live runner ({path})") from None
                path.unlink(missing_ok=True)  # stale: its runner is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(self._lock_payload())
            return
        raise RunLockedError(f"could not take {path}")

    def _write_lock(self, child_pid: int) -> None:
        path = self.spec.path / LOCK
        tmp = path.with_name(LOCK + ".tmp")
        tmp.write_text(self._lock_payload(child_pid))
        tmp.replace(path)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.spec.path / LOCK)
            except OSError:
                pass

    # process ------------------------------------------------------------------------------
    def wait(self, poll_s: float = 0.2) -> int:
        # poll instead of Popen.wait(): a signal handler (submitit's checkpoint) may need to
        # stop the child while we wait, and Popen.wait() holds a lock that poll() would need.
        while self.proc.poll() is None:
            time.sleep(poll_s)
        self.returncode = self.proc.returncode
        return self.returncode

    def stop(self, grace_s: float = 60.0, requeued: bool = False) -> int | None:
        """SIGTERM the child, SIGKILL it after grace_s; it resumes from its last checkpoint."""
        self.requeued = self.requeued or requeued
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.time() + grace_s
            while self.proc.poll() is None and time.time() < deadline:
                time.sleep(0.1)
            if self.proc.poll() is None:
                self.proc.kill()
                deadline = time.time() + 10
                while self.proc.poll() is None and time.time() < deadline:
                    time.sleep(0.05)
        return self.proc.returncode

    def close(self) -> None:
        """Ends the attempt: stops a child still running, writes exit.json, frees the lock."""
        if self.proc.poll() is None:
            self.stop(grace_s=10.0)
        rc = self.proc.returncode if self.proc.returncode is not None else -int(signal.SIGKILL)
        self._stop.set()
        wd = self.spec.path
        if not (wd / FINAL).exists() or rc != 0:
            tmp = wd / (EXIT + ".tmp")
            tmp.write_text(json.dumps({"returncode": rc, "requeued": self.requeued,
                                       "ended": time.time(), "host": socket.gethostname()}))
            tmp.replace(wd / EXIT)
        lock = _read_json(wd / LOCK)
        if lock is None or lock.get("pid") == os.getpid():
            (wd / LOCK).unlink(missing_ok=True)
        if not self._log.closed:
            self._log.close()


# --------------------------------------------------------------------------------------------
# submitit job: checkpointable, so a timed-out / preempted job is requeued and resumes
# --------------------------------------------------------------------------------------------
class RunJob(helpers.Checkpointable):
    """Callable submitted to submitit; on timeout/preemption it stops the trainer and requeues.

    submitit calls `checkpoint` from its USR2 handler (SLURM: `--signal=USR2@signal_delay_s`;
    local executor: signal_delay_s before timeout_min). The requeued job runs the same command,
    which resumes from the run's own checkpoints/.
    """

    def __init__(self, spec: RunSpec, env: dict[str, str] | None = None, grace_s: float = 60.0):
        self.spec = spec
        self.env = dict(env or {})
        self.grace_s = grace_s
        self._attempt: Attempt | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_attempt"] = None  # a live process is never pickled
        return state

    def __call__(self) -> str:
        if self.spec.is_done():
            return "done"
        self._attempt = self.spec.start(self.env)
        try:
            rc = self._attempt.wait()
        finally:
            self._attempt.close()
        if rc != 0:
            raise RuntimeError(f"{self.spec.workdir}: {_describe_rc(rc)}: {last_log_line(self.spec.path)}")
        return "done" if self.spec.is_done() else "exited 0 without final.json"

    def checkpoint(self, *args, **kwargs) -> helpers.DelayedSubmission:  # pylint: disable=unused-argument
        if self._attempt is not None:
            self._attempt.stop(self.grace_s, requeued=True)
        return helpers.DelayedSubmission(RunJob(self.spec, self.env, self.grace_s))


# --------------------------------------------------------------------------------------------
# Building specs from a grid
# --------------------------------------------------------------------------------------------
ENTRY_MODULES = {"train": "launch.train", "pretrain": "launch.pretrain"}


def build_spec(point: grid.GridPoint, root: Path | str, sweep: grid.SweepDef, module: str = "",
               env: dict[str, str] | None = None) -> RunSpec:
    """GridPoint -> RunSpec for launch.train / launch.pretrain (same job definition for both)."""
    module = module or ENTRY_MODULES[sweep.entry]
    wd = grid.run_dir(root, point.label, point.game, point.seed)
    args = [f"--config={point.config}"]
    if point.game == grid.JOINT:
        args.append("--games=" + ",".join(grid.ale_name(g) for g in point.games))
    elif sweep.entry == "pretrain":
        args.append(f"--games={grid.ale_name(point.game)}")
    else:
        args.append(f"--game={grid.ale_name(point.game)}")
    args += [f"--seed={point.seed}", f"--workdir={wd}"]
    if sweep.data_dir:
        args.append(f"--data_dir={sweep.data_dir}")
    if sweep.init_from:
        args.append("--init_from=" + init_from_path(sweep.init_from, point))
    args += [f"--{k}={v}" for k, v in point.overrides]
    return RunSpec(module, tuple(args), str(wd), tuple(sorted((env or {}).items())))


def init_from_path(template: str, point: grid.GridPoint) -> str:
    """`/pre/sgi/{game}/seed_{seed}` -> the pretraining workdir of this finetuning run."""
    return template.format(label=point.label, config=point.config, game=point.game,
                           ale_game=grid.ale_name(point.game) if point.game != grid.JOINT else "",
                           seed=point.seed)


# --------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------
def detect_gpus(spec: str = "auto") -> list[int]:
    """`auto`: $CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`; `none`/``: none; `0,1`: those."""
    spec = (spec or "").strip().lower()
    if spec in ("", "none", "cpu"):
        return []
    if spec != "auto":
        return [int(x) for x in spec.split(",") if x.strip()]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [int(x) for x in visible.split(",") if x.strip().isdigit()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return list(range(sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))))


@dataclasses.dataclass
class LocalOptions:
    max_parallel: int = 1
    gpus: Sequence[int] = ()
    timeout_min: float = 7 * 24 * 60  # submitit's local default is 2 minutes: never use it
    max_requeues: int = 3
    signal_delay_s: int = 60
    grace_s: float = 45.0
    poll_s: float = 2.0


def gpu_for_slot(slot: int, gpus: Sequence[int]) -> int | None:
    return gpus[slot % len(gpus)] if gpus else None


def _slot_env(slot: int, opts: LocalOptions) -> dict[str, str]:
    gpu = gpu_for_slot(slot, opts.gpus)
    env = {"CUDA_VISIBLE_DEVICES": "" if gpu is None else str(gpu)}
    share = -(-opts.max_parallel // len(opts.gpus)) if opts.gpus else 1
    if share > 1 and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ:
        # several runs on one GPU: JAX would preallocate 75% of it for each
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / share:.2f}"
    if opts.max_parallel > 1 and "SPR_CORES" not in os.environ:
        # each trainer's default env workers (envs/pool.py) use its share of the cores only
        env["SPR_CORES"] = str(max(1, _cores() // opts.max_parallel))
    return env


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def runnable(specs: Iterable[RunSpec]) -> tuple[list[RunSpec], list[RunSpec], list[RunSpec]]:
    """(to run, done, running elsewhere)."""
    todo, done, busy = [], [], []
    for s in specs:
        st = s.state().state
        (done if st == "done" else busy if st == "running" else todo).append(s)
    return todo, done, busy


def run_local(specs: Sequence[RunSpec], folder: Path | str, opts: LocalOptions,
              log: Callable[[str], None] = print) -> dict[str, RunState]:
    """Runs the specs with submitit's LocalExecutor, at most opts.max_parallel at a time, slot
    k on GPU opts.gpus[k % len(gpus)]. Blocks until all have ended; returns workdir -> state."""
    from submitit.local.local import LocalExecutor  # pylint: disable=import-outside-toplevel

    todo, done, busy = runnable(specs)
    log(f"{len(specs)} runs: {len(done)} done (skipped), {len(busy)} running elsewhere (skipped), "
        f"{len(todo)} to run, {opts.max_parallel} at a time"
        + (f" on GPUs {list(opts.gpus)}" if opts.gpus else " (no GPU)"))
    executor = LocalExecutor(folder, max_num_timeout=opts.max_requeues)
    queue = collections.deque(todo)
    active: dict[int, tuple[RunSpec, object]] = {}
    try:
        while queue or active:
            for slot, (spec, job) in list(active.items()):
                if job.done():
                    del active[slot]
                    st = spec.state()
                    log(f"[{st.state}] {spec.workdir}" + (f": {st.error}" if st.error else ""))
            for slot in range(opts.max_parallel):
                if slot in active or not queue:
                    continue
                spec = queue.popleft()
                if spec.state().state in ("done", "running"):
                    continue
                gpu = gpu_for_slot(slot, opts.gpus)
                executor.update_parameters(
                    timeout_min=opts.timeout_min, signal_delay_s=opts.signal_delay_s,
                    gpus_per_node=0 if gpu is None else 1,
                    visible_gpus=() if gpu is None else (gpu,))
                job = executor.submit(RunJob(spec, _slot_env(slot, opts), opts.grace_s))
                active[slot] = (spec, job)
                log(f"[start] {spec.workdir} (slot {slot}, GPU {'-' if gpu is None else gpu})")
            if queue or active:
                time.sleep(opts.poll_s)
    except KeyboardInterrupt:
        log("interrupted: stopping running jobs (they resume on the next sweep)")
        for _, job in active.values():
            job.cancel()
        raise
    return {s.workdir: s.state() for s in specs}


@dataclasses.dataclass
class SlurmOptions:
    partition: str = ""
    time_min: int = 24 * 60
    gpus_per_job: int = 1
    cpus_per_job: int = 8
    mem_gb: int = 0  # 0: the partition's default
    array_parallelism: int = 256
    max_requeues: int = 10  # timeouts; preemptions do not count
    signal_delay_s: int = 120  # USR2 this long before the time limit -> stop, requeue
    grace_s: float = 90.0
    setup: Sequence[str] = ()  # shell lines run before the job (module load, venv ...)
    additional: dict = dataclasses.field(default_factory=dict)  # account, qos, constraint ...
    job_name: str = "spr-sweep"


def make_slurm_executor(folder: Path | str, opts: SlurmOptions):
    """AutoExecutor on SLURM: job arrays, each job requeued on timeout/preemption."""
    import submitit  # pylint: disable=import-outside-toplevel

    if int(opts.time_min) != opts.time_min or opts.time_min <= 0:
        raise ValueError(f"SLURM time must be a positive whole number of minutes, got {opts.time_min}")
    if opts.signal_delay_s <= opts.grace_s:
        raise ValueError("signal_delay_s must exceed grace_s (time to stop the trainer before the kill)")
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=opts.max_requeues)
    params = dict(
        name=opts.job_name, timeout_min=int(opts.time_min), nodes=1, tasks_per_node=1,
        gpus_per_node=int(opts.gpus_per_job), cpus_per_task=int(opts.cpus_per_job),
        slurm_array_parallelism=int(opts.array_parallelism),
        slurm_signal_delay_s=int(opts.signal_delay_s),
    )
    if opts.mem_gb:
        params["mem_gb"] = opts.mem_gb
    if opts.partition:
        params["slurm_partition"] = opts.partition
    if opts.setup:
        params["slurm_setup"] = list(opts.setup)
    if opts.additional:
        params["slurm_additional_parameters"] = dict(opts.additional)
    executor.update_parameters(**params)
    return executor


def submit_slurm(specs: Sequence[RunSpec], folder: Path | str, opts: SlurmOptions,
                 log: Callable[[str], None] = print, executor=None) -> list:
    """Submits every run that is not done or running as one SLURM job array; returns the jobs."""
    todo, done, busy = runnable(specs)
    log(f"{len(specs)} runs: {len(done)} done (skipped), {len(busy)} running (skipped), "
        f"{len(todo)} to submit")
    if not todo:
        return []
    executor = executor or make_slurm_executor(folder, opts)
    with executor.batch():
        jobs = [executor.submit(RunJob(s, {}, opts.grace_s)) for s in todo]
    if jobs:
        log(f"submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} jobs)")
    return jobs
