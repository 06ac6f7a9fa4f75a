"""Benchmark of the SPR learner and the env: prints a table and the machine it ran on.

    python -m launch.bench                  # default SPR network, batch 32, K = 5
    python -m launch.bench --config=smoke   # tiny network (a quick check of the script)

Rows: ms per learner update after compilation (sampling from a filled device replay, the
loss, the gradient, Adam, the priority update - everything of one update), ms per fused env
step of the learner (replay add + `updates_per_step` updates + next action: what training pays per
env step), acting latency (one greedy action), and env steps/s of the training env. The update
time is also printed alone as `update_ms: <value>` for scripts.
"""
from __future__ import annotations

import os
import platform
import time

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", "spr", "Named configuration to benchmark.")
_GAME = flags.DEFINE_string("game", "Pong", "Game for the env rows (sets the action count).")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per row (after warm-up).")
_FILL = flags.DEFINE_integer("fill", 5000, "Transitions put in replay before timing.")


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
  return (f"{cpu} ({os.cpu_count()} cores visible), JAX {jax.__version__} on "
          f"{jax.default_backend()} [{devices}]")


def _time(fn, repeats: int) -> float:
  """Median wall time of `fn()` in ms; `fn` must block until its result is ready."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append((time.perf_counter() - t0) * 1e3)
  times.sort()
  return times[len(times) // 2]


def main(argv):
  del argv
  import jax
  import numpy as np

  from agents.spr.config import make_config
  from agents.spr.learner import SPRLearner, param_count
  from envs.atari import AtariEnv
  from spr import replay

  config = make_config(_CONFIG.value)
  env = AtariEnv(_GAME.value, seed=0)
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

  stack = env.stack

  def one_step():
    holder[0], action, m = learner.step(holder[0], frame, np.int32(0), np.float32(0.0),
                                        np.bool_(False), stack,
                                        num_updates=config.updates_per_step)
    jax.block_until_ready(action)

  one_step()
  step_ms = _time(one_step, max(_REPEATS.value // 2, 3))

  params = holder[0].params
  act = lambda: jax.block_until_ready(learner.greedy_actions(params, stack[None]))
  act()
  act_ms = _time(act, 50)

  rows = [
      ("learner update (ms)", f"{update_ms:.1f}"),
      (f"fused env step: add + {config.updates_per_step} updates + act (ms)", f"{step_ms:.1f}"),
      ("acting latency, 1 state (ms)", f"{act_ms:.2f}"),
      ("env steps/s (training env, random actions)", f"{env_only:.0f}"),
      ("replay fill: env + device add (steps/s)", f"{env_rate:.0f}"),
      ("update compile time (s)", f"{compile_s:.1f}"),
  ]
  print(f"SPR benchmark: config={_CONFIG.value}, batch {config.batch_size}, "
        f"K={config.spr_steps}, n={config.n_step}, {param_count(params):,} parameters, "
        f"game {_GAME.value}")
  print(f"machine: {machine_description()}")
  width = max(len(r[0]) for r in rows)
  print(f"| {'measure'.ljust(width)} | value |")
  print(f"|{'-' * (width + 2)}|-------|")
  for name, value in rows:
    print(f"| {name.ljust(width)} | {value} |")
  print(f"update_ms: {update_ms:.1f}")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
