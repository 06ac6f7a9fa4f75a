"""Networks of the SPR family (Schwarzer et al., ICLR 2021), as Haiku modules.

Layout: the public functions take observations channel-first, `[B, 4, 84, 84]` (the Atari stack
as the env and the replay give it), and work channel-last inside, which is what XLA's CPU and GPU
convolutions prefer. Latents are `[B, 7, 7, 64]` for the Nature CNN.

Initialisation follows PyTorch's defaults (what the SPR code ran): weights and biases
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for convolutions and linear layers; factorised noisy layers as
Fortunato et al. (2018) with the SPR/rlpyt sigma initialisation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, NamedTuple, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

# PyTorch's default kaiming_uniform(a=sqrt(5)) is U(+-1/sqrt(fan_in)).
TORCH_INIT = hk.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> hk.initializers.Initializer:
  bound = 1.0 / float(fan_in) ** 0.5
  return hk.initializers.RandomUniform(-bound, bound)


def renormalize(latent: jax.Array, eps: float = 0.0) -> jax.Array:
  """Per-sample min-max renormalisation to [0, 1] over all non-batch axes (SPR, eq. in App. C).

  Args:
    latent: `[B, ...]` float array.
  Returns:
    `(latent - min) / (max - min)` per sample. The SPR code divides by `max - min` without a
    guard; we floor the denominator at 1e-8 so a constant latent gives zeros instead of NaN
    (identical whenever the latent is not constant). With `eps > 0` the denominator is
    `max - min + eps` instead (BBF's spr_networks.renormalize, eps 1e-5).
  """
  axes = tuple(range(1, latent.ndim))
  lo = jnp.min(latent, axis=axes, keepdims=True)
  hi = jnp.max(latent, axis=axes, keepdims=True)
  if eps > 0:
    return (latent - lo) / (hi - lo + eps)
  return (latent - lo) / jnp.maximum(hi - lo, 1e-8)


def scale_gradient(x: jax.Array, scale: float) -> jax.Array:
  """Identity in the forward pass; multiplies the gradient by `scale` in the backward pass."""
  return x * scale + jax.lax.stop_gradient(x * (1.0 - scale))


# Glorot/Xavier uniform, U(+-sqrt(6 / (fan_in + fan_out))) with the receptive field in both fans:
# flax's nn.initializers.xavier_uniform(), which BBF (spr_networks.py) uses for every kernel, with
# flax's default zero biases.
XAVIER_INIT = hk.initializers.VarianceScaling(1.0, "fan_avg", "uniform")
INITS = ("torch", "xavier")


def _check_init(init: str) -> None:
  if init not in INITS:
    raise ValueError(f"unknown init {init!r}: expected one of {INITS}")


def _conv(
    channels: int,
    kernel: int,
    stride: int,
    padding: str,
    in_channels: int,
    name: str,
    init: str = "torch",
):
  if init == "xavier":
    return hk.Conv2D(
        channels,
        kernel,
        stride=stride,
        padding=padding,
        w_init=XAVIER_INIT,
        b_init=jnp.zeros,
        name=name,
    )
  return hk.Conv2D(
      channels,
      kernel,
      stride=stride,
      padding=padding,
      w_init=TORCH_INIT,
      b_init=torch_bias_init(in_channels * kernel * kernel),
      name=name,
  )


class NatureEncoder(hk.Module):
  """Nature-DQN CNN (Mnih et al. 2015): 32/64/64 channels, kernels 8/4/3, strides 4/2/1, VALID."""

  def __init__(
      self, channels: Sequence[int] = (32, 64, 64), name: str = "encoder", init: str = "torch"
  ):
    super().__init__(name=name)
    self.channels = tuple(channels)
    self.init = init

  def __call__(self, x: jax.Array, training: bool = False) -> jax.Array:
    """x: float `[B, 84, 84, C]` in [0, 1]. Returns the ReLU feature map `[B, 7, 7, C_out]`."""
    in_ch = x.shape[-1]
    for i, (ch, k, s) in enumerate(zip(self.channels, (8, 4, 3), (4, 2, 1))):
      x = jax.nn.relu(_conv(ch, k, s, "VALID", in_ch, f"conv{i}", self.init)(x))
      in_ch = ch
    return x


class ImpalaEncoder(hk.Module):
  """Impala CNN (Espeholt et al. 2018) as BBF uses it: width-scaled 16/32/32 stages, each a conv3x3,
  max-pool 3x3 stride 2 and two residual blocks, no normalisation, ReLU at the end."""

  def __init__(
      self,
      width: int = 4,
      stages: Sequence[int] = (16, 32, 32),
      blocks: int = 2,
      name: str = "encoder",
      init: str = "torch",
  ):
    super().__init__(name=name)
    self.stages = tuple(int(s * width) for s in stages)
    self.blocks = blocks
    self.init = init

  def __call__(self, x: jax.Array, training: bool = False) -> jax.Array:
    in_ch = x.shape[-1]
    for i, ch in enumerate(self.stages):
      x = _conv(ch, 3, 1, "SAME", in_ch, f"stage{i}_conv", self.init)(x)
      x = hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
      for j in range(self.blocks):
        y = jax.nn.relu(x)
        y = _conv(ch, 3, 1, "SAME", ch, f"stage{i}_block{j}_conv0", self.init)(y)
        y = jax.nn.relu(y)
        y = _conv(ch, 3, 1, "SAME", ch, f"stage{i}_block{j}_conv1", self.init)(y)
        x = x + y
      in_ch = ch
    return jax.nn.relu(x)


class BatchStatNorm(hk.Module):
  """BatchNorm with batch statistics and a learned affine map, no running averages.

  The SPR transition model uses BatchNorm in training mode only: it is never run at acting or
  evaluation time, so running statistics would never be read. Keeping none makes the update a
  pure function of (params, batch).
  """

  def __init__(self, eps: float = 1e-5, name: str | None = None):
    super().__init__(name=name)
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.var(x, axis=axes, keepdims=True)
    scale = hk.get_parameter("scale", (x.shape[-1],), init=jnp.ones)
    offset = hk.get_parameter("offset", (x.shape[-1],), init=jnp.zeros)
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + offset


class TransitionModel(hk.Module):
  """SPR's latent transition model: [latent, one-hot action planes] -> conv3x3 -> ReLU -> BN ->
  conv3x3 -> ReLU -> renormalise (Schwarzer et al. 2021, Sec. 2.2 and their code).

  `norm=False`: BBF's ConvTMCell (spr_networks.py), conv3x3 -> ReLU -> conv3x3 -> ReLU ->
  renormalise, no BatchNorm (the "norm0" module is then absent)."""

  def __init__(
      self,
      num_actions: int,
      hidden: int = 64,
      name: str = "transition",
      norm: bool = True,
      init: str = "torch",
      renorm_eps: float = 0.0,
  ):
    super().__init__(name=name)
    self.num_actions = num_actions
    self.hidden = hidden
    self.norm = norm
    self.init = init
    self.renorm_eps = renorm_eps

  def __call__(self, latent: jax.Array, action: jax.Array) -> jax.Array:
    """latent `[B, H, W, C]`, action int `[B]` -> next latent `[B, H, W, C]`."""
    b, h, w, c = latent.shape
    planes = jnp.broadcast_to(
        jax.nn.one_hot(action, self.num_actions, dtype=latent.dtype)[:, None, None, :],
        (b, h, w, self.num_actions),
    )
    x = jnp.concatenate([latent, planes], axis=-1)
    x = jax.nn.relu(_conv(self.hidden, 3, 1, "SAME", c + self.num_actions, "conv0", self.init)(x))
    if self.norm:
      x = BatchStatNorm(name="norm0")(x)
    x = jax.nn.relu(_conv(c, 3, 1, "SAME", self.hidden, "conv1", self.init)(x))
    return renormalize(x, self.renorm_eps)


class NoisyLinear(hk.Module):
  """Factorised Gaussian noisy linear layer (Fortunato et al., ICLR 2018).

  Initialisation as in the SPR code: mu ~ U(+-1/sqrt(in)), sigma_w = std_init / sqrt(in),
  sigma_b = std_init / sqrt(out). One noise sample per call, shared by the batch. With
  `noise_rng=None` the layer is deterministic (mean weights): evaluation, and the SPR projection.
  """

  def __init__(
      self, output_size: int, std_init: float = 0.5, name: str | None = None, init: str = "torch"
  ):
    super().__init__(name=name)
    self.output_size = output_size
    self.std_init = std_init
    self.init = init

  def __call__(self, x: jax.Array, noise_rng: jax.Array | None) -> jax.Array:
    n_in, n_out = x.shape[-1], self.output_size
    bound = 1.0 / n_in**0.5
    uniform = hk.initializers.RandomUniform(-bound, bound)
    if self.init == "xavier":
      # BBF: Dense(kernel_init=xavier_uniform) with zero bias; its NoisyNetwork keeps the
      # U(+-1/sqrt(in)) bias init (mu_init).
      w_mu = hk.get_parameter("w_mu", (n_in, n_out), init=XAVIER_INIT)
      b_mu = hk.get_parameter("b_mu", (n_out,), init=uniform if self.std_init else jnp.zeros)
    else:
      w_mu = hk.get_parameter("w_mu", (n_in, n_out), init=uniform)
      b_mu = hk.get_parameter("b_mu", (n_out,), init=uniform)
    if noise_rng is None and self.std_init == 0.0:
      return x @ w_mu + b_mu
    w_sigma = hk.get_parameter(
        "w_sigma", (n_in, n_out), init=hk.initializers.Constant(self.std_init / n_in**0.5)
    )
    b_sigma = hk.get_parameter(
        "b_sigma", (n_out,), init=hk.initializers.Constant(self.std_init / n_out**0.5)
    )
    if noise_rng is None:
      return x @ w_mu + b_mu
    f = lambda e: jnp.sign(e) * jnp.sqrt(jnp.abs(e))
    k_in, k_out = jax.random.split(noise_rng)
    eps_in = f(jax.random.normal(k_in, (n_in,), x.dtype))
    eps_out = f(jax.random.normal(k_out, (n_out,), x.dtype))
    # The noisy weight is formed explicitly: one [in, out] elementwise op, then ONE matmul
    # (the factored form (x * eps_in) @ sigma * eps_out needs two, and four in the backward).
    w = w_mu + w_sigma * jnp.outer(eps_in, eps_out)
    return x @ w + (b_mu + b_sigma * eps_out)


def _kaiming_normal(fan: int, gain: float = 1.0) -> hk.initializers.Initializer:
  return hk.initializers.RandomNormal(stddev=gain * (2.0 / fan) ** 0.5)


class SampleNorm(hk.Module):
  """Per-sample normalisation over (H, W, C) with a per-channel affine map: torch's
  GroupNorm(1, C), SGI's `norm_type="ln"` (`resnet_norm="layer"`; SGI's default is BatchNorm)."""

  def __init__(self, eps: float = 1e-5, zero_scale: bool = False, name: str | None = None):
    super().__init__(name=name)
    self.eps = eps
    self.zero_scale = zero_scale

  def __call__(self, x: jax.Array) -> jax.Array:
    axes = tuple(range(1, x.ndim))
    mean = jnp.mean(x, axis=axes, keepdims=True)
    var = jnp.var(x, axis=axes, keepdims=True)
    scale = hk.get_parameter(
        "scale", (x.shape[-1],), init=jnp.zeros if self.zero_scale else jnp.ones
    )
    offset = hk.get_parameter("offset", (x.shape[-1],), init=jnp.zeros)
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + offset


class BatchNorm(hk.Module):
  """BatchNorm over (B, H, W) with running statistics, as torch.nn.BatchNorm2d (the SGI ResNet's
  `norm_type="bn"`): in training mode it normalises with the call's batch statistics (biased
  variance) and moves the running mean / UNBIASED variance by `momentum` (torch's 0.1, i.e. an
  EMA with decay 0.9; running mean starts at 0, variance at 1, no zero-debiasing); in evaluation
  mode (acting) it normalises with the running statistics.

  The running statistics are Haiku state ("mean", "var"), not parameters: the optimiser never
  sees them; the learners carry them as `norm_state` next to the parameters.
  """

  def __init__(
      self,
      eps: float = 1e-5,
      momentum: float = 0.1,
      zero_scale: bool = False,
      name: str | None = None,
  ):
    super().__init__(name=name)
    self.eps, self.momentum, self.zero_scale = eps, momentum, zero_scale

  def __call__(self, x: jax.Array, training: bool) -> jax.Array:
    c = x.shape[-1]
    scale = hk.get_parameter("scale", (c,), init=jnp.zeros if self.zero_scale else jnp.ones)
    offset = hk.get_parameter("offset", (c,), init=jnp.zeros)
    running_mean = hk.get_state("mean", (c,), init=jnp.zeros)
    running_var = hk.get_state("var", (c,), init=jnp.ones)
    if training:
      axes = tuple(range(x.ndim - 1))
      mean = jnp.mean(x, axis=axes)
      var = jnp.var(x, axis=axes)
      n = x.size // c
      m = self.momentum
      # No gradient flows into running statistics (torch updates them under no_grad).
      hk.set_state("mean", jax.lax.stop_gradient((1 - m) * running_mean + m * mean))
      hk.set_state(
          "var", jax.lax.stop_gradient((1 - m) * running_var + m * var * (n / max(n - 1, 1)))
      )
    else:
      mean, var = running_mean, running_var
    return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + offset


def _norm(kind: str, zero_scale: bool, name: str, training: bool):
  """The SGI ResNet's normalisation layer as a function of x: "batch" (BatchNorm with running
  statistics, SGI's default), "layer" (per sample) or "none"."""
  if kind == "layer":
    return SampleNorm(zero_scale=zero_scale, name=name)
  if kind == "batch":
    return functools.partial(BatchNorm(zero_scale=zero_scale, name=name), training=training)
  if kind == "none":
    return lambda x: x
  raise ValueError(f"unknown norm {kind!r}: expected 'batch', 'layer' or 'none'")


