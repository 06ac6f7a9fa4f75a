"""envs/catch.py: bsuite's Catch with AtariEnv's interface - the dynamics by hand, the frames, the
stacks, save/restore, seeding, the game table (a non-Atari game), the env pool and evaluation,
and `python -m launch.train --game=catch` end to end (final evaluation and final.json)."""

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs import (
    GAMES,
    AtariEnv,
    CatchEnv,
    canonical_name,
    evaluate,
    get_game,
    human_normalized_score,
    is_atari,
    make_env,
)
from envs import catch
from envs.pool import EnvPool

ROOT = Path(__file__).resolve().parents[1]
LEFT, STAY, RIGHT = 0, 1, 2


def _decode(frame):
  """(ball row, ball column, paddle column) read back from a frame's pixels (cell centres)."""
  cells = frame[
      catch.TOP + catch.CELL_HEIGHT // 2 :: catch.CELL_HEIGHT,
      catch.LEFT + catch.CELL_WIDTH // 2 :: catch.CELL_WIDTH,
  ][: catch.ROWS, : catch.COLUMNS]
  paddle = np.flatnonzero(cells[-1])
  balls = np.argwhere(cells[:-1])
  assert len(paddle) == 1 and len(balls) == 1, cells
  return int(balls[0][0]), int(balls[0][1]), int(paddle[0])


def _oracle(stacks):
  """The optimal policy, from pixels: move the paddle toward the ball's column."""
  actions = []
  for stack in stacks:
    if not stack.any():  # padding rows of the evaluator's batch
      actions.append(STAY)
      continue
    _, ball, paddle = _decode(stack[-1])
    actions.append(STAY + int(np.sign(ball - paddle)))
  return np.array(actions)


# -------------------------------------------------------------------------------- dynamics
def test_ball_falls_one_row_per_step_and_the_episode_lasts_9_steps():
  env = CatchEnv("catch", seed=3)
  frame = env.reset()
  ball_row, ball_col, paddle = env.board
  assert (ball_row, paddle) == (0, 2)  # top row; the paddle starts in the middle column
  assert _decode(frame) == env.board
  for t in range(1, 9):
    frame, reward, terminal, info = env.step(STAY)
    assert env.board == (t, ball_col, 2) and _decode(frame) == env.board
    assert (reward, terminal) == (0.0, False)
    assert info == {"lives": 0, "life_lost": False, "game_over": False, "truncated": False}
  frame, reward, terminal, info = env.step(STAY)  # the 9th step: the ball reaches row 9
  assert terminal and info["game_over"] and not info["truncated"] and not info["life_lost"]
  assert info["episode_length"] == 9
  assert reward == info["episode_return"] == (1.0 if ball_col == 2 else -1.0)
  # Auto-reset: the returned frame is the next episode's first, the stack restarted at it.
  assert env.board[0] == 0 and env.board[2] == 2 and _decode(frame) == env.board
  stack = env.stack
  assert not stack[:3].any()
  np.testing.assert_array_equal(stack[-1], frame)


def test_catch_is_plus_one_and_a_miss_is_minus_one():
  env = CatchEnv("catch", seed=0)
  env.reset()
  returns = {}
  for episode in range(40):
    _, ball_col, paddle = env.board
    catch_it = episode % 2 == 0
    # Catch: walk to the ball's column. Miss: walk to the farthest wall from it.
    target = ball_col if catch_it else (0 if ball_col >= 2 else 4)
    for _ in range(9):
      _, _, paddle = env.board
      _, reward, terminal, info = env.step(STAY + int(np.sign(target - paddle)))
    assert terminal
    assert reward == info["episode_return"] == (1.0 if catch_it else -1.0)
    returns.setdefault(ball_col, []).append(reward)
  assert sorted(returns) == [0, 1, 2, 3, 4]  # every starting column in 40 episodes


