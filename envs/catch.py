"""Catch: a pixel sanity task with the interface of :class:`envs.atari.AtariEnv`.

bsuite's Catch (google-deepmind/bsuite ``bsuite/environments/catch.py``): a board of 10 rows x 5
columns; at the start of an episode a ball appears in a uniformly random column of the top row
(row 0) and the paddle is in the middle column (5 // 2 = 2) of the bottom row (row 9). Each step
the paddle moves left / stays / moves right (clipped at the walls), THEN the ball falls one row.
When the ball reaches the bottom row (the 9th step) the episode ends with +1 if the paddle is in
the ball's column and -1 otherwise; every other step gives 0. So an episode is exactly 9 steps
and its return is +1 or -1: a mean return of 0.8 is a 90% catch rate, a uniformly random policy
scores about -0.5 and the best policy 1.0.

It is NOT an Atari game (not one of the 26 Atari 100k games, no score tables, no HNS):
:mod:`envs.games` knows it as a non-Atari game and :func:`envs.games.make_env` builds this env
for ``game="catch"``, so the trainers and the evaluation run it with ``--game=catch``.

Differences from bsuite, all in the interface, none in the dynamics:

- Observations are 84x84 uint8 grey frames (bsuite: the 10x5 binary board): the board is drawn
  in the middle of the frame with 8x16-pixel cells (80x80 pixels, a 2-pixel black border), the
  ball and the paddle as full cells of value 255 on black. A random shift of 4 pixels (the SPR
  augmentation) moves the picture by at most half a cell; the ball and the paddle keep their
  relative position. The frame that ends an episode (ball on the paddle row) is never returned,
  as in ``AtariEnv`` (below).
- Actions: index 0 = LEFT, 1 = NOOP (stay), 2 = RIGHT, bsuite's order (its ``_ACTIONS = (-1,
  0, 1)``). ``action_set`` gives them as ALE action ids (LEFT 4, NOOP 0, RIGHT 3), so code that
  maps actions by ALE id (SGI finetuning's head transfer) treats them as the Atari actions of
  the same meaning.
- Seeding: ``np.random.default_rng(seed)`` (bsuite: ``np.random.RandomState``) draws the ball's
  column at each episode start; the same seed gives the same columns.
- Steps, auto-reset, ``info`` and ``stack``: exactly as ``AtariEnv`` (see its module
  docstring). ``step`` returns ``(frame, reward, terminal, info)``; after the 9th step
  ``terminal`` is True, ``info["game_over"]`` is True with ``episode_return`` (+1 / -1) and
  ``episode_length`` (9), and the returned frame is the FIRST frame of the next episode (new
  random column), with ``env.stack`` already restarted at it (zeros except that frame). Catch
  has no lives: ``lives`` is 0 (the ALE's value for games without lives), ``life_lost`` and
  ``truncated`` are always False, and ``training`` changes nothing (there are no life-loss
  terminals).

Atari-only constructor arguments are accepted so that every caller can pass the kwargs it passes
to ``AtariEnv``: ``protocol`` ("dopamine" or "spr", recorded; Catch plays the same under both),
``noop_max`` (ignored: Catch starts without no-ops, its start is random by the ball's column).
``sticky``, ``max_frames_per_episode`` and ``horizon`` must keep their defaults (0, no cap
shorter than an episode): other values would change the task and are refused (ValueError).

API::

    env = CatchEnv("catch", seed=0)        # or envs.make_env("catch", seed=0, training=True)
    env.num_actions                        # 3
    frame = env.reset()                    # (84, 84) uint8
    frame, reward, terminal, info = env.step(action)
    env.stack                              # (4, 84, 84) uint8
    state = env.get_state(); env.set_state(state)   # exact (RNG, ball, paddle, stack, counters)
"""

from __future__ import annotations

import copy

import numpy as np

from envs.atari import (
    FRAME_SHAPE,
    MAX_FRAMES_PER_EPISODE,
    NOOP_MAX,
    PROTOCOLS,
    SPR_HORIZON,
    STACK_SIZE,
)
from envs.frame_stack import FrameStacker

NAME = "Catch"
ROWS = 10
COLUMNS = 5
EPISODE_LENGTH = ROWS - 1  # the ball starts on row 0 and the episode ends when it reaches row 9
# bsuite's actions, as paddle moves: left, stay, right.
MOVES = (-1, 0, 1)
# The same actions as ALE ids (ale_py.Action: NOOP 0, RIGHT 3, LEFT 4), in MOVES order.
ALE_ACTIONS = (4, 0, 3)
ACTION_MEANINGS = ("LEFT", "NOOP", "RIGHT")

