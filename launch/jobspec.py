"""A sweep's run as a job: `JobSpec` (module, args, workdir) and how a grid point becomes one.

A run is `python -m MODULE ARGS...` whose workdir follows docs/CONTRACTS.md. Running the same
command again on the same workdir resumes from its last checkpoint, and a finished run
(final.json) exits 0 at once; the backends (launch/backends.py) rely on that and nothing more.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from launch import grid, runstate
from launch.attempt import Attempt
from spr import workdir as run_files

ENTRY_MODULES = {"train": "launch.train", "pretrain": "launch.pretrain"}


@dataclasses.dataclass(frozen=True)
class JobSpec:
  """`python -m module *args` on `workdir`; env: extra environment variables for the child."""

  module: str
  args: tuple[str, ...]
  workdir: str
  env: tuple[tuple[str, str], ...] = ()

  @property
  def path(self) -> Path:
    return Path(self.workdir)

  def command(self) -> list[str]:
    return [sys.executable, "-u", "-m", self.module, *self.args]

  def state(self) -> runstate.RunState:
    return runstate.read_state(self.path)

  def is_done(self) -> bool:
    return run_files.is_finished(self.path)

  def start(self, extra_env: dict[str, str] | None = None) -> Attempt:
    return Attempt(self.command(), self.path, {**dict(self.env), **(extra_env or {})})

  def run(self, extra_env: dict[str, str] | None = None) -> int:
    """Runs (or resumes) the run to completion in a subprocess; returns its exit code."""
    if self.is_done():
      return 0
    attempt = self.start(extra_env)
    try:
      return attempt.wait()
    finally:
      attempt.close()


def build_spec(
    point: grid.GridPoint,
    root: Path | str,
    sweep: grid.SweepDef,
    module: str = "",
    env: dict[str, str] | None = None,
) -> JobSpec:
  """GridPoint -> JobSpec for launch.train / launch.pretrain (same job definition for both)."""
  module = module or ENTRY_MODULES[sweep.entry]
  wd = grid.run_dir(root, point.label, point.game, point.seed)
  args = [f"--config={point.config}"]
  if point.game == grid.JOINT:
    args.append("--games=" + ",".join(point.games))
  elif sweep.entry == "pretrain":
    args.append(f"--games={point.game}")
  else:
    args.append(f"--game={point.game}")
  args += [f"--seed={point.seed}", f"--workdir={wd}"]
  if sweep.data_dir:
    args.append(f"--data_dir={sweep.data_dir}")
  if sweep.init_from:
    args.append("--init_from=" + init_from_path(sweep.init_from, point))
  args += [f"--{k}={v}" for k, v in point.overrides]
  return JobSpec(module, tuple(args), str(wd), tuple(sorted((env or {}).items())))


def init_from_path(template: str, point: grid.GridPoint) -> str:
  """`/pre/sgi/{game}/seed_{seed}` -> the pretraining workdir of this finetuning run.

  `{game}` is the canonical name (`{ale_game}`, the same, is what older templates say); a
  pretraining workdir an older sweep wrote under the ROM id (`ms_pacman`) is used when only that
  one exists."""

  def fill(game: str) -> str:
    return template.format(
        label=point.label,
        config=point.config,
        game=game,
        ale_game=game if point.game != grid.JOINT else "",
        seed=point.seed,
    )

  path = fill(point.game)
  older = fill(grid.rom_id(point.game)) if point.game != grid.JOINT else path
  return older if not Path(path).exists() and Path(older).exists() else path
