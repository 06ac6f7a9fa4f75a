"""Evaluations and finetuning in multi-run mode (`launch.train --games/--seeds`,
agents/spr/multi_trainer.py): the runs of a batch are evaluated together (one vmapped act
function over runs, envs/evaluation.py's `evaluate_runs`) with each run's result equal to its
evaluation alone; periodic evaluations (`--eval_every`) and SGI finetuning (`--init_from`) in a
batch, against the same run trained alone."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.spr.multi_trainer import run_workdir
from envs.evaluation import evaluate, evaluate_runs

ROOT = Path(__file__).resolve().parents[1]


def run(cmd):
  proc = subprocess.run(
      [sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=600
  )
  if proc.returncode != 0:
    raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def fake_policy(stacks):
  """A deterministic policy that depends on the frames (so that wrong rows would show)."""
  return (stacks.reshape(stacks.shape[:-3] + (-1,)).sum(-1, dtype=np.int64) // 7) % 4


def test_evaluate_runs_gives_each_run_its_evaluation_alone():
  """Two runs (other games, other action counts) in one loop, with env reuse (max_parallel=1)
  and episodes of different lengths: each run's episodes are `evaluate`'s for that run."""
  shapes = []

  def act_runs(stacks):
    shapes.append(stacks.shape)
    return fake_policy(stacks)

  runs = [("Breakout", 5), ("Pong", 3)]
  together = evaluate_runs(act_runs, runs, num_episodes=2, epsilon=0.2, max_parallel=1)
  alone = [
      evaluate(fake_policy, g, num_episodes=2, seed=s, epsilon=0.2, max_parallel=1) for g, s in runs
  ]
  assert together == alone
  assert together[0] != together[1]
  assert set(shapes) == {(2, 1, 4, 84, 84)}


# ---------------------------------------------------------------- batched acting, in process
@pytest.fixture(scope="module")
def fresh_pong():
  """Three fresh smoke Pong networks: each acts constantly, seeds 0, 1, 2 with other actions."""
  import jax
  from agents.spr.config import make_config
  from agents.spr.learner import learner_for

  learner = learner_for(make_config("smoke"), 6)
  return learner, [learner.init(jax.random.PRNGKey(s)) for s in (0, 1, 2)]


def test_batched_act_function_gives_each_run_its_own_network(fresh_pong):
  from agents.spr import engine, evaluation

  learner, states = fresh_pong
  acting = learner.acting_params(engine.stack_states(states))
  stacks = np.random.default_rng(0).integers(0, 255, (3, 8, 4, 84, 84), np.uint8)
  for n in (5, 8):  # padded to the evaluation batch (8), and already full
    together = evaluation.make_runs_eval_act_fn(learner, acting, 8)(stacks[:, :n])
    assert together.shape == (3, n)
    for r, state in enumerate(states):
      alone = evaluation.make_eval_act_fn(learner, learner.acting_params(state), 8)(stacks[r, :n])
      np.testing.assert_array_equal(together[r], alone)
    assert len({tuple(a) for a in together}) == 3  # the check can fail: the runs act apart


def test_batched_evaluation_in_chunks_equals_each_run_alone(fresh_pong, monkeypatch):
  """Three runs with room for 2 envs: chunks of 2 runs and 1 run, every run's episode the one of
  its single-run evaluation (seeded from the run's seed: three other episodes)."""
  from agents.spr import engine, evaluation

  learner, states = fresh_pong
  monkeypatch.setattr(evaluation, "MAX_EVAL_ENVS", 2)
  acting = learner.acting_params(engine.stack_states(states))
  seeds = [("Pong", evaluation.final_eval_seed(s)) for s in (0, 1, 2)]
  together = evaluation.evaluate_policies(learner, acting, seeds, 1, 0.001)
  for seed, state, episodes in zip((0, 1, 2), states, together):
    act = evaluation.make_eval_act_fn(learner, learner.acting_params(state), 1)
    assert episodes == evaluate(
        act, "Pong", num_episodes=1, seed=evaluation.final_eval_seed(seed), epsilon=0.001
    )
  assert len({tuple(e) for e in together}) == 3


def test_final_evaluation_groups_merge_by_action_count_and_skip_failed_runs(fresh_pong):
  """After a resume, runs of one action count can sit in groups of other steps: the final
  evaluation takes them as one group, without the runs whose loss became non-finite."""
  import jax
  from agents.spr import engine

  learner, states = fresh_pong
  runs = [
      engine.Run(engine.RunSpec("Pong", s, f"w{s}"), Path(f"w{s}"), None, {}, None)
      for s in (0, 1, 2)
  ]
  runs[1].failed = "non-finite loss"
  groups = [
      engine.Group(learner, runs[:2], engine.stack_states(states[:2]), 200, None, None),
      engine.Group(learner, runs[2:], states[2], 200, None, None),
  ]  # a group of one
  [(got_learner, got_runs, acting, stacked)] = engine._final_groups(groups)
  assert got_learner is learner and got_runs == [runs[0], runs[2]] and stacked
  for row, state in enumerate((states[0], states[2])):
    for x, y in zip(jax.tree.leaves(acting), jax.tree.leaves(learner.acting_params(state))):
      np.testing.assert_array_equal(x[row], y)


# ---------------------------------------------------------------- finetuning + evaluations, CLI
FINETUNE = [
    "--config=smoke",
    "--encoder=nature",
    "--encoder_lr=1e-6",
    "--head_first_lr=3e-5",
    "--grad_clip=0",
    "--target_tau=0.01",
    "--steps=40",
    "--learn_start=30",
    "--eval_every=10",
    "--eval_every_episodes=1",
    "--eval_episodes=2",
    "--checkpoint_every=20",
    "--log_every=20",
    "--done_checkpoints=all",
]  # the tests below read the step-20 checkpoint


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
  """launch.collect -> launch.pretrain (Pong) -> a batch of two finetuning runs with periodic
  evaluations (11 updates), and seed 1 finetuned alone with the same flags."""
  root = tmp_path_factory.mktemp("finetune")
  data, pre = root / "data", root / "pre"
  run(
      [
          "launch.collect",
          "--game=Pong",
          "--policy=random",
          "--steps=300",
          "--checkpoint_size=128",
          f"--out={data}",
      ]
  )
  run(
      [
          "launch.pretrain",
          "--config=smoke",
          "--encoder=nature",
          f"--data_dir={data}",
          "--games=Pong",
          f"--workdir={pre}",
      ]
  )
  batch = run(
      [
          "launch.train",
          "--games=Pong",
          "--seeds=0-1",
          f"--workdir={root / 'batch'}",
          f"--init_from={pre}",
          *FINETUNE,
      ]
  )
  alone = root / "alone"
  run(
      [
          "launch.train",
          "--game=Pong",
          "--seed=1",
          f"--workdir={alone}",
          f"--init_from={pre}",
          *FINETUNE,
      ]
  )
  return dict(pre=pre, batch=root / "batch", batch_proc=batch, alone=alone)


def test_final_evaluation_in_a_batch_equals_the_run_alone(finetuned, tmp_path):
  """Each run's eval.csv / final.json, written by the batched final evaluation, are exactly what
  the single-run trainer's final evaluation writes for the same (final, checkpointed) state."""
  import jax
  from agents.spr import config as spr_config, engine
  from agents.spr.learner import learner_for
  from spr import checkpoint

  assert "final evaluation of 2 runs (6 actions) together" in finetuned["batch_proc"].stderr
  for seed in (0, 1):
    path = run_workdir(finetuned["batch"], "Pong", seed)
    config = spr_config.config_from_json(json.loads((path / "config.json").read_text()))
    learner = learner_for(config, 6)
    template = jax.eval_shape(learner.init, jax.random.PRNGKey(0))
    _, tree, host, _ = checkpoint.restore(path / "checkpoints", template)
    assert host["step"] == 40
    alone = tmp_path / f"alone_{seed}"
    alone.mkdir()
    engine.final_evaluation(
        learner, jax.device_put(tree), host, "Pong", seed, config, "smoke", alone
    )
    assert (alone / "eval.csv").read_text() == (path / "eval.csv").read_text()
    a, b = (json.loads((d / "final.json").read_text()) for d in (alone, path))
    assert a.pop("wall_time_s") > 0 and b.pop("wall_time_s") > 0
    assert a == b and a["eval_episodes"] == 2


def eval_lines(workdir):
  lines = [json.loads(l) for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return [l for l in lines if "eval_mean_score" in l]


def test_periodic_evaluations_in_a_batch_are_the_single_run_records(finetuned):
  alone = eval_lines(finetuned["alone"])
  steps = [(10, 1), (20, 1), (30, 1)]  # every eval_every steps, none at the last step
  assert [(l["step"], l["eval_episodes"]) for l in alone] == steps
  for seed in (0, 1):
    lines = eval_lines(run_workdir(finetuned["batch"], "Pong", seed))
    assert [sorted(l) for l in lines] == [sorted(l) for l in alone]  # the same fields
    assert [(l["step"], l["eval_episodes"]) for l in lines] == steps
    assert all(-21 <= l["eval_mean_score"] <= 21 for l in lines)  # Pong scores
  batch_1 = eval_lines(run_workdir(finetuned["batch"], "Pong", 1))
  assert [l["eval_mean_score"] for l in batch_1] == [l["eval_mean_score"] for l in alone]
  assert "step 10: evaluation of 2 runs (6 actions)" in finetuned["batch_proc"].stderr


def test_init_from_in_a_batch_loads_the_pretrained_network_as_alone(finetuned):
  """Before learn_start the parameters are the loaded ones: the batch's run equals the run
  finetuned alone exactly (parameters, EMA target, replay, RNG), and every run of the batch holds
  the pretrained encoder."""
  assert finetuned["batch_proc"].stderr.count("loaded pretrained encoder") == 2
  from spr import checkpoint

  payload = checkpoint.read_file(finetuned["pre"] / "pretrained.npz")["content"]

  def ckpt(workdir):
    return checkpoint.read_file(Path(workdir) / "checkpoints" / "ckpt_20.npz")["content"]["leaves"]

  batch = [ckpt(run_workdir(finetuned["batch"], "Pong", s)) for s in (0, 1)]
  alone = ckpt(finetuned["alone"])
  assert len(batch[1]) == len(alone)
  for x, y in zip(batch[1], alone):
    np.testing.assert_array_equal(x, y)
  encoder = [
      np.asarray(v)
      for m in sorted(payload["params"])
      if "/encoder" in m
      for _, v in sorted(payload["params"][m].items())
  ]
  assert encoder
  for leaves in batch:  # each of the pretrained encoder's arrays is in the run's checkpoint
    for w in encoder:
      assert any(x.shape == w.shape and np.array_equal(x, w) for x in leaves)
