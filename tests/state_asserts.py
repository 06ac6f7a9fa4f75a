"""Assertions shared by the env tests."""

import numpy as np


def assert_same_state(a, b, path="state"):
  """Recursive equality of get_state() dicts (arrays, bytes, numbers, nested dicts/lists),
  naming the first path that differs."""
  if isinstance(a, dict):
    assert a.keys() == b.keys(), path
    for key in a:
      assert_same_state(a[key], b[key], f"{path}[{key!r}]")
  elif isinstance(a, (list, tuple)):
    assert len(a) == len(b), path
    for i, (x, y) in enumerate(zip(a, b)):
      assert_same_state(x, y, f"{path}[{i}]")
  elif isinstance(a, np.ndarray):
    np.testing.assert_array_equal(a, b, err_msg=path)
  else:
    assert a == b, path
