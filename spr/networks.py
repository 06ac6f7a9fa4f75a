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
from typing import Sequence

import haiku as hk
import jax
import jax.numpy as jnp

# PyTorch's default kaiming_uniform(a=sqrt(5)) is U(+-1/sqrt(fan_in)).
TORCH_INIT = hk.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> hk.initializers.Initializer:
  bound = 1.0 / float(fan_in) ** 0.5
  return hk.initializers.RandomUniform(-bound, bound)


def renormalize(latent: jax.Array) -> jax.Array:
  """Per-sample min-max renormalisation to [0, 1] over all non-batch axes (SPR, eq. in App. C).

  Args:
    latent: `[B, ...]` float array.
  Returns:
    `(latent - min) / (max - min)` per sample. The SPR code divides by `max - min` without a
    guard; we floor the denominator at 1e-8 so a constant latent gives zeros instead of NaN
    (identical whenever the latent is not constant).
  """
  axes = tuple(range(1, latent.ndim))
  lo = jnp.min(latent, axis=axes, keepdims=True)
  hi = jnp.max(latent, axis=axes, keepdims=True)
  return (latent - lo) / jnp.maximum(hi - lo, 1e-8)


def _conv(channels: int, kernel: int, stride: int, padding: str, in_channels: int, name: str):
  return hk.Conv2D(channels, kernel, stride=stride, padding=padding, w_init=TORCH_INIT,
                   b_init=torch_bias_init(in_channels * kernel * kernel), name=name)


class NatureEncoder(hk.Module):
  """Nature-DQN CNN (Mnih et al. 2015): 32/64/64 channels, kernels 8/4/3, strides 4/2/1, VALID."""

  def __init__(self, channels: Sequence[int] = (32, 64, 64), name: str = "encoder"):
    super().__init__(name=name)
    self.channels = tuple(channels)

  def __call__(self, x: jax.Array) -> jax.Array:
    """x: float `[B, 84, 84, C]` in [0, 1]. Returns the ReLU feature map `[B, 7, 7, C_out]`."""
    in_ch = x.shape[-1]
    for i, (ch, k, s) in enumerate(zip(self.channels, (8, 4, 3), (4, 2, 1))):
      x = jax.nn.relu(_conv(ch, k, s, "VALID", in_ch, f"conv{i}")(x))
      in_ch = ch
    return x


