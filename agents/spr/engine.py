"""The run engine: trains a set of SPR / BBF runs (games x seeds) in one process; one run is a set
of one.

    finals = train_runs([RunSpec("Pong", 0, "runs/spr/Pong/seed_0"), ...], config, "spr")

Every run has its own parameters, optimiser, replay, RNG, emulator and workdir (config.json,
metrics.jsonl, checkpoints/ckpt_<step>.npz, eval.csv, final.json; docs/CONTRACTS.md), whether it
trains alone or with others, so a run started in a batch resumes alone and the other way round.

Groups. Runs are grouped by (action count, step reached). A group of several runs holds their
`TrainState`s stacked along a leading run axis and advances with one call per env step of the
learner step vmapped over runs (`batched_step`); a group of one calls the learner's own jitted
step on the unstacked state, so a run alone is exactly the single-run program. Action counts are
not padded: a padded run would have other parameter shapes, hence another initialisation and
trajectory than alone. Every group's call is dispatched before any result is fetched, so the
device runs them back to back while the host waits once per env step. A run in a batch matches
the run alone up to float reassociation in XLA's batched kernels (tests/test_multi_run.py).

One env step of the loop (`_loop`):
  1. the env pool steps every live run's env with its pending action (`envs.pool.EnvPool`: in
     this process, or in worker processes; the results do not depend on it);
  2. each group's learner step: replay add + `updates_at` updates (+ a BBF reset) + next action,
     on the device;
  3. one `jax.device_get` of every group's actions and step metrics;
  4. per run: the metrics window, episodes, metrics.jsonl every `log_every`, the periodic
     evaluation every `eval_every`, a checkpoint every `checkpoint_every`, at the end, or when
     SIGTERM / Ctrl-C arrived (then `Preempted`).
A run whose loss becomes non-finite stops being logged and checkpointed (its last good checkpoint
stays); the others go on and `NonFiniteLossError` names it at the end. After training, the runs
of one action count are evaluated together (`agents.spr.evaluation`) and write eval.csv, then
final.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from agents.spr import evaluation
from agents.spr.config import LEGACY_VALUES, SPRConfig
from agents.spr.learner import (
    SPRLearner,
    TrainState,
    is_reset_step,
    learner_for,
    param_count,
    updates_at,
    updates_through,
)
from envs import games
from envs.atari import clip_reward
from envs.pool import EnvPool, resolve_workers
from spr import checkpoint, runtime, workdir as wd

LOSS_KEYS = ("loss", "rl_loss", "spr_loss")  # StepMetrics sums averaged per update in the logs


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One run: the game, the seed, and the workdir that holds everything of it."""

  game: str
  seed: int
  workdir: str | Path


def run_identity(config_name: str, game: str, seed: int, config: SPRConfig) -> dict:
  """What config.json holds: the run's identity and every resolved hyperparameter."""
  return dict(config_name=config_name, game=game, seed=int(seed), **config.to_json())


# ------------------------------------------------------------------------------ compiled steps
@functools.lru_cache(maxsize=None)
def batched_step(learner: SPRLearner, num_updates: int, reset: bool = False):
  """The single-run step vmapped over a leading run axis, jitted, state donated."""
  fn = functools.partial(learner._step, num_updates=num_updates, reset=reset)  # pylint: disable=protected-access
  return jax.jit(jax.vmap(fn), donate_argnums=0)


def stack_states(states: list[Any]) -> Any:
  """Stacks per-run pytrees along a new leading axis (on the host, then one device_put)."""
  host = [jax.device_get(s) for s in states]
  return jax.device_put(jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *host))


def unstack_host(state: Any, n: int) -> list[Any]:
  """One device->host transfer of a stacked state, sliced per run (numpy views)."""
  host = jax.device_get(state)
  return [jax.tree.map(lambda x, i=i: x[i], host) for i in range(n)]


