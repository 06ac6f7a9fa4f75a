"""The BBF configuration (Schwarzer et al., ICML 2023, as google-research bigger_better_faster
runs it): schedules, shrink-and-perturb resets, AdamW, acting, and an end-to-end tiny run."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.spr.config import make_config
from agents.spr.learner import (
    SPRLearner,
    bootstrap_stacks,
    cycle_updates,
    is_reset_step,
    make_optimizer,
    updates_at,
    updates_through,
)
from spr import losses, replay


def test_bbf_configs():
  bbf, rr2, smoke = make_config("bbf"), make_config("bbf_rr2"), make_config("bbf_smoke")
  assert (bbf.updates_per_step, rr2.updates_per_step) == (8, 2)
  for c in (bbf, rr2):
    assert (c.encoder, c.impala_width, c.noisy, c.optimizer, c.weight_decay) == (
        "impala",
        4,
        False,
        "adamw",
        0.1,
    )
    assert (c.target_tau, c.act_with_target, c.n_step, c.n_step_final) == (0.005, True, 10, 3)
    assert (c.gamma_start, c.gamma, c.anneal_updates, c.replay_capacity) == (
        0.97,
        0.997,
        10_000,
        200_000,
    )
    # Every 40k gradient updates at any replay ratio (BBF.gin: 20k env steps at ratio 2, "change
    # if you change the replay ratio"; SR_SPR.gin: 5k env steps at ratio 8).
    assert (c.reset_every_updates, c.reset_until, c.shrink_factor, c.perturb_factor) == (
        40_000,
        100_000,
        0.5,
        0.5,
    )
    assert (c.n_step_convention, c.next_state_augmentation) == ("bbf", "shared")
  assert (bbf.reset_interval, rr2.reset_interval) == (5_000, 20_000)
  assert smoke.encoder == "impala" and smoke.reset_interval > 0 and smoke.anneal_updates > 0
  spr = make_config("spr")  # SPR keeps its behaviour
  assert (spr.optimizer, spr.reset_every, spr.anneal_updates, spr.act_with_target) == (
      "adam",
      0,
      0,
      False,
  )


def test_reset_schedule_is_bbfs():
  rr2 = make_config("bbf_rr2")
  assert [s for s in range(1, 100_001) if is_reset_step(rr2, s)] == [20_000, 40_000, 60_000, 80_000]
  c = make_config("bbf")  # replay ratio 8: every 5k env steps = 40k updates, 19 resets
  assert [s for s in range(1, 100_001) if is_reset_step(c, s)] == list(range(5_000, 95_001, 5_000))
  assert updates_through(c, 5_000) - updates_through(c, 0) == 8 * 3_000  # first at 24k updates
  assert not any(is_reset_step(make_config("spr"), s) for s in range(1, 5000))


def test_annealing_of_n_and_gamma_restarts_after_each_reset():
  c = make_config("bbf")
  learner = SPRLearner(c, 6)
  n, g = learner.annealed_n_gamma(jnp.asarray(0))
  assert int(n) == 10 and float(g) == pytest.approx(0.97, abs=1e-6)
  n, g = learner.annealed_n_gamma(jnp.asarray(5_000))
  assert int(n) == round(10 * 0.3**0.5)  # 5
  assert float(g) == pytest.approx(1 - np.sqrt(0.03 * 0.003), abs=1e-6)
  for cycle in (10_000, 30_000):
    n, g = learner.annealed_n_gamma(jnp.asarray(cycle))
    assert int(n) == 3 and float(g) == pytest.approx(0.997, abs=1e-6)
  # Updates since the last reset: 0 right after the reset at 20k, counting again after.
  c = make_config("bbf_rr2")  # resets at 20k, 40k, 60k, 80k env steps
  at_reset = int(updates_through(c, 20_000))
  assert int(cycle_updates(c, jnp.asarray(20_000), jnp.asarray(at_reset - 1))) == at_reset - 1
  assert int(cycle_updates(c, jnp.asarray(20_001), jnp.asarray(at_reset))) == 0
  assert int(cycle_updates(c, jnp.asarray(20_002), jnp.asarray(at_reset + 8))) == 8
  # No reset after 80k: the clock keeps running from the 80k reset.
  late = int(updates_through(c, 80_000))
  assert int(cycle_updates(c, jnp.asarray(99_000), jnp.asarray(late + 5))) == 5


def test_epsilon_schedule():
  learner = SPRLearner(make_config("bbf"), 6)
  eps = lambda s: float(learner.epsilon(jnp.asarray(s)))
  # Dopamine's linearly_decaying_epsilon at its step counter j + 1 for a_j (BBF spr_agent.py).
  assert eps(0) == eps(1999) == 1.0
  assert eps(2000) == pytest.approx(2000 / 2001, abs=1e-6)
  assert eps(3000) == pytest.approx(1000 / 2001, abs=1e-6)
  assert eps(3999) == pytest.approx(1 / 2001, abs=1e-6)
  assert eps(4000) == 0.0 and eps(50_000) == 0.0


def test_shrink_and_perturb_reset():
  learner = SPRLearner(make_config("bbf_smoke"), 6)
  state = learner.init(jax.random.PRNGKey(0))
  # Make the optimiser state non-trivial first.
  grads = jax.tree.map(jnp.ones_like, state.params)
  _, opt_state = learner.optimizer.update(grads, state.opt_state, state.params)
  state = state._replace(opt_state=opt_state)
  new = learner.reset(state)
  _, k_online, k_target = jax.random.split(state.rng, 3)
  dummy = jnp.zeros((1, 4, 84, 84), jnp.float32)
  fresh, fresh_t = learner.network.init(k_online, dummy), learner.network.init(k_target, dummy)
  for old, out, f in (
      (state.params, new.params, fresh),
      (state.target_params, new.target_params, fresh_t),
  ):
    for module, leaves in out.items():
      for name, value in leaves.items():
        if "/encoder" in module or "/transition" in module:
          expect = 0.5 * old[module][name] + 0.5 * f[module][name]
        else:  # head, projection (= head's first layers), predictor: fully fresh
          expect = f[module][name]
        np.testing.assert_allclose(value, expect, rtol=1e-6, atol=1e-7, err_msg=module)
  fresh_opt = learner.optimizer.init(new.params)
  for x, y in zip(jax.tree.leaves(new.opt_state), jax.tree.leaves(fresh_opt)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(new.rng, state.rng)


def test_adamw_decays_weights_not_biases():
  c = make_config("bbf_smoke", dict(learning_rate=0.1, weight_decay=0.5))
  opt = make_optimizer(c)
  params = {"m": {"w": jnp.ones((3, 2)), "b": jnp.ones((2,))}}
  updates, _ = opt.update(jax.tree.map(jnp.zeros_like, params), opt.init(params), params)
  np.testing.assert_allclose(updates["m"]["w"], -0.1 * 0.5 * np.ones((3, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["m"]["b"], np.zeros(2))


def test_bootstrap_stacks_at_a_traced_n():
  rng = np.random.default_rng(0)
  buf = replay.replay_init(64)
  for t in range(40):
    buf = replay.replay_add(
        buf, rng.integers(0, 255, (84, 84), np.uint8), t % 3, 0.0, t in (12, 25)
    )
  indices = jnp.asarray([3, 10, 11, 20, 24], jnp.int32)
  fn = jax.jit(bootstrap_stacks, static_argnums=(3, 4))
  for n in range(2, 6):
    expect = replay.replay_gather(buf, indices, n, 0).next_observations
    np.testing.assert_array_equal(fn(buf, indices, jnp.asarray(n), 2, 5), expect)


def test_bbf_smoke_runs_in_a_batch_as_alone():
  """The vmapped multi-run step (engine.batched_step) against the single-run step, in
  process, on synthetic experience: run 1 of a batch of two seeds (run 0 gets other data) through
  epsilon-greedy acting with the EMA target, then 4 updates with annealed n (4 -> 3 -> 2) and
  gamma, AdamW and the EMA target. Integers (replay, actions, counters, RNG) must match exactly at
  every step; floats within a tolerance measured against the dynamics' own sensitivity: from an
  IDENTICAL state a batched and a lone update agree on indices, batch, n, gamma and IS weights
  bitwise and on the loss to ~4e-7, but BBF's dynamics amplify float noise chaotically (a 1-ulp
  perturbation of one lone run grows to ~1e-3 in the parameters over ~50 updates, as batch vs
  alone does), so only the first updates are compared, and parameters to a few Adam steps (lr)."""
  from agents.spr.engine import batched_step, stack_states

  cfg = make_config("bbf_smoke", dict(learn_start=10, anneal_updates=4, epsilon_decay_steps=4))
  learner = SPRLearner(cfg, 6)
  steps = cfg.learn_start + 4  # 4 updates
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 255, (steps, 2, 84, 84), np.uint8)
  rewards = rng.choice(np.float32([-1, 0, 0, 1]), (steps, 2))
  terminals = rng.random((steps, 2)) < 0.1
  stacks = rng.integers(0, 255, (steps, 2, 4, 84, 84), np.uint8)
  alone, action = learner.first_action(learner.init(jax.random.PRNGKey(1)))
  batch, actions = jax.vmap(learner.first_action)(
      stack_states([learner.init(jax.random.PRNGKey(s)) for s in (0, 1)])
  )
  assert int(actions[1]) == int(action)
  ns = []
  for t in range(steps):
    num_updates = updates_at(cfg, t + 1)
    assert not is_reset_step(cfg, t + 1)
    ns.append(
        int(learner.annealed_n_gamma(cycle_updates(cfg, alone.env_step + 1, alone.update_step))[0])
    )
    batch, actions, mb = batched_step(learner, num_updates)(
        batch, frames[t], actions, rewards[t], terminals[t], stacks[t]
    )
    alone, action, ma = learner.step(
        alone,
        frames[t, 1],
        action,
        rewards[t, 1],
        terminals[t, 1],
        stacks[t, 1],
        num_updates=num_updates,
    )
    one = jax.tree.map(lambda x: x[1], jax.device_get(batch))
    assert int(actions[1]) == int(action)
    assert int(mb.updates[1]) == int(ma.updates) == num_updates
    np.testing.assert_allclose(mb.loss[1], ma.loss, rtol=1e-4)
    updates = int(alone.update_step)
    for x, y in zip(jax.tree.leaves(one), jax.tree.leaves(jax.device_get(alone))):
      assert x.shape == y.shape and x.dtype == y.dtype
      if x.dtype.kind in "iub":
        np.testing.assert_array_equal(x, y)
    # Adam moves a parameter by at most ~lr per update whatever the gradient: a few lr per update
    # bounds an honest discrepancy (measured: <= ~2 lr after 4 updates); a structural one (another
    # init, RNG stream, n or batch) is orders of magnitude larger.
    atol = 2 * cfg.learning_rate * updates + 1e-6
    for a, b in ((one.params, alone.params), (one.target_params, alone.target_params)):
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=atol)
  assert int(alone.update_step) == 4 and float(ma.loss) > 0
  assert ns[cfg.learn_start :] == [4, 3, 3, 2]  # n annealed across the compared updates


# ---- BBF's n-step target and next-state augmentation, as its code runs them.
_R = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize(
    "terminal_at, textbook, bbf",
    [
        (None, (2.75, 0.125), (2.75, 0.125)),
        (2, (2.75, 0.0), (2.75, 0.125)),  # last transition of the window: BBF bootstraps anyway
        (1, (2.0, 0.0), (2.0, 0.0)),
        (0, (1.0, 0.0), (1.0, 0.0)),
    ],
)
def test_n_step_return_conventions_hand_computed(jit, terminal_at, textbook, bbf):
  """n = 3, gamma = 0.5, rewards 1..5: BBF's sample_transition_batch sums the same rewards but
  reads only d_t..d_{t+n-2} for the bootstrap (google-research issue #1851); measured on its
  code: 2.75 + 0.125 Z(s_{t+2}) with a terminal on d_{t+2}."""
  terminals = np.zeros(5, bool)
  if terminal_at is not None:
    terminals[terminal_at] = True
  for convention, expected in (("textbook", textbook), ("bbf", bbf)):
    fn = lambda r, d, n: losses.n_step_return(r, d, 0.5, n, convention=convention)
    fn = jax.jit(fn) if jit else fn
    ret, disc = fn(_R, jnp.asarray(terminals), jnp.asarray(3))  # traced n, window of 5
    np.testing.assert_allclose((float(ret), float(disc)), expected, rtol=1e-6)


def _filled(learner, n=60, seed=0):
  state = learner.init(jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  buf = state.replay
  for t in range(n):
    buf = replay.replay_add(
        buf,
        rng.integers(0, 255, (84, 84), dtype=np.uint8),
        np.int32(rng.integers(6)),
        np.float32(rng.choice([-1, 0, 1])),
        np.bool_(t % 13 == 12),
    )
  return state._replace(replay=buf, env_step=jnp.int32(n), update_step=jnp.int32(20))


@pytest.mark.parametrize("anneal", [True, False])
def test_bbf_update_bootstraps_from_the_state_n_minus_1_ahead(anneal):
  """The update's loss equals the loss of the same batch with s_{t+n-1} as the bootstrap state
  (BBF's next_indices = state + update_horizon - 1), not s_{t+n}."""
  overrides = {} if anneal else dict(n_step_final=0, gamma_start=0.0)
  cfg = make_config("bbf_smoke", overrides)
  learner = SPRLearner(cfg, 6)
  state = _filled(learner)
  _, m = jax.jit(learner.update)(state)
  _, sample_key, loss_key = jax.random.split(state.rng, 3)
  batch, indices, w = replay.replay_sample(
      state.replay,
      sample_key,
      cfg.batch_size,
      cfg.n_step,
      cfg.spr_steps,
      0.5,
      0.5,
      **learner.replay_options,
  )
  extra = {}
  n = cfg.n_step
  if anneal:
    n, gamma = learner.annealed_n_gamma(cycle_updates(cfg, state.env_step, state.update_step))
    extra = dict(n=n, gamma=gamma)
    assert 2 <= int(n) < cfg.n_step
  by_offset = {}
  loss_fn = jax.jit(learner.loss)  # one compilation for both bootstrap states
  for offset in (int(n) - 1, int(n)):
    nxt = replay.replay_gather(state.replay, indices, offset, 0).next_observations
    by_offset[offset], _ = loss_fn(
        state.params,
        state.target_params,
        batch.replace(next_observations=nxt),
        w,
        loss_key,
        **extra,
    )
  np.testing.assert_allclose(m.loss, by_offset[int(n) - 1], rtol=1e-5)
  assert abs(float(by_offset[int(n)]) - float(by_offset[int(n) - 1])) > 1e-6


def test_shared_next_state_augmentation_is_one_draw_for_bootstrap_and_selector():
  """BBF augments s_{t+n} once for the target and the selector: with equal target and online
  parameters (no noisy layers) double DQN then selects exactly the bootstrap network's argmax,
  so the loss equals the loss without double DQN; independent draws (SPR) do not."""
  base = make_config("bbf_smoke")
  learner = SPRLearner(base, 6)
  state = _filled(learner)
  batch, _, w = replay.replay_sample(
      state.replay, jax.random.PRNGKey(3), base.batch_size, base.n_step, base.spr_steps, 0.5, 0.5
  )
  key = jax.random.PRNGKey(4)
  loss = {}
  for aug in ("shared", "independent"):
    for double in (True, False):
      cfg = dataclasses.replace(base, next_state_augmentation=aug, double_dqn=double)
      _, aux = SPRLearner(cfg, 6).loss(state.params, state.params, batch, w, key)
      loss[aug, double] = float(aux["rl_loss"])
  assert loss["shared", True] == pytest.approx(loss["shared", False], rel=1e-6)
  assert abs(loss["independent", True] - loss["independent", False]) > 1e-6
