"""Atari 100k evaluation: full games, epsilon-greedy, many episodes in parallel, batched acting.

``evaluate(act_fn, game, num_episodes=100, seed=0, epsilon=0.001)`` plays ``num_episodes``
full games (no life-loss terminals; game over or the 108k-frame cap end an episode) with the
same preprocessing as training (:class:`envs.atari.AtariEnv` with ``training=False``). Each
episode has its own env, seeded from ``(seed, episode index)``, and its own epsilon RNG, so the
scores do not depend on ``max_parallel`` or on the order in which episodes finish, and every
started episode is played to its end (short episodes are not over-represented).

Acting is batched: ``act_fn(stacks)`` gets uint8 ``[B, 4, 84, 84]`` stacks (zero-padded at the
start of each game, docs/CONTRACTS.md) and returns the greedy actions ``[B]``. ``B`` takes few
distinct values (``max_parallel`` and powers of two below it; unused rows are zeros and their
actions are ignored) so that a jitted ``act_fn`` compiles only a handful of times.

Backend: a Python loop over ``AtariEnv`` objects. ale-py's C++ vector env
(``ale_py.vector_env.AtariVectorEnv``) gives the same frames for the same emulator and actions
(max-pool, grayscale, INTER_AREA resize, raw rewards with ``reward_clipping=False``,
``use_fire_reset=False``) but cannot reproduce the protocol exactly in ale-py 0.12.1: it draws
0..noop_max-1 no-ops (gymnasium's AtariPreprocessing, which training uses, draws 1..noop_max),
and its episode cap counts only frames after the no-ops (the ALE cap used in training counts
them too). See ``envs/benchmark.py`` for the check and the speed comparison.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from envs.atari import MAX_FRAMES_PER_EPISODE, AtariEnv

ActFn = Callable[[np.ndarray], np.ndarray]


def episode_seed(seed: int, episode: int) -> int:
    """The env seed of evaluation episode ``episode`` of an evaluation seeded with ``seed``."""
    return int(np.random.SeedSequence([int(seed), int(episode)]).generate_state(1)[0])


def _batch_size(num_active: int, max_parallel: int) -> int:
    """Padded batch size: max_parallel, or the smallest power of two >= num_active below it."""
    size = 1
    while size < num_active:
        size *= 2
    return min(size, max_parallel)


def evaluate(act_fn: ActFn, game: str, num_episodes: int = 100, seed: int = 0,
             epsilon: float = 0.001, max_parallel: int | None = None, sticky: float = 0.0,
             max_frames_per_episode: int = MAX_FRAMES_PER_EPISODE) -> list[tuple[float, int]]:
    """Plays ``num_episodes`` full games; returns ``[(raw score, length in agent steps)]``.

    Args:
      act_fn: greedy policy on a batch, uint8 [B, 4, 84, 84] -> int [B].
      game: any accepted game name.
      num_episodes: number of episodes (all of them are played to the end).
      seed: seeds the episodes' envs and epsilon RNGs.
      epsilon: probability of a uniformly random action at each step.
      max_parallel: episodes played at once (default: all of them).
      sticky: repeat_action_probability (0 for the Atari 100k protocol).
      max_frames_per_episode: the episode cap in emulator frames (108k).

    Returns:
      One ``(score, length)`` per episode, in episode order.
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    max_parallel = num_episodes if max_parallel is None else min(int(max_parallel), num_episodes)
    if max_parallel < 1:
        raise ValueError(f"max_parallel must be >= 1, got {max_parallel}")

    results: list[tuple[float, int] | None] = [None] * num_episodes
    # Active episodes: index -> (env, epsilon rng).
    active: dict[int, tuple[AtariEnv, np.random.Generator]] = {}
    next_episode = 0

    def start(episode: int, env: AtariEnv | None) -> None:
        if env is None:
            env = AtariEnv(game, episode_seed(seed, episode), training=False, sticky=sticky,
                           max_frames_per_episode=max_frames_per_episode)
            env.reset()
        else:  # reuse a finished episode's env: re-seeding makes it as good as a new one
            env.reset(seed=episode_seed(seed, episode))
        rng = np.random.default_rng([int(seed), episode, 1])  # epsilon draws of this episode
        active[episode] = (env, rng)

    while next_episode < max_parallel:
        start(next_episode, None)
        next_episode += 1

    num_actions = next(iter(active.values()))[0].num_actions
    while active:
        episodes = list(active)
        batch = np.zeros((_batch_size(len(episodes), max_parallel), 4, 84, 84), np.uint8)
        for row, episode in enumerate(episodes):
            batch[row] = active[episode][0].stack
        greedy = np.asarray(act_fn(batch)).reshape(-1)
        if greedy.shape[0] != batch.shape[0]:
            raise ValueError(f"act_fn returned {greedy.shape[0]} actions for a batch of "
                             f"{batch.shape[0]} stacks")
        for row, episode in enumerate(episodes):
            env, rng = active[episode]
            # Both draws every step, so the RNG stream does not depend on the greedy actions.
            explore = rng.random() < epsilon
            random_action = rng.integers(num_actions)
            action = int(random_action) if explore else int(greedy[row])
            _, _, terminal, info = env.step(action)
            if terminal:  # evaluation env: terminal only at game over or the cap
                results[episode] = (float(info["episode_return"]), int(info["episode_length"]))
                del active[episode]
                if next_episode < num_episodes:
                    start(next_episode, env)
                    next_episode += 1
                else:
                    env.close()
    return results  # type: ignore[return-value]
