"""Learning curves on Catch at CPU size: SPR, SPR without its self-predictive loss, BBF-style, and
SPR started from an SGI-pretrained network; several seeds; one command.

    python -m launch.learning_curves --out=results/catch          # trains what is missing, plots
    python -m launch.learning_curves --out=results/catch --plot_only

Every run goes through the real entry points (`launch.train`, and for the SGI variant
`launch.collect` + `launch.pretrain` first), one `launch.train --games=catch --seeds=...` process
per variant, so a rerun resumes or skips finished runs. Writes `<out>/curves.png` (evaluation
return vs env steps: mean over seeds, shaded min-max) and `<out>/summary.md` (final scores per
seed and the commands). The settings are the CPU-size networks that tests/test_catch_learning.py
trains (docs/LEARNING.md); they are not the papers' agent sizes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from absl import flags

from launch import common

from launch.catch_settings import (  # pylint: disable=unused-import
    BBF_FLAGS,
    LABELS,
    SGI_COLLECT_FLAGS,
    SGI_PRETRAIN_FLAGS,
    SPR_FLAGS,
    STEPS,
    VARIANTS,
)

_OUT = flags.DEFINE_string("out", None, "Folder of the runs and the figure.")
_SEEDS = flags.DEFINE_string("seeds", "0-2", "Seeds of every variant ('0-2', '0,3').")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"Any of {', '.join(VARIANTS)}.")
_PLOT_ONLY = flags.DEFINE_bool("plot_only", False, "Only read the runs in --out and plot them.")


def plan(out: Path, seeds: str, variants: list[str]) -> list[list[str]]:
  """The commands (module and flags, without the interpreter) that produce every run."""
  commands = []
  for name in variants:
    train = ["launch.train", *VARIANTS[name], "--games=catch", f"--seeds={seeds}"]
    if name == "sgi_init":
      data, pre = out / "sgi_data", out / "sgi_pretrain"
      commands.append(["launch.collect", *SGI_COLLECT_FLAGS, f"--out={data}"])
      commands.append(
          ["launch.pretrain", *SGI_PRETRAIN_FLAGS, f"--data_dir={data}", f"--workdir={pre}"]
      )
      train.append(f"--init_from={pre}")
    commands.append([*train, f"--workdir={out / name}"])
  return commands


def read_curves(out: Path, variants: list[str]) -> dict[str, dict[int, list[tuple[int, float]]]]:
  """variant -> seed -> [(env step, evaluation return)]: the periodic evaluations of
  metrics.jsonl, then the final one (final.json) at the run's last step."""
  curves: dict = {}
  for name in variants:
    for seed_dir in sorted((out / name / "Catch").glob("seed_*")):
      final = seed_dir / "final.json"
      if not final.exists():
        continue
      points = []
      for line in (seed_dir / "metrics.jsonl").read_text().splitlines():
        try:
          record = json.loads(line)
        except ValueError:  # a line cut by a kill (metrics.jsonl tolerates one)
          continue
        if "eval_mean_score" in record:
          points.append((int(record["step"]), float(record["eval_mean_score"])))
      done = json.loads(final.read_text())
      points.append((int(done["steps"]), float(done["mean_score"])))
      curves.setdefault(name, {})[int(seed_dir.name.split("_")[1])] = points
  return curves


def summary_markdown(curves: dict, commands: list[list[str]]) -> str:
  """The final evaluation of every run (50 episodes), per variant, and the commands."""
  lines = [
      "| variant | seeds | final return, mean | per seed | first eval >= 0.8 (steps) |",
      "|---|---|---|---|---|",
  ]
  for name, runs in curves.items():
    finals = [points[-1][1] for _, points in sorted(runs.items())]
    first = []
    for _, points in sorted(runs.items()):
      hit = [step for step, value in points if value >= 0.8]
      first.append(str(hit[0]) if hit else "never")
    lines.append(
        f"| {LABELS.get(name, name)} | {len(runs)} | {sum(finals) / len(finals):+.2f} | "
        f"{', '.join(f'{v:+.2f}' for v in finals)} | {', '.join(first)} |"
    )
  lines += ["", "Commands (run in this order; `python -m launch.learning_curves` runs them):", ""]
  lines += [f"    python -m {' '.join(c)}" for c in commands]
  return "\n".join(lines) + "\n"


def plot(curves: dict, path: Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  fig, ax = plt.subplots(figsize=(6, 3.6))
  for name, runs in curves.items():
    steps = sorted({s for points in runs.values() for s, _ in points})
    values = [[v for points in runs.values() for s, v in points if s == t] for t in steps]
    mean = np.array([np.mean(v) for v in values])
    ax.plot(
        steps, mean, marker="o", markersize=3, label=f"{LABELS.get(name, name)} ({len(runs)} seeds)"
    )
    ax.fill_between(steps, [min(v) for v in values], [max(v) for v in values], alpha=0.2)
  ax.axhline(-0.61, color="grey", linestyle=":", linewidth=1, label="random policy (-0.61)")
  ax.set_xlabel("env steps")
  ax.set_ylabel("evaluation return (mean, min-max over seeds)")
  ax.set_title("Catch, CPU-size networks", fontsize=10)
  ax.set_ylim(-1.05, 1.05)
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main():
  if not _OUT.value:
    common.fail("--out is required")
  unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
  if unknown:
    common.fail(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
  out = Path(_OUT.value)
  commands = plan(out, _SEEDS.value, _VARIANTS.value)
  if not _PLOT_ONLY.value:
    for command in commands:
      print("+ python -m " + " ".join(command), flush=True)
      proc = subprocess.run([sys.executable, "-m", *command])
      if proc.returncode:  # a child killed by signal n returns -n: exit 128 + n, as a shell does
        code = 128 - proc.returncode if proc.returncode < 0 else proc.returncode
        common.fail(f"{command[0]} exited with {code}; rerun to resume", code)
  curves = read_curves(out, _VARIANTS.value)
  if not curves:
    common.fail(f"no finished Catch runs in {out}")
  out.mkdir(parents=True, exist_ok=True)
  plot(curves, out / "curves.png")
  (out / "summary.md").write_text(summary_markdown(curves, commands))
  print((out / "summary.md").read_text())
  print(f"figure: {out / 'curves.png'}")


def run():
  common.run(main)


if __name__ == "__main__":
  run()
