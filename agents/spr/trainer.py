"""One SPR training run on an Atari 100k game: train, checkpoint, resume, evaluate, report.

The loop is deliberately thin: each env step is one call of the learner's jitted step (replay
add + updates + next action on the device) and one emulator step on the host. Everything needed
to continue exactly is checkpointed: the learner state (parameters, optimiser, replay, RNG,
counters) and the host state (emulator + preprocessing + stack, the pending frame and action,
episode statistics, elapsed time), so a resumed run produces the same result as an
uninterrupted one.
"""
from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from absl import logging

from agents.spr.config import LEGACY_VALUES, SPRConfig
from agents.spr.learner import (SPRLearner, TrainState, is_reset_step, param_count,
                                updates_at)
from envs import games
from envs.atari import AtariEnv, clip_reward
from envs.evaluation import evaluate
from envs.pool import EnvPool, resolve_workers
from spr import checkpoint, workdir as wd

EVAL_SEED_OFFSET = 1_000_003  # evaluation envs use their own seed stream


class NonFiniteLossError(RuntimeError):
  pass


class Preempted(Exception):
  """SIGTERM (cluster preemption or timeout) or Ctrl-C arrived: a checkpoint was written, exit.

  `code` is the conventional exit status of the signal (128 + its number: 143, 130)."""

  def __init__(self, message: str, code: int = 143):
    super().__init__(message)
    self.code = code


class _TermFlag:
  """Turns SIGTERM and SIGINT (Ctrl-C) into a flag the loop checks after each step, so the run
  checkpoints at a step boundary instead of dying mid-step. A second Ctrl-C aborts at once
  (KeyboardInterrupt), saying that nothing more is saved."""

  _SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.set = False
    self.signum = None
    self._previous = {}

  def __enter__(self):
    for sig in self._SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.set and signum == signal.SIGINT:
      raise KeyboardInterrupt("second Ctrl-C: aborted without a checkpoint of the current step")
    self.set = True
    self.signum = self.signum or signum
    if signum == signal.SIGINT:
      print("\nCtrl-C: stopping after this step to write a checkpoint (Ctrl-C again to abort "
            "without saving it)", file=sys.stderr, flush=True)

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else "SIGTERM"

  @property
  def exit_code(self) -> int:
    return 128 + int(self.signum or signal.SIGTERM)

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


def run_identity(config_name: str, game: str, seed: int, config: SPRConfig) -> dict:
  """What config.json holds: the run's identity and every resolved hyperparameter."""
  return dict(config_name=config_name, game=game, seed=int(seed), **config.to_json())


def _progress_bar(total: int, initial: int, enabled: bool | None):
  try:
    from tqdm import tqdm
  except ImportError:  # pragma: no cover - tqdm is a dependency
    return None
  # disable=None: shown on a terminal, silent when stderr is a log file.
  bar = tqdm(total=total, initial=initial, disable=None if enabled is None else not enabled,
             unit="step", dynamic_ncols=True, file=sys.stderr)
  _ACTIVE_BAR[0] = bar  # `_log` keeps log lines off it
  return bar


_ACTIVE_BAR = [None]  # the progress bar of the loop running in this process, if any


def make_eval_act_fn(learner: SPRLearner, params, batch: int) -> Callable[[np.ndarray], np.ndarray]:
  """Batched greedy actions (noise off, no augmentation); pads to a fixed batch so that the
  evaluation compiles once whatever the number of episodes still running."""

  def act(stacks: np.ndarray) -> np.ndarray:
    n = stacks.shape[0]
    if n >= batch:  # already full size (the evaluator pads to powers of two): no copy
      return np.asarray(learner.greedy_actions(params, stacks))
    padded = np.zeros((batch,) + stacks.shape[1:], np.uint8)
    padded[:n] = stacks
    return np.asarray(learner.greedy_actions(params, padded))[:n]

  return act


