"""Many independent SPR / BBF runs (seeds and games) trained together in one process.

    finals = train_many([RunSpec("Pong", 0, "runs/spr/Pong/seed_0"), ...], config, "spr")

Each run has its own parameters, optimiser, replay, RNG, emulator and workdir, and its workdir is
exactly what `agents.spr.trainer.train` writes for the same run (config.json, metrics.jsonl,
checkpoints/ckpt_<step>.npz in the SAME format, eval.csv, final.json), so sweeps and reports read
them alike, and a run started in a batch can be resumed alone (or the other way round).

How runs are batched
--------------------
Runs are grouped by (action count, step reached). A group holds its runs' `TrainState`s stacked
along a leading run axis and advances with ONE jitted call per env step: `jax.vmap` of the
single-run learner step (replay add + updates + next action, state donated). Grouping by action
count rather than padding the action dimension: a padded run would have other parameter shapes
(transition-model input planes, advantage head) and therefore another initialisation and another
trajectory than the same run trained alone; grouped, every run in a batch is initialised by
`learner.init(PRNGKey(seed))` with its true action count, exactly as alone. The 26 Atari 100k
games use 3, 4, 6, 7, 8, 9, 10, 14 or 18 actions (13 of them 18), so a full table is at most 9
vmapped batches in one loop;
each group's call is dispatched before any group's actions are fetched, so the device runs them
back to back while the host waits once per env step.

Trajectory: a run in a batch takes the same actions and reaches the same parameters as alone up
to float reassociation in XLA's batched kernels (tests/test_multi_run.py: 101 updates on CPU,
integers - replay, actions, counters, RNG - identical, floats within ~1e-6). A batch is
deterministic (same command, same result bitwise); batches of other sizes (a resume where only
some runs are unfinished) are other XLA programs, equal within that float tolerance.

Env stepping: one `AtariEnv` per run (the single-run protocol, exactly), all of them in one
`envs.pool.EnvPool`: with `env_workers` > 0 the envs live in that many worker processes and one
call steps them in parallel (threads would not: ale-py 0.12's act() holds the GIL, `python -m
launch.bench --probes`); 0 keeps them in this process; -1 (the default) picks one worker per core
but one, none on a 2-core machine. The workers change no result: each env is the single-run env,
started from the state the single-run start gives it (`trainer.start_or_resume` on a local env,
whose state is moved into the pool).

Host synchronisation: one device->host transfer per env step (the actions and the step metrics of
all runs); checkpoints fetch the stacked state once and slice it per run on the host.

Evaluation: the periodic evaluations (`eval_every`, at the same steps as a single run, logged as
the same `eval_mean_score` lines) and the final evaluation of the runs of a group run together:
one jitted call of the single-run greedy act over the stacked acting parameters (vmapped; on CPU
a `lax.map` over runs, see `batched_greedy`), and the
envs of all runs x episodes stepped by `envs.evaluation.evaluate_runs` (the single-run evaluator,
generalised to R runs) in the same env pool. Each run keeps
its own episode seeds (`trainer.final_eval_seed` / `periodic_eval_seed` of its seed) and its
act batch is padded to the single-run size, so its episodes - scores and lengths - are those the
run gets alone from the same state (identical on CPU, tests/test_multi_eval.py; a vmapped
network could differ from the lone one in the last float bits, which matters only at an exact tie
of Q-values), and eval.csv and final.json are written by the single-run code
(`trainer.write_final`). After training, the
groups sharing an action count (a resume can split them by step) are evaluated as one; at most
MAX_EVAL_ENVS envs are alive at once (chunks of whole runs beyond that).

Finetuning (`init_from`): each new run loads the pretrained network exactly as a single run does
(`trainer._pretrained_for_new_run` checks every run before any workdir is written,
`trainer.start_or_resume` loads it into the run's fresh state), before the states are stacked.

Resume: every run restores its own newest checkpoint; runs that reached different steps land in
different groups (and advance in the same loop). A run whose loss becomes non-finite stops being
logged and checkpointed (its last good checkpoint stays), the others go on; the batch then raises
NonFiniteLossError naming it. SIGTERM checkpoints every run and raises Preempted.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from agents.spr import trainer as single
from agents.spr.config import LEGACY_VALUES, SPRConfig
from agents.spr.learner import (SPRLearner, TrainState, is_reset_step, learner_for, updates_at,
                                updates_through)
from envs import games
from envs.atari import clip_reward
from envs.evaluation import evaluate_runs
from envs.pool import EnvPool, resolve_workers
from spr import checkpoint, workdir as wd


@dataclasses.dataclass(frozen=True)
class RunSpec:
  game: str
  seed: int
  workdir: str | Path


def run_workdir(root: str | Path, game: str, seed: int) -> Path:
  """The workdir of one run of a multi-run command: `<root>/<game>/seed_<seed>` (launch/jobs.py
  uses `ROOT/<label>/<game>/seed_<s>`: pass `ROOT/<label>` as the root to share its layout)."""
  return Path(root) / games.canonical_name(game) / f"seed_{int(seed)}"


def parse_seeds(text: str) -> list[int]:
  """'0-3' -> [0, 1, 2, 3]; '0,2,5' and mixes ('0-2,7') work; duplicates are an error."""
  seeds: list[int] = []
  for part in (p.strip() for p in text.split(",")):
    if not part:
      continue
    try:
      if "-" in part:
        lo, hi = (int(v) for v in part.split("-", 1))
        if hi < lo:
          raise ValueError
        seeds.extend(range(lo, hi + 1))
      else:
        seeds.append(int(part))
    except (TypeError, ValueError):
      raise ValueError(f"malformed seed list {text!r} (expected e.g. '0-3' or '0,2,5')") from None
  if not seeds:
    raise ValueError(f"empty seed list {text!r}")
  if len(set(seeds)) != len(seeds):
    raise ValueError(f"duplicate seeds in {text!r}")
  return seeds


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


# ------------------------------------------------------------------------------ host state
@dataclasses.dataclass
class _Run:
  spec: RunSpec
  path: Path
  env_handle: int  # the run's env in the EnvPool
  host: dict
  metrics_log: wd.MetricsLog
  window: dict = dataclasses.field(default_factory=dict)
  failed: str | None = None

  @property
  def ckpt_dir(self) -> Path:
    return self.path / wd.CHECKPOINTS

  def new_window(self):
    self.window = dict(loss=0.0, rl_loss=0.0, spr_loss=0.0, updates=0, returns=[])


@dataclasses.dataclass
class _Group:
  learner: SPRLearner
  runs: list[_Run]
  state: TrainState  # stacked over runs
  step: int  # env steps done by every run of the group
  actions: np.ndarray  # [N] int32, the pending actions
  frames: np.ndarray  # [N, 84, 84] uint8, the frames the pending actions are taken from
  t_window: float = 0.0
  step_window: int = 0


def train_many(specs: list[RunSpec], config: SPRConfig, config_name: str = "spr",
               progress: bool | None = None, env_workers: int = -1) -> list[dict]:
  """Trains (or resumes) every run of `specs` together; returns their final.json contents in
  the order of `specs`. Finished runs are skipped (their final.json is returned).

  `env_workers`: processes stepping the envs (training and evaluation); 0: in this process;
  -1: `envs.pool.auto_workers` for the evaluation's env count. Results do not depend on it."""
  if len({Path(s.workdir).resolve() for s in specs}) != len(specs):
    raise ValueError("two runs share a workdir")
  specs = [RunSpec(games.canonical_name(s.game), int(s.seed), s.workdir) for s in specs]
  # SGI finetuning: every new run's --init_from checkpoint is loaded and checked (the single-run
  # logic, per run; the file is read once and shared) before any workdir is created, so a mismatch
  # leaves nothing behind.
  memo: dict = {}
  pretrained = [
      single._pretrained_for_new_run(config, s.game, s.workdir, memo)  # pylint: disable=protected-access
      for s in specs]
  del memo
  for spec in specs:  # one writer per workdir: refuse before anything is written
    try:
      wd.acquire_lock(spec.workdir)
    except wd.WorkdirError:
      for other in specs:
        wd.release_lock(other.workdir)
      raise
  try:
    return _train_many(specs, config, config_name, progress, env_workers, pretrained)
  finally:
    for spec in specs:
      wd.release_lock(spec.workdir)


