"""Simulators of self-predictive learning dynamics on a tabular MDP (THEORY.md secs. 1-2).

Conventions.  Phi [n, k], P [k, k], T [n, n] (or [A, n, n] per action), d [n].
All gradients use the weights w = n * d (so uniform d gives w = 1): for uniform d this is
the D-weighted "Euler step h scaled by |X|" of THEORY.md sec. 6, applied for every d (sec. 1).
Population statistics follow the same scaling: Sigma = Phi^T W Phi, C = Phi^T W T Phi
(orthonormal Phi, uniform d => Sigma = I), so closed-form predictors from ``spr.predictors``
apply unchanged.

Everything here is a pure function: a step is ``state -> state`` and ``simulate`` runs it under
``lax.scan``; vectorise over seeds with ``jax.vmap`` of a function of a PRNG key.
"""

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import chex
import jax
import jax.numpy as jnp

from spr import predictors as preds

Array = chex.Array
PredictorFromStats = Callable[[Array, Array], Array]


# ----------------------------------------------------------------------------------------
# Building blocks.


def init_phi(key: Array, n: int, k: int, dtype=jnp.float32) -> Array:
  """Orthonormal (QR of a Gaussian) initial representation [n, k]."""
  q, r = jnp.linalg.qr(jax.random.normal(key, (n, k), dtype))
  return q * jnp.sign(jnp.diag(r))[None, :]


def weights(d: Array) -> Array:
  return d.shape[0] * d


def population_stats(
    phi: Array, t: Array, d: Array, target: Optional[Array] = None
) -> Tuple[Array, Array]:
  """Sigma = Phi^T W Phi and C = Phi^T W T Target (Target = Phi by default)."""
  target = phi if target is None else target
  w = weights(d)[:, None]
  return phi.T @ (w * phi), phi.T @ (w * (t @ target))


def optimal_predictor(phi: Array, t: Array, d: Array, target: Optional[Array] = None) -> Array:
  """P*(Phi) = (Phi^T D Phi)^{-1} Phi^T D T Phi (Tang et al. 2023; = LRP of Richemond et al.)."""
  return preds.lrp_from_stats(*population_stats(phi, t, d, target))


def residual(phi: Array, p: Array, t: Array, d: Array, target: Optional[Array] = None) -> Array:
  """W (Phi P - T Target)."""
  target = phi if target is None else target
  return weights(d)[:, None] * (phi @ p - t @ target)


def semi_gradient(phi: Array, p: Array, t: Array, d: Array) -> Array:
  """Stop-gradient direction D (Phi P - T Phi) P^T (times n)."""
  return residual(phi, p, t, d) @ p.T


def full_gradient(phi: Array, p: Array, t: Array, d: Array) -> Array:
  """Gradient without stop-gradient: semi-gradient - T^T D (Phi P - T Phi)."""
  e = residual(phi, p, t, d)
  return e @ p.T - t.T @ e


def predictor_gradient(phi: Array, p: Array, t: Array, d: Array) -> Array:
  """Phi^T D (Phi P - T Phi) (times n)."""
  return phi.T @ residual(phi, p, t, d)


def loss(phi: Array, p: Array, t: Array, d: Array) -> Array:
  """Gradient-carrying part || D^{1/2} (Phi P - T Phi) ||_F^2 (times n)."""
  return jnp.sum(weights(d)[:, None] * (phi @ p - t @ phi) ** 2)


def two_timescale_field(
    phi: Array,
    t: Array,
    d: Array,
    predictor: Optional[PredictorFromStats] = None,
    full: bool = False,
) -> Array:
  """dPhi/dt of the two-timescale ODE with P = predictor(Sigma, C) (default: optimal)."""
  p = optimal_predictor(phi, t, d) if predictor is None else predictor(*population_stats(phi, t, d))
  g = full_gradient(phi, p, t, d) if full else semi_gradient(phi, p, t, d)
  return -g


def joint_field(phi: Array, p: Array, t: Array, d: Array, ratio: float) -> Tuple[Array, Array]:
  """(dPhi/dt, dP/dt) of joint semi-gradient flow with lr_P = ratio * lr_Phi.

  Conserves Phi^T Phi - P P^T / ratio exactly (THEORY.md claim 3).
  """
  e = residual(phi, p, t, d)
  return -e @ p.T, -ratio * phi.T @ e


# ----------------------------------------------------------------------------------------
# Step functions: each returns ``step(state) -> state`` for a fixed problem.


class JointState(NamedTuple):
  phi: Array
  p: Array


class BiState(NamedTuple):
  phi: Array
  psi: Array


class SGDState(NamedTuple):
  phi: Array
  p: Array
  stats: preds.PredictorState
  key: Array


def two_timescale_step(
    t: Array, d: Array, h: float, predictor: Optional[PredictorFromStats] = None, full: bool = False
) -> Callable[[Array], Array]:
  """Euler step of the two-timescale dynamics on Phi (state = Phi)."""

  def step(phi):
    return phi + h * two_timescale_field(phi, t, d, predictor, full)

  return step


def joint_step(t: Array, d: Array, h: float, ratio: float) -> Callable[[JointState], JointState]:
  """Euler step of joint gradient descent, lr_Phi = h, lr_P = ratio * h."""

  def step(s):
    dphi, dp = joint_field(s.phi, s.p, t, d, ratio)
    return JointState(s.phi + h * dphi, s.p + h * dp)

  return step