# ------------------------------------------------------------------------------ runs and groups
@dataclasses.dataclass
class Run:
  """The host side of one run: where it writes, its env in the pool, what its checkpoint
  carries besides the learner state (`host`: step, pending frame and action, elapsed time,
  episodes), its metrics window, and why it failed (a non-finite loss) if it did."""

  spec: RunSpec
  path: Path
  env_handle: int | None
  host: dict
  metrics_log: wd.MetricsLog | None
  window: runtime.MetricsWindow | None = None
  failed: str | None = None

  @property
  def ckpt_dir(self) -> Path:
    return self.path / wd.CHECKPOINTS

  @property
  def name(self) -> str:
    return f"{self.spec.game}/seed_{self.spec.seed}"


@dataclasses.dataclass
class Group:
  """Runs of one action count at one step, advanced together by one call per env step.

  `state` is stacked over runs (leading run axis) for several runs, and the run's own state for
  a group of one."""

  learner: SPRLearner
  runs: list[Run]
  state: TrainState
  step: int  # env steps done by every run of the group
  actions: np.ndarray  # [N] int32, the pending actions
  frames: np.ndarray  # [N, 84, 84] uint8, the frames the pending actions are taken from
  window_step: int = 0  # step and time the current log window opened at (for steps/s)
  window_time: float = 0.0

  @property
  def stacked(self) -> bool:
    return len(self.runs) > 1

  @property
  def live(self) -> bool:
    return any(not run.failed for run in self.runs)

  def run_states(self) -> list[Any]:
    """Each run's state on the host."""
    if not self.stacked:
      return [jax.device_get(self.state)]
    return unstack_host(self.state, len(self.runs))

  def acting(self) -> tuple[list[Run], Any]:
    """The runs that did not fail and their acting parameters (stacked unless a group of one)."""
    acting = self.learner.acting_params(self.state)
    live = [i for i, run in enumerate(self.runs) if not run.failed]
    if self.stacked and len(live) < len(self.runs):
      acting = evaluation.select_runs(acting, live)
    return [self.runs[i] for i in live], acting

  def describe(self) -> str:
    if not self.stacked:
      return self.runs[0].name
    return f"{len(self.runs)} runs ({self.learner.num_actions} actions)"


def _step_group(
    g: Group,
    num_updates: int,
    reset: bool,
    rewards: np.ndarray,
    terminals: np.ndarray,
    stacks: np.ndarray,
):
  """Dispatches one learner step of every run of `g` (no host sync); returns the device arrays
  (next actions, StepMetrics), with a run axis only for a stacked group."""
  if g.stacked:
    fn = batched_step(g.learner, num_updates, reset)
    g.state, next_actions, metrics = fn(
        g.state, g.frames, g.actions, clip_reward(rewards), terminals, stacks
    )
  else:
    g.state, next_actions, metrics = g.learner.step(
        g.state,
        g.frames[0],
        np.int32(g.actions[0]),
        clip_reward(rewards[0]),
        np.bool_(terminals[0]),
        stacks[0],
        num_updates=num_updates,
        reset=reset,
    )
  return next_actions, metrics


def _with_run_axis(g: Group, fetched):
  return fetched if g.stacked else jax.tree.map(lambda x: np.asarray(x)[None], fetched)


# ------------------------------------------------------------------------------ entry point
def train_runs(
    specs: list[RunSpec],
    config: SPRConfig,
    config_name: str = "spr",
    progress: bool | None = None,
    env_workers: int = -1,
) -> list[dict]:
  """Trains (or resumes) every run of `specs` together; returns their final.json contents in
  the order of `specs`. Finished runs are skipped (their final.json is returned).

  `env_workers`: processes stepping the envs (training and evaluation); 0: in this process;
  -1: `envs.pool.auto_workers` for the evaluation's env count. Results do not depend on it."""
  if len({Path(s.workdir).resolve() for s in specs}) != len(specs):
    raise ValueError("two runs share a workdir")
  specs = [RunSpec(games.canonical_name(s.game), int(s.seed), s.workdir) for s in specs]
  # SGI finetuning: every new run's --init_from checkpoint is loaded and checked (read once,
  # shared) before any workdir is created, so a mismatch leaves nothing behind.
  memo: dict = {}
  pretrained = [pretrained_for_new_run(config, s.game, s.workdir, memo) for s in specs]
  del memo
  locked = []
  try:
    for spec in specs:  # one writer per workdir: refuse before anything is written
      wd.acquire_lock(spec.workdir)
      locked.append(spec.workdir)
    return _train_runs(specs, config, config_name, progress, env_workers, pretrained)
  finally:
    for workdir in locked:
      wd.release_lock(workdir)


