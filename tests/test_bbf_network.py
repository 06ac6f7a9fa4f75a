"""BBF's network, init and priorities as google-research bigger_better_faster builds them
(bbf/spr_networks.py RainbowDQNNetwork / ConvTMCell / ImpalaCNN, bbf/agents/spr_agent.py):
the shared projection/head layer, no head gradient scaling, the transition model without
BatchNorm, xavier_uniform init with zero biases, and sqrt(CE)-proportional priorities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agents.spr.config import make_config
from agents.spr.learner import SPRLearner, lr_group_labels, q_values
from spr import losses, replay
from spr.networks import NetworkConfig, make_spr_network, renormalize

A = 3
NET = NetworkConfig(
    encoder="impala",
    impala_width=1,
    hidden=8,
    num_atoms=5,
    noisy=False,
    transition_hidden=8,
    head="shared",
    transition_norm=False,
    init="xavier",
    renorm_eps=1e-5,
)


@pytest.fixture(scope="module")
def net():
  network = make_spr_network(NET, A)
  obs = jax.random.uniform(jax.random.PRNGKey(1), (2, 4, 84, 84))
  params = jax.jit(network.init)(jax.random.PRNGKey(0), obs)
  return network, params, obs


def _mod(params, suffix):
  (name,) = [m for m in params if m.endswith(suffix)]
  return params[name]


def test_bbf_configs_build_bbfs_network():
  for name in ("bbf", "bbf_rr2", "bbf_smoke"):
    c = make_config(name)
    assert (c.head, c.transition_norm, c.init, c.renorm_eps) == ("shared", False, "xavier", 1e-5)
    assert (c.priority_kind, c.priority_alpha) == ("ce", 0.5)
  assert 2 * make_config("bbf").hidden == 2048  # BBF.gin RainbowDQNNetwork.hidden_dim
  spr = make_config("spr")
  assert (spr.head, spr.transition_norm, spr.init, spr.renorm_eps, spr.priority_kind) == (
      "dueling",
      True,
      "torch",
      0.0,
      "kl",
  )
  with pytest.raises(ValueError):
    make_config("bbf_smoke", {"init_from": "/x"})


def test_shared_head_shapes_and_projection_is_pre_relu_shared_layer(net):
  network, params, obs = net
  encode, _, q_logits, project, predict = network.apply
  assert not any(m.endswith(("value_hidden", "advantage_hidden")) for m in params)
  latent = encode(params, None, obs)
  flat = latent.reshape(2, -1)
  sh, v, adv, pred = (
      _mod(params, s) for s in ("shared_hidden", "value_out", "advantage_out", "predictor")
  )
  assert sh["w_mu"].shape == (flat.shape[1], 16) and sh["b_mu"].shape == (16,)
  assert v["w_mu"].shape == (16, 5) and adv["w_mu"].shape == (16, A * 5)
  assert pred["w"].shape == (16, 16)  # projection -> projection
  proj = flat @ sh["w_mu"] + sh["b_mu"]
  np.testing.assert_allclose(project(params, None, latent), proj, rtol=1e-5, atol=1e-6)
  h = jax.nn.relu(proj)
  val = (h @ v["w_mu"] + v["b_mu"])[:, None]
  ad = (h @ adv["w_mu"] + adv["b_mu"]).reshape(2, A, 5)
  np.testing.assert_allclose(
      q_logits(params, None, latent, None),
      val + ad - ad.mean(1, keepdims=True),
      rtol=1e-5,
      atol=1e-6,
  )
  np.testing.assert_allclose(
      predict(params, None, proj), proj @ pred["w"] + pred["b"], rtol=1e-5, atol=1e-6
  )
  assert (
      lr_group_labels(params)[[m for m in params if m.endswith("shared_hidden")][0]]["w_mu"]
      == "head_first"
  )


def test_shared_head_has_no_gradient_scaling(net):
  network, params, obs = net
  encode, _, q_logits, _, _ = network.apply
  latent = encode(params, None, obs)
  sh, v, adv = (_mod(params, s) for s in ("shared_hidden", "value_out", "advantage_out"))

  def by_hand(z):
    h = jax.nn.relu(z.reshape(2, -1) @ sh["w_mu"] + sh["b_mu"])
    val = (h @ v["w_mu"] + v["b_mu"])[:, None]
    ad = (h @ adv["w_mu"] + adv["b_mu"]).reshape(2, A, 5)
    return jnp.sum(jnp.sin(val + ad - ad.mean(1, keepdims=True)))

  got = jax.grad(lambda z: jnp.sum(jnp.sin(q_logits(params, None, z, None))))(latent)
  np.testing.assert_allclose(got, jax.grad(by_hand)(latent), rtol=1e-4, atol=1e-7)
  # The SPR dueling head does scale it by 1/sqrt(2).
  spr = make_spr_network(
      NetworkConfig(
          encoder="impala", impala_width=1, hidden=8, num_atoms=5, noisy=False, transition_hidden=8
      ),
      A,
  )
  sp = spr.init(jax.random.PRNGKey(0), obs)
  vh, ah, vo, ao = (
      _mod(sp, s) for s in ("value_hidden", "advantage_hidden", "value_out", "advantage_out")
  )

  def spr_by_hand(z):
    x = z.reshape(2, -1)
    val = (jax.nn.relu(x @ vh["w_mu"] + vh["b_mu"]) @ vo["w_mu"] + vo["b_mu"])[:, None]
    ad = (jax.nn.relu(x @ ah["w_mu"] + ah["b_mu"]) @ ao["w_mu"] + ao["b_mu"]).reshape(2, A, 5)
    return jnp.sum(jnp.sin(val + ad - ad.mean(1, keepdims=True)))

  g = jax.grad(lambda z: jnp.sum(jnp.sin(spr.apply[2](sp, None, z, None))))(latent)
  np.testing.assert_allclose(g, jax.grad(spr_by_hand)(latent) * 2**-0.5, rtol=1e-4, atol=1e-7)
  assert any("norm0" in m for m in sp) and not any("norm0" in m for m in params)


def test_transition_without_norm_is_conv_relu_conv_relu_renorm(net):
  network, params, obs = net
  encode, transition = network.apply[0], network.apply[1]
  latent = encode(params, None, obs)
  action = jnp.array([0, 2])
  c0, c1 = _mod(params, "transition/conv0"), _mod(params, "transition/conv1")
  conv = (
      lambda x, p: jax.lax.conv_general_dilated(
          x, p["w"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
      )
      + p["b"]
  )
  b, h, w, _ = latent.shape
  planes = jnp.broadcast_to(jax.nn.one_hot(action, A)[:, None, None], (b, h, w, A))
  x = jax.nn.relu(conv(jnp.concatenate([latent, planes], -1), c0))
  x = jax.nn.relu(conv(x, c1))
  flat = x.reshape(b, -1)
  lo, hi = flat.min(1)[:, None, None, None], flat.max(1)[:, None, None, None]
  expected = (x - lo) / (hi - lo + 1e-5)  # BBF's renormalize
  np.testing.assert_allclose(
      transition(params, None, latent, action), expected, rtol=1e-5, atol=1e-6
  )
  np.testing.assert_allclose(renormalize(x, 1e-5), expected, rtol=1e-6)


def test_xavier_bounds_and_zero_biases(net):
  _, params, _ = net
  for mod, leaves in params.items():
    for k, v in leaves.items():
      v = np.asarray(v)
      if k in ("w", "w_mu"):
        fan_in, fan_out = int(np.prod(v.shape[:-1])), int(np.prod(v.shape[:-2])) * v.shape[-1]
        bound = np.sqrt(6.0 / (fan_in + fan_out))
        assert np.abs(v).max() <= bound + 1e-7, mod
        if v.size >= 1000:
          assert np.abs(v).max() > 0.95 * bound, mod
          assert np.std(v) == pytest.approx(bound / np.sqrt(3), rel=0.1), mod
      elif k in ("b", "b_mu"):
        assert not v.any(), mod
  assert not any(k.endswith("sigma") for leaves in params.values() for k in leaves)


def test_ce_priorities_and_bbfs_sampling_distribution():
  config = make_config(
      "smoke", dict(augmentation=False, noisy=False, spr_steps=0, priority_kind="ce")
  )
  learner = SPRLearner(config, A)
  state = learner.init(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  h = config.n_step
  batch = dict(
      observations=jnp.asarray(rng.integers(0, 255, (4, 1, 4, 84, 84), dtype=np.uint8)),
      next_observations=jnp.asarray(rng.integers(0, 255, (4, 4, 84, 84), dtype=np.uint8)),
      actions=jnp.asarray(rng.integers(0, A, (4, 1)), jnp.int32),
      rewards=jnp.asarray(rng.choice([-1.0, 0.0, 1.0], (4, h + 1)), jnp.float32),
      terminals=jnp.zeros((4, h + 1), bool),
  )
  _, aux = jax.jit(learner.loss)(
      state.params, state.params, batch, jnp.ones(4), jax.random.PRNGKey(1)
  )
  encode, _, q_logits, _, _ = learner.network.apply
  obs = batch["observations"][:, 0].astype(jnp.float32) / 255
  nxt = batch["next_observations"].astype(jnp.float32) / 255
  logits = q_logits(state.params, None, encode(state.params, None, obs), None)
  next_logits = q_logits(state.params, None, encode(state.params, None, nxt), None)
  ret, disc = losses.batched_n_step_return(
      batch["rewards"][:, :h], batch["terminals"][:, :h], config.gamma
  )
  ce = losses.batched_categorical_double_q_loss(
      logits,
      batch["actions"][:, 0],
      ret,
      disc,
      next_logits,
      q_values(next_logits, learner.support),
      learner.support,
  )
  np.testing.assert_allclose(aux["priorities"], ce + 1e-10, rtol=1e-5)

  # Stored CE, sampled with alpha 0.5: P(i) proportional to sqrt(CE_i + 1e-10) (BBF's stored
  # priority, sampled proportionally by its sum tree); IS weights with beta 0.5 equal BBF's
  # 1 / sqrt(stored priority), normalised by the batch max.
  buf = replay.replay_init(64)
  add = jax.jit(replay.replay_add)
  for t in range(40):
    buf = add(buf, np.zeros((84, 84), np.uint8), np.int32(0), np.float32(0), np.bool_(False))
  idx = jnp.arange(3, 33)
  ce_vals = jnp.asarray(rng.uniform(0.05, 4.0, 30), jnp.float32)
  buf = replay.replay_update_priorities(buf, idx, ce_vals + 1e-10)
  sampled, w = replay.sample_indices(buf, jax.random.PRNGKey(3), 4096, 3, 0, 0.5, 0.5)
  stored = np.asarray(buf.priorities, np.float64)
  bbf_priority = np.sqrt(stored)  # sqrt(CE + 1e-10) at the updated slots
  got_w = np.asarray(w)
  exp_w = 1.0 / np.sqrt(bbf_priority[np.asarray(sampled)])
  np.testing.assert_allclose(got_w, exp_w / exp_w.max(), rtol=1e-4)
  np.testing.assert_allclose(bbf_priority[np.asarray(idx)], np.sqrt(np.asarray(ce_vals)), rtol=1e-6)
