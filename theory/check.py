"""Run every claim of theory/THEORY.md (secs. 2-4) and print a PASS/FAIL table.

Usage: python -m theory.check [--only=C1,C4]
Exit codes (launch/common.py, as every entry point): 0 every claim passes, 1 a claim fails,
2 bad flags.
"""

import sys
import time

from absl import flags

from launch import common

_ONLY = flags.DEFINE_list("only", [], "Substrings of claim-function names to run (default all).")


def main():
  import jax

  jax.config.update("jax_enable_x64", True)  # exact identities are checked to 1e-10
  from theory import claims

  selected = [
      fn
      for fn in claims.ALL
      if not _ONLY.value or any(s.lower() in fn.__name__.lower() for s in _ONLY.value)
  ]
  if not selected:
    common.fail(
        f"--only={','.join(_ONLY.value)} matches no claim "
        f"({', '.join(fn.__name__ for fn in claims.ALL)})"
    )
  rows, start = [], time.time()
  for fn in selected:
    t0 = time.time()
    new = fn()
    rows.extend(new)
    print(f"[{fn.__name__}: {time.time() - t0:.1f}s]", file=sys.stderr, flush=True)
  w0 = max(len(r.name) for r in rows)
  w1 = max(len(r.measured) for r in rows)
  w2 = max(len(r.expected) for r in rows)
  print(f"{'claim':<{w0}} | {'measured':<{w1}} | {'expected':<{w2}} | result")
  print("-" * (w0 + w1 + w2 + 16))
  for r in rows:
    print(
        f"{r.name:<{w0}} | {r.measured:<{w1}} | {r.expected:<{w2}} | "
        f"{'PASS' if r.passed else 'FAIL'}"
    )
  failed = sum(not r.passed for r in rows)
  print(f"\n{len(rows) - failed}/{len(rows)} PASS in {time.time() - start:.0f}s")
  return common.FAILED if failed else common.OK


if __name__ == "__main__":
  common.run(main)