def _train_runs(
    specs: list[RunSpec],
    config: SPRConfig,
    config_name: str,
    progress: bool | None,
    env_workers: int,
    pretrained: list,
) -> list[dict]:
  finals: dict[int, dict] = {}
  unfinished: list[tuple[int, Path]] = []
  for index, spec in enumerate(specs):
    # A lost config.json comes back from the settings its checkpoints recorded, so that a resume
    # with other settings is refused by name rather than continued under them.
    checkpoint.restore_missing_config(
        Path(spec.workdir) / wd.CONFIG, Path(spec.workdir) / wd.CHECKPOINTS
    )
    path = wd.prepare(
        spec.workdir, run_identity(config_name, spec.game, spec.seed, config), LEGACY_VALUES
    )
    if wd.final_is_broken(path):
      logging.warning(
          "%s does not parse: the run is not done; re-running its final evaluation "
          "from the last checkpoint",
          path / wd.FINAL,
      )
    if wd.is_finished(path):
      finals[index] = wd.read_final(path)
      logging.info(
          "run in %s already finished; skipped (mean score %.2f)", path, finals[index]["mean_score"]
      )
    else:
      unfinished.append((index, path))
  # One pool steps the training envs and the evaluations' (runs x episodes).
  episodes = max(config.eval_episodes, config.eval_every_episodes if config.eval_every else 0, 1)
  workers = resolve_workers(env_workers, len(unfinished) * episodes) if unfinished else 0
  started: list[tuple[int, Run]] = []
  with EnvPool(workers) as pool:
    if workers:
      logging.info("envs stepped by %d worker processes", workers)
    members = []
    for index, path in unfinished:
      run, learner, state = _start_run(
          specs[index], path, config, config_name, pretrained[index], pool
      )
      pretrained[index] = None  # loaded: free it
      members.append((run, learner, state))
      started.append((index, run))
    groups = _make_groups(members)
    del members  # the groups hold the (stacked) states: drop the per-run copies
    if groups:
      if any(g.step < config.steps for g in groups):
        _announce_device(config)
      with runtime.TermFlag() as term:
        _loop(groups, config, term, pool, progress)
        if term.set:  # arrived during the last step's bookkeeping: its checkpoint is written
          raise term.preempted(f"at step {config.steps} (the budget's end; not yet evaluated)")
      index_of = {id(run): index for index, run in started}
      for learner, runs, acting, stacked in _final_groups(groups):
        for run, final in zip(
            runs, _final_evaluations(learner, runs, acting, stacked, config, config_name, pool)
        ):
          finals[index_of[id(run)]] = final

  failed = [run.failed for _, run in started if run.failed]
  if failed:
    raise runtime.NonFiniteLossError("; ".join(failed))
  return [finals[i] for i in range(len(specs))]


# ------------------------------------------------------------------------------ starting a run
def start_or_resume(
    learner: SPRLearner,
    env,
    seed: int,
    ckpt_dir: Path,
    pretrained: dict | None,
    identity: dict | None = None,
) -> tuple[TrainState, dict, bool]:
  """(learner state, host state, resumed) of a run on `env`: its newest checkpoint restored (env
  included), else a new run - init from PRNGKey(seed), the pretrained network loaded when
  `pretrained` (from `pretrained_for_new_run`) is given, the env reset, the first action drawn.
  `identity` (the run's settings, `run_identity`): a checkpoint that recorded other settings is
  refused, naming them (spr.workdir.WorkdirError)."""
  state = learner.init(jax.random.PRNGKey(seed))
  if checkpoint.checkpoint_steps(ckpt_dir):
    _, tree, host, _ = checkpoint.restore(
        ckpt_dir, state, expect_config=identity, legacy=LEGACY_VALUES
    )
    env.set_state(host.pop("env"))
    return jax.device_put(tree), host, True
  if pretrained is not None:
    state = _load_pretrained(learner, state, pretrained, env.action_set)
  frame = env.reset()
  state, action = learner.first_action(state)
  host = dict(
      step=0,
      frame=frame,
      action=int(action),
      elapsed=0.0,
      episodes=[],
      params_count=param_count(state.params),
  )
  return state, host, False