class InvertedResidual(hk.Module):
  """MobileNetV2 inverted-residual block as SGI's encoder uses it (mila-iqia/SGI src/networks.py
  `InvertedResidual`): 1x1 expand -> norm -> ReLU -> 3x3 depthwise (stride, pad 1) -> norm ->
  ReLU -> 1x1 project -> norm (scale initialised to 0, so the block starts as its shortcut); the
  shortcut is a conv with kernel = stride = `stride` when stride != 1. Fixup-style init
  N(0, 2 / (out * k * k)) * num_layers^-1/4 for the block's convolutions."""

  def __init__(
      self,
      channels: int,
      stride: int,
      expand: float,
      num_layers: int,
      norm: str = "layer",
      name: str | None = None,
  ):
    super().__init__(name=name)
    self.channels, self.stride, self.expand = channels, stride, expand
    self.num_layers, self.norm = num_layers, norm

  def __call__(self, x: jax.Array, training: bool = False) -> jax.Array:
    in_ch = x.shape[-1]
    hidden = int(round(in_ch * self.expand))
    fix = self.num_layers**-0.25
    s = self.stride
    if s != 1:
      shortcut = hk.Conv2D(
          self.channels,
          s,
          stride=s,
          padding="VALID",
          w_init=_kaiming_normal(self.channels * s * s),
          b_init=torch_bias_init(in_ch * s * s),
          name="downsample",
      )(x)
    else:
      shortcut = x
    y = hk.Conv2D(
        hidden, 1, w_init=_kaiming_normal(hidden, fix), b_init=torch_bias_init(in_ch), name="expand"
    )(x)
    y = jax.nn.relu(_norm(self.norm, False, "norm0", training)(y))
    y = jnp.pad(y, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = hk.DepthwiseConv2D(
        1,
        3,
        stride=s,
        padding="VALID",
        w_init=_kaiming_normal(hidden * 9, fix),
        b_init=torch_bias_init(9),
        name="depthwise",
    )(y)
    y = jax.nn.relu(_norm(self.norm, False, "norm1", training)(y))
    y = hk.Conv2D(
        self.channels,
        1,
        w_init=_kaiming_normal(self.channels, fix),
        b_init=torch_bias_init(hidden),
        name="project",
    )(y)
    y = _norm(self.norm, self.norm != "none", "norm2", training)(y)
    return shortcut + y


class SGIResNetEncoder(hk.Module):
  """SGI's encoder (mila-iqia/SGI `ResnetCNN`): 3 groups of inverted-residual blocks, widths
  `channels` (32/64/64 x scale), strides 3/2/2 (84 -> 28 -> 14 -> 7), `blocks` per group, expand
  ratio `expand`. SGI-M: scale 1, 3 blocks, expand 2; SGI-M/L: scale 1.5, 5 blocks, expand 4.
  No final ReLU (the latent is min-max renormalised after it)."""

  def __init__(
      self,
      channels: Sequence[int] = (32, 64, 64),
      blocks: int = 3,
      expand: float = 2,
      strides: Sequence[int] = (3, 2, 2),
      norm: str = "layer",
      name: str = "encoder",
  ):
    super().__init__(name=name)
    self.channels, self.blocks, self.expand = tuple(channels), blocks, expand
    self.strides, self.norm = tuple(strides), norm

  def __call__(self, x: jax.Array, training: bool = False) -> jax.Array:
    num_layers = self.blocks * len(self.channels)
    for i, (ch, s) in enumerate(zip(self.channels, self.strides)):
      for j in range(self.blocks):
        x = InvertedResidual(
            ch, s if j == 0 else 1, self.expand, num_layers, self.norm, name=f"group{i}_block{j}"
        )(x, training)
    return x


# Named SGI encoder sizes: (width scale of encoder_channels, blocks per group, expand ratio).
SGI_ENCODERS = {"sgi_m": (1.0, 3, 2), "sgi_ml": (1.5, 5, 4)}


class GoalFiLM(hk.Module):
  """SGI's goal conditioner with `conditioning_type=[goal_only, film]`, `conv_goal=True`
  (mila-iqia/SGI `GoalConditioning`): the goal latent (as a feature map) -> conv3x3(2c) -> ReLU
  -> conv3x3(2c) -> ReLU -> flatten -> Linear(2 streams x (bias, scale) x hidden)."""

  def __init__(self, hidden: int, name: str = "goal_film"):
    super().__init__(name=name)
    self.hidden = hidden

  def __call__(self, goal_map: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """goal_map `[B, h, w, c]` -> (advantage bias, advantage scale, value bias, value scale)."""
    c = goal_map.shape[-1]
    x = jax.nn.relu(_conv(2 * c, 3, 1, "SAME", c, "conv0")(goal_map))
    x = jax.nn.relu(_conv(2 * c, 3, 1, "SAME", 2 * c, "conv1")(x))
    x = x.reshape(x.shape[0], -1)
    out = hk.Linear(
        4 * self.hidden, w_init=TORCH_INIT, b_init=torch_bias_init(x.shape[-1]), name="linear"
    )(x)
    out = out.reshape(x.shape[0], 2, 2, self.hidden)
    return out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1]


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
  """Architecture of an SPR-family network."""

  encoder: str = "nature"  # "nature" | "impala" | "sgi_m" | "sgi_ml" (SGI_ENCODERS)
  encoder_channels: tuple[int, ...] = (32, 64, 64)  # nature; sgi_* (times the size's scale)
  impala_width: int = 4  # impala only
  hidden: int = 256  # units of each dueling stream's hidden layer (projection = 2 * hidden)
  num_atoms: int = 51
  noisy: bool = True
  noisy_std: float = 0.5
  transition_hidden: int = 64
  # sgi_* encoders: "batch" (BatchNorm with running statistics, SGI's norm_type="bn") |
  # "layer" (per sample, SGI's "ln") | "none".
  resnet_norm: str = "batch"
  # BBF (google-research bigger_better_faster, bbf/spr_networks.py RainbowDQNNetwork); the
  # defaults keep SPR's network.
  head: str = "dueling"  # "dueling": SPR, a hidden layer per stream (value_hidden /
  #   advantage_hidden, `hidden` units each; projection = both concatenated, 1/sqrt(2) gradient
  #   scaling into the head). "shared": BBF, ONE layer "shared_hidden" of 2 * hidden units is the
  #   projection (no ReLU) and, after a ReLU, the input of value_out / advantage_out; no scaling.
  transition_norm: bool = True  # BatchNorm after the transition model's first conv (BBF: none)
  init: str = "torch"  # "torch" (PyTorch defaults) | "xavier" (xavier_uniform weights, zero biases)
  renorm_eps: float = 0.0  # 0: (x-min)/max(max-min, 1e-8); > 0: (x-min)/(max-min+eps) (BBF 1e-5)


class SPRNetwork(hk.Module):
  """Encoder, transition model, dueling distributional head, projection and predictor.

  The projection is the first layer of both dueling streams (value and advantage hidden layers
  concatenated, mean weights, no noise, no ReLU) as in the SPR code's "q_l1" head; the predictor
  is a learned linear map on the online side only.
  """

  def __init__(self, config: NetworkConfig, num_actions: int, name: str = "spr"):
    super().__init__(name=name)
    self.config = config
    self.num_actions = num_actions
    _check_init(config.init)
    if config.head not in ("dueling", "shared"):
      raise ValueError(f"unknown head {config.head!r}: expected 'dueling' or 'shared'")
    if config.encoder == "nature":
      self._encoder = NatureEncoder(config.encoder_channels, init=config.init)
    elif config.encoder == "impala":
      self._encoder = ImpalaEncoder(config.impala_width, init=config.init)
    elif config.encoder in SGI_ENCODERS:
      scale, blocks, expand = SGI_ENCODERS[config.encoder]
      self._encoder = SGIResNetEncoder(
          tuple(int(c * scale) for c in config.encoder_channels),
          blocks,
          expand,
          norm=config.resnet_norm,
      )
    else:
      raise ValueError(
          f"unknown encoder {config.encoder!r}: expected 'nature', 'impala' or "
          f"one of {sorted(SGI_ENCODERS)}"
      )
    self._transition = TransitionModel(
        num_actions,
        config.transition_hidden,
        norm=config.transition_norm,
        init=config.init,
        renorm_eps=config.renorm_eps,
    )
    std = config.noisy_std if config.noisy else 0.0
    init = config.init
    if config.head == "shared":
      self._shared_hidden = NoisyLinear(2 * config.hidden, std, name="shared_hidden", init=init)
    else:
      self._value_hidden = NoisyLinear(config.hidden, std, name="value_hidden", init=init)
    self._value_out = NoisyLinear(config.num_atoms, std, name="value_out", init=init)
    if config.head == "dueling":
      self._adv_hidden = NoisyLinear(config.hidden, std, name="advantage_hidden", init=init)
    self._adv_out = NoisyLinear(
        num_actions * config.num_atoms, std, name="advantage_out", init=init
    )
    if init == "xavier":
      self._predictor = hk.Linear(
          2 * config.hidden, w_init=XAVIER_INIT, b_init=jnp.zeros, name="predictor"
      )
    else:
      self._predictor = hk.Linear(
          2 * config.hidden,
          w_init=TORCH_INIT,
          b_init=torch_bias_init(2 * config.hidden),
          name="predictor",
      )

  def encode(self, observations: jax.Array, training: bool = False) -> jax.Array:
    """Float observations `[B, C, 84, 84]` in [0, 1] -> renormalised latent `[B, h, w, c]`.

    `training` only matters for an encoder with BatchNorm running statistics (the SGI ResNet
    with resnet_norm="batch"): batch statistics and a running-statistics update when True, the
    running statistics when False (acting and evaluation)."""
    return renormalize(
        self._encoder(jnp.transpose(observations, (0, 2, 3, 1)), training), self.config.renorm_eps
    )

  def transition(self, latent: jax.Array, action: jax.Array) -> jax.Array:
    return self._transition(latent, action)

  def q_logits(self, latent: jax.Array, noise_rng: jax.Array | None) -> jax.Array:
    """Dueling C51 logits `[B, num_actions, num_atoms]`; noise off when `noise_rng` is None.

    The gradient entering the head is scaled by 1/sqrt(2) (Wang et al. 2016, as the SPR code's
    dueling head does); the projection path is not scaled. The shared (BBF) head is
    `shared_hidden` -> ReLU -> value_out / advantage_out, unscaled (BBF's RainbowDQNNetwork:
    relu(projection(x)) -> LinearHead).
    """
    if self.config.head == "shared":
      x = latent.reshape(latent.shape[0], -1)
      keys = (
          [None] * 3
          if (noise_rng is None or not self.config.noisy)
          else list(jax.random.split(noise_rng, 3))
      )
      h = jax.nn.relu(self._shared_hidden(x, keys[0]))
      value = self._value_out(h, keys[1])[:, None, :]
      adv = self._adv_out(h, keys[2]).reshape(x.shape[0], self.num_actions, self.config.num_atoms)
      return value + adv - jnp.mean(adv, axis=1, keepdims=True)
    x = scale_gradient(latent.reshape(latent.shape[0], -1), 2**-0.5)
    keys = (
        [None] * 4
        if (noise_rng is None or not self.config.noisy)
        else list(jax.random.split(noise_rng, 4))
    )
    value = self._value_out(jax.nn.relu(self._value_hidden(x, keys[0])), keys[1])
    adv = self._adv_out(jax.nn.relu(self._adv_hidden(x, keys[2])), keys[3])
    value = value[:, None, :]
    adv = adv.reshape(x.shape[0], self.num_actions, self.config.num_atoms)
    return value + adv - jnp.mean(adv, axis=1, keepdims=True)

  def project(self, latent: jax.Array) -> jax.Array:
    """SPR projection `[B, 2 * hidden]`: the head's first layers with mean weights (the shared
    head: `shared_hidden`'s pre-ReLU output, BBF's `project`)."""
    x = latent.reshape(latent.shape[0], -1)
    if self.config.head == "shared":
      return self._shared_hidden(x, None)
    return jnp.concatenate([self._value_hidden(x, None), self._adv_hidden(x, None)], axis=-1)

  def predict(self, projection: jax.Array) -> jax.Array:
    return self._predictor(projection)


class SPRApply(NamedTuple):
  """The pure functions of an SPR network, each called as `fn(params, norm_state, *args)`.

  `norm_state` may be None for a network without BatchNorm running statistics. A NamedTuple, so
  positional unpacking (`encode, transition, q_logits, project, predict = net.apply`) still works.
  """

  encode: Callable  # (params, norm_state, obs [B, C, 84, 84]) -> latent, evaluation mode
  transition: Callable  # (params, norm_state, latent, action [B]) -> next latent
  q_logits: Callable  # (params, norm_state, latent, noise_rng | None) -> [B, A, N]
  project: Callable  # (params, norm_state, latent) -> projection [B, P]
  predict: Callable  # (params, norm_state, projection) -> prediction [B, P]


class SGIApply(NamedTuple):
  """`SPRApply` plus SGI's pretraining heads (same calling convention)."""

  encode: Callable
  transition: Callable
  q_logits: Callable
  project: Callable
  predict: Callable
  goal_q_logits: Callable  # (params, norm_state, latent, goals [B, D]) -> [B, A, N]
  inverse: Callable  # (params, norm_state, projection, next_projection) -> action logits [B, A]


class NetworkFunctions:
  """The pure functions of a network, with its BatchNorm running statistics kept apart.

  * `init(rng, observations)` -> parameters; `init_with_norm_state(rng, observations)` ->
    (parameters, running statistics), the statistics `{}` for a network without BatchNorm running
    statistics (every network but the SGI ResNet with resnet_norm="batch").
  * `apply`: an `SPRApply` (or `SGIApply`) of functions called as `fn(params, norm_state,
    *args)`; `norm_state` may be None for a network without running statistics. `apply.encode`
    runs in evaluation mode (running statistics); the others never touch the statistics.
  * `encode_train(params, norm_state, observations)` -> (latent, new norm_state): training-mode
    encoding (batch statistics, running statistics moved as torch's BatchNorm does).
  """

  def __init__(
      self,
      transformed: hk.MultiTransformedWithState,
      has_norm_state: bool,
      apply_type: type = SPRApply,
  ):
    self._t = transformed
    self.has_norm_state = has_norm_state
    # Jitted: one compilation of the whole initialisation (cached across processes) instead of
    # one dispatch per initialiser op - seconds for the SGI ResNet on CPU; the same values.
    self._init = jax.jit(transformed.init)

    def wrap(fn):
      return lambda params, norm_state, *args: fn(params, {}, None, *args)[0]

    encode, *rest = transformed.apply
    self.apply = apply_type(
        lambda params, norm_state, obs: encode(params, self._state(norm_state), None, obs, False)[
            0
        ],
        *(wrap(f) for f in rest),
    )
    self._encode = encode

  def _state(self, norm_state):
    """The running statistics to pass to Haiku. Missing ones are an error for a network that has
    them: Haiku would silently create fresh ones (mean 0, variance 1)."""
    if self.has_norm_state and not jax.tree.leaves(norm_state or {}):
      raise ValueError("this network has BatchNorm running statistics: pass its norm_state")
    return norm_state or {}

  def init(self, rng: jax.Array, observations: jax.Array):
    return self._init(rng, observations)[0]

  def init_with_norm_state(self, rng: jax.Array, observations: jax.Array):
    """(params, running statistics) from one initialisation."""
    return self._init(rng, observations)

  def encode_train(self, params, norm_state, observations: jax.Array):
    return self._encode(params, self._state(norm_state), None, observations, True)


def has_running_stats(config: NetworkConfig) -> bool:
  """Whether the network carries BatchNorm running statistics (an SGI ResNet with BatchNorm)."""
  return config.encoder in SGI_ENCODERS and config.resnet_norm == "batch"


def make_spr_network(config: NetworkConfig, num_actions: int) -> NetworkFunctions:
  """Builds the pure functions of an SPR network.

  `init(rng, observations)` creates every parameter; `apply` is the `SPRApply`
  `(encode, transition, q_logits, project, predict)`, each called as `fn(params, norm_state,
  *args)` (`norm_state` None for networks without BatchNorm running statistics; randomness is
  passed explicitly as noise keys). See `NetworkFunctions`.
  """

  def functions():
    net = SPRNetwork(config, num_actions)

    def init(observations):
      latent = net.encode(observations)
      net.q_logits(latent, jax.random.PRNGKey(0))
      nxt = net.transition(latent, jnp.zeros((observations.shape[0],), jnp.int32))
      return net.predict(net.project(nxt))

    return init, (net.encode, net.transition, net.q_logits, net.project, net.predict)

  return NetworkFunctions(
      hk.multi_transform_with_state(functions), has_running_stats(config), SPRApply
  )


class SGINetwork(SPRNetwork):
  """SPR's network plus SGI's pretraining heads (mila-iqia/SGI src/models.py, src/networks.py).

  Same module names as `SPRNetwork` for everything finetuning reuses (encoder, transition,
  value_hidden / advantage_hidden = the first head layer, which is also the SPR projection, and
  predictor), so a pretrained parameter dict loads into an SPR network by name. Added:
  * a goal-conditioned dueling C51 head: the first layers are SHARED with the projection (SGI's
    `q_l1` projection is built from `goal_linears[0]`, `goal_linears[2]`, and finetuning copies
    them into the RL head), FiLM from the goal (`GoalFiLM`) applied after their ReLU, then
    `goal_value_out` / `goal_advantage_out`. SGI's code computes the value stream as
    `advantage_hidden * value_scales + value_biases` (src/networks.py, a typo reusing the advantage
    stream); we use the value stream's own hidden layer, as the head's design intends.
  * the inverse dynamics model: Linear(2P, 256) -> ReLU -> Linear(256, A) on [projection at k,
    target projection at k+1] (`InverseModelHead`).
  Pretraining runs without noise (SGI pretrains with noisy_nets_std 0): build it with noisy=False.
  """

  def __init__(self, config: NetworkConfig, num_actions: int, name: str = "spr"):
    super().__init__(config, num_actions, name=name)
    std = config.noisy_std if config.noisy else 0.0
    self._film = GoalFiLM(config.hidden)
    self._goal_value_out = NoisyLinear(config.num_atoms, std, name="goal_value_out")
    self._goal_adv_out = NoisyLinear(num_actions * config.num_atoms, std, name="goal_advantage_out")
    self._inverse_hidden = hk.Linear(
        256, w_init=TORCH_INIT, b_init=torch_bias_init(4 * config.hidden), name="inverse_hidden"
    )
    self._inverse_out = hk.Linear(
        num_actions, w_init=TORCH_INIT, b_init=torch_bias_init(256), name="inverse_out"
    )

  def goal_q_logits(self, latent: jax.Array, goal: jax.Array) -> jax.Array:
    """Goal-conditioned dueling C51 logits `[B, A, N]` (no noise) for latent `[B, h, w, c]` and
    flattened goals `[B, h * w * c]`."""
    b = latent.shape[0]
    # 1/sqrt(2) gradient scaling into the head, as q_logits (SGI's goal forward does it too).
    x = scale_gradient(latent.reshape(b, -1), 2**-0.5)
    adv_bias, adv_scale, value_bias, value_scale = self._film(goal.reshape(latent.shape))
    adv_h = jax.nn.relu(self._adv_hidden(x, None)) * adv_scale + adv_bias
    value_h = jax.nn.relu(self._value_hidden(x, None)) * value_scale + value_bias
    adv = self._goal_adv_out(adv_h, None).reshape(b, self.num_actions, self.config.num_atoms)
    value = self._goal_value_out(value_h, None)[:, None, :]
    return value + adv - jnp.mean(adv, axis=1, keepdims=True)

  def inverse(self, projection: jax.Array, next_projection: jax.Array) -> jax.Array:
    """Action logits `[B, A]` from projections `[B, P]` of s_k (online) and s_{k+1} (target)."""
    x = jnp.concatenate([projection, next_projection], axis=-1)
    return self._inverse_out(jax.nn.relu(self._inverse_hidden(x)))


def make_sgi_network(config: NetworkConfig, num_actions: int) -> NetworkFunctions:
  """Pure functions of an SGI pretraining network: `apply` is the `SGIApply`
  `(encode, transition, q_logits, project, predict, goal_q_logits, inverse)`."""

  def functions():
    net = SGINetwork(config, num_actions)

    def init(observations):
      latent = net.encode(observations)
      net.q_logits(latent, None)
      flat = latent.reshape(latent.shape[0], -1)
      net.goal_q_logits(latent, flat)
      nxt = net.transition(latent, jnp.zeros((observations.shape[0],), jnp.int32))
      proj = net.project(nxt)
      net.inverse(proj, proj)
      return net.predict(proj)

    return init, (
        net.encode,
        net.transition,
        net.q_logits,
        net.project,
        net.predict,
        net.goal_q_logits,
        net.inverse,
    )

  return NetworkFunctions(
      hk.multi_transform_with_state(functions), has_running_stats(config), SGIApply
  )
