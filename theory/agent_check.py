"""The theory on the deep agent: does a trained agent's representation of Catch span the top
singular subspace of its own transition matrix?

    python -m theory.agent_check --workdir=W[,W2,...] [--baseline_workdirs=B1,B2,...]
        [--k=2,4,8,16] [--states=seen|all] [--epsilon=0] [--json=PATH] [--figure=PATH]

Tang et al. (ICML 2023, "Understanding Self-Predictive Learning for Reinforcement Learning")
show that the self-predictive loss, with a stop-gradient target and a learned or optimal linear
predictor, drives a linear representation Phi toward the top spectral subspace of the transition
matrix (its top eigenvectors for a symmetric P; left / right singular vectors for the
bidirectional variant). This tool measures that on a trained agent. Catch (envs/catch.py) has a
finite state space, so its transition matrix under the agent's policy is written down exactly;
for Atari it cannot be (the state is the emulator's, not an enumerable set), and an Atari run is
refused with exit code 2.

The state space. bsuite's Catch state is (ball row 0..9, ball column 0..4, paddle column 0..4):
250 states, index (row * 5 + ball column) * 5 + paddle. Not all are alike:
- row 9 (25 states) is the end of an episode: the env returns the next episode's first frame
  instead, so the agent never sees a row-9 state;
- the paddle starts in column 2 and moves at most one column per step, so at row r only paddle
  columns within r of column 2 can occur: rows 0 and 1 hold 30 unreachable states;
- the 195 others are what the agent sees ("seen").
`--states=seen` (the default) analyses the 195 seen states, `--states=all` the 250.

The transition matrices, exact. Per action a (0 LEFT, 1 NOOP, 2 RIGHT): from (r, c, p) with
r < 9 the paddle moves to clip(p + move_a, 0, 4), then the ball falls: (r + 1, c, p'). A row-9
(terminal) state goes to the reset distribution, (0, c', 2) with c' uniform, for every action:
so P_a and P^pi are proper Markov chains (row-stochastic) on all 250 states, and the chain of
an episode followed by the next is one chain. On the seen states the terminal state is folded
into its predecessor (row 8 goes to the reset distribution), as the agent's stacks do: the
step that ends an episode returns the next episode's first frame. P^pi(s, .) = sum_a pi(a|s)
P_a(s, .) with pi greedy in the Q-values of the checkpoint's ACTING parameters (the online
network, or BBF's EMA target), noisy layers at their mean weights, ties to the lowest action
(argmax), epsilon 0 unless `--epsilon` (then epsilon-greedy: (1 - eps) greedy + eps uniform).
The greedy policy at a row-9 state is irrelevant (every action resets).

The stack that represents a state. The agent sees 4-frame stacks, and a stack depends on the
frames before the current one. The ball falls straight down its column, so its past is fixed by
the state: rows r-3..r. The paddle's past is not, and we fix it as the path on which the paddle
moves toward its column at the first steps of the episode and then stays: at step t = 0..r the
paddle is at p - s * max(0, m - t), s = sign(p - 2), m = min(|p - 2|, r). For every reachable
state this is a path the env really plays (the test replays it through CatchEnv and compares
the stacks bit for bit); frames before the episode's start are zeros, as the env pads them.
Why this path: with r - |p - 2| >= 3, which holds for most states, the paddle is still in all
four frames, so the stack is the state's own board with the ball's fall and shows no paddle
motion that the state itself does not imply; a policy that moves to the ball's column early
(which a trained agent does) plays these stacks. For an unreachable state the same formula gives
a paddle that moved one column per step from column p - s * r (not 2): the nearest stack to one
the env could produce. Row-9 stacks are drawn the same way (the agent never saw one).

The representations. Phi = the agent's projection (`network.apply.project`, the SPR loss's
online projection: the head's first layers at their mean weights, no ReLU) of the encoder latent
of each state's stack, with the ONLINE parameters (the SPR loss shapes them; BBF acts with the
target), [n, 2 * hidden]; and the encoder latent itself, flattened, [n, h * w * c]. For each k
the top-k principal subspace of Phi is the span of its top-k left singular vectors; by default
Phi is NOT centred (Tang et al.'s Phi has no mean removed, and the constant vector, an
eigenvector of P^pi, belongs to the reference); `--center` removes the mean over states first.
Every analysed state counts once (uniform weights, Tang et al.'s default; the replay holds the
states in other proportions, the greedy policy's own 45 seen states most).

The references: the top-k left and right singular vectors of P^pi (P = U S V^T) and the top-k
eigenvectors (by |eigenvalue|, = singular vectors) of the symmetrised (P + P^T) / 2. A greedy
policy makes P^pi almost a deterministic map, whose singular values are the square roots of the
states' in-degrees: many are equal, and a top-k subspace is then not unique. When the k-th
singular value ties with the (k+1)-th (within 1e-8), the reference is every k-dimensional
subspace that holds the singular vectors above the tie and lies in the span of those up to the
end of the tie; we report the LARGEST overlap over them (the same rule for every
representation and for the random subspaces, so they compare alike), and the table flags such
k. Overlap ||U^T Q||_F^2 / k and principal angles: `theory.metrics` (JAX's default float32:
an overlap is exact to ~1e-7; the matrices and their decompositions are float64 numpy).

Compared against, each with the same reference (the analysed agent's own P^pi): (a) the same
network at initialisation, `learner.init(PRNGKey(seed))` of the run's config (what the run
started from); (b) agents trained with spr_weight=0 (`--baseline_workdirs`; each against its own
P^pi); (c) uniformly random k-dimensional subspaces (`--random_draws` draws, whose mean
overlap is k / n without ties).

Exit codes (launch/common.py): 0 done, 2 bad input (an Atari run, no config.json or
checkpoint, a bad flag).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import NamedTuple

import chex
import numpy as np
from absl import flags

from envs import catch
from launch import common

_WORKDIR = flags.DEFINE_list("workdir", None, "launch.train workdir(s) of Catch runs to analyse.")
_BASELINE = flags.DEFINE_list(
    "baseline_workdirs", [], "Workdirs of the comparison runs (e.g. trained with spr_weight=0)."
)
_K = flags.DEFINE_list("k", ["2", "4", "8", "16"], "Subspace dimensions.")
_STATES = flags.DEFINE_enum(
    "states", "seen", ["seen", "all"], "The 195 states the agent sees, or all 250."
)
_EPSILON = flags.DEFINE_float("epsilon", 0.0, "Epsilon of the epsilon-greedy policy of P^pi.")
_CENTER = flags.DEFINE_bool("center", False, "Remove Phi's mean over states before its SVD.")
_DRAWS = flags.DEFINE_integer("random_draws", 200, "Random subspaces per k.")
_JSON = flags.DEFINE_string("json", None, "Write every number here (JSON).")
_FIGURE = flags.DEFINE_string("figure", None, "Write the overlap-vs-k figure here (PNG).")

ROWS, COLUMNS, MOVES = catch.ROWS, catch.COLUMNS, catch.MOVES
NUM_ACTIONS = len(MOVES)
NUM_STATES = ROWS * COLUMNS * COLUMNS
START_PADDLE = COLUMNS // 2  # CatchEnv._new_game
TIE_TOL = 1e-8
REFERENCES = ("P_left", "P_right", "sym")


# ------------------------------------------------------------------------------ state space
def state_index(row: int, ball_col: int, paddle: int) -> int:
  return (row * COLUMNS + ball_col) * COLUMNS + paddle


def states() -> np.ndarray:
  """[250, 3] int: (ball row, ball column, paddle column) of every state, in index order."""
  r, c, p = np.meshgrid(np.arange(ROWS), np.arange(COLUMNS), np.arange(COLUMNS), indexing="ij")
  return np.stack([r.ravel(), c.ravel(), p.ravel()], axis=1)


def reachable() -> np.ndarray:
  """[250] bool: states some policy reaches from an episode's start (|p - 2| <= row)."""
  s = states()
  return np.abs(s[:, 2] - START_PADDLE) <= s[:, 0]


