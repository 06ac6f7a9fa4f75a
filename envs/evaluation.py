"""Atari 100k evaluation: full games, epsilon-greedy, many episodes in parallel, batched acting.

``evaluate(act_fn, game, num_episodes=100, seed=0, epsilon=0.001, protocol=...)`` plays
``num_episodes`` full games (no life-loss terminals; game over or the episode cap end an
episode) with the same env protocol and preprocessing as training (:class:`envs.atari.AtariEnv`
with ``training=False`` and the run's ``protocol``: "dopamine", the default, or "spr"). Each
episode has its own env, seeded from ``(seed, episode index)``, and its own epsilon RNG, so the
scores do not depend on ``max_parallel`` or on the order in which episodes finish, and every
started episode is played to its end (short episodes are not over-represented).

Acting is batched: ``act_fn(stacks)`` gets uint8 ``[B, 4, 84, 84]`` stacks (zero-padded at the
start of each game, docs/CONTRACTS.md) and returns the greedy actions ``[B]``. ``B`` takes few
distinct values (``max_parallel`` and powers of two below it; unused rows are zeros and their
actions are ignored) so that a jitted ``act_fn`` compiles only a handful of times.

Several runs at once: ``evaluate_runs(act_fn, [(game, seed), ...])`` evaluates R policies (the
runs of a multi-run batch, agents/spr/multi_trainer.py) in one loop: ``act_fn`` gets ``[R, B,
4, 84, 84]`` (row r holds run r's active episodes) and returns ``[R, B]``, so one vmapped call
acts for every episode of every run. Each run's episodes are exactly those ``evaluate`` plays
for that run alone (same env seeds, epsilon RNGs, batch rows and widths when the runs have the
same number of active episodes); ``evaluate`` is the one-run case. The envs live in an
``envs.pool.EnvPool`` (``pool``): in this process, or in worker processes that step them in
parallel; each env and epsilon RNG belongs to one episode, so the scores do not depend on that.

Backend: ``AtariEnv`` objects (through the pool). ale-py's C++ vector env
(``ale_py.vector_env.AtariVectorEnv``) gives the same frames as the "dopamine" protocol for the
same emulator and actions (max-pool, grayscale, INTER_AREA resize, raw rewards with
``reward_clipping=False``, ``use_fire_reset=False``) but cannot reproduce it exactly in ale-py
0.12.1: it draws 0..noop_max-1 no-ops (gymnasium's AtariPreprocessing, which training uses, draws
1..noop_max), and its episode cap counts only frames after the no-ops (the ALE cap used in
training counts them too); nor the "spr" protocol (bilinear resize, the extra NOOP frame after
a life loss). See ``envs/benchmark.py`` for the check and the speed comparison.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from envs.atari import MAX_FRAMES_PER_EPISODE, SPR_HORIZON
from envs.pool import EnvPool

ActFn = Callable[[np.ndarray], np.ndarray]
Episode = tuple[float, int]  # (raw score, length in agent steps)


def episode_seed(seed: int, episode: int) -> int:
  """The env seed of evaluation episode ``episode`` of an evaluation seeded with ``seed``."""
  return int(np.random.SeedSequence([int(seed), int(episode)]).generate_state(1)[0])


def _batch_size(num_active: int, max_parallel: int) -> int:
  """Padded batch size: max_parallel, or the smallest power of two >= num_active below it."""
  size = 1
  while size < num_active:
    size *= 2
  return min(size, max_parallel)


def evaluate(
    act_fn: ActFn,
    game: str,
    num_episodes: int = 100,
    seed: int = 0,
    epsilon: float = 0.001,
    max_parallel: int | None = None,
    sticky: float = 0.0,
    max_frames_per_episode: int = MAX_FRAMES_PER_EPISODE,
    pool: EnvPool | None = None,
    protocol: str = "dopamine",
    horizon: int = SPR_HORIZON,
) -> list[Episode]:
  """Plays ``num_episodes`` full games; returns ``[(raw score, length in agent steps)]``.

  Args:
    act_fn: greedy policy on a batch, uint8 [B, 4, 84, 84] -> int [B].
    game: any accepted game name.
    num_episodes: number of episodes (all of them are played to the end).
    seed: seeds the episodes' envs and epsilon RNGs.
    epsilon: probability of a uniformly random action at each step.
    max_parallel: episodes played at once (default: all of them).
    sticky: repeat_action_probability (0 for the Atari 100k protocol).
    max_frames_per_episode: the "dopamine" episode cap in emulator frames (108k).
    pool: an ``envs.pool.EnvPool`` to play in (worker processes step the episodes in
      parallel; the scores are the same); None: the envs live in this process.
    protocol: the env protocol, the run's (``SPRConfig.env_protocol``): "dopamine" or "spr".
    horizon: the "spr" episode cap in agent steps (27k; the game ends on step horizon + 1).

  Returns:
    One ``(score, length)`` per episode, in episode order.
  """

  def one_run(stacks: np.ndarray) -> np.ndarray:
    return np.asarray(act_fn(stacks[0])).reshape(1, -1)

  return evaluate_runs(
      one_run,
      [(game, seed)],
      num_episodes,
      epsilon,
      max_parallel,
      sticky,
      max_frames_per_episode,
      pool,
      protocol=protocol,
      horizon=horizon,
  )[0]


class _RunEpisodes:
  """The episodes of one evaluated run: which are being played (env handle + epsilon RNG
  each), the next one to start, and the results so far."""

  def __init__(
      self,
      game: str,
      seed: int,
      num_episodes: int,
      sticky: float,
      max_frames_per_episode: int,
      protocol: str,
      horizon: int,
  ):
    self.game, self.seed, self.num_episodes = game, int(seed), num_episodes
    self.sticky, self.max_frames = sticky, max_frames_per_episode
    self.protocol, self.horizon = protocol, horizon
    self.results: list[Episode | None] = [None] * num_episodes
    self.active: dict[int, tuple[int, np.random.Generator]] = {}
    self.next_episode = 0
    self.num_actions = 0

  def env_kwargs(self, episode: int) -> dict:
    """The ``AtariEnv`` of a new episode (its seed makes it that episode's env)."""
    return dict(
        game=self.game,
        seed=episode_seed(self.seed, episode),
        training=False,
        sticky=self.sticky,
        max_frames_per_episode=self.max_frames,
        protocol=self.protocol,
        horizon=self.horizon,
    )

  def start(self, handle: int) -> int:
    """Makes ``handle``'s env play the next episode (the caller resets it); its index."""
    episode = self.next_episode
    self.next_episode += 1
    rng = np.random.default_rng([self.seed, episode, 1])  # epsilon draws of this episode
    self.active[episode] = (handle, rng)
    return episode

  def finish(self, episode: int, info: dict) -> int | None:
    """Records a finished episode; returns the index of the next episode its env plays
    (the caller re-seeds the env with that episode's seed), or None if none is left."""
    handle, _ = self.active.pop(episode)
    self.results[episode] = (float(info["episode_return"]), int(info["episode_length"]))
    if self.next_episode < self.num_episodes:
      return self.start(handle)
    return None


def evaluate_runs(
    act_fn: ActFn,
    runs: Sequence[tuple[str, int]],
    num_episodes: int = 100,
    epsilon: float = 0.001,
    max_parallel: int | None = None,
    sticky: float = 0.0,
    max_frames_per_episode: int = MAX_FRAMES_PER_EPISODE,
    pool: EnvPool | None = None,
    protocol: str = "dopamine",
    horizon: int = SPR_HORIZON,
) -> list[list[Episode]]:
  """``evaluate`` for R runs at once; returns one episode list per run, in ``runs`` order.

  Args:
    act_fn: greedy policies of the R runs, uint8 [R, B, 4, 84, 84] -> int [R, B].
    runs: (game, seed) of each run, as ``evaluate`` takes them.
    max_parallel: episodes played at once per run (default: all of them).
    pool: the ``envs.pool.EnvPool`` whose envs play the episodes (worker processes step them
      in parallel); None: an in-process pool for this call. Its envs are removed at the end.
    Others: as ``evaluate``.
  """
  if num_episodes < 1:
    raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
  if not runs:
    return []
  max_parallel = num_episodes if max_parallel is None else min(int(max_parallel), num_episodes)
  if max_parallel < 1:
    raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")
  if pool is None:
    with EnvPool(0) as own_pool:
      return evaluate_runs(
          act_fn,
          runs,
          num_episodes,
          epsilon,
          max_parallel,
          sticky,
          max_frames_per_episode,
          own_pool,
          protocol=protocol,
          horizon=horizon,
      )
  states = [
      _RunEpisodes(game, seed, num_episodes, sticky, max_frames_per_episode, protocol, horizon)
      for game, seed in runs
  ]
  # New envs are seeded by their constructor, then reset (as AtariEnv(game, seed).reset()).
  kwargs = [run.env_kwargs(e) for run in states for e in range(max_parallel)]
  handles = pool.add(kwargs)
  try:
    for r, run in enumerate(states):
      run.num_actions = pool.num_actions(handles[r * max_parallel])
      for handle in handles[r * max_parallel : (r + 1) * max_parallel]:
        run.start(handle)
    pool.reset(handles)
    _play(act_fn, states, epsilon, max_parallel, pool)
  except BaseException:  # interrupted: close the episodes' envs, keep the original error
    leftover = [h for run in states for h, _ in run.active.values()]
    try:
      if leftover:
        pool.remove(leftover)
    except Exception:  # pylint: disable=broad-except - e.g. a pool left unusable
      pass
    raise
  return [run.results for run in states]  # type: ignore[misc]


def _play(
    act_fn: ActFn, states: list[_RunEpisodes], epsilon: float, max_parallel: int, pool: EnvPool
) -> None:
  """Plays every episode of every run to its end (the loop of ``evaluate_runs``)."""
  while any(run.active for run in states):
    playing = [list(run.active) for run in states]  # row order of each run's batch
    # One width for all runs (the widest run's), from the few values `evaluate` uses.
    width = _batch_size(max(len(p) for p in playing), max_parallel)
    batch = np.zeros((len(states), width, 4, 84, 84), np.uint8)
    for r, (run, episodes) in enumerate(zip(states, playing)):
      for row, episode in enumerate(episodes):
        batch[r, row] = pool.stack(run.active[episode][0])
    greedy = np.asarray(act_fn(batch))
    if greedy.shape != batch.shape[:2]:
      raise ValueError(
          f"act_fn returned actions of shape {list(greedy.shape)} for stacks "
          f"of shape {list(batch.shape)}"
      )
    moves = []  # (run, episode, handle, action)
    for r, (run, episodes) in enumerate(zip(states, playing)):
      for row, episode in enumerate(episodes):
        handle, rng = run.active[episode]
        # Both draws every step, so the RNG stream does not depend on the greedy actions.
        explore = rng.random() < epsilon
        random_action = rng.integers(run.num_actions)
        moves.append((run, episode, handle, int(random_action) if explore else int(greedy[r, row])))
    _, _, terminals, infos = pool.step([m[2] for m in moves], [m[3] for m in moves])
    reseed, seeds, done = [], [], []
    for (run, episode, handle, _), terminal, info in zip(moves, terminals, infos):
      if terminal:  # evaluation env: terminal only at game over or the cap
        following = run.finish(episode, info)
        if following is None:
          done.append(handle)
        else:  # re-seeding makes the finished episode's env as good as a new one
          reseed.append(handle)
          seeds.append(episode_seed(run.seed, following))
    if done:
      pool.remove(done)
    if reseed:
      pool.reset(reseed, seeds)