def pretrained_for_new_run(
    config: SPRConfig, game: str, workdir: str | Path, memo: dict | None = None
):
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


def _load_pretrained(
    learner: SPRLearner, state: TrainState, payload: dict, game_actions
) -> TrainState:
  """`state` with the pretrained network loaded (`game_actions`: the game's ALE action ids)."""
  from agents.sgi import finetune

  state = finetune.load_into_state(learner, state, payload, game_actions)
  logging.info(
      "loaded pretrained encoder, transition model, predictor and first head layer "
      "from %s (pretraining step %s)",
      payload["path"],
      payload.get("step"),
  )
  return state


def _start_run(
    spec: RunSpec,
    path: Path,
    config: SPRConfig,
    config_name: str,
    pretrained: dict | None,
    pool: EnvPool,
) -> tuple[Run, SPRLearner, TrainState]:
  """A run's host objects, learner and state: started (or restored) on a local env, then the
  env's state moves into the pool (exact), so a run starts in a batch exactly as alone."""
  env = games.make_env(spec.game, seed=spec.seed, training=True, protocol=config.env_protocol)
  learner = learner_for(config, env.num_actions)
  state, host, resumed = start_or_resume(
      learner, env, spec.seed, path / wd.CHECKPOINTS, pretrained, wd.read_json(path / wd.CONFIG)
  )
  [handle] = pool.add(
      [dict(game=spec.game, seed=spec.seed, training=True, protocol=config.env_protocol)]
  )
  pool.set_state([handle], [env.get_state()])
  env.close()
  run = Run(spec, path, handle, host, wd.MetricsLog(path))
  # Lines a killed earlier attempt logged after the checkpoint it resumes from (all of them for
  # a run that starts over) would repeat steps: metrics.jsonl is cut back to that state.
  run.metrics_log.truncate_after(host["step"] if resumed else -1)
  if resumed:
    logging.info("resumed %s at step %d", path, host["step"])
  else:
    logging.info(
        "new run: %s seed %d, config %s, %d parameters, workdir %s",
        spec.game,
        spec.seed,
        config_name,
        host["params_count"],
        path,
    )
  return run, learner, state


def _make_groups(members: list[tuple[Run, SPRLearner, TrainState]]) -> list[Group]:
  by_key: dict[tuple[int, int], list] = {}
  for run, learner, state in members:
    by_key.setdefault((learner.num_actions, run.host["step"]), []).append((run, learner, state))
  groups = []
  for (_, step), group in sorted(by_key.items()):
    runs = [m[0] for m in group]
    state = group[0][2] if len(group) == 1 else stack_states([m[2] for m in group])
    groups.append(
        Group(
            learner=group[0][1],
            runs=runs,
            state=state,
            step=step,
            actions=np.array([r.host["action"] for r in runs], np.int32),
            frames=np.stack([r.host["frame"] for r in runs]),
        )
    )
    if len(members) > 1:  # which runs share a batch (a batch of one runs unbatched)
      logging.info(
          "batch of %d runs (%d actions) from step %d: %s",
          len(runs),
          group[0][1].num_actions,
          step,
          ", ".join(r.name for r in runs),
      )
  return groups


