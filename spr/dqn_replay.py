"""The DQN Replay Dataset layout (Agarwal et al. 2020): writer, checked reader, sequence sampler.

Layout (as dopamine's `OutOfGraphReplayBuffer.save` writes it, and as SGI reads it)::

    <root>/<Game>/<run>/replay_logs/$store$_observation_ckpt.<i>.gz   uint8   [N, 84, 84]
                                    $store$_action_ckpt.<i>.gz        int32   [N]
                                    $store$_reward_ckpt.<i>.gz        float32 [N] (clipped)
                                    $store$_terminal_ckpt.<i>.gz      uint8   [N]
                                    add_count_ckpt.<i>.gz             int64   []  (adds so far)
                                    invalid_range_ckpt.<i>.gz         int64   [stack + horizon]

Each file is a gzip'd `np.save` array (`allow_pickle=False`). Index t holds the frame o_t observed
before action a_t, the (clipped) reward r_t of that transition and `terminal[t]`, whether the
transition o_t -> o_{t+1} ended the episode (dopamine stores `terminal=True` only in
`end_episode`). Terminal semantics of the real data: dopamine's DQN ran with
`AtariPreprocessing.terminal_on_life_loss=False`, so a terminal is a GAME OVER (or the episode cap,
which old dopamine's `end_episode` also stored as terminal); a lost life is not marked. Our
collector (launch.collect) writes the same: `AtariEnv(training=False)`, terminal = game over or cap.

A checkpoint is the state of a circular buffer: with `add_count >= N` the chronological order
starts at `cursor = add_count % N` and the data is discontinuous there; dopamine's
`invalid_range` lists the indices around the cursor whose stacks/transitions are garbage. The
reader treats the cursor (and both array ends) as segment boundaries: no stack, sequence or goal
crosses one (the N-1 -> 0 wrap of a full buffer is continuous in the real data; treating it as a
boundary loses a handful of samples, never gives a wrong one), and no sampled start lies in
`invalid_range`. When `add_count < N` only the first `add_count` entries are valid. Our writer
writes each checkpoint as a fresh, never-wrapped buffer: `add_count = N`, cursor 0.

Memory: gzip cannot be memory-mapped, so each observation file is decompressed ONCE into an
uncompressed `.npy` (`<cache_dir>/<Game>/<run>/observation_ckpt.<i>.npy`, default cache_dir: a
`npy_cache` folder beside `replay_logs`), written atomically and checked (shape, dtype, length)
whenever it is opened, then opened with `np.load(mmap_mode='r')`: millions of frames cost disk, not
RAM. Actions, rewards and terminals (small) are loaded into memory.

Sampling (`SequenceSampler`): a start t is valid when its stack o_{t-3..t} is known (frames before
the episode start within the same segment are zeros, the project's stack rule; a stack that would
need frames before a segment start is excluded), and s_t..s_{t+K} lie in one segment with no
terminal among the transitions t..t+K-1. Starts are drawn uniformly over all valid starts of all
games and checkpoints. A hindsight goal is a state s_{t+j} of the same episode and segment with
j uniform in [min(2, n), min(W-1, n)], n = the number of states after t left in the episode
(SGI's `sample_goals` draws j in 2..W-1 from the W-step sequence it samples).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

STORE = ("observation", "action", "reward", "terminal")
DTYPES = {"observation": np.uint8, "action": np.int32, "reward": np.float32, "terminal": np.uint8}
FRAME_SHAPE = (84, 84)
STACK = 4
DEFAULT_CHECKPOINT_SIZE = 1_000_000
# Any file of a checkpoint names its suffix; a suffix with a missing file is then an error naming it.
_CKPT = re.compile(
    r"^(?:\$store\$_(?:observation|action|reward|terminal)|add_count|invalid_range)"
    r"_ckpt\.(\d+)\.gz$"
)


class DataError(ValueError):
  """A missing, truncated, corrupt or mismatched dataset file (the message names it)."""


def store_path(run_dir: str | os.PathLike, name: str, index: int) -> Path:
  prefix = "$store$_" if name in STORE else ""
  return Path(run_dir) / "replay_logs" / f"{prefix}{name}_ckpt.{int(index)}.gz"


def invalid_range(
    cursor: int, capacity: int, stack_size: int = STACK, update_horizon: int = 1
) -> np.ndarray:
  """dopamine's `invalid_range`: indices [cursor - horizon, cursor + stack - 1] mod capacity."""
  return np.array(
      [(cursor - update_horizon + i) % capacity for i in range(stack_size + update_horizon)],
      dtype=np.int64,
  )


