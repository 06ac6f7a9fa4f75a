"""Benchmark of the SPR learner and the env: prints a table and the machine it ran on.

    python -m launch.bench                  # default SPR network, batch 32, K = 5
    python -m launch.bench --config=smoke   # tiny network (a quick check of the script)

Rows: ms per learner update after compilation (sampling from a filled device replay, the
loss, the gradient, Adam, the priority update - everything of one update), ms per fused env
step of the learner (replay add + `updates_per_step` updates + next action: what training pays per
env step), acting latency (one greedy action), and env steps/s of the training env. The update
time is also printed alone as `update_ms: <value>` for scripts.

Then the multi-run table (agents/spr/engine.py): for N concurrent runs (`--runs`, default
1,2,4; on a GPU use --runs=1,4,16,26), one vmapped fused step (replay add + updates + next action
for all N runs, replay filled with `--fill` transitions), and N emulators stepped in this process
and by env worker processes (envs.pool.EnvPool, what training uses). Columns: learner updates/s and env steps/s (all runs together), the env's own
steps/s, the end-to-end env steps/s of the training loop (learner call + env stepping, which
run one after the other), the speed-up over N = 1, and the memory of the replay frames.

    python -m launch.bench --runs=1,2,4 --multi_configs=smoke,bbf_smoke   # the CPU default
    python -m launch.bench --runs=1,4,16,26 --multi_configs=spr,bbf_rr2,bbf   # on one GPU
    python -m launch.bench --memory=spr,bbf,sgi   # train-state memory of 1 and 26 runs (shapes)
    python -m launch.bench --probes   # env threads vs processes, eval act vmap/map, init jit

`--json=PATH` also appends every row to PATH as one JSON object per line (key `table`: "single",
"multi" or "probes"), written and flushed as each row is measured, so that a run killed part way
(launch/gpu_suite.py time-boxes it) keeps the rows it finished. The multi-run table's rows are
printed as they are measured for the same reason.
"""

from __future__ import annotations

import json
import os
import platform
import time

from absl import flags

from launch import common

_CONFIG = flags.DEFINE_string(
    "config",
    "spr",
    "Named configuration to benchmark (with --probes: " "the network of the evaluation-act rows).",
)
_GAME = flags.DEFINE_string("game", "Pong", "Game for the env rows (sets the action count).")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per row (after warm-up).")
_FILL = flags.DEFINE_integer("fill", 5000, "Transitions put in replay before timing.")
_RUNS = flags.DEFINE_string(
    "runs", "1,2,4", "Concurrent runs of the multi-run table ('' skips " "it; on a GPU: 1,4,16,26)."
)
_MULTI_CONFIGS = flags.DEFINE_string(
    "multi_configs",
    None,
    "Configs of the multi-run table (default: spr,bbf on a GPU, "
    "smoke,bbf_smoke on CPU, where BBF costs ~6 s per update).",
)
_SINGLE = flags.DEFINE_boolean("single", True, "Print the single-run table first.")
_ENV_WORKERS = flags.DEFINE_integer(
    "env_workers", 0, "Worker processes of the env rows " "(0: min(N, cores))."
)
_PROBES = flags.DEFINE_boolean(
    "probes",
    False,
    "Only print the design probes: env stepping in a "
    "loop vs 2 threads (does the ALE release the GIL?) vs 2 worker "
    "processes, the batched "
    "evaluation act vmapped vs lax.map vs separate calls, network init "
    "eager vs jitted.",
)
_MEMORY = flags.DEFINE_string(
    "memory",
    "",
    "Only print the train-state memory of these configs "
    "(comma-separated) for 1 and 26 runs, from shapes (no device work).",
)
_JSON = flags.DEFINE_string(
    "json",
    "",
    "Also append each row, as soon as it is measured, to this "
    "file as a JSON line (a killed run keeps its finished rows).",
)


def _emit(table: str, **fields) -> None:
  """Appends one row to the --json file (if any), flushed: a row survives a later kill."""
  if not _JSON.value:
    return
  with open(_JSON.value, "a") as f:
    f.write(json.dumps(dict(table=table, **fields)) + "\n")


def machine_description() -> str:
  import jax

  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
  return (
      f"{cpu} ({os.cpu_count()} cores visible), JAX {jax.__version__} on "
      f"{jax.default_backend()} [{devices}]"
  )


def state_bytes(config, num_actions: int) -> int:
  """Bytes of one run's TrainState (parameters, optimiser, EMA target, replay with its single
  frames, RNG, counters), from shapes alone (jax.eval_shape: nothing is allocated)."""
  import jax

  from agents.spr.learner import SPRLearner

  shapes = jax.eval_shape(SPRLearner(config, num_actions).init, jax.random.PRNGKey(0))
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(shapes))


