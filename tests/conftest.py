"""Test-wide settings: CPU only, quiet JAX, and one persistent compilation cache per session so
that the subprocess runs of the entry points compile the learner once, not once each.

The test processes themselves compile at XLA's LLVM optimisation level 0: most of their time is
compiling many small networks once each, which this roughly halves (tests/test_sgi_batchnorm.py:
190 s -> 104-121 s on 2 cores). The entry points run as subprocesses keep the default level
(they run hundreds of steps, and some tests compare their floats within tolerances): the flag is
removed from the environment once this process's backend has read it, and this process does not
use the persistent cache (JAX keys it by the XLA_FLAGS variable, which no longer shows the
level: the subprocesses would load its executables). An XLA_FLAGS set by the caller is left
alone, and then everything uses it and the cache."""

import os
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="spr-test-xla-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Marked so that pytest-xdist's workers, which inherit the controller's environment, know the
# flag is the suite's own.
_FAST_COMPILE = (
    "XLA_FLAGS" not in os.environ
    or os.environ.get("SPR_TEST_FAST_COMPILE") == os.environ["XLA_FLAGS"]
)
if _FAST_COMPILE:
  os.environ["XLA_FLAGS"] = os.environ["SPR_TEST_FAST_COMPILE"] = (
      "--xla_backend_optimization_level=0"
  )


@pytest.fixture(scope="session", autouse=True)
def _fast_compile_in_this_process_only():
  import jax

  if _FAST_COMPILE:
    jax.config.update("jax_enable_compilation_cache", False)
    jax.devices()  # the backend reads XLA_FLAGS now, once
    del os.environ["XLA_FLAGS"]  # subprocesses compile as a user's run does
  yield
