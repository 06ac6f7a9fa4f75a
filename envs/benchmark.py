"""Checks ale-py's C++ vector env against the gymnasium path and times both eval backends.

The gymnasium path is the "dopamine" env protocol (envs/atari.py); the "spr" protocol (bilinear
resize, an extra NOOP frame after a life loss) has no vector-env counterpart, its single env is
timed too.

    python -m envs.benchmark --game Pong --steps 20000 --num_envs 32 --threads 2

Prints: (1) whether the vector env's frames and rewards equal the gymnasium path's for the
same actions with no-ops off, (2) the no-op counts and the cap each draws/applies (where they
differ), (3) agent steps/s of one AtariEnv (each protocol), of a Python batch of AtariEnvs (what
evaluate() runs, random actions, no network) and of AtariVectorEnv.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from envs.atari import AtariEnv, make_preprocessed_env
from envs.games import get_game


def _vector_env(
    game: str, num_envs: int, threads: int, noop_max: int = 30, max_frames: int = 108_000
):
  from ale_py.vector_env import AtariVectorEnv

  return AtariVectorEnv(
      get_game(game).rom,
      num_envs,
      num_threads=threads,
      stack_num=1,
      noop_max=noop_max,
      use_fire_reset=False,
      reward_clipping=False,
      episodic_life=False,
      repeat_action_probability=0.0,
      max_num_frames_per_episode=max_frames,
  )


def check_frames(game: str, steps: int = 1000) -> int:
  """Number of steps whose frame or reward differ between the two paths (no-ops off)."""
  vec = _vector_env(game, 1, 1, noop_max=0)
  obs, _ = vec.reset(seed=0)
  gym_env = make_preprocessed_env(game, noop_max=0)
  frame, _ = gym_env.reset(seed=0)
  mismatches = int(not np.array_equal(obs[0, 0], frame))
  rng = np.random.default_rng(0)
  for _ in range(steps):
    action = int(rng.integers(gym_env.action_space.n))
    obs, reward, term, trunc, _ = vec.step(np.array([action]))
    frame, g_reward, g_term, g_trunc, _ = gym_env.step(action)
    mismatches += int(not np.array_equal(obs[0, 0], frame) or reward[0] != g_reward)
    if g_term or g_trunc or term[0] or trunc[0]:
      mismatches += int(bool(g_term) != bool(term[0]))
      break
  return mismatches


def noop_counts(game: str, n: int = 200) -> tuple[list[int], list[int]]:
  """Episode frame numbers right after reset (= no-ops taken): vector env, gymnasium path."""
  vec = _vector_env(game, n, 1)
  _, info = vec.reset(seed=0)
  env = make_preprocessed_env(game)
  env.reset(seed=0)
  gym_counts = []
  for _ in range(n):
    env.reset()
    gym_counts.append(env.unwrapped.ale.getEpisodeFrameNumber())
  return sorted(set(info["episode_frame_number"].tolist())), sorted(set(gym_counts))


def time_single(game: str, steps: int, protocol: str = "dopamine") -> float:
  env = AtariEnv(game, 0, training=False, protocol=protocol)
  env.reset()
  rng = np.random.default_rng(0)
  actions = rng.integers(env.num_actions, size=steps)
  start = time.perf_counter()
  for a in actions:
    env.step(a)
  return steps / (time.perf_counter() - start)


def time_python_batch(game: str, steps: int, num_envs: int) -> float:
  """The evaluate() loop's cost per agent step: stepping + stacking + batch assembly."""
  envs = [AtariEnv(game, i, training=False) for i in range(num_envs)]
  for env in envs:
    env.reset()
  rng = np.random.default_rng(0)
  n = envs[0].num_actions
  rounds = max(1, steps // num_envs)
  start = time.perf_counter()
  for _ in range(rounds):
    batch = np.stack([env.stack for env in envs])
    for env in envs:
      env.step(int(rng.integers(n)))
  del batch
  return rounds * num_envs / (time.perf_counter() - start)


def time_vector(game: str, steps: int, num_envs: int, threads: int) -> float:
  vec = _vector_env(game, num_envs, threads)
  vec.reset(seed=0)
  rng = np.random.default_rng(0)
  n = vec.single_action_space.n
  rounds = max(1, steps // num_envs)
  start = time.perf_counter()
  for _ in range(rounds):
    vec.step(rng.integers(n, size=num_envs))
  return rounds * num_envs / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--game", default="Pong")
  parser.add_argument("--steps", type=int, default=20_000)
  parser.add_argument("--num_envs", type=int, default=32)
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args()

  print(f"frame/reward mismatches, vector vs gymnasium (no-ops off): " f"{check_frames(args.game)}")
  vec_noops, gym_noops = noop_counts(args.game)
  print(
      f"no-op counts seen: vector {vec_noops[0]}..{vec_noops[-1]}, "
      f"gymnasium {gym_noops[0]}..{gym_noops[-1]}"
  )
  print(f"single AtariEnv:            {time_single(args.game, args.steps):8.0f} steps/s")
  print(f"single AtariEnv, spr:       " f"{time_single(args.game, args.steps, 'spr'):8.0f} steps/s")
  print(
      f"python batch of {args.num_envs:3d} envs:  "
      f"{time_python_batch(args.game, args.steps, args.num_envs):8.0f} steps/s"
  )
  print(
      f"AtariVectorEnv {args.num_envs:3d} envs, {args.threads} threads: "
      f"{time_vector(args.game, args.steps, args.num_envs, args.threads):8.0f} steps/s"
  )


if __name__ == "__main__":
  main()
