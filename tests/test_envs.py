"""Tests of the Atari 100k environment package: every protocol rule as a check that can fail."""

import pickle

import numpy as np
import pytest

from envs import (
    GAMES,
    AtariEnv,
    FrameStacker,
    clip_reward,
    episode_seed,
    evaluate,
    get_game,
    human_normalized_score,
    published_score,
)
from state_asserts import assert_same_state  # tests/state_asserts.py


def _random_actions(n, num_actions, seed=0):
  return np.random.default_rng(seed).integers(num_actions, size=n)


def _frame_number(env):
  return env.ale.getEpisodeFrameNumber()


# ----------------------------------------------------------------------------------- games
def test_26_games_and_name_lookup():
  assert len(GAMES) == 26
  assert "MsPacman" in GAMES and "PrivateEye" in GAMES and "UpNDown" in GAMES
  for spelling in ("ms_pacman", "mspacman", "MsPacman", "MSPACMAN"):
    game = get_game(spelling)
    assert (game.name, game.rom, game.ale_id) == ("MsPacman", "ms_pacman", "ALE/MsPacman-v5")
  assert get_game("up_n_down").name == "UpNDown"


def test_unknown_game_error_lists_valid_names():
  with pytest.raises(ValueError) as err:
    get_game("Tetris")
  assert "Tetris" in str(err.value)
  assert all(name in str(err.value) for name in GAMES)


def test_human_normalized_score():
  assert human_normalized_score("pong", -20.7) == pytest.approx(0.0)
  assert human_normalized_score("Pong", 14.6) == pytest.approx(1.0)
  assert human_normalized_score("breakout", 30.5 + 28.8) == pytest.approx(2.0)
  # The published aggregates (SPR: Schwarzer et al., ICLR 2021, mean HNS 0.704, median 0.415;
  # BBF: Schwarzer et al., ICML 2023, mean 2.245), recomputed from the per-game scores in
  # envs/scores.csv.
  spr = [human_normalized_score(g, published_score(g, "SPR")) for g in GAMES]
  assert np.mean(spr) == pytest.approx(0.703, abs=2e-3)  # paper: 0.704
  assert np.median(spr) == pytest.approx(0.415, abs=2e-3)
  bbf = [human_normalized_score(g, published_score(g, "bbf")) for g in GAMES]
  assert np.mean(bbf) == pytest.approx(2.247, abs=2e-3)  # paper: 2.245


# -------------------------------------------------------------------------------- protocol
def test_ale_settings_sticky_cap_frameskip():
  env = AtariEnv("Pong", 0)
  assert env.ale.getFloat("repeat_action_probability") == 0.0
  assert env.ale.getInt("max_num_frames_per_episode") == 108_000
  assert env._core._env.unwrapped._frameskip == 1  # the only frame skip is AtariPreprocessing's
  env.reset()
  before = _frame_number(env)
  env.step(0)
  assert _frame_number(env) - before == 4
  sticky = AtariEnv("Pong", 0, sticky=0.25)
  assert sticky.ale.getFloat("repeat_action_probability") == pytest.approx(0.25)


@pytest.mark.parametrize(
    "game,n", [("Pong", 6), ("Breakout", 4), ("MsPacman", 9), ("Freeway", 3), ("Seaquest", 18)]
)
def test_minimal_action_set(game, n):
  assert AtariEnv(game, 0).num_actions == n


def test_frame_and_stack_shape():
  env = AtariEnv("Pong", 0)
  frame = env.reset()
  assert frame.shape == (84, 84) and frame.dtype == np.uint8
  frame, reward, terminal, info = env.step(1)
  assert frame.shape == (84, 84) and frame.dtype == np.uint8
  assert isinstance(reward, float) and isinstance(terminal, bool)
  assert env.stack.shape == (4, 84, 84) and env.stack.dtype == np.uint8
  np.testing.assert_array_equal(env.stack[-1], frame)


def test_noop_starts_are_random_in_1_to_30():
  env = AtariEnv("Breakout", 0)
  counts = []
  for _ in range(12):  # successive games of one env draw new no-op counts
    env.reset()
    counts.append(_frame_number(env))
  assert all(1 <= c <= 30 for c in counts)
  assert len(set(counts)) > 3
  # Breakout's screen is static before launch; Pong's is not, so the no-ops show in frames.
  first = [AtariEnv("Pong", seed).reset() for seed in range(3)]
  assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[0], first[2])


