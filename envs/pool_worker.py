"""What an `envs.pool.EnvPool` worker does: owns some envs and answers batched commands.

`EnvHost` is the whole of a worker's logic. An in-process pool (`workers=0`) calls it directly;
a worker process (`serve`, started by `envs.pool`) calls it on every message it receives, so
the envs behave the same in both modes by construction.

The envs are built by `envs.games.make_env` (an `AtariEnv`, or a `CatchEnv` for "catch"): the
worker imports only the env modules (ale-py, gymnasium, numpy): no JAX, so a worker process
starts in about a second and holds tens of MB, not the trainer's hundreds.
"""

from __future__ import annotations

import pickle
import signal
import sys
import traceback

import numpy as np

from envs.atari import AtariEnv
from envs.catch import CatchEnv
from envs import games


class EnvHost:
  """Envs keyed by the pool's integer handles, driven a batch of handles at a time."""

  def __init__(self):
    self.envs: dict[int, AtariEnv | CatchEnv] = {}

  def add(self, handles: list[int], kwargs: list[dict]) -> list[tuple[int, list[int]]]:
    """Creates `make_env(**kw)` (`AtariEnv(**kw)` for an Atari game) for each handle (not
    reset); returns (num_actions, action_set)."""
    made: dict[int, AtariEnv | CatchEnv] = {}
    try:  # all or nothing
      for handle, kw in zip(handles, kwargs):
        if handle in self.envs or handle in made:
          raise ValueError(f"env handle {handle} already exists")
        # Looked up at call time: everything that builds an env goes through the one factory.
        made[handle] = games.make_env(**kw)
    except BaseException:
      for env in made.values():
        env.close()
      raise
    self.envs.update(made)
    return [(env.num_actions, env.action_set) for env in made.values()]

  def reset(self, handles: list[int], seeds: list[int | None]) -> np.ndarray:
    """`env.reset(seed)` of each handle; returns their first frames, uint8 [n, 84, 84]."""
    return np.stack([self.envs[h].reset(seed=s) for h, s in zip(handles, seeds)])

  def step(self, handles: list[int], actions: list[int]):
    """`env.step(action)` of each handle: (frames uint8 [n, 84, 84], rewards float64 [n],
    terminals bool [n], infos)."""
    results = [self.envs[h].step(a) for h, a in zip(handles, actions)]
    return (
        np.stack([r[0] for r in results]),
        np.array([r[1] for r in results], np.float64),
        np.array([r[2] for r in results], np.bool_),
        [r[3] for r in results],
    )

  def get_state(self, handles: list[int]) -> list[dict]:
    return [self.envs[h].get_state() for h in handles]

  def set_state(self, handles: list[int], states: list[dict]) -> np.ndarray:
    """Restores each env's state; returns their stacks, uint8 [n, 4, 84, 84]."""
    for h, s in zip(handles, states):
      self.envs[h].set_state(s)
    return np.stack([self.envs[h].stack for h in handles])

  def stacks(self, handles: list[int]) -> np.ndarray:
    return np.stack([self.envs[h].stack for h in handles])

  def remove(self, handles: list[int]) -> None:
    for h in handles:
      self.envs.pop(h).close()

  def close(self) -> None:
    self.remove(list(self.envs))


def _portable(error: Exception) -> Exception | None:
  """`error` if it survives pickling both ways (the trainer re-raises it as itself), else None
  (the trainer raises EnvWorkerError with the traceback)."""
  try:
    pickle.loads(pickle.dumps(error))
  except Exception:  # pylint: disable=broad-except
    return None
  return error


def serve(read_fd: int, write_fd: int) -> None:
  """A worker process's loop: (command, args) in, ("ok", result) or ("error", (exception or None,
  traceback)) out,
  until "exit" or until the pool's end of the pipe closes (the trainer died: exit quietly)."""
  from multiprocessing.connection import Connection

  # The worker stops on "exit" or when the trainer's end of the pipe closes, never on a signal
  # sent to the whole process group (Ctrl-C, a cluster's SIGTERM): the trainer catches those,
  # and its checkpoint needs the envs' states.
  for name in ("SIGINT", "SIGTERM", "SIGHUP"):
    signal.signal(getattr(signal, name), signal.SIG_IGN)
  inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
  host = EnvHost()
  try:
    while True:
      try:
        command, args = inbox.recv()
      except (EOFError, OSError):
        break
      if command == "exit":
        break
      try:
        reply = ("ok", getattr(host, command)(*args))
      except Exception as e:  # pylint: disable=broad-except
        reply = ("error", (_portable(e), traceback.format_exc()))
      try:
        outbox.send(reply)  # pickled before anything is written: a failure here sends nothing
      except (BrokenPipeError, OSError):
        break
      except Exception:  # pylint: disable=broad-except - a reply that does not pickle
        trace = reply[1][1] if reply[0] == "error" else ""
        outbox.send(("error", (None, trace + traceback.format_exc())))
  finally:
    host.close()
    sys.stdout.flush()