def _train_many(specs: list[RunSpec], config: SPRConfig, config_name: str,
                progress: bool | None, env_workers: int, pretrained: list) -> list[dict]:
  finals: dict[int, dict] = {}
  unfinished: list[tuple[int, Path]] = []
  for index, spec in enumerate(specs):
    # A lost config.json comes back from its checkpoints' record (see trainer.train).
    checkpoint.restore_missing_config(Path(spec.workdir) / wd.CONFIG,
                                      Path(spec.workdir) / wd.CHECKPOINTS)
    path = wd.prepare(spec.workdir, single.run_identity(config_name, spec.game, spec.seed, config),
                      LEGACY_VALUES)
    if wd.is_finished(path):
      finals[index] = wd.read_final(path)
      logging.info("run in %s already finished; skipped", path)
    else:
      unfinished.append((index, path))
  # One pool steps the training envs and the evaluations' (R runs x episodes).
  episodes = max(config.eval_episodes, config.eval_every_episodes if config.eval_every else 0, 1)
  workers = resolve_workers(env_workers, len(unfinished) * episodes) if unfinished else 0
  pending: list[tuple[int, _Run, SPRLearner, TrainState]] = []
  with EnvPool(workers) as pool:
    if workers:
      logging.info("envs stepped by %d worker processes", workers)
    for index, path in unfinished:
      pending.append((index, *_start_run(specs[index], path, config, pretrained[index], pool)))
      pretrained[index] = None  # loaded: free it
    started = [(index, run) for index, run, _, _ in pending]
    _train_and_evaluate(pending, config, config_name, progress, pool, finals)

  failed = [run.failed for _, run in started if run.failed]
  if failed:
    raise single.NonFiniteLossError("; ".join(failed))
  return [finals[i] for i in range(len(specs))]


