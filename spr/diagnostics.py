"""Representation diagnostics of the SPR family: pure functions of a replay batch's activations.

Every function is pure jnp (no host sync, jit- and vmap-able; the multi-run trainer vmaps over
runs) and returns device scalars or small arrays. `latent_diagnostics` bundles them into one flat
dict with fixed key names (see its docstring) for metrics.jsonl.

References:
  Kumar, Agarwal, Ghosh and Levine, "Implicit Under-Parameterization Inhibits Data-Efficient Deep
    Reinforcement Learning", ICLR 2021 (arXiv 2010.14498): effective rank srank_delta.
  Sokar, Agarwal, Castro and Evci, "The Dormant Neuron Phenomenon in Deep Reinforcement
    Learning", ICML 2023 (arXiv 2302.12902); code google/dopamine labs/redo: dormant units.
  Richemond et al., "The Edge of Orthogonality: A Simple View of What Makes BYOL Tick", ICML 2023
    (arXiv 2302.04817): the predictor's distance to the orthogonal matrices.
  Schwarzer et al., "Data-Efficient Reinforcement Learning with Self-Predictive
    Representations", ICLR 2021 (arXiv 2007.05929): the SPR loss 2 - 2 cos.

Conventions: features, latents and projections are row-major batches [N, D] (a conv map
[N, H, W, C] where stated); a predictor W is [D, D] acting as `z @ W` (spr/predictors.py). All
three predictor metrics are functions of W's singular values only, so `predictor_metrics` needs
one SVD (no U, V).

theory/metrics.py has `stable_rank` and `polar_distance` for the tabular theory; they compute the
same quantities as `stable_rank` and `orthogonality_gap` here (the latter from the polar factor
instead of the singular values).
"""

from typing import Dict, Mapping, Optional

import chex
import jax
import jax.numpy as jnp

from spr import losses
from spr import param_roles

Array = chex.Array

# Kumar et al. 2021 use delta = 0.01.
SRANK_DELTA = 0.01
# Sokar et al.'s normalisation guard (dopamine labs/redo, estimate_neuron_score: mean + 1e-9).
DORMANT_EPS = 1e-9


# ---------------------------------------------------------------------------------------------
# Rank of a feature matrix.


def _as_float(x: Array) -> Array:
  """At least float32 (bf16 activations are upcast; float64 stays, for the x64 tabular theory)."""
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _rectangular_singular_values(x: Array) -> Array:
  """Singular values of an [N, D] matrix, descending, via the R factor of a QR on the long side.

  X^T = Q R (D > N) has the singular values of X in its [N, N] factor R, and QR is backward
  stable, so this is as accurate as an SVD of X (unlike sqrt(eig(X X^T)), which loses half the
  digits of the small ones) and much cheaper for a wide latent batch: [32, 3136] takes ~0.3 ms
  on XLA:CPU instead of ~25 ms for a direct SVD.
  """
  n, d = x.shape
  if d > n:
    x = jnp.linalg.qr(x.T, mode="r")
  elif n > d:
    x = jnp.linalg.qr(x, mode="r")
  return jnp.linalg.svd(x, compute_uv=False)


def srank(features: Array, delta: float = SRANK_DELTA) -> Array:
  """Effective rank srank_delta of a feature matrix (Kumar et al. 2021, Sec. 3).

  srank_delta(Phi) = min{k : sum_{i<=k} sigma_i / sum_i sigma_i >= 1 - delta}, sigma_1 >=
  sigma_2 >= ... the singular values of Phi (not centred, as in the paper). It is at most
  min(N, D): with a replay batch of N = 32 samples the srank of the 3136-dim latent is <= 32.

  Args:
    features: [N, D] feature matrix, one row per state.
    delta: the threshold (0.01 in the paper).

  Returns:
    int32 scalar in [1, min(N, D)]; 0 for an all-zero matrix.
  """
  chex.assert_rank(features, 2)
  s = _rectangular_singular_values(_as_float(features))
  total = jnp.sum(s)
  cumulative = jnp.cumsum(s) / jnp.where(total > 0, total, 1.0)
  # cumulative is non-decreasing: the number of prefixes below the threshold is k - 1.
  k = jnp.sum(cumulative < 1.0 - delta) + 1
  return jnp.where(total > 0, k, 0).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# Dormant units.


