"""theory.learn on a small matrix and on bad inputs (subprocess, exit codes)."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl.testing import absltest


def _learn(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
      [sys.executable, "-m", "theory.learn", *args],
      capture_output=True,
      text=True,
      env=env,
      timeout=120,
  )


def _lazy_ring(n):
  eye = np.eye(n)
  return 0.5 * eye + 0.25 * (np.roll(eye, 1, 1) + np.roll(eye, -1, 1))


class LearnCliTest(absltest.TestCase):

  def test_runs_and_writes_outputs(self):
    with tempfile.TemporaryDirectory() as tmp:
      block = np.kron(np.eye(2), np.full((4, 4), 0.25))  # two clusters: top-2 gap ~0.5
      t = 0.5 * _lazy_ring(8) + 0.4 * block + 0.1 / 8
      np.save(f"{tmp}/T.npy", t)
      out = _learn(f"--transition={tmp}/T.npy", "--k=2", f"--out={tmp}/o", "--max_steps=20000")
      self.assertEqual(out.returncode, 0, out.stderr)
      self.assertRegex(out.stdout, "converged|step cap")
      phi = np.load(f"{tmp}/o/phi.npy")
      self.assertEqual(phi.shape, (8, 2))
      m = json.load(open(f"{tmp}/o/metrics.json"))
      for key in (
          "overlap_eig",
          "overlap_left_singular",
          "overlap_right_singular",
          "gram_drift",
          "objective",
          "stopped",
          "steps",
      ):
        self.assertIn(key, m)
      self.assertEqual(m["stopped"], "converged")
      self.assertGreater(m["overlap_eig"], 0.99)
      self.assertLess(m["gram_drift"], 0.5 * 0.02)  # O(h) with h = 0.02

  def test_bad_inputs_exit_2(self):
    with tempfile.TemporaryDirectory() as tmp:
      good = _lazy_ring(5)
      cases = {
          "nonsquare": (np.ones((3, 4)) / 4, None, "3"),
          "notstoch": (good * 1.01, None, "2"),
          "negative": (np.array([[1.5, -0.5], [0.5, 0.5]]), None, "1"),
          "bigk": (good, None, "5"),
          "dist": (good, np.full(5, 0.3), "2"),
          "singular": (good, np.array([1.0, 0, 0, 0, 0]), "2"),
      }
      for name, (t, d, k) in cases.items():
        np.save(f"{tmp}/{name}.npy", t)
        args = [f"--transition={tmp}/{name}.npy", f"--k={k}", f"--out={tmp}/o_{name}"]
        if d is not None:
          np.save(f"{tmp}/{name}_d.npy", d)
          args.append(f"--dist={tmp}/{name}_d.npy")
        out = _learn(*args)
        self.assertEqual(out.returncode, 2, f"{name}: {out.stderr}")
        self.assertIn("theory.learn: error:", out.stderr, name)
        self.assertFalse(os.path.exists(f"{tmp}/o_{name}"), name)


if __name__ == "__main__":
  absltest.main()