def _train_and_evaluate(pending: list, config: SPRConfig, config_name: str,
                        progress: bool | None, pool: EnvPool, finals: dict[int, dict]) -> None:
  """Trains the started runs of `pending` in groups, then evaluates them; fills `finals`."""
  groups = _make_groups(pending)
  index_of = {id(run): index for index, run, _, _ in pending}
  # The groups hold the stacked states: drop the per-run copies (replays) from here on.
  pending.clear()
  for g in groups:
    logging.info("batch of %d runs (%d actions) from step %d: %s", len(g.runs),
                 g.learner.num_actions, g.step,
                 ", ".join(f"{r.spec.game}/seed_{r.spec.seed}" for r in g.runs))
  if not groups:
    return
  with single._TermFlag() as term:  # pylint: disable=protected-access
    _loop(groups, config, term, pool, progress)
  for learner, runs, acting in _final_groups(groups):
    for run, final in zip(runs, _final_evaluations(learner, runs, acting, config, config_name,
                                                   pool)):
      finals[index_of[id(run)]] = final


def _start_run(spec: RunSpec, path: Path, config: SPRConfig, pretrained: dict | None,
               pool: EnvPool) -> tuple[_Run, SPRLearner, TrainState]:
  """A run's host objects, learner and state: the single-run start (fresh init + pretrained
  weights, or the run's own checkpoint) on a local env, per run before stacking, so that a run
  starts in a batch exactly as alone; the env's state then moves into the pool (exact)."""
  env = games.make_env(spec.game, seed=spec.seed, training=True, protocol=config.env_protocol)
  learner = learner_for(config, env.num_actions)
  state, host, resumed = single.start_or_resume(learner, env, spec.seed,
                                                path / wd.CHECKPOINTS, pretrained,
                                                wd.read_json(path / wd.CONFIG))
  [handle] = pool.add([dict(game=spec.game, seed=spec.seed, training=True,
                            protocol=config.env_protocol)])
  pool.set_state([handle], [env.get_state()])
  env.close()
  run = _Run(spec, path, handle, host, wd.MetricsLog(path))
  run.metrics_log.truncate_after(run.host["step"] if resumed else -1)  # see trainer.train
  if resumed:
    logging.info("resumed %s at step %d", path, run.host["step"])
  return run, learner, state


def _make_groups(pending) -> list[_Group]:
  by_key: dict[tuple[int, int], list] = {}
  for _, run, learner, state in pending:
    by_key.setdefault((learner.num_actions, run.host["step"]), []).append((run, learner, state))
  groups = []
  for (_, step), members in sorted(by_key.items()):
    runs = [m[0] for m in members]
    groups.append(_Group(
        learner=members[0][1], runs=runs, state=stack_states([m[2] for m in members]), step=step,
        actions=np.array([r.host["action"] for r in runs], np.int32),
        frames=np.stack([r.host["frame"] for r in runs])))
    for r in runs:
      r.new_window()
  return groups


