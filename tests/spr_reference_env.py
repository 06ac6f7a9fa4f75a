"""A transcription of mila-iqia/spr ``src/rlpyt_atari_env.py`` (the SPR / SGI code's Atari env)
onto ale-py, for the lockstep test of ``AtariEnv(protocol="spr")`` (tests/test_env_protocol.py).

Kept line for line with the reference: ``reset``, ``step``, ``_update_obs``, ``_reset_obs``,
``_check_life``, ``_life_reset`` and ``_get_screen`` are its code. Changed, and only these:
``atari_py`` -> ``ale_py`` (same ALE calls; the ROM path from ``ale_py.roms``); the seeding
(the reference hashes the seed through gym's ``seeding``, here ``np.random.RandomState`` for the
no-ops and the seed itself for the ALE: with no sticky actions and no no-ops the ALE's RNG is
unused, so the lockstep does not depend on it); the rlpyt base classes, spaces, TrajInfo and
``render`` are left out (the returned ``EnvStep`` / ``EnvInfo`` are plain namedtuples). The
reference's ``cv2.resize(..., cv2.INTER_LINEAR)`` is kept as written (the third positional
argument is ``dst``).
"""

from collections import namedtuple

import ale_py
import cv2
import numpy as np
from ale_py import roms

EnvInfo = namedtuple("EnvInfo", ["game_score", "traj_done"])
EnvStep = namedtuple("EnvStep", ["observation", "reward", "done", "env_info"])


class ReferenceAtariEnv:
  """The reference env (see the module docstring for what differs)."""

  def __init__(
      self,
      game="pong",
      frame_skip=4,  # Frames per step (>=1).
      num_img_obs=4,  # Number of (past) frames in observation (>=1).
      clip_reward=True,
      episodic_lives=True,
      max_start_noops=30,
      repeat_action_probability=0.0,
      horizon=27000,
      stack_actions=0,
      grayscale=True,
      imagesize=84,
      seed=42,
      id=0,
  ):
    self._game = game
    self._frame_skip = frame_skip
    self._num_img_obs = num_img_obs
    self._clip_reward = clip_reward
    self._episodic_lives = episodic_lives
    self._max_start_noops = max_start_noops
    self._repeat_action_probability = repeat_action_probability
    self._horizon = horizon
    # ALE
    game_path = str(roms.get_rom_path(game))
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    self.ale = ale_py.ALEInterface()
    self.seed(seed, id)
    self.ale.setFloat("repeat_action_probability", repeat_action_probability)
    self.ale.loadROM(game_path)

    # Spaces
    self.stack_actions = stack_actions
    self._action_set = self.ale.getMinimalActionSet()
    self.channels = 1 if grayscale else 3
    self.grayscale = grayscale
    self.imagesize = imagesize
    if self.stack_actions:
      self.channels += 1
    obs_shape = (num_img_obs, self.channels, imagesize, imagesize)
    self._max_frame = self.ale.getScreenGrayscale() if self.grayscale else self.ale.getScreenRGB()
    self._raw_frame_1 = self._max_frame.copy()
    self._raw_frame_2 = self._max_frame.copy()
    self._obs = np.zeros(shape=obs_shape, dtype="uint8")

    # Settings
    self._horizon = int(horizon)
    self.reset()

  def seed(self, seed=None, id=0):
    if id > 0:
      seed = seed * 100 + id
    self.np_random = np.random.RandomState(seed)
    # Empirically, we need to seed before loading the ROM.
    self.ale.setInt("random_seed", seed)

  def reset(self):
    """Performs hard reset of ALE game."""
    self.ale.reset_game()
    self._reset_obs()
    self._life_reset()
    if self._max_start_noops > 0:
      for _ in range(self.np_random.randint(1, self._max_start_noops + 1)):
        self.ale.act(0)
        if self._check_life():
          self.reset()
    self._update_obs(0)  # (don't bother to populate any frame history)
    self._step_counter = 0
    return self.get_obs()

  def step(self, action):
    a = self._action_set[action]
    game_score = np.array(0.0, dtype="float32")
    for _ in range(self._frame_skip - 1):
      game_score += self.ale.act(a)
    self._get_screen(1)
    game_score += self.ale.act(a)
    lost_life = self._check_life()  # Advances from lost_life state.
    if lost_life and self._episodic_lives:
      self._reset_obs()  # Internal reset.
    self._update_obs(action)
    reward = np.sign(game_score) if self._clip_reward else game_score
    game_over = self.ale.game_over() or self._step_counter >= self.horizon
    done = game_over or (self._episodic_lives and lost_life)
    info = EnvInfo(game_score=game_score, traj_done=game_over)
    self._step_counter += 1
    return EnvStep(self.get_obs(), reward, done, info)

  def get_obs(self):
    return self._obs.copy()

  ###########################################################################
  # Helpers

  def _get_screen(self, frame=1):
    frame = self._raw_frame_1 if frame == 1 else self._raw_frame_2
    if self.grayscale:
      self.ale.getScreenGrayscale(frame)
    else:
      self.ale.getScreenRGB(frame)

  def _update_obs(self, action):
    """Max of last two frames; crop two rows; downsample by 2x."""
    self._get_screen(2)
    # (The reference passes ``out`` positionally, which numpy 2 deprecates.)
    np.maximum(self._raw_frame_1, self._raw_frame_2, out=self._max_frame)
    img = cv2.resize(self._max_frame, (self.imagesize, self.imagesize), cv2.INTER_LINEAR)
    if len(img.shape) == 2:
      img = img[np.newaxis]
    else:
      img = np.transpose(img, (2, 0, 1))
    if self.stack_actions:
      action = int(255.0 * action / len(self._action_set))
      action = np.ones_like(img[:1]) * action
      img = np.concatenate([img, action], 0)
    # NOTE: order OLDEST to NEWEST should match use in frame-wise buffer.
    self._obs = np.concatenate([self._obs[1:], img[np.newaxis]])

  def _reset_obs(self):
    self._obs[:] = 0
    self._max_frame[:] = 0
    self._raw_frame_1[:] = 0
    self._raw_frame_2[:] = 0

  def _check_life(self):
    lives = self.ale.lives()
    lost_life = (lives < self._lives) and (lives > 0)
    if lost_life:
      self._life_reset()
    return lost_life

  def _life_reset(self):
    self.ale.act(0)
    self._lives = self.ale.lives()

  @property
  def horizon(self):
    return self._horizon

  @property
  def num_actions(self):
    return len(self._action_set)