def train(game: str, seed: int, config: SPRConfig, workdir: str | Path, config_name: str = "spr",
          env_workers: int = -1) -> dict:
  """Trains (or resumes) one run and returns the contents of its final.json.

  `env_workers`: processes stepping the evaluation envs (the training env stays here); 0: in
  this process; -1: `envs.pool.auto_workers` (none on a 2-core machine). Results do not depend
  on it."""
  game = games.canonical_name(game)
  pretrained = _pretrained_for_new_run(config, game, workdir)
  wd.acquire_lock(workdir)  # one writer per workdir (a second process gets a WorkdirError)
  try:
    return _train(game, seed, config, workdir, config_name, env_workers, pretrained)
  finally:
    wd.release_lock(workdir)


def _train(game: str, seed: int, config: SPRConfig, workdir: str | Path, config_name: str,
           env_workers: int, pretrained: dict | None) -> dict:
  identity = run_identity(config_name, game, seed, config)
  # A lost config.json comes back from the settings its checkpoints recorded, so that a resume
  # with other settings is refused by name rather than continued under them.
  checkpoint.restore_missing_config(Path(workdir) / wd.CONFIG, Path(workdir) / wd.CHECKPOINTS)
  path = wd.prepare(workdir, identity, LEGACY_VALUES)
  if wd.final_is_broken(path):
    logging.warning("%s does not parse: the run is not done; re-running its final evaluation "
                    "from the last checkpoint", path / wd.FINAL)
  if wd.is_finished(path):
    final = wd.read_final(path)
    logging.info("run in %s already finished (mean score %.2f); nothing to do", path,
                 final["mean_score"])
    return final

  env = games.make_env(game, seed=seed, training=True, protocol=config.env_protocol)
  learner = SPRLearner(config, env.num_actions)
  metrics_log = wd.MetricsLog(path)
  ckpt_dir = path / wd.CHECKPOINTS

  state, host, resumed = start_or_resume(learner, env, seed, ckpt_dir, pretrained, identity)
  # Lines a killed earlier attempt logged after the checkpoint it resumes from (all of them for
  # a run that starts over) would repeat steps: metrics.jsonl is cut back to that state.
  metrics_log.truncate_after(host["step"] if resumed else -1)
  if resumed:
    logging.info("resumed %s at step %d from %s", path, host["step"], ckpt_dir)
  else:
    logging.info("new run: %s seed %d, config %s, %d parameters, workdir %s", game, seed,
                 config_name, host["params_count"], path)

  if host["step"] < config.steps:
    _announce_device(config)
  periodic = bool(config.eval_every) and host["step"] < config.steps
  workers = resolve_workers(env_workers, max(config.eval_episodes,
                                             config.eval_every_episodes if periodic else 0))
  # The evaluation envs' workers run only while evaluations can happen.
  with EnvPool(workers if periodic else 0) as pool:
    if host["step"] < config.steps:
      with _TermFlag() as term:
        state, host = _train_loop(learner, state, env, host, config, metrics_log, ckpt_dir,
                                  term, seed=seed, eval_pool=pool)
  env.close()
  with EnvPool(workers if config.eval_episodes else 0) as pool:
    return _final_evaluation(learner, state, host, game, seed, config, config_name, path, pool)


def start_or_resume(learner: SPRLearner, env: AtariEnv, seed: int, ckpt_dir: Path,
                    pretrained: dict | None, identity: dict | None = None
                    ) -> tuple[TrainState, dict, bool]:
  """(learner state, host state, resumed) of a run: its newest checkpoint restored (env
  included), else a new run - init from PRNGKey(seed), the pretrained network loaded when
  `pretrained` (from `_pretrained_for_new_run`) is given, the env reset, the first action drawn.
  Both trainers start every run here, so a run in a batch starts exactly as alone. `identity`
  (the run's settings, `run_identity`): a checkpoint that recorded other settings is refused,
  naming them (spr.workdir.WorkdirError)."""
  state = learner.init(jax.random.PRNGKey(seed))
  restored = _restore(ckpt_dir, learner, env, state, identity)
  if restored is not None:
    return restored[0], restored[1], True
  if pretrained is not None:
    state = _load_pretrained(learner, state, pretrained, env.action_set)
  frame = env.reset()
  state, action = learner.first_action(state)
  host = dict(step=0, frame=frame, action=int(action), elapsed=0.0, episodes=[],
              params_count=param_count(state.params))
  return state, host, False


