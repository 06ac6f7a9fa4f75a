"""The Atari 100k training environment (one game, one emulator, single 84x84 frames).

Two protocols, chosen per env (``AtariEnv(..., protocol=...)``; a run picks its own with
``SPRConfig.env_protocol`` and uses it for training AND evaluation). Both: ale-py's emulator, the
minimal action set, frame skip 4 with a max-pool of the last two frames, grayscale, 84x84
frames, up to 30 random no-ops at each game start, 4-frame stacks, raw rewards (clip with
:func:`clip_reward` for learning), no sticky actions for Atari 100k.

``protocol="dopamine"`` (the default; BBF's runs, the DQN Replay data): the preprocessing of
Dopamine's env (google/dopamine ``dopamine/discrete_domains/atari_lib.py``: INTER_AREA resize,
no extra frame at a life loss, a 108k-frame cap), built here from ale-py's ``AtariEnv`` (what
``gym.make("ALE/<Game>-v5")`` builds, without gymnasium's checker wrappers) with
``frameskip=1``, ``repeat_action_probability=sticky`` (0 for Atari 100k; 0.25 for data
collection), ``max_num_frames_per_episode=108_000`` (the 27k-step cap counted by the ALE in
emulator frames, no-op frames included); then gymnasium's ``AtariPreprocessing(noop_max=30,
frame_skip=4, screen_size=84, terminal_on_life_loss=False)``: 1..30 random no-ops at each game
reset, max-pool of the screens after the last two frames (a skip cut short by the game's end
reuses the previous screen), cv2 INTER_AREA resize.

``protocol="spr"`` (the SPR and SGI code's own env, mila-iqia/spr ``src/rlpyt_atari_env.py``,
a modified rlpyt ``AtariEnv``), on ``ale_py.ALEInterface`` directly, no episode cap on the ALE:

- game start (its ``reset``): ``reset_game``; stack and raw screens zeroed; ``_life_reset``:
  ONE NOOP frame (its reward dropped), then the lives are read; then 1..``noop_max`` single NOOP
  frames (drawn from this env's no-op RNG); a life lost during them restarts the game start
  (recursively, as the reference; it never happens from power-on in the 26 games, see
  tests/test_env_protocol.py). The first frame is the max of a zeroed raw screen and the
  current screen, i.e. the screen. The step counter is 0 after the no-ops.
- step: the action for 4 frames (the 4 acts run even if the game ends during them, the ALE then
  does nothing), reward = the sum of their raw rewards; screens grabbed before the last act and
  after it (or after the extra frame below), max-pooled, resized with cv2's DEFAULT bilinear
  interpolation (the reference passes ``cv2.INTER_LINEAR`` as ``dst``, so bilinear it is).
  A life loss (lives < lives at the last life reset, and lives > 0) plays the extra NOOP frame
  of ``_life_reset`` (reward dropped) in training AND evaluation; in training it also zeroes the
  stack and the raw screens BEFORE the second grab, so the learner episode's first frame is
  not max-pooled with the previous screen. The lives compared against are updated ONLY by a
  life reset (game start, life loss), as in the reference.
- the end: game over = ``ale.game_over()`` or ``step_counter >= horizon`` checked BEFORE the
  counter is incremented, so with the default ``horizon=27_000`` a game that does not end by
  itself ends on its 27,001st step (``horizon + 1`` steps); the counter counts agent steps after
  the no-ops and is not reset by a life loss.
- evaluation (``training=False``) is the reference's ``episodic_lives=False``: full games, the
  extra NOOP frame on a life loss still played. Sticky actions are refused (the reference is
  only run with none). Seeding is this module's own: ``seed`` seeds the ALE's ``random_seed``
  and the numpy no-op RNG (the reference hashes seeds through gym's ``seeding``).

API (both protocols)::

    env = AtariEnv("Pong", seed=0, training=True, sticky=0.0, protocol="dopamine")
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
returned (a terminal transition does not bootstrap). (The SPR reference returns that frame and
its sampler then calls ``reset()``, only on game over / cap: the same stream of frames.) So a
training loop is::

    frame = env.reset()
    while ...:
        action = act(env.stack)               # the stack that contains ``frame``
        next_frame, r, terminal, info = env.step(action)
        replay.add(frame, action, clip_reward(r), terminal)  # frame observed before the action
        frame = next_frame

``info`` always has ``lives`` (the ALE's lives after the step), ``life_lost`` (a life was lost
on this step and the game goes on, even in evaluation mode), ``game_over`` (the scored episode
ended, by game over or the cap, and a new game was started) and ``truncated`` (the cap ended
it, the game itself had not); when ``game_over`` it also has ``episode_return`` (raw score of
the whole game, the step rewards summed) and ``episode_length`` (agent steps of the whole game).

State. :meth:`AtariEnv.get_state` returns a picklable dict of numpy arrays/bytes/ints/floats
(ALE emulator state with its RNG, the no-op RNG, the preprocessing buffers, the stack, the
episode counters); :meth:`AtariEnv.set_state` restores it into any ``AtariEnv`` of the same
protocol, game and settings (a fresh object is fine) so that it continues bit-identically; a
state of the other protocol is refused (ValueError). States of version 1 (saved before the
protocols existed) are "dopamine" states.
With sticky actions (sticky > 0, "dopamine" only) one piece of ALE state has no save/restore
API: the last APPLIED action, which a sticky frame repeats. It is restored as the last action
sent; this is exact unless all four frames of the last step before the save were sticky
(probability p**4, 0.4% of saves at p = 0.25) and the next frame is sticky too. With sticky = 0
(Atari 100k) the restore is exact.
"""