def test_paddle_moves_and_is_clipped_at_the_walls():
  env = CatchEnv("catch", seed=1)
  env.reset()
  paddles = []
  for action in [LEFT] * 4 + [RIGHT] * 5:  # 2 -> 1 -> 0 -> 0 -> 0, then -> 1, 2, 3, 4, 4
    env.step(action)
    paddles.append(env.board[2])
  assert paddles == [1, 0, 0, 0, 1, 2, 3, 4, 2]  # the last step ended the episode: reset to 2
  env.reset()
  for _ in range(8):
    env.step(RIGHT)
  assert env.board[2] == 4
  with pytest.raises(ValueError):
    env.step(3)


def test_step_before_reset_is_an_error():
  with pytest.raises(RuntimeError):
    CatchEnv("catch", seed=0).step(STAY)


# ------------------------------------------------------------------------------- rendering
def test_frames_are_84x84_uint8_with_an_8x16_block_per_object():
  frame = catch.render(3, 1, 4)
  assert frame.shape == (84, 84) and frame.dtype == np.uint8
  assert set(np.unique(frame)) == {0, 255}
  assert int((frame == 255).sum()) == 2 * 8 * 16
  # Ball at row 3, column 1: pixels [2 + 24, 2 + 32) x [2 + 16, 2 + 32).
  assert frame[26:34, 18:34].min() == 255
  assert frame[25, 18:34].max() == 0 and frame[34, 18:34].max() == 0
  # Paddle at row 9, column 4: the bottom-right cell; the 2-pixel border stays black.
  assert frame[74:82, 66:82].min() == 255
  assert frame[:2].max() == frame[82:].max() == frame[:, :2].max() == frame[:, 82:].max() == 0
  with pytest.raises(ValueError):
    catch.render(0, 5, 0)


def test_stack_is_the_zero_padded_last_four_frames():
  env = CatchEnv("catch", seed=2)
  frames = [env.reset()]
  assert env.stack.shape == (4, 84, 84) and env.stack.dtype == np.uint8
  for t in range(6):
    frames.append(env.step(t % 3)[0])
    expected = np.zeros((4, 84, 84), np.uint8)
    recent = frames[-4:]
    expected[4 - len(recent) :] = recent
    np.testing.assert_array_equal(env.stack, expected)


# ------------------------------------------------------------------------- state and seeds
def test_save_restore_is_exact_into_a_fresh_env_and_through_pickle():
  rng = np.random.default_rng(0)
  env = CatchEnv("catch", seed=5, protocol="spr")
  env.reset()
  for _ in range(23):  # mid-episode, after two auto-resets
    env.step(int(rng.integers(3)))
  state = pickle.loads(pickle.dumps(env.get_state()))
  actions = rng.integers(3, size=60)
  original = [env.step(int(a)) for a in actions]
  twin = CatchEnv("catch", seed=999, protocol="spr")  # another seed: the state decides
  twin.set_state(state)
  for (frame, reward, terminal, info), a in zip(original, actions):
    f2, r2, t2, i2 = twin.step(int(a))
    np.testing.assert_array_equal(f2, frame)
    assert (r2, t2, i2) == (reward, terminal, info)
  np.testing.assert_array_equal(twin.stack, env.stack)
  assert twin.board == env.board


def test_foreign_states_are_refused():
  env = CatchEnv("catch", seed=0)
  env.reset()
  state = env.get_state()
  with pytest.raises(ValueError, match="protocol"):
    CatchEnv("catch", seed=0, protocol="spr").set_state(state)
  with pytest.raises(ValueError, match="not a CatchEnv state"):
    env.set_state(dict(state, game="Pong"))
  with pytest.raises(ValueError):
    AtariEnv("Pong", seed=0).set_state(state)


