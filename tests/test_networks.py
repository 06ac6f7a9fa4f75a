"""Shape contracts and exact behaviour of the SPR network pieces."""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spr import networks


def test_renormalize_maps_each_sample_to_unit_range():
  x = jnp.stack([jnp.arange(12.0).reshape(2, 2, 3), -jnp.arange(12.0).reshape(2, 2, 3) * 3])
  for fn in (networks.renormalize, jax.jit(networks.renormalize)):
    y = fn(x)
    np.testing.assert_allclose(y[0], np.arange(12.0).reshape(2, 2, 3) / 11.0, rtol=1e-6)
    np.testing.assert_allclose(y[1], 1.0 - np.arange(12.0).reshape(2, 2, 3) / 11.0, rtol=1e-6)
  np.testing.assert_array_equal(networks.renormalize(jnp.ones((1, 3, 3, 2))), 0.0)


def _apply(fn, *args, rng=0):
  t = hk.transform(fn)
  params = t.init(jax.random.PRNGKey(rng), *args)
  return params, t.apply(params, None, *args)


def test_nature_encoder_shapes_and_parameter_count():
  params, out = _apply(lambda x: networks.NatureEncoder()(x), jnp.zeros((2, 84, 84, 4)))
  assert out.shape == (2, 7, 7, 64)
  count = sum(p.size for p in jax.tree.leaves(params))
  assert count == (8 * 8 * 4 * 32 + 32) + (4 * 4 * 32 * 64 + 64) + (3 * 3 * 64 * 64 + 64)


def test_torch_default_init_bounds():
  params, _ = _apply(
      lambda x: hk.Linear(7, w_init=networks.TORCH_INIT, b_init=networks.torch_bias_init(400))(x),
      jnp.zeros((1, 400)),
  )
  w = params["linear"]["w"]
  assert np.abs(w).max() <= 1 / 20 and np.abs(w).max() > 0.9 / 20  # U(+-1/sqrt(400))


def test_noisy_linear_is_the_factorised_gaussian_layer():
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 5))
  key = jax.random.PRNGKey(7)

  def f(x, noisy):
    return networks.NoisyLinear(4, std_init=0.5)(x, key if noisy else None)

  t = hk.transform(f)
  params = t.init(jax.random.PRNGKey(0), x, True)["noisy_linear"]
  np.testing.assert_allclose(params["w_sigma"], 0.5 / np.sqrt(5))
  np.testing.assert_allclose(params["b_sigma"], 0.5 / np.sqrt(4))
  full = {"noisy_linear": params}
  mean_out = t.apply(full, None, x, False)
  np.testing.assert_allclose(mean_out, x @ params["w_mu"] + params["b_mu"], rtol=1e-6)
  # Explicit outer-product form of the factorised noise (Fortunato et al. 2018, eq. 11).
  k_in, k_out = jax.random.split(key)
  g = lambda e: np.sign(e) * np.sqrt(np.abs(e))
  e_in, e_out = g(jax.random.normal(k_in, (5,))), g(jax.random.normal(k_out, (4,)))
  w = params["w_mu"] + params["w_sigma"] * np.outer(e_in, e_out)
  b = params["b_mu"] + params["b_sigma"] * e_out
  for apply in (t.apply, jax.jit(t.apply, static_argnums=3)):
    np.testing.assert_allclose(apply(full, None, x, True), x @ w + b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def small_net():
  cfg = networks.NetworkConfig(
      encoder_channels=(8, 8, 8), hidden=16, num_atoms=5, transition_hidden=8
  )
  net = networks.make_spr_network(cfg, num_actions=3)
  obs = jax.random.uniform(jax.random.PRNGKey(0), (4, 4, 84, 84))
  return cfg, net, net.init(jax.random.PRNGKey(1), obs), obs


def test_spr_network_shape_contracts(small_net):
  cfg, net, params, obs = small_net
  encode, transition, q_logits, project, predict = net.apply
  latent = encode(params, None, obs)
  assert latent.shape == (4, 7, 7, 8)
  assert float(latent.min()) == 0.0 and float(latent.max()) == pytest.approx(1.0)
  nxt = transition(params, None, latent, jnp.array([0, 1, 2, 0]))
  assert nxt.shape == latent.shape
  assert float(nxt.min()) == 0.0 and float(nxt.max()) == pytest.approx(1.0)
  logits = q_logits(params, None, latent, None)
  assert logits.shape == (4, 3, 5)
  proj = project(params, None, latent)
  assert proj.shape == (4, 2 * cfg.hidden)
  assert predict(params, None, proj).shape == (4, 2 * cfg.hidden)


def test_apply_is_a_named_structure_that_still_unpacks(small_net):
  _, net, params, obs = small_net
  assert isinstance(net.apply, networks.SPRApply)
  assert net.apply._fields == ("encode", "transition", "q_logits", "project", "predict")
  encode, *_ = net.apply
  assert encode is net.apply.encode is net.apply[0]
  np.testing.assert_array_equal(
      net.apply.encode(params, None, obs[:1]), encode(params, None, obs[:1])
  )
  sgi = networks.make_sgi_network(
      networks.NetworkConfig(encoder_channels=(8, 8, 8), hidden=16, num_atoms=5, noisy=False), 3
  )
  assert sgi.apply._fields == networks.SPRApply._fields + ("goal_q_logits", "inverse")


def test_projection_is_the_heads_first_layer_with_mean_weights(small_net):
  _, net, params, obs = small_net
  encode, _, _, project, _ = net.apply
  latent = encode(params, None, obs)
  flat = latent.reshape(4, -1)
  p = params
  value = flat @ p["spr/~/value_hidden"]["w_mu"] + p["spr/~/value_hidden"]["b_mu"]
  adv = flat @ p["spr/~/advantage_hidden"]["w_mu"] + p["spr/~/advantage_hidden"]["b_mu"]
  np.testing.assert_allclose(
      project(params, None, latent), np.concatenate([value, adv], -1), rtol=1e-5, atol=1e-6
  )


def test_dueling_head_advantages_are_centred(small_net):
  _, net, params, obs = small_net
  encode, _, q_logits, _, _ = net.apply
  latent = encode(params, None, obs)
  flat = latent.reshape(4, -1)
  p = params
  value = jax.nn.relu(flat @ p["spr/~/value_hidden"]["w_mu"] + p["spr/~/value_hidden"]["b_mu"])
  value = value @ p["spr/~/value_out"]["w_mu"] + p["spr/~/value_out"]["b_mu"]
  logits = q_logits(params, None, latent, None)
  # Mean over actions of the logits is the value stream (advantages have zero mean).
  np.testing.assert_allclose(logits.mean(axis=1), value, rtol=1e-5, atol=1e-5)


def test_noise_changes_q_only_when_a_key_is_given(small_net):
  _, net, params, obs = small_net
  encode, _, q_logits, _, _ = net.apply
  latent = encode(params, None, obs)
  a = q_logits(params, None, latent, None)
  np.testing.assert_array_equal(a, q_logits(params, None, latent, None))
  b = q_logits(params, None, latent, jax.random.PRNGKey(3))
  assert not np.allclose(a, b)


def test_scale_gradient_is_identity_forward_and_scales_backward():
  x = jnp.array([1.0, -2.0, 3.0])
  for fn in (networks.scale_gradient, jax.jit(networks.scale_gradient, static_argnums=1)):
    np.testing.assert_array_equal(fn(x, 0.5), x)
    np.testing.assert_allclose(
        jax.grad(lambda v: jnp.sum(fn(v, 2**-0.5) ** 2))(x), 2 * x * 2**-0.5, rtol=1e-6
    )
