"""`python -m launch.learning_curves`: the plan of commands, reading finished Catch runs, the
summary and the figure (synthetic workdirs; the real runs are tests/test_catch_learning.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from launch import learning_curves as lc

ROOT = Path(__file__).resolve().parents[1]


def test_plan_runs_every_variant_through_the_entry_points(tmp_path):
  commands = lc.plan(tmp_path, "0-2", ["spr", "sgi_init"])
  modules = [c[0] for c in commands]
  assert modules == ["launch.train", "launch.collect", "launch.pretrain", "launch.train"]
  spr, collect, pretrain, sgi = commands
  assert spr[1:] == [*lc.SPR_FLAGS, "--games=catch", "--seeds=0-2", f"--workdir={tmp_path / 'spr'}"]
  assert f"--out={tmp_path / 'sgi_data'}" in collect
  assert f"--data_dir={tmp_path / 'sgi_data'}" in pretrain
  assert f"--workdir={tmp_path / 'sgi_pretrain'}" in pretrain
  assert (
      f"--init_from={tmp_path / 'sgi_pretrain'}" in sgi
      and f"--workdir={tmp_path / 'sgi_init'}" in sgi
  )
  # The pretrained network must fit the finetuning one: the same width as SPR's variant.
  assert "--hidden=128" in pretrain and "--hidden=128" in lc.SPR_FLAGS


def write_run(root, variant, seed, evals, final, steps=2500):
  wd = root / variant / "Catch" / f"seed_{seed}"
  wd.mkdir(parents=True)
  lines = [{"step": s, "time_s": 1.0, "eval_mean_score": v, "eval_episodes": 10} for s, v in evals]
  lines.insert(1, {"step": 500, "time_s": 1.0, "loss": 1.0})  # a training line is skipped
  (wd / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
  (wd / "final.json").write_text(json.dumps({"steps": steps, "mean_score": final}))


def test_curves_summary_and_figure_from_finished_runs(tmp_path):
  write_run(tmp_path, "spr", 0, [(500, -0.2), (1000, 0.9)], 1.0)
  write_run(tmp_path, "spr", 1, [(500, -0.6), (1000, 0.4)], 0.8)
  write_run(tmp_path, "bbf", 0, [(500, 0.0), (1000, 0.2)], 0.6)
  unfinished = tmp_path / "bbf" / "Catch" / "seed_1"
  unfinished.mkdir(parents=True)  # no final.json: not read
  curves = lc.read_curves(tmp_path, ["spr", "bbf", "sgi_init"])
  assert curves == {
      "spr": {
          0: [(500, -0.2), (1000, 0.9), (2500, 1.0)],
          1: [(500, -0.6), (1000, 0.4), (2500, 0.8)],
      },
      "bbf": {0: [(500, 0.0), (1000, 0.2), (2500, 0.6)]},
  }
  text = lc.summary_markdown(curves, lc.plan(tmp_path, "0-1", ["spr", "bbf"]))
  assert "| SPR | 2 | +0.90 | +1.00, +0.80 | 1000, 2500 |" in text
  assert "| BBF-style | 1 | +0.60 | +0.60 | never |" in text
  assert f"python -m launch.train {' '.join(lc.SPR_FLAGS)}" in text
  lc.plot(curves, tmp_path / "curves.png")
  assert (tmp_path / "curves.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variants=spr,nope"], "unknown variants ['nope']"),
        (["--plot_only"], "no finished Catch"),
    ],
)
def test_bad_input_is_one_error_line(tmp_path, args, message):
  proc = subprocess.run(
      [sys.executable, "-m", "launch.learning_curves", f"--out={tmp_path}", *args],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
  )
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr[-2000:]


def test_collect_writes_catch_data_without_sticky_actions(tmp_path):
  """The SGI variant's data: launch.collect on Catch (its default sticky probability is 0 there,
  0.25 for Atari games as the DQN Replay data); 9-step games, +-1 scores."""
  from spr import dqn_replay

  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "launch.collect",
          "--game=catch",
          "--steps=270",
          "--checkpoint_size=270",
          f"--out={tmp_path}",
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  data = dqn_replay.load_checkpoint(tmp_path / "Catch" / "1", 0)
  assert len(data.action) == 270 and int(data.terminal.sum()) == 30  # 270 steps = 30 games
  assert set(data.reward.tolist()) <= {-1.0, 0.0, 1.0} and set(data.action.tolist()) <= {0, 1, 2}