def _announce_device(config: SPRConfig) -> None:
  """Where the runs run; on a CPU with a full-size config, how long that takes and how to use a
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
        'more (a day for SPR; BBF far longer). For a GPU: pip install -U "jax[cuda12]"',
        updates,
        hours,
    )


# ------------------------------------------------------------------------------ the loop
def _loop(
    groups: list[Group],
    config: SPRConfig,
    term: runtime.TermFlag,
    pool: EnvPool,
    progress: bool | None,
) -> None:
  t_start = time.perf_counter() - max(r.host["elapsed"] for g in groups for r in g.runs)
  for g in groups:
    g.window_step, g.window_time = g.step, time.perf_counter()
    for run in g.runs:
      run.window = runtime.MetricsWindow(g.step)
  bar = runtime.progress_bar(config.steps, min(g.step for g in groups), progress)
  try:
    compiled = set()  # (group, reset) whose update this process has compiled
    while True:
      active = [g for g in groups if g.step < config.steps and g.live]
      if not active:
        break
      # 1. Step every env of every active group (in parallel when the pool has workers).
      handles = [r.env_handle for g in active for r in g.runs]
      frames, rewards, terminals, infos = pool.step(
          handles, [int(a) for g in active for a in g.actions]
      )
      stacks = pool.stacks(handles)
      # 2. Dispatch every group's learner step, then fetch all actions and metrics at once.
      outputs, k = [], 0
      for g in active:
        rows = slice(k, k + len(g.runs))
        k += len(g.runs)
        num_updates = updates_at(config, g.step + 1)
        reset = is_reset_step(config, g.step + 1)  # static: only reset steps compile the reset
        if num_updates and (id(g), reset) not in compiled:  # a silent minute is not a hang
          compiled.add((id(g), reset))
          runtime.log(
              bar,
              "compiling the learner update (%s, %d per step%s): about a minute on "
              "a CPU, seconds on a GPU",
              g.describe(),
              num_updates,
              ", with a reset" if reset else "",
          )
          if bar is not None and not reset:  # the random phase ran faster: estimate from here
            bar.reset(total=config.steps)
            bar.update(min(x.step for x in groups))
        device_out = _step_group(
            g, num_updates, reset, rewards[rows], terminals[rows], stacks[rows]
        )
        outputs.append((g, frames[rows], infos[rows], device_out))
      fetched = jax.device_get([o[3] for o in outputs])
      # 3. Host bookkeeping per run: metrics, episodes, logs, evaluations, checkpoints.
      preempted = term.set
      for (g, next_frames, step_infos, _), out in zip(outputs, fetched):
        next_actions, metrics = _with_run_axis(g, out)
        g.actions = np.asarray(next_actions, np.int32)
        g.frames = next_frames
        g.step += 1
        _bookkeeping(g, step_infos, metrics, config, t_start, bar)
        if (
            config.diagnostics_every
            and g.step % config.diagnostics_every == 0
            and g.step > config.learn_start
        ):
          _diagnostics(g, time.perf_counter() - t_start)
        if config.eval_every and g.step % config.eval_every == 0 and g.step < config.steps:
          _periodic_evaluation(g, config, time.perf_counter() - t_start, pool)
        if g.step % config.checkpoint_every == 0 or g.step == config.steps or preempted:
          _checkpoint(g, config, t_start, pool)
      if bar is not None:
        bar.update(1)
      if preempted:
        runs = [r for g in groups for r in g.runs if not r.failed]
        where = (
            f"at step {groups[0].step} in {runs[0].ckpt_dir}"
            if len(groups) == 1 == len(runs)
            else f"{len(runs)} runs"
        )
        raise term.preempted(where)
  finally:
    runtime.close_bar(bar)


def _bookkeeping(
    g: Group, infos: list[dict], m, config: SPRConfig, t_start: float, bar=None
) -> None:
  done = g.step
  for i, run in enumerate(g.runs):
    if run.failed:
      continue
    if not m.finite[i]:
      run.failed = (
          f"{run.spec.game} seed {run.spec.seed}: non-finite loss at env step {done} "
          f"(update {int(updates_through(config, done))}); "
          f"{runtime.last_good_checkpoint(run.ckpt_dir)}"
      )
      logging.error(run.failed)
      continue
    run.window.add({k: getattr(m, k)[i] for k in LOSS_KEYS}, int(m.updates[i]))
    info = infos[i]
    if info.get("game_over"):
      run.window.returns.append(float(info["episode_return"]))
      run.host["episodes"].append((float(info["episode_return"]), int(info["episode_length"])))
  if done % config.log_every and done != config.steps:
    return
  now = time.perf_counter()
  rate = (done - g.window_step) / max(now - g.window_time, 1e-9)
  records = []
  for run in g.runs:
    if run.failed:
      continue
    w = run.window
    record = dict(
        step=done,
        time_s=round(now - t_start, 3),
        steps_per_s=round(rate, 2),
        updates=int(updates_through(config, done)),
        **w.means(LOSS_KEYS),
        episodes=len(w.returns),
        train_return=float(np.mean(w.returns)) if w.returns else None,
    )
    if g.stacked:
      record["batch_runs"] = len(g.runs)
    run.metrics_log.write(record)
    records.append(record)
    w.reset(done, now)
  g.window_step, g.window_time = done, now
  if not records:
    return
  if len(records) == 1:
    r = records[0]
    ret = "-" if r["train_return"] is None else f"{r['train_return']:.1f}"
    if done > config.learn_start:
      runtime.log(
          bar,
          "step %d/%d | %.0f steps/s | loss %.4f (rl %.4f, spr %.4f) | return %s",
          done,
          config.steps,
          rate,
          r["loss"],
          r["rl_loss"],
          r["spr_loss"],
          ret,
      )
    else:
      runtime.log(
          bar,
          "step %d/%d | %.0f steps/s | random actions, no updates before step %d | " "return %s",
          done,
          config.steps,
          rate,
          config.learn_start + 1,
          ret,
      )
  elif done > config.learn_start:
    runtime.log(
        bar,
        "step %d/%d | %s | %.1f steps/s per run, %.0f total | mean loss %.4f",
        done,
        config.steps,
        g.describe(),
        rate,
        rate * len(g.runs),
        float(np.mean([r["loss"] for r in records])),
    )
  else:
    runtime.log(
        bar,
        "step %d/%d | %s | %.1f steps/s per run | random actions, no updates " "before step %d",
        done,
        config.steps,
        g.describe(),
        rate,
        config.learn_start + 1,
    )


def _checkpoint(g: Group, config: SPRConfig, t_start: float, pool: EnvPool) -> None:
  elapsed = time.perf_counter() - t_start
  env_states = pool.get_state([run.env_handle for run in g.runs])
  for i, (run, state) in enumerate(zip(g.runs, g.run_states())):
    run.host.update(
        step=g.step, frame=g.frames[i].copy(), action=int(g.actions[i]), elapsed=elapsed
    )
    if not run.failed:
      save_checkpoint(
          run.ckpt_dir, state, dict(run.host, env=env_states[i]), config.checkpoint_keep
      )


def save_checkpoint(ckpt_dir: Path, state: TrainState, host: dict, keep: int) -> None:
  """Writes `ckpt_<host["step"]>.npz`: the learner state and the host state (with the env's
  `env` state), recording the run's config.json (what `wd.prepare` checked) with them."""
  checkpoint.save(
      ckpt_dir,
      host["step"],
      state,
      host,
      keep=keep,
      config=checkpoint.read_settings(ckpt_dir.parent / wd.CONFIG),
  )


