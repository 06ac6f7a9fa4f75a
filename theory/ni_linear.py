"""Linear illustration of Ni et al. 2024 (arXiv 2401.08898, Sec. 4.2): stop-gradient vs collapse.

A linear encoder without bias (orthogonal init) maps observations to a 2-d latent; every step
the latent transition M is refit by least squares on [z_t, onehot(a_t)] -> target z_{t+1}
(held fixed, stop-gradient), and the encoder takes an SGD step (full batch) on
1/2 mean || [z_t, a_t] M - z_{t+1} ||^2 with the target from
  Online   : the encoder itself, gradient through the target;
  Detached : the encoder under stop-gradient;
  EMA      : an EMA copy of the encoder (tau = 0.005).
Metric: |cos| between the two encoder columns (dimensional collapse when it rises).

Data (ours; their Fig. 2 uses their own small environments): a random MDP with one-hot
observations, ``num_states`` states, ``num_actions`` actions, Dirichlet(1) transition rows,
``num_samples`` transitions drawn once per seed.
"""

import functools
from typing import Dict

import chex
import jax
import jax.numpy as jnp

Array = chex.Array
TARGETS = ("online", "detached", "ema")


def make_data(key: Array, num_states: int = 20, num_actions: int = 2, num_samples: int = 256):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  p = jax.random.dirichlet(k1, jnp.ones(num_states), (num_actions, num_states))
  s = jax.random.randint(k2, (num_samples,), 0, num_states)
  a = jax.random.randint(k3, (num_samples,), 0, num_actions)
  s_next = jax.random.categorical(k4, jnp.log(p[a, s]))
  eye = jnp.eye(num_states)
  return eye[s], jax.nn.one_hot(a, num_actions), eye[s_next]


def run(
    key: Array,
    target: int,
    num_steps: int = 500,
    lr: float = 1e-2,
    tau: float = 0.005,
    latent: int = 2,
    num_states: int = 20,
    num_actions: int = 2,
) -> Dict[str, Array]:
  """One seed; ``target`` indexes TARGETS (may be traced, so one compile serves all three).

  Returns {"abs_cos": [num_steps + 1], "loss": [num_steps + 1]}.
  """
  kd, ki = jax.random.split(key)
  obs, act, obs_next = make_data(kd, num_states, num_actions)
  w0 = jax.nn.initializers.orthogonal()(ki, (num_states, latent))
  online = (target == 0).astype(w0.dtype)
  use_ema = target == 2

  def fit(z, z_next):
    za = jnp.concatenate([z, act], axis=1)
    # least squares via the normal equations (a 4 x 4 solve; lstsq's SVD is slow on CPU)
    return jax.lax.stop_gradient(jnp.linalg.solve(za.T @ za, za.T @ z_next))

  def loss_fn(w, w_ema):
    z = obs @ w
    # online: gradient flows through w; detached: sg(w); EMA: sg(w_ema)
    w_sel = jnp.where(use_ema, w_ema, w)
    w_next = online * w + jax.lax.stop_gradient(w_sel - online * w)
    z_next = obs_next @ w_next
    m = fit(z, z_next)
    err = jnp.concatenate([z, act], axis=1) @ m - z_next
    return 0.5 * jnp.mean(jnp.sum(err**2, axis=1))

  def abs_cos(w):
    return jnp.abs(w[:, 0] @ w[:, 1]) / (jnp.linalg.norm(w[:, 0]) * jnp.linalg.norm(w[:, 1]))

  def step(carry, _):
    w, w_ema = carry
    l, g = jax.value_and_grad(loss_fn)(w, w_ema)
    w = w - lr * g
    w_ema = tau * w + (1.0 - tau) * w_ema
    return (w, w_ema), (abs_cos(w), l)

  _, (cos, losses) = jax.lax.scan(step, (w0, w0), None, length=num_steps)
  l0 = loss_fn(w0, w0)
  return {
      "abs_cos": jnp.concatenate([abs_cos(w0)[None], cos]),
      "loss": jnp.concatenate([l0[None], losses]),
  }


@functools.partial(jax.jit, static_argnames=("num_seeds", "num_steps"))
def run_seeds(key: Array, num_seeds: int = 100, num_steps: int = 500) -> Dict[str, Array]:
  """All three targets, vmapped over targets and seeds: {target: abs_cos [seeds, steps + 1]}."""
  keys = jax.random.split(key, num_seeds)
  per_target = jax.vmap(lambda t: jax.vmap(lambda k: run(k, t, num_steps)["abs_cos"])(keys))
  out = per_target(jnp.arange(len(TARGETS)))
  return {name: out[i] for i, name in enumerate(TARGETS)}
