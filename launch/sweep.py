r"""Launch (or resume) a sweep of runs, locally or on SLURM, or print its status.

  python -m launch.sweep --config=spr --games=all --seeds=0-9 --root=DIR
  python -m launch.sweep --config=spr,bbf --games=pong,breakout --seeds=0-4 --root=DIR \
      --grid=learning_rate=1e-4,3e-4 --set=steps=100000 --max_parallel=4
  python -m launch.sweep --entry=pretrain --config=sgi_m --data_dir=DATA --games=all --seeds=0-4 \
      --root=PRE
  python -m launch.sweep --config=sgi --games=all --seeds=0-4 --root=FT \
      --init_from=PRE/sgi_m/{game}/seed_{seed}
  python -m launch.sweep --backend=slurm --partition=gpu --time_min=720 ... --root=DIR
  python -m launch.sweep --root=DIR --status

Finished runs are skipped, runs alive elsewhere are skipped, everything else (new, failed,
interrupted) is (re)started and resumes from its own checkpoints. See launch/SWEEPS.md.
Exit codes (launch/common.py): 0 done (or submitted), 1 some run did not finish, 2 bad input.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from launch import backends, common, grid, jobspec, runstate
from spr import workdir as run_files

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Flags are defined only when run as a program (importing this module defines none)."""
  flags.DEFINE_string("config", "", "Configuration name(s), comma-separated.")
  flags.DEFINE_string("games", "all", "`all` or a comma list of games (any case).")
  flags.DEFINE_string("seeds", "0-9", "Seeds: `0-9`, `3`, `0,2,5-7`.")
  flags.DEFINE_string("root", "", "Sweep root; each run gets ROOT/<label>/<game>/seed_<s>.")
  flags.DEFINE_multi_string(
      "set", [], "key=value override passed to every run (part of the label)."
  )
  flags.DEFINE_multi_string(
      "grid", [], "key=v1,v2,...: one configuration per value (cartesian product)."
  )
  flags.DEFINE_string(
      "name", "", "Explicit label instead of config+overrides (one config, no --grid)."
  )
  flags.DEFINE_enum("entry", "train", ["train", "pretrain"], "launch.train or launch.pretrain.")
  flags.DEFINE_string(
      "module", "", "Python module to run instead of the entry's (tests, new entry points)."
  )
  flags.DEFINE_string(
      "data_dir",
      "",
      "pretrain: logged data root passed to every run as --data_dir "
      "(not part of the label; required unless given in --set).",
  )
  flags.DEFINE_bool(
      "joint", False, "pretrain: one run over all --games per seed (ROOT/<label>/joint/)."
  )
  flags.DEFINE_string(
      "init_from",
      "",
      "Finetuning: pretrained workdir template, " "with {game} {ale_game} {seed} {label} {config}.",
  )
  flags.DEFINE_bool(
      "allow_unfinished_init", False, "Launch finetuning runs whose --init_from has no final.json."
  )
  flags.DEFINE_multi_string("env", [], "KEY=VALUE environment variable for every run.")
  flags.DEFINE_bool("status", False, "Print every run's state and latest step, launch nothing.")
  flags.DEFINE_bool("dry_run", False, "Print the commands, launch nothing.")
  flags.DEFINE_enum("backend", "local", ["local", "slurm"], "Where runs execute.")
  flags.DEFINE_integer(
      "max_parallel", 1, "local: runs at a time; slurm: array parallelism (0 = all)."
  )
  flags.DEFINE_string(
      "gpus", "auto", "local: GPU ids (`0,1`), `auto` or `none`; slot k gets GPU k mod n."
  )
  flags.DEFINE_integer(
      "time_min", 0, "Minutes per job before timeout -> requeue (0: local 7 days, slurm 1440)."
  )
  flags.DEFINE_integer(
      "max_requeues", 10, "Timeouts a job may be requeued after (preemptions do not count)."
  )
  flags.DEFINE_integer(
      "signal_delay_s", 120, "USR2 this long before the time limit: stop the trainer, requeue."
  )
  flags.DEFINE_float("grace_s", 90.0, "Seconds the trainer gets after SIGTERM before SIGKILL.")
  flags.DEFINE_string("partition", "", "slurm: partition.")
  flags.DEFINE_integer("gpus_per_job", 1, "slurm: GPUs per job.")
  flags.DEFINE_integer("cpus_per_job", 8, "slurm: CPUs per job.")
  flags.DEFINE_integer("mem_gb", 0, "slurm: memory per job in GB (0: partition default).")
  flags.DEFINE_multi_string(
      "slurm_setup", [], "slurm: shell line run before each job (module load ...)."
  )
  flags.DEFINE_multi_string(
      "slurm_extra", [], "slurm: extra sbatch key=value (account=..., qos=...)."
  )


