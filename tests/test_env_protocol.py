"""The two env protocols of envs/atari.py, each against its source, in lockstep.

- "spr": against tests/spr_reference_env.py, a transcription of mila-iqia/spr
  ``src/rlpyt_atari_env.py`` onto ale-py (no-ops off on both sides so that the emulators agree).
- "dopamine": against a plain gymnasium loop (``gym.make`` + ``AtariPreprocessing`` + a 4-stack
  kept here).
Plus the "spr" episode cap, exact save/restore, state protocol checks, evaluation and the pool
with the "spr" protocol.
"""

import pickle

import ale_py
import cv2
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import AtariPreprocessing

from envs import GAMES, get_game
from envs.atari import MAX_FRAMES_PER_EPISODE, NOOP_MAX, SPR_HORIZON, AtariEnv
from envs.evaluation import episode_seed, evaluate
from envs.pool import EnvPool
from spr_reference_env import ReferenceAtariEnv  # tests/spr_reference_env.py
from state_asserts import assert_same_state  # tests/state_asserts.py

gym.register_envs(ale_py)


def _frame_number(env):
  return env.ale.getEpisodeFrameNumber()


# ------------------------------------------------------------------------- "spr" lockstep
# (game, steps, horizon): games with lives (Breakout, MsPacman), Pong (a game over ~900 random
# steps), Boxing (no lives, 1785-step games) with a short horizon so that the cap ends episodes.
SPR_CASES = [
    ("Breakout", 1500, SPR_HORIZON),
    ("MsPacman", 1500, SPR_HORIZON),
    ("Pong", 1200, SPR_HORIZON),
    ("Boxing", 1000, 300),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("game,steps,horizon", SPR_CASES, ids=[c[0] for c in SPR_CASES])
def test_spr_protocol_is_the_reference_env_in_lockstep(game, steps, horizon, training):
  rom = get_game(game).rom
  ref = ReferenceAtariEnv(
      game=rom,
      clip_reward=False,
      episodic_lives=training,
      max_start_noops=0,
      horizon=horizon,
      seed=0,
  )
  env = AtariEnv(game, seed=3, training=training, noop_max=0, protocol="spr", horizon=horizon)
  frame = env.reset()
  obs = ref.get_obs()[:, 0]  # (4, 1, 84, 84) -> (4, 84, 84)
  np.testing.assert_array_equal(env.stack, obs)
  np.testing.assert_array_equal(frame, obs[-1])
  assert env.action_set == [int(a.value) for a in ref._action_set]
  rng = np.random.default_rng([sum(map(ord, game)), training])
  counts = {"life_lost": 0, "game_over": 0, "truncated": 0}
  ref_return, ref_length = 0.0, 0
  for step in range(steps):
    action = int(rng.integers(env.num_actions))
    ref_lives = ref._lives
    o, r, d, info = ref.step(action)
    frame, reward, terminal, env_info = env.step(action)
    ref_return += float(r)
    ref_length += 1
    ref_life_lost = ref._lives != ref_lives  # the reference re-read its lives: a loss
    assert reward == float(r), step
    assert terminal == bool(d), step
    assert env_info["game_over"] == bool(info.traj_done), step
    assert env_info["life_lost"] == (ref_life_lost and not info.traj_done), step
    assert env_info["lives"] == ref.ale.lives(), step
    if info.traj_done:
      assert env_info["truncated"] == (not ref.ale.game_over()), step
      assert env_info["episode_return"] == ref_return, step
      assert env_info["episode_length"] == ref_length, step
      ref_return, ref_length = 0.0, 0
      o = ref.reset()  # rlpyt's sampler resets the env on traj_done
    else:
      assert not env_info["truncated"]
    for key in counts:
      counts[key] += env_info[key]
    np.testing.assert_array_equal(env.stack, o[:, 0], err_msg=f"step {step}")
    np.testing.assert_array_equal(frame, o[-1, 0], err_msg=f"step {step}")
  # The check went through the events that differ from a plain frame skip.
  if game in ("Breakout", "MsPacman"):
    assert counts["life_lost"] >= 3 and counts["game_over"] >= 2, counts
  elif game == "Pong":
    assert counts["game_over"] >= 1 and counts["truncated"] == 0, counts
  else:
    assert counts["truncated"] >= 2, counts


def test_spr_training_life_loss_frame_is_not_max_pooled_and_takes_an_extra_frame():
  """At a life loss the "spr" env plays one NOOP frame more (both modes); in training the new
  learner episode's first frame is the screen alone, in evaluation max-pooled as usual."""

  def until_life_loss(training):
    env = AtariEnv("Breakout", 1, training=training, protocol="spr")
    env.reset()
    for a in np.random.default_rng(0).integers(4, size=3000):
      before = _frame_number(env)
      frame, _, terminal, info = env.step(a)
      if info["life_lost"]:
        return env, frame, terminal, _frame_number(env) - before
    raise AssertionError("no life lost")

  env_t, frame_t, terminal_t, frames_t = until_life_loss(True)
  env_e, frame_e, terminal_e, frames_e = until_life_loss(False)
  assert frames_t == frames_e == 5  # 4 frames of the action + the NOOP frame
  assert terminal_t and not terminal_e
  screen = env_t.ale.getScreenGrayscale()
  np.testing.assert_array_equal(frame_t, cv2.resize(screen, (84, 84)))  # the screen alone
  np.testing.assert_array_equal(env_t.stack[:3], 0)
  assert np.any(env_e.stack[:3])  # evaluation: the game and the stack go on


def test_spr_no_life_is_lost_in_the_first_frames_of_any_game():
  """The reference restarts a game start if a life is lost during its no-ops (and then appends
  a second frame to the stack). From a game reset no game of the 26 loses a life within the
  31 frames a game start plays (1 + up to 30 no-ops), so every "spr" game starts with the
  zero-padded stack that the pool and replay rebuild."""
  ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
  for game in GAMES:
    ale = ale_py.ALEInterface()
    ale.setFloat("repeat_action_probability", 0.0)
    ale.loadROM(str(ale_py.roms.get_rom_path(get_game(game).rom)))
    ale.reset_game()
    ale.act(ale_py.Action.NOOP)
    lives = ale.lives()  # as _life_reset reads them
    for _ in range(NOOP_MAX):
      ale.act(ale_py.Action.NOOP)
      assert not (ale.lives() < lives and ale.lives() > 0), game


def test_spr_noops_are_1_to_30_single_frames_after_the_life_reset_frame():
  env = AtariEnv("Breakout", 0, protocol="spr")
  counts = []
  for _ in range(12):
    env.reset()
    counts.append(_frame_number(env))
  assert all(2 <= c <= NOOP_MAX + 1 for c in counts)  # 1 life-reset frame + 1..30 no-ops
  assert len(set(counts)) > 3
  again = AtariEnv("Breakout", 0, protocol="spr")
  assert [again.reset() is not None and _frame_number(again) for _ in range(12)] == counts


# --------------------------------------------------------------------------- "spr" the cap
def _noop_steps_until_terminal(env, limit):
  """Steps NOOP (Breakout: the ball is never launched, no life is lost) to the first terminal."""
  for step in range(1, limit + 1):
    _, _, terminal, info = env.step(0)
    if terminal:
      return step, info
  raise AssertionError("no terminal")


def test_spr_cap_ends_the_episode_on_step_horizon_plus_one():
  # step_counter is 0 after the no-ops and compared (>= horizon) before it is incremented: the
  # step taken with counter == horizon ends the game, its (horizon + 1)-th.
  for horizon in (0, 1, 50):
    env = AtariEnv("Breakout", 0, protocol="spr", horizon=horizon)
    env.reset()
    step, info = _noop_steps_until_terminal(env, 100)
    assert step == horizon + 1
    assert info["game_over"] and info["truncated"] and info["episode_length"] == step
    np.testing.assert_array_equal(env.stack[:3], 0)  # a new game has started
    ref = ReferenceAtariEnv(game="breakout", clip_reward=False, horizon=horizon, seed=0)
    dones = [ref.step(0).env_info.traj_done for _ in range(horizon + 1)]
    assert dones == [False] * horizon + [True]  # the reference agrees
  # The default: 27,000 steps taken, the 27,001st ends the game (counter set via the state).
  env = AtariEnv("Breakout", 0, protocol="spr")
  env.reset()
  state = env.get_state()
  assert state["step_counter"] == 0 and SPR_HORIZON == 27_000
  env.set_state({**state, "step_counter": SPR_HORIZON - 10})
  step, info = _noop_steps_until_terminal(env, 100)
  assert step == 11 and info["truncated"]


# -------------------------------------------------------------------- "dopamine" lockstep
def _gym_env(game, max_frames):
  base = gym.make(
      get_game(game).ale_id,
      frameskip=1,
      repeat_action_probability=0.0,
      full_action_space=False,
      max_num_frames_per_episode=max_frames,
  )
  return AtariPreprocessing(
      base,
      noop_max=0,
      frame_skip=4,
      screen_size=84,
      terminal_on_life_loss=False,
      grayscale_obs=True,
  )


DOPAMINE_CASES = [
    ("Breakout", 1200, MAX_FRAMES_PER_EPISODE),
    ("MsPacman", 1200, MAX_FRAMES_PER_EPISODE),
    ("Pong", 1000, 1600),
]


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "game,steps,max_frames", DOPAMINE_CASES, ids=[c[0] for c in DOPAMINE_CASES]
)
def test_dopamine_protocol_is_a_plain_gymnasium_loop_in_lockstep(game, steps, max_frames, training):
  genv = _gym_env(game, max_frames)
  obs, ginfo = genv.reset(seed=0)
  lives = ginfo["lives"]
  stack = np.zeros((4, 84, 84), np.uint8)
  stack[-1] = obs
  env = AtariEnv(
      game, seed=5, training=training, noop_max=0, max_frames_per_episode=max_frames
  )  # protocol="dopamine" by default
  frame = env.reset()
  np.testing.assert_array_equal(frame, obs)
  rng = np.random.default_rng([sum(map(ord, game)), training, 1])
  counts = {"life_lost": 0, "game_over": 0, "truncated": 0}
  for step in range(steps):
    action = int(rng.integers(env.num_actions))
    obs, r, term, trunc, ginfo = genv.step(action)
    frame, reward, terminal, info = env.step(action)
    game_over = term or trunc
    life_lost = ginfo["lives"] < lives and ginfo["lives"] > 0 and not game_over
    lives = ginfo["lives"]
    assert (reward, terminal) == (float(r), game_over or (training and life_lost)), step
    assert (info["game_over"], info["life_lost"], info["truncated"]) == (
        game_over,
        life_lost,
        bool(trunc and not term),
    ), step
    if game_over:
      obs, ginfo = genv.reset()
      lives = ginfo["lives"]
    if game_over or (training and life_lost):
      stack[:] = 0
    else:
      stack[:-1] = stack[1:]
    stack[-1] = obs
    np.testing.assert_array_equal(frame, obs, err_msg=f"step {step}")
    np.testing.assert_array_equal(env.stack, stack, err_msg=f"step {step}")
    for key in counts:
      counts[key] += info[key]
  if game == "Pong":
    assert counts["truncated"] >= 2, counts
  else:
    assert counts["life_lost"] >= 3 and counts["game_over"] >= 1, counts


