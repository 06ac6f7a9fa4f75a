"""Image augmentations of SPR: random shift then intensity (DrQ-style).

Reference code (mila-iqia/spr src/models.py): `augmentation = ["shift",
"intensity"]` (scripts/run.py default, aug_prob 1), applied in that order:
`shift = nn.Sequential(nn.ReplicationPad2d(4), kornia RandomCrop((84, 84)))`
(one uniform offset in {0..2*pad} per image and axis, the same for all its
channels), then `Intensity(scale=0.05)`: `x * (1 + 0.05 * clamp(randn(B, 1,
1, 1), -2, 2))`, one factor per image. Both act on `uint8 / 255.` floats in
[0, 1] (`transform`: `images.float() / 255.` for uint8 input), and on a
flat batch of stacked frames: every (sample, step) image gets its own draw.

Layout: NCHW `[B, C, H, W]` (the replay's channel-first 4x84x84 stacks) by
default; pass `channels_last=True` for NHWC `[B, H, W, C]`. The learner
flattens its `[B, K+1, 4, 84, 84]` observations to `[B*(K+1), 4, 84, 84]`.

Implementation: replicate padding + crop at offset (dy, dx) equals reading
the unpadded image at clipped indices `clip(i + dy - pad, 0, H - 1)`, so the
shift is two separable gathers (rows, then columns) per image without
materialising the padded batch. It was benchmarked against `jnp.pad(mode=
'edge')` + a vmapped `lax.dynamic_slice` (see `random_shift_pad_slice`) and
was faster on CPU.
"""

import chex
import jax
import jax.numpy as jnp

Array = chex.Array
PRNGKey = chex.PRNGKey


def _shift_offsets(rng: PRNGKey, batch: int, pad: int) -> Array:
  """Per-image (dy, dx) offsets into the padded image, uniform in [0, 2pad]."""
  return jax.random.randint(rng, (batch, 2), 0, 2 * pad + 1)


def _to_nchw(images: Array, channels_last: bool) -> Array:
  return jnp.moveaxis(images, -1, 1) if channels_last else images


def _from_nchw(images: Array, channels_last: bool) -> Array:
  return jnp.moveaxis(images, 1, -1) if channels_last else images


def shift_with_offsets(images: Array, offsets: Array, pad: int = 4) -> Array:
  """Replicate-pad by `pad` and crop back to HxW at given per-image offsets.

  Args:
    images: [B, C, H, W], any dtype.
    offsets: int [B, 2], (dy, dx) top-left corner of the crop inside the
      padded image, each in [0, 2 * pad].
    pad: padding on each side.

  Returns:
    [B, C, H, W], same dtype: out[b, c, i, j] = padded[b, c, i + dy, j + dx].
  """
  chex.assert_rank([images, offsets], [4, 2])
  b, _, h, w = images.shape
  chex.assert_shape(offsets, (b, 2))
  rows = jnp.clip(jnp.arange(h)[None, :] + offsets[:, :1] - pad, 0, h - 1)
  cols = jnp.clip(jnp.arange(w)[None, :] + offsets[:, 1:] - pad, 0, w - 1)

  def one(img, r, c):
    return jnp.take(jnp.take(img, r, axis=1, mode='clip'), c, axis=2, mode='clip')

  return jax.vmap(one)(images, rows, cols)


def random_shift(rng: PRNGKey, images: Array, pad: int = 4, channels_last: bool = False) -> Array:
  """Random shift (DrQ, Kostrikov et al. 2020; SPR, Schwarzer et al. 2021).

  Replicate-pads by `pad` pixels and randomly crops back to the input size,
  one offset per image shared by all its channels (kornia RandomCrop on a
  ReplicationPad2d output, as in mila-iqia/spr src/models.py).

  Args:
    rng: PRNG key.
    images: [B, C, H, W] (or [B, H, W, C] with channels_last), float or uint8.
    pad: padding on each side (4 in SPR).
    channels_last: NHWC layout if True.

  Returns:
    Shifted images, same shape and dtype.
  """
  chex.assert_rank(images, 4)
  x = _to_nchw(images, channels_last)
  offsets = _shift_offsets(rng, x.shape[0], pad)
  return _from_nchw(shift_with_offsets(x, offsets, pad), channels_last)


def random_shift_pad_slice(
    rng: PRNGKey, images: Array, pad: int = 4, channels_last: bool = False
) -> Array:
  """Reference implementation: jnp.pad(mode='edge') + vmapped dynamic_slice.

  Same draws and same output as `random_shift` for the same key (kept for
  the tests and the benchmark; slower on CPU).
  """
  chex.assert_rank(images, 4)
  x = _to_nchw(images, channels_last)
  b, c, h, w = x.shape
  offsets = _shift_offsets(rng, b, pad)
  padded = jnp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode='edge')

  def one(img, off):
    return jax.lax.dynamic_slice(img, (0, off[0], off[1]), (c, h, w))

  return _from_nchw(jax.vmap(one)(padded, offsets), channels_last)


def intensity(rng: PRNGKey, images: Array, scale: float = 0.05) -> Array:
  """Random intensity scaling: x * (1 + scale * clip(N(0, 1), -2, 2)).

  One noise value per image (leading axis), as `Intensity` in
  mila-iqia/spr src/models.py; factors lie in [1 - 2 scale, 1 + 2 scale].
  Layout-agnostic (only the leading axis matters).

  Args:
    rng: PRNG key.
    images: floating images, [B, ...].
    scale: noise scale (0.05 in SPR).

  Returns:
    Scaled images, same shape and dtype.
  """
  chex.assert_rank(images, 4)
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(
        f'intensity needs float images, got {images.dtype}; '
        'use augment() or convert uint8 / 255 first.'
    )
  r = jax.random.normal(rng, (images.shape[0],), dtype=images.dtype)
  noise = 1.0 + scale * jnp.clip(r, -2.0, 2.0)
  return images * noise.reshape((-1,) + (1,) * (images.ndim - 1))


def augment(
    rng: PRNGKey, images: Array, pad: int = 4, scale: float = 0.05, channels_last: bool = False
) -> Array:
  """SPR training augmentation: random shift, then intensity.

  uint8 input is shifted as uint8 (pure indexing, cheaper) and then converted
  to float32 in [0, 1] (`/ 255`) before the intensity noise, exactly like the
  SPR code (which converts first; the shift commutes with the conversion).
  Float input is assumed to be in [0, 1] already and keeps its dtype.

  Args:
    rng: PRNG key.
    images: [B, C, H, W] (or NHWC with channels_last), uint8 or float.
    pad: shift padding (4).
    scale: intensity scale (0.05).
    channels_last: NHWC layout if True.

  Returns:
    Augmented float images in roughly [0, 1.1], same shape.
  """
  shift_rng, intensity_rng = jax.random.split(rng)
  x = random_shift(shift_rng, images, pad=pad, channels_last=channels_last)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32) / 255.0
  return intensity(intensity_rng, x, scale=scale)
