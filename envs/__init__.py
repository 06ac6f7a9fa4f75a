"""Atari 100k environments: game tables and HNS, the training env, frame stacking, evaluation.

- :mod:`envs.games`: the 26 games, name lookup, reference scores, human-normalised score.
- :mod:`envs.atari`: :class:`AtariEnv` (the Atari 100k protocol, single 84x84 frames,
  learner terminals, exact get_state/set_state) and :func:`clip_reward`.
- :mod:`envs.frame_stack`: :class:`FrameStacker` (zero-padded 4-frame stacks).
- :mod:`envs.pool`: :class:`EnvPool` (many envs stepped together by worker processes, results
  identical to the envs in this process).
- :mod:`envs.evaluation`: :func:`evaluate` (full games, epsilon-greedy, batched acting).
- :mod:`envs.catch`: :class:`CatchEnv` (bsuite's Catch as 84x84 frames with ``AtariEnv``'s
  interface: a pixel sanity task, not an Atari game).
- :func:`make_env` (from :mod:`envs.games`): the env of any game, Atari or Catch; every env the
  trainers and the evaluation play is built by it.
"""

from envs.atari import (
    FRAME_SHAPE,
    FRAME_SKIP,
    MAX_FRAMES_PER_EPISODE,
    NOOP_MAX,
    STACK_SIZE,
    AtariEnv,
    clip_reward,
    make_preprocessed_env,
)
from envs.evaluation import episode_seed, evaluate
from envs.frame_stack import FrameStacker
from envs.pool import EnvPool, EnvWorkerError
from envs.games import (
    GAMES,
    NON_ATARI_GAMES,
    Game,
    canonical_name,
    get_game,
    human_normalized_score,
    human_score,
    is_atari,
    make_env,
    published_score,
    random_score,
)
from envs.catch import CatchEnv

__all__ = [
    "AtariEnv",
    "EnvPool",
    "EnvWorkerError",
    "FrameStacker",
    "clip_reward",
    "make_preprocessed_env",
    "evaluate",
    "episode_seed",
    "GAMES",
    "Game",
    "get_game",
    "canonical_name",
    "human_normalized_score",
    "human_score",
    "random_score",
    "published_score",
    "CatchEnv",
    "NON_ATARI_GAMES",
    "is_atari",
    "make_env",
    "FRAME_SHAPE",
    "FRAME_SKIP",
    "MAX_FRAMES_PER_EPISODE",
    "NOOP_MAX",
    "STACK_SIZE",
]