def sweep_from_flags() -> grid.SweepDef:
  configs = [c.strip() for c in FLAGS.config.split(",") if c.strip()]
  return grid.SweepDef(
      configs=configs,
      games=grid.parse_games(FLAGS.games),
      seeds=grid.parse_seeds(FLAGS.seeds),
      fixed=grid.parse_overrides(FLAGS.set),
      grid=list(FLAGS.grid),
      entry=FLAGS.entry,
      joint=FLAGS.joint,
      init_from=FLAGS.init_from,
      name=FLAGS.name,
      data_dir=str(Path(FLAGS.data_dir).expanduser().resolve()) if FLAGS.data_dir else "",
  )


# Flags of the entry points that are not config fields (they may be --set too).
_LAUNCH_FLAGS = {
    "train": {"env_workers"},
    "pretrain": {"data_dir", "runs", "checkpoints", "cache_dir"},
}


def validate_points(points, entry: str) -> None:
  """Every configuration of the sweep resolves (config name, every --set / --grid key and
  value, the config's own validation) before any job starts: GridError naming the first bad one,
  instead of N jobs that each fail the same way."""
  if entry == "pretrain":
    from agents.sgi import config as module  # pylint: disable=import-outside-toplevel
  else:
    from agents.spr import config as module  # pylint: disable=import-outside-toplevel
  seen = set()
  for p in points:
    key = (p.config, tuple(p.overrides))
    if key in seen:
      continue
    seen.add(key)
    try:
      overrides = {
          k: module.parse_value(k, v)
          for k, v in p.overrides
          if k not in _LAUNCH_FLAGS.get(entry, set())
      }
      module.make_config(p.config, overrides)
    except ValueError as e:
      where = f"--config={p.config}" + "".join(f" {k}={v}" for k, v in p.overrides)
      raise grid.GridError(f"{e} ({where}); no job was started") from None


def discovered_runs(root: Path) -> list[tuple[str, str, int, Path]]:
  """(label, game, seed, workdir) of every run asked for in ROOT/*/sweep.json or present
  (games by canonical name, also those of older sweeps' workdirs and manifests)."""
  runs: dict[Path, tuple[str, str, int, Path]] = {}
  for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
    man = grid.read_manifest(label_dir) or {}
    for game in man.get("games", []):
      for seed in man.get("seeds", []):
        wd = grid.run_dir(root, label_dir.name, game, seed)
        runs[wd] = (label_dir.name, grid.game_name(game), int(seed), wd)
    for wd in sorted(label_dir.glob("*/seed_*")):
      try:
        seed = int(wd.name.split("_", 1)[1])
      except ValueError:
        continue
      runs.setdefault(wd, (label_dir.name, grid.game_name(wd.parent.name), seed, wd))
  return sorted(runs.values(), key=lambda r: (r[0], r[1], r[2]))