def bidirectional_step(t: Array, d: Array, h: float) -> Callable[[BiState], BiState]:
  """Bidirectional self-predictive learning with optimal forward/backward predictors.

  L_fwd = E || P1^T Phi^T x - sg(Psi^T y) ||^2, L_bwd = E || P2^T Psi^T y - sg(Phi^T x) ||^2,
  x ~ d, y ~ T(x, .), so y ~ d' = d T.  Form inferred in THEORY.md claim 7.
  """
  d_next = d @ t
  w = weights(d)[:, None]
  w_next = weights(d_next)[:, None]

  def step(s):
    phi, psi = s
    p1 = optimal_predictor(phi, t, d, target=psi)
    e1 = w * (phi @ p1 - t @ psi)
    back = t.T @ (w * phi)  # T^T W Phi
    p2 = jnp.linalg.solve(psi.T @ (w_next * psi), psi.T @ back)
    e2 = w_next * (psi @ p2) - back
    return BiState(phi - h * e1 @ p1.T, psi - h * e2 @ p2.T)

  return step


def action_conditional_step(ts: Array, d: Array, h: float) -> Callable[[Array], Array]:
  """Two-timescale step with one optimal predictor per action (Khetarpal et al. 2024).

  ts: [A, n, n]; the loss is averaged over actions (uniform policy).
  """

  def step(phi):
    def g(t):
      return semi_gradient(phi, optimal_predictor(phi, t, d), t, d)

    return phi - h * jnp.mean(jax.vmap(g)(ts), axis=0)

  return step


def sgd_step(
    t: Array,
    d: Array,
    h: float,
    batch_size: int = 64,
    predictor: Optional[str] = "lrp",
    ratio: float = 1.0,
    ema: float = 0.9,
    ridge: float = 0.0,
) -> Callable[[SGDState], SGDState]:
  """Minibatch SGD on sampled transitions x ~ d, y ~ T(x, .), semi-gradient loss.

  predictor: a name from ``spr.predictors.FROM_STATS`` (computed from an EMA of the batch
    statistics, scaled by n like the population ones), or None for a learned predictor
    updated by SGD with lr ratio * h.
  """
  n = t.shape[0]
  logits_d = jnp.log(d)
  logits_t = jnp.log(jnp.maximum(t, 1e-30))

  def step(s):
    key, kx, ky = jax.random.split(s.key, 3)
    x = jax.random.categorical(kx, logits_d, shape=(batch_size,))
    y = jax.random.categorical(ky, logits_t[x])
    z, z_next = s.phi[x], s.phi[y]
    if predictor is None:
      p, stats = s.p, s.stats
    else:
      stats = preds.update_state(s.stats, z * jnp.sqrt(n), z_next * jnp.sqrt(n), ema)
      p = preds.FROM_STATS[predictor](stats.sigma, stats.cross, ridge)
    err = (z @ p - z_next) / batch_size  # [B, k]
    g_phi = jnp.zeros_like(s.phi).at[x].add(err @ p.T) * n
    phi = s.phi - h * g_phi
    if predictor is None:
      p = p - h * ratio * n * z.T @ err
    return SGDState(phi, p, stats, key)

  return step


# ----------------------------------------------------------------------------------------
# Runners.


def simulate(
    step: Callable[[Any], Any],
    state: Any,
    num_steps: int,
    log_every: int,
    metric_fn: Callable[[Any], Dict[str, Array]],
) -> Tuple[Any, Dict[str, Array]]:
  """Run ``step`` num_steps times (a multiple of log_every) under lax.scan.

  Returns (final_state, metrics) with metrics[name] of shape [num_steps // log_every + 1]
  (the first entry is at step 0).
  """
  if num_steps % log_every:
    raise ValueError("num_steps must be a multiple of log_every")

  def outer(s, _):
    s = jax.lax.fori_loop(0, log_every, lambda _, x: step(x), s)
    return s, metric_fn(s)

  final, logs = jax.lax.scan(outer, state, None, length=num_steps // log_every)
  first = metric_fn(state)
  logs = jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first, logs)
  return final, logs


def run_until_converged(
    step: Callable[[Any], Any],
    state: Any,
    get_phi: Callable[[Any], Array],
    tol: float,
    check_every: int,
    max_steps: int,
) -> Tuple[Any, Array, Array]:
  """Run until the learned subspace stops moving, or max_steps.

  The movement is ||Pi_t - Pi_{t - check_every}||_F, Pi the orthogonal projector on
  span(Phi); the run stops after the first check interval where it is below ``tol``.

  Returns:
    (final_state, steps_done, last_movement).
  """

  def projector(s):
    q = jnp.linalg.svd(get_phi(s), full_matrices=False)[0]
    return q @ q.T

  def cond(c):
    _, steps, move = c
    return (steps < max_steps) & (move >= tol) & ~jnp.isnan(move)

  def body(c):
    s, steps, _ = c
    before = projector(s)
    s = jax.lax.fori_loop(0, check_every, lambda _, x: step(x), s)
    return s, steps + check_every, jnp.linalg.norm(projector(s) - before)

  big = jnp.asarray(jnp.inf, get_phi(state).dtype)
  return jax.lax.while_loop(cond, body, (state, jnp.asarray(0), big))
