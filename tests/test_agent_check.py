"""theory.agent_check: Catch's exact transition matrices, the stacks that represent its states,
the subspace comparisons, the agent's representations on a checkpoint, and the refusal of an
Atari run."""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from absl.testing import absltest

from envs import catch
from theory import agent_check as ac

ROOT = Path(__file__).resolve().parents[1]
LEFT, NOOP, RIGHT = 0, 1, 2


def _orthonormal(n, k, seed=0):
  return np.linalg.qr(np.random.default_rng(seed).standard_normal((n, k)))[0]


class StateSpaceTest(absltest.TestCase):

  def test_counts_and_index(self):
    s = ac.states()
    self.assertEqual(s.shape, (250, 3))
    for i in (0, 7, 131, 249):
      self.assertEqual(ac.state_index(*s[i]), i)
    self.assertEqual(int(ac.reachable().sum()), 220)  # 30 unreachable states on rows 0 and 1
    self.assertEqual(int(ac.seen().sum()), 195)  # and not the 25 terminal (row 9) states
    self.assertEqual(ac.paddle_path(6, 0), [2, 1, 0, 0, 0, 0, 0])
    self.assertEqual(ac.paddle_path(1, 4), [3, 4])  # unreachable: moved each step, ends at 4

  def test_stacks_are_those_the_env_produces(self):
    """Every seen state's stack is bit for bit the env's after playing its paddle path."""
    env = catch.CatchEnv("catch", seed=0)
    for row, col, paddle in ac.states()[ac.seen()]:
      env.reset()
      state = env.get_state()
      state["ball_col"] = int(col)
      stack = np.zeros((4, *catch.FRAME_SHAPE), np.uint8)
      stack[-1] = catch.render(0, int(col), 2)
      state["stacker"] = {"stack": stack}
      env.set_state(state)
      path = ac.paddle_path(int(row), int(paddle))
      for before, after in zip(path, path[1:]):
        env.step(catch.MOVES.index(after - before))
      self.assertEqual(env.board, (row, col, paddle))
      np.testing.assert_array_equal(env.stack, ac.state_stack(int(row), int(col), int(paddle)))


class DynamicsTest(absltest.TestCase):

  def test_action_matrices(self):
    p = ac.action_matrices()
    self.assertEqual(p.shape, (3, 250, 250))
    np.testing.assert_allclose(p.sum(axis=2), 1.0, atol=1e-12)
    idx = ac.state_index
    # The ball falls one row in its column; the paddle moves first, clipped at the walls.
    self.assertEqual(p[LEFT, idx(3, 1, 2), idx(4, 1, 1)], 1.0)
    self.assertEqual(p[NOOP, idx(3, 1, 2), idx(4, 1, 2)], 1.0)
    self.assertEqual(p[RIGHT, idx(3, 1, 2), idx(4, 1, 3)], 1.0)
    self.assertEqual(p[LEFT, idx(0, 4, 0), idx(1, 4, 0)], 1.0)
    self.assertEqual(p[RIGHT, idx(7, 0, 4), idx(8, 0, 4)], 1.0)
    self.assertEqual(p[NOOP, idx(8, 3, 3), idx(9, 3, 3)], 1.0)  # into the terminal row
    # Every non-terminal state has one successor, one row down, same ball column.
    s = ac.states()
    for a in range(3):
      nxt = s[p[a].argmax(axis=1)]
      live = s[:, 0] < 9
      np.testing.assert_array_equal(nxt[live, 0], s[live, 0] + 1)
      np.testing.assert_array_equal(nxt[live, 1], s[live, 1])
      np.testing.assert_array_equal(nxt[live, 2], np.clip(s[live, 2] + catch.MOVES[a], 0, 4))
      # A terminal state resets, whatever the action: (0, c, 2) with c uniform.
      np.testing.assert_array_equal(p[a, ~live], np.tile(ac.reset_distribution(), (25, 1)))
    reset = ac.reset_distribution()
    self.assertEqual(reset[[idx(0, c, 2) for c in range(5)]].tolist(), [0.2] * 5)

  def test_policy_matrix_and_folded_chain(self):
    p_a = ac.action_matrices()
    greedy = np.random.default_rng(1).integers(0, 3, 250)
    p = ac.policy_matrix(p_a, greedy)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    for i in (0, 57, 120, 230):
      np.testing.assert_array_equal(p[i], p_a[greedy[i], i])
    mixed = ac.policy_matrix(p_a, greedy, epsilon=0.3)
    np.testing.assert_allclose(mixed, 0.7 * p + 0.1 * p_a.sum(axis=0))
    folded = ac.fold_terminals(p)  # checks its rows sum to 1 itself
    self.assertEqual(folded.shape, (195, 195))
    seen = np.flatnonzero(ac.seen())
    where = {int(s): i for i, s in enumerate(seen)}
    row8 = where[ac.state_index(8, 2, 3)]
    starts = [where[ac.state_index(0, c, 2)] for c in range(5)]
    np.testing.assert_allclose(folded[row8, starts], 0.2)  # row 8 goes to the next episode
    # From the reset states the greedy chain visits one state per row and ball column.
    on = ac.on_policy_states(p, ac.reset_distribution())
    self.assertEqual(int(on.sum()), 50)