def test_same_seed_same_frames_other_seed_differs():
  def rollout(seed):
    env = AtariEnv("Breakout", seed)
    frames = [env.reset()]
    for a in _random_actions(60, env.num_actions):
      frames.append(env.step(a)[0])
    return np.stack(frames), _frame_number(env)

  a, b = rollout(3), rollout(3)
  np.testing.assert_array_equal(a[0], b[0])
  others = [rollout(s) for s in (4, 5)]
  assert any(not np.array_equal(a[0], o[0]) for o in others)


def test_reset_with_seed_equals_a_fresh_env():
  reused = AtariEnv("Breakout", 5, sticky=0.25)  # sticky: the ALE RNG must be re-seeded too
  reused.reset()
  for a in _random_actions(30, 4):
    reused.step(a)
  fresh = AtariEnv("Breakout", 7, sticky=0.25)
  np.testing.assert_array_equal(reused.reset(seed=7), fresh.reset())
  for a in _random_actions(100, 4, seed=1):
    f1, r1, t1, _ = reused.step(a)
    f2, r2, t2, _ = fresh.step(a)
    np.testing.assert_array_equal(f1, f2)
    assert (r1, t1) == (r2, t2)


def test_episode_cap_is_a_terminal_and_resets_the_game():
  cap = 400
  env = AtariEnv("Pong", 0, max_frames_per_episode=cap)
  env.reset()
  noops = _frame_number(env)
  for step in range(1, 200):
    _, _, terminal, info = env.step(0)
    if terminal:
      break
  assert terminal and info["game_over"] and info["truncated"]
  assert step == -(-(cap - noops) // 4)  # ceil: the cap counts emulator frames incl. no-ops
  assert info["episode_length"] == step
  assert 1 <= _frame_number(env) <= 30  # a new game with new no-ops has started
  np.testing.assert_array_equal(env.stack[:3], 0)


def _play_until_first_life_loss(training):
  env = AtariEnv("Breakout", 1, training=training)
  env.reset()
  lives0 = env.lives
  for step, a in enumerate(_random_actions(2000, env.num_actions), 1):
    frame_before = _frame_number(env)
    frame, _, terminal, info = env.step(a)
    if info["life_lost"]:
      return env, step, terminal, info, frame, frame_before, lives0
  raise AssertionError("no life lost")


def test_life_loss_is_a_learner_terminal_without_game_reset():
  env, step, terminal, info, frame, frame_before, lives0 = _play_until_first_life_loss(True)
  assert terminal and not info["game_over"]
  assert info["lives"] == lives0 - 1
  assert _frame_number(env) == frame_before + 4  # same game, the emulator went on
  stack = env.stack  # the learner episode restarted: zeros except the newest frame
  np.testing.assert_array_equal(stack[:3], 0)
  np.testing.assert_array_equal(stack[3], frame)
  # The scored episode spans all lives: it ends at game over with the full length.
  total = step
  for a in _random_actions(5000, env.num_actions, seed=1):
    _, _, terminal, info = env.step(a)
    total += 1
    if info["game_over"]:
      break
  assert info["game_over"] and info["lives"] == 0 and info["episode_length"] == total


def test_eval_mode_plays_through_life_loss():
  _, step_t, _, _, frame_t, _, _ = _play_until_first_life_loss(True)
  env, step_e, terminal, info, frame_e, _, _ = _play_until_first_life_loss(False)
  assert step_e == step_t
  np.testing.assert_array_equal(frame_e, frame_t)  # same emulator path
  assert info["life_lost"] and not terminal
  assert np.any(env.stack[:3])  # the stack is not restarted


def test_step_before_reset_raises():
  with pytest.raises(RuntimeError):
    AtariEnv("Pong", 0).step(0)


def test_clip_reward():
  np.testing.assert_array_equal(clip_reward(np.array([-7.0, 0.0, 0.5, 200.0])), [-1, 0, 1, 1])
  assert clip_reward(-3.0) == -1.0


# -------------------------------------------------------------------------------- stacking
def test_frame_stacker_zero_padding_rule():
  stacker = FrameStacker(4, (2, 2))
  frames = [np.full((2, 2), i + 1, np.uint8) for i in range(6)]
  s = stacker.reset(frames[0])
  np.testing.assert_array_equal(s[:, 0, 0], [0, 0, 0, 1])
  s = stacker.push(frames[1])
  np.testing.assert_array_equal(s[:, 0, 0], [0, 0, 1, 2])
  for f in frames[2:]:
    s = stacker.push(f)
  np.testing.assert_array_equal(s[:, 0, 0], [3, 4, 5, 6])  # oldest first
  s = stacker.reset(frames[0])
  np.testing.assert_array_equal(s[:, 0, 0], [0, 0, 0, 1])
  s[:] = 9  # returned stacks are copies
  np.testing.assert_array_equal(stacker.stack[:, 0, 0], [0, 0, 0, 1])


def test_reset_stack_is_zero_except_newest():
  env = AtariEnv("Pong", 0)
  frame = env.reset()
  assert frame.any()
  np.testing.assert_array_equal(env.stack[:3], 0)
  np.testing.assert_array_equal(env.stack[3], frame)


# ---------------------------------------------------------------------------- save/restore


@pytest.mark.parametrize("sticky", [0.0, 0.25])
def test_get_state_set_state_is_bit_identical(sticky):
  # Sticky actions and a small cap: the M steps cross a game reset (new no-ops drawn) and
  # use the ALE's sticky-action RNG, so every piece of state matters. The save point is
  # mid-game with a score and lives lost, so no counter equals a fresh env's.
  kwargs = dict(sticky=sticky, max_frames_per_episode=1600)
  env = AtariEnv("Breakout", 11, **kwargs)
  env.reset()
  rng = np.random.default_rng(2)
  for _ in range(1000):
    env.step(rng.integers(4))
    if env.lives <= 3 and env.get_state()["episode_return"] > 0:
      break
  state = pickle.loads(pickle.dumps(env.get_state()))
  assert state["episode_return"] > 0 and state["lives"] <= 3
  actions = rng.integers(4, size=250)

  def run(e):
    out = []
    for a in actions:
      frame, r, t, info = e.step(a)
      out.append((frame, r, t, info, e.stack))
    return out, e.get_state()

  expected, end_state = run(env)
  assert sum(o[3]["game_over"] for o in expected) >= 1  # a game reset within the M steps
  fresh = AtariEnv("Breakout", 999, **kwargs)
  fresh.set_state(state)
  assert_same_state(fresh.get_state(), state)  # nothing is left out of the restore
  got, got_end_state = run(fresh)
  for (f1, r1, t1, i1, s1), (f2, r2, t2, i2, s2) in zip(expected, got):
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(s1, s2)
    assert (r1, t1, i1) == (r2, t2, i2)
  assert_same_state(got_end_state, end_state)


def test_set_state_rejects_other_game():
  state = AtariEnv("Pong", 0).get_state()
  with pytest.raises(ValueError, match="game"):
    AtariEnv("Breakout", 0).set_state(state)


# ------------------------------------------------------------------------------ evaluation
def _manual_episode(game, seed, episode, epsilon, greedy_action, **kwargs):
  """One evaluation episode played by hand, the way evaluate() is specified to."""
  env = AtariEnv(game, episode_seed(seed, episode), training=False, **kwargs)
  env.reset()
  rng = np.random.default_rng([seed, episode, 1])
  lives_lost = 0
  while True:
    explore, random_action = rng.random() < epsilon, rng.integers(env.num_actions)
    _, _, terminal, info = env.step(random_action if explore else greedy_action)
    lives_lost += info["life_lost"]
    if terminal:
      return (info["episode_return"], info["episode_length"]), lives_lost


def test_evaluate_plays_full_games_independent_of_parallelism():
  shapes = []

  def act_fn(stacks):
    shapes.append((stacks.shape, stacks.dtype))
    return np.zeros(len(stacks), np.int64)

  results = evaluate(act_fn, "Breakout", num_episodes=3, seed=5, epsilon=1.0)
  assert (
      evaluate(act_fn, "Breakout", num_episodes=3, seed=5, epsilon=1.0, max_parallel=2) == results
  )
  for episode, result in enumerate(results):
    manual, lives_lost = _manual_episode("Breakout", 5, episode, 1.0, 0)
    assert result == manual
    assert lives_lost == 4  # full game: all 5 lives played (the last one is game over)
  assert {s for s, _ in shapes} <= {(3, 4, 84, 84), (2, 4, 84, 84), (1, 4, 84, 84)}
  assert all(d == np.uint8 for _, d in shapes)


def test_evaluate_uses_greedy_actions_and_cap():
  first_batch = []

  def act_fn(stacks):
    if not first_batch:
      first_batch.append(stacks.copy())
    return np.zeros(len(stacks), np.int64)  # NOOP: Breakout never launches the ball

  results = evaluate(
      act_fn, "Breakout", num_episodes=2, seed=0, epsilon=0.0, max_frames_per_episode=300
  )
  for episode, (score, length) in enumerate(results):
    noops = AtariEnv("Breakout", episode_seed(0, episode))
    noops.reset()
    assert score == 0.0 and length == -(-(300 - _frame_number(noops)) // 4)
  np.testing.assert_array_equal(first_batch[0][:, :3], 0)  # zero-padded start stacks
  assert first_batch[0][:, 3].any()