def _pretrained_for_new_run(config: SPRConfig, game: str, workdir: str | Path,
                            memo: dict | None = None):
  """SGI finetuning: the `init_from` checkpoint, checked against this run before its workdir is
  created (raises agents.sgi.finetune.PretrainedMismatch); None without init_from or when the run
  resumes (its own checkpoint holds the finetuned weights). `memo` (a dict the caller keeps)
  shares one loaded checkpoint and one check per game between the runs of a batch."""
  if not config.init_from:
    return None
  path = Path(workdir)
  if wd.is_finished(path) or checkpoint.checkpoint_steps(path / wd.CHECKPOINTS):
    return None
  from agents.sgi import finetune

  memo = {} if memo is None else memo
  if "payload" not in memo:
    memo["payload"] = finetune.load_pretrained(config.init_from)
  payload = memo["payload"]
  if game not in memo:
    probe = games.make_env(game, seed=0, training=True, protocol=config.env_protocol)
    finetune.check_compatible(payload, config, probe.action_set)
    probe.close()
    memo[game] = True
  return payload


def _load_pretrained(learner: SPRLearner, state: TrainState, payload: dict,
                     game_actions) -> TrainState:
  """`state` with the pretrained network loaded (`game_actions`: the game's ALE action ids)."""
  from agents.sgi import finetune

  state = finetune.load_into_state(learner, state, payload, game_actions)
  logging.info("loaded pretrained encoder, transition model, predictor and first head layer "
               "from %s (pretraining step %s)", payload["path"], payload.get("step"))
  return state


def _log(bar, message: str, *args) -> None:
  """logging.info that keeps the progress bar (`bar`, or the loop's) on its own line (cleared,
  then redrawn)."""
  bar = bar if bar is not None else _ACTIVE_BAR[0]
  if bar is not None and getattr(bar, "disable", False):
    bar = None
  if bar is not None:
    bar.clear()
  logging.info(message, *args)
  if bar is not None:
    bar.refresh()


def _announce_device(config: SPRConfig) -> None:
  """Where the run runs; on a CPU with a full-size config, how long that takes and how to use a
  GPU instead."""
  device = jax.devices()[0]
  logging.info("running on %s (%s)", device.platform.upper(), getattr(device, "device_kind", ""))
  updates = config.updates_per_step * max(config.steps - config.learn_start, 0)
  full_size = config.encoder != "nature" or tuple(config.encoder_channels) == (32, 64, 64)
  if device.platform == "cpu" and full_size and updates >= 50_000:
    # ~0.12 s per SPR update on 2 CPU cores (docs/BENCHMARKS.md); BBF's networks cost far more.
    hours = updates * 0.12 / 3600
    logging.warning(
        "%d gradient updates of a full-size network on a CPU: on the order of %.0f hours or "
        "more (a day for SPR; BBF far longer). For a GPU: pip install -U \"jax[cuda12]\"",
        updates, hours)


def _restore(ckpt_dir: Path, learner: SPRLearner, env: AtariEnv, template: TrainState,
             identity: dict | None = None):
  if not checkpoint.checkpoint_steps(ckpt_dir):
    return None
  _, tree, host, _ = checkpoint.restore(ckpt_dir, template, expect_config=identity,
                                        legacy=LEGACY_VALUES)
  state = jax.device_put(tree)
  env.set_state(host.pop("env"))
  return state, host


def _save(ckpt_dir: Path, state: TrainState, env: AtariEnv, host: dict, keep: int) -> None:
  # The settings recorded with it: the run's config.json (what `wd.prepare` checked).
  checkpoint.save(ckpt_dir, host["step"], state, dict(host, env=env.get_state()), keep=keep,
                  config=checkpoint.read_settings(ckpt_dir.parent / wd.CONFIG))