# ------------------------------------------------------------------------------ diagnostics
@functools.lru_cache(maxsize=None)
def _diagnostics_fn(learner: SPRLearner, stacked: bool):
  # Runs one after another (lax.map), not vmapped: a call holds one run's 256-sample batch,
  # gradient and SVDs at a time, whatever the group's size.
  return jax.jit(
      functools.partial(jax.lax.map, learner.diagnostics) if stacked else learner.diagnostics
  )


def _diagnostics(g: Group, elapsed: float) -> None:
  """One metrics.jsonl line of representation diagnostics (`SPRLearner.diagnostics`, keys
  prefixed `diag_`) per live run; a value that is not finite (no valid sample at some k) is
  written as null."""
  values = jax.device_get(_diagnostics_fn(g.learner, g.stacked)(g.state))
  values = _with_run_axis(g, values)
  for i, run in enumerate(g.runs):
    if run.failed:
      continue
    record = dict(step=g.step, time_s=round(elapsed, 3))
    for key, value in values.items():
      value = float(value[i])
      record["diag_" + key] = value if math.isfinite(value) else None
    run.metrics_log.write(record)


# ------------------------------------------------------------------------------ evaluations
def _periodic_evaluation(g: Group, config: SPRConfig, elapsed: float, pool: EnvPool) -> None:
  """`eval_every_episodes` full games of every live run's current policy, logged as
  `eval_mean_score`. It reads the state and touches none of it (the episodes' seeds derive
  from the step), so a resumed run logs the same values."""
  runs, acting = g.acting()
  if not runs:
    return
  seeds = [(r.spec.game, evaluation.periodic_eval_seed(r.spec.seed, g.step)) for r in runs]
  results = evaluation.evaluate_policies(
      g.learner,
      acting,
      seeds,
      config.eval_every_episodes,
      config.eval_epsilon,
      pool,
      config.env_protocol,
      stacked=g.stacked,
  )
  scores = []
  for run, episodes in zip(runs, results):
    record = evaluation.eval_record(g.step, elapsed, episodes)
    run.metrics_log.write(record)
    scores.append(record["eval_mean_score"])
  if g.stacked:
    runtime.log(
        None,
        "step %d: evaluation of %s over %d episodes each: mean scores %s",
        g.step,
        g.describe(),
        config.eval_every_episodes,
        ", ".join(f"{v:.2f}" for v in scores),
    )
  else:
    runtime.log(
        None,
        "step %d: evaluation over %d episodes: mean score %.2f",
        g.step,
        config.eval_every_episodes,
        scores[0],
    )


