"""Regenerate the theory figure set: PNG + CSV of the plotted data per figure.

Usage: python -m theory.figures --out=DIR   (float64, default protocol of THEORY.md sec. 6)
"""

import csv
import os
import sys
import time

from absl import app
from absl import flags

_OUT = flags.DEFINE_string("out", "docs/figures/theory", "Output directory.")
_DPI = flags.DEFINE_integer("dpi", 80, "PNG resolution.")


def _save(fig, out, name, header, rows, dpi):
  fig.savefig(os.path.join(out, f"{name}.png"), dpi=dpi, bbox_inches="tight")
  with open(os.path.join(out, f"{name}.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  import matplotlib.pyplot as plt

  plt.close(fig)


def main(argv):
  del argv
  import jax

  jax.config.update("jax_enable_x64", True)
  import jax.numpy as jnp
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  from spr import predictors as preds
  from theory import claims as cl
  from theory import dynamics as dy
  from theory import metrics as me
  from theory import ni_linear
  from theory import transitions as tr

  out, dpi = _OUT.value, _DPI.value
  os.makedirs(out, exist_ok=True)
  start = time.time()
  f64 = jnp.float64
  n, k, h = cl.N, cl.K, cl.H
  d = jnp.full((n,), 1.0 / n, f64)
  keys = cl._keys(0)  # pylint: disable=protected-access
  steps, log = 10_000, 200
  t_sym = tr.lazy_ring(jax.random.PRNGKey(0), n, dtype=f64)
  u_sym = jnp.asarray(me.reference_bases(t_sym, k)["eig"])
  time_axis = np.arange(steps // log + 1) * log * h
  sub = "|X|=20, k=3, uniform d, h=0.02, 5 seeds"

  def note(msg):
    print(f"[{time.time() - start:5.1f}s] {msg}", file=sys.stderr, flush=True)

  # 1. Non-collapse: Gram drift vs h, and semi vs full gradient.
  hs, drifts = [0.1, 0.05, 0.02, 0.01], []
  for hh in hs:
    nsteps = int(round(100 / hh))
    _, lg = cl.two_timescale_runs(
        keys, t_sym, d, u_sym, hh, num_steps=nsteps, log_every=nsteps // 10
    )
    drifts.append(float(lg["drift"].max()))
  _, semi = cl.two_timescale_runs(keys, t_sym, d, u_sym, h, num_steps=steps, log_every=log)
  _, full = cl.two_timescale_runs(
      keys, t_sym, d, u_sym, h, num_steps=steps, log_every=log, full=True
  )
  fig, ax = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
  ax[0].loglog(hs, drifts, "o-", label=r"measured $\max_t |G_t - G_0|$, seed max")
  ax[0].loglog(hs, 0.2 * np.array(hs), "k--", label="reference line 0.2 h")
  ax[0].set(xlabel="Euler step size h", ylabel=r"Gram drift $\max_{t \leq 100} |G_t - G_0|$")
  ax[0].set_title(r"Gram drift vs step size ($G = \Phi^\top\Phi$, semi-gradient)", fontsize=9)
  ax[0].legend(fontsize=8)
  for name, lg, c in (("semi-gradient (stop-grad)", semi, "C0"), ("full gradient", full, "C3")):
    ax[1].plot(time_axis, np.asarray(lg["gram_eigs"][:, :, 0]).T, c, alpha=0.6)
    ax[1].plot([], [], c, label=name)
  ax[1].set(xlabel="time t", ylabel=r"smallest eigenvalue of $\Phi^\top\Phi$")
  ax[1].set_title(
      r"Smallest eigenvalue of $\Phi^\top\Phi$, h = 0.02 (one line per seed)", fontsize=9
  )
  ax[1].legend(fontsize=8, loc="center right")
  fig.suptitle(
      r"Tang et al. 2023 (claims 1-2), predictor $P = P^*(\Phi)$: Gram drift and "
      "smallest Gram eigenvalue; " + sub,
      fontsize=9,
  )
  rows = [["drift_vs_h", hh, dr] for hh, dr in zip(hs, drifts)]
  rows += [
      ["semi_min_eig_seed0", float(tt), float(v)]
      for tt, v in zip(time_axis, semi["gram_eigs"][0, :, 0])
  ]
  rows += [
      ["full_min_eig_seed0", float(tt), float(v)]
      for tt, v in zip(time_axis, full["gram_eigs"][0, :, 0])
  ]
  _save(fig, out, "non_collapse", ["series", "x", "y"], rows, dpi)
  note("non_collapse")

  # 2. Overlap over training, symmetric case.
  fig, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
  ov = np.asarray(semi["overlap"])
  for i, y in enumerate(ov):
    ax.plot(time_axis, y, f"C{i}", label=f"seed {i}")
  ax.set(
      xlabel="time t",
      ylabel="overlap of span(" + r"$\Phi$" + ") with top-k eigvecs",
      ylim=(0, 1.02),
  )
  ax.set_title(
      "Overlap with the top-k eigenvectors of a symmetric T (1 = same span)\n"
      "Tang et al. 2023 (claim 4); lazy noisy ring, " + sub,
      fontsize=8,
  )
  ax.legend(fontsize=7, loc="lower right")
  _save(
      fig,
      out,
      "symmetric_overlap",
      ["t"] + [f"seed{i}" for i in range(len(ov))],
      [[float(tt)] + list(map(float, ov[:, j])) for j, tt in enumerate(time_axis)],
      dpi,
  )
  note("symmetric_overlap")

  # 3. Local maxima (near-bipartite).
  t_bip = tr.near_bipartite(jax.random.PRNGKey(3), n, eps=0.02, dtype=f64)
  ref = me.reference_bases(t_bip, k)
  _, lg = cl.two_timescale_runs(
      cl._keys(0, 8),
      t_bip,
      d,
      jnp.asarray(ref["eig"]),
      h,  # pylint: disable=protected-access
      num_steps=steps,
      log_every=log,
  )
  ov = np.asarray(lg["overlap"])
  fig, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
  for i, y in enumerate(ov):
    ax.plot(time_axis, y, f"C{i}", label=f"seed {i}")
  ax.axhline(2 / 3, color="k", ls=":", lw=1, label="2/3: two of three directions")
  ax.set(xlabel="time t", ylabel=r"overlap with top-k $|\lambda|$ eigvecs", ylim=(0, 1.02))
  ax.set_title(
      r"Overlap with the top-k $|\lambda|$ eigenvectors of a near-bipartite T"
      "\n"
      f"Tang et al. 2023 (claim 5); eigenvalues {np.round(ref['eigvals'][:4], 2).tolist()}"
      ", |X|=20, k=3, h=0.02",
      fontsize=8,
  )
  ax.legend(fontsize=6, loc="lower right", ncol=3)
  _save(
      fig,
      out,
      "local_maxima",
      ["t"] + [f"seed{i}" for i in range(len(ov))],
      [[float(tt)] + list(map(float, ov[:, j])) for j, tt in enumerate(time_axis)],
      dpi,
  )
  note("local_maxima")

  # 4. Predictor-speed phase diagram.
  s_end, pred, rs, p0s, lam = cl.phase_diagram(num_r=9, num_p=13, num_steps=10_000, h=0.02)
  fig, ax = plt.subplots(figsize=(5, 3.8), layout="constrained")
  im = ax.pcolormesh(p0s, rs, s_end, shading="nearest", cmap="viridis")
  fig.colorbar(im, ax=ax, label="final squared norm s of the mode")
  pp = np.linspace(0, p0s.max(), 200)
  ax.plot(pp, pp**2 - lam**2, "w--", label=r"analytic boundary $p_0^2 - \lambda^2 = r s_0$")
  ax.set(
      xlabel=r"initial predictor $p_0$",
      ylabel=r"predictor speed $r = lr_P / lr_\Phi$",
      yscale="log",
      ylim=(rs.min(), rs.max()),
  )
  ax.set_title(
      "Final squared norm s of one mode vs predictor speed r and initial predictor\n"
      rf"Tang et al. 2023 (claim 3); $\lambda$={lam:.3f}, $s_0$=1, joint GD h=0.02, "
      "10k steps",
      fontsize=8,
  )
  ax.legend(fontsize=7, loc="upper left")
  _save(
      fig,
      out,
      "phase_diagram",
      ["r", "p0", "s_end", "s_predicted"],
      [
          [float(r), float(p), float(s_end[i, j]), float(pred[i, j])]
          for i, r in enumerate(rs)
          for j, p in enumerate(p0s)
      ],
      dpi,
  )
  note("phase_diagram")

  # 5. Bidirectional vs single representation on a non-normal T.
  t_nn = tr.non_normal(jax.random.PRNGKey(0), n, dtype=f64)
  ref = me.reference_bases(t_nn, k)
  left, right = jnp.asarray(ref["left"]), jnp.asarray(ref["right"])
  _, bi = cl.bidirectional_runs(keys, t_nn, d, left, right, h, num_steps=steps)
  _, single = cl.two_timescale_runs(keys, t_nn, d, left, h, num_steps=steps, log_every=log)
  tb = np.arange(bi["phi_left"].shape[1]) * 1000 * h
  fig, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
  ax.plot(tb, np.asarray(bi["phi_left"]).T, "C0", alpha=0.7)
  ax.plot(tb, np.asarray(bi["psi_right"]).T, "C2--", alpha=0.7)
  ax.plot(time_axis, np.asarray(single["overlap"]).T, "C3", alpha=0.7)
  ax.plot([], [], "C0", label=r"bidirectional: $\Phi$ vs left singular span")
  ax.plot([], [], "C2--", label=r"bidirectional: $\Psi$ vs right singular span")
  ax.plot([], [], "C3", label=r"single $\Phi$ vs left singular span")
  between = float(np.sum((ref["left"].T @ ref["right"]) ** 2) / k)
  ax.axhline(between, color="k", ls=":", lw=1, label=f"left vs right spans ({between:.2f})")
  ax.set(xlabel="time t", ylabel="subspace overlap", ylim=(0, 1.02))
  ax.set_title(
      "Overlap with the top-k singular subspaces of a non-normal T (one line per seed)\n"
      "Tang et al. 2023 (claim 7); Dirichlet(0.1) rows, Sinkhorn doubly-stochastic,\n" + sub,
      fontsize=8,
  )
  ax.legend(fontsize=7)
  rows = [["bi_phi_left_seed0", float(x), float(y)] for x, y in zip(tb, bi["phi_left"][0])]
  rows += [["bi_psi_right_seed0", float(x), float(y)] for x, y in zip(tb, bi["psi_right"][0])]
  rows += [
      ["single_phi_left_seed0", float(x), float(y)] for x, y in zip(time_axis, single["overlap"][0])
  ]
  _save(fig, out, "bidirectional", ["series", "t", "overlap"], rows, dpi)
  note("bidirectional")

  # 6. Closed-form predictors plugged into the ODE.
  fig, ax = plt.subplots(1, 2, figsize=(9, 3.8), layout="constrained")
  rows = []
  shown = {
      "lrp": "LRP",
      "directpred": "DirectPred",
      "directcopy": "DirectCopy",
      "ne": "NE",
      "ns": "NS",
  }
  styles = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)))
  for i, name in enumerate(shown):
    _, lg = cl.two_timescale_runs(
        keys, t_sym, d, u_sym, h, num_steps=steps, log_every=log, predictor=name
    )
    ovm = np.asarray(lg["overlap"]).mean(0)
    ge = np.asarray(lg["gram_eigs"][0])
    ax[0].plot(time_axis, ovm, color=f"C{i}", ls=styles[i], label=shown[name])
    ax[1].plot(time_axis, ge, color=f"C{i}", ls=styles[i], alpha=0.8)
    ax[1].plot([], [], color=f"C{i}", ls=styles[i], label=shown[name])
    rows += [[name, float(tt), float(o), *map(float, g)] for tt, o, g in zip(time_axis, ovm, ge)]
  ax[0].set(xlabel="time t", ylabel="mean overlap (5 seeds)", ylim=(0, 1.02))
  ax[0].set_title("Overlap with the top-k eigenvectors of T, mean over 5 seeds", fontsize=9)
  ax[0].legend(fontsize=8, loc="lower right")
  ax[1].set(xlabel="time t", ylabel=r"eigenvalues of $\Phi^\top\Phi$ (seed 0)")
  ax[1].set_title(r"The k = 3 eigenvalues of $\Phi^\top\Phi$ (one line each), seed 0", fontsize=9)
  ax[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.suptitle(
      "Richemond et al. 2023 (sec. 3): closed-form predictors in the tabular "
      "two-timescale ODE; " + sub,
      fontsize=9,
  )
  _save(
      fig, out, "closed_form_predictors", ["predictor", "t", "overlap", "g1", "g2", "g3"], rows, dpi
  )
  note("closed_form_predictors")

  # 7. Predictor spectrum over training at several EMA rates (minibatch SGD, LRP).
  emas = (0.0, 0.9, 0.99)
  sgd_steps, sgd_log = 5000, 100

  def sgd_run(ema, key):
    s0 = dy.SGDState(
        dy.init_phi(key, n, k, f64),
        jnp.eye(k, dtype=f64),
        preds.init_state(k, f64),
        jax.random.fold_in(key, 1),
    )
    step = dy.sgd_step(t_sym, d, h, 16, "lrp", ema=ema)

    def metrics(s):
      p = preds.lrp_from_stats(s.stats.sigma, s.stats.cross)
      return {**me.predictor_metrics(p), "overlap": me.subspace_overlap(s.phi, u_sym)}

    return dy.simulate(step, s0, sgd_steps, sgd_log, metrics)[1]

  sgd = jax.jit(jax.vmap(jax.vmap(sgd_run, (None, 0)), (0, None)))(jnp.asarray(emas), keys)
  ts = np.arange(sgd_steps // sgd_log + 1) * sgd_log
  fig, ax = plt.subplots(1, 4, figsize=(13, 3.6), layout="constrained")
  rows = []
  shown = {
      "stable_rank": r"stable rank $\|P\|_F^2 / \|P\|_2^2$",
      "trace": "trace of P",
      "polar_distance": "distance of P to its polar factor",
      "overlap": r"overlap of span($\Phi$) with top-k eigvecs",
  }
  for i, ema in enumerate(emas):
    for j, m in enumerate(shown):
      y = np.asarray(sgd[m][i]).mean(0)
      ax[j].plot(ts[1:], y[1:], f"C{i}", label="no EMA (rate 0)" if ema == 0 else f"EMA rate {ema}")
      ax[j].set_xlabel("SGD step")
      ax[j].set_title(shown[m], fontsize=9)
      rows += [[m, ema, int(x), float(v)] for x, v in zip(ts[1:], y[1:])]
  for a, loc in zip(ax, ("lower right", "lower right", "upper right", "lower right")):
    a.legend(fontsize=7, loc=loc)
  fig.suptitle(
      "Richemond et al. 2023: LRP predictor P from EMA'd minibatch statistics "
      "(batch 16), mean over seeds, at three EMA rates; " + sub,
      fontsize=9,
  )
  _save(fig, out, "predictor_spectrum_ema", ["metric", "ema", "step", "mean_over_seeds"], rows, dpi)
  note("predictor_spectrum_ema")

  # 8. Ni et al. online / detached / EMA.
  res = ni_linear.run_seeds(jax.random.PRNGKey(0), 100, 500)
  fig, ax = plt.subplots(figsize=(5, 3.6), layout="constrained")
  rows = []
  shown = {
      "online": ("online target (gradient through it)", "-", 1.5),
      "detached": ("detached target (stop-gradient)", "-", 3.0),
      "ema": ("EMA target (tau 0.005)", "--", 1.5),
  }
  for i, name in enumerate(ni_linear.TARGETS):
    y = np.asarray(res[name]).mean(0)
    label, ls, lw = shown[name]
    ax.semilogy(np.arange(len(y)), np.maximum(y, 1e-12), color=f"C{i}", ls=ls, lw=lw, label=label)
    rows += [[name, j, float(v)] for j, v in enumerate(y)]
  ax.set(xlabel="SGD step", ylabel=r"mean $|\cos(w_1, w_2)|$ (100 seeds)")
  ax.set_title(
      "Mean |cos| between the two encoder columns (higher = more collapsed)\n"
      "Ni et al. 2024 (sec. 4.2) linear illustration; random 20-state MDP,\n"
      "lr 1e-2, full batch (detached and EMA nearly coincide)",
      fontsize=8,
  )
  ax.legend(fontsize=7, loc="center right", bbox_to_anchor=(1.0, 0.66))
  _save(fig, out, "ni_online_detached_ema", ["target", "step", "mean_abs_cos"], rows, dpi)
  note("ni_online_detached_ema")
  print(f"wrote 8 figures to {out} in {time.time() - start:.0f}s")
  return 0


if __name__ == "__main__":
  app.run(main)
