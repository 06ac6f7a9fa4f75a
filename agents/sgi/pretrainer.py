"""One SGI pretraining run on logged data: train, checkpoint, resume, export the encoder.

Workdir (docs/CONTRACTS.md): config.json, metrics.jsonl (`step` = gradient updates), checkpoints/
(the full learner state + the host sampler's RNG state, so a resumed run continues exactly),
`pretrained.npz` (what finetuning loads: `launch.train --init_from=<workdir>`; spr/checkpoint.py's
safe, checksummed format) rewritten atomically at every checkpoint, and final.json when the budget
is done.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging

from agents.sgi.config import SGIConfig
from agents.sgi.learner import SGILearner
from envs import games as games_lib
from spr import checkpoint, dqn_replay, runtime, workdir as wd

PRETRAINED = "pretrained.npz"
EXPORT_VERSION = 2  # 2: action_set, target_params, norm_state, target_norm_state


NonFiniteLossError = runtime.NonFiniteLossError  # what launch.pretrain maps to exit code 3


def action_sets_of(games: list[str]) -> dict[str, list[int]]:
  """Each game's minimal action set as ALE action ids (what the DQN Replay action indices mean)."""
  sets = {}
  for g in games:
    env = games_lib.make_env(g, seed=0, training=False)
    sets[g] = env.action_set
    env.close()
  return sets


FULL_ACTION_SET = list(range(18))


def pretraining_action_set(games: list[str], full_action_set: bool) -> list[int]:
  """The ALE action ids of the pretraining network's action indices: the games' shared minimal
  set, or the full 18-action set (`full_action_set`, SGI's option for games that differ)."""
  if full_action_set:
    return FULL_ACTION_SET
  sets = action_sets_of(games)
  if len({tuple(s) for s in sets.values()}) != 1:
    detail = ", ".join(f"{g}: {len(s)}" for g, s in sets.items())
    raise ValueError(
        f"games have different minimal action sets ({detail} actions): pretrain "
        "them together with --full_action_set"
    )
  return next(iter(sets.values()))


def to_full_action_set(ckpt, game_actions: list[int]):
  """`ckpt` with its actions (indices into the game's minimal set) mapped to ALE ids."""
  table = np.asarray(game_actions, np.int32)
  return dataclasses.replace(ckpt, action=table[np.asarray(ckpt.action)])


def export_pretrained(
    path: Path, state, config: SGIConfig, games: list[str], action_set: list[int], step: int
) -> None:
  """Writes what finetuning loads - online and EMA-target parameters and BatchNorm running
  statistics, by Haiku module name - with what they came from (games, ALE action set) - as a
  `spr.checkpoint.write_file` file of kind "pretrained" (atomic; loading it runs no code)."""
  state = jax.device_get(
      dict(
          params=state.params,
          target_params=state.target_params,
          norm_state=state.norm_state,
          target_norm_state=state.target_norm_state,
      )
  )  # no optimiser moments
  as_numpy = lambda tree: {
      m: {k: np.asarray(v) for k, v in leaves.items()} for m, leaves in (tree or {}).items()
  }
  payload = dict(
      version=EXPORT_VERSION,
      step=int(step),
      games=list(games),
      num_actions=len(action_set),
      action_set=[int(a) for a in action_set],
      config=config.to_json(),
      **{k: as_numpy(v) for k, v in state.items()},
  )
  checkpoint.write_file(path, payload, "pretrained")


def pretrain(
    data_dir: str,
    games: list[str],
    config: SGIConfig,
    workdir: str | Path,
    config_name: str = "sgi_m",
    seed: int = 0,
    runs: list[str] | None = None,
    checkpoints: list[int] | None = None,
    cache_dir: str | None = None,
    progress: bool | None = None,
) -> dict:
  games = [games_lib.canonical_name(g) for g in games]
  wd.acquire_lock(workdir)  # one writer per workdir
  try:
    return _pretrain(
        data_dir, games, config, workdir, config_name, seed, runs, checkpoints, cache_dir, progress
    )
  finally:
    wd.release_lock(workdir)


