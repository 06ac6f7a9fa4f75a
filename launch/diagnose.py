r"""The representation diagnostics of a saved run, from its checkpoints, after the fact.

  python -m launch.diagnose --workdir=RUN [--workdir=RUN2 ...] [--step=N] [--batch_size=256]
      [--at_init] [--constant_episodes=100] [--json=OUT.json]

For every run (a `launch.train` workdir, any game, Atari or Catch) it restores a checkpoint (the
newest; `--step` another one that is kept) and computes `SPRLearner.diagnostics` on a replay
batch of `--batch_size` samples (default: the run's `diagnostics_batch_size`): srank of the
latents and projections, dormant units, the greedy policy's most frequent action and the
entropy of its actions over the batch's states, the self-predictive cosine, the predictors'
shape, gradient norms (spr/diagnostics.py). It is the same function a run calls every
`diagnostics_every` steps, so it works on runs trained with the diagnostics off, and on a
larger batch than the run logged. Nothing is written to the run: the batch is drawn with the
diagnostics' own key off the checkpoint's RNG. Prints one table (a row per run) and, with
`--json`, writes every value. `--at_init` adds a row per run for the network at its random
initialisation (`PRNGKey(seed)`, as the run started unless it was initialised from a pretrained
network) on the same replay batch: what training did to the representation, on the same states.
`--constant_episodes=N` also plays N episodes of the final evaluation (its seeds, epsilon and env
protocol: the first N of the run's eval.csv) with a policy that always takes the run's most
frequent greedy action: a run whose policy collapsed to one action scores about the same.

Exit codes (launch/common.py): 0 done, 2 bad input (no config.json, no usable checkpoint,
a step that is not kept, a bad flag).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from absl import flags

from launch import common

# The table's columns: (diagnostics key, header).
COLUMNS = (
    ("srank_latent", "srank latent"),
    ("srank_projection", "srank proj"),
    ("dormant_encoder", "dormant enc"),
    ("dormant_head", "dormant head"),
    ("greedy_top_action_share", "top action share"),
    ("greedy_action_entropy", "action H"),
    ("spr_cos", "spr cos"),
)


def run_config(stored: dict):
  """The SPRConfig of a run's config.json; a setting added after the run was written reads as
  the value that reproduces the run (agents.spr.config.LEGACY_VALUES)."""
  from agents.spr import config as spr_config

  settings = dict(stored)
  for key, value in spr_config.LEGACY_VALUES.items():
    if key not in settings:
      settings[key] = value(stored) if callable(value) else value
  return spr_config.config_from_json(settings)


def check_input(workdir: Path, batch_size: int = 0) -> None:
  """Raises ValueError unless `workdir` is a launch.train run and `batch_size` is valid."""
  from spr import workdir as wd

  if not (workdir / wd.CONFIG).exists():
    raise ValueError(f"{workdir / wd.CONFIG} not found: {workdir} is not a launch.train run")
  if batch_size < 0:
    raise ValueError(f"--batch_size must be >= 0, got {batch_size}")
  run_config(wd.read_json(workdir / wd.CONFIG))  # a config.json that does not parse


def diagnose_run(
    workdir: str | Path, step: int = 0, batch_size: int = 0, at_init: bool = False
) -> dict:
  """{"workdir", "game", "seed", "step", "network", "batch_size", "top_action" (the name of the
  most frequent greedy action), "diagnostics": {key: float}} of one run's checkpoint: of its
  networks ("network": "trained"), or (`at_init`, "network": "init") of the networks of
  `PRNGKey(seed)` with the checkpoint's replay and RNG, so the same batch.

  Raises:
    ValueError: not a launch.train run, or a bad batch size.
    spr.checkpoint.CheckpointError: no usable checkpoint (at `step`).
  """
  from spr import workdir as wd

  path = Path(workdir)
  check_input(path, batch_size)
  # Imported once the input is known to be a run: a refusal needs no JAX.
  import dataclasses

  import jax

  from agents.spr import config as spr_config
  from agents.spr.learner import learner_for
  from envs import games
  from spr import checkpoint, objectives, predictors

  stored = wd.read_json(path / wd.CONFIG)
  config = run_config(stored)
  if batch_size:
    config = dataclasses.replace(config, diagnostics_batch_size=batch_size)
  game = str(stored.get("game"))
  env = games.make_env(game, seed=0)
  num_actions, meanings = env.num_actions, env.action_meanings
  env.close()
  learner = learner_for(config, num_actions)
  template = jax.eval_shape(learner.init, jax.random.PRNGKey(0))
  restored_step, state, _, _ = checkpoint.restore(
      path / wd.CHECKPOINTS,
      template,
      step or None,
      expect_config=stored,
      legacy=spr_config.LEGACY_VALUES,
  )
  if at_init:
    params, norm_state, _ = objectives.init_network(
        learner.network, jax.random.PRNGKey(int(stored.get("seed", 0)))
    )
    state = state._replace(
        params=params,
        target_params=learner.target.init(params),
        norm_state=norm_state,
        target_norm_state=learner.target.init(norm_state),
        predictor_state=(
            () if config.predictor == "linear" else predictors.init_state(2 * config.hidden)
        ),
    )
  values = jax.device_get(jax.jit(learner.diagnostics)(state))
  return dict(
      workdir=str(path),
      game=game,
      seed=stored.get("seed"),
      step=int(restored_step),
      network="init" if at_init else "trained",
      batch_size=config.diagnostics_batch_size,
      top_action=meanings[int(values["greedy_top_action"])],
      diagnostics={k: float(v) for k, v in sorted(values.items())},
  )


def constant_action_score(result: dict, episodes: int) -> float:
  """Mean score of `episodes` episodes of the run's final evaluation (same seeds, epsilon and env
  protocol) played always taking `result`'s most frequent greedy action."""
  import numpy as np

  from agents.spr import evaluation
  from envs.evaluation import evaluate
  from spr import workdir as wd

  stored = wd.read_json(Path(result["workdir"]) / wd.CONFIG)
  config = run_config(stored)
  action = int(result["diagnostics"]["greedy_top_action"])
  scores = evaluate(
      lambda stacks: np.full(len(stacks), action, np.int32),
      result["game"],
      num_episodes=episodes,
      seed=evaluation.final_eval_seed(int(stored.get("seed", 0))),
      epsilon=config.eval_epsilon,
      protocol=config.env_protocol,
  )
  return float(np.mean([score for score, _ in scores]))


