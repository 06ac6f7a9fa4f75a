"""Transition generators, metrics and the dynamics' exact identities and claims (fast sizes)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from theory import dynamics as dy
from theory import metrics as me
from theory import transitions as tr

N, K = 10, 2


class TransitionsTest(absltest.TestCase):

  def test_generators_are_stochastic_and_vmappable(self):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    for gen in (tr.lazy_ring, tr.random_symmetric, tr.non_normal, tr.near_bipartite):
      ts = jax.vmap(lambda k, g=gen: g(k, N))(keys)
      chex.assert_shape(ts, (3, N, N))
      ts = np.asarray(ts)
      self.assertTrue(np.all(ts >= 0))
      np.testing.assert_allclose(ts.sum(-1), 1.0, atol=1e-5)
      self.assertFalse(np.allclose(ts[0], ts[1]))  # seeds differ
    t = np.asarray(tr.lazy_ring(keys[0], N))
    np.testing.assert_allclose(t, t.T, atol=1e-5)
    self.assertGreater(np.linalg.eigvalsh(t).min(), -1e-5)  # lazy => PSD
    t, d = tr.reversible(keys[0], N)
    t, d = np.asarray(t), np.asarray(d)
    np.testing.assert_allclose(d @ t, d, atol=1e-6)
    np.testing.assert_allclose(d[:, None] * t, (d[:, None] * t).T, atol=1e-6)
    ts = np.asarray(tr.per_action(keys[0], N, 3))
    chex.assert_shape(ts, (3, N, N))
    np.testing.assert_allclose(ts[0] @ ts[1], ts[1] @ ts[0], atol=1e-5)  # commuting family

  def test_validate_rejects_bad_input(self):
    good = np.full((3, 3), 1 / 3)
    tr.validate_transition(good, np.full(3, 1 / 3), k=2)
    bad = [
        (np.ones((2, 3)) / 3, None, 1, "square"),
        (good * 1.1, None, 1, "row-stochastic"),
        (np.array([[1.5, -0.5], [0.5, 0.5]]), None, 1, "negative"),
        (good, None, 3, "k must"),
        (good, np.array([0.5, 0.5, 0.5]), 1, "sum to 1"),
    ]
    for t, d, k, msg in bad:
      with self.assertRaisesRegex(ValueError, msg):
        tr.validate_transition(t, d, k)


class MetricsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_overlap_invariant_to_rotations_of_phi(self):
    key = jax.random.PRNGKey(1)
    phi = jax.random.normal(key, (N, 3))
    u = dy.init_phi(jax.random.PRNGKey(2), N, 3)
    rot = dy.init_phi(jax.random.PRNGKey(3), 3, 3)
    mix = rot * jnp.array([1.0, 3.0, 0.2])  # any invertible mixing keeps the span
    f = self.variant(me.subspace_overlap)
    np.testing.assert_allclose(f(phi, u), f(phi @ rot, u), atol=1e-5)
    np.testing.assert_allclose(f(phi, u), f(phi @ mix, u), atol=1e-5)
    np.testing.assert_allclose(f(u @ rot, u), 1.0, atol=1e-5)
    angles = self.variant(me.principal_angles)(u @ mix, u)
    np.testing.assert_allclose(angles, 0.0, atol=2e-3)  # arccos near 1: sqrt(eps) accuracy

  def test_predictor_metrics(self):
    q = np.asarray(dy.init_phi(jax.random.PRNGKey(4), 4, 4))
    m = me.predictor_metrics(jnp.asarray(q))
    np.testing.assert_allclose(m["stable_rank"], 4.0, atol=1e-5)
    np.testing.assert_allclose(m["polar_distance"], 0.0, atol=1e-5)
    p = jnp.diag(jnp.array([2.0, 1.0, 0.0]))
    np.testing.assert_allclose(me.stable_rank(p), 1.25, atol=1e-6)
    np.testing.assert_allclose(me.polar_distance(p), np.sqrt(2.0), atol=1e-5)


class ExactIdentitiesTest(chex.TestCase):
  """Identities of the vector fields, in float64, to 1e-10 relative."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_optimal_predictor_conserves_gram_any_t_any_d(self):
    with jax.enable_x64(True):
      k1, k2, k3 = jax.random.split(jax.random.PRNGKey(5), 3)
      t = tr.non_normal(k1, N, dtype=jnp.float64)
      d = jax.random.dirichlet(k2, jnp.ones(N, jnp.float64))
      phi = jax.random.normal(k3, (N, K), jnp.float64)
      field = self.variant(dy.two_timescale_field)(phi, t, d)
      self.assertLess(float(jnp.max(jnp.abs(phi.T @ field)) / jnp.max(jnp.abs(field))), 1e-10)
      full = dy.two_timescale_field(phi, t, d, full=True)
      self.assertGreater(float(jnp.max(jnp.abs(phi.T @ full))), 1e-3)  # full gradient breaks it

  @chex.variants(with_jit=True, without_jit=True)
  def test_joint_flow_conservation_law(self):
    with jax.enable_x64(True):
      k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(6), 4)
      t = tr.non_normal(k1, N, dtype=jnp.float64)
      d = jax.random.dirichlet(k2, jnp.ones(N, jnp.float64))
      phi = jax.random.normal(k3, (N, K), jnp.float64)
      p = jax.random.normal(k4, (K, K), jnp.float64)
      for r in (0.1, 1.0, 7.0):
        dphi, dp = self.variant(dy.joint_field, static_argnums=4)(phi, p, t, d, r)
        rate = phi.T @ dphi + dphi.T @ phi - (dp @ p.T + p @ dp.T) / r
        self.assertLess(float(jnp.max(jnp.abs(rate)) / jnp.max(jnp.abs(phi.T @ dphi))), 1e-10)

  def test_symmetric_optimal_predictor_is_phi_t_phi(self):
    with jax.enable_x64(True):
      t = tr.lazy_ring(jax.random.PRNGKey(7), N, dtype=jnp.float64)
      phi = dy.init_phi(jax.random.PRNGKey(8), N, K, jnp.float64)
      p = dy.optimal_predictor(phi, t, jnp.full(N, 1.0 / N))
      np.testing.assert_allclose(p, phi.T @ t @ phi, atol=1e-12)


if __name__ == "__main__":
  absltest.main()
