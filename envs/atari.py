"""The Atari 100k training environment (one game, one emulator, single 84x84 frames).

Protocol (docs/reference atari100k.md section 1): ale-py's ``AtariEnv`` (what
``gym.make("ALE/<Game>-v5")`` builds, without gymnasium's checker wrappers) with
``frameskip=1``, ``repeat_action_probability=sticky`` (0 for Atari 100k; 0.25 for data
collection), the minimal action set and ``max_num_frames_per_episode=108_000`` (the 27k-step
cap counted in emulator frames, no-op frames included); then gymnasium's
``AtariPreprocessing(noop_max=30, frame_skip=4, screen_size=84, terminal_on_life_loss=False)``:
1..30 random no-ops at each game reset, action repeat 4, max-pool of the last two frames,
grayscale, cv2 INTER_AREA resize to 84x84. Rewards are the raw game score (clip with
:func:`clip_reward` for learning).

API::

    env = AtariEnv("Pong", seed=0, training=True, sticky=0.0)
    env.num_actions                   # size of the minimal action set
    frame = env.reset()               # starts a new game; (84, 84) uint8
    frame = env.reset(seed=1)         # re-seeds, then as AtariEnv("Pong", seed=1).reset()
    frame, reward, terminal, info = env.step(action)
    env.stack                         # (4, 84, 84) uint8 stack of the current learner episode

Step semantics. ``terminal`` is the LEARNER terminal of the transition just taken: a life lost
(training mode only, game not over), game over, or the episode cap (the cap counts as a
terminal, as in the SPR code's rlpyt env). After a terminal step the env has already moved on:
the returned ``frame`` is the FIRST frame of the next learner episode (after a life loss: the
frame right after the loss, the game continues; after game over / cap: the first frame of a new
game with fresh random no-ops), and ``env.stack`` is already restarted (zeros except that
frame). The caller never calls ``reset()`` again; the frame that ended the episode is not
returned (a terminal transition does not bootstrap). So a training loop is::

    frame = env.reset()
    while ...:
        action = act(env.stack)               # the stack that contains ``frame``
        next_frame, r, terminal, info = env.step(action)
        replay.add(frame, action, clip_reward(r), terminal)  # frame observed before the action
        frame = next_frame

``info`` always has ``lives``, ``life_lost`` (lives decreased on this step, even in evaluation
mode), ``game_over`` (the scored episode ended, by game over or the cap, and a new game was
started) and ``truncated`` (the cap ended it); when ``game_over`` it also has ``episode_return``
(raw score of the whole game) and ``episode_length`` (agent steps of the whole game).

State. :meth:`AtariEnv.get_state` returns a picklable dict of numpy arrays/bytes/ints/floats
(ALE emulator state with its RNG, the no-op RNG, the preprocessing buffers, the stack, the
episode counters); :meth:`AtariEnv.set_state` restores it into any ``AtariEnv`` of the same game
and sticky setting (a fresh object is fine) so that it continues bit-identically.
With sticky actions (sticky > 0) one piece of ALE state has no save/restore API: the last
APPLIED action, which a sticky frame repeats. It is restored as the last action sent; this is
exact unless all four frames of the last step before the save were sticky (probability p**4,
0.4% of saves at p = 0.25) and the next frame is sticky too. With sticky = 0 (Atari 100k) the
restore is exact.
"""
from __future__ import annotations

import copy

import ale_py
import ale_py.env
import numpy as np
from gymnasium.wrappers import AtariPreprocessing

from envs.frame_stack import FrameStacker
from envs.games import get_game

FRAME_SHAPE = (84, 84)
STACK_SIZE = 4
FRAME_SKIP = 4
NOOP_MAX = 30
MAX_FRAMES_PER_EPISODE = 108_000  # 27k agent steps x frame skip 4

_STATE_VERSION = 1


def clip_reward(reward):
    """Reward used for learning: its sign, in {-1, 0, 1} (works on scalars and arrays)."""
    return np.sign(reward).astype(np.float32)


