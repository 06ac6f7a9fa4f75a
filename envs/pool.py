"""Many `AtariEnv`s stepped together, in this process or spread over worker processes.

    with EnvPool(workers=4) as pool:                   # workers=0: the envs live in this process
        handles = pool.add([dict(game="Pong", seed=s, training=True, protocol="spr")
                            for s in range(8)])           # any AtariEnv(**kwargs)
        frames = pool.reset(handles)                   # uint8 [8, 84, 84]
        frames, rewards, terminals, infos = pool.step(handles, actions)
        pool.stack(handles[0])                         # (4, 84, 84): what env.stack would be

Why processes: ale-py 0.12's `act()` holds the GIL, so threads step emulators no faster than a
loop (`python -m launch.bench --probes`). A pool with N workers steps the envs of one call on N
cores at once; each env lives in exactly one worker for its whole life.

Exactness: every env is the single-env `AtariEnv` (the worker runs `envs.pool_worker.EnvHost`,
which an in-process pool calls directly), so an env gives the same frames, rewards, terminals
and infos for the same seed and actions whatever the number of workers or the other envs of the
pool (tests/test_env_pool.py).

Transfers: a step sends the actions and returns one frame per env (7 KB), not the 4-frame stack:
the pool keeps each env's stack itself with `FrameStacker.advance`, the rule `AtariEnv.step`
follows in both env protocols (restart at a terminal, else push), so the stacks the learner sees
equal the envs' own (checked against the workers' stacks in the tests). Each command is sent
to every worker it concerns before any reply is read, so the workers step in parallel; pipes
carry pickles (a frame array pickles as one buffer). An exception inside a worker is raised
here as itself (a ValueError for an unknown game, as without workers) with the worker's
traceback as a note; a dead worker raises `EnvWorkerError`.

Workers are started with `subprocess` (`python -c` importing only `envs.pool_worker`), not
`multiprocessing`: spawn would re-import the trainer's `__main__` (JAX and all) in every worker,
and fork is unsafe once JAX's threads run. A worker exits when its pipe closes, so a killed
trainer leaves no orphans.
"""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from multiprocessing.connection import Connection
from typing import Any, Sequence

import numpy as np

from envs.atari import FRAME_SHAPE, STACK_SIZE
from envs.frame_stack import FrameStacker
from envs.pool_worker import EnvHost


class EnvWorkerError(RuntimeError):
  """An env worker died, or raised an exception that could not be sent back."""


CORES_ENV = "SPR_CORES"  # cores this process may use (set by launch/backends.py per local slot)


def available_cores() -> int:
  """Cores for this process: $SPR_CORES when set (a local sweep running several trainers at
  once gives each its share), else the CPU affinity (a SLURM allocation, taskset)."""
  if os.environ.get(CORES_ENV, "").strip():
    return max(1, int(os.environ[CORES_ENV]))
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # pragma: no cover - not Linux
    return os.cpu_count() or 1


def auto_workers(num_envs: int, cores: int | None = None) -> int:
  """The default worker count for `num_envs` envs: none on a machine with 2 cores or fewer (the
  trainer and the device driver need those), else one per core but one, at most one per env."""
  cores = available_cores() if cores is None else cores
  if cores <= 2 or num_envs <= 1:
    return 0
  return min(cores - 1, num_envs)


def resolve_workers(requested: int, num_envs: int) -> int:
  """`requested` workers (-1: `auto_workers`); 0 means the envs live in this process."""
  if requested < -1:
    raise ValueError(
        f"env workers must be -1 (auto), 0 (in this process) or more, got " f"{requested}"
    )
  return auto_workers(num_envs) if requested == -1 else int(requested)


class _Raised:
  """A worker's reply that its command raised `error` (the exception, ready to re-raise)."""

  def __init__(self, error: BaseException):
    self.error = error


