"""SGI objectives (spr/losses.py) on hand-computed values, the SGI networks' shapes, and the
per-group learning rates of finetuning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spr import losses
from spr.networks import NetworkConfig, make_sgi_network, make_spr_network


def test_goal_distance_hand_computed():
  s = jnp.array([3.0, 4.0])  # normalised: (0.6, 0.8)
  g = jnp.array([0.0, 2.0])  # normalised: (0, 1)
  sq = 0.6**2 + 0.2**2  # 0.4
  np.testing.assert_allclose(losses.latent_goal_distance(s, g), 1 - np.exp(-5 * sq), rtol=1e-6)
  np.testing.assert_allclose(losses.latent_goal_distance(s, s), 0.0, atol=1e-7)
  np.testing.assert_allclose(
      losses.latent_goal_distance(s, g, scale=1.0), 1 - np.exp(-sq), rtol=1e-6
  )


def test_goal_returns_hand_computed():
  # d = (0.8, 0.5, 0.6): rewards 10 * (0.3, -0.1); SGI discounts cumprod(nt * gamma) from the
  # first reward on: R_0 = 3 * 0.9, R_1 = R_0 + (-1) * 0.9 * 0.9.
  d = jnp.array([0.8, 0.5, 0.6])
  r = losses.hindsight_goal_returns(d, jnp.array([1.0, 1.0]), gamma=0.9, reward_scale=10.0)
  np.testing.assert_allclose(r, [2.7, 2.7 - 0.81], rtol=1e-5)
  # A terminal after the first transition stops the later rewards.
  r = losses.hindsight_goal_returns(d, jnp.array([1.0, 0.0]), gamma=0.9, reward_scale=10.0)
  np.testing.assert_allclose(r, [2.7, 2.7], rtol=1e-5)
  # Moving closer gives a positive reward, end to end through the distance.
  g = jnp.array([1.0, 0.0])
  dist = losses.latent_goal_distance(jnp.array([[0.0, 1.0], [1.0, 0.1]]), g[None])
  assert losses.hindsight_goal_returns(dist, jnp.ones(1), 0.99)[0] > 0
  with pytest.raises(ValueError):
    losses.hindsight_goal_returns(d, jnp.ones(3), 0.9)


def test_hindsight_goals_noise_permutation_and_range():
  g = jax.random.uniform(jax.random.PRNGKey(0), (64, 10))
  out = losses.hindsight_goals(jax.random.PRNGKey(1), g, noise_weight=0.0, permute_prob=0.0)
  # No noise, no permutation: just the min-max renormalisation of each goal.
  lo, hi = g.min(-1, keepdims=True), g.max(-1, keepdims=True)
  np.testing.assert_allclose(out, (g - lo) / (hi - lo), rtol=1e-5, atol=1e-6)
  out = losses.hindsight_goals(jax.random.PRNGKey(1), g, noise_weight=0.0, permute_prob=1.0)
  expected = (g - lo) / (hi - lo)
  rows = [int(np.argmin(np.abs(np.asarray(expected) - np.asarray(o)).sum(-1))) for o in out]
  np.testing.assert_allclose(out, np.asarray(expected)[rows], rtol=1e-5, atol=1e-6)
  assert len(set(rows)) < 64  # drawn with replacement: some goals repeat
  out = losses.hindsight_goals(jax.random.PRNGKey(2), g)
  assert out.shape == g.shape and float(out.min()) == 0.0 and float(out.max()) == 1.0


def test_inverse_dynamics_loss_hand_computed():
  logits = jnp.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
  actions = jnp.array([1, 0])
  ce1 = np.log(3.0)
  ce2 = -(2.0 - np.log(np.exp(2.0) + 2.0))
  np.testing.assert_allclose(
      losses.inverse_dynamics_loss(logits, actions), (ce1 + ce2) / 2, rtol=1e-6
  )
  np.testing.assert_allclose(
      losses.inverse_dynamics_loss(logits, actions, jnp.array([1.0, 0.0])), ce1 / 2, rtol=1e-6
  )
  batched = losses.batched_inverse_dynamics_loss(
      jnp.stack([logits, logits]), jnp.stack([actions, actions])
  )
  np.testing.assert_allclose(batched, [(ce1 + ce2) / 2] * 2, rtol=1e-6)
  jitted = jax.jit(losses.inverse_dynamics_loss)(logits, actions)
  np.testing.assert_allclose(jitted, (ce1 + ce2) / 2, rtol=1e-6)
  g = jax.grad(lambda l: losses.inverse_dynamics_loss(l, actions))(logits)
  np.testing.assert_allclose(g[0], (jax.nn.softmax(logits[0]) - jnp.eye(3)[1]) / 2, rtol=1e-6)


@pytest.mark.parametrize("encoder, encoder_params", [("sgi_m", None), ("sgi_ml", None)])
def test_sgi_resnet_shapes_and_size(encoder, encoder_params):
  del encoder_params
  cfg = NetworkConfig(encoder=encoder, hidden=32, num_atoms=11, noisy=False)
  net = make_sgi_network(cfg, 4)
  params, norm = jax.eval_shape(
      net.init_with_norm_state, jax.random.PRNGKey(0), jnp.zeros((2, 4, 84, 84))
  )
  latent = jax.eval_shape(net.apply[0], params, norm, jnp.zeros((2, 4, 84, 84)))
  width = 64 if encoder == "sgi_m" else 96
  assert latent.shape == (2, 7, 7, width)
  blocks = 3 if encoder == "sgi_m" else 5
  names = [m for m in params if "/encoder/" in m and m.endswith("/project")]
  assert len(names) == 3 * blocks
  expand = [m for m in params if m.endswith("group1_block1/expand")][0]
  assert params[expand]["w"].shape[-1] == width * (2 if encoder == "sgi_m" else 4)


def test_sgi_block_starts_as_its_shortcut_and_goal_head_shapes():
  cfg = NetworkConfig(
      encoder="sgi_m",
      encoder_channels=(8, 8, 8),
      hidden=16,
      num_atoms=11,
      noisy=False,
      transition_hidden=8,
  )
  net = make_sgi_network(cfg, 5)
  x = jax.random.uniform(jax.random.PRNGKey(0), (3, 4, 84, 84))
  params, norm = net.init_with_norm_state(jax.random.PRNGKey(1), x)
  encode, _, q_logits, project, _, goal_q_logits, inverse = net.apply
  with pytest.raises(ValueError, match="norm_state"):  # never silently fresh statistics
    encode(params, None, x)
  latent = encode(params, norm, x)
  assert latent.shape == (3, 7, 7, 8)
  # With the last norm's scale at 0 each block adds only its norm offset (0): the non-stride
  # blocks are the identity at init.
  for m, leaves in params.items():
    if m.endswith("norm2"):
      assert not np.any(leaves["scale"])
  goal = latent.reshape(3, -1)
  assert goal_q_logits(params, None, latent, goal).shape == (3, 5, 11)
  assert q_logits(params, None, latent, None).shape == (3, 5, 11)
  p = project(params, None, latent)
  assert p.shape == (3, 32) and inverse(params, None, p, p).shape == (3, 5)
  # The goal changes the goal head's output (FiLM), not the plain head's.
  other = goal_q_logits(params, None, latent, goal[::-1])
  assert not np.allclose(other, goal_q_logits(params, None, latent, goal))
  # The pretraining network's shared parts have the SPR network's names and shapes.
  spr = make_spr_network(cfg, 5).init(jax.random.PRNGKey(1), x)
  for m in spr:
    if (
        "/encoder" in m
        or "/transition" in m
        or m.endswith(("predictor", "value_hidden", "advantage_hidden"))
    ):
      for k in params[m]:
        assert params[m][k].shape == spr[m][k].shape


def test_per_group_learning_rates():
  from agents.spr import config as spr_config
  from agents.spr.learner import lr_group_labels, make_optimizer

  cfg = spr_config.make_config("smoke", dict(encoder_lr=1e-6, head_first_lr=3e-5, grad_clip=0.0))
  params = {
      "spr/~/encoder/conv0": {"w": jnp.zeros(2)},
      "spr/~/advantage_hidden": {"w_mu": jnp.zeros(2), "w_sigma": jnp.zeros(2)},
      "spr/~/value_hidden": {"w_mu": jnp.zeros(2)},
      "spr/~/value_out": {"w_mu": jnp.zeros(2)},
      "spr/~/transition/conv0": {"w": jnp.zeros(2)},
  }
  labels = lr_group_labels(params)
  assert labels["spr/~/encoder/conv0"]["w"] == "encoder"
  assert labels["spr/~/advantage_hidden"]["w_sigma"] == "head_first"
  assert labels["spr/~/value_out"]["w_mu"] == "rest"
  assert labels["spr/~/transition/conv0"]["w"] == "rest"
  opt = make_optimizer(cfg)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = opt.update(grads, opt.init(params), params)
  # Adam's first step is -lr * sign(g) (up to eps): the lr of each group.
  np.testing.assert_allclose(updates["spr/~/encoder/conv0"]["w"], -1e-6, rtol=1e-3)
  np.testing.assert_allclose(updates["spr/~/value_hidden"]["w_mu"], -3e-5, rtol=1e-3)
  np.testing.assert_allclose(updates["spr/~/value_out"]["w_mu"], -1e-4, rtol=1e-3)
  # Defaults keep one Adam for everything (SPR's behaviour).
  default = make_optimizer(spr_config.make_config("smoke", dict(grad_clip=0.0)))
  updates, _ = default.update(grads, default.init(params), params)
  np.testing.assert_allclose(updates["spr/~/encoder/conv0"]["w"], -1e-4, rtol=1e-3)
