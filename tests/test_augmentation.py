"""Tests of spr/augmentation.py, each numeric check with and without jax.jit."""

import functools

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

from spr import augmentation as aug


def _images(b=6, c=4, h=12, w=10, dtype=np.float32, seed=0):
  x = np.random.RandomState(seed).randint(0, 256, (b, c, h, w))
  return jnp.asarray(x.astype(dtype))


def _find_offset(out, img, pad):
  """The (dy, dx) at which `out` is a crop of the edge-padded `img`."""
  padded = np.pad(np.asarray(img), ((0, 0), (pad, pad), (pad, pad)), mode='edge')
  h, w = img.shape[-2:]
  found = [
      (dy, dx)
      for dy in range(2 * pad + 1)
      for dx in range(2 * pad + 1)
      if np.array_equal(padded[:, dy : dy + h, dx : dx + w], out)
  ]
  return found


class ShiftTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_fixed_offsets_equal_hand_crop(self):
    x = _images()
    offsets = jnp.array([[0, 0], [8, 8], [3, 5], [8, 0], [0, 7], [4, 4]])
    out = self.variant(aug.shift_with_offsets)(x, offsets)
    padded = np.pad(np.asarray(x), ((0, 0), (0, 0), (4, 4), (4, 4)), mode='edge')
    for b, (dy, dx) in enumerate(np.asarray(offsets)):
      np.testing.assert_array_equal(out[b], padded[b, :, dy : dy + 12, dx : dx + 10])
    # Offset (4, 4) is the identity.
    np.testing.assert_array_equal(out[5], x[5])

  @chex.variants(with_jit=True, without_jit=True)
  def test_replicate_padding_values(self):
    x = _images(b=1)
    out = self.variant(aug.shift_with_offsets)(x, jnp.array([[0, 0]]))
    xn, on = np.asarray(x[0]), np.asarray(out[0])
    # Top-left 5x5 block is the corner pixel replicated.
    for c in range(4):
      np.testing.assert_array_equal(on[c, :5, :5], np.full((5, 5), xn[c, 0, 0]))
    # Top rows replicate row 0 (shifted right by 4), left columns column 0.
    np.testing.assert_array_equal(on[:, :4, 4:], np.repeat(xn[:, :1, :6], 4, axis=1))
    np.testing.assert_array_equal(on[:, 4:, :4], np.repeat(xn[:, :8, :1], 4, axis=2))
    np.testing.assert_array_equal(on[:, 4:, 4:], xn[:, :8, :6])
    out = self.variant(aug.shift_with_offsets)(x, jnp.array([[8, 8]]))
    on = np.asarray(out[0])
    for c in range(4):
      np.testing.assert_array_equal(on[c, -5:, -5:], np.full((5, 5), xn[c, -1, -1]))

  @chex.variants(with_jit=True, without_jit=True)
  def test_random_shift_is_a_padded_crop_same_for_all_channels(self):
    b = 64
    base = _images(b=1, c=1)[0, 0]
    # Channel c = base + 1000 c: a crop shared by all channels keeps that.
    x = jnp.broadcast_to(
        base[None, None] + 1000.0 * jnp.arange(4.0)[None, :, None, None], (b, 4, 12, 10)
    )
    out = self.variant(aug.random_shift)(jax.random.PRNGKey(0), x)
    chex.assert_shape(out, x.shape)
    self.assertEqual(out.dtype, x.dtype)
    offsets = set()
    for i in range(b):
      found = _find_offset(np.asarray(out[i]), np.asarray(x[i]), 4)
      self.assertLen(found, 1)
      offsets.add(found[0])
    # Per-sample independence: identical inputs, many different offsets.
    self.assertGreater(len(offsets), 20)

  @chex.variants(with_jit=True, without_jit=True)
  def test_offsets_cover_range(self):
    off = self.variant(functools.partial(aug._shift_offsets, batch=4000, pad=4))(
        jax.random.PRNGKey(3)
    )
    self.assertEqual(int(off.min()), 0)
    self.assertEqual(int(off.max()), 8)
    self.assertLen(np.unique(np.asarray(off)), 9)

  @chex.variants(with_jit=True, without_jit=True)
  def test_implementations_agree_deterministic_layout(self):
    x = _images(b=8, dtype=np.uint8)
    key = jax.random.PRNGKey(7)
    shift = self.variant(aug.random_shift)
    a = shift(key, x)
    self.assertEqual(a.dtype, jnp.uint8)
    np.testing.assert_array_equal(a, self.variant(aug.random_shift_pad_slice)(key, x))
    np.testing.assert_array_equal(a, shift(key, x))
    self.assertFalse(bool(jnp.array_equal(a, shift(jax.random.PRNGKey(8), x))))
    nhwc = self.variant(functools.partial(aug.random_shift, channels_last=True))(
        key, jnp.moveaxis(x, 1, -1)
    )
    np.testing.assert_array_equal(nhwc, jnp.moveaxis(a, 1, -1))


class IntensityAndAugmentTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_intensity_bounds_per_sample(self):
    x = jnp.ones((2000, 2, 3, 3)) * 0.5
    out = self.variant(aug.intensity)(jax.random.PRNGKey(0), x)
    ratio = np.asarray(out / x)
    # One factor per sample.
    np.testing.assert_allclose(ratio, ratio[:, :1, :1, :1] * np.ones_like(ratio), rtol=1e-6)
    f = ratio[:, 0, 0, 0]
    self.assertGreaterEqual(f.min(), 0.9 - 1e-6)
    self.assertLessEqual(f.max(), 1.1 + 1e-6)
    # ~4.6% of N(0,1) draws exceed |2|: both clip bounds are reached.
    np.testing.assert_allclose([f.min(), f.max()], [0.9, 1.1], rtol=1e-6)
    self.assertAlmostEqual(float(np.std(f)), 0.05 * 0.98, delta=0.005)
    np.testing.assert_array_equal(out, self.variant(aug.intensity)(jax.random.PRNGKey(0), x))

  def test_intensity_rejects_uint8(self):
    with self.assertRaises(TypeError):
      aug.intensity(jax.random.PRNGKey(0), jnp.zeros((2, 4, 8, 8), jnp.uint8))

  @chex.variants(with_jit=True, without_jit=True)
  def test_augment_uint8_equals_float_path(self):
    x8 = _images(b=8, dtype=np.uint8)
    key = jax.random.PRNGKey(11)
    augment = self.variant(aug.augment)
    out = augment(key, x8)
    self.assertEqual(out.dtype, jnp.float32)
    chex.assert_shape(out, x8.shape)
    self.assertGreaterEqual(float(out.min()), 0.0)
    self.assertLessEqual(float(out.max()), 1.1 + 1e-6)
    np.testing.assert_array_equal(out, augment(key, x8))
    np.testing.assert_allclose(augment(key, x8.astype(jnp.float32) / 255.0), out, rtol=1e-6)
    # augment == intensity(k2, shift(k1, x)) with split keys: shift first.
    k1, k2 = jax.random.split(key)
    manual = aug.intensity(k2, np.asarray(aug.random_shift(k1, x8)).astype(np.float32) / 255.0)
    np.testing.assert_allclose(out, manual, rtol=1e-6)
    nhwc = self.variant(functools.partial(aug.augment, channels_last=True))(
        key, jnp.moveaxis(x8, 1, -1)
    )
    np.testing.assert_allclose(nhwc, jnp.moveaxis(out, 1, -1), rtol=1e-6)


if __name__ == '__main__':
  absltest.main()