class _Process:
  """One worker process and the two ends of its pipes."""

  def __init__(self, index: int):
    self.index = index
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    # The child imports this package as the parent does: the parent's sys.path, and -P so that
    # a folder named like a module in the working directory cannot shadow it.
    path = os.pathsep.join(p for p in sys.path if p)
    env = dict(os.environ, PYTHONPATH=path)
    code = (
        "import sys; from envs.pool_worker import serve; "
        "serve(int(sys.argv[1]), int(sys.argv[2]))"
    )
    try:
      self.proc = subprocess.Popen(
          [sys.executable, "-P", "-c", code, str(to_child_r), str(from_child_w)],
          pass_fds=(to_child_r, from_child_w),
          env=env,
          stdin=subprocess.DEVNULL,
      )
    except BaseException:
      os.close(to_child_w)
      os.close(from_child_r)
      raise
    finally:
      os.close(to_child_r)
      os.close(from_child_w)
    self.outbox = Connection(to_child_w, readable=False)
    self.inbox = Connection(from_child_r, writable=False)

  @property
  def name(self) -> str:
    return f"env worker {self.index} (pid {self.proc.pid})"

  def send(self, command: str, args: tuple) -> None:
    try:
      self.outbox.send((command, args))
    except (BrokenPipeError, OSError) as e:
      raise EnvWorkerError(self._dead_message()) from e

  def receive(self) -> Any:
    """The reply to the last command: its result, or `_Raised` when the command raised there.
    Raises EnvWorkerError if the worker died."""
    try:
      status, value = self.inbox.recv()
    except (EOFError, OSError) as e:
      raise EnvWorkerError(self._dead_message()) from e
    if status == "error":
      # The worker's exception itself when it pickles (a ValueError stays one: callers treat
      # bad input alike with or without workers), with the worker's traceback as a note.
      error, trace = value
      if error is None:
        return _Raised(EnvWorkerError(f"{self.name} raised:\n{trace}"))
      error.add_note(f"raised in {self.name}:\n{trace}")
      return _Raised(error)
    return value

  def _dead_message(self) -> str:
    try:
      code = self.proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
      code = None
    return f"{self.name} died (exit code {code})"

  def request_exit(self) -> None:
    try:
      self.outbox.send(("exit", ()))
    except (BrokenPipeError, OSError):
      pass
    for conn in (self.outbox, self.inbox):
      conn.close()

  def wait(self) -> None:
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover - a hung emulator
      self.proc.kill()
      self.proc.wait()


def _close_processes(processes: list[_Process]) -> None:
  for p in processes:  # all asked first: they exit in parallel
    p.request_exit()
  for p in processes:
    p.wait()


