"""The pieces of spr/objectives.py, each alone on a hand-made case (fake networks where a piece
only routes calls; hand-computed values where it computes)."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from spr import losses, objectives, predictors


def test_q_values_hand_computed():
  support = jnp.array([-1.0, 1.0])
  logits = jnp.array([[[0.0, 0.0], [0.0, np.log(3.0)]]])  # p = (.5, .5) and (.25, .75)
  np.testing.assert_allclose(objectives.q_values(logits, support), [[0.0, 0.5]], atol=1e-6)


def test_input_preparation_scales_without_augmentation():
  frames = jnp.array([[0, 51, 255]], jnp.uint8)
  prepare = objectives.input_preparation(False)
  np.testing.assert_allclose(prepare(None, frames), [[0.0, 0.2, 1.0]], rtol=1e-6)
  assert objectives.input_preparation(True) is objectives.augmentation.augment


def _recording_encode(calls):
  def encode(params, norm_state, images):
    del norm_state
    calls.append((float(params), images.shape[0]))
    return images + params

  return encode


@pytest.mark.parametrize("chunk, sizes", [(4, [4, 4, 2]), (0, [10]), (10, [10]), (16, [10])])
def test_encode_chunked_splits_calls_and_keeps_values(chunk, sizes):
  calls = []
  images = jnp.arange(10.0).reshape(10, 1)
  out = objectives.encode_chunked(_recording_encode(calls), 1.0, (), images, chunk)
  np.testing.assert_array_equal(out, images + 1.0)
  assert [n for _, n in calls] == sizes


def _fake_network(calls, has_norm_state=False):
  """encode: x + params; encode_train: the same, and appends (params, batch) to the statistics."""

  def encode_train(params, norm_state, images):
    calls.append(("train", float(params), images.shape[0]))
    return images + params, tuple(norm_state) + ((float(params), images.shape[0]),)

  return types.SimpleNamespace(
      has_norm_state=has_norm_state,
      encode_train=encode_train,
      apply=types.SimpleNamespace(encode=_recording_encode(calls)),
  )


def test_encoder_train_calls_batchnorm_or_passes_statistics_through():
  calls = []
  x = jnp.zeros((3, 1))
  latent, norm = objectives.Encoder(_fake_network(calls)).train(2.0, ("s",), x)
  assert norm == ("s",) and calls == [(2.0, 3)]
  np.testing.assert_array_equal(latent, x + 2.0)
  latent, norm = objectives.Encoder(_fake_network(calls, True)).train(2.0, (), x)
  assert norm == ((2.0, 3),) and calls[-1] == ("train", 2.0, 3)


def test_net_views_stop_gradients_and_pick_the_bootstrap_network():
  views = objectives.net_views(1.0, 2.0, bootstrap_with_target=True)
  assert (views.online, float(views.fixed), float(views.target), float(views.bootstrap)) == (
      1.0,
      1.0,
      2.0,
      2.0,
  )
  assert float(objectives.net_views(1.0, 2.0, False).bootstrap) == 1.0

  def f(p):
    v = objectives.net_views(p, p)
    return v.online + 3.0 * v.fixed + 5.0 * v.target

  assert float(jax.grad(f)(1.0)) == 1.0  # only the online view carries a gradient


def test_latent_inputs_keys_sequence_and_shared_next_state():
  b, k = 2, 3
  obs = jnp.arange(b * (k + 1) * 2 * 2 * 2, dtype=jnp.float32).reshape(b, k + 1, 2, 2, 2)
  nxt = -jnp.ones((b, 2, 2, 2))
  prepare = lambda key, x: x + 1000.0 * key  # the key's index shows which key prepared what
  keys = jnp.arange(7.0)
  inputs = objectives.latent_inputs(prepare, keys, obs, nxt, 1, False)
  np.testing.assert_array_equal(inputs.current, obs[:, 0])
  np.testing.assert_array_equal(inputs.sequence, obs[:, 1:].reshape(b * k, 2, 2, 2) + 1000)
  np.testing.assert_array_equal(inputs.bootstrap, nxt + 2000)
  np.testing.assert_array_equal(inputs.selector, nxt + 3000)
  inputs = objectives.latent_inputs(prepare, keys, obs, nxt, 0, True)
  np.testing.assert_array_equal(inputs.sequence, obs.reshape(b * (k + 1), 2, 2, 2) + 1000)
  assert inputs.selector is inputs.bootstrap
  empty = objectives.latent_inputs(prepare, keys, obs[:, :1], nxt, 1, False)
  assert empty.sequence.shape == (0, 2, 2, 2)


@pytest.mark.parametrize(
    "stored, bootstrap_with_target, groups, bootstrap_add",
    [
        (False, False, (("target", (0, 1, 2)),), 1.0),
        (False, True, (("target", (0, 1, 2)),), 1.0),
        (True, True, (("target", (0, 1)), ("fixed", (2,))), 100.0),
        (True, False, (("target", (0,)), ("fixed", (1, 2))), 1.0),
    ],
)
def test_per_sample_plan_merges_calls_with_the_same_parameters(
    stored, bootstrap_with_target, groups, bootstrap_add
):
  plan = objectives.latent_plan(False, stored, bootstrap_with_target)
  assert plan == objectives.PerSampleLatents(groups) and plan.first_frame == 1
  calls = []
  encoder = objectives.Encoder(_fake_network(calls))
  target = 100.0 if stored else 1.0  # without a stored target the target view is the online net
  views = objectives.net_views(1.0, target, bootstrap_with_target)
  b, k = 2, 3
  inputs = objectives.LatentInputs(
      current=jnp.zeros((b, 1)),
      sequence=jnp.ones((b * k, 1)),
      bootstrap=2 * jnp.ones((b, 1)),
      selector=3 * jnp.ones((b, 1)),
  )
  lat = plan(encoder, views, inputs, ("online",), ("target",))
  sizes = {0: b * k, 1: b, 2: b}
  assert calls == [
      (float(getattr(views, role)), sum(sizes[i] for i in idx)) for role, idx in groups
  ] + [(1.0, b)]
  np.testing.assert_array_equal(lat.future, inputs.sequence + target)
  np.testing.assert_array_equal(lat.bootstrap, inputs.bootstrap + bootstrap_add)
  np.testing.assert_array_equal(lat.selector, inputs.selector + 1.0)
  np.testing.assert_array_equal(lat.online, inputs.current + 1.0)
  assert (lat.norm_main, lat.norm_state, lat.target_norm_state) == (
      ("online",),
      ("online",),
      ("target",),
  )


@pytest.mark.parametrize("selector_pass", [True, False])
def test_batch_norm_plan_calls_in_the_reference_order(selector_pass):
  plan = objectives.latent_plan(True, True, False, double_dqn=selector_pass)
  assert plan == objectives.BatchNormLatents(selector_pass) and plan.first_frame == 0
  calls = []
  encoder = objectives.Encoder(_fake_network(calls, has_norm_state=True))
  views = objectives.net_views(1.0, 100.0, bootstrap_with_target=False)
  b, k = 2, 2
  seq = jnp.arange(b * (k + 1), dtype=jnp.float32).reshape(b * (k + 1), 1)
  inputs = objectives.LatentInputs(
      current=jnp.zeros((b, 1)),
      sequence=seq,
      bootstrap=2 * jnp.ones((b, 1)),
      selector=3 * jnp.ones((b, 1)),
  )
  lat = plan(encoder, views, inputs, (), ())
  want = [("train", 1.0, b), ("train", 100.0, b * (k + 1)), ("train", 1.0, b)]
  assert calls == want + ([("train", 1.0, b)] if selector_pass else [])
  # The target saw frame 0 too (batch statistics); the SPR targets are frames 1..K.
  np.testing.assert_array_equal(
      lat.future, seq.reshape(b, k + 1, 1)[:, 1:].reshape(b * k, 1) + 100.0
  )
  assert lat.norm_main == ((1.0, b),) and lat.target_norm_state == ((100.0, b * (k + 1)),)
  if selector_pass:  # from the statistics after the pass on s_i; the bootstrap pass moves none
    assert lat.norm_state == ((1.0, b), (1.0, b))
    np.testing.assert_array_equal(lat.selector, inputs.selector + 1.0)
  else:
    assert lat.norm_state == lat.norm_main and lat.selector is lat.bootstrap


def test_sgi_plans_share_one_target_call_or_follow_sgis_order():
  calls = []
  views = objectives.net_views(1.0, 100.0)
  seq, goal = jnp.ones((6, 1)), 2 * jnp.ones((2, 1))
  cur, nxt = jnp.zeros((2, 1)), 3 * jnp.ones((2, 1))
  lat = objectives.sgi_per_sample_latents(
      objectives.Encoder(_fake_network(calls)), views, seq, goal, cur, nxt
  )
  assert calls == [(100.0, 8), (1.0, 2), (1.0, 2)]
  np.testing.assert_array_equal(lat.goal, goal + 100.0)
  np.testing.assert_array_equal(lat.sequence, seq + 100.0)
  calls.clear()
  lat = objectives.sgi_batch_norm_latents(
      objectives.Encoder(_fake_network(calls, True)), views, seq, goal, cur, nxt
  )
  assert calls == [("train", 100.0, 2), ("train", 1.0, 2), ("train", 100.0, 6), ("train", 1.0, 2)]
  assert lat.target_norm_state == ((100.0, 2), (100.0, 6))
  assert lat.norm_main == ((1.0, 2),) and lat.norm_state == ((1.0, 2), (1.0, 2))
  np.testing.assert_array_equal(lat.next_online, nxt + 1.0)


@pytest.mark.parametrize("before, want", [(True, 0.25), (False, 0.5)])
def test_ema_target_moves_towards_the_parameters_before_or_after(before, want):
  rule = objectives.target_rule(True, 0.25, before)
  assert rule == objectives.EmaTarget(0.25, before)
  target, norm = rule.moved(1.0, 2.0, 0.0, {"m": 4.0}, {"m": 0.0})
  assert float(target) == want and float(norm["m"]) == 1.0
  assert rule.view("online", "stored") == "stored"
  assert rule.map(lambda t: t + 1, 1.0) == 2.0
  tree = {"w": jnp.ones(2)}
  copy = rule.init(tree)
  assert copy["w"] is not tree["w"]
  np.testing.assert_array_equal(copy["w"], tree["w"])


def test_online_target_is_stored_as_nothing_and_viewed_as_the_online_network():
  rule = objectives.target_rule(False, 1.0, False)
  assert rule == objectives.OnlineTarget()
  assert rule.init({"w": jnp.ones(2)}) == () and rule.view("online", ()) == "online"
  assert rule.map(lambda t: 1 / 0, ()) == ()  # never called
  assert rule.moved(1.0, 2.0, (), {}, ()) == ((), ())


def test_categorical_double_q_objective_hand_computed():
  support = jnp.array([0.0, 1.0])
  logits_tm1 = jnp.array([[[0.0, np.log(3.0)], [9.0, 9.0]]] * 2)  # a=0: p = (.25, .75)
  a_tm1 = jnp.array([0, 0])
  r, d = jnp.array([0.5, 0.5]), jnp.array([0.5, 0.5])
  # Target logits: action 0 puts its mass on z = 1, action 1 on z = 0.
  logits_t = jnp.array([[[-30.0, 30.0], [30.0, -30.0]]] * 2)
  # Sample 0 selects a* = 1 (0.5 + 0.5 * 0 -> (.5, .5)), sample 1 a* = 0 (0.5 + 0.5 -> (0, 1)).
  selector = jnp.array([[0.0, 1.0], [1.0, 0.0]])
  loss, kl = objectives.categorical_double_q_objective(
      logits_tm1, a_tm1, r, d, logits_t, selector, support
  )
  log_p = np.log([0.25, 0.75])
  want = [-(0.5 * log_p[0] + 0.5 * log_p[1]), -log_p[1]]
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  # KL(target || p) = CE - H(target): H = log 2 for sample 0, 0 for sample 1 (clamped at 1e-6).
  np.testing.assert_allclose(kl, [want[0] - np.log(2.0), want[1]], rtol=1e-4, atol=2e-5)
  _, ce = objectives.categorical_double_q_objective(
      logits_tm1, a_tm1, r, d, logits_t, selector, support, objectives.PRIORITIES["ce"]
  )
  np.testing.assert_allclose(ce, np.array(want) + 1e-10, rtol=1e-6)
  assert objectives.PRIORITIES["kl"] is objectives.kl_priorities


def test_selectors_online_or_bootstrap_q_values():
  support = jnp.array([0.0, 1.0])
  boot = jnp.array([[[0.0, 0.0], [0.0, np.log(3.0)]]])
  online = lambda params, norm, latent, key: latent * params
  latent = jnp.array([[[np.log(3.0), 0.0], [0.0, 0.0]]])
  np.testing.assert_allclose(
      objectives.online_selector(online, 1.0, latent, boot, None, support), [[0.25, 0.5]], rtol=1e-6
  )
  np.testing.assert_allclose(
      objectives.bootstrap_selector(online, 1.0, latent, boot, None, support),
      [[0.5, 0.75]],
      rtol=1e-6,
  )


def test_transition_rollout_hand_computed():
  z0 = jnp.array([[1.0], [2.0]])
  actions = jnp.array([[1, 0], [0, 1]])
  rolled = objectives.transition_rollout(lambda z, a: 2 * z + a[:, None], z0, actions)
  assert len(rolled) == 2
  np.testing.assert_array_equal(rolled[0], [[3.0], [4.0]])
  np.testing.assert_array_equal(rolled[1], [[6.0], [9.0]])


def test_transition_rollout_observes_each_step_as_it_is_made():
  seen = []
  out = objectives.transition_rollout(
      lambda z, a: z + a[:, None],
      jnp.zeros((1, 1)),
      jnp.array([[1, 2]]),
      lambda z: seen.append(float(z[0, 0])) or 10 * z,
  )
  assert seen == [1.0, 3.0]
  np.testing.assert_array_equal(jnp.stack(out), [[[10.0]], [[30.0]]])


def test_learned_and_closed_form_predictors():
  z = jax.random.normal(jax.random.PRNGKey(0), (6, 2))  # K * B = 2 * 3 pairs, k-major
  learned = objectives.learned_predictor(lambda params, norm, x: x * params)
  out, state = learned(2.0, z, None, "state")
  np.testing.assert_array_equal(out, 2 * z)
  assert state == "state"
  # Targets equal to the projections: LRP's W = Sigma^-1 C is the identity.
  targets = z.reshape(2, 3, 2).transpose(1, 0, 2)  # [B, K, D]
  lrp = objectives.closed_form_predictor("lrp", ema=0.0, ridge=0.0)
  out, state = lrp(None, z, targets, predictors.init_state(2))
  np.testing.assert_allclose(out, z, rtol=1e-4, atol=1e-5)
  assert int(state.count) == 1
  # No gradient through the weights: d sum(z W) / dz = 1 W^T = 1.
  g = jax.grad(lambda x: jnp.sum(lrp(None, x, targets, predictors.init_state(2))[0]))(z)
  np.testing.assert_allclose(g, np.ones((6, 2)), rtol=1e-4)


def test_self_predictive_objective_hand_computed():
  t = jnp.array([[[3.0, 4.0], [1.0, 0.0]]])  # [B=1, K=2, D=2]
  np.testing.assert_allclose(
      objectives.self_predictive_objective(t, t, jnp.ones((1, 2))), [0.0], atol=1e-6
  )
  np.testing.assert_allclose(
      objectives.self_predictive_objective(-t, t, jnp.ones((1, 2))), [4.0], rtol=1e-6
  )
  np.testing.assert_allclose(
      objectives.self_predictive_objective(-t, t, jnp.array([[1.0, 0.0]])), [2.0], rtol=1e-6
  )


def test_spr_rollout_loss_hand_computed():
  """A transition that adds the action, identity projection and predictor: targets equal to the
  rollout give 0, a negated step gives 4, weighted and masked after a terminal."""
  b, k = 2, 2
  transition = lambda params, norm, z, a: z + a[:, None, None, None].astype(z.dtype)
  project = lambda params, norm, z: z.reshape(z.shape[0], -1) * params
  predictor = objectives.learned_predictor(lambda params, norm, x: x)
  latent = jnp.array([[1.0, 2.0], [3.0, 1.0]]).reshape(b, 1, 1, 2)
  actions = jnp.array([[1, 2, 0], [0, 1, 0]])
  z1, z2 = (
      latent + actions[:, 0, None, None, None],
      latent + actions[:, :2].sum(1)[:, None, None, None],
  )
  future = jnp.stack([z1, -z2], axis=1).reshape(b * k, 1, 1, 2)  # sample-major
  terminals = jnp.zeros((b, 4), bool)
  loss, state = objectives.spr_rollout_loss(
      transition, project, predictor, 1.0, 1.0, latent, future, actions, terminals, (), 5.0
  )
  np.testing.assert_allclose(loss, [5.0 * 2.0] * 2, rtol=1e-6)  # mean of (0, 4) times 5
  assert state == ()
  # d_2 = 1 masks step 2 (the SPR code's convention: step k needs no terminal in d_0..d_k).
  loss, _ = objectives.spr_rollout_loss(
      transition,
      project,
      predictor,
      1.0,
      1.0,
      latent,
      future,
      actions,
      terminals.at[:, 2].set(True),
      (),
      5.0,
  )
  np.testing.assert_allclose(loss, [0.0, 0.0], atol=1e-6)
  loss, _ = objectives.spr_rollout_loss(
      transition, project, predictor, 1.0, 1.0, latent, future[:0], actions, terminals, (), 5.0
  )
  np.testing.assert_array_equal(loss, [0.0, 0.0])  # K = 0


def test_hindsight_goal_reward_hand_computed():
  latents = jnp.array([[[1.0, 0.0], [0.0, 1.0]]])  # s_t far from the goal, s_{t+1} on it
  goals = jnp.array([[0.0, 1.0]])
  got = objectives.hindsight_goal_reward(latents, goals, 0.9, 5.0, 10.0)
  np.testing.assert_allclose(got, [10.0 * 0.9 * (1.0 - np.exp(-10.0))], rtol=1e-6)
  assert (
      float(
          jax.grad(lambda x: objectives.hindsight_goal_reward(x, goals, 0.9, 5.0, 10.0)[0])(
              latents
          ).sum()
      )
      == 0.0
  )  # no gradient


def test_goal_objective_reads_online_target_and_selector_heads():
  """A fake goal head (latent * params + goal sum): the loss equals the C51 double-Q loss of the
  online head at s_t, the target head at s_{t+1} and a* from the online head at s_{t+1}."""
  support = jnp.array([0.0, 1.0])
  head = lambda params, norm, latent, goals: latent[:, 0] * params + goals.sum()
  rng = np.random.default_rng(0)
  latent, nxt_t, nxt_o = (jnp.asarray(rng.normal(size=(3, 1, 2, 2)), jnp.float32) for _ in range(3))
  goals, actions, returns = jnp.zeros((3, 4)), jnp.array([0, 1, 1]), jnp.array([0.1, 0.2, 0.3])
  views = objectives.net_views(1.0, 2.0)
  got = objectives.goal_objective(
      head, views, latent, nxt_t, nxt_o, goals, actions, returns, 0.9, support
  )
  want = losses.batched_categorical_double_q_loss(
      latent[:, 0],
      actions,
      returns,
      jnp.full((3,), 0.9),
      2.0 * nxt_t[:, 0],
      objectives.q_values(nxt_o[:, 0], support),
      support,
  )
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_inverse_objective_hand_computed():
  inverse = lambda x, y: x - y
  projections = jnp.array([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])  # [B=1, K=2, A=3]
  actions = jnp.array([[0, 1]])
  loss, accuracy = objectives.inverse_objective(
      inverse, projections, jnp.zeros_like(projections), actions
  )
  ce0 = -(2.0 - np.log(np.exp(2.0) + 2.0))
  np.testing.assert_allclose(loss, [(ce0 + np.log(3.0)) / 2], rtol=1e-6)
  assert float(accuracy) == 0.5  # step 0 right (argmax 0); step 1 a tie, argmax 0 != 1


def test_init_network_keeps_statistics_only_with_batchnorm():
  net = types.SimpleNamespace(
      has_norm_state=False, init_with_norm_state=lambda key, x: ({"w": x.sum()}, {})
  )
  params, norm, rng = objectives.init_network(net, jax.random.PRNGKey(0))
  assert norm == () and float(params["w"]) == 0.0
  np.testing.assert_array_equal(rng, jax.random.split(jax.random.PRNGKey(0))[1])
  net.has_norm_state = True
  assert objectives.init_network(net, jax.random.PRNGKey(0))[1] == {}


@pytest.mark.parametrize(
    "before, want_target", [(True, 0.5 * 1.0 + 0.5 * 3.0), (False, 0.5 * 0.8 + 0.5 * 3.0)]
)
def test_gradient_update_hand_computed(before, want_target):
  """SGD 0.1 on (p - x)^2 from p = 1, x = 0: gradient 2, p -> 0.8; the target's EMA (tau 0.5)
  from the parameters before or after the step; statistics from the aux dict."""

  def loss_fn(params, target, x):
    del target
    loss = jnp.sum((params - x) ** 2)
    return loss, dict(norm_state_main=jnp.array(4.0), target_norm_state=jnp.array(2.0))

  rule = objectives.EmaTarget(0.5, before)
  opt = optax.sgd(0.1)
  up = objectives.gradient_update(
      loss_fn, opt, rule, jnp.array(1.0), jnp.array(3.0), opt.init(jnp.array(1.0)), jnp.array(0.0)
  )
  np.testing.assert_allclose(up.loss, 1.0)
  np.testing.assert_allclose(up.params, 0.8, rtol=1e-6)
  np.testing.assert_allclose(up.target_params, want_target, rtol=1e-6)
  np.testing.assert_allclose(up.target_norm_state, 3.0, rtol=1e-6)
  assert bool(up.finite)
  up = objectives.gradient_update(
      loss_fn,
      opt,
      objectives.OnlineTarget(),
      jnp.array(1.0),
      (),
      opt.init(jnp.array(1.0)),
      jnp.array(jnp.nan),
  )
  assert not bool(up.finite) and (up.target_params, up.target_norm_state) == ((), ())