# ----------------------------------------------------------------------- state, arguments


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_spr_get_state_set_state_is_bit_identical(training):
  # A small horizon: the continuation crosses a game start (new no-ops drawn); the save point
  # is mid-game with a score and a life lost, so no counter equals a fresh env's.
  kwargs = dict(training=training, protocol="spr", horizon=400)
  env = AtariEnv("Breakout", 11, **kwargs)
  env.reset()
  rng = np.random.default_rng(2)
  for _ in range(1000):
    env.step(rng.integers(4))
    if env.lives <= 3 and env.get_state()["episode_return"] > 0:
      break
  state = pickle.loads(pickle.dumps(env.get_state()))
  assert state["episode_return"] > 0 and state["lives"] <= 3 and state["step_counter"] > 0
  actions = rng.integers(4, size=400)

  def run(e):
    out = []
    for a in actions:
      frame, r, t, info = e.step(a)
      out.append((frame, r, t, info, e.stack))
    return out, e.get_state()

  expected, end_state = run(env)
  assert sum(o[3]["game_over"] for o in expected) >= 1
  assert sum(o[3]["life_lost"] for o in expected) >= 1
  fresh = AtariEnv("Breakout", 999, **kwargs)
  fresh.set_state(state)
  assert_same_state(fresh.get_state(), state)
  got, got_end_state = run(fresh)
  for (f1, r1, t1, i1, s1), (f2, r2, t2, i2, s2) in zip(expected, got):
    np.testing.assert_array_equal(f1, f2)
    np.testing.assert_array_equal(s1, s2)
    assert (r1, t1, i1) == (r2, t2, i2)
  assert_same_state(got_end_state, end_state)