def _time(fn, repeats: int) -> float:
  """Median wall time of `fn()` in ms; `fn` must block until its result is ready."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append((time.perf_counter() - t0) * 1e3)
  times.sort()
  return times[len(times) // 2]


def multi_run_table(
    config_names: list[str],
    runs: list[int],
    game: str,
    fill: int,
    repeats: int,
    env_workers: int,
    on_row=None,
) -> list[dict]:
  """Times the vmapped multi-run step and N emulators; returns one row per (config, N).

  `on_row(row)` is called as each row is measured (rows come config by config, N increasing);
  the env rates of N emulators are measured when a row first needs them."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from agents.spr import engine
  from agents.spr.config import make_config
  from agents.spr.learner import learner_for
  from envs.atari import AtariEnv
  from envs.pool import available_cores
  from spr import replay

  rows = []
  env_rate = {}

  def env_rates(n: int, protocol: str) -> tuple[float, float, int]:
    # Each config's runs step envs of its own protocol (the "spr" env is a little cheaper).
    if (n, protocol) not in env_rate:
      workers = env_workers or min(n, available_cores())
      env_rate[n, protocol] = (*_pool_rates(n, max(20, 400 // n), workers, game, protocol), workers)
    return env_rate[n, protocol]

  probe = AtariEnv(game, seed=0)
  num_actions = probe.num_actions
  probe.close()

  for name in config_names:
    config = make_config(name)
    learner = learner_for(config, num_actions)
    add = jax.jit(
        lambda b, key: jax.lax.fori_loop(
            0,
            fill,
            lambda i, b: replay.replay_add(
                b,
                jax.random.randint(jax.random.fold_in(key, i), (84, 84), 0, 255).astype(jnp.uint8),
                i % num_actions,
                0.0,
                (i % 500) == 499,
            ),
            b,
        ),
        donate_argnums=0,
    )
    base_rate = None
    for n in runs:
      states = []
      for i in range(n):
        st = learner.init(jax.random.PRNGKey(i))
        st = st._replace(
            replay=add(st.replay, jax.random.PRNGKey(100 + i)),
            env_step=jnp.asarray(max(config.learn_start, fill), jnp.int32),
        )
        states.append(st)
      state = engine.stack_states(states)
      del states
      fn = engine.batched_step(learner, config.updates_per_step)
      frames = np.zeros((n, 84, 84), np.uint8)
      actions = np.zeros((n,), np.int32)
      rewards = np.zeros((n,), np.float32)
      terms = np.zeros((n,), np.bool_)
      stacks = np.zeros((n, 4, 84, 84), np.uint8)
      holder = [state]

      def call():
        holder[0], act, _ = fn(holder[0], frames, actions, rewards, terms, stacks)
        jax.block_until_ready(act)

      t0 = time.perf_counter()
      call()
      compile_s = time.perf_counter() - t0
      step_ms = _time(call, max(3, repeats // max(1, n // 4)))
      learner_rate = n / (step_ms / 1e3)
      loop, pooled, workers = env_rates(n, config.env_protocol)
      env_best = max(loop, pooled)
      end_to_end = n / (step_ms / 1e3 + n / env_best)
      base_rate = base_rate or end_to_end
      # The process's peak so far (JAX cannot reset it): with N increasing within a config, the
      # peak of the largest N yet, i.e. of this row, if the config runs in a process of its own.
      mem = None
      try:
        stats = jax.devices()[0].memory_stats() or {}
        mem = stats.get("peak_bytes_in_use")
      except Exception:  # noqa: BLE001 - CPU backends have no memory stats
        pass
      rows.append(
          dict(
              config=name,
              runs=n,
              step_ms=step_ms,
              updates_per_s=learner_rate * config.updates_per_step,
              learner_steps_per_s=learner_rate,
              env_loop=loop,
              env_workers=pooled,
              workers=workers,
              end_to_end=end_to_end,
              speedup=end_to_end / base_rate,
              replay_gb=n * config.replay_capacity * 84 * 84 / 1e9,
              state_gb=n * state_bytes(config, learner.num_actions) / 1e9,
              device_peak_gb=None if mem is None else mem / 1e9,
              compile_s=compile_s,
          )
      )
      if on_row is not None:
        on_row(rows[-1])
      holder.clear()
      del state
  return rows


def print_multi_table(rows: list[dict]) -> None:
  _print_multi_header()
  for r in rows:
    _print_multi_row(r)


def _print_multi_header() -> None:
  print(f"multi-run table (one vmapped step per env step; machine: {machine_description()})")
  print(
      "| config | runs | fused step (ms) | updates/s | learner env steps/s | env steps/s "
      "in process / workers | end-to-end env steps/s | vs 1 run | replay frames (GB) | "
      "train states (GB) | device peak (GB) | compile (s) |"
  )
  print("|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)


def _print_multi_row(r: dict) -> None:
  peak = "-" if r["device_peak_gb"] is None else f"{r['device_peak_gb']:.1f}"
  print(
      f"| {r['config']} | {r['runs']} | {r['step_ms']:.1f} | {r['updates_per_s']:.1f} | "
      f"{r['learner_steps_per_s']:.1f} | {r['env_loop']:.0f} / {r['env_workers']:.0f} "
      f"({r['workers']}) | {r['end_to_end']:.1f} | {r['speedup']:.2f}x | "
      f"{r['replay_gb']:.2f} | {r['state_gb']:.2f} | {peak} | {r['compile_s']:.0f} |",
      flush=True,
  )


def _multi_table_streamed(names: list[str], runs: list[int]) -> None:
  """The multi-run table, each row printed (and written to --json) as soon as it is measured."""
  _print_multi_header()

  def on_row(row: dict) -> None:
    _print_multi_row(row)
    _emit("multi", **row)

  multi_run_table(
      names, runs, _GAME.value, _FILL.value, _REPEATS.value, _ENV_WORKERS.value, on_row=on_row
  )


def print_memory_table(config_names: list[str], actions: int = 18) -> None:
  """Device memory of the train states (what stays resident) of 1 and 26 runs; activations and
  XLA scratch come on top (the multi-run table's device peak column measures them on a GPU)."""
  from agents.spr.config import make_config

  print(f"train-state memory from shapes ({actions} actions, the largest action set)")
  print("| config | replay frames per run (GB) | train state per run (GB) | 26 runs (GB) |")
  print("|---|---|---|---|")
  for name in config_names:
    config = make_config(name)
    per_run = state_bytes(config, actions) / 1e9
    print(
        f"| {name} | {config.replay_capacity * 84 * 84 / 1e9:.3f} | {per_run:.3f} | "
        f"{26 * per_run:.1f} |"
    )


def _loop_vs_threads(step_fns: list, steps: int) -> tuple[float, float]:
  """Calls per second of each fn in `step_fns` called `steps` times, in a loop and with one
  thread per fn (all together)."""
  import threading

  def work(fn):
    for _ in range(steps):
      fn()

  t0 = time.perf_counter()
  for fn in step_fns:
    work(fn)
  loop = len(step_fns) * steps / (time.perf_counter() - t0)
  threads = [threading.Thread(target=work, args=(fn,)) for fn in step_fns]
  t0 = time.perf_counter()
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  return loop, len(step_fns) * steps / (time.perf_counter() - t0)


def _pool_rates(
    n: int, steps: int, workers: int, game: str = "Breakout", protocol: str = "dopamine"
) -> list[float]:
  """Agent steps/s of `n` envs of `game` (env `protocol`) stepped together as the training loop
  steps them (random actions in, frames and stacks out) by an EnvPool in this process and by an
  EnvPool of `workers` processes."""
  import numpy as np

  from envs.pool import EnvPool

  rates = []
  for count in (0, workers):
    with EnvPool(count) as pool:
      handles = pool.add([dict(game=game, seed=i, protocol=protocol) for i in range(n)])
      pool.reset(handles)
      num_actions = pool.num_actions(handles[0])
      rng = np.random.default_rng(0)
      pool.step(handles, rng.integers(num_actions, size=n))  # warm-up
      t0 = time.perf_counter()
      for _ in range(steps):
        pool.step(handles, rng.integers(num_actions, size=n))
        pool.stacks(handles)
      rates.append(n * steps / (time.perf_counter() - t0))
  return rates


def print_probes(config_name: str = "spr") -> None:
  """Measurements behind three design choices (agents/spr/engine.py, learner.init); the
  evaluation-act rows use the network of `config_name`."""
  import jax
  import numpy as np

  from agents.spr import engine, evaluation
  from agents.spr.config import make_config
  from agents.spr.learner import SPRLearner
  from envs.atari import AtariEnv
  from envs.pool import available_cores

  rows = []
  envs = [AtariEnv("Breakout", seed=i) for i in range(2)]
  for env in envs:
    env.reset()

  def raw_act(env, rng=np.random.default_rng(0)):
    ale = env.ale
    ale.act(int(rng.integers(0, 4)))
    if ale.game_over():
      ale.reset_game()

  loop, threads = _loop_vs_threads([lambda e=e: raw_act(e) for e in envs], 4000)
  rows.append(("raw ALE act, 2 envs: loop / 2 threads (frames/s)", f"{loop:.0f} / {threads:.0f}"))
  loop, threads = _loop_vs_threads(
      [lambda e=e: e.step(int(np.random.randint(4))) for e in envs], 1000
  )
  rows.append(
      ("AtariEnv.step, 2 envs: loop / 2 threads (agent steps/s)", f"{loop:.0f} / {threads:.0f}")
  )
  workers = min(2, available_cores())
  rows.append(
      (
          f"EnvPool.step + stacks, 16 envs: in process / {workers} workers (agent steps/s)",
          " / ".join(f"{r:.0f}" for r in _pool_rates(16, 150, workers)),
      )
  )

  learner = SPRLearner(make_config(config_name), 6)
  net = "SPR net" if config_name == "spr" else f"{config_name} net"
  states = [learner.init(jax.random.PRNGKey(i)) for i in range(2)]
  acting = engine.stack_states([learner.acting_params(s) for s in states])
  stacks = np.random.default_rng(0).integers(0, 255, (2, 100, 4, 84, 84), dtype=np.uint8)
  greedy = learner._greedy_actions  # pylint: disable=protected-access
  vmapped = jax.jit(jax.vmap(greedy))
  mapped = jax.jit(lambda a, s: jax.lax.map(lambda x: greedy(*x), (a, s)))
  separate = lambda: [
      learner.greedy_actions(learner.acting_params(s), stacks[i]) for i, s in enumerate(states)
  ]
  batched = evaluation.batched_greedy(learner)  # what training uses on this backend
  one = np.ascontiguousarray(stacks[:, :1])
  for name, fn in (
      ("vmap", lambda: vmapped(acting, stacks)),
      ("lax.map", lambda: mapped(acting, stacks)),
      ("separate calls", separate),
      # The tail of an evaluation: one episode left per run, padded to the full
      # width (what the act function does) or not.
      ("1 stack per run, unpadded", lambda: batched(acting, one)),
  ):
    jax.block_until_ready(fn())
    ms = _time(lambda: jax.block_until_ready(fn()), 7)
    rows.append(
        (
            f"evaluation act, {net}, 2 runs x 100 stacks, {name} (ms)"
            if "1 stack" not in name
            else f"evaluation act, {net}, 2 runs x {name} (ms)",
            f"{ms:.1f}",
        )
    )

  smoke = SPRLearner(make_config("smoke"), 6)
  t0 = time.perf_counter()
  jax.block_until_ready(smoke._init(jax.random.PRNGKey(0)))  # pylint: disable=protected-access
  eager = time.perf_counter() - t0
  t0 = time.perf_counter()
  jax.block_until_ready(jax.jit(smoke._init)(jax.random.PRNGKey(0)))  # pylint: disable=protected-access
  jitted = time.perf_counter() - t0
  rows.append(("smoke learner init, first call: eager / jitted (s)", f"{eager:.1f} / {jitted:.1f}"))
  print(f"design probes; machine: {machine_description()}")
  _print_rows("probe", rows)
  _emit(
      "probes",
      config=config_name,
      machine=machine_description(),
      rows=[dict(name=name, value=value) for name, value in rows],
  )


def _print_rows(header: str, rows: list[tuple[str, str]]) -> None:
  """A two-column Markdown table (name | value)."""
  width = max(len(r[0]) for r in rows)
  print(f"| {header.ljust(width)} | value |")
  print(f"|{'-' * (width + 2)}|-------|")
  for name, value in rows:
    print(f"| {name.ljust(width)} | {value} |")


def main():
  import jax

  if _PROBES.value:
    print_probes(_CONFIG.value)
    return
  if _MEMORY.value:
    print_memory_table([n for n in _MEMORY.value.split(",") if n])
    return
  if _RUNS.value:
    runs = [int(v) for v in _RUNS.value.split(",") if v.strip()]
    names = _MULTI_CONFIGS.value
    if names is None:
      names = "spr,bbf" if jax.default_backend() != "cpu" else "smoke,bbf_smoke"
    if not _SINGLE.value:
      _multi_table_streamed(names.split(","), runs)
      return
  _single_table()
  if _RUNS.value:
    _multi_table_streamed(names.split(","), runs)


def _single_table():
  import jax
  import numpy as np

  from agents.spr.config import make_config
  from agents.spr.learner import SPRLearner, param_count
  from envs.atari import AtariEnv
  from spr import replay

  config = make_config(_CONFIG.value)
  env = AtariEnv(_GAME.value, seed=0, protocol=config.env_protocol)
  learner = SPRLearner(config, env.num_actions)
  state = learner.init(jax.random.PRNGKey(0))

  # Fill replay with real frames from random play so sampling sees a realistic buffer.
  rng = np.random.default_rng(0)
  frame = env.reset()
  add = jax.jit(replay.replay_add, donate_argnums=0)
  t0 = time.perf_counter()
  buffer = state.replay
  for _ in range(_FILL.value):
    action = int(rng.integers(env.num_actions))
    nxt, reward, terminal, _ = env.step(action)
    buffer = add(buffer, frame, np.int32(action), np.float32(np.sign(reward)), np.bool_(terminal))
    frame = nxt
  jax.block_until_ready(buffer)
  env_rate = _FILL.value / (time.perf_counter() - t0)
  state = state._replace(replay=buffer, env_step=np.int32(config.learn_start))

  # Env alone.
  t0 = time.perf_counter()
  for _ in range(2000):
    env.step(int(rng.integers(env.num_actions)))
  env_only = 2000 / (time.perf_counter() - t0)

  update = jax.jit(learner.update, donate_argnums=0)
  holder = [state]

  def one_update():
    holder[0], m = update(holder[0])
    jax.block_until_ready(m.loss)

  t0 = time.perf_counter()
  one_update()
  compile_s = time.perf_counter() - t0
  one_update()
  update_ms = _time(one_update, _REPEATS.value)
  # The update's row first: the fused step's compile (all updates unrolled) may be cut short.
  _emit(
      "single",
      config=_CONFIG.value,
      game=_GAME.value,
      batch_size=config.batch_size,
      updates_per_step=config.updates_per_step,
      machine=machine_description(),
      update_ms=update_ms,
      env_steps_per_s=env_only,
      fill_steps_per_s=env_rate,
      compile_s=compile_s,
      partial=True,
  )

  stack = env.stack

  def one_step():
    holder[0], action, m = learner.step(
        holder[0],
        frame,
        np.int32(0),
        np.float32(0.0),
        np.bool_(False),
        stack,
        num_updates=config.updates_per_step,
    )
    jax.block_until_ready(action)

  one_step()
  step_ms = _time(one_step, max(_REPEATS.value // 2, 3))

  acting = learner.acting_params(holder[0])
  act = lambda: jax.block_until_ready(learner.greedy_actions(acting, stack[None]))
  act()
  act_ms = _time(act, 50)

  # Representation diagnostics (SPRLearner.diagnostics): one call every `diagnostics_every`
  # env steps, i.e. every diagnostics_every * updates_per_step updates.
  diagnose = jax.jit(learner.diagnostics)
  diag = lambda: jax.block_until_ready(diagnose(holder[0]))
  diag()
  diag_ms = _time(diag, max(_REPEATS.value // 4, 3))
  every = config.diagnostics_every or make_config("spr").diagnostics_every
  diag_share = diag_ms / (diag_ms + every * config.updates_per_step * update_ms)

  rows = [
      ("learner update (ms)", f"{update_ms:.1f}"),
      (f"fused env step: add + {config.updates_per_step} updates + act (ms)", f"{step_ms:.1f}"),
      ("acting latency, 1 state (ms)", f"{act_ms:.2f}"),
      ("diagnostics call (ms)", f"{diag_ms:.1f}"),
      (f"diagnostics' share of update time, every {every} env steps", f"{100 * diag_share:.3f}%"),
      ("env steps/s (training env, random actions)", f"{env_only:.0f}"),
      ("replay fill: env + device add (steps/s)", f"{env_rate:.0f}"),
      ("update compile time (s)", f"{compile_s:.1f}"),
  ]
  print(
      f"SPR benchmark: config={_CONFIG.value}, batch {config.batch_size}, "
      f"K={config.spr_steps}, n={config.n_step}, {param_count(acting[0]):,} parameters, "
      f"game {_GAME.value}"
  )
  print(f"machine: {machine_description()}")
  _print_rows("measure", rows)
  print(f"update_ms: {update_ms:.1f}", flush=True)
  _emit(
      "single",
      config=_CONFIG.value,
      game=_GAME.value,
      batch_size=config.batch_size,
      updates_per_step=config.updates_per_step,
      parameters=param_count(acting[0]),
      machine=machine_description(),
      update_ms=update_ms,
      step_ms=step_ms,
      act_ms=act_ms,
      diagnostics_ms=diag_ms,
      diagnostics_share=diag_share,
      env_steps_per_s=env_only,
      fill_steps_per_s=env_rate,
      compile_s=compile_s,
      partial=False,
  )


def run():
  common.run(main)


if __name__ == "__main__":
  run()
