"""envs/pool.py: envs in worker processes behave exactly as `AtariEnv`s in this process (frames,
rewards, terminals, infos, stacks, save/restore), evaluations do not depend on the workers, and
a failing or dead worker is a clear error."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs.atari import AtariEnv
from envs.evaluation import evaluate, evaluate_runs
from envs.pool import EnvPool, EnvWorkerError, auto_workers, resolve_workers
from envs.pool_worker import EnvHost

ROOT = Path(__file__).resolve().parents[1]
# Short episodes (the cap) and life losses within a few hundred steps: every terminal kind.
KWARGS = [
    dict(game=g, seed=s, training=t, max_frames_per_episode=1200)
    for g, s, t in (
        ("Breakout", 0, True),
        ("Breakout", 1, False),
        ("Pong", 2, True),
        ("Pong", 3, False),
        ("Breakout", 4, True),
    )
]


@pytest.fixture(scope="module")
def pool2():
  with EnvPool(workers=2) as pool:
    yield pool


def _play_both(pool, handles, envs, steps, rng):
  """Steps the pool's envs and local twins with the same random actions; asserts equality."""
  kinds = set()
  for _ in range(steps):
    actions = [int(rng.integers(e.num_actions)) for e in envs]
    frames, rewards, terminals, infos = pool.step(handles, actions)
    for i, (env, action) in enumerate(zip(envs, actions)):
      frame, reward, terminal, info = env.step(action)
      np.testing.assert_array_equal(frames[i], frame)
      assert (rewards[i], terminals[i], infos[i]) == (reward, terminal, info)
      if terminal:
        kinds.add("game_over" if info["game_over"] else "life_lost")
    np.testing.assert_array_equal(pool.stacks(handles), np.stack([e.stack for e in envs]))
  return kinds


def test_pool_envs_step_exactly_as_local_envs(pool2):
  handles = pool2.add(KWARGS)
  envs = [AtariEnv(**kw) for kw in KWARGS]
  assert [pool2.num_actions(h) for h in handles] == [e.num_actions for e in envs]
  assert [pool2.action_set(h) for h in handles] == [e.action_set for e in envs]
  np.testing.assert_array_equal(pool2.reset(handles), np.stack([e.reset() for e in envs]))
  kinds = _play_both(pool2, handles, envs, 400, np.random.default_rng(0))
  assert kinds == {"game_over", "life_lost"}  # both terminal kinds went through the mirror
  # The pool's stacks (rebuilt from frames) are the workers' own.
  np.testing.assert_array_equal(pool2.worker_stacks(handles), pool2.stacks(handles))
  # Re-seeding resets: as a fresh env with that seed.
  np.testing.assert_array_equal(
      pool2.reset(handles[:2], seeds=[7, 8]),
      np.stack([envs[0].reset(seed=7), envs[1].reset(seed=8)]),
  )
  _play_both(pool2, handles, envs, 50, np.random.default_rng(1))
  pool2.remove(handles)
  assert len(pool2) == 0


def test_env_state_moves_between_pools_and_local_envs(pool2):
  """A checkpointed env continues identically wherever it is restored: worker -> local, and
  local -> worker (what a multi-run resume does)."""
  kw = KWARGS[0]
  [handle] = pool2.add([kw])
  pool2.reset([handle])
  rng = np.random.default_rng(2)
  for _ in range(120):
    pool2.step([handle], [int(rng.integers(4))])
  [state] = pool2.get_state([handle])
  local = AtariEnv(**kw)
  local.set_state(state)
  np.testing.assert_array_equal(local.stack, pool2.stack(handle))
  kinds = _play_both(pool2, [handle], [local], 150, np.random.default_rng(3))
  assert kinds  # the continuation crossed at least one terminal
  # local -> a new env in the workers
  state = local.get_state()
  [moved] = pool2.add([kw])
  pool2.set_state([moved], [state])
  np.testing.assert_array_equal(pool2.stack(moved), local.stack)
  _play_both(pool2, [moved], [local], 100, np.random.default_rng(4))
  pool2.remove([handle, moved])


def _policy(stacks):
  """A deterministic greedy policy that looks at the pixels."""
  return (stacks.reshape(stacks.shape[0], -1).sum(axis=1) % 3).astype(np.int32)