def test_states_do_not_cross_protocols():
  spr, dopamine = AtariEnv("Pong", 0, protocol="spr"), AtariEnv("Pong", 0)
  spr.reset()
  dopamine.reset()
  with pytest.raises(ValueError, match="'dopamine'-protocol env"):
    spr.set_state(dopamine.get_state())
  with pytest.raises(ValueError, match="'spr'-protocol env"):
    dopamine.set_state(spr.get_state())
  # A state saved before the protocols existed (version 1, no "protocol") is a dopamine state.
  old = {k: v for k, v in dopamine.get_state().items() if k != "protocol"}
  old["version"] = 1
  AtariEnv("Pong", 1).set_state(old)
  with pytest.raises(ValueError, match="'dopamine'-protocol env"):
    spr.set_state(old)
  with pytest.raises(ValueError, match="horizon"):
    AtariEnv("Pong", 0, protocol="spr", horizon=100).set_state(spr.get_state())


def test_constructor_refuses_what_a_protocol_does_not_have():
  with pytest.raises(ValueError, match="sticky"):
    AtariEnv("Pong", 0, protocol="spr", sticky=0.25)
  with pytest.raises(ValueError, match="horizon"):
    AtariEnv("Pong", 0, protocol="spr", max_frames_per_episode=400)
  with pytest.raises(ValueError, match="max_frames_per_episode"):
    AtariEnv("Pong", 0, horizon=100)
  with pytest.raises(ValueError, match="protocol"):
    AtariEnv("Pong", 0, protocol="gym")
  env = AtariEnv("Pong", 0, protocol="spr")
  assert env.ale.getFloat("repeat_action_probability") == 0.0
  assert env.ale.getInt("max_num_frames_per_episode") == 0  # the cap is the env's, in steps
  assert env.num_actions == 6 and env.action_meanings[:2] == ["NOOP", "FIRE"]