class SubspaceTest(absltest.TestCase):

  def test_overlap_with_itself_and_complement(self):
    n, k = 40, 4
    basis = _orthonormal(n, n)
    values = np.arange(n, 0, -1.0)  # distinct: a unique top-k subspace
    ref = ac.reference(basis, values, k)
    self.assertTrue(ref.unique)
    # theory.metrics computes in JAX's default float32: equalities hold to ~1e-7 (angles, through
    # arccos near 1, to ~1e-3 rad).
    overlap, angles = ac.compare(basis[:, :k] @ _orthonormal(k, k, 2), ref, k)  # same span
    self.assertAlmostEqual(overlap, 1.0, delta=1e-6)
    np.testing.assert_allclose(angles, 0.0, atol=2e-3)
    overlap, angles = ac.compare(basis[:, k : 2 * k], ref, k)  # orthogonal complement
    self.assertAlmostEqual(overlap, 0.0, delta=1e-6)
    np.testing.assert_allclose(angles, np.pi / 2, atol=1e-3)
    rand = ac.random_overlaps(ref, k, 300, np.random.default_rng(0))
    self.assertAlmostEqual(rand.mean(), k / n, delta=0.02)

  def test_ties_take_the_best_choice(self):
    n, k = 30, 3
    basis = _orthonormal(n, n, 3)
    values = np.array([5.0, 2.0, 2.0, 2.0, 2.0] + [1.0] * (n - 5))  # 1 above, 4 tied at k=3
    ref = ac.reference(basis, values, k)
    self.assertFalse(ref.unique)
    self.assertEqual((ref.fixed.shape[1], ref.tied.shape[1]), (1, 4))
    inside = np.concatenate([basis[:, :1], basis[:, 3:5]], axis=1)  # a valid top-3 choice
    self.assertAlmostEqual(ac.compare(inside, ref, k)[0], 1.0, delta=1e-6)
    # Half the tied span is reachable: the best choice holds the top vector and 2 tied ones.
    outside = np.concatenate([basis[:, 1:3], basis[:, 7:8]], axis=1)
    self.assertAlmostEqual(ac.compare(outside, ref, k)[0], 2.0 / 3.0, delta=1e-6)

  def test_principal_basis(self):
    rng = np.random.default_rng(0)
    u = _orthonormal(50, 3)
    phi = u @ np.diag([10.0, 5.0, 1.0]) @ rng.standard_normal((3, 20))
    q = ac.principal_basis(phi, 3)
    np.testing.assert_allclose(q @ q.T, u @ u.T, atol=1e-10)
    centred = ac.principal_basis(phi + 7.0, 2, center=True)
    np.testing.assert_allclose(centred.T @ np.ones(50), 0.0, atol=1e-8)