def _loop(groups: list[_Group], config: SPRConfig, term, pool: EnvPool, progress) -> None:
  t_start = time.perf_counter() - max(r.host["elapsed"] for g in groups for r in g.runs)
  for g in groups:
    g.t_window, g.step_window = time.perf_counter(), g.step
  bar = single._progress_bar(config.steps, min(g.step for g in groups), progress)  # pylint: disable=protected-access
  single._announce_device(config)  # pylint: disable=protected-access
  compiled = set()
  while True:
    active = [g for g in groups if g.step < config.steps]
    if not active:
      break
    # 1. Step every env of every active group (in parallel when the pool has workers).
    handles = [r.env_handle for g in active for r in g.runs]
    frames, rewards, terminals, infos = pool.step(
        handles, [int(a) for g in active for a in g.actions])
    stacks = pool.stacks(handles)
    # 2. Dispatch every group's batched learner step, then fetch all actions at once.
    outputs, k = [], 0
    for g in active:
      rows = slice(k, k + len(g.runs))
      k += len(g.runs)
      done = g.step + 1
      num_updates = updates_at(config, done)
      reset = is_reset_step(config, done)
      if num_updates and (id(g), reset) not in compiled:  # a silent minute is not a hang
        compiled.add((id(g), reset))
        single._log(bar, "compiling the learner update of a batch of %d runs (%d actions)%s: "  # pylint: disable=protected-access
                    "about a minute on a CPU", len(g.runs), g.learner.num_actions,
                    ", with a reset" if reset else "")
        if bar is not None and not reset:  # the random phase ran faster: estimate from here
          bar.reset(total=config.steps)
          bar.update(min(x.step for x in groups))
      fn = batched_step(g.learner, num_updates, reset)
      g.state, next_actions, m = fn(g.state, g.frames, g.actions, clip_reward(rewards[rows]),
                                    terminals[rows], stacks[rows])
      outputs.append((g, (frames[rows], infos[rows]), next_actions, m))
    fetched = jax.device_get([(o[2], o[3]) for o in outputs])
    # 3. Host bookkeeping per run: metrics, episodes, logs, checkpoints.
    preempted = term is not None and term.set
    for (g, (next_frames, step_infos), _, _), (next_actions, m) in zip(outputs, fetched):
      g.actions = np.asarray(next_actions, np.int32)
      g.frames = next_frames
      g.step += 1
      _bookkeeping(g, step_infos, m, config, t_start, bar)
      if config.eval_every and g.step % config.eval_every == 0 and g.step < config.steps:
        _periodic_evaluation(g, config, time.perf_counter() - t_start, pool)
      if g.step % config.checkpoint_every == 0 or g.step == config.steps or preempted:
        _checkpoint(g, config, t_start, pool)
    if bar is not None:
      bar.update(1)
    if preempted:
      raise single.Preempted(
          f"{term.name}: checkpointed {sum(len(g.runs) for g in groups)} runs; rerun the same "
          "command to resume", term.exit_code)
  if bar is not None:
    bar.close()


def _bookkeeping(g: _Group, infos: list[dict], m, config: SPRConfig, t_start: float,
                 bar=None) -> None:
  done = g.step
  for i, run in enumerate(g.runs):
    if run.failed:
      continue
    if not m.finite[i]:
      last = checkpoint.checkpoint_steps(run.ckpt_dir)
      run.failed = (f"{run.spec.game} seed {run.spec.seed}: non-finite loss at env step {done}; "
                    f"last good checkpoint: {'step ' + str(last[-1]) if last else 'none'} in "
                    f"{run.ckpt_dir}")
      logging.error(run.failed)
      continue
    w = run.window
    w["loss"] += float(m.loss[i])
    w["rl_loss"] += float(m.rl_loss[i])
    w["spr_loss"] += float(m.spr_loss[i])
    w["updates"] += int(m.updates[i])
    info = infos[i]
    if info.get("game_over"):
      w["returns"].append(float(info["episode_return"]))
      run.host["episodes"].append((float(info["episode_return"]), int(info["episode_length"])))
  if done % config.log_every == 0 or done == config.steps:
    now = time.perf_counter()
    rate = (done - g.step_window) / max(now - g.t_window, 1e-9)
    losses = []
    for run in g.runs:
      if run.failed:
        continue
      w = run.window
      n_upd = max(w["updates"], 1)
      record = dict(
          step=done, time_s=round(now - t_start, 3), steps_per_s=round(rate, 2),
          updates=int(updates_through(config, done)),
          loss=w["loss"] / n_upd, rl_loss=w["rl_loss"] / n_upd, spr_loss=w["spr_loss"] / n_upd,
          episodes=len(w["returns"]),
          train_return=float(np.mean(w["returns"])) if w["returns"] else None,
          batch_runs=len(g.runs))
      run.metrics_log.write(record)
      losses.append(record["loss"])
      run.new_window()
    if done > config.learn_start:
      single._log(bar, "step %d/%d | %d runs (%d actions) | %.1f steps/s per run, %.0f total | "  # pylint: disable=protected-access
                  "mean loss %.4f", done, config.steps, len(g.runs), g.learner.num_actions,
                  rate, rate * len(g.runs), float(np.mean(losses)) if losses else float("nan"))
    else:
      single._log(bar, "step %d/%d | %d runs (%d actions) | %.1f steps/s per run | random "  # pylint: disable=protected-access
                  "actions, no updates before step %d", done, config.steps, len(g.runs),
                  g.learner.num_actions, rate, config.learn_start + 1)
    g.t_window, g.step_window = now, done