def neuron_scores(activations: Array) -> Array:
  """Sokar et al. 2023's score of each unit of a layer, over a batch (Def. 3.1).

  s_i = E_x |h_i(x)| / (1/H sum_j E_x |h_j(x)|), the expectation over the batch (and, for a conv
  map, over the spatial positions: a unit is a channel), with the dopamine labs/redo code's guard
  `mean + 1e-9` in the denominator (an all-zero layer scores 0 everywhere).

  Args:
    activations: [N, units] or a conv map [N, H, W, C] (channels last).

  Returns:
    [units] (or [C]) non-negative scores, mean ~1 unless the layer is all zero.
  """
  chex.assert_rank(activations, {2, 4})
  axes = tuple(range(activations.ndim - 1))
  score = jnp.mean(jnp.abs(_as_float(activations)), axis=axes)
  return score / (jnp.mean(score) + DORMANT_EPS)


def dormant_fraction(activations: Array, tau: float = 0.0) -> Array:
  """Fraction of tau-dormant units of a layer (Sokar et al. 2023, Def. 3.1).

  A unit is tau-dormant when its score (`neuron_scores`) is <= tau. tau = 0 counts exactly dead
  units (a ReLU unit that is 0 on the whole batch); the paper also uses tau = 0.025 and 0.1.

  Args:
    activations: the layer's post-activation outputs on a batch, [N, units] or [N, H, W, C].
    tau: the threshold.

  Returns:
    float scalar in [0, 1].
  """
  return jnp.mean((neuron_scores(activations) <= tau).astype(jnp.float32))


# ---------------------------------------------------------------------------------------------
# Predictor metrics: functions of the singular values of W.


def _singular_values(w: Array) -> Array:
  chex.assert_rank(w, 2)
  chex.assert_axis_dimension(w, 0, w.shape[1])
  return jnp.linalg.svd(_as_float(w), compute_uv=False)  # descending


def _stable_rank(s: Array) -> Array:
  top = s[0] ** 2
  return jnp.where(top > 0, jnp.sum(s**2) / jnp.where(top > 0, top, 1.0), 0.0)


def _spread(s: Array) -> Array:
  # Singular values below eps * sigma_max are zero to working precision: flooring there keeps
  # the ratio finite (<= 1 / eps, ~8.4e6 in float32) and still reads as "singular".
  floor = jnp.finfo(s.dtype).eps * s[0]
  return jnp.where(s[0] > 0, s[0] / jnp.maximum(s[-1], floor), 1.0)


def _orthogonality_gap(s: Array) -> Array:
  return jnp.sqrt(jnp.sum(jnp.square(s - 1.0)))


def stable_rank(w: Array) -> Array:
  """Stable rank ||W||_F^2 / ||W||_2^2 = sum_i sigma_i^2 / sigma_1^2 (Rudelson and Vershynin).

  Between 1 (rank one) and D (all singular values equal, e.g. an orthogonal matrix); 0 for W = 0.

  Args:
    w: [D, D] predictor matrix.

  Returns:
    float scalar.
  """
  return _stable_rank(_singular_values(w))


