"""One SGI pretraining run on logged data: train, checkpoint, resume, export the encoder.

Workdir (docs/CONTRACTS.md): config.json, metrics.jsonl (`step` = gradient updates), checkpoints/
(the full learner state + the host sampler's RNG state, so a resumed run continues exactly),
`pretrained.pkl` (what finetuning loads: `launch.train --init_from=<workdir>`) rewritten
atomically at every checkpoint, and final.json when the budget is done.
"""
from __future__ import annotations

import math
import pickle
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging

from agents.sgi.config import SGIConfig
from agents.sgi.learner import SGILearner
from envs import games as games_lib
from spr import checkpoint, dqn_replay, workdir as wd

PRETRAINED = "pretrained.pkl"
EXPORT_VERSION = 1


class NonFiniteLossError(RuntimeError):
  pass


def num_actions_of(games: list[str]) -> int:
  """The minimal action-set size shared by `games` (the DQN Replay data's action indices)."""
  from envs.atari import AtariEnv

  counts = {}
  for g in games:
    env = AtariEnv(g, seed=0, training=False)
    counts[g] = env.num_actions
    env.close()
  if len(set(counts.values())) != 1:
    raise ValueError(f"games have different action counts {counts}: multi-game pretraining "
                     "needs one action set (the full action set is not supported)")
  return next(iter(counts.values()))


def export_pretrained(path: Path, params, config: SGIConfig, games: list[str], num_actions: int,
                      step: int) -> None:
  """Writes the parameters finetuning reuses, by Haiku module name, with what they came from."""
  params = jax.device_get(params)
  payload = dict(version=EXPORT_VERSION, step=int(step), games=list(games),
                 num_actions=int(num_actions), config=config.to_json(),
                 params={m: {k: np.asarray(v) for k, v in leaves.items()}
                         for m, leaves in params.items()})
  tmp = path.with_name("." + path.name + ".tmp")
  with open(tmp, "wb") as f:
    pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
  tmp.replace(path)


def pretrain(data_dir: str, games: list[str], config: SGIConfig, workdir: str | Path,
             config_name: str = "sgi_m", seed: int = 0, runs: list[str] | None = None,
             checkpoints: list[int] | None = None, cache_dir: str | None = None,
             progress: bool | None = None) -> dict:
  games = [games_lib.canonical_name(g) for g in games]
  identity = dict(config_name=config_name, games=games, seed=int(seed), runs=runs or [],
                  checkpoints=checkpoints or [], **config.to_json())
  path = wd.prepare(workdir, identity)
  if wd.is_finished(path):
    final = wd.read_json(path / wd.FINAL)
    logging.info("pretraining in %s already finished (%d steps); nothing to do", path,
                 final["steps"])
    return final

  ckpts = dqn_replay.open_dataset(data_dir, games, runs, checkpoints, cache_dir)
  num_actions = num_actions_of(games)
  for c in ckpts:
    if len(c.action) and (c.action.min() < 0 or c.action.max() >= num_actions):
      raise dqn_replay.DataError(
          f"{c.game}/{c.run} checkpoint {c.index} ($store$_action_ckpt.{c.index}.gz): actions "
          f"in [{c.action.min()}, {c.action.max()}], {c.game} has {num_actions} actions")
  sampler = dqn_replay.SequenceSampler(ckpts, config.spr_steps, config.goal_window, games)
  learner = SGILearner(config, num_actions)
  state = learner.init(jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  ckpt_dir = path / wd.CHECKPOINTS
  metrics_log = wd.MetricsLog(path)
  step, elapsed = 0, 0.0
  if checkpoint.checkpoint_steps(ckpt_dir):
    step, tree, host = checkpoint.restore(ckpt_dir, state)
    state = jax.device_put(tree)
    rng.bit_generator.state = host["rng"]
    elapsed = host["elapsed"]
    metrics_log.truncate_after(step)
    logging.info("resumed pretraining %s at step %d", path, step)
  else:
    logging.info("new pretraining run: games %s, %d transitions, %d sequences, %d actions, "
                 "workdir %s", games, sampler.num_transitions, sampler.num_sequences,
                 num_actions, path)

  bar = None
  try:
    from tqdm import tqdm
    bar = tqdm(total=config.steps, initial=step, unit="step", file=sys.stderr,
               disable=None if progress is None else not progress, dynamic_ncols=True)
  except ImportError:  # pragma: no cover
    pass
  t_start = time.perf_counter() - elapsed
  t_window, s_window = time.perf_counter(), step
  sums = None
  sample_time = 0.0
  while step < config.steps:
    t0 = time.perf_counter()
    batch = sampler.sample(rng, config.batch_size)
    sample_time += time.perf_counter() - t0
    state, m = learner.update(state, batch)
    m = jax.device_get(m)
    step += 1
    if not m.finite:
      last = checkpoint.checkpoint_steps(ckpt_dir)
      raise NonFiniteLossError(
          f"non-finite loss at pretraining step {step}; last good checkpoint: "
          f"{'step ' + str(last[-1]) if last else 'none'} in {ckpt_dir}")
    values = {k: float(v) for k, v in m._asdict().items() if k != "finite"}
    sums = values if sums is None else {k: sums[k] + values[k] for k in sums}
    if bar is not None:
      bar.update(1)
    if step % config.log_every == 0 or step == config.steps:
      now = time.perf_counter()
      n = step - s_window
      record = dict(step=step, time_s=round(now - t_start, 3),
                    samples_per_s=round(n * config.batch_size / max(now - t_window, 1e-9), 2),
                    sample_time_frac=round(sample_time / max(now - t_window, 1e-9), 3),
                    **{k: v / n for k, v in sums.items()})
      metrics_log.write(record)
      logging.info("step %d/%d | %.0f samples/s | loss %.4f (spr %.4f, goal %.4f, inv %.4f)",
                   step, config.steps, record["samples_per_s"], record["loss"],
                   record["spr_loss"], record["goal_loss"], record["inverse_loss"])
      sums, sample_time, t_window, s_window = None, 0.0, now, step
    if step % config.checkpoint_every == 0 or step == config.steps:
      elapsed = time.perf_counter() - t_start
      checkpoint.save(ckpt_dir, step, state, dict(step=step, rng=rng.bit_generator.state,
                                                  elapsed=elapsed, data_dir=str(data_dir)),
                      keep=config.checkpoint_keep)
      export_pretrained(path / PRETRAINED, state.params, config, games, num_actions, step)
  if bar is not None:
    bar.close()
  lines = [l for l in (path / wd.METRICS).read_text().splitlines() if l.strip()]
  rates = [__import__("json").loads(l).get("samples_per_s", math.nan) for l in lines]
  final = dict(steps=int(step), budget_steps=int(config.steps), config_name=config_name,
               games=games, seed=int(seed), wall_time_s=round(time.perf_counter() - t_start, 2),
               samples_per_s=rates[-1] if rates else math.nan, num_actions=num_actions,
               transitions=sampler.num_transitions)
  wd.write_json_atomic(path / wd.FINAL, final)
  return final
