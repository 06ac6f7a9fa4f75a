"""Seedable generators of transition matrices (row convention: rows sum to 1).

Every generator is a pure function of a PRNG key (fixed iteration counts), so it can be
``jax.vmap``-ed over keys to get one matrix per seed.  THEORY.md sec. 6.
"""

import functools
from typing import Tuple

import chex
import jax
import jax.numpy as jnp

Array = chex.Array
_SINKHORN_ITERS = 500
_jit = functools.partial(jax.jit, static_argnames=("n", "dtype"))


def sinkhorn(a: Array, num_iters: int = _SINKHORN_ITERS) -> Array:
  """Alternating row/column normalisation of a positive matrix to a doubly-stochastic one."""

  def body(_, m):
    m = m / m.sum(axis=1, keepdims=True)
    return m / m.sum(axis=0, keepdims=True)

  a = jax.lax.fori_loop(0, num_iters, body, a)
  return a / a.sum(axis=1, keepdims=True)


def symmetric_sinkhorn(a: Array, num_iters: int = _SINKHORN_ITERS) -> Array:
  """Symmetric doubly-stochastic scaling diag(x) A diag(x) of a symmetric non-negative A."""
  a = 0.5 * (a + a.T)

  def body(_, x):
    return jnp.sqrt(x / (a @ x))

  x = jax.lax.fori_loop(0, num_iters, body, jnp.ones(a.shape[0], a.dtype))
  w = x[:, None] * a * x[None, :]
  w = 0.5 * (w + w.T)
  return w / w.sum(axis=1, keepdims=True)  # exact row sums; symmetric to ~1e-7 or better


def _ring(n: int, dtype) -> Array:
  eye = jnp.eye(n, dtype=dtype)
  return 0.5 * (jnp.roll(eye, 1, axis=1) + jnp.roll(eye, -1, axis=1))


@_jit
def lazy_ring(
    key: Array,
    n: int = 20,
    noise: float = 1.0,
    edge_prob: float = 0.2,
    laziness: float = 0.5,
    dtype=jnp.float32,
) -> Array:
  """Lazy ring walk with sparse symmetric noise: T = laziness I + (1 - laziness) W.

  W is the ring walk plus ``noise`` times a random sparse symmetric matrix (each pair an
  edge with probability ``edge_prob``, uniform weight), symmetrised by Sinkhorn.  T is
  symmetric and doubly stochastic with spectrum in [2 laziness - 1, 1] (PSD at 0.5).
  """
  k1, k2 = jax.random.split(key)
  mask = jax.random.bernoulli(k1, edge_prob, (n, n)).astype(dtype)
  weight = jax.random.uniform(k2, (n, n), dtype)
  extra = jnp.triu(mask * weight, 1)
  extra = extra + extra.T
  w = symmetric_sinkhorn(_ring(n, dtype) + noise * extra + 1e-6)
  return laziness * jnp.eye(n, dtype=dtype) + (1.0 - laziness) * w


@_jit
def random_symmetric(key: Array, n: int = 20, dtype=jnp.float32) -> Array:
  """Dense random symmetric doubly-stochastic matrix (uniform weights, Sinkhorn-scaled)."""
  a = jax.random.uniform(key, (n, n), dtype)
  return symmetric_sinkhorn(a + a.T)


@_jit
def non_normal(key: Array, n: int = 20, alpha: float = 0.1, dtype=jnp.float32) -> Array:
  """Non-normal doubly-stochastic matrix: Dirichlet(alpha) rows, Sinkhorn-normalised.

  Its top-k left and right singular spans differ (THEORY.md claim 7).
  """
  rows = jax.random.dirichlet(key, alpha * jnp.ones(n, dtype), (n,)).astype(dtype)
  return sinkhorn(rows + 1e-8)


@_jit
def reversible(
    key: Array, n: int = 20, spread: float = 1.5, laziness: float = 0.5, dtype=jnp.float32
) -> Tuple[Array, Array]:
  """Reversible chain with a non-uniform stationary distribution.

  W symmetric positive (ring plus random edges, node weights w_i = exp(spread u_i)),
  T = laziness I + (1 - laziness) diag(W 1)^{-1} W, stationary d proportional to W 1.

  Returns:
    (T [n, n], d [n]).
  """
  k1, k2 = jax.random.split(key)
  node = jnp.exp(spread * jax.random.uniform(k1, (n,), dtype))
  a = jax.random.uniform(k2, (n, n), dtype) ** 4
  a = a + a.T + 2.0 * _ring(n, dtype)
  w = node[:, None] * a * node[None, :]
  deg = w.sum(axis=1)
  t = laziness * jnp.eye(n, dtype=dtype) + (1.0 - laziness) * w / deg[:, None]
  return t, deg / deg.sum()


