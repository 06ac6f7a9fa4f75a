"""Closed-form linear latent predictors (shared by the agents and the tabular theory).

References:
  Richemond et al., "The Edge of Orthogonality: A Simple View of What Makes BYOL Tick",
    ICML 2023 (arXiv 2302.04817): LRP, NE, Visser, Newton-Schulz (NS), NS^2, Stiefel.
  Tian et al., "Understanding self-supervised learning dynamics without contrastive pairs",
    ICML 2021 (arXiv 2102.06810): DirectPred.  Wang et al. 2021: DirectCopy.
  Equations and our reading of them: theory/THEORY.md, sec. 3.

Conventions (row convention, as the rest of the code base):
  z        [B, f]  online latents of a batch (prediction is ``z @ W``).
  z_target [B, f]  target latents of the same batch (stop-gradient is the caller's job).
  Sigma = z^T z / B (correlation), C = z^T z_target / B (cross-correlation).

Uniform signature.  Every predictor ``name`` in ``PREDICTORS`` has

    W, new_state = predictor_fn(z, z_target, state, *, ema=0.0, ridge=0.0, **options)

  * ``state`` is a ``PredictorState`` (EMA of Sigma and C over batches), made by
    ``init_state(f)``; ``ema`` in [0, 1) is the decay: stat <- ema * stat + (1 - ema) * batch
    (the first update takes the batch as is, so no bias correction is needed).
  * ``ridge`` (alpha >= 0, Richemond et al. use alpha in 0..0.9):
      - LRP: ridge regression, W = (Sigma + alpha I)^{-1} C  (keeps the inverse well posed);
      - all other predictors: W <- W + alpha I (the identity term added to the predictor).
  * W is [f, f].  Everything is a pure jnp function, jit- and vmap-able; the iterative ones
    (NE, Visser, NS, NS^2, Stiefel, DirectCopy, LRP) are differentiable; DirectPred uses an
    eigendecomposition whose gradient is ill defined at repeated eigenvalues, so wrap it in
    ``jax.lax.stop_gradient`` (as Tian et al. do) when used inside a loss.

Each predictor also has a ``*_from_stats(sigma, cross, ridge=0.0, **options) -> W`` form that
works on population statistics (used by the tabular theory with Sigma = Phi^T D Phi, etc.), and
the matrix functions ``newton_schulz_sqrt``, ``visser_sqrt``, ``stiefel_projection`` are
exported for direct use.
"""

from typing import Callable, Dict, NamedTuple, Tuple

import chex
import jax
import jax.numpy as jnp

Array = chex.Array


class PredictorState(NamedTuple):
  """EMA statistics of a closed-form predictor.

  Attributes:
    sigma: [f, f] EMA of the online correlation z^T z / B.
    cross: [f, f] EMA of the cross-correlation z^T z_target / B.
    count: [] int32, number of batches seen.
  """

  sigma: Array
  cross: Array
  count: Array


def init_state(dim: int, dtype=jnp.float32) -> PredictorState:
  """Empty EMA state for latents of size ``dim``."""
  zeros = jnp.zeros((dim, dim), dtype)
  return PredictorState(sigma=zeros, cross=zeros, count=jnp.zeros((), jnp.int32))


def batch_statistics(z: Array, z_target: Array) -> Tuple[Array, Array]:
  """Sigma = z^T z / B and C = z^T z_target / B for one batch.

  Args:
    z: [B, f] online latents.
    z_target: [B, f] target latents.
  Returns:
    (sigma [f, f], cross [f, f]).
  """
  chex.assert_rank([z, z_target], 2)
  chex.assert_equal_shape([z, z_target])
  b = z.shape[0]
  return z.T @ z / b, z.T @ z_target / b


def update_state(
    state: PredictorState, z: Array, z_target: Array, ema: float = 0.0
) -> PredictorState:
  """EMA update of the predictor statistics with one batch.

  Args:
    state: current statistics.
    z: [B, f] online latents.
    z_target: [B, f] target latents.
    ema: decay in [0, 1); 0 uses the batch only.
  Returns:
    The new ``PredictorState``.
  """
  sigma_b, cross_b = batch_statistics(z, z_target)
  chex.assert_equal_shape([state.sigma, sigma_b])
  first = state.count == 0
  decay = jnp.where(first, 0.0, ema).astype(sigma_b.dtype)
  return PredictorState(
      sigma=decay * state.sigma + (1.0 - decay) * sigma_b,
      cross=decay * state.cross + (1.0 - decay) * cross_b,
      count=state.count + 1,
  )


def _eye_like(m: Array) -> Array:
  return jnp.eye(m.shape[-1], dtype=m.dtype)


# ----------------------------------------------------------------------------------------
# Matrix functions.