def _checkpoint(g: _Group, config: SPRConfig, t_start: float, pool: EnvPool) -> None:
  elapsed = time.perf_counter() - t_start
  env_states = pool.get_state([run.env_handle for run in g.runs])
  for i, (run, st) in enumerate(zip(g.runs, unstack_host(g.state, len(g.runs)))):
    run.host.update(step=g.step, frame=g.frames[i].copy(), action=int(g.actions[i]),
                    elapsed=elapsed)
    if run.failed:
      continue
    checkpoint.save(run.ckpt_dir, g.step, st, dict(run.host, env=env_states[i]),
                    keep=config.checkpoint_keep,
                    config=checkpoint.read_settings(run.path / wd.CONFIG))


# ------------------------------------------------------------------------------ evaluation
# Envs alive at once in one batched evaluation (each holds an emulator, ~1 MB of host memory);
# a group with more runs x episodes is evaluated in chunks of whole runs.
MAX_EVAL_ENVS = 4096


@functools.lru_cache(maxsize=None)
def batched_greedy(learner: SPRLearner):
  """The single-run greedy action function (noise off) over a leading run axis of the acting
  parameters and the stacks, jitted: one call acts for every episode of every run.

  vmapped on accelerators; on CPU `lax.map` (a loop over runs inside the one call), where
  convolutions vmapped over per-run weights are slow: about 2x slower than mapped or separate
  calls for the SPR network (`python -m launch.bench --probes`, docs/BENCHMARKS.md); the mapped
  actions equal the separate calls'."""
  greedy = learner._greedy_actions  # pylint: disable=protected-access
  if jax.default_backend() == "cpu":
    return jax.jit(lambda acting, stacks: jax.lax.map(lambda a: greedy(*a), (acting, stacks)))
  return jax.jit(jax.vmap(greedy))


def make_runs_eval_act_fn(learner: SPRLearner, acting: Any, batch: int):
  """`envs.evaluation.evaluate_runs`'s act_fn for acting parameters stacked over R runs: uint8
  [R, B, 4, 84, 84] -> [R, B]. Pads every run to `batch` rows, as the single-run act function
  (trainer.make_eval_act_fn) does, so each run's network sees the batch shape it sees alone and
  the evaluation compiles once."""
  fn = batched_greedy(learner)

  def act(stacks: np.ndarray) -> np.ndarray:
    n = stacks.shape[1]
    if n >= batch:
      return np.asarray(fn(acting, stacks))
    padded = np.zeros((stacks.shape[0], batch) + stacks.shape[2:], np.uint8)
    padded[:, :n] = stacks
    return np.asarray(fn(acting, padded))[:, :n]

  return act


def select_runs(tree: Any, rows: list[int]) -> Any:
  """Runs `rows` of a pytree stacked over runs (a gather on the device)."""
  index = np.asarray(rows, np.int32)
  return jax.tree.map(lambda x: x[index], tree)


