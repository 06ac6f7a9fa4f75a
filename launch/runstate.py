"""The state of a sweep's run, read from its workdir: the files a runner adds and what they mean.

Files a runner (launch/attempt.py) adds to a workdir beside the run's own (spr/workdir.py):
  log.txt    stdout+stderr of every attempt, appended; each attempt starts with a `### ` line.
  run.lock   JSON {pid, child_pid, host, job_id, started, cmd} while a runner owns the run; its
             mtime is refreshed every HEARTBEAT_S seconds; removed when the attempt ends.
  exit.json  JSON {returncode, requeued, ended, host} written when an attempt ends.

Run states (read_state), first match wins:
  done         final.json parses (spr.workdir.read_final: one rule for every tool).
  running      run.lock is live: its pid is alive on this host, or (lock from another host,
               e.g. a SLURM node) its heartbeat is younger than STALE_S.
  failed       final.json does not parse, or exit.json with a non-zero return code that is not
               an interruption, or exit 0 without final.json; `error` = the cause from log.txt.
  interrupted  started but not running and not failed: requeued after a timeout/preemption,
               killed by SIGTERM/SIGINT/SIGKILL/SIGUSR* (or exited 128+N after catching one:
               launch.train's 143 = checkpointed on SIGTERM), or a stale lock (runner killed).
               A sweep resumes it from its checkpoint.
  pending      nothing written yet.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import time
from pathlib import Path

from spr import workdir as run_files

LOG = "log.txt"
RUN_LOCK = "run.lock"
EXIT = "exit.json"
HEARTBEAT_S = 15.0
STALE_S = 180.0
STATES = ("pending", "running", "done", "failed", "interrupted")
_INTERRUPT_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGKILL, signal.SIGUSR1, signal.SIGUSR2}


@dataclasses.dataclass
class RunState:
  state: str  # one of STATES
  step: int | None = None  # latest step in metrics.jsonl
  budget: int | None = None  # config.json `steps`
  error: str = ""  # failed: the cause from log.txt; interrupted: why


def read_json_object(path: Path | str) -> dict | None:
  """The JSON object in `path`; None when it is missing, torn or not an object."""
  try:
    data = json.loads(Path(path).read_text())
  except (OSError, ValueError):
    return None
  return data if isinstance(data, dict) else None


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


def cause_in_log(path: Path | str) -> str:
  """Why a command failed, from its log: the last `error:` line of an entry point, else the last
  exception line of a traceback, else the last line that is not absl's closing hint ("Pass
  --helpshort or --helpfull to see help on flags.")."""
  lines = [line.strip() for line in _tail_lines(Path(path)) if line.strip()]
  for line in reversed(lines):
    if line.startswith(("error:", "FATAL Flags parsing error:")):
      return line
  for line in reversed(lines):
    head = line.split(":", 1)[0]
    if (
        ":" in line
        and head.replace(".", "").replace("_", "").isalnum()
        and (head.endswith(("Error", "Exception", "Interrupt")))
    ):
      return line
  for line in reversed(lines):
    if not line.startswith("Pass --helpshort or --helpfull"):
      return line
  return ""


def last_log_line(workdir: Path | str) -> str:
  """The cause of a failed job, from its log.txt (`cause_in_log`)."""
  return cause_in_log(Path(workdir) / LOG)


def latest_step(workdir: Path | str) -> int | None:
  """The last `step` in metrics.jsonl (a torn last line is skipped)."""
  for line in reversed(_tail_lines(Path(workdir) / run_files.METRICS)):
    try:
      rec = json.loads(line)
    except ValueError:
      continue
    if isinstance(rec, dict) and "step" in rec:
      return int(rec["step"])
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


def lock_is_live(workdir: Path | str, now: float | None = None) -> bool:
  """Whether run.lock belongs to a runner that is still there (see the module docstring)."""
  path = Path(workdir) / RUN_LOCK
  lock = read_json_object(path)
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


def _interrupt_signal(rc: int) -> int | None:
  """The interrupting signal behind exit status rc: -N (killed by N) or 128+N (a trainer
  that caught N, checkpointed and exited, e.g. launch.train's 143 after SIGTERM); else None."""
  sig = -rc if rc < 0 else rc - 128 if rc > 128 else None
  return sig if sig in {int(s) for s in _INTERRUPT_SIGNALS} else None


def describe_rc(rc: int) -> str:
  """An exit status in words: `exit code 143 (stopped by SIGTERM)`, `killed by SIGKILL`."""
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
  cfg = read_json_object(wd / run_files.CONFIG) or {}
  budget = cfg.get("steps")
  budget = int(budget) if isinstance(budget, (int, float)) else None
  if run_files.is_finished(wd):
    return RunState("done", step, budget)
  if lock_is_live(wd):
    return RunState("running", step, budget)
  if run_files.final_is_broken(wd):
    return RunState(
        "failed",
        step,
        budget,
        "final.json does not parse; rerun the run to redo its final evaluation",
    )
  ex = read_json_object(wd / EXIT)
  if ex is not None:
    rc = int(ex.get("returncode", 1))
    if ex.get("requeued"):
      return RunState("interrupted", step, budget, "requeued after timeout/preemption")
    if _interrupt_signal(rc) is not None:
      return RunState("interrupted", step, budget, describe_rc(rc))
    if rc == 0:
      return RunState("failed", step, budget, "exited 0 without final.json")
    return RunState("failed", step, budget, last_log_line(wd) or describe_rc(rc))
  if (wd / RUN_LOCK).exists():
    return RunState("interrupted", step, budget, "runner gone (stale run.lock)")
  if any((wd / f).exists() for f in (LOG, run_files.METRICS, run_files.CONFIG)):
    return RunState("interrupted", step, budget, "started, not running")
  return RunState("pending", step, budget)
