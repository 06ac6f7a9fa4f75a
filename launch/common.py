"""Set-up shared by the entry points."""
from __future__ import annotations

import os
import sys


# Exit codes of every entry point: 0 done; 2 bad input (flags, config, game, a workdir or file
# that does not fit); 3 a non-finite loss; 74 a file-system error (sysexits' EX_IOERR: a workdir
# under a file, no permission, a full disk); 130 / 143 stopped by Ctrl-C / SIGTERM after a
# checkpoint (128 + the signal's number).
IO_ERROR = 74


def io_error(error: OSError) -> str:
  """One line for a file-system error: what failed, on which file."""
  where = f" ({error.filename})" if error.filename else ""
  return f"file-system error: {error.strerror or error}{where}"


def fail(message: str, code: int = 2) -> None:
  """Bad input (or a run that cannot go on): one `error:` line on stderr and exit `code`."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad or unknown flag as one `error:` line and exit 2 like every
  other bad input (absl alone prints a usage hint and exits 1). Use as
  `app.run(main, flags_parser=parse_flags)`."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0] if str(e) else repr(e))
  return []  # not reached


def stop(message: str, code: int) -> None:
  """A clean stop that is not an error (a checkpointed Ctrl-C or SIGTERM): the message on stderr,
  exit `code` (128 + the signal's number, as a shell reports a signalled process)."""
  print(message, file=sys.stderr)
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