def evaluate_stacked(learner: SPRLearner, acting: Any, runs: list[tuple[str, int]],
                     num_episodes: int, epsilon: float, pool: EnvPool | None = None,
                     protocol: str = "dopamine") -> list[list]:
  """`num_episodes` evaluation episodes of each run, all runs together: run r is (game, seed)
  `runs[r]` acting with row r of `acting` (stacked over runs). Returns one episode list per run,
  what `envs.evaluation.evaluate` returns for that run alone. `pool` steps the envs;
  `protocol`: the envs' (the runs' `config.env_protocol`)."""
  per_chunk = max(1, MAX_EVAL_ENVS // num_episodes)
  results: list[list] = []
  for lo in range(0, len(runs), per_chunk):
    rows = list(range(lo, min(lo + per_chunk, len(runs))))
    part = acting if len(rows) == len(runs) else select_runs(acting, rows)
    act = make_runs_eval_act_fn(learner, part, num_episodes)
    results.extend(evaluate_runs(act, runs[lo:lo + per_chunk], num_episodes, epsilon=epsilon,
                                 pool=pool, protocol=protocol))
  return results


def _live_acting(g: _Group) -> tuple[list[_Run], Any]:
  """The runs of a group still training (no non-finite loss) and their acting parameters."""
  live = [i for i, run in enumerate(g.runs) if not run.failed]
  acting = g.learner.acting_params(g.state)
  if len(live) < len(g.runs):
    acting = select_runs(acting, live)
  return [g.runs[i] for i in live], acting


def _periodic_evaluation(g: _Group, config: SPRConfig, elapsed: float, pool: EnvPool) -> None:
  """The single-run trainer's periodic evaluation for every live run of a group at once: the
  same seeds, episodes and metrics.jsonl line per run."""
  runs, acting = _live_acting(g)
  if not runs:
    return
  seeds = [(r.spec.game, single.periodic_eval_seed(r.spec.seed, g.step)) for r in runs]
  results = evaluate_stacked(g.learner, acting, seeds, config.eval_every_episodes,
                             config.eval_epsilon, pool, protocol=config.env_protocol)
  scores = []
  for run, episodes in zip(runs, results):
    record = single.eval_record(g.step, elapsed, episodes)
    run.metrics_log.write(record)
    scores.append(record["eval_mean_score"])
  single._log(None, "step %d: evaluation of %d runs (%d actions) over %d episodes each: mean "  # pylint: disable=protected-access
              "scores %s", g.step, len(runs), g.learner.num_actions,
              config.eval_every_episodes, ", ".join(f"{v:.2f}" for v in scores))


def _final_groups(groups: list[_Group]) -> list[tuple[SPRLearner, list[_Run], Any]]:
  """(learner, live runs, their stacked acting parameters) per action count: after training every
  run is at the last step, so groups that started from different steps (a resume) but share a
  learner are evaluated together (acting parameters concatenated along the run axis)."""
  parts: dict[SPRLearner, list] = {}
  for g in groups:
    runs, acting = _live_acting(g)
    if runs:
      parts.setdefault(g.learner, []).append((runs, acting))
  out = []
  for learner, members in parts.items():
    runs = [r for rs, _ in members for r in rs]
    actings = [a for _, a in members]
    acting = actings[0] if len(actings) == 1 else jax.tree.map(
        lambda *xs: jnp.concatenate(xs), *actings)
    out.append((learner, runs, acting))
  return out


def _final_evaluations(learner: SPRLearner, runs: list[_Run], acting: Any, config: SPRConfig,
                       config_name: str, pool: EnvPool) -> list[dict]:
  """The final evaluation of `runs` together; writes each run's eval.csv and final.json exactly
  as `trainer._final_evaluation` does for the run alone (same seeds and fields); returns them."""
  t0 = time.perf_counter()
  results: list[list] = [[] for _ in runs]
  if config.eval_episodes:
    logging.info("final evaluation of %d runs (%d actions) together, %d episodes each",
                 len(runs), learner.num_actions, config.eval_episodes)
    seeds = [(r.spec.game, single.final_eval_seed(r.spec.seed)) for r in runs]
    results = evaluate_stacked(learner, acting, seeds, config.eval_episodes, config.eval_epsilon,
                               pool, protocol=config.env_protocol)
  seconds = time.perf_counter() - t0  # each run waited for the whole batched evaluation
  return [single.write_final(run.path, episodes, run.host, run.spec.game, run.spec.seed, config,
                             config_name, seconds) for run, episodes in zip(runs, results)]


__all__ = ["RunSpec", "train_many", "run_workdir", "parse_seeds", "batched_step",
           "stack_states", "unstack_host", "batched_greedy", "make_runs_eval_act_fn",
           "select_runs", "evaluate_stacked"]
