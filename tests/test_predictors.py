"""Numerics of spr.predictors, under jit and without (chex variants)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from spr import predictors as preds


def _spd(seed, f=6, b=200):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(b, f)).astype(np.float32)
  return z, z.T @ z / b


def _sqrt(m):
  vals, vecs = np.linalg.eigh(m.astype(np.float64))
  return (vecs * np.sqrt(vals)) @ vecs.T


class MatrixFunctionsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_newton_schulz_converges_to_sqrt(self):
    _, sigma = _spd(0)
    root, inv = self.variant(preds.newton_schulz_sqrt)(jnp.asarray(sigma))
    # float32: relative error ~ 1e-6 at 20 iterations (1e-15 in float64, see theory.check)
    np.testing.assert_allclose(root, _sqrt(sigma), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(root) @ np.asarray(inv), np.eye(6), atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_visser_converges_to_sqrt(self):
    _, sigma = _spd(1)
    root = self.variant(preds.visser_sqrt)(jnp.asarray(sigma))
    np.testing.assert_allclose(root, _sqrt(sigma), atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_ns2_is_fourth_root(self):
    _, sigma = _spd(2)
    w = self.variant(preds.ns2_from_stats)(jnp.asarray(sigma), jnp.asarray(sigma))
    np.testing.assert_allclose(
        np.linalg.matrix_power(np.asarray(w, np.float64), 4), sigma, atol=1e-4
    )

  @chex.variants(with_jit=True, without_jit=True)
  def test_stiefel_converges_to_polar_factor(self):
    m = np.random.default_rng(3).normal(size=(5, 5)).astype(np.float32) + 3 * np.eye(
        5, dtype=np.float32
    )
    w = self.variant(preds.stiefel_projection)(jnp.asarray(m))
    u, _, vt = np.linalg.svd(m.T)
    np.testing.assert_allclose(w, u @ vt, atol=1e-4)
    np.testing.assert_allclose(np.asarray(w) @ np.asarray(w).T, np.eye(5), atol=1e-4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_lrp_equals_least_squares(self):
    rng = np.random.default_rng(4)
    z = rng.normal(size=(100, 4))
    zt = z @ rng.normal(size=(4, 4)) + 0.1 * rng.normal(size=(100, 4))
    with jax.enable_x64(True):
      w, state = self.variant(preds.lrp)(
          jnp.asarray(z), jnp.asarray(zt), preds.init_state(4, jnp.float64)
      )
      np.testing.assert_allclose(w, np.linalg.lstsq(z, zt, rcond=None)[0], atol=1e-12)
      self.assertEqual(int(state.count), 1)

  def test_ridge_lrp_is_ridge_regression(self):
    z, sigma = _spd(5)
    w = preds.lrp_from_stats(jnp.asarray(sigma), jnp.asarray(sigma), ridge=0.5)
    np.testing.assert_allclose(w, np.linalg.solve(sigma + 0.5 * np.eye(6), sigma), atol=1e-5)

  def test_directpred_and_directcopy(self):
    _, sigma = _spd(6)
    w = preds.directpred_from_stats(jnp.asarray(sigma), None, eps=0.0)
    lmax = np.linalg.eigvalsh(sigma).max()
    np.testing.assert_allclose(w, _sqrt(sigma) / np.sqrt(lmax), atol=1e-5)
    w = preds.directcopy_from_stats(jnp.asarray(sigma), None, eps=0.1, ridge=0.2)
    np.testing.assert_allclose(w, sigma + 0.3 * np.eye(6), atol=1e-6)

  def test_ne_is_first_order_neumann(self):
    _, sigma = _spd(7)
    c = np.random.default_rng(7).normal(size=(6, 6)).astype(np.float32)
    w = preds.ne_from_stats(jnp.asarray(sigma), jnp.asarray(c))
    np.testing.assert_allclose(w, 2 * c - sigma @ c, atol=1e-5)


class UniformSignatureTest(parameterized.TestCase):

  @parameterized.parameters(*sorted(preds.PREDICTORS))
  def test_signature_ema_and_vmap(self, name):
    fn = preds.PREDICTORS[name]
    rng = np.random.default_rng(8)
    z1, z2 = (jnp.asarray(rng.normal(size=(64, 4)), jnp.float32) for _ in range(2))
    state = preds.init_state(4)
    w1, s1 = jax.jit(lambda a, b, s: fn(a, b, s, ema=0.9))(z1, z1 + 0.1, state)
    chex.assert_shape(w1, (4, 4))
    w2, s2 = fn(z2, z2 + 0.1, s1, ema=0.9)
    sig1, _ = preds.batch_statistics(z1, z1 + 0.1)
    sig2, _ = preds.batch_statistics(z2, z2 + 0.1)
    np.testing.assert_allclose(s2.sigma, 0.9 * sig1 + 0.1 * sig2, atol=1e-6)
    self.assertTrue(np.all(np.isfinite(np.asarray(w2))))
    # batched over a leading axis with vmap
    zs = jnp.stack([z1, z2])
    ws, _ = jax.vmap(lambda a: fn(a, a, preds.init_state(4)))(zs)
    chex.assert_shape(ws, (2, 4, 4))

  def test_lrp_differentiable(self):
    z = jnp.asarray(np.random.default_rng(9).normal(size=(32, 3)), jnp.float32)
    g = jax.grad(lambda a: jnp.sum(preds.lrp(a, a * 2.0, preds.init_state(3))[0]))(z)
    self.assertTrue(np.all(np.isfinite(np.asarray(g))))


if __name__ == "__main__":
  absltest.main()
