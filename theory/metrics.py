"""Metrics of a representation Phi [|X|, k] and a predictor P [k, k] (THEORY.md sec. 5).

Only the span of Phi is identifiable, so subspace metrics compare spans, never columns.
All functions are pure jnp and jit/vmap-able except ``reference_bases`` (numpy, run once).
"""

from typing import Dict

import chex
import jax.numpy as jnp
import numpy as np

from spr import diagnostics

Array = chex.Array


def orthonormal_basis(phi: Array) -> Array:
  """Orthonormal basis Q [|X|, k] of span(Phi) (left singular vectors)."""
  u, _, _ = jnp.linalg.svd(phi, full_matrices=False)
  return u


def subspace_overlap(phi: Array, u: Array) -> Array:
  """||U^T Q||_F^2 / k in [0, 1]; 1 iff span(Phi) = span(U).  U [|X|, k] orthonormal."""
  chex.assert_rank([phi, u], 2)
  q = orthonormal_basis(phi)
  return jnp.sum((u.T @ q) ** 2) / u.shape[1]


def principal_angles(phi: Array, u: Array) -> Array:
  """Principal angles (radians, ascending) between span(Phi) and span(U)."""
  s = jnp.linalg.svd(u.T @ orthonormal_basis(phi), compute_uv=False)
  return jnp.arccos(jnp.clip(s, -1.0, 1.0))[::-1]


def gram(phi: Array) -> Array:
  return phi.T @ phi


def gram_drift(phi: Array, phi0: Array) -> Array:
  """max |Phi^T Phi - Phi_0^T Phi_0|."""
  return jnp.max(jnp.abs(gram(phi) - gram(phi0)))


def collapse_spectrum(phi: Array) -> Array:
  """Eigenvalues of Phi^T Phi, ascending (the smallest -> 0 means collapse)."""
  return jnp.linalg.eigvalsh(gram(phi))


def trace_objective(phi: Array, t: Array, d: Array) -> Array:
  """f(Phi) = ||Phi^T (n D) T Phi||_F^2; = ||Phi^T T Phi||_F^2 for uniform d (claim 4)."""
  n = t.shape[0]
  return jnp.sum((phi.T @ ((n * d)[:, None] * (t @ phi))) ** 2)


def bidirectional_objective(phi: Array, psi: Array, t: Array) -> Array:
  """Lyapunov function ||Phi^T T Psi||_F^2 of bidirectional learning (claim 7)."""
  return jnp.sum((phi.T @ t @ psi) ** 2)


# The predictor's shape metrics are the agent's diagnostics (one implementation of each).
stable_rank = diagnostics.stable_rank
polar_distance = diagnostics.orthogonality_gap  # ||P - polar(P)||_F, distance to O(d)


def predictor_metrics(p: Array) -> Dict[str, Array]:
  return {"stable_rank": stable_rank(p), "trace": jnp.trace(p), "polar_distance": polar_distance(p)}


def _real_span(vecs: np.ndarray, vals: np.ndarray, k: int) -> np.ndarray:
  """Real orthonormal basis of the span of the first k (complex) eigenvectors."""
  cols = []
  for j in range(vecs.shape[1]):
    v = vecs[:, j]
    cols.append(v.real)
    if abs(vals[j].imag) > 1e-12:
      cols.append(v.imag)
    if len(cols) >= 2 * k:
      break
  basis = []
  for c in np.stack(cols, 1).T:  # Gram-Schmidt keeping independent directions, in order
    for b in basis:
      c = c - (b @ c) * b
    if np.linalg.norm(c) > 1e-8:
      basis.append(c / np.linalg.norm(c))
    if len(basis) == k:
      break
  return np.stack(basis, 1)


def reference_bases(t, k: int, d=None) -> Dict[str, np.ndarray]:
  """Top-k reference spans of T (numpy, float64).

  Returns a dict of orthonormal [|X|, k] bases:
    "eig": top-k right eigenvectors ranked by |lambda| (real span of complex pairs); for a
      reversible T with stationary d (T symmetric in D) computed via D^{1/2} T D^{-1/2}.
    "left", "right": top-k left (U) and right (V) singular vectors of T = U S V^T.
  """
  t = np.asarray(t, np.float64)
  n = t.shape[0]
  out = {}
  dd = np.full(n, 1.0 / n) if d is None else np.asarray(d, np.float64)
  sq = np.sqrt(dd)
  s = sq[:, None] * t / sq[None, :]
  if np.allclose(s, s.T, atol=1e-8):
    vals, vecs = np.linalg.eigh(0.5 * (s + s.T))
    order = np.argsort(-np.abs(vals), kind="stable")
    v = vecs[:, order[:k]] / sq[:, None]
    out["eig"] = np.linalg.qr(v)[0]
    out["eigvals"] = vals[order]
  else:
    vals, vecs = np.linalg.eig(t)
    order = np.argsort(-np.abs(vals), kind="stable")
    out["eig"] = _real_span(vecs[:, order], vals[order], k)
    out["eigvals"] = vals[order]
  u, sv, vt = np.linalg.svd(t)
  out["left"], out["right"], out["singvals"] = u[:, :k], vt[:k].T, sv
  return out
