"""The files of a run's workdir (see docs/CONTRACTS.md): config.json, metrics.jsonl, eval.csv,
final.json and checkpoints/. Shared by every entry point so that sweeps and reports read all
runs alike."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterable

CONFIG = "config.json"
METRICS = "metrics.jsonl"
EVAL = "eval.csv"
FINAL = "final.json"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"  # held (flock) by the process training in the workdir

_HELD: dict[str, int] = {}  # resolved workdir -> the open descriptor holding its lock


class WorkdirError(ValueError):
  pass


def replace_atomically(path: str | os.PathLike, write) -> None:
  """Writes `path` through `write(file)` on a hidden temporary beside it, then renames it over
  `path`: a kill leaves the old file or the new one, and a failed write (a full disk) removes the
  temporary and leaves the old file as it was."""
  path = Path(path)
  tmp = path.with_name("." + path.name + ".tmp")
  try:
    with open(tmp, "w", newline="") as f:
      write(f)
      f.flush()
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
  text = json.dumps(data, indent=2, sort_keys=True) + "\n"
  replace_atomically(path, lambda f: f.write(text))


def read_json(path: str | os.PathLike) -> Any:
  return json.loads(Path(path).read_text())


def acquire_lock(workdir: str | os.PathLike) -> Path:
  """Makes this process the only writer of `workdir` (created if needed) until it exits.

  An exclusive `flock` on `workdir/.lock`: the kernel releases it when the holder exits in any
  way (kill -9 included), so a dead holder never blocks a resume. Idempotent within a process.
  The file records the holder (pid, host, start time, command) for the message.

  Raises:
    WorkdirError naming the holder when another live process holds the lock.
  """
  path = Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  key = str(path.resolve())
  if key in _HELD:
    return path
  lock_file = path / LOCK
  fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by child processes
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    os.close(fd)
    try:
      holder = json.loads(lock_file.read_text())
      who = (
          f"pid {holder.get('pid')} on {holder.get('host')} since "
          f"{holder.get('since')}: {holder.get('command')}"
      )
    except (OSError, ValueError):
      who = "another process"
    raise WorkdirError(
        f"{path} is in use by {who}; wait for it to finish or stop it, or use " "another --workdir"
    ) from None
  holder = dict(
      pid=os.getpid(),
      host=socket.gethostname(),
      since=time.strftime("%Y-%m-%d %H:%M:%S"),
      command=" ".join(sys.argv),
  )
  os.ftruncate(fd, 0)
  os.write(fd, (json.dumps(holder) + "\n").encode())
  _HELD[key] = fd
  return path


def release_lock(workdir: str | os.PathLike) -> None:
  """Releases `acquire_lock` (also done by the process's exit)."""
  fd = _HELD.pop(str(Path(workdir).resolve()), None)
  if fd is not None:
    os.close(fd)


def settings_diff(
    stored: dict[str, Any], current: dict[str, Any], legacy: dict[str, Any] | None = None
) -> str:
  """ "k: old -> new, ..." for every setting where `stored` (a run's recorded config) differs from
  `current`; "" when they agree. A key of `current` missing from `stored` (added to the code after
  the run was written) reads as its `legacy` value, or `legacy[key](stored)`."""
  stored = json.loads(json.dumps(stored))  # tuples -> lists, as stored
  current = json.loads(json.dumps(current))
  for key, value in (legacy or {}).items():
    if key in current and key not in stored:
      value = value(stored) if callable(value) else value
      stored[key] = json.loads(json.dumps(value))
  keys = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
  return ", ".join(f"{k}: {stored.get(k)!r} -> {current.get(k)!r}" for k in keys)


def prepare(
    workdir: str | os.PathLike, config: dict[str, Any], legacy: dict[str, Any] | None = None
) -> Path:
  """Creates `workdir` and its config.json, or checks that an existing run used `config`.

  Args:
    workdir: the run's folder.
    config: the run's identity and settings (what config.json holds).
    legacy: for settings added after runs were already written, the value that reproduces what
      the code did before the setting existed (or a function of the stored config giving it): a
      stored config.json without the key is read as having that value (so an older run resumes when its behaviour is unchanged, and is refused
      naming the setting when it is not). The file is not rewritten.

  Raises:
    WorkdirError naming the differing settings when the workdir holds another configuration.
  """
  path = Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  config_file = path / CONFIG
  normalised = json.loads(json.dumps(config))  # tuples -> lists, as stored
  if config_file.exists():
    try:
      stored = read_json(config_file)
    except json.JSONDecodeError as e:
      raise WorkdirError(f"{config_file} is not valid JSON ({e})") from None
    if not isinstance(stored, dict):
      raise WorkdirError(f"{config_file} does not hold a JSON object")
    diffs = settings_diff(stored, normalised, legacy)
    if diffs:
      raise WorkdirError(
          f"{path} holds a run with a different config ({diffs}); use another --workdir"
      )
  else:
    write_json_atomic(config_file, normalised)
  return path


def read_final(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The run's final.json, or None when it is missing or does not parse as a JSON object.

  One rule for every tool (trainers, sweep status, reports): a run is done iff this is not
  None. final.json is written atomically, so a broken one was damaged after the fact; the
  trainers then re-run the final evaluation from the last checkpoint."""
  try:
    data = json.loads((Path(workdir) / FINAL).read_text())
  except (OSError, ValueError):
    return None
  return data if isinstance(data, dict) else None


def is_finished(workdir: str | os.PathLike) -> bool:
  """Whether the run is done: its final.json exists and parses (see `read_final`)."""
  return read_final(workdir) is not None


def final_is_broken(workdir: str | os.PathLike) -> bool:
  """final.json exists but does not parse (the run is then not done)."""
  return (Path(workdir) / FINAL).exists() and read_final(workdir) is None


class MetricsLog:
  """Appends JSON lines to metrics.jsonl, flushed as written."""

  def __init__(self, workdir: str | os.PathLike):
    self.path = Path(workdir) / METRICS

  def truncate_after(self, step: int) -> None:
    """Drops lines logged after `step`: a resumed run re-logs them from its checkpoint."""
    if not self.path.exists():
      return
    kept = []
    for line in self.path.read_text().splitlines():
      try:
        if json.loads(line).get("step", 0) <= step:
          kept.append(line)
      except json.JSONDecodeError:
        continue  # a line cut by a kill
    replace_atomically(self.path, lambda f: f.write("".join(line + "\n" for line in kept)))

  def write(self, record: dict[str, Any]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
      f.flush()


def write_eval_csv(workdir: str | os.PathLike, episodes: Iterable[tuple[float, int]]) -> None:
  rows = [(i, repr(float(score)), int(length)) for i, (score, length) in enumerate(episodes)]

  def write(f):
    writer = csv.writer(f)
    writer.writerow(["episode", "score", "length"])
    writer.writerows(rows)

  replace_atomically(Path(workdir) / EVAL, write)


def read_eval_csv(workdir: str | os.PathLike) -> list[tuple[float, int]]:
  with open(Path(workdir) / EVAL, newline="") as f:
    return [(float(r["score"]), int(r["length"])) for r in csv.DictReader(f)]
