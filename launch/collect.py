"""Collect logged Atari data in the DQN Replay Dataset layout.

    python -m launch.collect --game=Pong --policy=random --steps=100000 --out=DIR
    python -m launch.collect --game=Pong --policy=epsilon --epsilon=0.1 --steps=N --out=DIR
    python -m launch.collect --game=Pong --policy=checkpoint --workdir=RUN --steps=N --out=DIR

Writes DIR/<Game>/<run>/replay_logs/$store$_{observation,action,reward,terminal}_ckpt.<i>.gz plus
add_count_ckpt.<i>.gz and invalid_range_ckpt.<i>.gz, one checkpoint every --checkpoint_size
transitions (1M as the real data; a last partial one is written too), see spr/dqn_replay.py.

Data semantics, as the DQN Replay Dataset (dopamine DQN, `atari_lib` + `run_experiment`): sticky
actions 0.25 (--sticky), frame skip 4 with max-pool, 84x84 grayscale single frames, minimal action
set, rewards clipped to [-1, 1], terminal = GAME OVER (dopamine's AtariPreprocessing default
terminal_on_life_loss=False; old dopamine's end_episode also stores the 27k-step cap as terminal),
lost lives are not marked. Our env also applies 1..30 random no-ops at each game reset (the Atari
100k protocol); dopamine's DQN had none.

Policies: `random` uniform; `epsilon` a random policy with temporally extended actions (the
previous action is repeated, a new uniform action is drawn with probability --epsilon each step:
longer, more varied episodes than uniform noise); `checkpoint` an agent trained by launch.train
(its workdir's last checkpoint), greedy with noise off, uniformly random with probability
--epsilon (dopamine's DQN collected with training epsilon 0.01).

Exit codes (launch/common.py): 0 done, 2 bad input, 74 a file-system error.
"""

from __future__ import annotations

import time

from absl import flags, logging

from launch import common

_GAME = flags.DEFINE_string("game", "Pong", "Atari game, or catch (the CPU sanity task).")
_POLICY = flags.DEFINE_enum("policy", "random", ["random", "epsilon", "checkpoint"], "Behaviour.")
_STEPS = flags.DEFINE_integer("steps", 100_000, "Transitions (agent steps) to collect.")
_OUT = flags.DEFINE_string("out", None, "Data root: DIR/<Game>/<run>/replay_logs.")
_RUN = flags.DEFINE_string("run", "1", "Run folder name (the real data has runs 1..5).")
_FIRST = flags.DEFINE_integer("first_checkpoint", 0, "Index of the first checkpoint written.")
_SIZE = flags.DEFINE_integer("checkpoint_size", 1_000_000, "Transitions per checkpoint.")
_STICKY = flags.DEFINE_float(
    "sticky", None, "Sticky-action probability (default: 0.25 as the data; 0 for catch)."
)
_EPSILON = flags.DEFINE_float("epsilon", 0.01, "Epsilon of the epsilon / checkpoint policies.")
_WORKDIR = flags.DEFINE_string("workdir", None, "launch.train workdir (--policy=checkpoint).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the env and the policy.")


def _checkpoint_policy(workdir: str, game: str, num_actions: int):
  """Greedy actions (noise off) of the last checkpoint of a launch.train run."""
  import jax
  import numpy as np

  from agents.spr import config as spr_config
  from agents.spr.learner import SPRLearner
  from spr import checkpoint, workdir as wd

  from pathlib import Path

  path = Path(workdir)
  if not (path / wd.CONFIG).exists():
    raise ValueError(f"--workdir: {path / wd.CONFIG} not found (not a launch.train run)")
  stored = wd.read_json(path / wd.CONFIG)
  if stored.get("game") != game:
    raise ValueError(
        f"--workdir: the agent in {path} was trained on {stored.get('game')}, " f"not {game}"
    )
  config = spr_config.config_from_json(stored)
  learner = SPRLearner(config, num_actions)
  template = jax.eval_shape(learner.init, jax.random.PRNGKey(0))
  try:
    step, tree, _, _ = checkpoint.restore(path / wd.CHECKPOINTS, template, expect_config=stored)
  except checkpoint.CheckpointError as e:
    raise ValueError(f"--workdir: {e}") from None
  acting = jax.device_put(learner.acting_params(tree))  # (params, running statistics)
  logging.info("collecting with the agent of %s at step %d", path, step)

  def act(stack: np.ndarray) -> int:
    return int(learner.greedy_actions(acting, stack[None])[0])

  return act


def main():
  import numpy as np

  from envs import games
  from envs.atari import clip_reward
  from spr.dqn_replay import CheckpointWriter

  if not _OUT.value:
    common.fail("--out is required")
  if _STEPS.value <= 0 or _SIZE.value <= 0:
    common.fail("--steps and --checkpoint_size must be > 0")
  with common.bad_input():
    game = games.canonical_name(_GAME.value)
  sticky = (0.25 if games.is_atari(game) else 0.0) if _STICKY.value is None else _STICKY.value
  if not 0.0 <= sticky <= 1.0 or not 0.0 <= _EPSILON.value <= 1.0:
    common.fail("--sticky and --epsilon must be in [0, 1]")
  # Dopamine's env: the DQN Replay data was collected with it (sticky actions included).
  env = games.make_env(game, seed=_SEED.value, training=False, sticky=sticky, protocol="dopamine")
  rng = np.random.default_rng(_SEED.value + 7_919)
  greedy = None
  if _POLICY.value == "checkpoint":
    if not _WORKDIR.value:
      common.fail("--policy=checkpoint needs --workdir")
    common.configure_jax_cache()
    with common.bad_input():  # not a launch.train run of this game, or no usable checkpoint
      greedy = _checkpoint_policy(_WORKDIR.value, game, env.num_actions)
  from pathlib import Path

  run_dir = Path(_OUT.value) / game / _RUN.value
  writer = CheckpointWriter(run_dir, _SIZE.value, first_index=_FIRST.value)
  frame = env.reset()
  action = int(rng.integers(env.num_actions))
  returns, t0 = [], time.perf_counter()
  for step in range(_STEPS.value):
    if _POLICY.value == "random":
      action = int(rng.integers(env.num_actions))
    elif _POLICY.value == "epsilon":
      if rng.random() < _EPSILON.value:
        action = int(rng.integers(env.num_actions))
    else:
      action = (
          int(rng.integers(env.num_actions)) if rng.random() < _EPSILON.value else greedy(env.stack)
      )
    next_frame, reward, terminal, info = env.step(action)
    writer.add(frame, action, clip_reward(reward), terminal)
    if info.get("game_over"):
      returns.append(info["episode_return"])
    frame = next_frame
    if (step + 1) % 10_000 == 0:
      logging.info(
          "collected %d/%d transitions, %d games (mean score %.1f), %.0f steps/s",
          step + 1,
          _STEPS.value,
          len(returns),
          float(np.mean(returns)) if returns else float("nan"),
          (step + 1) / (time.perf_counter() - t0),
      )
  writer.flush()
  print(
      f"{game}: {_STEPS.value} transitions in checkpoints {writer.written} of {run_dir}, "
      f"{len(returns)} complete games (mean score "
      f"{float(np.mean(returns)) if returns else float('nan'):.1f})"
  )


def run():
  common.run(main, verbose=True)


if __name__ == "__main__":
  run()