def seen() -> np.ndarray:
  """[250] bool: the 195 states the agent observes (reachable, ball above the paddle row)."""
  return reachable() & (states()[:, 0] < ROWS - 1)


def paddle_path(row: int, paddle: int) -> list[int]:
  """Paddle columns at steps 0..row of the path that represents the state (module docstring):
  moving toward `paddle` at the first steps, then staying."""
  s = int(np.sign(paddle - START_PADDLE))
  m = min(abs(paddle - START_PADDLE), row)
  return [paddle - s * max(0, m - t) for t in range(row + 1)]


def state_stack(row: int, ball_col: int, paddle: int) -> np.ndarray:
  """(4, 84, 84) uint8: the stack that represents the state, oldest frame first."""
  stack = np.zeros((4, *catch.FRAME_SHAPE), np.uint8)
  path = paddle_path(row, paddle)
  for slot, t in enumerate(range(row - 3, row + 1)):
    if t >= 0:  # frames before the episode's start are zeros, as the env pads them
      stack[slot] = catch.render(t, ball_col, path[t])
  return stack


def all_stacks() -> np.ndarray:
  """[250, 4, 84, 84] uint8, in state-index order."""
  return np.stack([state_stack(*map(int, s)) for s in states()])


# ------------------------------------------------------------------------------ dynamics
def reset_distribution() -> np.ndarray:
  """[250]: an episode's first state, (0, c, 2) with the ball's column c uniform."""
  d = np.zeros(NUM_STATES)
  for c in range(COLUMNS):
    d[state_index(0, c, START_PADDLE)] = 1.0 / COLUMNS
  return d