def make_preprocessed_env(game: str, sticky: float = 0.0, noop_max: int = NOOP_MAX,
                          max_frames_per_episode: int = MAX_FRAMES_PER_EPISODE
                          ) -> AtariPreprocessing:
    """ale-py base env + gymnasium AtariPreprocessing with the Atari 100k settings.

    The returned env is unseeded; seed it with ``env.reset(seed=...)``.
    """
    base = ale_py.env.AtariEnv(
        game=get_game(game).rom,
        # Grayscale base observations are cheaper to copy; AtariPreprocessing ignores them and
        # reads the screen from the ALE itself.
        obs_type="grayscale",
        frameskip=1,  # v5 defaults to 4: the frame skip is AtariPreprocessing's
        repeat_action_probability=float(sticky),  # v5 defaults to 0.25
        full_action_space=False,
        max_num_frames_per_episode=int(max_frames_per_episode),
    )
    return AtariPreprocessing(base, noop_max=noop_max, frame_skip=FRAME_SKIP,
                              screen_size=FRAME_SHAPE[0], terminal_on_life_loss=False,
                              grayscale_obs=True, scale_obs=False)


class AtariEnv:
    """One Atari 100k game with learner terminals, auto-reset and exact save/restore.

    Args:
      game: any spelling accepted by :func:`envs.games.get_game` ("MsPacman", "ms_pacman").
      seed: seeds the emulator and the no-op RNG; the same seed and actions give the same frames.
      training: if True a lost life is a learner terminal (the game goes on); if False only game
        over / the cap are terminals (evaluation plays full games).
      sticky: repeat_action_probability of the ALE (0 for Atari 100k, 0.25 for data collection).
      noop_max: maximum number of random no-ops at each game reset (gymnasium draws 1..noop_max).
      max_frames_per_episode: the episode cap in emulator frames (tests shrink it).
    """

    def __init__(self, game: str, seed: int, training: bool = True, sticky: float = 0.0,
                 noop_max: int = NOOP_MAX,
                 max_frames_per_episode: int = MAX_FRAMES_PER_EPISODE):
        self.game = get_game(game).name
        self.seed = int(seed)
        self.training = bool(training)
        self.sticky = float(sticky)
        self.noop_max = int(noop_max)
        self.max_frames_per_episode = int(max_frames_per_episode)
        self._env = make_preprocessed_env(self.game, self.sticky, self.noop_max,
                                          self.max_frames_per_episode)
        # Seeds the ALE and the no-op RNG once (ale-py reloads the ROM when given a seed); every
        # later game reset passes no seed, so the RNGs continue and each game gets new no-ops.
        self._env.reset(seed=self.seed)
        self._stacker = FrameStacker(STACK_SIZE, FRAME_SHAPE)
        self._lives = 0
        self._episode_return = 0.0
        self._episode_length = 0
        self._needs_reset = True
        # Index of the last action sent to the ALE (0 = NOOP after a game reset): the ALE keeps
        # the last APPLIED action outside its cloneable state, sticky actions repeat it.
        self._last_action = 0

    # ----------------------------------------------------------------------------- properties
    @property
    def ale(self) -> ale_py.ALEInterface:
        return self._env.unwrapped.ale

    @property
    def num_actions(self) -> int:
        """Size of the minimal action set."""
        return int(self._env.action_space.n)

    @property
    def action_set(self) -> list[int]:
        """ALE action ids of the minimal action set, in the order of the action indices."""
        return [int(a.value) for a in self._env.unwrapped._action_set]

    @property
    def action_meanings(self) -> list[str]:
        return list(self._env.unwrapped.get_action_meanings())

    @property
    def stack(self) -> np.ndarray:
        """(4, 84, 84) uint8 stack of the current learner episode, oldest frame first (a copy)."""
        return self._stacker.stack

    @property
    def lives(self) -> int:
        return self._lives

    # ------------------------------------------------------------------------------- dynamics
    def reset(self, seed: int | None = None) -> np.ndarray:
        """Starts a new game (random no-ops) and a new learner episode; returns its first frame.

        With ``seed`` the env is first re-seeded (ROM reloaded): ``env.reset(seed=s)`` then
        plays exactly as ``AtariEnv(game, s).reset()`` would (evaluation reuses envs this way).
        """
        if seed is not None:
            self.seed = int(seed)
            self._env.reset(seed=self.seed)
        return self._new_game()

    def step(self, action: int) -> tuple[np.ndarray, float, bool, dict]:
        """Takes ``action`` for 4 frames. See the module docstring for the semantics."""
        if self._needs_reset:
            raise RuntimeError("AtariEnv.step() called before reset()")
        frame, reward, terminated, truncated, _ = self._env.step(int(action))
        self._last_action = int(action)
        reward = float(reward)
        self._episode_return += reward
        self._episode_length += 1

        lives = int(self.ale.lives())
        game_over = bool(terminated or truncated)
        # As rlpyt (the SPR code's env): losing the last life is game over, not a life loss.
        life_lost = lives < self._lives and not game_over and lives > 0
        self._lives = lives
        info = {"lives": lives, "life_lost": life_lost, "game_over": game_over,
                "truncated": bool(truncated and not terminated)}

        if game_over:
            info["episode_return"] = self._episode_return
            info["episode_length"] = self._episode_length
            frame = self._new_game()  # restarts the stack at the new game's first frame
            terminal = True
        else:
            # A life lost in training restarts the learner episode (the game goes on).
            terminal = life_lost and self.training
            self._stacker.advance(frame, terminal)
        return frame, reward, terminal, info

    def _new_game(self) -> np.ndarray:
        frame, _ = self._env.reset()  # no seed: the RNGs continue, new random no-ops
        self._lives = int(self.ale.lives())
        self._episode_return = 0.0
        self._episode_length = 0
        self._needs_reset = False
        self._last_action = 0  # ALE's soft reset sets the applied action to NOOP
        self._stacker.reset(frame)
        return frame

    # ---------------------------------------------------------------------------------- state
    def get_state(self) -> dict:
        """Everything needed to continue bit-identically, as picklable plain data."""
        base = self._env.unwrapped
        return {
            "version": _STATE_VERSION,
            "game": self.game,
            "seed": self.seed,  # informational: the RNG states below are what matter
            "sticky": self.sticky,
            "training": self.training,
            "noop_max": self.noop_max,
            "max_frames_per_episode": self.max_frames_per_episode,
            # Emulator, including the ALE RNG used by sticky actions.
            "ale_state": self.ale.cloneState(include_rng=True).serialize(),
            # The gymnasium RNG AtariPreprocessing draws the no-op counts from.
            "noop_rng": copy.deepcopy(base.np_random.bit_generator.state),
            # AtariPreprocessing internals: max-pool buffers (buffer 0 holds the last pooled
            # screen, which a short final frame skip reuses), lives, game_over.
            "obs_buffer": [b.copy() for b in self._env.obs_buffer],
            "prep_lives": int(self._env.lives),
            "prep_game_over": bool(self._env.game_over),
            "stacker": self._stacker.get_state(),
            "lives": self._lives,
            "episode_return": self._episode_return,
            "episode_length": self._episode_length,
            "needs_reset": self._needs_reset,
            "last_action": self._last_action,
        }

    def set_state(self, state: dict) -> None:
        """Restores a :meth:`get_state` dict (from this or another env of the same game)."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported AtariEnv state version {state.get('version')}")
        for key in ("game", "sticky", "noop_max", "max_frames_per_episode"):
            if state[key] != getattr(self, key):
                raise ValueError(f"state was saved with {key}={state[key]!r}, this env has "
                                 f"{key}={getattr(self, key)!r}")
        self.seed = int(state["seed"])
        self.training = bool(state["training"])
        ale_state = ale_py.ALEState(state["ale_state"])
        self._last_action = int(state["last_action"])
        if self.sticky > 0:
            self._restore_sticky_action(ale_state, self._last_action)
        self.ale.restoreState(ale_state)
        base = self._env.unwrapped
        base.np_random.bit_generator.state = copy.deepcopy(state["noop_rng"])
        for buf, saved in zip(self._env.obs_buffer, state["obs_buffer"]):
            buf[...] = saved
        self._env.lives = int(state["prep_lives"])
        self._env.game_over = bool(state["prep_game_over"])
        self._stacker.set_state(state["stacker"])
        self._lives = int(state["lives"])
        self._episode_return = float(state["episode_return"])
        self._episode_length = int(state["episode_length"])
        self._needs_reset = bool(state["needs_reset"])

    def _restore_sticky_action(self, ale_state, action: int) -> None:
        """Makes ``action`` the ALE's last applied action (what a sticky frame repeats).

        ALEState does not hold it, and there is no setter: act on the restored state until
        the action has surely been accepted (each frame accepts it with probability 1 - p),
        the caller then restores the emulator (and its RNG) again, which keeps the action.
        """
        self.ale.restoreState(ale_state)
        ale_action = self._env.unwrapped._action_set[action]
        for _ in range(64):  # all rejected: probability p**64 (< 1e-38 for p = 0.25)
            self.ale.act(ale_action)

    def close(self) -> None:
        self._env.close()


__all__ = ["AtariEnv", "FrameStacker", "clip_reward", "make_preprocessed_env"]