def eigenvalue_spread(w: Array) -> Array:
  """Spread sigma_max / sigma_min of the SINGULAR values of W (its 2-norm condition number).

  Singular values rather than eigenvalues, because: (1) a learned W is not symmetric, and the
  eigenvalues of a non-normal matrix are ill-conditioned (a perturbation of size e can move them
  by much more than e), so their ratio would be noisy between logs, while singular values move
  by at most ||dW||_2; (2) the SVD has kernels on every backend, while JAX's non-symmetric
  eigendecomposition was CPU-only in older versions; (3) it shares the SVD of the other two
  predictor metrics. For a normal W (the symmetric closed-form predictors: DirectPred, DirectCopy,
  Newton-Schulz, Visser) |lambda| and sigma are the same set, so the two definitions agree; in
  general |lambda|_max / |lambda|_min <= sigma_max / sigma_min, so this bounds the eigenvalue
  spread from above.

  Singular values below eps * sigma_max (eps of the dtype) count as eps * sigma_max, so a
  singular W gives a finite 1 / eps (~8.4e6 in float32) instead of inf (metrics.jsonl stays
  valid JSON); W = 0 gives 1.

  Args:
    w: [D, D] predictor matrix.

  Returns:
    float scalar >= 1.
  """
  return _spread(_singular_values(w))


def orthogonality_gap(w: Array) -> Array:
  """Frobenius distance from W to the nearest orthogonal matrix, min_Q ||W - Q||_F.

  The minimiser is the polar factor U V^T of W = U S V^T (Fan and Hoffman 1955): the projection
  onto the orthogonal group (the square Stiefel manifold) that Richemond et al. 2023's Stiefel
  predictor computes with Newton-Schulz (spr/predictors.py, `stiefel_projection`). The gap is
  ||W - U V^T||_F = ||S - I||_F = sqrt(sum_i (sigma_i - 1)^2), computed from the singular values
  (unique even where U V^T is not, for a singular W). Not normalised: c * Q (Q orthogonal)
  has gap |c - 1| sqrt(D); divide by sqrt(D) for a per-dimension RMS.

  Args:
    w: [D, D] predictor matrix.

  Returns:
    float scalar >= 0; 0 iff W is orthogonal.
  """
  return _orthogonality_gap(_singular_values(w))


def predictor_metrics(w: Array) -> Dict[str, Array]:
  """`stable_rank`, `eigenvalue_spread` and `orthogonality_gap` of W from one SVD.

  Args:
    w: [D, D] predictor matrix (the learned predictor's kernel, or a closed-form W).

  Returns:
    {"stable_rank", "eigenvalue_spread", "orthogonality_gap"}: float scalars.
  """
  s = _singular_values(w)
  return {
      "stable_rank": _stable_rank(s),
      "eigenvalue_spread": _spread(s),
      "orthogonality_gap": _orthogonality_gap(s),
  }


# ---------------------------------------------------------------------------------------------
# Self-prediction and drift.


def _cosine(a: Array, b: Array, eps: float = losses.SPR_NORMALIZE_EPS) -> Array:
  """<a / max(|a|, eps), b / max(|b|, eps)> over the last axis: the SPR loss's normalisation."""
  normalize = losses.l2_normalize
  return jnp.sum(normalize(a, eps) * normalize(b, eps), axis=-1)


def cosine_per_step(predictions: Array, targets: Array, mask: Array) -> Array:
  """Mean cosine similarity of the SPR predictions and targets for each k, over valid samples.

  cos = <n(p), n(t)> with n(x) = x / max(||x||, 1e-3), the normalisation of
  `spr.losses.self_predictive_loss`, whose per-sample value is ||n(p) - n(t)||^2 = 2 - 2 cos
  (exactly, for vectors of norm >= 1e-3). So for each k, 2 - 2 * cosine_per_step(...)[k] is the
  mean over the valid samples of the unweighted SPR loss at step k.

  Args:
    predictions: online predictions [B, K, D].
    targets: target projections [B, K, D].
    mask: validity of each (sample, step), [B, K] (`spr.losses.spr_sequence_mask`).

  Returns:
    [K] mean cosines in [-1, 1]; NaN for a k with no valid sample (0 would read as
    orthogonal predictions).
  """
  chex.assert_rank([predictions, targets, mask], [3, 3, 2])
  chex.assert_equal_shape([predictions, targets])
  chex.assert_equal_shape_prefix([predictions, mask], 2)
  cos = _cosine(_as_float(predictions), _as_float(targets))  # [B, K]
  m = mask.astype(cos.dtype)
  count = jnp.sum(m, axis=0)
  return jnp.where(count > 0, jnp.sum(cos * m, axis=0) / jnp.maximum(count, 1.0), jnp.nan)