def _tiny_run(workdir: Path, seed: int = 3):
  """A workdir with config.json and one checkpoint of a smoke agent at its initial parameters.

  The TrainState is built around `objectives.init_network`'s parameters (what `learner.init`
  holds) with zeros elsewhere: compiling the whole `learner.init` (replay, optimiser) would
  take most of this file's time."""
  import jax

  from agents.spr import engine
  from agents.spr.config import make_config
  from agents.spr.learner import learner_for
  from spr import objectives, workdir as wd

  config = make_config("smoke", {"replay_capacity": 64})
  workdir.mkdir(parents=True)
  wd.write_json_atomic(workdir / wd.CONFIG, engine.run_identity("smoke", "Catch", seed, config))
  learner = learner_for(config, 3)
  params, norm_state, _ = objectives.init_network(learner.network, jax.random.PRNGKey(seed))
  template = jax.eval_shape(learner.init, jax.random.PRNGKey(seed))
  state = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template)._replace(
      params=params, norm_state=norm_state
  )
  host = dict(step=0, frame=np.zeros((84, 84), np.uint8), action=0, elapsed=0.0, episodes=[])
  engine.save_checkpoint(workdir / wd.CHECKPOINTS, state, host, keep=1)
  return config, learner


class AgentTest(absltest.TestCase):

  def test_representations_at_init(self):
    with tempfile.TemporaryDirectory() as tmp:
      config, learner = _tiny_run(Path(tmp) / "run")
      run = ac.load_run(Path(tmp) / "run")
      self.assertEqual(run.step, 0)
      stacks = ac.all_stacks()
      init = ac.initial_representations(learner, 3, stacks)
      channels = config.encoder_channels[-1]
      self.assertEqual(init.projection.shape, (250, 2 * config.hidden))
      self.assertEqual(init.latent.shape, (250, 7 * 7 * channels))
      self.assertTrue(np.isfinite(init.projection).all())
      self.assertGreater(np.linalg.matrix_rank(init.projection), 8)  # distinct states, not one
      greedy = ac.greedy_policy(run.learner, run.state, stacks)
      self.assertEqual(greedy.shape, (250,))
      self.assertTrue(set(greedy.tolist()) <= {0, 1, 2})
      # The checkpoint holds the initial network, so the trained and initial rows agree.
      result = ac.analyse_run(run, stacks, [3], draws=2)  # one k: each shape compiles ops
      self.assertEqual(result["on_policy_states"], 50)
      self.assertEqual(sum(result["greedy_counts"]), 195)
      for ref in ac.REFERENCES:
        entry = result["k"][3][ref]
        self.assertEqual(entry["trained_projection"], entry["init_projection"])
        self.assertEqual(entry["trained_latent"], entry["init_latent"])
        self.assertLen(entry["trained_projection"]["angles_deg"], 3)
        self.assertBetween(entry["trained_projection"]["overlap"], 0.0, 1.0)
        self.assertBetween(entry["random"]["mean"], 0.0, 1.0)

  def test_atari_run_is_refused(self):
    with tempfile.TemporaryDirectory() as tmp:
      from spr import workdir as wd

      path = Path(tmp) / "pong"
      path.mkdir()
      wd.write_json_atomic(path / wd.CONFIG, {"game": "Pong", "seed": 0})
      with self.assertRaisesRegex(ValueError, "not Catch"):
        ac.load_run(path)
      out = subprocess.run(
          [sys.executable, "-m", "theory.agent_check", f"--workdir={path}"],
          capture_output=True,
          text=True,
          cwd=ROOT,
          env=dict(os.environ, JAX_PLATFORMS="cpu"),
          timeout=120,
      )
      self.assertEqual(out.returncode, 2, out.stderr)
      lines = out.stderr.strip().splitlines()
      self.assertLen(lines, 1, out.stderr)
      self.assertRegex(lines[0], r"^error: .* a run of Pong, not Catch: P\^pi can be written")


if __name__ == "__main__":
  absltest.main()