class EnvPool:
  """`AtariEnv`s addressed by integer handles, stepped a batch of handles at a time.

  Args:
    workers: worker processes; 0 keeps the envs in this process (a plain loop).

  Errors: an exception raised by some envs' command is re-raised after every reply of the call
  is read, and after the stacks of the envs of the call are brought up to date (those of the
  failed part are fetched from their workers), so the pool stays usable. A dead worker, or a
  call interrupted between its sends and its replies (Ctrl-C), leaves the pool unusable: every
  later call raises EnvWorkerError, and `close()` still stops the workers.
  """

  def __init__(self, workers: int = 0):
    if workers < 0:
      raise ValueError(f"workers must be >= 0, got {workers}")
    self.workers = int(workers)
    self._local = EnvHost() if workers == 0 else None
    self._processes: list[_Process] = []
    self._finalizer = weakref.finalize(self, _close_processes, self._processes)
    try:
      for i in range(workers):
        self._processes.append(_Process(i))
    except BaseException:
      self._finalizer()  # stop the ones already started
      raise
    self._broken: str | None = None
    self._worker_of: dict[int, int] = {}
    self._load = [0] * max(workers, 1)
    self._stackers: dict[int, FrameStacker] = {}
    self._num_actions: dict[int, int] = {}
    self._action_set: dict[int, list[int]] = {}
    self._next_handle = 0

  # ------------------------------------------------------------------------------ plumbing
  def _call(
      self, command: str, handles: Sequence[int], *columns: Sequence[Any]
  ) -> tuple[list, list[list[int]], BaseException | None]:
    """Runs `command(handles_w, *columns_w)` on every worker w owning some of `handles` (all
    sent before any reply is read). Returns ([(positions, result)] of the workers that
    succeeded, [positions] of those whose command raised, the first such exception)."""
    if self._broken is not None:
      raise EnvWorkerError(f"this env pool is unusable: {self._broken}")
    unknown = [h for h in handles if h not in self._worker_of]
    if unknown:
      raise KeyError(f"unknown env handles {unknown[:5]}")
    by_worker: dict[int, list[int]] = {}
    for position, handle in enumerate(handles):
      by_worker.setdefault(self._worker_of[handle], []).append(position)

    def args_of(positions):
      return ([handles[i] for i in positions], *[[c[i] for i in positions] for c in columns])

    done, failed, error = [], [], None
    if self._local is not None:
      for positions in by_worker.values():
        try:
          done.append((positions, getattr(self._local, command)(*args_of(positions))))
        except Exception as e:  # pylint: disable=broad-except - re-raised by the caller
          failed.append(positions)
          error = error or e
      return done, failed, error
    try:
      for w, positions in by_worker.items():
        self._processes[w].send(command, args_of(positions))
      for w, positions in by_worker.items():
        reply = self._processes[w].receive()
        if isinstance(reply, _Raised):
          failed.append(positions)
          error = error or reply.error
        else:
          done.append((positions, reply))
    except BaseException as e:  # a dead worker, or interrupted: replies may be left unread
      self._broken = f"{command} failed or was interrupted ({type(e).__name__}: {e})"
      raise
    return done, failed, error

  def _results(self, command: str, handles: Sequence[int], *columns: Sequence[Any]) -> list:
    """`_call` when a failure needs no repair: the successful parts, or the first error."""
    done, _, error = self._call(command, handles, *columns)
    if error is not None:
      raise error
    return done

  def _resync(self, handles: Sequence[int], failed: list[list[int]]) -> None:
    """After a failed step/reset/set_state: the failed envs' stacks fetched from the envs."""
    lost = [handles[i] for positions in failed for i in positions]
    if lost:
      for handle, stack in zip(lost, self.worker_stacks(lost)):
        self._stackers[handle].set_state({"stack": stack})

  @staticmethod
  def _gather_array(parts: list, n: int, shape: tuple, dtype) -> np.ndarray:
    out = np.zeros((n,) + shape, dtype)
    for positions, values in parts:
      out[positions] = values
    return out

  @staticmethod
  def _gather_list(parts: list, n: int) -> list:
    out: list = [None] * n
    for positions, values in parts:
      for i, v in zip(positions, values):
        out[i] = v
    return out

  # ------------------------------------------------------------------------------ the envs
  def add(self, env_kwargs: Sequence[dict]) -> list[int]:
    """Creates one `AtariEnv(**kwargs)` per entry (not reset), each on the least loaded
    worker; returns their handles. All or nothing: if one fails, none is kept."""
    handles = []
    for _ in env_kwargs:
      handle, self._next_handle = self._next_handle, self._next_handle + 1
      worker = int(np.argmin(self._load))
      self._load[worker] += 1
      self._worker_of[handle] = worker
      handles.append(handle)
    try:
      done, _, error = self._call("add", handles, list(env_kwargs))
    except BaseException:
      self._forget(handles)
      raise
    if error is not None:  # the workers that succeeded close their new envs
      made = [handles[i] for positions, _ in done for i in positions]
      try:
        if made:
          self._call("remove", made)
      finally:
        self._forget(handles)
      raise error
    for handle, (num_actions, action_set) in zip(handles, self._gather_list(done, len(handles))):
      self._num_actions[handle] = num_actions
      self._action_set[handle] = action_set
      self._stackers[handle] = FrameStacker(STACK_SIZE, FRAME_SHAPE)
    return handles

  def num_actions(self, handle: int) -> int:
    return self._num_actions[handle]

  def action_set(self, handle: int) -> list[int]:
    return self._action_set[handle]

  def reset(self, handles: Sequence[int], seeds: Sequence[int | None] | None = None) -> np.ndarray:
    """`env.reset(seed=...)` of each handle (`seeds` None: no re-seeding); first frames."""
    seeds = [None] * len(handles) if seeds is None else list(seeds)
    done, failed, error = self._call("reset", handles, seeds)
    for positions, frames in done:
      for i, frame in zip(positions, frames):
        self._stackers[handles[i]].reset(frame)
    if error is not None:
      self._resync(handles, failed)
      raise error
    return self._gather_array(done, len(handles), FRAME_SHAPE, np.uint8)

  def step(
      self, handles: Sequence[int], actions: Sequence[int]
  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
    """`env.step(action)` of each handle: (frames uint8 [n, 84, 84], raw rewards float64 [n],
    learner terminals bool [n], infos), as `AtariEnv.step` returns them one by one."""
    n = len(handles)
    done, failed, error = self._call("step", handles, [int(a) for a in actions])
    for positions, (frames, _, terminals, _) in done:
      for i, frame, terminal in zip(positions, frames, terminals):
        self._stackers[handles[i]].advance(frame, bool(terminal))
    if error is not None:
      self._resync(handles, failed)
      raise error
    frames = self._gather_array([(p, r[0]) for p, r in done], n, FRAME_SHAPE, np.uint8)
    rewards = self._gather_array([(p, r[1]) for p, r in done], n, (), np.float64)
    terminals = self._gather_array([(p, r[2]) for p, r in done], n, (), np.bool_)
    infos = self._gather_list([(p, r[3]) for p, r in done], n)
    return frames, rewards, terminals, infos

  def stack(self, handle: int) -> np.ndarray:
    """The env's current (4, 84, 84) stack, kept in this process (a read-only view: copy it to
    keep it past the next step)."""
    return self._stackers[handle].view

  def stacks(self, handles: Sequence[int]) -> np.ndarray:
    """The stacks of `handles`, uint8 [n, 4, 84, 84] (a new array)."""
    out = np.empty((len(handles), STACK_SIZE) + FRAME_SHAPE, np.uint8)
    for i, handle in enumerate(handles):
      out[i] = self._stackers[handle].view
    return out

  def worker_stacks(self, handles: Sequence[int]) -> np.ndarray:
    """The stacks as the envs themselves hold them (a round trip to the workers; tests check
    that `stacks` agrees)."""
    return self._gather_array(
        self._results("stacks", handles), len(handles), (STACK_SIZE,) + FRAME_SHAPE, np.uint8
    )

  def get_state(self, handles: Sequence[int]) -> list[dict]:
    """`env.get_state()` of each handle (what a checkpoint stores)."""
    return self._gather_list(self._results("get_state", handles), len(handles))

  def set_state(self, handles: Sequence[int], states: Sequence[dict]) -> None:
    """`env.set_state(state)` of each handle: the env continues bit-identically."""
    done, failed, error = self._call("set_state", handles, list(states))
    for positions, stacks in done:
      for i, stack in zip(positions, stacks):
        self._stackers[handles[i]].set_state({"stack": stack})
    if error is not None:
      self._resync(handles, failed)
      raise error

  def remove(self, handles: Sequence[int]) -> None:
    """Closes the envs of `handles` (their handles are forgotten even if closing one raises)."""
    unknown = [h for h in handles if h not in self._worker_of]
    if unknown:
      raise KeyError(f"unknown env handles {unknown[:5]}")
    try:
      self._results("remove", handles)
    finally:
      self._forget(handles)

  def _forget(self, handles: Sequence[int]) -> None:
    for handle in handles:
      worker = self._worker_of.pop(handle, None)
      if worker is not None:
        self._load[worker] -= 1
      for table in (self._stackers, self._num_actions, self._action_set):
        table.pop(handle, None)

  def __len__(self) -> int:
    return len(self._worker_of)

  def close(self) -> None:
    """Closes every env and stops the workers."""
    if self._local is not None:
      self._local.close()
    self._worker_of.clear()
    self._finalizer()

  def __enter__(self) -> "EnvPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


__all__ = ["EnvPool", "EnvWorkerError", "auto_workers", "resolve_workers", "available_cores"]
