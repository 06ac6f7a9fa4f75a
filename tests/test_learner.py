"""The SPR learner: loss plumbing (weights, masks, jit), the update, the fused step."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.spr.config import make_config
from agents.spr.learner import SPRLearner, q_values
from spr import losses, objectives, replay

NUM_ACTIONS = 3


def smoke(**overrides):
  return make_config("smoke", overrides)


def make_batch(config, b=4, seed=0, terminal_at=None):
  rng = np.random.default_rng(seed)
  k, h = config.spr_steps, max(config.n_step, config.spr_steps)
  terminals = np.zeros((b, h + 1), bool)
  if terminal_at is not None:
    terminals[:, terminal_at] = True
  return dict(
      observations=jnp.asarray(rng.integers(0, 255, (b, k + 1, 4, 84, 84), dtype=np.uint8)),
      next_observations=jnp.asarray(rng.integers(0, 255, (b, 4, 84, 84), dtype=np.uint8)),
      actions=jnp.asarray(rng.integers(0, NUM_ACTIONS, (b, k + 1)), jnp.int32),
      rewards=jnp.asarray(rng.choice([-1.0, 0.0, 1.0], (b, h + 1)), jnp.float32),
      terminals=jnp.asarray(terminals),
  )


@pytest.fixture(scope="module")
def setup():
  config = smoke()
  learner = SPRLearner(config, NUM_ACTIONS)
  state = learner.init(jax.random.PRNGKey(0))
  return config, learner, state


def loss_parts(learner, params, batch, weights, key=1):
  """The loss with the target network equal to the online one."""
  target = params if learner.config.has_target else ()
  return learner.loss(params, target, batch, weights, jax.random.PRNGKey(key))


def test_loss_same_with_and_without_jit(setup):
  config, learner, state = setup
  batch, w = make_batch(config), jnp.ones(4)
  eager, aux_e = loss_parts(learner, state.params, batch, w)
  jitted, aux_j = jax.jit(lambda p, b, w: loss_parts(learner, p, b, w))(state.params, batch, w)
  np.testing.assert_allclose(eager, jitted, rtol=1e-5)
  np.testing.assert_allclose(aux_e["priorities"], aux_j["priorities"], rtol=1e-5)
  assert aux_e["priorities"].shape == (4,) and np.all(aux_e["priorities"] > 0)


def test_total_is_importance_weighted_sum_of_rl_and_weighted_spr(setup):
  config, _, state = setup
  batch = make_batch(config)
  w = jnp.array([0.25, 0.5, 1.0, 0.75])
  results = {}
  for weight in (0.0, 5.0):
    learner = SPRLearner(dataclasses.replace(config, spr_weight=weight), NUM_ACTIONS)
    results[weight] = loss_parts(learner, state.params, batch, w)
  (_, a0), (l5, a5) = results[0.0], results[5.0]
  np.testing.assert_allclose(a0["rl_loss"], a5["rl_loss"], rtol=1e-6)  # same rng, same RL part
  assert float(a0["spr_loss"]) == 0.0 and float(a5["spr_loss"]) > 0
  # Doubling every importance weight doubles the loss.
  learner5 = SPRLearner(dataclasses.replace(config, spr_weight=5.0), NUM_ACTIONS)
  l5x2, _ = loss_parts(learner5, state.params, batch, 2 * w)
  np.testing.assert_allclose(l5x2, 2 * l5, rtol=1e-5)


def test_terminal_at_the_first_transition_masks_every_spr_step(setup):
  config, learner, state = setup
  _, aux = loss_parts(learner, state.params, make_batch(config, terminal_at=0), jnp.ones(4))
  assert float(aux["spr_loss"]) == 0.0
  # The SPR code's convention: step k is valid iff no terminal among d_0..d_k.
  _, aux = loss_parts(learner, state.params, make_batch(config, terminal_at=1), jnp.ones(4))
  assert float(aux["spr_loss"]) == 0.0
  _, aux = loss_parts(learner, state.params, make_batch(config, terminal_at=2), jnp.ones(4))
  assert float(aux["spr_loss"]) > 0.0  # spr_steps = 2 in smoke: step 1 valid, step 2 masked


def test_rl_loss_matches_the_c51_loss_of_the_network_outputs():
  config = smoke(augmentation=False, noisy=False, spr_steps=0)
  learner = SPRLearner(config, NUM_ACTIONS)
  state = learner.init(jax.random.PRNGKey(0))
  batch = make_batch(config)
  _, aux = loss_parts(learner, state.params, batch, jnp.ones(4))
  encode, _, q_logits, _, _ = learner.network.apply
  obs = batch["observations"][:, 0].astype(jnp.float32) / 255
  nxt = batch["next_observations"].astype(jnp.float32) / 255
  logits = q_logits(state.params, None, encode(state.params, None, obs), None)
  next_logits = q_logits(state.params, None, encode(state.params, None, nxt), None)
  ret, disc = losses.batched_n_step_return(
      batch["rewards"][:, :3], batch["terminals"][:, :3], config.gamma
  )
  expected = losses.batched_categorical_double_q_loss(
      logits,
      batch["actions"][:, 0],
      ret,
      disc,
      next_logits,
      q_values(next_logits, learner.support),
      learner.support,
  )
  np.testing.assert_allclose(aux["rl_loss"], jnp.mean(expected), rtol=1e-5)
  np.testing.assert_allclose(
      ret[0], sum(0.99**j * float(batch["rewards"][0, j]) for j in range(3)), rtol=1e-5
  )


def filled_state(learner, config, n=60, seed=0):
  state = learner.init(jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  buf = state.replay
  for t in range(n):
    buf = replay.replay_add(
        buf,
        rng.integers(0, 255, (84, 84), dtype=np.uint8),
        np.int32(rng.integers(NUM_ACTIONS)),
        np.float32(rng.choice([-1, 0, 1])),
        np.bool_(t % 17 == 16),
    )
  return state._replace(replay=buf, env_step=jnp.int32(n))


def test_update_applies_adam_and_sets_priorities(setup):
  config, learner, _ = setup
  state = filled_state(learner, config)
  before = jax.tree.map(np.asarray, state.params)
  new, m = jax.jit(learner.update)(state)
  assert bool(m.finite) and int(new.update_step) == 1
  changed = [
      not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(new.params))
  ]
  assert all(changed)
  # Adam's first step moves every parameter by about lr (bias-corrected m/sqrt(v) = +-1).
  deltas = [
      np.abs(np.asarray(a) - b).max()
      for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(before))
  ]
  assert max(deltas) <= config.learning_rate * 1.01
  pr = np.asarray(new.replay.priorities)
  assert np.sum(pr[:60] != 1.0) >= 1  # sampled slots got their KL priority


@pytest.mark.parametrize("before", [True, False])
def test_ema_target_follows_the_exact_update_rule(before):
  """EMA towards the parameters before this update (SPR / SGI code) or after it (BBF)."""
  config = smoke(target_tau=0.25, target_ema_before_update=before)
  learner = SPRLearner(config, NUM_ACTIONS)
  state = filled_state(learner, config)
  state = state._replace(target_params=jax.tree.map(lambda x: x * 0.5, state.params))
  new, _ = jax.jit(learner.update)(state)
  source = state.params if before else new.params
  for tgt_new, tgt_old, p in zip(
      *(jax.tree.leaves(t) for t in (new.target_params, state.target_params, source))
  ):
    np.testing.assert_allclose(tgt_new, 0.25 * p + 0.75 * tgt_old, rtol=1e-6, atol=1e-7)


def test_spr_targets_lag_one_update_and_the_bootstrap_is_current():
  """The SPR code copies the online encoder + projection into its target at the END of the
  forward pass (src/models.py do_spr_loss -> update_state_dict, tau 1), after the SPR targets were
  computed and before the optimiser step; its C51 target network is re-synced after the step
  (src/algos.py). So at update t the SPR targets come from the online parameters of update
  t - 1 and the bootstrap from the current ones. Hand-run of two updates."""
  config = smoke()
  assert (config.target_tau, config.target_ema_before_update, config.bootstrap_with_target) == (
      1.0,
      True,
      False,
  )
  learner = SPRLearner(config, NUM_ACTIONS)
  state0 = filled_state(learner, config)
  update = jax.jit(learner.update)
  state1, _ = update(state0)
  # After update 1 the target holds the parameters update 1 started from.
  for a, b in zip(jax.tree.leaves(state1.target_params), jax.tree.leaves(state0.params)):
    np.testing.assert_array_equal(a, b)
  state2, m2 = update(state1)
  for a, b in zip(jax.tree.leaves(state2.target_params), jax.tree.leaves(state1.params)):
    np.testing.assert_array_equal(a, b)
  # Update 2 by hand: the same batch and keys as `update`, SPR targets from theta_0.
  _, sample_key, loss_key = jax.random.split(state1.rng, 3)
  progress = learner.beta_progress(state1)
  beta = (
      config.priority_beta_start
      + (config.priority_beta_end - config.priority_beta_start) * progress
  )
  batch, _, w = replay.replay_sample(
      state1.replay,
      sample_key,
      config.batch_size,
      config.n_step,
      config.spr_steps,
      beta,
      config.priority_alpha,
      **learner.replay_options,
  )
  lagged, aux_lagged = learner.loss(state1.params, state0.params, batch, w, loss_key)
  current, aux_current = learner.loss(state1.params, state1.params, batch, w, loss_key)
  np.testing.assert_allclose(m2.loss, lagged, rtol=1e-5)
  assert abs(float(lagged) - float(current)) > 1e-6 * abs(float(current))
  # Only the SPR targets use the target: the C51 part is the same with either.
  np.testing.assert_allclose(aux_lagged["rl_loss"], aux_current["rl_loss"], rtol=1e-6)
  assert float(aux_lagged["spr_loss"]) != float(aux_current["spr_loss"])


def test_per_beta_follows_rlpyts_clock(setup):
  """rlpyt (dqn.py update_itr_hyperparams) sets beta AFTER each iteration's updates, annealing
  over iterations learn_start..steps: the updates of iteration i (env_step = i + 1 stored) use
  progress (i - 1 - learn_start) / (steps - learn_start)."""
  config, learner, state = setup
  progress = lambda stored: float(learner.beta_progress(state._replace(env_step=jnp.int32(stored))))
  span = config.steps - config.learn_start  # 300 in smoke
  first = config.learn_start + 1  # the first update's env_step
  assert progress(first) == 0.0 and progress(first + 1) == 0.0
  assert progress(first + 2) == pytest.approx(1 / span)
  assert progress(config.steps) == pytest.approx((span - 2) / span)
  assert progress(10 * config.steps) == 1.0


def test_step_adds_the_transition_and_acts_randomly_before_learn_start(setup):
  config, learner, _ = setup
  state = learner.init(jax.random.PRNGKey(3))
  frame = np.full((84, 84), 7, np.uint8)
  stack = np.zeros((4, 84, 84), np.uint8)
  actions = []
  for t in range(30):
    state, action, m = learner.step(
        state,
        frame,
        np.int32(t % NUM_ACTIONS),
        np.float32(1.0),
        np.bool_(False),
        stack,
        num_updates=0,
    )
    actions.append(int(action))
  assert int(state.env_step) == 30 and int(state.replay.add_count) == 30
  assert int(m.updates) == 0
  np.testing.assert_array_equal(np.asarray(state.replay.frames[:30]), 7)
  np.testing.assert_array_equal(np.asarray(state.replay.actions[:30]), np.arange(30) % NUM_ACTIONS)
  assert set(actions) == set(range(NUM_ACTIONS))  # uniform random: every action shows up


def test_optimizer_clips_stem_and_transition_separately_and_not_the_predictor():
  config = smoke(grad_clip=1.0, learning_rate=1.0, adam_eps=1e8)
  opt = SPRLearner(config, NUM_ACTIONS).optimizer
  g = jnp.array([30.0, 40.0, 0.0, 0.0])  # norm 50
  params = {
      "spr/~/encoder/conv0": {"w": jnp.zeros(4)},
      "spr/~/transition/conv0": {"w": jnp.zeros(4)},
      "spr/~/predictor": {"w": jnp.zeros(4)},
  }
  grads = {
      "spr/~/encoder/conv0": {"w": g},
      "spr/~/transition/conv0": {"w": 2 * g},
      "spr/~/predictor": {"w": g},
  }
  updates, _ = opt.update(grads, opt.init(params), params)
  # With a huge eps, Adam's first step is lr * g / eps: the clipped gradient, scaled.
  step = lambda name: -np.asarray(updates[name]["w"]) * 1e8
  np.testing.assert_allclose(step("spr/~/encoder/conv0"), [0.6, 0.8, 0, 0], rtol=1e-5)
  np.testing.assert_allclose(step("spr/~/transition/conv0"), [0.6, 0.8, 0, 0], rtol=1e-5)
  np.testing.assert_allclose(step("spr/~/predictor"), [30, 40, 0, 0], rtol=1e-5)


def test_sgi_style_bootstrap_uses_the_online_net_and_spr_targets_the_ema():
  config = smoke(target_tau=0.5, bootstrap_with_target=False, augmentation=False, noisy=False)
  learner = SPRLearner(config, NUM_ACTIONS)
  state = learner.init(jax.random.PRNGKey(0))
  batch, w, key = make_batch(config), jnp.ones(4), jax.random.PRNGKey(1)
  other = learner.init(jax.random.PRNGKey(5)).params  # a different target network
  _, same = learner.loss(state.params, state.params, batch, w, key)
  _, diff = learner.loss(state.params, other, batch, w, key)
  np.testing.assert_allclose(diff["rl_loss"], same["rl_loss"], rtol=1e-6)  # bootstrap: online
  assert abs(float(diff["spr_loss"]) - float(same["spr_loss"])) > 1e-4  # SPR targets: EMA net
  bbf_like = SPRLearner(dataclasses.replace(config, bootstrap_with_target=True), NUM_ACTIONS)
  _, tgt = bbf_like.loss(state.params, other, batch, w, key)
  assert abs(float(tgt["rl_loss"]) - float(same["rl_loss"])) > 1e-4  # bootstrap: target


@pytest.mark.parametrize("name", ["lrp", "directpred"])
def test_closed_form_predictor_plugs_in_with_ema_statistics(name):
  config = smoke(predictor=name, predictor_ema=0.5)
  learner = SPRLearner(config, NUM_ACTIONS)
  state = filled_state(learner, config)
  assert int(state.predictor_state.count) == 0
  update = jax.jit(learner.update)
  new, m = update(state)
  new, m = update(new)
  assert bool(m.finite) and float(m.spr_loss) > 0
  assert int(new.predictor_state.count) == 2
  sigma = np.asarray(new.predictor_state.sigma)
  np.testing.assert_allclose(sigma, sigma.T, atol=1e-6)  # an EMA of correlations z^T z / N
  assert np.all(np.linalg.eigvalsh(sigma) > -1e-5)
  # The learned predictor is not used: it gets no gradient, Adam leaves it where it was.
  for k in ("w", "b"):
    np.testing.assert_array_equal(
        new.params["spr/~/predictor"][k], state.params["spr/~/predictor"][k]
    )


def test_unknown_predictor_is_a_config_error():
  with pytest.raises(ValueError, match="predictor must be one of linear, directcopy"):
    smoke(predictor="nope")


def test_variants_are_pieces_chosen_when_the_learner_is_built():
  spr = SPRLearner(smoke(), NUM_ACTIONS)
  assert spr.target == objectives.EmaTarget(1.0, before_update=True)  # lags one update
  assert spr.latents == objectives.PerSampleLatents((("target", (0,)), ("fixed", (1, 2))))
  assert spr.selector is objectives.online_selector and spr.priority is objectives.kl_priorities
  bbf = SPRLearner(make_config("bbf_smoke"), NUM_ACTIONS)
  assert bbf.target == objectives.EmaTarget(0.005, before_update=False)
  assert bbf.latents == objectives.PerSampleLatents((("target", (0, 1)), ("fixed", (2,))))
  assert bbf.priority is objectives.ce_priorities
  plain = SPRLearner(smoke(target_ema_before_update=False, double_dqn=False), NUM_ACTIONS)
  assert plain.target == objectives.OnlineTarget()
  assert plain.latents == objectives.PerSampleLatents((("target", (0, 1, 2)),))
  assert plain.selector is objectives.bootstrap_selector
  # No stored target: () in the state, and the online network is the target's view.
  state = plain.init(jax.random.PRNGKey(0))
  assert state.target_params == () and state.target_norm_state == ()
  params, norm = plain.target_view(state)
  assert params is state.params and norm is state.norm_state
