"""Tests of spr/diagnostics.py on hand-made cases.

The defining cases run with and without jax.jit; the cross-checks (numpy references, the
bundle) run under jit only, since every eager op compiles on its own. Inputs are numpy arrays
for the same reason."""

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from spr import diagnostics as dg
from spr import losses

F32_EPS = float(np.finfo(np.float32).eps)


def _orthogonal(d, seed=0):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
  return q.astype(np.float32)


def _with_singular_values(s, n, d, seed=0):
  """An [n, d] matrix U diag(s) V^T with random orthonormal U, V."""
  rng = np.random.default_rng(seed)
  u, _ = np.linalg.qr(rng.normal(size=(n, len(s))))
  v, _ = np.linalg.qr(rng.normal(size=(d, len(s))))
  return ((u * np.asarray(s)) @ v.T).astype(np.float32)


class SrankTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_built_rank(self):
    # Prefix sums of (5, 4, 3, 2, 1) / 15: .33 .6 .8 .93 1 -> srank 5 at delta .01 (the 4-prefix
    # is below .99 by a wide margin), 4 at delta .1.
    phi = _with_singular_values([5.0, 4.0, 3.0, 2.0, 1.0], 20, 30)
    self.assertEqual(int(self.variant(dg.srank)(phi)), 5)
    self.assertEqual(int(self.variant(lambda x: dg.srank(x, delta=0.1))(phi)), 4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_scaled_identity_is_full_rank(self):
    fn = self.variant(dg.srank)
    self.assertEqual(int(fn(3.0 * np.eye(16, dtype=np.float32))), 16)
    tall = np.concatenate([np.eye(16), np.zeros((8, 16))]).astype(np.float32)  # N > D: capped at D
    self.assertEqual(int(fn(tall)), 16)

  @chex.variants(with_jit=True)
  def test_matches_numpy_definition_and_zero(self):
    phi = np.random.default_rng(1).normal(size=(32, 64)).astype(np.float32)
    phi[:, :40] *= 0.05  # an uneven spectrum
    s = np.linalg.svd(phi.astype(np.float64), compute_uv=False)
    expected = int(np.argmax(np.cumsum(s) / s.sum() >= 0.99)) + 1
    fn = self.variant(dg.srank)
    self.assertEqual(int(fn(phi)), expected)
    self.assertEqual(int(fn(phi.T)), expected)  # tall: the same singular values
    self.assertEqual(int(fn(np.zeros((4, 6), np.float32))), 0)

  def test_vmaps_over_runs(self):
    phis = np.stack(
        [
            _with_singular_values([2.0, 1.0], 8, 10, 0),
            _with_singular_values([3.0, 2.0, 1.0], 8, 10, 1),
        ]
    )
    np.testing.assert_array_equal(jax.jit(jax.vmap(dg.srank))(phis), [2, 3])


class DormantTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_dead_columns(self):
    h = np.abs(np.random.default_rng(0).normal(size=(8, 6))).astype(np.float32) + 0.1
    h[:, [1, 4]] = 0.0
    self.assertAlmostEqual(float(self.variant(dg.dormant_fraction)(h)), 2 / 6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_thresholds(self):
    # Per-unit E|h| = (1, 1, 1, 0, .02, 1): mean .67, scores (1.49, .., 0, .0299, ..):
    # dormant at tau 0: unit 3; at .025: unit 3; at .1: units 3 and 4. Signs do not matter.
    h = np.tile(np.array([[1.0, -1.0, 1.0, 0.0, -0.02, 1.0]], np.float32), (5, 1))
    fn = self.variant(dg.dormant_fraction, static_argnums=1)
    self.assertAlmostEqual(float(fn(h, 0.0)), 1 / 6)
    self.assertAlmostEqual(float(fn(h, 0.025)), 1 / 6)
    self.assertAlmostEqual(float(fn(h, 0.1)), 2 / 6)
    np.testing.assert_allclose(dg.neuron_scores(h)[4], 0.02 / (4.02 / 6), rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_conv_map_units_are_channels(self):
    h = np.ones((3, 4, 4, 5), np.float32)
    h[..., 2] = 0.0  # dead everywhere
    h[:, :2, :, 0] = 0.0  # zero at half the positions only: alive
    fn = self.variant(dg.dormant_fraction)
    self.assertAlmostEqual(float(fn(h)), 1 / 5)
    self.assertAlmostEqual(float(fn(np.zeros((3, 4, 4, 5), np.float32))), 1.0)  # all dead, no NaN


class PredictorMetricsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_orthogonal(self):
    q = _orthogonal(8)
    m = self.variant(dg.predictor_metrics)(q)
    self.assertAlmostEqual(float(m["orthogonality_gap"]), 0.0, places=5)
    self.assertAlmostEqual(float(m["stable_rank"]), 8.0, places=4)
    self.assertAlmostEqual(float(m["eigenvalue_spread"]), 1.0, places=4)

  @chex.variants(with_jit=True, without_jit=True)
  def test_scaled_orthogonal_gap(self):
    q = _orthogonal(8, seed=3)
    gap = self.variant(dg.orthogonality_gap)
    for c in (2.5, 0.5):
      self.assertAlmostEqual(float(gap(c * q)), abs(c - 1.0) * np.sqrt(8), places=4)
    self.assertAlmostEqual(float(gap(-q)), 0.0, places=5)  # -Q is orthogonal too

  @chex.variants(with_jit=True)
  def test_gap_is_distance_to_polar_factor(self):
    w = np.random.default_rng(2).normal(size=(6, 6))
    u, _, vt = np.linalg.svd(w)
    expected = np.linalg.norm(w - u @ vt)
    self.assertAlmostEqual(
        float(self.variant(dg.orthogonality_gap)(w.astype(np.float32))), expected, places=4
    )

  @chex.variants(with_jit=True, without_jit=True)
  def test_rank_one_and_known_spectrum(self):
    e = np.zeros((5, 5), np.float32)
    e[0, 0] = 1.0
    self.assertAlmostEqual(float(self.variant(dg.stable_rank)(e)), 1.0, places=6)
    self.assertAlmostEqual(float(self.variant(dg.eigenvalue_spread)(e)), 1.0 / F32_EPS, delta=1.0)
    w = _with_singular_values([4.0, 2.0, 1.0], 3, 3, seed=4)
    m = self.variant(dg.predictor_metrics)(w)
    self.assertAlmostEqual(float(m["stable_rank"]), 21 / 16, places=5)
    self.assertAlmostEqual(float(m["eigenvalue_spread"]), 4.0, places=4)
    self.assertAlmostEqual(float(m["orthogonality_gap"]), np.sqrt(9 + 1 + 0), places=4)

  def test_individual_functions_agree_with_bundle_and_zero_matrix(self):
    w = np.random.default_rng(5).normal(size=(7, 7)).astype(np.float32)
    m, single = jax.jit(
        lambda w: (
            dg.predictor_metrics(w),
            {
                "stable_rank": dg.stable_rank(w),
                "eigenvalue_spread": dg.eigenvalue_spread(w),
                "orthogonality_gap": dg.orthogonality_gap(w),
            },
        )
    )(w)
    for key, value in single.items():
      self.assertEqual(float(m[key]), float(value))
    z = jax.jit(dg.predictor_metrics)(np.zeros((4, 4), np.float32))
    self.assertEqual(
        [float(z[k]) for k in ("stable_rank", "eigenvalue_spread", "orthogonality_gap")],
        [0.0, 1.0, 2.0],
    )
    with self.assertRaises(AssertionError):
      dg.stable_rank(np.zeros((3, 4), np.float32))


class CosineAndDriftTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_case(self):
    pred = np.array([[[1.0, 0.0], [1.0, 1.0]], [[0.0, 1.0], [2.0, 0.0]]], np.float32)
    targ = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, -3.0], [1.0, 0.0]]], np.float32)
    mask = np.array([[1.0, 1.0], [1.0, 0.0]], np.float32)
    # k=1: cos 1 and -1 -> 0; k=2: only sample 0, cos 1/sqrt(2).
    np.testing.assert_allclose(
        self.variant(dg.cosine_per_step)(pred, targ, mask), [0.0, 2**-0.5], atol=1e-6
    )
    out = self.variant(dg.cosine_per_step)(
        pred, targ, np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    )
    self.assertAlmostEqual(float(out[0]), 0.0, places=6)
    self.assertTrue(np.isnan(out[1]))

  @chex.variants(with_jit=True, without_jit=True)
  def test_two_minus_two_cos_is_the_spr_loss(self):
    rng = np.random.default_rng(6)
    pred = rng.normal(size=(5, 3, 8)).astype(np.float32)
    targ = rng.normal(size=(5, 3, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 0, 0]], np.float32)
    loss = np.asarray(jax.jit(losses.batched_self_predictive_loss)(pred, targ, mask))  # 0 if masked
    mean_loss = loss.sum(axis=0) / mask.sum(axis=0)
    cos = self.variant(dg.cosine_per_step)(pred, targ, mask)
    np.testing.assert_allclose(2.0 - 2.0 * cos, mean_loss, rtol=1e-5, atol=1e-6)
    # Per sample too (a batch of one, everything valid).
    one = self.variant(dg.cosine_per_step)(pred[3:4], targ[3:4], mask[3:4])
    np.testing.assert_allclose(2.0 - 2.0 * one, loss[3], rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_drift(self):
    x = np.random.default_rng(7).normal(size=(6, 4)).astype(np.float32)
    drift = self.variant(dg.representation_drift)
    self.assertAlmostEqual(float(drift(x, x)), 0.0, places=6)
    self.assertAlmostEqual(float(drift(x, 3.0 * x)), 0.0, places=6)  # blind to scale
    self.assertAlmostEqual(float(drift(x, -x)), 2.0, places=6)
    e = np.eye(2, dtype=np.float32)
    self.assertAlmostEqual(float(drift(e, e[::-1])), 1.0, places=6)  # orthogonal


class GradNormsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_known_norms(self):
    grads = {
        "spr/~/encoder/conv0": {"w": np.full((2, 2), 1.5), "b": np.zeros(3)},  # 3
        "spr/~/encoder/conv1": {"b": np.array([4.0])},  # with conv0: 5
        "spr/~/transition/conv0": {"w": np.array([3.0, 4.0])},  # 5
        "spr/~/predictor": {"w": 2.0 * np.eye(3), "b": np.zeros(3)},  # sqrt(12)
        "spr/~/value_hidden": {"w_mu": np.array([1.0, 2.0])},
        "spr/~/advantage_hidden": {"w_mu": np.array([2.0])},  # head_first: 3
        "spr/~/value_out": {"w_mu": np.zeros((2, 2))},  # head: 0
    }
    norms = self.variant(dg.grad_norms_by_role)(grads)
    expected = {"encoder": 5, "transition": 5, "head_first": 3, "head": 0, "predictor": 12**0.5}
    self.assertEqual(sorted(norms), sorted(expected))  # no "inverse": absent from the tree
    np.testing.assert_allclose(
        [float(norms[r]) for r in expected], list(expected.values()), rtol=1e-6
    )
    total = np.sqrt(sum(float(v) ** 2 for v in norms.values()))
    self.assertAlmostEqual(total, float(optax.tree.norm(grads)), places=5)


class GreedyActionDistributionTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_cases(self):
    dist = self.variant(dg.greedy_action_distribution)
    # One action everywhere (a collapsed representation): share 1, entropy exactly 0.
    same = np.tile(np.array([[0.0, 2.0, 1.0]], np.float32), (5, 1))
    out = dist(same)
    self.assertEqual(float(out["greedy_top_action"]), 1.0)
    self.assertEqual(float(out["greedy_top_action_share"]), 1.0)
    self.assertEqual(float(out["greedy_action_entropy"]), 0.0)
    self.assertFalse(np.signbit(float(out["greedy_action_entropy"])))
    # Each of 4 actions greedy in exactly one of 4 states: share 1/4, entropy 1.
    out = dist(np.eye(4, dtype=np.float32))
    self.assertEqual(float(out["greedy_top_action"]), 0.0)  # a 4-way tie: the lowest
    self.assertAlmostEqual(float(out["greedy_top_action_share"]), 0.25)
    self.assertAlmostEqual(float(out["greedy_action_entropy"]), 1.0, places=6)
    # Greedy actions (0, 0, 0, 1) of 3 actions: share 3/4, entropy H(3/4, 1/4) / log 3; a tie
    # goes to the lowest action.
    q = np.array([[1, 0, 0], [1, 1, 0], [2, 0, 1], [0, 3, 0]], np.float32)
    out = dist(q)
    self.assertEqual(float(out["greedy_top_action"]), 0.0)
    self.assertAlmostEqual(float(out["greedy_top_action_share"]), 0.75)
    h = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25)) / np.log(3)
    self.assertAlmostEqual(float(out["greedy_action_entropy"]), h, places=6)