# ------------------------------------------------------------------------------------- writer
def _save_gz(path: Path, array: np.ndarray) -> None:
  tmp = path.with_name("." + path.name + ".tmp")
  with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as f:
    np.save(f, array, allow_pickle=False)
  os.replace(tmp, path)


def write_checkpoint(
    run_dir: str | os.PathLike,
    index: int,
    observation: np.ndarray,
    action: np.ndarray,
    reward: np.ndarray,
    terminal: np.ndarray,
) -> None:
  """Writes one checkpoint `index` of a run in the DQN Replay layout (a fresh, unwrapped buffer).

  Args:
    run_dir: `<root>/<Game>/<run>`; `replay_logs/` is created inside.
    observation: uint8 [N, 84, 84] single frames; action int [N]; reward [N] (clipped by the
      caller); terminal bool/int [N] (game over).
  """
  n = len(observation)
  observation = np.asarray(observation)
  if observation.dtype != np.uint8 or observation.shape[1:] != FRAME_SHAPE:
    raise ValueError(
        f"observation must be uint8 [N, 84, 84], got {observation.dtype}"
        f"{list(observation.shape)}"
    )
  arrays = dict(
      observation=observation,
      action=np.asarray(action, np.int32),
      reward=np.asarray(reward, np.float32),
      terminal=np.asarray(terminal, np.uint8),
  )
  for name, a in arrays.items():
    if a.shape[:1] != (n,):
      raise ValueError(f"{name} has length {a.shape[:1]}, observation has {n}")
  (Path(run_dir) / "replay_logs").mkdir(parents=True, exist_ok=True)
  for name, a in arrays.items():
    _save_gz(store_path(run_dir, name, index), a)
  _save_gz(store_path(run_dir, "invalid_range", index), invalid_range(0, max(n, 1)))
  # Written last: a checkpoint is complete when its add_count exists.
  _save_gz(store_path(run_dir, "add_count", index), np.array(n, dtype=np.int64))


class CheckpointWriter:
  """Accumulates transitions and writes a checkpoint every `size` of them."""

  def __init__(
      self, run_dir: str | os.PathLike, size: int = DEFAULT_CHECKPOINT_SIZE, first_index: int = 0
  ):
    self.run_dir, self.size, self.index = Path(run_dir), int(size), int(first_index)
    self._obs = np.zeros((self.size,) + FRAME_SHAPE, np.uint8)
    self._act = np.zeros(self.size, np.int32)
    self._rew = np.zeros(self.size, np.float32)
    self._term = np.zeros(self.size, np.uint8)
    self._n = 0
    self.written: list[int] = []

  def add(self, frame, action, reward, terminal) -> None:
    i = self._n
    self._obs[i], self._act[i], self._rew[i], self._term[i] = frame, action, reward, terminal
    self._n += 1
    if self._n == self.size:
      self.flush()

  def flush(self) -> None:
    if self._n:
      n = self._n
      write_checkpoint(
          self.run_dir, self.index, self._obs[:n], self._act[:n], self._rew[:n], self._term[:n]
      )
      self.written.append(self.index)
      self.index += 1
      self._n = 0


# ------------------------------------------------------------------------------------- reader
def _load_gz(path: Path) -> np.ndarray:
  if not path.exists():
    raise DataError(f"{path}: missing")
  try:
    with gzip.open(path, "rb") as f:
      return np.load(io.BytesIO(f.read()), allow_pickle=False)
  except (OSError, EOFError, ValueError, zlib.error) as e:
    raise DataError(f"{path}: unreadable, truncated or corrupt ({type(e).__name__}: {e})") from None


def _check(path: Path, array: np.ndarray, name: str, length: int | None) -> None:
  want = DTYPES[name]
  shape_ok = array.shape[1:] == (FRAME_SHAPE if name == "observation" else ())
  if array.dtype != want or not shape_ok or array.ndim == 0:
    tail = "[N, 84, 84]" if name == "observation" else "[N]"
    raise DataError(
        f"{path}: {name} is {array.dtype}{list(array.shape)}, expected "
        f"{np.dtype(want).name}{tail}"
    )
  if length is not None and array.shape[0] != length:
    raise DataError(f"{path}: {name} has {array.shape[0]} entries, the observations have {length}")