def _train_loop(learner: SPRLearner, state: TrainState, env: AtariEnv, host: dict,
                config: SPRConfig, metrics_log: wd.MetricsLog, ckpt_dir: Path,
                term: _TermFlag | None = None, seed: int = 0, eval_pool: EnvPool | None = None):
  frame, action = host["frame"], host["action"]
  bar = _progress_bar(config.steps, host["step"], None)
  window = dict(loss=0.0, rl_loss=0.0, spr_loss=0.0, updates=0, returns=[])
  t_window = time.perf_counter()
  step_window = host["step"]
  t_start = time.perf_counter() - host["elapsed"]
  compiled = set()  # (updates, reset) variants of the step this process has compiled
  for step in range(host["step"], config.steps):
    next_frame, reward, terminal, info = env.step(action)
    num_updates = updates_at(config, step + 1)
    # BBF resets (static flag: only the reset steps compile/run the reset).
    reset = dict(reset=True) if is_reset_step(config, step + 1) else {}
    if (num_updates, bool(reset)) not in compiled:  # a silent minute is not a hang
      compiled.add((num_updates, bool(reset)))
      if num_updates:
        _log(bar, "compiling the learner update (%d per step%s): about a minute on a CPU, "
             "seconds on a GPU", num_updates, ", with a reset" if reset else "")
      if bar is not None and num_updates and not reset:
        # The random phase ran much faster: estimate the time left from here on.
        bar.reset(total=config.steps)
        bar.update(step)
    state, next_action, m = learner.step(
        state, frame, np.int32(action), clip_reward(reward), np.bool_(terminal), env.stack,
        num_updates=num_updates, **reset)
    action, m = jax.device_get((next_action, m))
    action = int(action)
    frame = next_frame
    if not m.finite:
      last = checkpoint.checkpoint_steps(ckpt_dir)
      raise NonFiniteLossError(
          f"non-finite loss at env step {step + 1} (update {int(state.update_step)}); "
          f"last good checkpoint: {'step ' + str(last[-1]) if last else 'none'} in {ckpt_dir}")
    window["loss"] += float(m.loss)
    window["rl_loss"] += float(m.rl_loss)
    window["spr_loss"] += float(m.spr_loss)
    window["updates"] += int(m.updates)
    if info.get("game_over"):
      window["returns"].append(float(info["episode_return"]))
      host["episodes"].append((float(info["episode_return"]), int(info["episode_length"])))
    if bar is not None:
      bar.update(1)
    done = step + 1
    if done % config.log_every == 0 or done == config.steps:
      now = time.perf_counter()
      n_upd = max(window["updates"], 1)
      record = dict(
          step=done, time_s=round(now - t_start, 3),
          steps_per_s=round((done - step_window) / max(now - t_window, 1e-9), 2),
          updates=int(state.update_step),
          loss=window["loss"] / n_upd, rl_loss=window["rl_loss"] / n_upd,
          spr_loss=window["spr_loss"] / n_upd,
          episodes=len(window["returns"]),
          train_return=(float(np.mean(window["returns"])) if window["returns"] else None))
      metrics_log.write(record)
      ret = record["train_return"]
      ret = "-" if ret is None else f"{ret:.1f}"
      if window["updates"]:
        _log(bar, "step %d/%d | %.0f steps/s | loss %.4f (rl %.4f, spr %.4f) | return %s",
             done, config.steps, record["steps_per_s"], record["loss"], record["rl_loss"],
             record["spr_loss"], ret)
      else:
        _log(bar, "step %d/%d | %.0f steps/s | random actions, no updates before step %d | "
             "return %s", done, config.steps, record["steps_per_s"], config.learn_start + 1, ret)
      window = dict(loss=0.0, rl_loss=0.0, spr_loss=0.0, updates=0, returns=[])
      t_window, step_window = now, done
    if config.eval_every and done % config.eval_every == 0 and done < config.steps:
      _periodic_evaluation(learner, state, env.game, seed, config, done, metrics_log,
                           time.perf_counter() - t_start, eval_pool)
    preempted = term is not None and term.set
    if done % config.checkpoint_every == 0 or done == config.steps or preempted:
      host.update(step=done, frame=frame, action=action, elapsed=time.perf_counter() - t_start)
      _save(ckpt_dir, state, env, host, config.checkpoint_keep)
    if preempted:
      raise Preempted(f"{term.name}: checkpointed at step {done} in {ckpt_dir}; rerun the same "
                      "command to resume", term.exit_code)
  if bar is not None:
    bar.close()
  return state, host