class ImpalaEncoder(hk.Module):
  """Impala CNN (Espeholt et al. 2018) as BBF uses it: width-scaled 16/32/32 stages, each a conv3x3,
  max-pool 3x3 stride 2 and two residual blocks, no normalisation, ReLU at the end."""

  def __init__(self, width: int = 4, stages: Sequence[int] = (16, 32, 32), blocks: int = 2,
               name: str = "encoder"):
    super().__init__(name=name)
    self.stages = tuple(int(s * width) for s in stages)
    self.blocks = blocks

  def __call__(self, x: jax.Array) -> jax.Array:
    in_ch = x.shape[-1]
    for i, ch in enumerate(self.stages):
      x = _conv(ch, 3, 1, "SAME", in_ch, f"stage{i}_conv")(x)
      x = hk.max_pool(x, window_shape=(1, 3, 3, 1), strides=(1, 2, 2, 1), padding="SAME")
      for j in range(self.blocks):
        y = jax.nn.relu(x)
        y = _conv(ch, 3, 1, "SAME", ch, f"stage{i}_block{j}_conv0")(y)
        y = jax.nn.relu(y)
        y = _conv(ch, 3, 1, "SAME", ch, f"stage{i}_block{j}_conv1")(y)
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
  conv3x3 -> ReLU -> renormalise (Schwarzer et al. 2021, Sec. 2.2 and their code)."""

  def __init__(self, num_actions: int, hidden: int = 64, name: str = "transition"):
    super().__init__(name=name)
    self.num_actions = num_actions
    self.hidden = hidden

  def __call__(self, latent: jax.Array, action: jax.Array) -> jax.Array:
    """latent `[B, H, W, C]`, action int `[B]` -> next latent `[B, H, W, C]`."""
    b, h, w, c = latent.shape
    planes = jnp.broadcast_to(jax.nn.one_hot(action, self.num_actions, dtype=latent.dtype)
                              [:, None, None, :], (b, h, w, self.num_actions))
    x = jnp.concatenate([latent, planes], axis=-1)
    x = jax.nn.relu(_conv(self.hidden, 3, 1, "SAME", c + self.num_actions, "conv0")(x))
    x = BatchStatNorm(name="norm0")(x)
    x = jax.nn.relu(_conv(c, 3, 1, "SAME", self.hidden, "conv1")(x))
    return renormalize(x)


class NoisyLinear(hk.Module):
  """Factorised Gaussian noisy linear layer (Fortunato et al., ICLR 2018).

  Initialisation as in the SPR code: mu ~ U(+-1/sqrt(in)), sigma_w = std_init / sqrt(in),
  sigma_b = std_init / sqrt(out). One noise sample per call, shared by the batch. With
  `noise_rng=None` the layer is deterministic (mean weights): evaluation, and the SPR projection.
  """

  def __init__(self, output_size: int, std_init: float = 0.5, name: str | None = None):
    super().__init__(name=name)
    self.output_size = output_size
    self.std_init = std_init

  def __call__(self, x: jax.Array, noise_rng: jax.Array | None) -> jax.Array:
    n_in, n_out = x.shape[-1], self.output_size
    bound = 1.0 / n_in ** 0.5
    uniform = hk.initializers.RandomUniform(-bound, bound)
    w_mu = hk.get_parameter("w_mu", (n_in, n_out), init=uniform)
    b_mu = hk.get_parameter("b_mu", (n_out,), init=uniform)
    if noise_rng is None and self.std_init == 0.0:
      return x @ w_mu + b_mu
    w_sigma = hk.get_parameter("w_sigma", (n_in, n_out),
                               init=hk.initializers.Constant(self.std_init / n_in ** 0.5))
    b_sigma = hk.get_parameter("b_sigma", (n_out,),
                               init=hk.initializers.Constant(self.std_init / n_out ** 0.5))
    if noise_rng is None:
      return x @ w_mu + b_mu
    f = lambda e: jnp.sign(e) * jnp.sqrt(jnp.abs(e))
    k_in, k_out = jax.random.split(noise_rng)
    eps_in = f(jax.random.normal(k_in, (n_in,), x.dtype))
    eps_out = f(jax.random.normal(k_out, (n_out,), x.dtype))
    # (x * eps_in) @ sigma * eps_out == x @ (sigma * outer(eps_in, eps_out)) without the outer.
    noisy = ((x * eps_in) @ w_sigma) * eps_out
    return x @ w_mu + b_mu + noisy + b_sigma * eps_out


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
  """Architecture of an SPR-family network."""
  encoder: str = "nature"  # "nature" | "impala"
  encoder_channels: tuple[int, ...] = (32, 64, 64)  # nature only
  impala_width: int = 4  # impala only
  hidden: int = 256  # units of each dueling stream's hidden layer (projection = 2 * hidden)
  num_atoms: int = 51
  noisy: bool = True
  noisy_std: float = 0.5
  transition_hidden: int = 64
  predictor: str = "linear"  # "linear" (learned); closed-form ones plug in through spr.predictors


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
    if config.encoder == "nature":
      self._encoder = NatureEncoder(config.encoder_channels)
    elif config.encoder == "impala":
      self._encoder = ImpalaEncoder(config.impala_width)
    else:
      raise ValueError(f"unknown encoder {config.encoder!r}: expected 'nature' or 'impala'")
    self._transition = TransitionModel(num_actions, config.transition_hidden)
    std = config.noisy_std if config.noisy else 0.0
    self._value_hidden = NoisyLinear(config.hidden, std, name="value_hidden")
    self._value_out = NoisyLinear(config.num_atoms, std, name="value_out")
    self._adv_hidden = NoisyLinear(config.hidden, std, name="advantage_hidden")
    self._adv_out = NoisyLinear(num_actions * config.num_atoms, std, name="advantage_out")
    self._predictor = hk.Linear(2 * config.hidden, w_init=TORCH_INIT,
                                b_init=torch_bias_init(2 * config.hidden), name="predictor")

  def encode(self, observations: jax.Array) -> jax.Array:
    """Float observations `[B, C, 84, 84]` in [0, 1] -> renormalised latent `[B, h, w, c]`."""
    return renormalize(self._encoder(jnp.transpose(observations, (0, 2, 3, 1))))

  def transition(self, latent: jax.Array, action: jax.Array) -> jax.Array:
    return self._transition(latent, action)

  def q_logits(self, latent: jax.Array, noise_rng: jax.Array | None) -> jax.Array:
    """Dueling C51 logits `[B, num_actions, num_atoms]`; noise off when `noise_rng` is None."""
    x = latent.reshape(latent.shape[0], -1)
    keys = [None] * 4 if (noise_rng is None or not self.config.noisy) else list(
        jax.random.split(noise_rng, 4))
    value = self._value_out(jax.nn.relu(self._value_hidden(x, keys[0])), keys[1])
    adv = self._adv_out(jax.nn.relu(self._adv_hidden(x, keys[2])), keys[3])
    value = value[:, None, :]
    adv = adv.reshape(x.shape[0], self.num_actions, self.config.num_atoms)
    return value + adv - jnp.mean(adv, axis=1, keepdims=True)

  def project(self, latent: jax.Array) -> jax.Array:
    """SPR projection `[B, 2 * hidden]`: the head's first layers with mean weights."""
    x = latent.reshape(latent.shape[0], -1)
    return jnp.concatenate([self._value_hidden(x, None), self._adv_hidden(x, None)], axis=-1)

  def predict(self, projection: jax.Array) -> jax.Array:
    return self._predictor(projection)


def make_spr_network(config: NetworkConfig, num_actions: int) -> hk.MultiTransformed:
  """Builds the pure functions of an SPR network.

  Returns a `hk.MultiTransformed` whose `init(rng, observations)` creates every parameter and
  whose `apply` is the tuple `(encode, transition, q_logits, project, predict)`, each called as
  `fn(params, None, *args)` (randomness is passed explicitly as noise keys).
  """

  def functions():
    net = SPRNetwork(config, num_actions)

    def init(observations):
      latent = net.encode(observations)
      net.q_logits(latent, jax.random.PRNGKey(0))
      nxt = net.transition(latent, jnp.zeros((observations.shape[0],), jnp.int32))
      return net.predict(net.project(nxt))

    return init, (net.encode, net.transition, net.q_logits, net.project, net.predict)

  return hk.multi_transform(functions)
