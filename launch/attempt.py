"""One attempt at a sweep's run: the run's command in a subprocess, holding the run's lock.

`RunLock` is run.lock with its heartbeat (launch/runstate.py says how a lock is read); `Attempt`
starts the command with its output appended to log.txt, and on `close` writes exit.json and
frees the lock.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from launch import runstate
from spr import workdir as run_files


class RunLockedError(RuntimeError):
  """Another live runner owns this workdir."""


class RunLock:
  """run.lock of a workdir, taken by this process (a stale one is replaced); its mtime is
  refreshed every HEARTBEAT_S seconds until `release`, so a runner on another node that dies
  is seen as gone after STALE_S."""

  def __init__(self, workdir: Path, command: Sequence[str]):
    self.path = Path(workdir) / runstate.RUN_LOCK
    self._command = list(command)
    self._stop = threading.Event()
    self._acquire()
    self._beat = threading.Thread(target=self._heartbeat, daemon=True)
    self._beat.start()

  def _payload(self, child_pid: int | None = None) -> str:
    job_id = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID") or ""
    return json.dumps(
        {
            "pid": os.getpid(),
            "child_pid": child_pid,
            "host": socket.gethostname(),
            "job_id": job_id,
            "started": time.time(),
            "cmd": self._command,
        }
    )

  def _acquire(self) -> None:
    for _ in range(2):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        if runstate.lock_is_live(self.path.parent):
          raise RunLockedError(
              f"{self.path.parent} is owned by a live runner ({self.path})"
          ) from None
        self.path.unlink(missing_ok=True)  # stale: its runner is gone
        continue
      with os.fdopen(fd, "w") as f:
        f.write(self._payload())
      return
    raise RunLockedError(f"could not take {self.path}")

  def record_child(self, child_pid: int) -> None:
    tmp = self.path.with_name(self.path.name + ".tmp")
    tmp.write_text(self._payload(child_pid))
    tmp.replace(self.path)

  def _heartbeat(self) -> None:
    while not self._stop.wait(runstate.HEARTBEAT_S):
      try:
        os.utime(self.path)
      except OSError:
        pass

  def release(self) -> None:
    """Stops the heartbeat; removes run.lock unless another runner has taken it since."""
    self._stop.set()
    lock = runstate.read_json_object(self.path)
    if lock is None or lock.get("pid") == os.getpid():
      self.path.unlink(missing_ok=True)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
  """Linux: the trainer gets SIGTERM if its runner dies (no orphaned GPU processes)."""
  try:
    import ctypes  # pylint: disable=import-outside-toplevel

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
  except Exception:  # pylint: disable=broad-except
    pass


class Attempt:
  """One process of a run: `command` on `workdir` with `env` added to this process's
  environment; owns run.lock while it lives, appends to log.txt."""

  def __init__(self, command: Sequence[str], workdir: Path | str, env: dict[str, str]):
    self.command = list(command)
    self.workdir = Path(workdir)
    self.requeued = False
    self.returncode: int | None = None
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._lock = RunLock(self.workdir, self.command)
    (self.workdir / runstate.EXIT).unlink(missing_ok=True)
    full_env = {**os.environ, **env}
    # pylint: disable-next=consider-using-with
    self._log = open(self.workdir / runstate.LOG, "a", buffering=1)
    self._log.write(
        f"### {time.strftime('%Y-%m-%d %H:%M:%S')} start on {socket.gethostname()} "
        f"(CUDA_VISIBLE_DEVICES={full_env.get('CUDA_VISIBLE_DEVICES', '')!r}): "
        f"{' '.join(self.command[1:])}\n"
    )
    self._log.flush()
    try:
      self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
          self.command,
          stdout=self._log,
          stderr=subprocess.STDOUT,
          stdin=subprocess.DEVNULL,
          env=full_env,
          preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
      )
    except BaseException:
      self._log.close()
      self._lock.release()
      raise
    self._lock.record_child(self.proc.pid)

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
    if not (self.workdir / run_files.FINAL).exists() or rc != 0:
      tmp = self.workdir / (runstate.EXIT + ".tmp")
      tmp.write_text(
          json.dumps(
              {
                  "returncode": rc,
                  "requeued": self.requeued,
                  "ended": time.time(),
                  "host": socket.gethostname(),
              }
          )
      )
      tmp.replace(self.workdir / runstate.EXIT)
    self._lock.release()
    if not self._log.closed:
      self._log.close()