def test_seeding_is_deterministic():
  def columns(env, n=30):
    cols = [env.board[1]]
    for _ in range(n * 9):
      _, _, terminal, _ = env.step(STAY)
      if terminal:
        cols.append(env.board[1])
    return cols

  a, b, c = (CatchEnv("catch", seed=s) for s in (7, 7, 8))
  for env in (a, b, c):
    env.reset()
  cols_a = columns(a)
  assert cols_a == columns(b) and cols_a != columns(c)
  assert len(set(cols_a)) == 5
  c.reset(seed=7)  # re-seeding: as a new env with that seed
  assert columns(c) == cols_a


def test_atari_only_settings_are_refused_or_ignored():
  with pytest.raises(ValueError, match="sticky"):
    CatchEnv("catch", seed=0, sticky=0.25)
  with pytest.raises(ValueError, match="protocol"):
    CatchEnv("catch", seed=0, protocol="gym")
  with pytest.raises(ValueError, match="no cap"):
    CatchEnv("catch", seed=0, max_frames_per_episode=100)
  with pytest.raises(ValueError, match="no cap"):
    CatchEnv("catch", seed=0, horizon=5)
  with pytest.raises(ValueError, match="Catch"):
    CatchEnv("pong", seed=0)
  a, b = CatchEnv("catch", seed=4, noop_max=0), CatchEnv("catch", seed=4)  # no no-ops: ignored
  np.testing.assert_array_equal(a.reset(), b.reset())
  env = CatchEnv("catch", seed=0)
  assert env.num_actions == 3 and env.action_meanings == ["LEFT", "NOOP", "RIGHT"]
  assert env.lives == 0


def test_action_set_is_the_ale_ids_of_left_noop_right():
  import ale_py

  assert CatchEnv("catch", seed=0).action_set == [
      ale_py.Action.LEFT.value,
      ale_py.Action.NOOP.value,
      ale_py.Action.RIGHT.value,
  ]


# ---------------------------------------------------------------------------- game tables
def test_catch_is_a_game_but_not_an_atari_game():
  for spelling in ("catch", "Catch", "CATCH"):
    assert canonical_name(spelling) == "Catch"
    assert not is_atari(spelling)
  assert "Catch" not in GAMES and len(GAMES) == 26
  assert is_atari("ms_pacman")
  with pytest.raises(ValueError, match="not an Atari 100k game"):
    get_game("catch")
  with pytest.raises(ValueError):
    human_normalized_score("catch", 1.0)
  with pytest.raises(ValueError, match="Catch"):  # the unknown-game message names it
    canonical_name("cathc")
  assert isinstance(make_env("catch", seed=0, training=False, protocol="spr"), CatchEnv)
  assert isinstance(make_env("pong", seed=0), AtariEnv)


def test_report_tables_never_include_catch():
  from launch import grid, report

  assert "catch" not in report.score_table() and "Catch" not in grid.parse_games("all")
  with pytest.raises(grid.GridError):
    grid.atari_game("catch")


# ------------------------------------------------------------------- pool and evaluation
@pytest.mark.parametrize("workers", [0, 1])
def test_evaluation_of_the_pixel_oracle_catches_every_ball(workers):
  with EnvPool(workers) as pool:
    episodes = evaluate(
        _oracle,
        "catch",
        num_episodes=12,
        seed=3,
        epsilon=0.0,
        pool=pool,
        protocol="spr",
        max_parallel=5,
    )
  assert episodes == [(1.0, 9)] * 12
  # The fixed "stay" policy catches only the balls of the middle column.
  stay = evaluate(lambda s: np.full(len(s), STAY), "catch", num_episodes=50, seed=3, epsilon=0.0)
  assert {length for _, length in stay} == {9}
  assert -1.0 < np.mean([score for score, _ in stay]) < 0.0


