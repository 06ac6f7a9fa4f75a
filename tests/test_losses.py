"""Tests of spr/losses.py, each numeric check run with and without jax.jit."""

import functools

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

from spr import losses

LN2 = float(np.log(2.0))
Z5 = jnp.array([-2.0, -1.0, 0.0, 1.0, 2.0])
Z3 = jnp.array([-1.0, 0.0, 1.0])


def _c51_loop(z_src, probs, z_dst):
  """Algorithm 1 of Bellemare et al. 2017 (floor/ceil form), in numpy."""
  z_src, z_dst = np.float64(z_src), np.float64(z_dst)
  v_min, v_max, dz = z_dst[0], z_dst[-1], z_dst[1] - z_dst[0]
  out = np.zeros(len(z_dst))
  for z, p in zip(np.clip(z_src, v_min, v_max), probs):
    b = min((z - v_min) / dz, len(z_dst) - 1.0)
    lo, hi = int(np.floor(b)), int(np.ceil(b))
    if lo == hi:
      out[lo] += p
    else:
      out[lo] += p * (hi - b)
      out[hi] += p * (b - lo)
  return out


class CategoricalProjectionTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_between_atoms_and_beyond_vmax(self):
    proj = self.variant(losses.categorical_projection)
    out = proj(jnp.array([-0.5, 0.25, 3.0]), jnp.array([0.2, 0.3, 0.5]), Z5)
    # -0.5 -> half to -1, half to 0; 0.25 -> .75 to 0, .25 to 1; 3 -> clip 2.
    np.testing.assert_allclose(out, [0.0, 0.1, 0.325, 0.075, 0.5], atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_below_vmin_and_exact_atom(self):
    proj = self.variant(losses.categorical_projection)
    out = proj(jnp.array([-5.0, -2.0, 1.5]), jnp.array([0.1, 0.6, 0.3]), Z5)
    np.testing.assert_allclose(out, [0.7, 0.0, 0.0, 0.15, 0.15], atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_discount_zero_collapses_to_reward(self):
    proj = self.variant(losses.categorical_projection)
    r, discount = 0.4, 0.0
    out = proj(r + discount * Z5, jnp.array([0.1, 0.2, 0.3, 0.2, 0.2]), Z5)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.6, 0.4, 0.0], atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_shift_and_scale_three_atoms(self):
    proj = self.variant(losses.categorical_projection)
    out = proj(0.5 + 0.5 * Z3, jnp.array([0.2, 0.3, 0.5]), Z3)
    np.testing.assert_allclose(out, [0.0, 0.35, 0.65], atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_non_unit_spacing(self):
    proj = self.variant(losses.categorical_projection)
    out = proj(jnp.array([2.5]), jnp.array([1.0]), jnp.array([-10.0, 0.0, 10.0]))
    np.testing.assert_allclose(out, [0.0, 0.75, 0.25], atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_mass_conserved_on_c51_support(self):
    support = jnp.linspace(-10.0, 10.0, 51)
    probs = np.random.RandomState(0).dirichlet(np.ones(51)).astype(np.float32)
    out = self.variant(losses.categorical_projection)(1.3 + 0.99**10 * support, probs, support)
    np.testing.assert_allclose(np.sum(out), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        out, _c51_loop(np.asarray(1.3 + 0.99**10 * support), probs, np.asarray(support)), atol=1e-5
    )  # float32 z
    self.assertTrue(bool(jnp.all(out >= 0)))
    # The mean is preserved when nothing is clipped (|1.3 + .904 z| <= 10.3:
    # clip at the ends only moves mass of the outermost atoms).
    inner = 1.3 + 0.5 * support
    out2 = self.variant(losses.categorical_projection)(inner, probs, support)
    np.testing.assert_allclose(np.sum(out2 * support), np.sum(probs * inner), atol=1e-4)


def _double_q_case():
  # Online logits at s_tm1 for action 1: softmax = [1/4, 1/4, 1/2].
  logits_tm1 = jnp.array([[0.0, 0.0, 0.0], [0.0, 0.0, LN2]])
  # Target net: action 0 uniform; action 1 almost all mass on z=+1 (so the
  # target net's own greedy action would be 1).
  logits_t_target = jnp.array([[0.0, 0.0, 0.0], [-50.0, -50.0, 50.0]])
  return logits_tm1, logits_t_target


class CategoricalDoubleQLossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_hand_computed_value_and_selector(self):
    logits_tm1, logits_t_target = _double_q_case()
    loss_fn = self.variant(losses.categorical_double_q_loss)
    # Selector picks action 0 (uniform): target of 0.5 + 0.5 z = [0, .5, 1]
    # projected = [0, .5, .5]; CE = -(.5 ln 1/4 + .5 ln 1/2) = 1.5 ln 2.
    loss = loss_fn(
        logits_tm1,
        jnp.int32(1),
        jnp.float32(0.5),
        jnp.float32(0.5),
        logits_t_target,
        jnp.array([1.0, 0.0]),
        Z3,
    )
    np.testing.assert_allclose(loss, 1.5 * LN2, rtol=1e-5)
    # Selector picks action 1: target ~ [0, 0, 1]; CE = ln 2.
    loss = loss_fn(
        logits_tm1,
        jnp.int32(1),
        jnp.float32(0.5),
        jnp.float32(0.5),
        logits_t_target,
        jnp.array([0.0, 1.0]),
        Z3,
    )
    np.testing.assert_allclose(loss, LN2, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_terminal_discount_zero(self):
    logits_tm1, logits_t_target = _double_q_case()
    loss_fn = self.variant(losses.categorical_double_q_loss)
    # discount 0: target = delta at r = 1 -> CE = -ln softmax(...)[2] = ln 2,
    # whatever the target distribution.
    for sel in ([1.0, 0.0], [0.0, 1.0]):
      loss = loss_fn(
          logits_tm1,
          jnp.int32(1),
          jnp.float32(1.0),
          jnp.float32(0.0),
          logits_t_target,
          jnp.array(sel),
          Z3,
      )
      np.testing.assert_allclose(loss, LN2, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_gradients(self):
    logits_tm1, logits_t_target = _double_q_case()
    grad_fn = self.variant(jax.grad(losses.categorical_double_q_loss, argnums=(0, 4)))
    g_tm1, g_target = grad_fn(
        logits_tm1,
        jnp.int32(1),
        jnp.float32(0.5),
        jnp.float32(0.5),
        logits_t_target,
        jnp.array([1.0, 0.0]),
        Z3,
    )
    np.testing.assert_allclose(g_target, jnp.zeros_like(g_target), atol=0)
    # d CE / d logits = softmax - target on the taken action only.
    expected = np.array([[0.0, 0.0, 0.0], [0.25, 0.25 - 0.5, 0.5 - 0.5]])
    np.testing.assert_allclose(g_tm1, expected, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_batched_per_sample_and_kl_priority(self):
    logits_tm1, logits_t_target = _double_q_case()
    b = 3
    tile = lambda x: jnp.broadcast_to(x, (b,) + x.shape)
    sel = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    args = (
        tile(logits_tm1),
        jnp.array([1, 1, 1], jnp.int32),
        jnp.array([0.5, 0.5, 1.0]),
        jnp.array([0.5, 0.5, 0.0]),
        tile(logits_t_target),
        sel,
    )
    loss = self.variant(losses.batched_categorical_double_q_loss)(*args, Z3)
    np.testing.assert_allclose(loss, [1.5 * LN2, LN2, LN2], rtol=1e-5)
    kl = self.variant(functools.partial(losses.batched_categorical_kl_priority, eps=1e-6))(
        *args, Z3
    )
    # KL = CE - H(target) (+ the code's 1e-6 clamp on zero target atoms).
    # H(target) = ln 2 for [0, .5, .5] and 0 for the (near) one-hot targets.
    np.testing.assert_allclose(kl, [1.5 * LN2 - LN2, LN2, LN2], atol=1e-4)
    self.assertTrue(bool(jnp.all(kl >= 1e-6)))


class NStepReturnTest(chex.TestCase):

  rewards = jnp.array([1.0, 2.0, 3.0, 4.0])

  def _run(self, terminals, gamma=0.5, n=None):
    fn = self.variant(losses.n_step_return)
    if n is None:
      return fn(self.rewards, jnp.array(terminals), jnp.float32(gamma))
    return fn(self.rewards, jnp.array(terminals), jnp.float32(gamma), jnp.int32(n))

  @chex.variants(with_jit=True, without_jit=True)
  def test_no_terminal(self):
    ret, disc = self._run([0, 0, 0, 0])
    np.testing.assert_allclose(ret, 1 + 1 + 0.75 + 0.5, rtol=1e-6)
    np.testing.assert_allclose(disc, 0.5**4, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_terminal_first(self):
    ret, disc = self._run([1, 0, 0, 0])
    np.testing.assert_allclose(ret, 1.0, rtol=1e-6)
    np.testing.assert_allclose(disc, 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_terminal_middle_and_later_ignored(self):
    ret, disc = self._run([0, 0, 1, 1])
    np.testing.assert_allclose(ret, 1 + 1 + 0.75, rtol=1e-6)
    np.testing.assert_allclose(disc, 0.0)

  @chex.variants(with_jit=True, without_jit=True)
  def test_runtime_n_smaller_than_n_max(self):
    ret, disc = self._run([0, 0, 0, 1], n=2)  # terminal outside the window
    np.testing.assert_allclose(ret, 2.0, rtol=1e-6)
    np.testing.assert_allclose(disc, 0.25, rtol=1e-6)
    ret, disc = self._run([0, 1, 0, 0], n=2)  # terminal on the last step
    np.testing.assert_allclose(ret, 2.0, rtol=1e-6)
    np.testing.assert_allclose(disc, 0.0)
    ret, disc = self._run([0, 0, 0, 0], gamma=0.9, n=1)
    np.testing.assert_allclose(ret, 1.0, rtol=1e-6)
    np.testing.assert_allclose(disc, 0.9, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_loop_for_traced_n_and_gamma(self):
    rng = np.random.RandomState(0)
    fn = self.variant(losses.batched_n_step_return)
    rewards = rng.randn(16, 10).astype(np.float32)
    terminals = rng.rand(16, 10) < 0.15
    for n, gamma in [(10, 0.97), (3, 0.997), (6, 0.99)]:
      ret, disc = fn(jnp.array(rewards), jnp.array(terminals), jnp.float32(gamma), jnp.int32(n))
      for b in range(16):
        exp_ret, exp_disc = 0.0, gamma**n
        for j in range(n):
          exp_ret += gamma**j * rewards[b, j]
          if terminals[b, j]:
            exp_disc = 0.0
            break
        np.testing.assert_allclose(ret[b], exp_ret, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(disc[b], exp_disc, rtol=1e-5, atol=1e-7)


class SelfPredictiveLossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_values(self):
    fn = self.variant(losses.self_predictive_loss)
    p = jnp.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    t = jnp.array([[1.0, 2.0, 3.0], [-1.0, -2.0, -3.0], [0.0, 5.0, 0.0], [4.0, 3.0, 0.0]])
    out = fn(p, t, jnp.ones(4))
    # identical -> 0, opposite -> 4, orthogonal -> 2, 2 - 2 * 24/25.
    np.testing.assert_allclose(out, [0.0, 4.0, 2.0, 2.0 - 2.0 * 24.0 / 25.0], atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_scale_invariance_and_mask(self):
    fn = self.variant(losses.self_predictive_loss)
    rng = np.random.RandomState(0)
    p = jnp.asarray(rng.randn(5, 16).astype(np.float32))
    t = jnp.asarray(rng.randn(5, 16).astype(np.float32))
    base = fn(p, t, jnp.ones(5))
    scales = jnp.array([0.1, 1.0, 7.0, 100.0, 0.5])[:, None]
    np.testing.assert_allclose(fn(p * scales, t / scales, jnp.ones(5)), base, rtol=1e-5)
    cos = jnp.sum(p * t, -1) / (jnp.linalg.norm(p, axis=-1) * jnp.linalg.norm(t, axis=-1))
    np.testing.assert_allclose(base, 2.0 - 2.0 * cos, rtol=1e-5, atol=1e-6)
    mask = jnp.array([1.0, 0.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(fn(p, t, mask), base * mask, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_no_gradient_into_targets(self):
    rng = np.random.RandomState(1)
    p = jnp.asarray(rng.randn(3, 8).astype(np.float32))
    t = jnp.asarray(rng.randn(3, 8).astype(np.float32))
    f = lambda p, t: jnp.sum(losses.self_predictive_loss(p, t, jnp.ones(3)))
    gp, gt = self.variant(jax.grad(f, argnums=(0, 1)))(p, t)
    np.testing.assert_array_equal(gt, np.zeros_like(gt))
    self.assertGreater(float(jnp.abs(gp).sum()), 0.0)
    # Masked steps get no gradient.
    g = lambda p: jnp.sum(losses.self_predictive_loss(p, t, jnp.array([1.0, 0.0, 1.0])))
    gp = self.variant(jax.grad(g))(p)
    np.testing.assert_array_equal(gp[1], np.zeros(8))

  @chex.variants(with_jit=True, without_jit=True)
  def test_eps_matches_torch_normalize(self):
    fn = self.variant(losses.self_predictive_loss)
    # ||p|| = 1e-5 < eps = 1e-3: F.normalize gives p / 1e-3 = [0.01, 0].
    p = jnp.array([[1e-5, 0.0]])
    t = jnp.array([[1.0, 0.0]])
    np.testing.assert_allclose(fn(p, t, jnp.ones(1)), [(1.0 - 0.01) ** 2], rtol=1e-5)
    # A zero prediction has loss 1 and a finite gradient.
    g = self.variant(jax.grad(lambda p: fn(p, t, jnp.ones(1))[0]))(jnp.zeros((1, 2)))
    self.assertTrue(bool(jnp.all(jnp.isfinite(g))))

  @chex.variants(with_jit=True, without_jit=True)
  def test_batched(self):
    p = jnp.ones((2, 3, 4))
    t = jnp.concatenate([jnp.ones((1, 3, 4)), -jnp.ones((1, 3, 4))])
    out = self.variant(losses.batched_self_predictive_loss)(p, t, jnp.ones((2, 3)), 1e-3)
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]], atol=1e-6)


class SprMaskAndWeightingTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_masks(self):
    code = self.variant(functools.partial(losses.spr_sequence_mask, convention='spr_code'))
    excl = self.variant(functools.partial(losses.spr_sequence_mask, convention='exclusive'))
    cases = {
        # d_0..d_5 (K = 5): (spr_code mask for k=1..5, exclusive mask)
        (0, 0, 0, 0, 0, 0): ([1, 1, 1, 1, 1], [1, 1, 1, 1, 1]),
        (0, 0, 1, 0, 0, 0): ([1, 0, 0, 0, 0], [1, 1, 0, 0, 0]),
        (1, 0, 0, 0, 0, 0): ([0, 0, 0, 0, 0], [0, 0, 0, 0, 0]),
        (0, 0, 0, 0, 0, 1): ([1, 1, 1, 1, 0], [1, 1, 1, 1, 1]),
        (0, 1, 0, 1, 0, 0): ([0, 0, 0, 0, 0], [1, 0, 0, 0, 0]),
    }
    for d, (exp_code, exp_excl) in cases.items():
      d = jnp.array(d, jnp.uint8)
      np.testing.assert_array_equal(code(d), exp_code)
      np.testing.assert_array_equal(excl(d), exp_excl)
    # The code's literal expression.
    d = jnp.array([0.0, 0.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(self.variant(losses.nonterminal_prefix_mask)(d), [1, 1, 0, 0, 0])

  @chex.variants(with_jit=True, without_jit=True)
  def test_batched_masks(self):
    d = jnp.array([[0, 0, 1, 0], [0, 0, 0, 1]], jnp.uint8)
    np.testing.assert_array_equal(
        self.variant(losses.batched_spr_sequence_mask)(d), [[1, 0, 0], [1, 1, 0]]
    )
    excl = self.variant(functools.partial(losses.batched_spr_sequence_mask, convention='exclusive'))
    np.testing.assert_array_equal(excl(d), [[1, 1, 0], [1, 1, 1]])

  def test_bad_convention(self):
    with self.assertRaises(ValueError):
      losses.spr_sequence_mask(jnp.zeros(6), convention='nope')

  @chex.variants(with_jit=True, without_jit=True)
  def test_weighting(self):
    fn = self.variant(losses.spr_loss_weighting)
    np.testing.assert_allclose(fn(jnp.array([1.0, 2.0, 3.0, 4.0, 5.0]), 5.0), 15.0)
    # Masked (zero) steps still count in the denominator, as in the code.
    np.testing.assert_allclose(fn(jnp.array([2.0, 0.0, 0.0, 0.0, 0.0]), 5.0), 2.0)


if __name__ == '__main__':
  absltest.main()