class LatentDiagnosticsTest(chex.TestCase):

  @chex.variants(with_jit=True)
  def test_keys_and_values(self):
    rng = np.random.default_rng(8)
    latents = np.abs(rng.normal(size=(6, 3, 3, 4))).astype(np.float32)
    latents[..., 1] = 0.0
    proj = _with_singular_values([3.0, 2.0, 1.0], 6, 8, seed=9)
    pred = rng.normal(size=(6, 2, 8)).astype(np.float32)
    mask = np.ones((6, 2), np.float32)
    q = _orthogonal(8)
    grads = {"spr/~/encoder/conv0": {"w": np.array([3.0, 4.0], np.float32)}}

    def fn(latents, proj, pred, q):
      return dg.latent_diagnostics(
          latents,
          proj,
          target_projections=-proj,
          predictions=pred,
          spr_targets=pred,
          spr_mask=mask,
          predictor_weights={"learned": q, "lrp": 2.0 * q},
          grads=grads,
          q_values=np.eye(6, 3, dtype=np.float32),  # greedy actions 0, 1, 2, 0, 0, 0
      )

    out = self.variant(fn)(latents, proj, pred, q)
    self.assertEqual(
        sorted(out),
        sorted(
            [
                "srank_latent",
                "srank_projection",
                "dormant_encoder",
                "dormant_head",
                "drift_projection",
                "spr_cos_k1",
                "spr_cos_k2",
                "spr_cos",
                "predictor_learned_stable_rank",
                "predictor_learned_eigenvalue_spread",
                "predictor_learned_orthogonality_gap",
                "predictor_lrp_stable_rank",
                "predictor_lrp_eigenvalue_spread",
                "predictor_lrp_orthogonality_gap",
                "grad_norm_encoder",
                "greedy_top_action",
                "greedy_top_action_share",
                "greedy_action_entropy",
            ]
        ),
    )
    for v in out.values():
      self.assertEqual((v.shape, v.dtype), ((), jnp.float32))
    self.assertEqual(float(out["srank_projection"]), 3.0)
    self.assertEqual(float(out["srank_latent"]), float(jax.jit(dg.srank)(latents.reshape(6, -1))))
    self.assertAlmostEqual(float(out["dormant_encoder"]), 0.25)
    self.assertAlmostEqual(
        float(out["dormant_head"]), float(jax.jit(dg.dormant_fraction)(np.maximum(proj, 0.0)))
    )
    self.assertAlmostEqual(float(out["drift_projection"]), 2.0, places=5)
    for key in ("spr_cos_k1", "spr_cos_k2", "spr_cos"):
      self.assertAlmostEqual(float(out[key]), 1.0, places=5)
    self.assertAlmostEqual(float(out["predictor_lrp_orthogonality_gap"]), np.sqrt(8), places=4)
    self.assertAlmostEqual(float(out["grad_norm_encoder"]), 5.0, places=6)
    self.assertAlmostEqual(float(out["greedy_top_action_share"]), 4 / 6, places=6)

  def test_minimal_inputs(self):
    out = jax.jit(dg.latent_diagnostics)(np.ones((4, 10), np.float32), np.ones((4, 3), np.float32))
    self.assertEqual(
        sorted(out), ["dormant_encoder", "dormant_head", "srank_latent", "srank_projection"]
    )
    self.assertEqual(float(out["srank_latent"]), 1.0)
    with self.assertRaises(ValueError):
      dg.latent_diagnostics(np.ones((4, 10)), np.ones((4, 3)), predictions=np.ones((4, 2, 3)))


if __name__ == "__main__":
  absltest.main()