def final_eval_seed(seed: int) -> int:
  """Seed of a run's final evaluation (`envs.evaluation.evaluate` derives the episodes' from it)."""
  return int(seed) + EVAL_SEED_OFFSET


def periodic_eval_seed(seed: int, step: int) -> int:
  """Seed of the periodic evaluation at env step `step`: derived from the step, so a resumed
  run replays the same evaluation."""
  return int(seed) + EVAL_SEED_OFFSET + 7919 * int(step)


def eval_record(step: int, elapsed: float, episodes: list[tuple[float, int]]) -> dict:
  """The metrics.jsonl line of a periodic evaluation."""
  scores = [s for s, _ in episodes]
  return dict(step=step, time_s=round(elapsed, 3), eval_mean_score=float(np.mean(scores)),
              eval_episodes=len(scores))


def _periodic_evaluation(learner: SPRLearner, state: TrainState, game: str, seed: int,
                         config: SPRConfig, step: int, metrics_log: wd.MetricsLog,
                         elapsed: float, pool: EnvPool | None = None) -> None:
  """`eval_every_episodes` full games with the current policy, logged as `eval_mean_score`.

  It reads the state and touches none of it (its own env seeds, derived from the step), so a
  resumed run logs the same values."""
  act = make_eval_act_fn(learner, learner.acting_params(state), config.eval_every_episodes)
  episodes = evaluate(act, game, num_episodes=config.eval_every_episodes,
                      seed=periodic_eval_seed(seed, step), epsilon=config.eval_epsilon, pool=pool,
                      protocol=config.env_protocol)
  record = eval_record(step, elapsed, episodes)
  metrics_log.write(record)
  _log(None, "step %d: evaluation over %d episodes: mean score %.2f", step,
       record["eval_episodes"], record["eval_mean_score"])


def _final_evaluation(learner: SPRLearner, state: TrainState, host: dict, game: str, seed: int,
                      config: SPRConfig, config_name: str, path: Path,
                      pool: EnvPool | None = None) -> dict:
  t0 = time.perf_counter()
  episodes = []
  if config.eval_episodes:
    act = make_eval_act_fn(learner, learner.acting_params(state), config.eval_episodes)
    episodes = evaluate(act, game, num_episodes=config.eval_episodes,
                        seed=final_eval_seed(seed), epsilon=config.eval_epsilon, pool=pool,
                        protocol=config.env_protocol)
  return write_final(path, episodes, host, game, seed, config, config_name,
                     time.perf_counter() - t0)


def write_final(path: Path, episodes: list[tuple[float, int]], host: dict, game: str, seed: int,
                config: SPRConfig, config_name: str, eval_seconds: float) -> dict:
  """Writes eval.csv, then final.json (last: it marks the run done); returns final.json's dict."""
  wd.write_eval_csv(path, episodes)
  scores = [s for s, _ in episodes]
  mean = float(np.mean(scores)) if scores else math.nan
  final = dict(
      game=game, seed=int(seed), config_name=config_name, steps=int(host["step"]),
      budget_steps=int(config.steps), eval_episodes=len(episodes), mean_score=mean,
      # Catch (a non-Atari sanity task) has no human-normalised score: NaN, as without scores.
      hns=(games.human_normalized_score(game, mean) if scores and games.is_atari(game)
           else math.nan),
      wall_time_s=round(host["elapsed"] + eval_seconds, 2),
      train_episodes=len(host["episodes"]))
  wd.write_json_atomic(path / wd.FINAL, final)
  logging.info("finished %s seed %d: mean score %.2f over %d episodes (HNS %.3f)", game, seed,
               mean, len(episodes), final["hns"])
  return final