def test_spr_reset_with_seed_equals_a_fresh_env():
  reused = AtariEnv("Breakout", 5, protocol="spr")
  reused.reset()
  for a in np.random.default_rng(0).integers(4, size=30):
    reused.step(a)
  fresh = AtariEnv("Breakout", 7, protocol="spr")
  np.testing.assert_array_equal(reused.reset(seed=7), fresh.reset())
  assert _frame_number(reused) == _frame_number(fresh)
  for a in np.random.default_rng(1).integers(4, size=100):
    f1, r1, t1, i1 = reused.step(a)
    f2, r2, t2, i2 = fresh.step(a)
    np.testing.assert_array_equal(f1, f2)
    assert (r1, t1, i1) == (r2, t2, i2)


# --------------------------------------------------------------------- evaluation and pool
def test_evaluate_plays_spr_envs():
  """evaluate(protocol="spr") plays each episode as an "spr" evaluation env played by hand."""
  results = evaluate(
      lambda s: np.zeros(len(s), np.int64),
      "Breakout",
      num_episodes=2,
      seed=4,
      epsilon=1.0,
      max_parallel=1,
      protocol="spr",
      horizon=150,
  )
  for episode, result in enumerate(results):
    env = AtariEnv(
        "Breakout", episode_seed(4, episode), training=False, protocol="spr", horizon=150
    )
    env.reset()
    rng = np.random.default_rng([4, episode, 1])
    while True:
      explore, random_action = rng.random() < 1.0, rng.integers(env.num_actions)
      _, _, terminal, info = env.step(random_action if explore else 0)
      if terminal:
        break
    assert result == (info["episode_return"], info["episode_length"])
  dopamine = evaluate(
      lambda s: np.zeros(len(s), np.int64),
      "Breakout",
      num_episodes=2,
      seed=4,
      epsilon=1.0,
      max_parallel=1,
  )
  assert dopamine != results


def test_pool_workers_step_spr_envs_as_local_envs():
  kwargs = [
      dict(game="Breakout", seed=s, training=t, protocol="spr", horizon=250)
      for s, t in ((0, True), (1, False))
  ]
  with EnvPool(workers=1) as pool:
    handles = pool.add(kwargs)
    envs = [AtariEnv(**kw) for kw in kwargs]
    np.testing.assert_array_equal(pool.reset(handles), np.stack([e.reset() for e in envs]))
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(300):
      actions = [int(a) for a in rng.integers(4, size=2)]
      frames, rewards, terminals, infos = pool.step(handles, actions)
      for i, (env, a) in enumerate(zip(envs, actions)):
        frame, reward, terminal, info = env.step(a)
        np.testing.assert_array_equal(frames[i], frame)
        assert (rewards[i], terminals[i], infos[i]) == (reward, terminal, info)
        if terminal:
          kinds.add("game_over" if info["game_over"] else "life_lost")
      np.testing.assert_array_equal(pool.stacks(handles), np.stack([e.stack for e in envs]))
    assert kinds == {"game_over", "life_lost"}
    np.testing.assert_array_equal(pool.worker_stacks(handles), pool.stacks(handles))