def action_matrices() -> np.ndarray:
  """[3, 250, 250] float64: P_a(s, s') of bsuite's Catch; row-9 states go to the reset
  distribution under every action (module docstring)."""
  p = np.zeros((NUM_ACTIONS, NUM_STATES, NUM_STATES))
  reset = reset_distribution()
  for i, (row, col, paddle) in enumerate(states()):
    for a, move in enumerate(MOVES):
      if row == ROWS - 1:
        p[a, i] = reset
      else:
        p[a, i, state_index(row + 1, col, int(np.clip(paddle + move, 0, COLUMNS - 1)))] = 1.0
  return p


def policy_matrix(p_actions: np.ndarray, greedy: np.ndarray, epsilon: float = 0.0) -> np.ndarray:
  """P^pi [n, n] of the epsilon-greedy policy: (1 - eps) P_greedy(s) + eps mean_a P_a.

  Args:
    p_actions: [A, n, n] per-action matrices.
    greedy: [n] int greedy action per state.
    epsilon: probability of a uniformly random action.
  """
  n = p_actions.shape[1]
  chex.assert_shape(p_actions, (None, n, n))
  chex.assert_shape(greedy, (n,))
  chosen = p_actions[greedy, np.arange(n)]
  return (1.0 - epsilon) * chosen + epsilon * p_actions.mean(axis=0)


def fold_terminals(p: np.ndarray) -> np.ndarray:
  """P [250, 250] -> the chain on the 195 seen states [195, 195]: a step into a row-9 state
  continues to where that state goes (the reset distribution), as the agent's stacks do."""
  chex.assert_shape(p, (NUM_STATES, NUM_STATES))
  keep, terminal = seen(), states()[:, 0] == ROWS - 1
  folded = p[np.ix_(keep, keep)] + p[np.ix_(keep, terminal)] @ p[np.ix_(terminal, keep)]
  # Seen states lead only to reachable states, and row-9 states only to row 0.
  np.testing.assert_allclose(folded.sum(axis=1), 1.0, atol=1e-12)
  return folded


# ------------------------------------------------------------------------------ subspaces
class Reference(NamedTuple):
  """Top-k reference of a matrix with ties handled: the vectors above the k-th singular value
  (`fixed`, [n, a]) and those tied with it (`tied`, [n, b], a < k <= a + b)."""

  fixed: np.ndarray
  tied: np.ndarray
  unique: bool  # b == k - a: the top-k subspace is unique


def reference(vectors: np.ndarray, values: np.ndarray, k: int, tol: float = TIE_TOL) -> Reference:
  """Splits orthonormal `vectors` [n, n] sorted by descending `values` at k (see Reference)."""
  chex.assert_rank(vectors, 2)
  chex.assert_shape(values, (vectors.shape[1],))
  vk = values[k - 1]
  above = int(np.sum(values > vk + tol))
  through = int(np.sum(values >= vk - tol))
  return Reference(vectors[:, :above], vectors[:, above:through], through == k)