def _cached_observations(gz: Path, cache: Path) -> np.ndarray:
  """Decompresses `gz` once into the `.npy` file `cache` and memory-maps it (checked)."""
  if cache.exists() and gz.exists() and cache.stat().st_mtime < gz.stat().st_mtime:
    cache.unlink()  # the dataset file was replaced after the cache was built: rebuild
  if not cache.exists():
    if not gz.exists():
      raise DataError(f"{gz}: missing")
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name("." + cache.name + f".{os.getpid()}.tmp")
    try:
      with gzip.open(gz, "rb") as src:
        version = np.lib.format.read_magic(src)
        if version == (1, 0):
          shape, fortran, dtype = np.lib.format.read_array_header_1_0(src)
        elif version == (2, 0):
          shape, fortran, dtype = np.lib.format.read_array_header_2_0(src)
        else:
          raise DataError(f"{gz}: unsupported .npy format version {version}")
        if dtype != np.uint8 or tuple(shape[1:]) != FRAME_SHAPE or fortran:
          raise DataError(f"{gz}: observation is {dtype}{list(shape)}, expected uint8[N, 84, 84]")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=tuple(shape))
        flat = out.reshape(-1)
        chunk, done, total = 1 << 24, 0, flat.size
        while done < total:
          data = src.read(min(chunk, total - done))
          if not data:
            raise DataError(f"{gz}: truncated ({done} of {total} observation bytes)")
          flat[done : done + len(data)] = np.frombuffer(data, np.uint8)
          done += len(data)
        out.flush()
        del out, flat
      os.replace(tmp, cache)
    except (OSError, EOFError, ValueError, zlib.error) as e:
      if isinstance(e, DataError):
        raise
      raise DataError(f"{gz}: unreadable, truncated or corrupt ({type(e).__name__}: {e})") from None
    finally:
      if tmp.exists():
        tmp.unlink()
  try:
    return np.load(cache, mmap_mode="r")
  except (OSError, ValueError) as e:
    raise DataError(f"{cache}: unreadable observation cache ({e}); delete it to rebuild") from None