def table(results: list[dict]) -> str:
  """A Markdown table: one row per run, the `COLUMNS`."""
  head = ["run", "step", "network", "samples", "top action"] + [h for _, h in COLUMNS]
  constant = any("constant_action_score" in r for r in results)
  head += ["top action always"] if constant else []
  rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in results:
    d = r["diagnostics"]
    cells = [r["workdir"], str(r["step"]), r["network"], str(r["batch_size"]), r["top_action"]]
    cells += [f"{d[k]:.3f}" if k in d else "-" for k, _ in COLUMNS]
    if constant:
      cells.append(f"{r['constant_action_score']:.2f}" if "constant_action_score" in r else "-")
    rows.append("| " + " | ".join(cells) + " |")
  return "\n".join(rows)


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Flags are defined only when run as a program (importing this module defines none)."""
  flags.DEFINE_multi_string("workdir", [], "A launch.train run's workdir (repeatable).")
  flags.DEFINE_integer("step", 0, "Checkpoint step (0: the newest usable one).")
  flags.DEFINE_integer("batch_size", 0, "Replay samples (0: the run's diagnostics_batch_size).")
  flags.DEFINE_bool(
      "at_init", False, "Also the network at initialisation, on the same batch (a row each)."
  )
  flags.DEFINE_integer(
      "constant_episodes",
      0,
      "Also play this many final-evaluation episodes always taking the top greedy action.",
  )
  flags.DEFINE_string("json", "", "Write every diagnostic of every run to this JSON file.")


def main():
  common.configure_jax_cache()
  if not FLAGS.workdir:
    common.fail("--workdir is required (a launch.train run)")
  if FLAGS.step < 0:
    common.fail(f"--step must be >= 0, got {FLAGS.step}")
  if FLAGS.constant_episodes < 0:
    common.fail(f"--constant_episodes must be >= 0, got {FLAGS.constant_episodes}")
  with common.bad_input():  # the input only: a ValueError further on is a bug (a traceback)
    for workdir in FLAGS.workdir:
      check_input(Path(workdir), FLAGS.batch_size)
  results = []
  for workdir in FLAGS.workdir:
    for at_init in (False, True) if FLAGS.at_init else (False,):
      results.append(diagnose_run(workdir, FLAGS.step, FLAGS.batch_size, at_init))
      if FLAGS.constant_episodes and not at_init:
        results[-1]["constant_action_score"] = constant_action_score(
            results[-1], FLAGS.constant_episodes
        )
    print(f"[{workdir}: step {results[-1]['step']}]", file=sys.stderr, flush=True)
  print(table(results))
  if FLAGS.json:
    from spr import workdir as wd

    # Non-finite values as null, as metrics.jsonl writes them: the file stays standard JSON.
    finite = lambda v: v if math.isfinite(v) else None
    for r in results:
      r["diagnostics"] = {k: finite(v) for k, v in r["diagnostics"].items()}
    wd.write_json_atomic(FLAGS.json, {"runs": results})


if __name__ == "__main__":
  define_flags()
  common.run(main)