@_jit
def near_bipartite(
    key: Array,
    n: int = 20,
    eps: float = 0.05,
    noise: float = 1.0,
    edge_prob: float = 0.2,
    dtype=jnp.float32,
) -> Array:
  """Near-bipartite walk: a bipartite noisy ring made slightly lazy, T = eps I + (1 - eps) W.

  W is the ring (n even: the parts are the even and the odd states) plus sparse random edges
  between the parts only, symmetric-Sinkhorn normalised, so its spectrum is symmetric about 0;
  the laziness eps pushes it up by ~eps.  The top-|lambda| span then mixes the largest positive
  and the most negative eigenvalues, and spans of positive-only eigenvectors are local maxima
  of f (THEORY.md claim 5).
  """
  k1, k2 = jax.random.split(key)
  idx = jnp.arange(n)
  across = ((idx[:, None] + idx[None, :]) % 2 == 1).astype(dtype)
  mask = jax.random.bernoulli(k1, edge_prob, (n, n)).astype(dtype)
  extra = jnp.triu(across * mask * jax.random.uniform(k2, (n, n), dtype), 1)
  w = symmetric_sinkhorn(_ring(n, dtype) + noise * (extra + extra.T) + 1e-6 * across)
  return eps * jnp.eye(n, dtype=dtype) + (1.0 - eps) * w


@functools.partial(jax.jit, static_argnames=("n", "num_actions", "commuting", "dtype"))
def per_action(
    key: Array, n: int = 10, num_actions: int = 4, commuting: bool = True, dtype=jnp.float32
) -> Array:
  """Family of symmetric doubly-stochastic matrices, one per action: [A, n, n].

  Khetarpal et al. 2024's linear experiments use 10 states, 4 actions, symmetric T_a.
  commuting=True: T_a = sum_j c_{a,j} W^j (j = 0..3, c_a ~ Dirichlet(1)) for one sparse random
    symmetric walk W, so the T_a share eigenvectors; then the action-conditional fixed point is
    the top-k eigenspace of mean_a T_a^2 (THEORY.md claim 8).
  commuting=False: independent sparse random symmetric walks.  The two-timescale flow then
    maximises sum_a ||Phi^T T_a Phi||_F^2, whose maximiser is in general NOT the top-k
    eigenspace of mean_a T_a^2 (we measured overlap ~0.7 with it; see theory/README.md).
  """

  def walk(k):
    k1, k2 = jax.random.split(k)
    a = jax.random.uniform(k1, (n, n), dtype) * jax.random.bernoulli(k2, 0.3, (n, n))
    return symmetric_sinkhorn(a + a.T + 1e-3)

  if not commuting:
    return jax.vmap(walk)(jax.random.split(key, num_actions))
  k1, k2 = jax.random.split(key)
  w = walk(k1)
  powers = jnp.stack([jnp.eye(n, dtype=dtype), w, w @ w, w @ w @ w])
  coef = jax.random.dirichlet(k2, jnp.ones(4, dtype), (num_actions,)).astype(dtype)
  return jnp.einsum("aj,jmn->amn", coef, powers)


def validate_transition(t, dist=None, k: int = 1, tol: float = 1e-6) -> None:
  """Raise ValueError with a one-line message if (T, d, k) is not a valid problem.

  Checks: T square 2-D, finite, no negative entries, rows sum to 1 within ``tol``,
  1 <= k < |X|, and d (if given) a non-negative vector of length |X| summing to 1 within tol.
  """
  import numpy as np

  t = np.asarray(t)
  if t.ndim != 2 or t.shape[0] != t.shape[1]:
    raise ValueError(f"transition matrix must be square, got shape {t.shape}")
  if not np.all(np.isfinite(t)):
    raise ValueError("transition matrix has non-finite entries")
  if np.any(t < 0):
    raise ValueError(f"transition matrix has negative entries (min {t.min():.3g})")
  err = np.max(np.abs(t.sum(axis=1) - 1.0))
  if err > tol:
    raise ValueError(
        f"transition matrix is not row-stochastic: max |row sum - 1| = {err:.3g}" f" > tol {tol:g}"
    )
  n = t.shape[0]
  if not 1 <= k < n:
    raise ValueError(f"k must satisfy 1 <= k < |X| = {n}, got k = {k}")
  if dist is not None:
    d = np.asarray(dist)
    if d.shape != (n,):
      raise ValueError(f"distribution must have shape ({n},), got {d.shape}")
    if np.any(d < 0) or not np.all(np.isfinite(d)):
      raise ValueError("distribution has negative or non-finite entries")
    if abs(d.sum() - 1.0) > tol:
      raise ValueError(f"distribution does not sum to 1: sum = {d.sum():.8g} (tol {tol:g})")