def spectral_references(
    p: np.ndarray, ks: list[int]
) -> tuple[dict[int, dict[str, Reference]], dict]:
  """For each k: the references of P (left and right singular vectors) and of (P + P^T) / 2
  (its eigenvectors by |eigenvalue|, which are its singular vectors), from one full
  `theory.metrics.reference_bases` of each matrix (float64); and the spectra
  {"singular_values" of P, "sym_eigenvalues" by descending |eigenvalue|}."""
  from theory import metrics

  n = p.shape[0]
  full = metrics.reference_bases(p, n)
  sym = metrics.reference_bases(0.5 * (p + p.T), n)
  refs = {
      k: {
          "P_left": reference(full["left"], full["singvals"], k),
          "P_right": reference(full["right"], full["singvals"], k),
          "sym": reference(sym["left"], sym["singvals"], k),
      }
      for k in ks
  }
  return refs, {"singular_values": full["singvals"], "sym_eigenvalues": sym["eigvals"]}


def on_policy_states(p: np.ndarray, start: np.ndarray) -> np.ndarray:
  """[n] bool: the states a chain `p` reaches from the support of `start`."""
  reached = start > 0
  while True:
    nxt = reached | (p[reached].sum(axis=0) > 0)
    if (nxt == reached).all():
      return reached
    reached = nxt


def principal_basis(phi: np.ndarray, k: int, center: bool = False) -> np.ndarray:
  """[n, k] orthonormal basis of Phi's top-k principal subspace (its top-k left singular
  vectors; Phi's mean over states removed first when `center`)."""
  chex.assert_rank(phi, 2)
  phi = np.asarray(phi, np.float64)
  if center:
    phi = phi - phi.mean(axis=0, keepdims=True)
  u, _, _ = np.linalg.svd(phi, full_matrices=False)
  return u[:, :k]


def best_basis(q: np.ndarray, ref: Reference, k: int) -> np.ndarray:
  """The k-dimensional reference basis closest to span(q): `fixed` plus the k - a directions of
  span(`tied`) with the largest projection of span(q) (top eigenvectors of T^T Q Q^T T)."""
  need = k - ref.fixed.shape[1]
  if ref.unique or need == 0:
    return np.concatenate([ref.fixed, ref.tied[:, :need]], axis=1)
  c = ref.tied.T @ q
  _, vecs = np.linalg.eigh(c @ c.T)
  return np.concatenate([ref.fixed, ref.tied @ vecs[:, ::-1][:, :need]], axis=1)


def compare(q: np.ndarray, ref: Reference, k: int) -> tuple[float, np.ndarray]:
  """(overlap in [0, 1], principal angles in radians ascending) between span(q) [n, k] and the
  reference's best k-dimensional subspace (`best_basis`), by `theory.metrics`: the quantities
  of Tang et al. (ICML 2023) for span(Phi) against the spectral subspace of P."""
  chex.assert_shape(q, (ref.fixed.shape[0], k))
  overlap, angles = _overlap_and_angles()(q, best_basis(q, ref, k))
  return float(overlap), np.asarray(angles)


@functools.cache
def _overlap_and_angles():
  """`theory.metrics.subspace_overlap` and `principal_angles` in one jitted call: one compilation
  per shape instead of one per operation."""
  import jax

  from theory import metrics

  return jax.jit(lambda q, u: (metrics.subspace_overlap(q, u), metrics.principal_angles(q, u)))


def random_overlaps(ref: Reference, k: int, draws: int, rng: np.random.Generator) -> np.ndarray:
  """[draws] overlaps of uniformly random k-dimensional subspaces with the reference (the same
  tie rule as `compare`; k / n on average for a unique reference)."""
  n = ref.fixed.shape[0]
  out = np.empty(draws)
  for i in range(draws):
    q = np.linalg.qr(rng.standard_normal((n, k)))[0]
    out[i] = compare(q, ref, k)[0]
  return out


# ------------------------------------------------------------------------------ the agent
class Run(NamedTuple):
  """A launch.train run of Catch, restored."""

  workdir: str
  settings: dict  # its config.json
  learner: object  # agents.spr.learner.SPRLearner of its config
  state: object  # its TrainState (numpy leaves) at `step`
  step: int