def newton_schulz_sqrt(sigma: Array, num_iters: int = 20) -> Tuple[Array, Array]:
  """Coupled Newton-Schulz iteration for the square root (Richemond et al. 2023, Sec. 3).

  A_0 = Sigma / ||Sigma||_F, B_0 = I; A_{k+1} = A_k (3I - B_k A_k) / 2,
  B_{k+1} = (3I - B_k A_k) B_k / 2.  A_n -> (Sigma/||Sigma||_F)^{1/2}, B_n -> its inverse.

  Args:
    sigma: [f, f] symmetric positive (semi-)definite matrix.
    num_iters: number of iterations (relative error ~4e-3 at 9, machine precision at 20
      for well-conditioned inputs).
  Returns:
    (sqrt [f, f] ~ Sigma^{1/2}, inv_sqrt [f, f] ~ Sigma^{-1/2}).
  """
  chex.assert_rank(sigma, 2)
  chex.assert_axis_dimension(sigma, 0, sigma.shape[1])
  eye = _eye_like(sigma)
  norm = jnp.linalg.norm(sigma)
  a0 = sigma / norm

  def body(_, ab):
    a, b = ab
    t = 0.5 * (3.0 * eye - b @ a)
    return a @ t, t @ b

  a, b = jax.lax.fori_loop(0, num_iters, body, (a0, eye))
  root = jnp.sqrt(norm)
  return a * root, b / root


def visser_sqrt(sigma: Array, num_iters: int = 50, eta: float = 0.5) -> Array:
  """Visser iteration for the square root (Richemond et al. 2023).

  P_0 = I / (2 eta), P_{k+1} = P_k + eta (S - P_k^2), applied to S = Sigma / ||Sigma||_F
  (the normalisation keeps the iteration contractive for eta <= 1/2) and rescaled by
  ||Sigma||_F^{1/2}.  The error shrinks like (1 - 2 eta sqrt(s_min))^k.

  Args:
    sigma: [f, f] symmetric positive semi-definite matrix.
    num_iters: number of iterations ("several dozen").
    eta: step size.
  Returns:
    [f, f] approximation of Sigma^{1/2}.
  """
  chex.assert_rank(sigma, 2)
  eye = _eye_like(sigma)
  norm = jnp.linalg.norm(sigma)
  s = sigma / norm

  def body(_, p):
    return p + eta * (s - p @ p)

  p = jax.lax.fori_loop(0, num_iters, body, eye / (2.0 * eta))
  return p * jnp.sqrt(norm)


def stiefel_projection(m: Array, num_iters: int = 20, scale: str = "polar") -> Array:
  """Projection onto the Stiefel manifold via Newton-Schulz (Richemond et al. 2023).

  Runs Newton-Schulz on M^T M to get B_n ~ (M^T M / ||M^T M||_F)^{-1/2} and returns
  B_n M^T ~ (M^T M)^{-1/2} M^T, the (transposed) polar factor: for M = U S V^T it is V U^T,
  which equals the polar factor U V^T of M when M is symmetric.

  Note: THEORY.md sec. 3 also gives P = B_n M^T / ||B_n||_F (our transcription of Richemond
  et al.); that only rescales the result, and is available as ``scale="frobenius"``.  The
  default ``scale="polar"`` divides by ||M^T M||_F^{1/2} instead, so the output is exactly
  orthogonal in the limit.

  Args:
    m: [f, f] matrix (full rank for the inverse root to exist).
    num_iters: Newton-Schulz iterations.
    scale: "polar" or "frobenius".
  Returns:
    [f, f] matrix.
  """
  chex.assert_rank(m, 2)
  g = m.T @ m
  _, b = newton_schulz_sqrt(g, num_iters)  # b ~ (M^T M)^{-1/2} already rescaled
  if scale == "polar":
    return b @ m.T
  if scale == "frobenius":
    return b @ m.T / jnp.linalg.norm(b)
  raise ValueError(f"unknown scale {scale!r}")


# ----------------------------------------------------------------------------------------
# Predictors from statistics: (sigma [f, f], cross [f, f], ridge) -> W [f, f].


def lrp_from_stats(sigma: Array, cross: Array, ridge: float = 0.0) -> Array:
  """Linear regression predictor W = (Sigma + ridge I)^{-1} C (Richemond et al. 2023, Sec. 3).

  The batchwise optimal linear predictor; with population statistics it is the optimal
  predictor P* = (Phi^T D Phi)^{-1} Phi^T D T Phi of Tang et al. 2023.
  """
  chex.assert_rank([sigma, cross], 2)
  return jnp.linalg.solve(sigma + ridge * _eye_like(sigma), cross)


def ne_from_stats(sigma: Array, cross: Array, ridge: float = 0.0) -> Array:
  """Neumann-expansion predictor W = 2 C - Sigma C = (2I - Sigma) C (first-order (Sigma)^{-1})."""
  chex.assert_rank([sigma, cross], 2)
  eye = _eye_like(sigma)
  return (2.0 * eye - sigma) @ cross + ridge * eye


