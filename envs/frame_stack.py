"""Frame stacking with the project's zero-padding rule (docs/CONTRACTS.md).

A state is the stack of the last ``num_frames`` frames of the current learner episode, oldest
first, channel-first. At the start of a learner episode (game reset, or a life lost in
training) the stack is zeros except the newest frame, as in dopamine / rlpyt (which the SPR code
runs on). Replay rebuilds stacks with the same rule, so actor and replay stacks are identical.
"""

from __future__ import annotations

import numpy as np


class FrameStacker:
  """Holds the last ``num_frames`` frames of a learner episode as a (num_frames, H, W) array."""

  def __init__(self, num_frames: int = 4, frame_shape: tuple[int, int] = (84, 84), dtype=np.uint8):
    if num_frames < 1:
      raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    self.num_frames = num_frames
    self._stack = np.zeros((num_frames, *frame_shape), dtype=dtype)

  def reset(self, frame: np.ndarray) -> np.ndarray:
    """Starts a learner episode at ``frame``: zeros except the newest slot. Returns a copy."""
    self._check(frame)
    self._stack.fill(0)
    self._stack[-1] = frame
    return self.stack

  def clear(self) -> None:
    """All zeros: the next ``push`` starts a learner episode (``reset`` = clear + push; the
    "spr" env protocol zeroes its stack this way, as its reference does)."""
    self._stack.fill(0)

  def push(self, frame: np.ndarray) -> np.ndarray:
    """Appends ``frame`` as the newest, dropping the oldest. Returns a copy of the stack."""
    self._check(frame)
    self._stack[:-1] = self._stack[1:]
    self._stack[-1] = frame
    return self.stack

  def advance(self, frame: np.ndarray, terminal: bool) -> None:
    """The stack after an env step that returned ``frame``: a terminal step returns the first
    frame of the next learner episode (restart there), any other the next frame (push).
    ``AtariEnv.step`` follows this rule, and ``envs.pool.EnvPool`` rebuilds stacks with it."""
    if terminal:
      self.reset(frame)
    else:
      self.push(frame)

  @property
  def view(self) -> np.ndarray:
    """The current stack without a copy, read-only (it changes with the next frame)."""
    view = self._stack.view()
    view.flags.writeable = False
    return view

  @property
  def stack(self) -> np.ndarray:
    """A copy of the current stack, oldest frame first."""
    return self._stack.copy()

  def get_state(self) -> dict:
    return {"stack": self._stack.copy()}

  def set_state(self, state: dict) -> None:
    stack = np.asarray(state["stack"])
    if stack.shape != self._stack.shape or stack.dtype != self._stack.dtype:
      raise ValueError(
          f"stack of shape {stack.shape} {stack.dtype} does not fit "
          f"{self._stack.shape} {self._stack.dtype}"
      )
    self._stack[...] = stack

  def _check(self, frame: np.ndarray) -> None:
    if frame.shape != self._stack.shape[1:]:
      raise ValueError(f"frame shape {frame.shape} != {self._stack.shape[1:]}")
