"""Where a sweep's jobs run: submitit's local executor (`run_local`) or SLURM job arrays
(`submit_slurm`), each job a `RunJob` that is requeued on a timeout or a preemption."""

from __future__ import annotations

import collections
import dataclasses
import os
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from submitit import helpers

from launch import runstate
from launch.attempt import Attempt
from launch.jobspec import JobSpec


# --------------------------------------------------------------------------------------------
# submitit job: checkpointable, so a timed-out / preempted job is requeued and resumes
# --------------------------------------------------------------------------------------------
class RunJob(helpers.Checkpointable):
  """Callable submitted to submitit; on timeout/preemption it stops the trainer and requeues.

  submitit calls `checkpoint` from its USR2 handler (SLURM: `--signal=USR2@signal_delay_s`;
  local executor: signal_delay_s before timeout_min). The requeued job runs the same command,
  which resumes from the run's own checkpoints/.
  """

  def __init__(self, spec: JobSpec, env: dict[str, str] | None = None, grace_s: float = 60.0):
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
      raise RuntimeError(
          f"{self.spec.workdir}: {runstate.describe_rc(rc)}: "
          f"{runstate.last_log_line(self.spec.path)}"
      )
    return "done" if self.spec.is_done() else "exited 0 without final.json"

  def checkpoint(self, *args, **kwargs) -> helpers.DelayedSubmission:
    del args, kwargs  # submitit passes what its own checkpoint methods take
    if self._attempt is not None:
      self._attempt.stop(self.grace_s, requeued=True)
    return helpers.DelayedSubmission(RunJob(self.spec, self.env, self.grace_s))


def runnable(specs: Iterable[JobSpec]) -> tuple[list[JobSpec], list[JobSpec], list[JobSpec]]:
  """(to run, done, running elsewhere)."""
  todo, done, busy = [], [], []
  for s in specs:
    st = s.state().state
    (done if st == "done" else busy if st == "running" else todo).append(s)
  return todo, done, busy


# --------------------------------------------------------------------------------------------
# Local
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
    out = subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20, check=False
    )
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
  # Imported here: envs.pool loads numpy and the env package, which `--status` does not need.
  from envs.pool import CORES_ENV, available_cores  # pylint: disable=import-outside-toplevel

  gpu = gpu_for_slot(slot, opts.gpus)
  env = {"CUDA_VISIBLE_DEVICES": "" if gpu is None else str(gpu)}
  share = -(-opts.max_parallel // len(opts.gpus)) if opts.gpus else 1
  if share > 1 and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ:
    # several runs on one GPU: JAX would preallocate 75% of it for each
    env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / share:.2f}"
  if opts.max_parallel > 1 and CORES_ENV not in os.environ:
    # each trainer's default env workers (envs/pool.py) use its share of the cores only
    env[CORES_ENV] = str(max(1, available_cores() // opts.max_parallel))
  return env


def run_local(
    specs: Sequence[JobSpec],
    folder: Path | str,
    opts: LocalOptions,
    log: Callable[[str], None] = print,
) -> dict[str, runstate.RunState]:
  """Runs the specs with submitit's LocalExecutor, at most opts.max_parallel at a time, slot
  k on GPU opts.gpus[k % len(gpus)]. Blocks until all have ended; returns workdir -> state."""
  from submitit.local.local import LocalExecutor  # pylint: disable=import-outside-toplevel

  todo, done, busy = runnable(specs)
  log(
      f"{len(specs)} runs: {len(done)} done (skipped), {len(busy)} running elsewhere (skipped), "
      f"{len(todo)} to run, {opts.max_parallel} at a time"
      + (f" on GPUs {list(opts.gpus)}" if opts.gpus else " (no GPU)")
  )
  executor = LocalExecutor(folder, max_num_timeout=opts.max_requeues)
  queue = collections.deque(todo)
  active: dict[int, tuple[JobSpec, object]] = {}
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
            timeout_min=opts.timeout_min,
            signal_delay_s=opts.signal_delay_s,
            gpus_per_node=0 if gpu is None else 1,
            visible_gpus=() if gpu is None else (gpu,),
        )
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


# --------------------------------------------------------------------------------------------
# SLURM
# --------------------------------------------------------------------------------------------
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
    raise ValueError(
        "signal_delay_s must exceed grace_s (time to stop the trainer before the kill)"
    )
  executor = submitit.AutoExecutor(
      folder=folder, cluster="slurm", slurm_max_num_timeout=opts.max_requeues
  )
  params = dict(
      name=opts.job_name,
      timeout_min=int(opts.time_min),
      nodes=1,
      tasks_per_node=1,
      gpus_per_node=int(opts.gpus_per_job),
      cpus_per_task=int(opts.cpus_per_job),
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


def submit_slurm(
    specs: Sequence[JobSpec],
    folder: Path | str,
    opts: SlurmOptions,
    log: Callable[[str], None] = print,
    executor=None,
) -> list:
  """Submits every run that is not done or running as one SLURM job array; returns the jobs."""
  todo, done, busy = runnable(specs)
  log(
      f"{len(specs)} runs: {len(done)} done (skipped), {len(busy)} running (skipped), "
      f"{len(todo)} to submit"
  )
  if not todo:
    return []
  executor = executor or make_slurm_executor(folder, opts)
  with executor.batch():
    jobs = [executor.submit(RunJob(s, {}, opts.grace_s)) for s in todo]
  if jobs:
    log(f"submitted job array {jobs[0].job_id.split('_')[0]} ({len(jobs)} jobs)")
  return jobs