def representation_drift(online: Array, target: Array) -> Array:
  """Mean cosine distance 1 - cos between online and target representations of the same inputs.

  Cosine rather than relative L2: the SPR loss compares normalised vectors and is blind to
  scale, so this reads on the same scale as the loss (per sample, the SPR loss between the two
  would be 2 * distance) and ignores norm changes the loss cannot see. Same normalisation as
  the loss (norm floored at 1e-3).

  Args:
    online: [N, D] online-network representations (e.g. projections).
    target: [N, D] target-network representations of the same N inputs.

  Returns:
    float scalar in [0, 2]; 0 when the target equals the online network (target_tau = 1
    right after the copy).
  """
  chex.assert_rank([online, target], 2)
  chex.assert_equal_shape([online, target])
  return jnp.mean(1.0 - _cosine(_as_float(online), _as_float(target)))


# ---------------------------------------------------------------------------------------------
# The greedy policy.


def greedy_action_distribution(q_values: Array) -> Dict[str, Array]:
  """How concentrated the greedy policy is over a batch of states. A policy that takes one action
  in every state (a collapsed representation, or a head whose state-dependent units are dead:
  only the biases then rank the actions) scores like that constant action.

  Args:
    q_values: [N, A] action values of N states (ties go to the lowest action, as jnp.argmax).

  Returns:
    {"greedy_top_action": the most frequent greedy action (the lowest of tied ones), as a float;
     "greedy_top_action_share": fraction of the N states whose greedy action is the most frequent
     one, in [1/A, 1] (1: one action everywhere);
     "greedy_action_entropy": entropy of the greedy actions' histogram over log(A), in [0, 1]
     (0: one action everywhere, 1: all A actions equally often)}.
  """
  chex.assert_rank(q_values, 2)
  num_actions = q_values.shape[1]
  counts = jnp.sum(jax.nn.one_hot(jnp.argmax(q_values, axis=-1), num_actions), axis=0)
  p = counts / q_values.shape[0]
  # 0 - sum, not -sum: one action everywhere gives 0.0, not -0.0.
  entropy = 0.0 - jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
  normaliser = jnp.log(float(num_actions)) if num_actions > 1 else 1.0
  return {
      "greedy_top_action": jnp.argmax(p).astype(jnp.float32),
      "greedy_top_action_share": jnp.max(p).astype(jnp.float32),
      "greedy_action_entropy": (entropy / normaliser).astype(jnp.float32),
  }


# ---------------------------------------------------------------------------------------------
# Gradients.


def grad_norms_by_role(grads: Mapping[str, Mapping[str, Array]]) -> Dict[str, Array]:
  """Global L2 norm of the gradient of each parameter role (`spr.param_roles`).

  Args:
    grads: a Haiku-style gradient tree {module name: {parameter name: array}}.

  Returns:
    {role: float scalar sqrt(sum of squares over the role's leaves)}, one entry per role
    present in the tree.
  """
  sums = {}
  for module, leaves in grads.items():
    r = param_roles.role(module)
    for leaf in jax.tree.leaves(leaves):
      sq = jnp.sum(jnp.square(_as_float(leaf)))
      sums[r] = sums[r] + sq if r in sums else sq
  return {r: jnp.sqrt(sums[r]) for r in param_roles.ROLES if r in sums}


# ---------------------------------------------------------------------------------------------
# One flat dict for metrics.jsonl.