def _final_groups(groups: list[Group]) -> list[tuple[SPRLearner, list[Run], Any, bool]]:
  """(learner, live runs, their acting parameters, stacked) per action count: after training
  every run is at the last step, so groups that started from different steps (a resume) but
  share a learner are evaluated together (acting parameters concatenated along the run axis)."""
  parts: dict[SPRLearner, list] = {}
  for g in groups:
    runs, acting = g.acting()
    if runs:
      parts.setdefault(g.learner, []).append((runs, acting, g.stacked))
  out = []
  for learner, members in parts.items():
    runs = [r for rs, _, _ in members for r in rs]
    if len(members) == 1:
      _, acting, stacked = members[0]
    else:  # stack the groups of one, then concatenate along the run axis
      actings = [a if stacked else jax.tree.map(lambda x: x[None], a) for _, a, stacked in members]
      acting, stacked = jax.tree.map(lambda *xs: jnp.concatenate(xs), *actings), True
    out.append((learner, runs, acting, stacked))
  return out


def _final_evaluations(
    learner: SPRLearner,
    runs: list[Run],
    acting: Any,
    stacked: bool,
    config: SPRConfig,
    config_name: str,
    pool: EnvPool,
) -> list[dict]:
  """The final evaluation of `runs` together; writes each run's eval.csv and final.json (the
  same seeds and fields alone or in a batch); returns them."""
  t0 = time.perf_counter()
  results: list[list] = [[] for _ in runs]
  if config.eval_episodes:
    if stacked:
      logging.info(
          "final evaluation of %d runs (%d actions) together, %d episodes each",
          len(runs),
          learner.num_actions,
          config.eval_episodes,
      )
    seeds = [(r.spec.game, evaluation.final_eval_seed(r.spec.seed)) for r in runs]
    results = evaluation.evaluate_policies(
        learner,
        acting,
        seeds,
        config.eval_episodes,
        config.eval_epsilon,
        pool,
        config.env_protocol,
        stacked=stacked,
    )
  seconds = time.perf_counter() - t0  # each run waited for the whole evaluation
  return [
      evaluation.write_final(
          run.path, episodes, run.host, run.spec.game, run.spec.seed, config, config_name, seconds
      )
      for run, episodes in zip(runs, results)
  ]


def final_evaluation(
    learner: SPRLearner,
    state: TrainState,
    host: dict,
    game: str,
    seed: int,
    config: SPRConfig,
    config_name: str,
    path: Path,
    pool: EnvPool | None = None,
) -> dict:
  """The final evaluation of one run from its state: writes eval.csv and final.json in `path`."""
  run = Run(RunSpec(game, seed, path), Path(path), None, host, None)
  with EnvPool(0) if pool is None else contextlib.nullcontext(pool) as p:
    [final] = _final_evaluations(
        learner, [run], learner.acting_params(state), False, config, config_name, p
    )
  return final