@dataclass
class Checkpoint:
  """One checkpoint of one run: memory-mapped frames plus in-memory transition arrays."""

  game: str
  run: str
  index: int
  observation: np.ndarray  # memmap uint8 [N, 84, 84]
  action: np.ndarray
  reward: np.ndarray
  terminal: np.ndarray
  add_count: int
  invalid: np.ndarray

  def __len__(self) -> int:
    return len(self.action)

  def segments(self) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges of chronologically consecutive, valid entries."""
    n = len(self)
    if self.add_count < n:
      return [(0, self.add_count)] if self.add_count > 0 else []
    cursor = self.add_count % n
    return [(0, n)] if cursor == 0 else [(0, cursor), (cursor, n)]


def load_checkpoint(
    run_dir: str | os.PathLike,
    index: int,
    game: str = "",
    cache_dir: str | os.PathLike | None = None,
) -> Checkpoint:
  """Opens checkpoint `index` of `run_dir`, checking every file; raises DataError naming a bad one."""
  run_dir = Path(run_dir)
  gz = store_path(run_dir, "observation", index)
  if cache_dir is None:
    cache = run_dir / "npy_cache" / f"observation_ckpt.{index}.npy"
  else:
    cache = Path(cache_dir) / run_dir.parent.name / run_dir.name / f"observation_ckpt.{index}.npy"
  arrays = {}
  for name in ("action", "reward", "terminal"):
    path = store_path(run_dir, name, index)
    arrays[name] = _load_gz(path)
    _check(path, arrays[name], name, None)
  n = len(arrays["action"])
  for name in ("reward", "terminal"):
    _check(store_path(run_dir, name, index), arrays[name], name, n)
  if not gz.exists():  # even with a cache: the dataset itself must be complete
    raise DataError(f"{gz}: missing")
  obs = _cached_observations(gz, cache)
  if obs.dtype != np.uint8 or obs.shape[1:] != FRAME_SHAPE:
    raise DataError(f"{cache}: observation cache is {obs.dtype}{list(obs.shape)}; delete it")
  if obs.shape[0] != n:
    raise DataError(
        f"{gz}: observation has {obs.shape[0]} entries, "
        f"{store_path(run_dir, 'action', index).name} has {n}"
    )
  path = store_path(run_dir, "add_count", index)
  add_count = _load_gz(path)
  if add_count.shape != () or not np.issubdtype(add_count.dtype, np.integer) or add_count < 0:
    raise DataError(
        f"{path}: add_count must be a non-negative integer scalar, got "
        f"{add_count.dtype}{list(add_count.shape)}"
    )
  path = store_path(run_dir, "invalid_range", index)
  invalid = _load_gz(path)
  if (
      invalid.ndim != 1
      or not np.issubdtype(invalid.dtype, np.integer)
      or (invalid.size and (invalid.min() < 0 or invalid.max() >= max(n, 1)))
  ):
    raise DataError(
        f"{path}: invalid_range must be integer indices in [0, {n}), got "
        f"{invalid.dtype}{list(invalid.shape)}"
    )
  return Checkpoint(
      game=game,
      run=run_dir.name,
      index=int(index),
      observation=obs,
      action=arrays["action"],
      reward=arrays["reward"],
      terminal=arrays["terminal"],
      add_count=int(add_count),
      invalid=invalid,
  )


def list_checkpoints(run_dir: str | os.PathLike) -> list[int]:
  logs = Path(run_dir) / "replay_logs"
  if not logs.is_dir():
    return []
  return sorted({int(m.group(1)) for m in map(_CKPT.match, os.listdir(logs)) if m})


def discover(
    data_dir: str | os.PathLike,
    games: list[str],
    runs: list[str] | None = None,
    checkpoints: list[int] | None = None,
) -> list[tuple[str, Path, int]]:
  """(game, run_dir, index) of the requested checkpoints; every requested one must exist."""
  found = []
  for game in games:
    game_dir = Path(data_dir) / game
    if not game_dir.is_dir():
      raise DataError(f"{game_dir}: missing (no data for game {game})")
    run_names = runs or sorted(p.name for p in game_dir.iterdir() if (p / "replay_logs").is_dir())
    if not run_names:
      raise DataError(f"{game_dir}: no <run>/replay_logs folder")
    for run in run_names:
      run_dir = game_dir / run
      have = list_checkpoints(run_dir)
      want = checkpoints if checkpoints else have
      if not want:
        raise DataError(f"{run_dir / 'replay_logs'}: no checkpoint file (*_ckpt.<i>.gz)")
      for i in want:
        if i not in have:
          raise DataError(f"{store_path(run_dir, 'observation', i)}: missing")
        found.append((game, run_dir, int(i)))
  return found


# ------------------------------------------------------------------------------------ sampler
def episode_index(terminal: np.ndarray, start: int, end: int):
  """For a segment [start, end): `since[t]` = steps since the episode start (known=False for the
  episode that began before the segment), `to_end[t]` = states of the same episode after t."""
  term = terminal[start:end].astype(bool)
  n = end - start
  pos = np.arange(n)
  # First index of each episode: 0 and every index after a terminal.
  is_first = np.zeros(n, bool)
  is_first[0] = True
  is_first[1:] = term[:-1]
  first = np.maximum.accumulate(np.where(is_first, pos, 0))
  since = pos - first
  known = first > 0  # the segment's first episode may have begun before it
  # Last index of each episode: every terminal index and n - 1.
  is_last = term.copy()
  is_last[-1] = True
  last = np.minimum.accumulate(np.where(is_last, pos, n)[::-1])[::-1]
  to_end = last - pos
  return since, known, to_end


class SequenceSampler:
  """Uniform sampler of (K+1)-step sequences with stacked frames and hindsight goals.

  `sample(rng, batch)` returns numpy arrays (host side; the learner builds the stacks on the
  device so that only single uint8 frames are copied):
    frames:      uint8 [B, K+4, 84, 84]  o_{t-3} .. o_{t+K}, zeros before the episode start;
                 the stack of s_{t+k} is frames[:, k:k+4].
    actions:     int32 [B, K]            a_t .. a_{t+K-1}
    rewards:     float32 [B, K]
    terminals:   uint8 [B, K]            all 0 by construction (no terminal inside a sequence)
    goal_frames: uint8 [B, 4, 84, 84]    the stack of the goal state s_{t+j}
    goal_offset: int32 [B]               j
    game:        int32 [B]               index into `games`
  """

  def __init__(
      self,
      checkpoints: list[Checkpoint],
      spr_steps: int,
      goal_window: int = 50,
      games: list[str] | None = None,
  ):
    if spr_steps < 1:
      raise ValueError("spr_steps must be >= 1")
    self.checkpoints = checkpoints
    self.k = int(spr_steps)
    self.goal_window = int(goal_window)
    self.games = games or sorted({c.game for c in checkpoints})
    self._starts, self._since, self._known, self._to_end = [], [], [], []
    for c in checkpoints:
      n = len(c)
      since = np.zeros(n, np.int32)
      known = np.zeros(n, bool)
      to_end = np.full(n, -1, np.int32)
      valid = np.zeros(n, bool)
      for s, e in c.segments():
        si, kn, te = episode_index(c.terminal, s, e)
        since[s:e], known[s:e], to_end[s:e] = si, kn, te
        stack_ok = kn | (si >= STACK - 1)
        valid[s:e] = stack_ok & (te >= self.k)
      valid[c.invalid] = False
      self._starts.append(np.flatnonzero(valid).astype(np.int64))
      self._since.append(since)
      self._known.append(known)
      self._to_end.append(to_end)
    self._counts = np.array([len(s) for s in self._starts], np.int64)
    if self._counts.sum() == 0:
      names = ", ".join(f"{c.game}/{c.run}/ckpt {c.index}" for c in checkpoints)
      raise DataError(f"no sequence of {self.k + 1} states without a terminal in: {names}")
    self._cum = np.cumsum(self._counts)

  @property
  def num_sequences(self) -> int:
    return int(self._counts.sum())

  @property
  def num_transitions(self) -> int:
    return int(sum(len(c) for c in self.checkpoints))

  def _stack_frames(self, c: int, t: np.ndarray, width: int) -> np.ndarray:
    """Frames o_{t-3} .. o_{t+width-4} of checkpoint c, zeroed before each start's episode."""
    ckpt = self.checkpoints[c]
    offsets = np.arange(-(STACK - 1), width - (STACK - 1))
    idx = t[:, None] + offsets[None, :]
    since = self._since[c][t]
    # Frame t+m (m <= 0) belongs to a previous episode iff -m > since[t]; frames of the segment's
    # first episode with unknown start are never needed (excluded at construction).
    zero = (offsets[None, :] < 0) & (-offsets[None, :] > since[:, None])
    flat = np.clip(idx, 0, len(ckpt) - 1).reshape(-1)
    order = np.argsort(flat, kind="stable")
    out = np.empty((flat.size,) + FRAME_SHAPE, np.uint8)
    out[order] = ckpt.observation[flat[order]]  # sorted reads from the memory map
    out = out.reshape(idx.shape + FRAME_SHAPE)
    out[zero] = 0
    return out

  def sample(self, rng: np.random.Generator, batch: int) -> dict[str, np.ndarray]:
    k = self.k
    g = rng.integers(0, self._cum[-1], size=batch)
    which = np.searchsorted(self._cum, g, side="right")
    local = g - np.concatenate([[0], self._cum[:-1]])[which]
    frames = np.empty((batch, k + STACK) + FRAME_SHAPE, np.uint8)
    goal_frames = np.empty((batch, STACK) + FRAME_SHAPE, np.uint8)
    actions = np.empty((batch, k), np.int32)
    rewards = np.empty((batch, k), np.float32)
    terminals = np.empty((batch, k), np.uint8)
    offsets = np.empty(batch, np.int32)
    game = np.empty(batch, np.int32)
    for c in np.unique(which):
      rows = np.flatnonzero(which == c)
      ckpt = self.checkpoints[c]
      t = self._starts[c][local[rows]]
      frames[rows] = self._stack_frames(c, t, k + STACK)
      span = t[:, None] + np.arange(k)[None, :]
      actions[rows], rewards[rows] = ckpt.action[span], ckpt.reward[span]
      terminals[rows] = ckpt.terminal[span]
      n = self._to_end[c][t]
      hi = np.minimum(self.goal_window - 1, n)
      lo = np.minimum(2, hi)
      j = lo + (rng.random(len(rows)) * (hi - lo + 1)).astype(np.int64)
      offsets[rows] = j
      goal_frames[rows] = self._stack_frames(c, t + j, STACK)
      game[rows] = self.games.index(ckpt.game)
    return dict(
        frames=frames,
        actions=actions,
        rewards=rewards,
        terminals=terminals,
        goal_frames=goal_frames,
        goal_offset=offsets,
        game=game,
    )


def open_dataset(
    data_dir: str | os.PathLike,
    games: list[str],
    runs: list[str] | None = None,
    checkpoints: list[int] | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> list[Checkpoint]:
  """Opens (and checks) every requested checkpoint of every game."""
  return [
      load_checkpoint(run_dir, i, game=game, cache_dir=cache_dir)
      for game, run_dir, i in discover(data_dir, games, runs, checkpoints)
  ]


__all__ = [
    "DataError",
    "Checkpoint",
    "CheckpointWriter",
    "SequenceSampler",
    "write_checkpoint",
    "load_checkpoint",
    "open_dataset",
    "discover",
    "invalid_range",
    "episode_index",
    "store_path",
]