def latent_diagnostics(
    latents: Array,
    projections: Array,
    *,
    target_projections: Optional[Array] = None,
    predictions: Optional[Array] = None,
    spr_targets: Optional[Array] = None,
    spr_mask: Optional[Array] = None,
    predictor_weights: Optional[Mapping[str, Array]] = None,
    grads: Optional[Mapping[str, Mapping[str, Array]]] = None,
    q_values: Optional[Array] = None,
    delta: float = SRANK_DELTA,
    tau: float = 0.0,
) -> Dict[str, Array]:
  """Every diagnostic of one batch as a flat dict of float scalars with fixed keys.

  Keys (present when their inputs are given):
    srank_latent, srank_projection      `srank` of the flattened latents / the projections;
    dormant_encoder                     `dormant_fraction` of the latents (a conv map: units are
                                        channels);
    dormant_head                        `dormant_fraction` of relu(projections): the projection
                                        is the head's first layer before its ReLU (mean weights,
                                        no noise), so these are that layer's hidden units;
    drift_projection                    `representation_drift`(projections, target_projections);
    spr_cos_k1 .. spr_cos_kK, spr_cos   `cosine_per_step`, and the mean over every valid (b, k);
    predictor_<name>_stable_rank, predictor_<name>_eigenvalue_spread,
    predictor_<name>_orthogonality_gap  `predictor_metrics` of each W in `predictor_weights`;
    grad_norm_<role>                    `grad_norms_by_role`;
    greedy_top_action, greedy_top_action_share,
    greedy_action_entropy               `greedy_action_distribution` of `q_values`.

  Args:
    latents: encoder output [N, H, W, C] (or [N, D]). The renormalised latent keeps exactly dead
      channels at 0 whenever each sample's minimum is 0 (always for a ReLU map with a dead
      unit), so tau = 0 counts are the same as on the raw ReLU map.
    projections: online projections [N, P].
    target_projections: target-network projections of the same inputs [N, P].
    predictions: SPR predictions [B, K, P]; with `spr_targets` [B, K, P] and `spr_mask` [B, K].
    spr_targets: see `predictions`.
    spr_mask: see `predictions`.
    predictor_weights: {name: W [P, P]}, e.g. {"learned": kernel, "lrp": W_lrp}.
    grads: gradient tree {module: {name: array}}.
    q_values: action values [N, A] of the same N inputs (mean weights, no noise).
    delta: srank threshold.
    tau: dormancy threshold.

  Returns:
    dict[str, float scalar].
  """
  chex.assert_rank(projections, 2)
  if predictions is not None and (spr_targets is None or spr_mask is None):
    raise ValueError("predictions needs spr_targets and spr_mask")
  flat = latents.reshape(latents.shape[0], -1)
  out = {
      "srank_latent": srank(flat, delta).astype(jnp.float32),
      "srank_projection": srank(projections, delta).astype(jnp.float32),
      "dormant_encoder": dormant_fraction(latents if latents.ndim == 4 else flat, tau),
      "dormant_head": dormant_fraction(jax.nn.relu(projections), tau),
  }
  if target_projections is not None:
    out["drift_projection"] = representation_drift(projections, target_projections)
  if predictions is not None:
    per_k = cosine_per_step(predictions, spr_targets, spr_mask)
    for k in range(per_k.shape[0]):
      out[f"spr_cos_k{k + 1}"] = per_k[k]
    cos = _cosine(_as_float(predictions), _as_float(spr_targets))
    m = spr_mask.astype(cos.dtype)
    out["spr_cos"] = jnp.where(
        jnp.sum(m) > 0, jnp.sum(cos * m) / jnp.maximum(jnp.sum(m), 1.0), jnp.nan
    )
  for name, w in (predictor_weights or {}).items():
    for key, value in predictor_metrics(w).items():
      out[f"predictor_{name}_{key}"] = value
  for r, value in grad_norms_by_role(grads or {}).items():
    out[f"grad_norm_{r}"] = value
  if q_values is not None:
    out.update(greedy_action_distribution(q_values))
  return out