def visser_from_stats(
    sigma: Array, cross: Array, ridge: float = 0.0, num_iters: int = 50, eta: float = 0.5
) -> Array:
  """Visser predictor W ~ Sigma^{1/2} (cross unused)."""
  del cross
  return visser_sqrt(sigma, num_iters, eta) + ridge * _eye_like(sigma)


def ns_from_stats(sigma: Array, cross: Array, ridge: float = 0.0, num_iters: int = 20) -> Array:
  """Newton-Schulz predictor W ~ Sigma^{1/2} (cross unused)."""
  del cross
  return newton_schulz_sqrt(sigma, num_iters)[0] + ridge * _eye_like(sigma)


def ns2_from_stats(sigma: Array, cross: Array, ridge: float = 0.0, num_iters: int = 20) -> Array:
  """NS^2 predictor: two chained Newton-Schulz runs, W ~ (Sigma^{1/2})^{1/2} = Sigma^{1/4}.

  Richemond et al. say only that NS^2 "chains two runs" (THEORY.md sec. 3); we read it as the
  square root of the square root.
  """
  del cross
  root = newton_schulz_sqrt(sigma, num_iters)[0]
  root = 0.5 * (root + root.T)
  return newton_schulz_sqrt(root, num_iters)[0] + ridge * _eye_like(sigma)


def stiefel_from_stats(
    sigma: Array,
    cross: Array,
    ridge: float = 0.0,
    num_iters: int = 20,
    use_cross: bool = False,
    scale: str = "polar",
) -> Array:
  """Stiefel predictor W ~ (M^T M)^{-1/2} M^T, M = Sigma (Richemond et al.) or C (``use_cross``).

  For a symmetric positive definite Sigma the polar factor is I; ``use_cross=True`` applies it
  to the cross-correlation instead, i.e. the orthogonal Procrustes predictor.
  """
  m = cross if use_cross else sigma
  return stiefel_projection(m, num_iters, scale) + ridge * _eye_like(sigma)


def directpred_from_stats(
    sigma: Array, cross: Array, ridge: float = 0.0, eps: float = 0.0
) -> Array:
  """DirectPred (Tian et al. 2021): F = Q diag(l) Q^T, W = Q diag(sqrt(max(l,0)/max l) + eps) Q^T."""
  del cross
  chex.assert_rank(sigma, 2)
  f = 0.5 * (sigma + sigma.T)
  l, q = jnp.linalg.eigh(f)
  p = jnp.sqrt(jnp.maximum(l, 0.0) / jnp.max(l)) + eps
  return (q * p) @ q.T + ridge * _eye_like(sigma)


def directcopy_from_stats(
    sigma: Array, cross: Array, ridge: float = 0.0, eps: float = 0.1
) -> Array:
  """DirectCopy (Wang et al. 2021): W = F + eps I, F the (EMA) correlation."""
  del cross
  chex.assert_rank(sigma, 2)
  return sigma + (eps + ridge) * _eye_like(sigma)


FROM_STATS: Dict[str, Callable[..., Array]] = {
    "lrp": lrp_from_stats,
    "ne": ne_from_stats,
    "visser": visser_from_stats,
    "ns": ns_from_stats,
    "ns2": ns2_from_stats,
    "stiefel": stiefel_from_stats,
    "directpred": directpred_from_stats,
    "directcopy": directcopy_from_stats,
}


def _make_predictor_fn(name: str) -> Callable[..., Tuple[Array, PredictorState]]:
  from_stats = FROM_STATS[name]

  def predictor_fn(
      z: Array,
      z_target: Array,
      state: PredictorState,
      *,
      ema: float = 0.0,
      ridge: float = 0.0,
      **options,
  ) -> Tuple[Array, PredictorState]:
    new_state = update_state(state, z, z_target, ema)
    return from_stats(new_state.sigma, new_state.cross, ridge, **options), new_state

  predictor_fn.__name__ = name
  predictor_fn.__doc__ = (
      f"Batched {name} predictor: (z [B, f], z_target [B, f], state, *, ema, ridge) -> "
      f"(W [f, f], new_state). See ``{from_stats.__name__}``."
  )
  return predictor_fn


lrp = _make_predictor_fn("lrp")
ne = _make_predictor_fn("ne")
visser = _make_predictor_fn("visser")
newton_schulz = _make_predictor_fn("ns")
ns2 = _make_predictor_fn("ns2")
stiefel = _make_predictor_fn("stiefel")
directpred = _make_predictor_fn("directpred")
directcopy = _make_predictor_fn("directcopy")

PREDICTORS: Dict[str, Callable[..., Tuple[Array, PredictorState]]] = {
    "lrp": lrp,
    "ne": ne,
    "visser": visser,
    "ns": newton_schulz,
    "ns2": ns2,
    "stiefel": stiefel,
    "directpred": directpred,
    "directcopy": directcopy,
}
