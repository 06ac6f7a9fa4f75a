"""Writer / reader / sampler of the DQN Replay layout on small hand-made arrays, and bad files."""

import gzip
import io

import numpy as np
import pytest

from spr import dqn_replay as dr


def frames_for(n, base=0):
  """Frame t is filled with (base + t) % 251 + 1, so every frame is recognisable and non-zero."""
  return np.broadcast_to(
      ((base + np.arange(n)) % 251 + 1).astype(np.uint8)[:, None, None], (n, 84, 84)
  ).copy()


def write_run(root, game="Pong", run="1", n=40, terminals=(), index=0, base=0):
  term = np.zeros(n, np.uint8)
  term[list(terminals)] = 1
  run_dir = root / game / run
  dr.write_checkpoint(
      run_dir, index, frames_for(n, base), np.arange(n) % 6, np.sign(np.sin(np.arange(n))), term
  )
  return run_dir


def test_round_trip_dtypes_and_layout(tmp_path):
  run_dir = write_run(tmp_path, terminals=(9,))
  logs = run_dir / "replay_logs"
  names = sorted(p.name for p in logs.iterdir())
  assert names == sorted(
      [
          "$store$_observation_ckpt.0.gz",
          "$store$_action_ckpt.0.gz",
          "$store$_reward_ckpt.0.gz",
          "$store$_terminal_ckpt.0.gz",
          "add_count_ckpt.0.gz",
          "invalid_range_ckpt.0.gz",
      ]
  )
  with gzip.open(logs / "$store$_observation_ckpt.0.gz") as f:
    obs = np.load(io.BytesIO(f.read()))
  assert obs.dtype == np.uint8 and obs.shape == (40, 84, 84)
  ckpt = dr.load_checkpoint(run_dir, 0, game="Pong")
  assert ckpt.action.dtype == np.int32 and ckpt.reward.dtype == np.float32
  assert ckpt.terminal.dtype == np.uint8 and isinstance(ckpt.observation, np.memmap)
  np.testing.assert_array_equal(ckpt.observation, frames_for(40))
  assert ckpt.add_count == 40 and list(ckpt.invalid) == [39, 0, 1, 2, 3]
  assert (run_dir / "npy_cache" / "observation_ckpt.0.npy").exists()
  # Opening again uses the cache and gives the same frames.
  np.testing.assert_array_equal(dr.load_checkpoint(run_dir, 0).observation, frames_for(40))


def test_checkpoint_writer_splits_into_checkpoints(tmp_path):
  w = dr.CheckpointWriter(tmp_path / "Pong" / "1", size=16)
  for t, f in enumerate(frames_for(40)):
    w.add(f, t % 3, 1.0, t == 20)
  w.flush()
  assert w.written == [0, 1, 2]
  assert dr.list_checkpoints(tmp_path / "Pong" / "1") == [0, 1, 2]
  lens = [len(dr.load_checkpoint(tmp_path / "Pong" / "1", i)) for i in range(3)]
  assert lens == [16, 16, 8]
  c1 = dr.load_checkpoint(tmp_path / "Pong" / "1", 1)
  np.testing.assert_array_equal(c1.observation, frames_for(40)[16:32])
  assert c1.terminal[20 - 16] == 1