def format_status(rows: list[tuple[str, str, int, Path]]) -> str:
  table = [("config", "game", "seed", "state", "step", "detail")]
  counts: dict[str, int] = {s: 0 for s in runstate.STATES}
  for label, game, seed, wd in rows:
    st = runstate.read_state(wd)
    counts[st.state] += 1
    step = "-" if st.step is None else str(st.step)
    if st.budget:
      step += f"/{st.budget}"
    table.append((label, game, str(seed), st.state, step, st.error[:100]))
  widths = [max(len(r[i]) for r in table) for i in range(5)]
  lines = [
      "  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + ("  " + r[5] if r[5] else "")
      for r in table
  ]
  lines.insert(1, "  ".join("-" * w for w in widths))
  lines.append(f"{len(rows)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
  return "\n".join(lines)


def main():
  if not FLAGS.root:
    common.fail("--root is required")
  root = Path(FLAGS.root).expanduser().resolve()
  with common.bad_input(grid.GridError):
    if FLAGS.status:
      if not root.is_dir():
        common.fail(f"root {root} does not exist")
      if FLAGS.config:
        sweep = sweep_from_flags()
        rows = [
            (p.label, p.game, p.seed, grid.run_dir(root, p.label, p.game, p.seed))
            for p in sweep.points()
        ]
      else:
        rows = discovered_runs(root)
      print(format_status(rows))
      return common.OK
    if not FLAGS.config:
      common.fail("--config is required")
    sweep = sweep_from_flags()
    if sweep.data_dir and sweep.entry != "pretrain":
      common.fail("--data_dir is for --entry=pretrain")
    if (
        sweep.entry == "pretrain"
        and not sweep.data_dir
        and not any(k == "data_dir" for k, _ in sweep.fixed)
    ):
      common.fail("--entry=pretrain needs --data_dir=DIR (the logged data, see launch.pretrain)")
    points = sweep.points()
    validate_points(points, sweep.entry)
    env = dict(grid.parse_overrides(FLAGS.env))
    specs = [jobspec.build_spec(p, root, sweep, FLAGS.module, env) for p in points]
  if sweep.init_from and not FLAGS.allow_unfinished_init:
    missing = [
        path
        for path in (jobspec.init_from_path(sweep.init_from, p) for p in points)
        if not run_files.is_finished(path)
    ]
    if missing:
      common.fail(
          f"{len(missing)} runs have an unfinished --init_from (e.g. {missing[0]}); "
          "finish pretraining first or pass --allow_unfinished_init"
      )
  if FLAGS.dry_run:
    for s in specs:
      print(" ".join(["python", "-m", s.module, *s.args]))
    return common.OK
  root.mkdir(parents=True, exist_ok=True)
  extra = {"backend": FLAGS.backend, "module": specs[0].module if specs else ""}
  for label in dict.fromkeys(p.label for p in points):
    grid.write_manifest(root, label, sweep, points, extra)
  folder = root / ".submitit" / "%j"
  with common.bad_input(ValueError, RuntimeError):  # options SLURM refuses, a locked workdir
    if FLAGS.backend == "local":
      opts = backends.LocalOptions(
          max_parallel=max(1, FLAGS.max_parallel),
          gpus=backends.detect_gpus(FLAGS.gpus),
          timeout_min=FLAGS.time_min or backends.LocalOptions.timeout_min,
          max_requeues=FLAGS.max_requeues,
          signal_delay_s=FLAGS.signal_delay_s,
          grace_s=FLAGS.grace_s,
      )
      states = backends.run_local(specs, folder, opts)
      bad = sorted(wd for wd, st in states.items() if st.state != "done")
      print(f"{len(states) - len(bad)}/{len(states)} runs done")
      if bad:
        print(f"{len(bad)} not done; see `python -m launch.sweep --root={root} --status`")
      return common.FAILED if bad else common.OK
    opts = backends.SlurmOptions(
        partition=FLAGS.partition,
        time_min=FLAGS.time_min or 24 * 60,
        gpus_per_job=FLAGS.gpus_per_job,
        cpus_per_job=FLAGS.cpus_per_job,
        mem_gb=FLAGS.mem_gb,
        array_parallelism=FLAGS.max_parallel or 256,
        max_requeues=FLAGS.max_requeues,
        signal_delay_s=FLAGS.signal_delay_s,
        grace_s=FLAGS.grace_s,
        setup=list(FLAGS.slurm_setup),
        additional=dict(grid.parse_overrides(FLAGS.slurm_extra)),
    )
    backends.submit_slurm(specs, folder, opts)
  return common.OK


if __name__ == "__main__":
  define_flags()
  common.run(main, args_hint=" (overrides go in --set=key=value)")