def _pretrain(
    data_dir, games, config, workdir, config_name, seed, runs, checkpoints, cache_dir, progress
) -> dict:
  identity = dict(
      config_name=config_name,
      games=games,
      seed=int(seed),
      runs=runs or [],
      checkpoints=checkpoints or [],
      **config.to_json(),
  )
  # A lost config.json comes back from its checkpoints' record (see agents/spr/trainer.py).
  checkpoint.restore_missing_config(Path(workdir) / wd.CONFIG, Path(workdir) / wd.CHECKPOINTS)
  path = wd.prepare(workdir, identity)
  if wd.is_finished(path):
    final = wd.read_final(path)
    logging.info(
        "pretraining in %s already finished (%d steps); nothing to do", path, final["steps"]
    )
    return final

  ckpts = dqn_replay.open_dataset(data_dir, games, runs, checkpoints, cache_dir)
  action_set = pretraining_action_set(games, config.full_action_set)
  num_actions = len(action_set)
  game_sets = action_sets_of(games) if config.full_action_set else {g: action_set for g in games}
  for i, c in enumerate(ckpts):
    n = len(game_sets[c.game])
    if len(c.action) and (c.action.min() < 0 or c.action.max() >= n):
      raise dqn_replay.DataError(
          f"{c.game}/{c.run} checkpoint {c.index} ($store$_action_ckpt.{c.index}.gz): actions "
          f"in [{c.action.min()}, {c.action.max()}], {c.game} has {n} actions"
      )
    if config.full_action_set:
      ckpts[i] = to_full_action_set(c, game_sets[c.game])
  sampler = dqn_replay.SequenceSampler(ckpts, config.spr_steps, config.goal_window, games)
  learner = SGILearner(config, num_actions)
  state = learner.init(jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  ckpt_dir = path / wd.CHECKPOINTS
  metrics_log = wd.MetricsLog(path)
  step, elapsed = 0, 0.0
  resumed = bool(checkpoint.checkpoint_steps(ckpt_dir))
  if resumed:
    step, tree, host, _ = checkpoint.restore(ckpt_dir, state, expect_config=identity)
    state = jax.device_put(tree)
    rng.bit_generator.state = host["rng"]
    elapsed = host["elapsed"]
    logging.info("resumed pretraining %s at step %d", path, step)
  # Lines logged after that checkpoint by a killed attempt (all, for a new run) would repeat.
  metrics_log.truncate_after(step if resumed else -1)
  if not resumed:
    logging.info(
        "new pretraining run: games %s, %d transitions, %d sequences, %d actions, " "workdir %s",
        games,
        sampler.num_transitions,
        sampler.num_sequences,
        num_actions,
        path,
    )

  def save(step: int, elapsed: float) -> None:
    checkpoint.save(
        ckpt_dir,
        step,
        state,
        dict(step=step, rng=rng.bit_generator.state, elapsed=elapsed, data_dir=str(data_dir)),
        keep=config.checkpoint_keep,
        config=identity,
    )
    export_pretrained(path / PRETRAINED, state, config, games, action_set, step)

  bar = runtime.progress_bar(config.steps, step, progress)
  t_start = time.perf_counter() - elapsed
  window = runtime.MetricsWindow(step)
  sample_time = 0.0
  try:
    with runtime.TermFlag() as term:
      while step < config.steps:
        t0 = time.perf_counter()
        batch = sampler.sample(rng, config.batch_size)
        sample_time += time.perf_counter() - t0
        state, m = learner.update(state, batch)
        m = jax.device_get(m)
        step += 1
        if not m.finite:
          raise NonFiniteLossError(
              f"non-finite loss at pretraining step {step}; "
              f"{runtime.last_good_checkpoint(ckpt_dir)}"
          )
        window.add({k: v for k, v in m._asdict().items() if k != "finite"})
        if bar is not None:
          bar.update(1)
        if step % config.log_every == 0 or step == config.steps:
          now = time.perf_counter()
          seconds = max(now - window.time, 1e-9)
          record = dict(
              step=step,
              time_s=round(now - t_start, 3),
              samples_per_s=round(window.rate(step, now) * config.batch_size, 2),
              sample_time_frac=round(sample_time / seconds, 3),
              **window.means(window.sums),
          )
          metrics_log.write(record)
          runtime.log(
              bar,
              "step %d/%d | %.0f samples/s | loss %.4f (spr %.4f, goal %.4f, inv " "%.4f)",
              step,
              config.steps,
              record["samples_per_s"],
              record["loss"],
              record["spr_loss"],
              record["goal_loss"],
              record["inverse_loss"],
          )
          window.reset(step, now)
          sample_time = 0.0
        if step % config.checkpoint_every == 0 or step == config.steps or term.set:
          save(step, time.perf_counter() - t_start)
        if term.set and step < config.steps:
          raise term.preempted(f"at step {step} in {ckpt_dir}")
  finally:
    runtime.close_bar(bar)
  lines = [l for l in (path / wd.METRICS).read_text().splitlines() if l.strip()]
  rates = [json.loads(l).get("samples_per_s", math.nan) for l in lines]
  final = dict(
      steps=int(step),
      budget_steps=int(config.steps),
      config_name=config_name,
      games=games,
      seed=int(seed),
      wall_time_s=round(time.perf_counter() - t_start, 2),
      samples_per_s=rates[-1] if rates else math.nan,
      num_actions=num_actions,
      transitions=sampler.num_transitions,
  )
  wd.write_json_atomic(path / wd.FINAL, final)
  return final