def test_episode_index():
  term = np.zeros(10, np.uint8)
  term[[3, 6]] = 1
  since, known, to_end = dr.episode_index(term, 0, 10)
  np.testing.assert_array_equal(since, [0, 1, 2, 3, 0, 1, 2, 0, 1, 2])
  np.testing.assert_array_equal(known, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
  np.testing.assert_array_equal(to_end, [3, 2, 1, 0, 2, 1, 0, 2, 1, 0])


def test_sequences_never_cross_a_terminal_or_boundary(tmp_path):
  # Episode ends at 9 and 25 (transitions 9->10 and 25->26 are terminal).
  run_dir = write_run(tmp_path, n=40, terminals=(9, 25))
  ckpt = dr.load_checkpoint(run_dir, 0, game="Pong")
  k = 3
  sampler = dr.SequenceSampler([ckpt], spr_steps=k, goal_window=6)
  # Valid starts by hand: first episode 0..9 (start unknown -> t >= 3, t + 3 <= 9, not invalid
  # 0..3): 4..6; second episode 10..25: 10..22; third 26..39: 26..36 (39 is invalid).
  expected = list(range(4, 7)) + list(range(10, 23)) + list(range(26, 37))
  np.testing.assert_array_equal(sampler._starts[0], expected)
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(20):
    b = sampler.sample(rng, 32)
    assert b["frames"].shape == (32, k + 4, 84, 84) and b["frames"].dtype == np.uint8
    assert b["actions"].shape == (32, k) and b["actions"].dtype == np.int32
    assert b["goal_frames"].shape == (32, 4, 84, 84)
    assert not b["terminals"].any()
    for i in range(32):
      newest = b["frames"][i, 3:, 0, 0].astype(int) - 1  # absolute t .. t+K
      t = newest[0]
      seen.add(int(t))
      np.testing.assert_array_equal(newest, np.arange(t, t + k + 1))
      np.testing.assert_array_equal(b["actions"][i], np.arange(t, t + k) % 6)
      # Stack zero-padding: frames before the episode start are zeros, others are the frames.
      start = 10 if 10 <= t < 26 else (26 if t >= 26 else None)
      for m in range(3):
        value = b["frames"][i, m, 0, 0]
        if start is not None and t - 3 + m < start:
          assert value == 0
        else:
          assert value == t - 3 + m + 1
      j = b["goal_offset"][i]
      end = 9 if t < 10 else (25 if t < 26 else 39)
      assert min(2, end - t) <= j <= min(5, end - t)
      np.testing.assert_array_equal(b["goal_frames"][i, 3, 0, 0], t + j + 1)
      g_prev = b["goal_frames"][i, :3, 0, 0].astype(int)
      for m in range(3):
        f = t + j - 3 + m
        assert g_prev[m] == (0 if (start is not None and f < start) else f + 1)
  assert seen == set(expected)


def test_several_games_and_checkpoints_and_wrapped_buffer(tmp_path):
  write_run(tmp_path, "Pong", n=20)
  write_run(tmp_path, "Pong", n=20, index=1, base=100)
  run_dir = write_run(tmp_path, "Breakout", n=30)
  # Make the Breakout checkpoint a wrapped circular buffer: add_count 47 -> cursor 17.
  dr._save_gz(dr.store_path(run_dir, "add_count", 0), np.array(47, np.int64))
  dr._save_gz(dr.store_path(run_dir, "invalid_range", 0), dr.invalid_range(17, 30))
  ckpts = dr.open_dataset(tmp_path, ["Pong", "Breakout"])
  assert [(c.game, c.index) for c in ckpts] == [("Pong", 0), ("Pong", 1), ("Breakout", 0)]
  assert ckpts[2].segments() == [(0, 17), (17, 30)]
  sampler = dr.SequenceSampler(ckpts, spr_steps=2, games=["Pong", "Breakout"])
  # Breakout: segment 0..16 -> 3..14 minus invalid 16..20; segment 17..29 -> 20..27, minus 17..20.
  np.testing.assert_array_equal(sampler._starts[2], list(range(3, 15)) + list(range(21, 28)))
  b = sampler.sample(np.random.default_rng(1), 256)
  assert set(b["game"]) == {0, 1}


@pytest.mark.parametrize(
    "damage, message",
    [
        ("missing_action", "$store$_action_ckpt.0.gz: missing"),
        ("missing_obs", "$store$_observation_ckpt.0.gz: missing"),
        ("truncated_obs", "$store$_observation_ckpt.0.gz: "),
        ("corrupt_reward", "$store$_reward_ckpt.0.gz: unreadable"),
        ("wrong_dtype", "$store$_action_ckpt.0.gz: action is float64[20], expected int32[N]"),
        ("wrong_length", "$store$_terminal_ckpt.0.gz: terminal has 19 entries"),
        ("wrong_shape", "$store$_observation_ckpt.0.gz: observation is uint8[20, 84, 83]"),
        ("obs_length", "$store$_observation_ckpt.0.gz: observation has 21 entries"),
        ("missing_add_count", "add_count_ckpt.0.gz: missing"),
    ],
)
def test_bad_files_are_clear_errors(tmp_path, damage, message):
  run_dir = write_run(tmp_path, n=20)
  path = lambda name: dr.store_path(run_dir, name, 0)
  if damage == "missing_action":
    path("action").unlink()
  elif damage == "missing_obs":
    path("observation").unlink()
  elif damage == "truncated_obs":
    data = path("observation").read_bytes()
    path("observation").write_bytes(data[: len(data) // 2])
  elif damage == "corrupt_reward":
    path("reward").write_bytes(b"\x1f\x8b" + b"garbage" * 10)
  elif damage == "wrong_dtype":
    dr._save_gz(path("action"), np.zeros(20))
  elif damage == "wrong_length":
    dr._save_gz(path("terminal"), np.zeros(19, np.uint8))
  elif damage == "wrong_shape":
    dr._save_gz(path("observation"), np.zeros((20, 84, 83), np.uint8))
  elif damage == "obs_length":
    dr._save_gz(path("observation"), np.zeros((21, 84, 84), np.uint8))
  elif damage == "missing_add_count":
    path("add_count").unlink()
  with pytest.raises(dr.DataError) as e:
    dr.open_dataset(tmp_path, ["Pong"])
  assert message in str(e.value)
  assert (
      not list((run_dir / "npy_cache").glob(".*tmp")) if (run_dir / "npy_cache").exists() else True
  )


def test_missing_game_or_checkpoint(tmp_path):
  write_run(tmp_path, n=20)
  with pytest.raises(dr.DataError, match="Breakout: missing"):
    dr.open_dataset(tmp_path, ["Breakout"])
  with pytest.raises(dr.DataError, match=r"observation_ckpt\.3\.gz: missing"):
    dr.open_dataset(tmp_path, ["Pong"], checkpoints=[0, 3])