def load_run(workdir: str | Path) -> Run:
  """The newest checkpoint of a launch.train run of Catch.

  Raises:
    ValueError: not a launch.train run, or not a Catch run (Atari: P^pi cannot be written down).
    spr.checkpoint.CheckpointError: no usable checkpoint.
  """
  from envs import games
  from spr import workdir as wd

  path = Path(workdir)
  if not (path / wd.CONFIG).exists():
    raise ValueError(f"{path / wd.CONFIG} not found: {path} is not a launch.train run")
  stored = wd.read_json(path / wd.CONFIG)
  game = str(stored.get("game"))
  if games.canonical_name(game) != "Catch":
    raise ValueError(
        f"{path} is a run of {game}, not Catch: P^pi can be written down only for Catch's 250 "
        "enumerable states, not for an Atari game (its state is the emulator's)"
    )
  # Imported once the run is known to be one of Catch: a refusal needs no JAX.
  import jax

  from agents.spr import config as spr_config
  from agents.spr.learner import learner_for
  from spr import checkpoint

  config = spr_config.config_from_json(stored)
  learner = learner_for(config, NUM_ACTIONS)
  template = jax.eval_shape(learner.init, jax.random.PRNGKey(0))
  step, tree, _, _ = checkpoint.restore(path / wd.CHECKPOINTS, template, expect_config=stored)
  return Run(str(path), stored, learner, tree, step)


class Representations(NamedTuple):
  """A network's representations of `stacks`, float64, one row per stack."""

  projection: np.ndarray  # [n, 2 * hidden]: the SPR projection of the latent
  latent: np.ndarray  # [n, h * w * c]: the encoder's renormalised latent, flattened


def representations(learner, params, norm_state, stacks: np.ndarray) -> Representations:
  """The projection and latent of uint8 `stacks` [n, 4, 84, 84] under `params` (evaluation
  mode: no augmentation, BatchNorm running statistics)."""
  from spr import objectives

  latent = learner.encoder(params, objectives.scale_frames(stacks), norm_state)
  projection = learner.network.apply.project(params, None, latent)
  return Representations(
      projection=np.asarray(projection, np.float64),
      latent=np.asarray(latent, np.float64).reshape(len(stacks), -1),
  )


def initial_representations(learner, seed: int, stacks: np.ndarray) -> Representations:
  """`representations` of the network a run of `seed` started from: the parameters of
  `learner.init(PRNGKey(seed))`, made by the same `spr.objectives.init_network` call without
  building the rest of a TrainState (its replay and optimiser)."""
  import jax

  from spr import objectives

  params, norm_state, _ = objectives.init_network(learner.network, jax.random.PRNGKey(seed))
  return representations(learner, params, norm_state, stacks)


def greedy_policy(learner, state, stacks: np.ndarray) -> np.ndarray:
  """[n] int greedy actions of a TrainState's acting parameters on `stacks` (noise off)."""
  import jax

  acting = jax.device_put(learner.acting_params(state))
  return np.asarray(learner.greedy_actions(acting, stacks), np.int64)


# ------------------------------------------------------------------------------ the analysis
FEATURES = ("projection", "latent")


def _final_score(workdir: str) -> float | None:
  from spr import workdir as wd

  final = wd.read_final(workdir)
  return None if final is None else float(final.get("mean_score"))