# Rendering: 8x16-pixel cells, 10 x 8 = 80 rows and 5 x 16 = 80 columns of pixels, centred in
# the 84x84 frame.
CELL_HEIGHT = 8
CELL_WIDTH = 16
TOP = (FRAME_SHAPE[0] - ROWS * CELL_HEIGHT) // 2
LEFT = (FRAME_SHAPE[1] - COLUMNS * CELL_WIDTH) // 2
ON = 255

_STATE_VERSION = 1


def render(ball_row: int, ball_col: int, paddle_col: int) -> np.ndarray:
  """The (84, 84) uint8 frame of a board: ball and paddle cells 255, everything else 0.

  Args:
    ball_row: 0 (top) .. 9 (bottom row, only at the end of an episode).
    ball_col, paddle_col: 0 (left) .. 4.
  """
  if not (0 <= ball_row < ROWS and 0 <= ball_col < COLUMNS and 0 <= paddle_col < COLUMNS):
    raise ValueError(
        f"cell out of the {ROWS}x{COLUMNS} board: ball ({ball_row}, "
        f"{ball_col}), paddle column {paddle_col}"
    )
  frame = np.zeros(FRAME_SHAPE, np.uint8)
  for row, col in ((ball_row, ball_col), (ROWS - 1, paddle_col)):
    top, left = TOP + row * CELL_HEIGHT, LEFT + col * CELL_WIDTH
    frame[top : top + CELL_HEIGHT, left : left + CELL_WIDTH] = ON
  return frame