def test_evaluation_in_workers_equals_in_process(pool2):
  """Episode reuse (max_parallel < episodes), removal, several runs: same scores and lengths."""
  args = dict(num_episodes=5, epsilon=0.2, max_parallel=3, max_frames_per_episode=2000)
  alone = evaluate(_policy, "Breakout", seed=3, **args)
  assert evaluate(_policy, "Breakout", seed=3, pool=pool2, **args) == alone
  runs = [("Breakout", 3), ("Pong", 4)]
  act_runs = lambda stacks: np.stack([_policy(s) for s in stacks])
  assert evaluate_runs(act_runs, runs, pool=pool2, **args) == evaluate_runs(act_runs, runs, **args)
  assert len(pool2) == 0  # every episode's env was removed


def test_worker_exception_is_reported_and_the_pool_goes_on():
  with EnvPool(workers=2) as pool:
    handles = pool.add([KWARGS[0], KWARGS[2]])
    with pytest.raises(RuntimeError, match="called before reset") as raised:
      pool.step(handles, [0, 0])  # both workers raise; both replies are read
    assert "raised in env worker" in "".join(raised.value.__notes__)
    pool.reset(handles)
    frames, _, _, _ = pool.step(handles, [0, 0])  # still in step with both workers
    assert frames.shape == (2, 84, 84)
    with pytest.raises(ValueError, match="Unknown Atari 100k game"):  # as without workers
      pool.add([dict(game="NotAGame", seed=0)])
    assert len(pool) == 2


def test_a_failure_in_some_envs_leaves_the_others_consistent():
  """One worker's env fails, the other's steps: the error is raised, the stepped env's stack is
  up to date, and the pool answers the next calls in order."""
  with EnvPool(workers=2) as pool:
    good, fresh = pool.add([KWARGS[0], KWARGS[2]])  # one per worker
    pool.reset([good])
    with pytest.raises(RuntimeError, match="called before reset"):
      pool.step([good, fresh], [1, 0])
    np.testing.assert_array_equal(pool.stacks([good]), pool.worker_stacks([good]))
    [state] = pool.get_state([good])
    assert state["episode_length"] == 1  # the good env did step, once
    # add is all or nothing: a bad entry on one worker keeps nothing on the other
    with pytest.raises(ValueError, match="Unknown Atari 100k game"):
      pool.add([KWARGS[0], dict(game="NotAGame", seed=0)])
    assert len(pool) == 2 and pool._load == [1, 1]  # pylint: disable=protected-access
  host = EnvHost()
  with pytest.raises(ValueError):
    host.add([0, 1], [KWARGS[0], dict(game="NotAGame", seed=0)])
  assert host.envs == {}


def test_dead_worker_is_a_clear_error_and_the_pool_refuses_further_calls():
  with EnvPool(workers=1) as pool:
    [handle] = pool.add([KWARGS[0]])
    pool.reset([handle])
    process = pool._processes[0].proc  # pylint: disable=protected-access
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    with pytest.raises(EnvWorkerError, match=r"died \(exit code -9\)"):
      pool.step([handle], [0])
    with pytest.raises(EnvWorkerError, match="unusable"):
      pool.get_state([handle])  # its reply would be out of step: refused, not misread


def test_workers_ignore_signals_meant_for_the_trainer():
  """SIGTERM / SIGINT to the whole process group (a cluster's preemption, Ctrl-C) reach the
  workers too: they go on, so the trainer can still checkpoint the envs' states."""
  with EnvPool(workers=1) as pool:
    [handle] = pool.add([KWARGS[0]])
    pool.reset([handle])
    pid = pool._processes[0].proc.pid  # pylint: disable=protected-access
    for sig in (signal.SIGTERM, signal.SIGINT):
      os.kill(pid, sig)
    pool.step([handle], [1])
    assert pool.get_state([handle])[0]["episode_length"] == 1


def test_worker_count_rules():
  assert auto_workers(100, cores=2) == 0  # the 2-core CI machine: envs stay in process
  assert auto_workers(100, cores=16) == 15
  assert auto_workers(4, cores=16) == 4
  assert auto_workers(1, cores=16) == 0
  assert resolve_workers(0, 100) == 0 and resolve_workers(3, 100) == 3
  with pytest.raises(ValueError, match="env workers"):
    resolve_workers(-2, 10)


def test_a_cores_share_limits_the_default_workers(monkeypatch):
  """launch/backends.py gives each of several local trainers its share of the cores."""
  monkeypatch.setenv("SPR_CORES", "5")
  assert auto_workers(100) == 4
  monkeypatch.setenv("SPR_CORES", "2")
  assert auto_workers(100) == 0


def test_worker_process_does_not_import_jax():
  code = "import sys, envs.pool_worker; print('jax' in sys.modules)"
  out = subprocess.run(
      [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
  )
  assert out.stdout.strip() == "False"
