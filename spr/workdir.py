"""The files of a run's workdir (see docs/CONTRACTS.md): config.json, metrics.jsonl, eval.csv,
final.json and checkpoints/. Shared by every entry point so that sweeps and reports read all
runs alike."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Iterable

CONFIG = "config.json"
METRICS = "metrics.jsonl"
EVAL = "eval.csv"
FINAL = "final.json"
CHECKPOINTS = "checkpoints"


class WorkdirError(ValueError):
  pass


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
  path = Path(path)
  tmp = path.with_name("." + path.name + ".tmp")
  tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


def read_json(path: str | os.PathLike) -> Any:
  return json.loads(Path(path).read_text())


def prepare(workdir: str | os.PathLike, config: dict[str, Any],
            legacy: dict[str, Any] | None = None) -> Path:
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
    for key, value in (legacy or {}).items():
      if key in normalised and key not in stored:
        value = value(stored) if callable(value) else value
        stored[key] = json.loads(json.dumps(value))
    if stored != normalised:
      keys = sorted(k for k in set(stored) | set(normalised) if stored.get(k) != normalised.get(k))
      diffs = ", ".join(f"{k}: {stored.get(k)!r} -> {normalised.get(k)!r}" for k in keys)
      raise WorkdirError(
          f"{path} holds a run with a different config ({diffs}); use another --workdir")
  else:
    write_json_atomic(config_file, normalised)
  return path


def is_finished(workdir: str | os.PathLike) -> bool:
  return (Path(workdir) / FINAL).exists()


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
    tmp = self.path.with_name("." + self.path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, self.path)

  def write(self, record: dict[str, Any]) -> None:
    with open(self.path, "a") as f:
      f.write(json.dumps(record, sort_keys=True) + "\n")
      f.flush()


def write_eval_csv(workdir: str | os.PathLike, episodes: Iterable[tuple[float, int]]) -> None:
  path = Path(workdir) / EVAL
  tmp = path.with_name("." + path.name + ".tmp")
  with open(tmp, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["episode", "score", "length"])
    for i, (score, length) in enumerate(episodes):
      writer.writerow([i, repr(float(score)), int(length)])
  os.replace(tmp, path)


def read_eval_csv(workdir: str | os.PathLike) -> list[tuple[float, int]]:
  with open(Path(workdir) / EVAL, newline="") as f:
    return [(float(r["score"]), int(r["length"])) for r in csv.DictReader(f)]
