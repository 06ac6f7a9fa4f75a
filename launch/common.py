"""Set-up shared by the entry points."""
from __future__ import annotations

import os
import sys


def fail(message: str, code: int = 2) -> None:
  """Bad input (or a run that cannot go on): one `error:` line on stderr and exit `code`."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def configure_jax_cache() -> None:
  """Turns on JAX's persistent compilation cache (unless the user configured one).

  A resumed or repeated run then skips recompiling the learner step (tens of seconds on CPU).
  Override the folder with JAX_COMPILATION_CACHE_DIR; set it to an empty string to disable.
  """
  import jax

  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    if not os.environ["JAX_COMPILATION_CACHE_DIR"]:
      jax.config.update("jax_compilation_cache_dir", None)
    return
  folder = os.path.join(os.path.expanduser("~"), ".cache", "self-predictive-rl", "xla")
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