from __future__ import annotations

import copy

import ale_py
import ale_py.env
import cv2
import numpy as np
from ale_py import roms
from gymnasium.wrappers import AtariPreprocessing

from envs.frame_stack import FrameStacker
from envs.games import get_game

FRAME_SHAPE = (84, 84)
STACK_SIZE = 4
FRAME_SKIP = 4
NOOP_MAX = 30
MAX_FRAMES_PER_EPISODE = 108_000  # 27k agent steps x frame skip 4 ("dopamine")
SPR_HORIZON = 27_000  # "spr": the reference's horizon, in agent steps after the no-ops
PROTOCOLS = ("dopamine", "spr")

# 2: states carry "protocol"; version 1 (no "protocol") is a "dopamine" state.
_STATE_VERSION = 2


def clip_reward(reward):
  """Reward used for learning: its sign, in {-1, 0, 1} (works on scalars and arrays)."""
  return np.sign(reward).astype(np.float32)


def make_preprocessed_env(
    game: str,
    sticky: float = 0.0,
    noop_max: int = NOOP_MAX,
    max_frames_per_episode: int = MAX_FRAMES_PER_EPISODE,
) -> AtariPreprocessing:
  """ale-py base env + gymnasium AtariPreprocessing with the Atari 100k settings.

  The "dopamine" protocol's emulator and preprocessing. The returned env is unseeded; seed it
  with ``env.reset(seed=...)``.
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
  return AtariPreprocessing(
      base,
      noop_max=noop_max,
      frame_skip=FRAME_SKIP,
      screen_size=FRAME_SHAPE[0],
      terminal_on_life_loss=False,
      grayscale_obs=True,
      scale_obs=False,
  )


class _DopamineGame:
  """Emulator + preprocessing of protocol "dopamine" (gymnasium's AtariPreprocessing).

  Keeps ``stacker`` (the env's) up to date except at game over, where the env starts a new
  game (``new_game`` restarts the stack).
  """

  def __init__(
      self,
      game: str,
      seed: int,
      sticky: float,
      noop_max: int,
      max_frames_per_episode: int,
      stacker: FrameStacker,
  ):
    self.sticky = sticky
    self._env = make_preprocessed_env(game, sticky, noop_max, max_frames_per_episode)
    # Seeds the ALE and the no-op RNG once (ale-py reloads the ROM when given a seed); every
    # later game reset passes no seed, so the RNGs continue and each game gets new no-ops.
    self._env.reset(seed=seed)
    self._stacker = stacker
    self.lives = 0
    # Index of the last action sent to the ALE (0 = NOOP after a game reset): the ALE keeps
    # the last APPLIED action outside its cloneable state, sticky actions repeat it.
    self._last_action = 0

  @property
  def ale(self) -> ale_py.ALEInterface:
    return self._env.unwrapped.ale

  @property
  def ale_actions(self) -> list:
    return list(self._env.unwrapped._action_set)

  def reseed(self, seed: int) -> None:
    self._env.reset(seed=seed)

  def new_game(self) -> np.ndarray:
    frame, _ = self._env.reset()  # no seed: the RNGs continue, new random no-ops
    self.lives = int(self.ale.lives())
    self._last_action = 0  # ALE's soft reset sets the applied action to NOOP
    self._stacker.reset(frame)
    return frame

  def step(self, action: int, training: bool) -> tuple[np.ndarray, float, bool, bool, bool]:
    """(frame, raw reward, life lost, game over, truncated); the stack follows unless the
    game is over."""
    frame, reward, terminated, truncated, _ = self._env.step(int(action))
    self._last_action = int(action)
    lives = int(self.ale.lives())
    game_over = bool(terminated or truncated)
    # As rlpyt (the SPR code's env): losing the last life is game over, not a life loss.
    life_lost = lives < self.lives and not game_over and lives > 0
    self.lives = lives
    if not game_over:
      # A life lost in training restarts the learner episode (the game goes on).
      self._stacker.advance(frame, life_lost and training)
    return frame, float(reward), life_lost, game_over, bool(truncated and not terminated)

  def get_state(self) -> dict:
    base = self._env.unwrapped
    return {
        # Emulator, including the ALE RNG used by sticky actions.
        "ale_state": self.ale.cloneState(include_rng=True).serialize(),
        # The gymnasium RNG AtariPreprocessing draws the no-op counts from.
        "noop_rng": copy.deepcopy(base.np_random.bit_generator.state),
        # AtariPreprocessing internals: max-pool buffers (buffer 0 holds the last pooled
        # screen, which a short final frame skip reuses), lives, game_over.
        "obs_buffer": [b.copy() for b in self._env.obs_buffer],
        "prep_lives": int(self._env.lives),
        "prep_game_over": bool(self._env.game_over),
        "lives": self.lives,
        "last_action": self._last_action,
    }

  def set_state(self, state: dict) -> None:
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
    self.lives = int(state["lives"])

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


class _SPRGame:
  """Emulator + preprocessing of protocol "spr": mila-iqia/spr ``src/rlpyt_atari_env.py``.

  The methods mirror the reference's (``reset``, ``step``, ``_check_life``, ``_life_reset``,
  ``_update_obs``, ``_reset_obs``) line by line; its observation ``_obs`` is ``stacker`` (the
  env's). Reference settings fixed here: grayscale, frame_skip 4, num_img_obs 4, imagesize 84,
  no sticky actions, no action stacking, no reward clipping (the env returns raw rewards).
  """

  def __init__(self, rom: str, seed: int, noop_max: int, horizon: int, stacker: FrameStacker):
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    self.ale = ale_py.ALEInterface()
    self.ale.setFloat("repeat_action_probability", 0.0)
    self._rom_path = str(roms.get_rom_path(rom))
    self.noop_max = noop_max
    self.horizon = horizon
    self._obs = stacker
    self.reseed(seed)  # loads the ROM
    self._action_set = self.ale.getMinimalActionSet()
    height, width = self.ale.getScreenDims()
    self._raw_frame_1 = np.zeros((height, width), np.uint8)
    self._raw_frame_2 = np.zeros((height, width), np.uint8)
    self._max_frame = np.zeros((height, width), np.uint8)
    self._lives = 0  # lives at the last life reset (the reference's ``_lives``)
    self._step_counter = 0

  @property
  def ale_actions(self) -> list:
    return list(self._action_set)

  @property
  def lives(self) -> int:
    return int(self.ale.lives())

  def reseed(self, seed: int) -> None:
    # As ale-py's gymnasium env: two words from the seed, one for the ALE (set before the
    # ROM is loaded, which applies it), one for the no-op RNG.
    np_seed, ale_seed = np.random.SeedSequence(int(seed)).generate_state(2)
    self._noop_rng = np.random.default_rng(int(np_seed))
    self.ale.setInt("random_seed", int(ale_seed) & 0x7FFFFFFF)
    self.ale.loadROM(self._rom_path)

  def new_game(self) -> np.ndarray:
    return self.reset()

  def reset(self) -> np.ndarray:
    """The reference's ``reset`` (a hard reset of the game); returns the first frame."""
    self.ale.reset_game()
    self._reset_obs()
    self._life_reset()
    if self.noop_max > 0:
      for _ in range(int(self._noop_rng.integers(1, self.noop_max + 1))):
        self.ale.act(ale_py.Action.NOOP)
        if self._check_life():
          # As the reference: a full restart, after which this loop goes on with its
          # remaining no-ops and the frame below is appended again.
          self.reset()
    frame = self._update_obs()
    self._step_counter = 0
    return frame

  def step(self, action: int, training: bool) -> tuple[np.ndarray, float, bool, bool, bool]:
    """The reference's ``step``: (frame, raw reward, life lost, game over, truncated)."""
    a = self._action_set[int(action)]
    reward = 0
    for _ in range(FRAME_SKIP - 1):
      reward += self.ale.act(a)
    self._get_screen(self._raw_frame_1)
    reward += self.ale.act(a)
    lost_life = self._check_life()  # plays the extra NOOP frame on a loss
    if lost_life and training:  # the reference's episodic_lives
      self._reset_obs()
    frame = self._update_obs()
    ale_over = self.ale.game_over()
    game_over = ale_over or self._step_counter >= self.horizon
    self._step_counter += 1
    return (
        frame,
        float(reward),
        bool(lost_life and not game_over),
        bool(game_over),
        bool(game_over and not ale_over),
    )

  def _get_screen(self, frame: np.ndarray) -> None:
    self.ale.getScreenGrayscale(frame)

  def _update_obs(self) -> np.ndarray:
    """Max of the last two screens, resized; appended to the stack. Returns the frame."""
    self._get_screen(self._raw_frame_2)
    np.maximum(self._raw_frame_1, self._raw_frame_2, out=self._max_frame)
    # The reference's cv2.resize(frame, (84, 84), cv2.INTER_LINEAR) passes INTER_LINEAR as
    # ``dst``: the interpolation is cv2's default, which is bilinear (named here).
    img = cv2.resize(self._max_frame, FRAME_SHAPE[::-1], interpolation=cv2.INTER_LINEAR)
    self._obs.push(img)
    return img

  def _reset_obs(self) -> None:
    self._obs.clear()
    self._max_frame[:] = 0
    self._raw_frame_1[:] = 0
    self._raw_frame_2[:] = 0

  def _check_life(self) -> bool:
    lives = self.ale.lives()
    lost_life = (lives < self._lives) and (lives > 0)
    if lost_life:
      self._life_reset()
    return lost_life

  def _life_reset(self) -> None:
    self.ale.act(ale_py.Action.NOOP)  # reward dropped
    self._lives = self.ale.lives()

  def get_state(self) -> dict:
    # The raw screens are not state: a step overwrites both (or zeroes them) before reading.
    return {
        "ale_state": self.ale.cloneState(include_rng=True).serialize(),
        "noop_rng": copy.deepcopy(self._noop_rng.bit_generator.state),
        "lives": int(self._lives),
        "step_counter": int(self._step_counter),
    }

  def set_state(self, state: dict) -> None:
    self.ale.restoreState(ale_py.ALEState(state["ale_state"]))
    self._noop_rng.bit_generator.state = copy.deepcopy(state["noop_rng"])
    self._lives = int(state["lives"])
    self._step_counter = int(state["step_counter"])

  def close(self) -> None:
    pass


class AtariEnv:
  """One Atari 100k game with learner terminals, auto-reset and exact save/restore.

  Args:
    game: any spelling accepted by :func:`envs.games.get_game` ("MsPacman", "ms_pacman").
    seed: seeds the emulator and the no-op RNG; the same seed and actions give the same frames.
    training: if True a lost life is a learner terminal (the game goes on); if False only game
      over / the cap are terminals (evaluation plays full games).
    sticky: repeat_action_probability of the ALE (0 for Atari 100k, 0.25 for data
      collection); "dopamine" only ("spr" refuses sticky > 0).
    noop_max: maximum number of random no-ops at each game start (1..noop_max are drawn;
      0: none).
    max_frames_per_episode: "dopamine" episode cap in emulator frames (tests shrink it).
    protocol: "dopamine" (default) or "spr"; see the module docstring.
    horizon: "spr" episode cap in agent steps after the no-ops (the game ends on step
      ``horizon + 1``; tests shrink it).
  """

  def __init__(
      self,
      game: str,
      seed: int,
      training: bool = True,
      sticky: float = 0.0,
      noop_max: int = NOOP_MAX,
      max_frames_per_episode: int = MAX_FRAMES_PER_EPISODE,
      protocol: str = "dopamine",
      horizon: int = SPR_HORIZON,
  ):
    if protocol not in PROTOCOLS:
      raise ValueError(f"unknown env protocol {protocol!r}: expected one of {PROTOCOLS}")
    spec = get_game(game)
    self.game = spec.name
    self.seed = int(seed)
    self.training = bool(training)
    self.sticky = float(sticky)
    self.noop_max = int(noop_max)
    self.max_frames_per_episode = int(max_frames_per_episode)
    self.protocol = protocol
    self.horizon = int(horizon)
    if self.noop_max < 0:
      raise ValueError(f"noop_max must be >= 0, got {noop_max}")
    self._stacker = FrameStacker(STACK_SIZE, FRAME_SHAPE)
    if protocol == "spr":
      if self.sticky != 0.0:
        raise ValueError(
            f"the 'spr' env protocol has no sticky actions (the SPR code "
            f"runs without them), got sticky={sticky}; use "
            f"protocol='dopamine'"
        )
      if self.max_frames_per_episode != MAX_FRAMES_PER_EPISODE:
        raise ValueError(
            "the 'spr' env protocol caps episodes in agent steps: set "
            "horizon, not max_frames_per_episode"
        )
      if self.horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
      self._core = _SPRGame(spec.rom, self.seed, self.noop_max, self.horizon, self._stacker)
    else:
      if self.horizon != SPR_HORIZON:
        raise ValueError(
            "the 'dopamine' env protocol caps episodes in emulator frames: "
            "set max_frames_per_episode, not horizon"
        )
      self._core = _DopamineGame(
          self.game,
          self.seed,
          self.sticky,
          self.noop_max,
          self.max_frames_per_episode,
          self._stacker,
      )
    self._episode_return = 0.0
    self._episode_length = 0
    self._needs_reset = True

  # ----------------------------------------------------------------------------- properties
  @property
  def ale(self) -> ale_py.ALEInterface:
    return self._core.ale

  @property
  def num_actions(self) -> int:
    """Size of the minimal action set."""
    return len(self._core.ale_actions)

  @property
  def action_set(self) -> list[int]:
    """ALE action ids of the minimal action set, in the order of the action indices."""
    return [int(a.value) for a in self._core.ale_actions]

  @property
  def action_meanings(self) -> list[str]:
    return [a.name for a in self._core.ale_actions]

  @property
  def stack(self) -> np.ndarray:
    """(4, 84, 84) uint8 stack of the current learner episode, oldest frame first (a copy)."""
    return self._stacker.stack

  @property
  def lives(self) -> int:
    return self._core.lives

  # ------------------------------------------------------------------------------- dynamics
  def reset(self, seed: int | None = None) -> np.ndarray:
    """Starts a new game (random no-ops) and a new learner episode; returns its first frame.

    With ``seed`` the env is first re-seeded (ROM reloaded): ``env.reset(seed=s)`` then
    plays exactly as ``AtariEnv(game, s, ...).reset()`` would (evaluation reuses envs so).
    """
    if seed is not None:
      self.seed = int(seed)
      self._core.reseed(self.seed)
    return self._new_game()

  def step(self, action: int) -> tuple[np.ndarray, float, bool, dict]:
    """Takes ``action`` for 4 frames. See the module docstring for the semantics."""
    if self._needs_reset:
      raise RuntimeError("AtariEnv.step() called before reset()")
    frame, reward, life_lost, game_over, truncated = self._core.step(action, self.training)
    self._episode_return += reward
    self._episode_length += 1
    info = {
        "lives": self.lives,
        "life_lost": life_lost,
        "game_over": game_over,
        "truncated": truncated,
    }
    if game_over:
      info["episode_return"] = self._episode_return
      info["episode_length"] = self._episode_length
      frame = self._new_game()  # restarts the stack at the new game's first frame
      terminal = True
    else:
      # The core has pushed the frame, or restarted the stack at it after a life lost in
      # training (the learner episode restarts, the game goes on).
      terminal = life_lost and self.training
    return frame, reward, terminal, info

  def _new_game(self) -> np.ndarray:
    frame = self._core.new_game()  # restarts the stack at ``frame``
    self._episode_return = 0.0
    self._episode_length = 0
    self._needs_reset = False
    return frame

  # ---------------------------------------------------------------------------------- state
  def _settings(self) -> dict:
    """What a state must have been saved with to be restored here (besides the game)."""
    if self.protocol == "spr":
      return {"noop_max": self.noop_max, "horizon": self.horizon}
    return {
        "sticky": self.sticky,
        "noop_max": self.noop_max,
        "max_frames_per_episode": self.max_frames_per_episode,
    }

  def get_state(self) -> dict:
    """Everything needed to continue bit-identically, as picklable plain data."""
    return {
        "version": _STATE_VERSION,
        "protocol": self.protocol,
        "game": self.game,
        "seed": self.seed,  # informational: the RNG states below are what matter
        "training": self.training,
        **self._settings(),
        **self._core.get_state(),
        "stacker": self._stacker.get_state(),
        "episode_return": self._episode_return,
        "episode_length": self._episode_length,
        "needs_reset": self._needs_reset,
    }

  def set_state(self, state: dict) -> None:
    """Restores a :meth:`get_state` dict (from this or another env of the same protocol,
    game and settings)."""
    version = state.get("version")
    if version == 1 and "protocol" not in state:
      protocol = "dopamine"  # saved before the protocols existed
    elif version == _STATE_VERSION:
      protocol = state["protocol"]
    else:
      raise ValueError(f"unsupported AtariEnv state version {version}")
    if protocol != self.protocol:
      raise ValueError(
          f"this AtariEnv state was saved by a {protocol!r}-protocol env; "
          f"it cannot be restored into this {self.protocol!r}-protocol env"
      )
    for key, value in {"game": self.game, **self._settings()}.items():
      if state[key] != value:
        raise ValueError(
            f"state was saved with {key}={state[key]!r}, this env has " f"{key}={value!r}"
        )
    self.seed = int(state["seed"])
    self.training = bool(state["training"])
    self._core.set_state(state)
    self._stacker.set_state(state["stacker"])
    self._episode_return = float(state["episode_return"])
    self._episode_length = int(state["episode_length"])
    self._needs_reset = bool(state["needs_reset"])

  def close(self) -> None:
    self._core.close()


__all__ = [
    "AtariEnv",
    "FrameStacker",
    "clip_reward",
    "make_preprocessed_env",
    "PROTOCOLS",
    "SPR_HORIZON",
]