def analyse_run(
    run: Run,
    stacks: np.ndarray,
    ks: list[int],
    state_set: str = "seen",
    epsilon: float = 0.0,
    center: bool = False,
    draws: int = 200,
) -> dict:
  """Every number of one run (see the module docstring), as plain JSON-able data.

  Args:
    run: a restored Catch run (`load_run`).
    stacks: `all_stacks()`.
    ks: subspace dimensions.
    state_set: "seen" (195 states) or "all" (250).
    epsilon: epsilon of P^pi's epsilon-greedy policy.
    center: remove Phi's mean over the states before its SVD.
    draws: random subspaces per k.
  Returns:
    {"workdir", "seed", "step", "spr_weight", "final_score", "greedy" (all 250 states),
    "greedy_counts" (analysed states), "on_policy_states" (of the 250),
    "singular_values", "sym_eigenvalues", "k": {k: {reference: {"unique", "fixed_dims",
    "tied_dims", "<trained|init>_<projection|latent>": {"overlap", "angles_deg"}, "random":
    {"mean", "std"}}}}}.
  """
  seed = int(run.settings["seed"])
  mask = seen() if state_set == "seen" else np.ones(NUM_STATES, bool)
  greedy = greedy_policy(run.learner, run.state, stacks)
  trained = representations(run.learner, run.state.params, run.state.norm_state, stacks)
  init = initial_representations(run.learner, seed, stacks)
  p = policy_matrix(action_matrices(), greedy, epsilon)
  on_policy = on_policy_states(p, reset_distribution())
  if state_set == "seen":
    p = fold_terminals(p)
  refs, spectra = spectral_references(p, ks)
  rng = np.random.default_rng(seed)
  bases = {
      (label, feature): principal_basis(getattr(agent, feature)[mask], max(ks), center)
      for label, agent in (("trained", trained), ("init", init))
      for feature in FEATURES
  }
  out = {
      "workdir": run.workdir,
      "seed": seed,
      "step": run.step,
      "spr_weight": float(run.settings.get("spr_weight", float("nan"))),
      "final_score": _final_score(run.workdir),
      # P^pi is policy_matrix(action_matrices(), greedy, epsilon): the policy rebuilds it.
      "greedy": greedy.tolist(),
      "greedy_counts": np.bincount(greedy[mask], minlength=NUM_ACTIONS).tolist(),
      "on_policy_states": int(on_policy.sum()),
      "singular_values": spectra["singular_values"][:20].round(6).tolist(),
      "sym_eigenvalues": np.real(spectra["sym_eigenvalues"][:20]).round(6).tolist(),
      "k": {},
  }
  for k in ks:
    per_ref = {}
    for name, ref in refs[k].items():
      entry = {
          "unique": bool(ref.unique),
          "fixed_dims": int(ref.fixed.shape[1]),
          "tied_dims": int(ref.tied.shape[1]),
      }
      for (label, feature), basis in bases.items():
        q = basis[:, :k]  # the top-k of the top-max(ks) left singular vectors
        overlap, angles = compare(q, ref, k)
        entry[f"{label}_{feature}"] = {
            "overlap": overlap,
            "angles_deg": np.degrees(angles).round(3).tolist(),
        }
      r = random_overlaps(ref, k, draws, rng)
      entry["random"] = {"mean": float(r.mean()), "std": float(r.std())}
      per_ref[name] = entry
    out["k"][k] = per_ref
  return out


ROWS_OF_GROUP = (
    ("trained_projection", "trained, projection"),
    ("init_projection", "at init, projection"),
    ("trained_latent", "trained, latent"),
    ("init_latent", "at init, latent"),
    ("random", "random subspace"),
)
FIGURE_ROWS = ("trained_projection", "init_projection", "random")
FIGURE_TITLES = {
    "P_left": "top-k left singular vectors of P^pi",
    "P_right": "top-k right singular vectors of P^pi",
    "sym": "top-k eigenvectors of (P^pi + P^pi^T) / 2",
}


def _values(results: list[dict], k: int, ref: str, key: str) -> np.ndarray:
  entries = [r["k"][k][ref][key] for r in results]
  return np.array([e["mean"] if key == "random" else e["overlap"] for e in entries])


def summarise(groups: dict[str, list[dict]], ks: list[int]) -> dict:
  """{group: {ref: {key: {k: {"mean", "min", "max", "values"}}}}} over a group's runs, for the
  projection and latent of the trained and initial networks and for the random subspaces."""
  keys = [f"{w}_{f}" for w in ("trained", "init") for f in FEATURES] + ["random"]
  out = {}
  for group, results in groups.items():
    out[group] = {
        ref: {
            key: {
                k: {
                    "mean": float(v.mean()),
                    "min": float(v.min()),
                    "max": float(v.max()),
                    "values": v.round(4).tolist(),
                }
                for k in ks
                for v in [_values(results, k, ref, key)]
            }
            for key in keys
        }
        for ref in REFERENCES
    }
  return out


def table(groups: dict[str, list[dict]], summary: dict, ks: list[int]) -> str:
  """Markdown tables of the overlaps, mean (min..max) over each group's runs."""
  lines = []
  for ref in REFERENCES:
    lines.append(f"\nOverlap with the {FIGURE_TITLES[ref]} (mean (min..max) over runs)")
    lines.append("")
    lines.append("| network | " + " | ".join(f"k={k}" for k in ks) + " |")
    lines.append("|---|" + "---|" * len(ks))
    for group, results in groups.items():
      for key, label in ROWS_OF_GROUP:
        cells = []
        for k in ks:
          s = summary[group][ref][key][k]
          tie = "" if all(r["k"][k][ref]["unique"] for r in results) else "*"
          cells.append(f"{s['mean']:.3f} ({s['min']:.3f}..{s['max']:.3f}){tie}")
        lines.append(f"| {group}: {label} | " + " | ".join(cells) + " |")
  lines.append(
      "\n* the top-k subspace is not unique for some run (a tie at the k-th singular value): the "
      "largest overlap over the tied choices, for every row alike."
  )
  return "\n".join(lines)