class CatchEnv:
  """bsuite's Catch with ``AtariEnv``'s interface (see the module docstring).

  Args:
    game: "catch" in any case (the name :func:`envs.games.make_env` dispatches on).
    seed: seeds the RNG of the ball's starting column.
    training: recorded only (Catch has no lives, so no life-loss terminals).
    sticky: must be 0 (no sticky actions in Catch).
    noop_max: ignored (no no-ops in Catch).
    max_frames_per_episode, horizon: must keep ``AtariEnv``'s defaults (no episode cap).
    protocol: "dopamine" or "spr" (recorded; Catch plays the same under both).
  """

  def __init__(
      self,
      game: str = NAME,
      seed: int = 0,
      training: bool = True,
      sticky: float = 0.0,
      noop_max: int = NOOP_MAX,
      max_frames_per_episode: int = MAX_FRAMES_PER_EPISODE,
      protocol: str = "dopamine",
      horizon: int = SPR_HORIZON,
  ):
    if "".join(ch for ch in str(game).lower() if ch.isalnum()) != NAME.lower():
      raise ValueError(f"CatchEnv plays Catch, not {game!r}")
    if protocol not in PROTOCOLS:
      raise ValueError(f"unknown env protocol {protocol!r}: expected one of {PROTOCOLS}")
    if float(sticky) != 0.0:
      raise ValueError(f"Catch has no sticky actions, got sticky={sticky}")
    if int(max_frames_per_episode) != MAX_FRAMES_PER_EPISODE or int(horizon) != SPR_HORIZON:
      raise ValueError(
          "Catch episodes last 9 steps and have no cap: leave "
          "max_frames_per_episode and horizon at their defaults"
      )
    if int(noop_max) < 0:
      raise ValueError(f"noop_max must be >= 0, got {noop_max}")
    del noop_max  # Catch has no no-ops
    self.game = NAME
    self.seed = int(seed)
    self.training = bool(training)
    self.sticky = 0.0
    self.protocol = protocol
    self._rng = np.random.default_rng(self.seed)
    self._stacker = FrameStacker(STACK_SIZE, FRAME_SHAPE)
    self._ball_row = 0
    self._ball_col = 0
    self._paddle_col = COLUMNS // 2
    self._episode_return = 0.0
    self._episode_length = 0
    self._needs_reset = True

  # ----------------------------------------------------------------------------- properties
  @property
  def num_actions(self) -> int:
    return len(MOVES)

  @property
  def action_set(self) -> list[int]:
    """ALE action ids of the actions (LEFT, NOOP, RIGHT), in the order of the indices."""
    return list(ALE_ACTIONS)

  @property
  def action_meanings(self) -> list[str]:
    return list(ACTION_MEANINGS)

  @property
  def stack(self) -> np.ndarray:
    """(4, 84, 84) uint8 stack of the current episode, oldest frame first (a copy)."""
    return self._stacker.stack

  @property
  def lives(self) -> int:
    return 0  # no lives (the ALE reports 0 for such games)

  @property
  def board(self) -> tuple[int, int, int]:
    """(ball row, ball column, paddle column) of the current position (for tests and
    analysis: the 10x5 board the frame draws)."""
    return self._ball_row, self._ball_col, self._paddle_col

  # ------------------------------------------------------------------------------- dynamics
  def reset(self, seed: int | None = None) -> np.ndarray:
    """Starts a new episode; returns its first frame. With ``seed`` the RNG is first
    re-seeded: ``env.reset(seed=s)`` then plays as ``CatchEnv("catch", s).reset()``."""
    if seed is not None:
      self.seed = int(seed)
      self._rng = np.random.default_rng(self.seed)
    return self._new_game()

  def step(self, action: int) -> tuple[np.ndarray, float, bool, dict]:
    """Moves the paddle, drops the ball one row; auto-resets after the episode's end."""
    if self._needs_reset:
      raise RuntimeError("CatchEnv.step() called before reset()")
    action = int(action)
    if not 0 <= action < len(MOVES):
      raise ValueError(f"action {action} out of range [0, {len(MOVES)})")
    # bsuite's order: the paddle moves first, then the ball falls.
    self._paddle_col = int(np.clip(self._paddle_col + MOVES[action], 0, COLUMNS - 1))
    self._ball_row += 1
    self._episode_length += 1
    game_over = self._ball_row == ROWS - 1
    reward = (1.0 if self._paddle_col == self._ball_col else -1.0) if game_over else 0.0
    self._episode_return += reward
    info = {"lives": 0, "life_lost": False, "game_over": game_over, "truncated": False}
    if game_over:
      info["episode_return"] = self._episode_return
      info["episode_length"] = self._episode_length
      frame = self._new_game()  # restarts the stack at the new episode's first frame
    else:
      frame = self._frame()
      self._stacker.push(frame)
    return frame, reward, game_over, info

  def _frame(self) -> np.ndarray:
    return render(self._ball_row, self._ball_col, self._paddle_col)

  def _new_game(self) -> np.ndarray:
    self._ball_row = 0
    self._ball_col = int(self._rng.integers(COLUMNS))
    self._paddle_col = COLUMNS // 2
    self._episode_return = 0.0
    self._episode_length = 0
    self._needs_reset = False
    frame = self._frame()
    self._stacker.reset(frame)
    return frame

  # ---------------------------------------------------------------------------------- state
  def get_state(self) -> dict:
    """Everything needed to continue bit-identically, as picklable plain data."""
    return {
        "version": _STATE_VERSION,
        "game": self.game,
        "seed": self.seed,  # informational: the RNG state is what matters
        "training": self.training,
        "protocol": self.protocol,
        "rng": copy.deepcopy(self._rng.bit_generator.state),
        "ball_row": self._ball_row,
        "ball_col": self._ball_col,
        "paddle_col": self._paddle_col,
        "stacker": self._stacker.get_state(),
        "episode_return": self._episode_return,
        "episode_length": self._episode_length,
        "needs_reset": self._needs_reset,
    }

  def set_state(self, state: dict) -> None:
    """Restores a :meth:`get_state` dict (from this or another CatchEnv). A state of
    another game (an ``AtariEnv`` state) or of the other env protocol is refused."""
    if state.get("game") != NAME or state.get("version") != _STATE_VERSION:
      raise ValueError(
          f"not a CatchEnv state (game {state.get('game')!r}, version " f"{state.get('version')!r})"
      )
    if state["protocol"] != self.protocol:
      raise ValueError(
          f"this CatchEnv state was saved by a {state['protocol']!r}-protocol "
          f"env; this env has protocol {self.protocol!r}"
      )
    rng = np.random.default_rng()
    rng.bit_generator.state = copy.deepcopy(state["rng"])
    self._rng = rng
    self.seed = int(state["seed"])
    self.training = bool(state["training"])
    self._ball_row = int(state["ball_row"])
    self._ball_col = int(state["ball_col"])
    self._paddle_col = int(state["paddle_col"])
    self._stacker.set_state(state["stacker"])
    self._episode_return = float(state["episode_return"])
    self._episode_length = int(state["episode_length"])
    self._needs_reset = bool(state["needs_reset"])

  def close(self) -> None:
    pass


__all__ = [
    "CatchEnv",
    "render",
    "NAME",
    "ROWS",
    "COLUMNS",
    "EPISODE_LENGTH",
    "MOVES",
    "ALE_ACTIONS",
    "ACTION_MEANINGS",
]
