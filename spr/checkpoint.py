"""Atomic, verifiable checkpoints of pytrees plus host-side state.

A checkpoint is one pickle file holding the flattened leaves of a pytree (as numpy arrays) and
a dict of host-side state (env state, counters). It is written to a temporary file and renamed,
so a run killed mid-write never leaves a partial checkpoint behind. Restoring checks every leaf's
shape and dtype against a template built by the caller, so a checkpoint of another configuration
is a clear error rather than a silent mismatch.

Pickle of plain numpy arrays keeps this dependency-free and exact; orbax would add async and
sharding machinery that a single-host run does not need.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

_NAME = re.compile(r"^ckpt_(\d+)\.pkl$")
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
  pass


def checkpoint_steps(directory: str | os.PathLike) -> list[int]:
  """Steps of the complete checkpoints in `directory`, ascending."""
  path = Path(directory)
  if not path.is_dir():
    return []
  return sorted(int(m.group(1)) for m in map(_NAME.match, os.listdir(path)) if m)


def save(directory: str | os.PathLike, step: int, tree: Any, host_state: dict, keep: int = 2
         ) -> Path:
  """Writes `ckpt_<step>.pkl` atomically and deletes all but the newest `keep` checkpoints."""
  path = Path(directory)
  path.mkdir(parents=True, exist_ok=True)
  leaves = [np.asarray(x) for x in jax.device_get(jax.tree.leaves(tree))]
  payload = dict(version=FORMAT_VERSION, step=int(step), leaves=leaves, host=host_state)
  final = path / f"ckpt_{int(step)}.pkl"
  tmp = path / f".ckpt_{int(step)}.pkl.tmp"
  with open(tmp, "wb") as f:
    pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, final)
  for old in checkpoint_steps(path)[:-keep]:
    (path / f"ckpt_{old}.pkl").unlink(missing_ok=True)
  return final


def restore(directory: str | os.PathLike, template: Any, step: int | None = None
            ) -> tuple[int, Any, dict]:
  """Loads the checkpoint at `step` (default: the newest readable one).

  Args:
    directory: the checkpoint folder.
    template: a pytree whose leaves have `.shape` and `.dtype` (arrays or
      jax.ShapeDtypeStruct): the structure to restore into.
    step: a specific step, or None for the newest (falling back to older ones if the newest is
      unreadable).
  Returns:
    (step, tree with numpy leaves, host_state dict).
  Raises:
    CheckpointError when no checkpoint is readable or one does not match the template.
  """
  steps = checkpoint_steps(directory) if step is None else [step]
  if not steps:
    raise CheckpointError(f"no checkpoint in {directory}")
  errors = []
  for s in reversed(steps):
    file = Path(directory) / f"ckpt_{s}.pkl"
    try:
      with open(file, "rb") as f:
        payload = pickle.load(f)
    except Exception as e:  # noqa: BLE001 - a truncated or corrupt file: try the previous one
      errors.append(f"{file}: unreadable ({type(e).__name__}: {e})")
      continue
    leaves_t, treedef = jax.tree.flatten(template)
    leaves = payload["leaves"]
    if len(leaves) != len(leaves_t):
      raise CheckpointError(f"{file}: holds {len(leaves)} arrays, this configuration needs "
                            f"{len(leaves_t)}: it was written by another configuration")
    for i, (a, t) in enumerate(zip(leaves, leaves_t)):
      if a.shape != tuple(t.shape) or a.dtype != t.dtype:
        raise CheckpointError(
            f"{file}: array {i} is {a.dtype}{list(a.shape)}, this configuration needs "
            f"{t.dtype}{list(t.shape)}: it was written by another configuration")
    return payload["step"], jax.tree.unflatten(treedef, leaves), payload["host"]
  raise CheckpointError("; ".join(errors))