def test_pool_envs_equal_local_envs_and_restore_exactly():
  rng = np.random.default_rng(1)
  with EnvPool(1) as pool:
    handles = pool.add([dict(game="catch", seed=s, training=True) for s in range(3)])
    envs = [make_env("catch", seed=s, training=True) for s in range(3)]
    frames = pool.reset(handles)
    for i, env in enumerate(envs):
      np.testing.assert_array_equal(frames[i], env.reset())
    for step in range(30):
      actions = [int(a) for a in rng.integers(3, size=3)]
      frames, rewards, terminals, infos = pool.step(handles, actions)
      for i, (env, a) in enumerate(zip(envs, actions)):
        frame, reward, terminal, info = env.step(a)
        np.testing.assert_array_equal(frames[i], frame)
        assert (rewards[i], terminals[i], infos[i]) == (reward, terminal, info)
        np.testing.assert_array_equal(pool.stack(handles[i]), env.stack)
      if step == 14:
        saved = pool.get_state(handles)
        later = [env.get_state() for env in envs]
    pool.set_state(handles, saved)
    for env, state in zip(envs, later):
      env.set_state(state)
    for _ in range(15):
      actions = [int(a) for a in rng.integers(3, size=3)]
      frames, rewards, _, _ = pool.step(handles, actions)
      for i, (env, a) in enumerate(zip(envs, actions)):
        np.testing.assert_array_equal(frames[i], env.step(a)[0])


# ------------------------------------------------------------------------ trainer CLI
def test_train_cli_on_catch_end_to_end(tmp_path):
  """A tiny `smoke` run on Catch through `python -m launch.train`: training, the periodic and
  the final evaluation, eval.csv and final.json (HNS NaN: Catch has no human score)."""
  workdir = tmp_path / "run"
  cmd = [
      sys.executable,
      "-m",
      "launch.train",
      "--config=smoke",
      "--game=catch",
      "--seed=0",
      f"--workdir={workdir}",
      "--steps=120",
      "--learn_start=40",
      "--eval_every=60",
      "--eval_every_episodes=2",
      "--eval_episodes=3",
      "--log_every=60",
      "--checkpoint_every=60",
  ]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Catch seed 0: mean score" in proc.stdout
  config = json.loads((workdir / "config.json").read_text())
  assert config["game"] == "Catch" and config["config_name"] == "smoke"
  final = json.loads((workdir / "final.json").read_text())
  assert final["game"] == "Catch" and final["steps"] == 120 and final["eval_episodes"] == 3
  assert math.isnan(final["hns"])
  # 120 steps of 9-step episodes: 13 finished training episodes.
  assert final["train_episodes"] == 13
  rows = (workdir / "eval.csv").read_text().splitlines()
  assert rows[0] == "episode,score,length" and len(rows) == 4
  scores = [float(r.split(",")[1]) for r in rows[1:]]
  assert all(r.endswith(",9") for r in rows[1:]) and set(scores) <= {-1.0, 1.0}
  assert final["mean_score"] == pytest.approx(np.mean(scores))
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [l for l in lines if "eval_mean_score" in l]
  assert [l["step"] for l in evals] == [60] and evals[0]["eval_episodes"] == 2
  assert all(
      l["train_return"] in (None,) or -1 <= l["train_return"] <= 1
      for l in lines
      if "train_return" in l
  )


def test_multi_run_cli_on_catch(tmp_path):
  """`--seeds` (agents/spr/multi_trainer.py) builds its envs through the same factory."""
  cmd = [
      sys.executable,
      "-m",
      "launch.train",
      "--config=smoke",
      "--game=catch",
      "--seeds=0,1",
      f"--workdir={tmp_path}",
      "--steps=40",
      "--learn_start=20",
      "--eval_episodes=2",
      "--log_every=20",
      "--checkpoint_every=40",
  ]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for seed in (0, 1):
    final = json.loads((tmp_path / "Catch" / f"seed_{seed}" / "final.json").read_text())
    assert final["game"] == "Catch" and final["seed"] == seed and final["steps"] == 40
    assert math.isnan(final["hns"]) and final["train_episodes"] == 4
