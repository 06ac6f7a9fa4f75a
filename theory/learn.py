"""Run self-predictive learning dynamics on your own transition matrix.

  python -m theory.learn --transition=T.npy --k=3 --out=DIR [--dist=d.npy]
      [--method=semi|full|joint|sgd|bidirectional] [--predictor=optimal|learned|lrp|ne|...]
      [--step_size=0.02] [--max_steps=100000] [--tol=1e-6] [--seed=0]

Writes DIR/phi.npy (and psi.npy for bidirectional) and DIR/metrics.json.  By default it runs
until the learned subspace stops moving: ||Pi_t - Pi_{t-500}||_F < tol (Pi the projector on
span(Phi)), or until --max_steps, and reports which happened.  Float64 throughout.
Bad input (non-square / not row-stochastic within --stoch_tol / negative entries,
k >= |X|, a distribution not summing to 1, a singular Gram matrix) exits with code 2.
"""

import json
import os
import sys

from absl import app
from absl import flags

_T = flags.DEFINE_string("transition", None, "Path to T.npy (row-stochastic |X| x |X|).")
_K = flags.DEFINE_integer("k", 3, "Representation dimension (1 <= k < |X|).")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_DIST = flags.DEFINE_string(
    "dist",
    None,
    "Path to d.npy (state distribution). Default: uniform (the default "
    "protocol of theory/THEORY.md sec. 6); pass --dist=stationary for the stationary "
    "distribution of T.",
)
_METHOD = flags.DEFINE_enum(
    "method",
    "semi",
    ["semi", "full", "joint", "sgd", "bidirectional"],
    "semi: semi-gradient two-timescale (P = predictor(Phi) every step); full: full gradient "
    "(no stop-gradient); joint: joint GD with lr_P = ratio * lr_Phi; sgd: minibatch SGD on "
    "sampled (x, y); bidirectional: Phi, Psi with forward/backward optimal predictors.",
)
_PRED = flags.DEFINE_enum(
    "predictor",
    "optimal",
    [
        "optimal",
        "learned",
        "lrp",
        "ne",
        "visser",
        "ns",
        "ns2",
        "stiefel",
        "directpred",
        "directcopy",
    ],
    "optimal = P*(Phi) (= lrp); learned = gradient-trained P (implied by --method=joint); "
    "or a closed-form predictor from spr.predictors.",
)
_RATIO = flags.DEFINE_float("ratio", 1.0, "lr_P / lr_Phi for a learned predictor.")
_H = flags.DEFINE_float("step_size", 0.02, "Euler step h (gradients weighted by |X| d).")
_MAX = flags.DEFINE_integer("max_steps", 100_000, "Step cap.")
_TOL = flags.DEFINE_float("tol", 1e-6, "Subspace-movement tolerance per 500 steps.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed of the orthonormal init (and SGD).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "SGD batch size.")
_EMA = flags.DEFINE_float("ema", 0.9, "SGD: EMA decay of the closed-form predictor stats.")
_STOCH_TOL = flags.DEFINE_float("stoch_tol", 1e-6, "Tolerance on row sums and sum(d).")
_CHECK_EVERY = 500


class InputError(ValueError):
  pass


def _load(path, what):
  import numpy as np

  try:
    return np.load(path)
  except Exception as e:  # pylint: disable=broad-except
    raise InputError(f"cannot read {what} {path!r}: {e}") from None


def stationary(t):
  """Stationary distribution of T (left eigenvector for eigenvalue 1, normalised)."""
  import numpy as np

  vals, vecs = np.linalg.eig(np.asarray(t).T)
  v = np.real(vecs[:, np.argmin(np.abs(vals - 1.0))])
  return v / v.sum()


def run(
    t,
    d,
    k,
    method="semi",
    predictor="optimal",
    ratio=1.0,
    h=0.02,
    max_steps=100_000,
    tol=1e-6,
    seed=0,
    batch_size=64,
    ema=0.9,
):
  """Run the dynamics; returns (phi, psi or None, info dict).  Inputs must be validated."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from spr import predictors as preds
  from theory import dynamics as dy
  from theory import metrics as me

  t = jnp.asarray(t, jnp.float64)
  d = jnp.asarray(d, jnp.float64)
  n = t.shape[0]
  key, kp = jax.random.split(jax.random.PRNGKey(seed))
  phi0 = dy.init_phi(key, n, k, jnp.float64)
  cond = np.linalg.cond(np.asarray(phi0.T @ (d[:, None] * phi0)))
  if not np.isfinite(cond) or cond > 1e12:
    raise InputError(
        f"singular Gram matrix Phi^T D Phi (condition number {cond:.3g}): "
        "the optimal predictor needs its inverse; give d more support"
    )
  closed = None if predictor in ("optimal", "learned") else preds.FROM_STATS[predictor]
  if method == "joint" or (predictor == "learned" and method != "sgd"):
    method = "joint"
    p0 = dy.optimal_predictor(phi0, t, d)
    state, get_phi = dy.JointState(phi0, p0), lambda s: s.phi
    step = dy.joint_step(t, d, h, ratio)
  elif method in ("semi", "full"):
    state, get_phi = phi0, lambda s: s
    step = dy.two_timescale_step(t, d, h, closed, full=method == "full")
  elif method == "sgd":
    name = None if predictor == "learned" else ("lrp" if predictor == "optimal" else predictor)
    state = dy.SGDState(
        phi0, dy.optimal_predictor(phi0, t, d), preds.init_state(k, jnp.float64), kp
    )
    get_phi = lambda s: s.phi
    step = dy.sgd_step(t, d, h, batch_size, name, ratio, ema)
  elif method == "bidirectional":
    state = dy.BiState(phi0, dy.init_phi(kp, n, k, jnp.float64))
    get_phi = lambda s: s.phi
    step = dy.bidirectional_step(t, d, h)
  else:
    raise InputError(f"unknown method {method!r}")
  # SGD never stops moving: it runs to the cap.
  run_tol = -1.0 if method == "sgd" else tol
  check = min(_CHECK_EVERY, max_steps)
  final, steps, move = jax.jit(
      lambda s: dy.run_until_converged(step, s, get_phi, run_tol, check, max_steps)
  )(state)
  phi = np.asarray(get_phi(final))
  psi = np.asarray(final.psi) if method == "bidirectional" else None
  if not np.all(np.isfinite(phi)):
    raise InputError(
        "the dynamics diverged (non-finite Phi): the Gram matrix became singular "
        "or the step size is too large"
    )
  ref = me.reference_bases(np.asarray(t), k, np.asarray(d))
  jphi = jnp.asarray(phi)
  p = np.asarray(dy.optimal_predictor(jphi, t, d))
  info = {
      "method": method,
      "predictor": predictor,
      "step_size": h,
      "seed": seed,
      "steps": int(steps),
      "max_steps": max_steps,
      "tol": tol,
      "stopped": ("converged" if float(move) < tol else "step cap"),
      "last_subspace_movement": float(move),
      "overlap_eig": float(me.subspace_overlap(jphi, jnp.asarray(ref["eig"]))),
      "overlap_left_singular": float(me.subspace_overlap(jphi, jnp.asarray(ref["left"]))),
      "overlap_right_singular": float(me.subspace_overlap(jphi, jnp.asarray(ref["right"]))),
      "principal_angles_eig": np.asarray(
          me.principal_angles(jphi, jnp.asarray(ref["eig"]))
      ).tolist(),
      "gram_drift": float(me.gram_drift(jphi, phi0)),
      "gram_eigenvalues": np.asarray(me.collapse_spectrum(jphi)).tolist(),
      "objective": float(me.trace_objective(jphi, t, d)),
      "objective_orthonormal": float(me.trace_objective(me.orthonormal_basis(jphi), t, d)),
      "loss": float(dy.loss(jphi, jnp.asarray(p), t, d)),
      "predictor_metrics": {k_: float(v) for k_, v in me.predictor_metrics(jnp.asarray(p)).items()},
  }
  if psi is not None:
    jpsi = jnp.asarray(psi)
    info["psi_overlap_right_singular"] = float(me.subspace_overlap(jpsi, jnp.asarray(ref["right"])))
    info["psi_overlap_left_singular"] = float(me.subspace_overlap(jpsi, jnp.asarray(ref["left"])))
    info["bidirectional_objective"] = float(
        me.bidirectional_objective(me.orthonormal_basis(jphi), me.orthonormal_basis(jpsi), t)
    )
  return phi, psi, info


def main(argv):
  del argv
  import jax

  jax.config.update("jax_enable_x64", True)
  import numpy as np
  from theory import transitions as tr

  try:
    if not _T.value or not _OUT.value:
      raise InputError("--transition and --out are required")
    t = _load(_T.value, "transition matrix").astype(np.float64)
    if _DIST.value is None:
      d = None
    elif _DIST.value == "stationary":
      tr.validate_transition(t, None, _K.value, _STOCH_TOL.value)
      d = stationary(t)
    else:
      d = _load(_DIST.value, "distribution").astype(np.float64)
    try:
      tr.validate_transition(t, d, _K.value, _STOCH_TOL.value)
    except ValueError as e:
      raise InputError(str(e)) from None
    if d is None:
      d = np.full(t.shape[0], 1.0 / t.shape[0])
    phi, psi, info = run(
        t,
        d,
        _K.value,
        _METHOD.value,
        _PRED.value,
        _RATIO.value,
        _H.value,
        _MAX.value,
        _TOL.value,
        _SEED.value,
        _BATCH.value,
        _EMA.value,
    )
  except InputError as e:
    print(f"theory.learn: error: {e}", file=sys.stderr)
    return 2
  os.makedirs(_OUT.value, exist_ok=True)
  np.save(os.path.join(_OUT.value, "phi.npy"), phi)
  if psi is not None:
    np.save(os.path.join(_OUT.value, "psi.npy"), psi)
  with open(os.path.join(_OUT.value, "metrics.json"), "w") as f:
    json.dump(info, f, indent=2)
  print(
      f"{info['stopped']} after {info['steps']} steps (movement "
      f"{info['last_subspace_movement']:.2e}, tol {info['tol']:g}); overlap with top-k "
      f"eigvecs {info['overlap_eig']:.4f}, left/right singular "
      f"{info['overlap_left_singular']:.4f}/{info['overlap_right_singular']:.4f}; "
      f"Gram drift {info['gram_drift']:.2e}; wrote {_OUT.value}"
  )
  return 0


if __name__ == "__main__":
  app.run(main)
