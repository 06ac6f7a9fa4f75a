"""The pieces every run loop shares: stopping on a signal, the metrics window, progress and logs.

The online engine (agents/spr/engine.py) and SGI's offline pretraining loop
(agents/sgi/pretrainer.py) are built from these, so a run of either checkpoints on SIGTERM or
Ctrl-C, reports a non-finite loss the same way and logs around the same progress bar.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

from absl import logging

from spr import checkpoint


class NonFiniteLossError(RuntimeError):
  """A loss or gradient norm became NaN or infinite; the message names the last good checkpoint."""


class Preempted(Exception):
  """SIGTERM (cluster preemption or timeout) or Ctrl-C arrived: a checkpoint was written, exit.

  `code` is the conventional exit status of the signal (128 + its number: 143, 130)."""

  def __init__(self, message: str, code: int = 143):
    super().__init__(message)
    self.code = code


class TermFlag:
  """Turns SIGTERM and SIGINT (Ctrl-C) into a flag the loop checks after each step, so the run
  checkpoints at a step boundary instead of dying mid-step. A second Ctrl-C aborts at once
  (KeyboardInterrupt), saying that nothing more is saved."""

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.set = False
    self.signum = None
    self._previous = {}

  def __enter__(self):
    for sig in self._SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.set and signum == signal.SIGINT:
      raise KeyboardInterrupt("second Ctrl-C: aborted without a checkpoint of the current step")
    self.set = True
    self.signum = self.signum or signum
    if signum == signal.SIGINT:
      print(
          "\nCtrl-C: stopping after this step to write a checkpoint (Ctrl-C again to abort "
          "without saving it)",
          file=sys.stderr,
          flush=True,
      )

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else "SIGTERM"

  @property
  def exit_code(self) -> int:
    return 128 + int(self.signum or signal.SIGTERM)

  def preempted(self, where: str) -> Preempted:
    """The exception a loop raises once it has checkpointed (`where`: what was saved)."""
    return Preempted(
        f"{self.name}: checkpointed {where}; rerun the same command to resume", self.exit_code
    )

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


def last_good_checkpoint(ckpt_dir: Path) -> str:
  """How a non-finite-loss message names where to go back to."""
  steps = checkpoint.checkpoint_steps(ckpt_dir)
  return f"last good checkpoint: {'step ' + str(steps[-1]) if steps else 'none'} in {ckpt_dir}"


# ------------------------------------------------------------------------------ metrics window
class MetricsWindow:
  """Sums of per-step values between two metrics.jsonl lines, the episodes that ended, and the
  time and step the window opened at (for the steps/s of the line)."""

  def __init__(self, step: int):
    self.reset(step)

  def reset(self, step: int, now: float | None = None) -> None:
    self.sums: dict[str, float] = {}
    self.count = 0  # what the sums are averaged over (updates, or loop steps)
    self.returns: list[float] = []
    self.step = step
    self.time = time.perf_counter() if now is None else now

  def add(self, values: dict[str, float], count: int = 1) -> None:
    for key, value in values.items():
      self.sums[key] = self.sums.get(key, 0.0) + float(value)
    self.count += int(count)

  def means(self, keys) -> dict[str, float]:
    """The mean of each of `keys` over the window (0 when nothing was added)."""
    n = max(self.count, 1)
    return {k: self.sums.get(k, 0.0) / n for k in keys}

  def rate(self, step: int, now: float) -> float:
    """Steps per second since the window opened."""
    return (step - self.step) / max(now - self.time, 1e-9)


# ------------------------------------------------------------------------------ progress and logs
_ACTIVE_BAR = [None]  # the progress bar of the loop running in this process, if any


def progress_bar(total: int, initial: int, enabled: bool | None, unit: str = "step"):
  """A tqdm bar on stderr (None without tqdm). enabled=None: shown on a terminal, silent when
  stderr is a log file. `log` keeps log lines off it."""
  try:
    from tqdm import tqdm
  except ImportError:  # pragma: no cover - tqdm is a dependency
    return None
  bar = tqdm(
      total=total,
      initial=initial,
      disable=None if enabled is None else not enabled,
      unit=unit,
      dynamic_ncols=True,
      file=sys.stderr,
  )
  _ACTIVE_BAR[0] = bar
  return bar


def log(bar, message: str, *args) -> None:
  """logging.info that keeps the progress bar (`bar`, or the loop's) on its own line (cleared,
  then redrawn)."""
  bar = bar if bar is not None else _ACTIVE_BAR[0]
  if bar is not None and getattr(bar, "disable", False):
    bar = None
  if bar is not None:
    bar.clear()
  logging.info(message, *args)
  if bar is not None:
    bar.refresh()


def close_bar(bar) -> None:
  if bar is not None:
    bar.close()
  if _ACTIVE_BAR[0] is bar:
    _ACTIVE_BAR[0] = None
