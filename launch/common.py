"""What every entry point shares: its exit codes, how it ends on an exception, flag parsing.

An entry point (launch/train.py, pretrain.py, collect.py, sweep.py, report.py, bench.py,
gpu_suite.py, theory/check.py) defines `main()` and runs it with `run(main)`. Exit codes:

  0    done.
  1    ran to its end, and something it checks failed (a claim, a suite step, a run of a sweep).
  2    bad input: a flag, a config, a game, logged data, a workdir or a file that does not fit
       (or a workdir another process is training in).
  3    a non-finite loss (the last good checkpoint is kept).
  74   a file-system error (sysexits' EX_IOERR): a workdir under a file, no permission, a full disk.
  128 + n  stopped by signal n after writing a checkpoint (130 Ctrl-C, 143 SIGTERM): rerun the
       same command to resume.

Every error is one `error: ...` line on stderr; a checkpointed stop is one line that is not an
error. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator, NoReturn

OK = 0
FAILED = 1
USAGE = 2
NON_FINITE = 3
IO_ERROR = 74

# The project's exceptions that end an entry point with a code, by (module, class). They are
# looked up in sys.modules when an exception arrives: a class whose module was never imported
# cannot have been raised, and importing the agents here would load JAX into every entry point
# (and into `--help`). A class is listed where it is defined and where entry points import it.
_STOPPED = (("spr.runtime", "Preempted"), ("agents.spr.trainer", "Preempted"))  # has .code
_NON_FINITE = (
    ("spr.runtime", "NonFiniteLossError"),
    ("agents.spr.trainer", "NonFiniteLossError"),
    ("agents.sgi.pretrainer", "NonFiniteLossError"),
)
_BAD_INPUT = (
    ("spr.workdir", "WorkdirError"),  # another config in the workdir, or in use
    ("spr.checkpoint", "CheckpointError"),  # no usable checkpoint, or an unsafe file
    ("spr.dqn_replay", "DataError"),  # missing or corrupt logged data
    ("agents.sgi.finetune", "PretrainedMismatch"),
)  # --init_from does not fit the run


def _loaded(names: tuple[tuple[str, str], ...]) -> tuple[type, ...]:
  classes = (getattr(sys.modules.get(module), name, None) for module, name in names)
  return tuple(c for c in classes if isinstance(c, type))


def io_error(error: OSError) -> str:
  """One line for a file-system error: what failed, on which file."""
  where = f" ({error.filename})" if error.filename else ""
  return f"file-system error: {error.strerror or error}{where}"


def exit_status(error: BaseException) -> tuple[int, str] | None:
  """(exit code, stderr line) for an exception an entry point ends with; None for a bug."""
  if isinstance(error, _loaded(_STOPPED)):
    return error.code, str(error)
  if isinstance(error, _loaded(_BAD_INPUT)):
    return USAGE, f"error: {error}"
  if isinstance(error, _loaded(_NON_FINITE)):
    return NON_FINITE, f"error: {error}"
  if isinstance(error, OSError):  # nothing saved is lost: files are replaced atomically
    return IO_ERROR, f"error: {io_error(error)}"
  return None


def fail(message: str, code: int = USAGE) -> NoReturn:
  """Bad input (or a run that cannot go on): one `error:` line on stderr and exit `code`."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


@contextlib.contextmanager
def bad_input(*errors: type[BaseException]) -> Iterator[None]:
  """Inside, `errors` (default ValueError) are bad input: `fail` with their message.

  For the code that reads the user's input; elsewhere a ValueError is a bug and keeps its
  traceback."""
  errors = errors or (ValueError,)
  try:
    yield
  except errors as e:
    fail(str(e))


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad or unknown flag as one `error:` line and exit 2 like every
  other bad input (absl alone prints a usage hint and exits 1)."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0] if str(e) else repr(e))


def run(main: Callable[[], int | None], *, verbose: bool = False, args_hint: str = "") -> None:
  """Runs an entry point: flags parsed by `parse_flags`, positional arguments refused (with
  `args_hint` after the message), then `main()`, whose return value is the exit code (None: 0)
  and whose exceptions end it as `exit_status` says. `verbose`: absl's INFO logs on stderr."""
  from absl import app, logging  # pylint: disable=import-outside-toplevel

  def main_with_exit_codes(argv: list[str]) -> int | None:
    if len(argv) > 1:
      fail(f"unexpected arguments: {' '.join(argv[1:])}{args_hint}")
    try:
      return main()
    except Exception as e:  # pylint: disable=broad-except
      status = exit_status(e)
      if status is None:
        raise
    code, line = status
    print(line, file=sys.stderr)
    return code

  if verbose:
    logging.set_verbosity(logging.INFO)
  app.run(main_with_exit_codes, flags_parser=parse_flags)


def configure_jax_cache() -> None:
  """Turns on JAX's persistent compilation cache (unless the user configured one).

  A resumed or repeated run then skips recompiling the learner step (tens of seconds on CPU).
  Override the folder with JAX_COMPILATION_CACHE_DIR; set it to an empty string to disable.
  """
  import jax  # pylint: disable=import-outside-toplevel

  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    if not os.environ["JAX_COMPILATION_CACHE_DIR"]:
      jax.config.update("jax_compilation_cache_dir", None)
    return
  folder = os.path.join(os.path.expanduser("~"), ".cache", "self-predictive-rl", "xla")
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