def figure(summary: dict, ks: list[int], path: str) -> None:
  """Overlap vs k, one panel per reference: each group's trained and initial projections and
  random subspaces, mean with min..max bars over the runs."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(REFERENCES), figsize=(4.2 * len(REFERENCES), 3.6), sharey=True)
  styles = {"trained_projection": "-o", "init_projection": "--s", "random": ":^"}
  for ax, ref in zip(axes, REFERENCES):
    for gi, group in enumerate(summary):
      for key, label in ROWS_OF_GROUP:
        if key not in FIGURE_ROWS:
          continue
        s = summary[group][ref][key]
        mean = np.array([s[k]["mean"] for k in ks])
        err = np.array(
            [[s[k]["mean"] - s[k]["min"] for k in ks], [s[k]["max"] - s[k]["mean"] for k in ks]]
        )
        x = np.array(ks) * (1.0 + 0.04 * gi)  # groups side by side
        ax.errorbar(
            x,
            mean,
            yerr=err,
            fmt=styles[key],
            color=f"C{gi}",
            capsize=2,
            label=f"{group}: {label}",
            alpha=0.4 if key == "random" else 1.0,
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k")
    ax.set_title(FIGURE_TITLES[ref])
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("subspace overlap of Phi's top-k span")
  axes[-1].legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def _parse_ks(values: list[str], n: int) -> list[int]:
  try:
    ks = sorted({int(v) for v in values})
  except ValueError:
    raise ValueError(f"--k takes integers, got {','.join(values)}") from None
  if not ks or ks[0] < 1 or ks[-1] >= n:
    raise ValueError(f"--k must be in [1, {n - 1}] (the number of states minus one), got {ks}")
  return ks


def main():
  common.configure_jax_cache()
  if not _WORKDIR.value:
    common.fail("--workdir is required (a launch.train run of Catch)")
  n = int(seen().sum()) if _STATES.value == "seen" else NUM_STATES
  if not 0.0 <= _EPSILON.value <= 1.0:
    common.fail(f"--epsilon must be in [0, 1], got {_EPSILON.value}")
  if _DRAWS.value < 1:
    common.fail(f"--random_draws must be >= 1, got {_DRAWS.value}")
  with common.bad_input():
    ks = _parse_ks(_K.value, n)
    runs = {
        "runs": [load_run(w) for w in _WORKDIR.value],
        "baseline": [load_run(w) for w in _BASELINE.value],
    }
    for run in runs["runs"] + runs["baseline"]:
      dims = 2 * run.learner.config.hidden
      if ks[-1] > dims:
        raise ValueError(f"--k={ks[-1]} exceeds the projection's {dims} dimensions ({run.workdir})")
  stacks = all_stacks()
  groups = {}
  for name, group in runs.items():
    if not group:
      continue
    weights = sorted({r.learner.config.spr_weight for r in group})
    label = f"spr_weight={','.join(f'{w:g}' for w in weights)}"
    results = []
    for run in group:
      results.append(
          analyse_run(run, stacks, ks, _STATES.value, _EPSILON.value, _CENTER.value, _DRAWS.value)
      )
      print(
          f"[{run.workdir}: step {run.step}, final score {results[-1]['final_score']}]",
          file=sys.stderr,
          flush=True,
      )
    groups[label if label not in groups else f"{name} {label}"] = results
  summary = summarise(groups, ks)
  print(
      f"Catch, {n} {_STATES.value} states, P^pi of the greedy policy (epsilon {_EPSILON.value:g}), "
      f"Phi {'centred' if _CENTER.value else 'not centred'}; random: {_DRAWS.value} draws per run"
  )
  print(table(groups, summary, ks))
  if _JSON.value:
    from spr import workdir as wd

    wd.write_json_atomic(
        _JSON.value,
        {
            "settings": {
                "states": _STATES.value,
                "num_states": n,
                "epsilon": _EPSILON.value,
                "center": _CENTER.value,
                "random_draws": _DRAWS.value,
                "k": ks,
            },
            "runs": groups,
            "summary": summary,
        },
    )
  if _FIGURE.value:
    figure(summary, ks, _FIGURE.value)
  return common.OK


if __name__ == "__main__":
  common.run(main)
