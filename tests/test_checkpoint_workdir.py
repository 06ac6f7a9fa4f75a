"""Checkpoints (atomic, verified, fall back past a corrupt file) and the workdir files."""

import json
import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spr import checkpoint, workdir


def tree(scale=1.0):
  return {"a": jnp.arange(6.0).reshape(2, 3) * scale, "b": (jnp.int32(7), jnp.zeros(4, jnp.uint8))}


def test_round_trip_is_exact_and_keeps_the_newest(tmp_path):
  for step in (10, 20, 30):
    checkpoint.save(tmp_path, step, tree(step), {"step": step, "env": b"\x00\x01"}, keep=2)
  assert checkpoint.checkpoint_steps(tmp_path) == [20, 30]
  step, restored, host, config = checkpoint.restore(tmp_path, tree())
  assert step == 30 and host == {"step": 30, "env": b"\x00\x01"} and config is None
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_20.npz", "ckpt_30.npz"]
  for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(tree(30))):
    np.testing.assert_array_equal(x, y)
    assert x.dtype == y.dtype
  assert not list(tmp_path.glob(".*tmp"))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
  checkpoint.save(tmp_path, 1, tree(1), {}, keep=2)
  checkpoint.save(tmp_path, 2, tree(2), {}, keep=2)
  path = tmp_path / "ckpt_2.npz"
  path.write_bytes(path.read_bytes()[:50])  # truncated, as by a full disk
  with caplog.at_level(logging.WARNING):
    step, restored, _, _ = checkpoint.restore(tmp_path, tree())
  assert step == 1
  np.testing.assert_array_equal(restored["a"], tree(1)["a"])
  # Reported by name, and the fallback said so (it used to be silent).
  assert f"{path}: unreadable" in caplog.text and "trying the previous one" in caplog.text
  assert f"resuming from {tmp_path / 'ckpt_1.npz'} (step 1)" in caplog.text


def test_a_checkpoint_of_another_configuration_is_a_clear_error(tmp_path):
  checkpoint.save(tmp_path, 5, tree(), {}, keep=1)
  other = {"a": jnp.zeros((3, 3)), "b": (jnp.int32(0), jnp.zeros(4, jnp.uint8))}
  with pytest.raises(checkpoint.CheckpointError, match=r"array 0 is float32\[2, 3\].*\[3, 3\]"):
    checkpoint.restore(tmp_path, other)
  with pytest.raises(checkpoint.CheckpointError, match="holds 3 arrays.*needs 1"):
    checkpoint.restore(tmp_path, {"a": jnp.zeros((2, 3))})
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
    checkpoint.restore(tmp_path / "empty", tree())


def test_workdir_config_is_written_then_checked(tmp_path):
  config = {"game": "Pong", "seed": 0, "channels": (32, 64)}
  workdir.prepare(tmp_path, config)
  assert json.loads((tmp_path / "config.json").read_text())["channels"] == [32, 64]
  workdir.prepare(tmp_path, config)  # same config: fine
  with pytest.raises(workdir.WorkdirError, match=r"different config \(seed: 0 -> 1\)"):
    workdir.prepare(tmp_path, dict(config, seed=1))
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(workdir.WorkdirError, match="not valid JSON"):
    workdir.prepare(tmp_path, config)


def test_an_older_config_without_a_later_setting_resumes_only_with_its_old_value(tmp_path):
  """A config.json written before a setting existed reads as having its legacy value."""
  from agents.spr.config import LEGACY_VALUES, make_config
  from agents.spr.trainer import run_identity

  # The settings an spr run had before each later setting existed: such a run resumes.
  old_values = {k: v for k, v in LEGACY_VALUES.items() if not callable(v)}
  spr = run_identity("spr", "Pong", 0, make_config("spr", old_values))
  older = {k: v for k, v in spr.items() if k not in LEGACY_VALUES}
  (tmp_path / "config.json").write_text(json.dumps(older))
  workdir.prepare(tmp_path, spr, LEGACY_VALUES)
  assert json.loads((tmp_path / "config.json").read_text()) == json.loads(json.dumps(older))
  with pytest.raises(workdir.WorkdirError, match="target_ema_before_update: False -> True"):
    workdir.prepare(tmp_path, dict(spr, target_ema_before_update=True), LEGACY_VALUES)
  with pytest.raises(workdir.WorkdirError, match="different config"):
    workdir.prepare(tmp_path, spr)  # without the table the missing keys differ
  # Today's spr config (the SPR code's env, replay and lagged target) refuses that older run,
  # naming each setting that changed.
  with pytest.raises(
      workdir.WorkdirError,
      match=(
          r"bootstrap_with_target: True -> False, env_protocol: 'dopamine' -> 'spr', "
          r"replay_protocol: 'horizon' -> 'rlpyt', target_ema_before_update: False -> True"
      ),
  ):
    workdir.prepare(tmp_path, run_identity("spr", "Pong", 0, make_config("spr")), LEGACY_VALUES)
  # An older bbf run: resets now counted in updates, BBF's n-step target, replay and augmentation.
  bbf = run_identity("bbf", "Pong", 0, make_config("bbf"))
  older_bbf = {k: v for k, v in bbf.items() if k not in LEGACY_VALUES}
  older_bbf["reset_every"] = 20_000
  (tmp_path / "config.json").write_text(json.dumps(older_bbf))
  with pytest.raises(
      workdir.WorkdirError,
      match=(
          r"n_step_convention: 'textbook' -> 'bbf', next_state_augmentation: 'independent' -> "
          r"'shared', replay_protocol: 'horizon' -> 'bbf', reset_every: 20000 -> 0, "
          r"reset_every_updates: 0 -> 40000"
      ),
  ):
    workdir.prepare(tmp_path, bbf, LEGACY_VALUES)
  # The sgi finetuning config changed both settings: an older sgi run is refused.
  sgi = run_identity("sgi", "Pong", 0, make_config("sgi"))
  (tmp_path / "config.json").write_text(
      json.dumps({k: v for k, v in sgi.items() if k not in LEGACY_VALUES})
  )
  with pytest.raises(workdir.WorkdirError, match="resnet_norm: 'none' -> 'batch'"):
    workdir.prepare(tmp_path, sgi, LEGACY_VALUES)


def test_metrics_log_truncation_drops_lines_after_the_checkpoint(tmp_path):
  log = workdir.MetricsLog(tmp_path)
  for step in (100, 200, 300):
    log.write({"step": step, "loss": 1.0})
  with open(log.path, "a") as f:
    f.write('{"step": 40')  # a line cut by a kill
  log.truncate_after(200)
  assert [json.loads(l)["step"] for l in log.path.read_text().splitlines()] == [100, 200]


def test_eval_csv_round_trip(tmp_path):
  workdir.write_eval_csv(tmp_path, [(21.0, 800), (-3.5, 1200)])
  assert (tmp_path / "eval.csv").read_text().splitlines()[0] == "episode,score,length"
  assert workdir.read_eval_csv(tmp_path) == [(21.0, 800), (-3.5, 1200)]


# ------------------------------------------------------------------ the safe format (issue 12)
def assert_identical(a, b, where="value"):
  """Exact equality: types, dtypes, shapes, bytes (NaN equals NaN), dict key order."""
  assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
  if isinstance(a, (np.ndarray, np.generic)):
    assert a.dtype == b.dtype and np.shape(a) == np.shape(b), where
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), where
  elif isinstance(a, dict):
    assert list(a) == list(b), where
    for k in a:
      assert_identical(a[k], b[k], f"{where}[{k!r}]")
  elif isinstance(a, (list, tuple)):
    assert len(a) == len(b), where
    for i, (x, y) in enumerate(zip(a, b)):
      assert_identical(x, y, f"{where}[{i}]")
  elif isinstance(a, float):
    assert repr(a) == repr(b), where  # -0.0, nan, inf
  else:
    assert a == b, where


def test_host_state_round_trips_exactly_and_an_env_continues_bit_identically(tmp_path):
  """Everything the trainers put in the host state (env states of both protocols: the ALE's
  serialized bytes, RNG bit_generator dicts with 128-bit ints, screens; frames, episode tuples),
  and the odd cases of the encoder, come back with the same types, dtypes, shapes and bytes."""
  from envs.atari import AtariEnv

  envs = {p: AtariEnv("Pong", seed=3, training=True, protocol=p) for p in ("dopamine", "spr")}
  for env in envs.values():
    env.reset()
    for a in (0, 1, 2, 3, 2):
      env.step(a)
  host = dict(
      step=20,
      frame=np.arange(84 * 84, dtype=np.uint8).reshape(84, 84),
      action=3,
      elapsed=12.5,
      params_count=1234,
      episodes=[(-21.0, 812), (-20.0, 900)],
      env={p: env.get_state() for p, env in envs.items()},
      rng=np.random.default_rng(7).bit_generator.state,
      mt=np.random.RandomState(5).get_state(legacy=False),
      odd={
          "nan": float("nan"),
          "inf": float("-inf"),
          "neg0": -0.0,
          "big": -(2**130),
          "none": None,
          "empty": [(), {}, [], b""],
          "np": [np.float32(1.5), np.int64(-3), np.bool_(True)],
          "zero_size": np.zeros((0, 3), np.float16),
          "0d": np.array(2.0),
          "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
          5: "int key",
          (1, "a"): "tuple key",
          "$t": "a key that looks like a tag",
          "text": "naïve ✓",
          "bools": np.array([True, False]),
      },
  )
  checkpoint.save(tmp_path, 20, tree(), host)
  _, _, restored, _ = checkpoint.restore(tmp_path, tree())
  assert_identical(host, restored, "host")
  # The restored env state continues exactly as the original env does.
  for protocol, env in envs.items():
    twin = AtariEnv("Pong", seed=99, training=True, protocol=protocol)
    twin.set_state(restored["env"][protocol])
    for a in (1, 2, 3, 0, 1, 2):
      x, y = env.step(a), twin.step(a)
      np.testing.assert_array_equal(x[0], y[0])
      assert x[1:3] == y[1:3]
    np.testing.assert_array_equal(env.stack, twin.stack)


def test_what_cannot_be_stored_safely_is_refused_naming_where(tmp_path):
  for value, where in (
      (np.array([None, 1], object), r"content\.host\.x\[1\]"),
      ({1, 2}, r"content\.host\.x\[1\]"),
      (jnp.zeros(2), r"content\.host\.x\[1\]"),
  ):
    with pytest.raises(TypeError, match=where):
      checkpoint.save(tmp_path, 1, tree(), {"x": [0, value]})
  assert not list(tmp_path.iterdir())  # nothing written, no temporary file


def flip_array_bytes(file, count=64):
  """XORs `count` bytes in the middle of the largest array's data inside the .npz (a stored,
  uncompressed zip member); returns the member's array name."""
  import zipfile

  with zipfile.ZipFile(file) as z:
    info = max((i for i in z.infolist() if i.filename != "__meta__.npy"), key=lambda i: i.file_size)
  data = bytearray(file.read_bytes())
  name_len, extra_len = (
      int.from_bytes(data[info.header_offset + o : info.header_offset + o + 2], "little")
      for o in (26, 28)
  )
  start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
  assert info.file_size // 2 > 256, "the array is too small to hit its data"
  for i in range(start, start + count):
    data[i] ^= 0xFF
  file.write_bytes(bytes(data))
  return info.filename[: -len(".npy")]


def test_flipped_bytes_in_an_array_are_reported_by_name_and_the_previous_one_used(tmp_path, caplog):
  big = lambda s: {"w": jnp.arange(4096.0) * s, "b": jnp.ones(3)}
  checkpoint.save(tmp_path, 1, big(1), {}, keep=2)
  checkpoint.save(tmp_path, 2, big(2), {}, keep=2)
  name = flip_array_bytes(tmp_path / "ckpt_2.npz")
  with caplog.at_level(logging.WARNING):
    step, restored, _, _ = checkpoint.restore(tmp_path, big(0))
  assert step == 1
  np.testing.assert_array_equal(restored["w"], big(1)["w"])
  assert f"{tmp_path / 'ckpt_2.npz'}: array {name} (content.leaves[" in caplog.text
  assert "is damaged" in caplog.text and "trying the previous one" in caplog.text
  assert "resuming from" in caplog.text and "ckpt_1.npz (step 1)" in caplog.text


def test_the_sha256_catches_a_changed_array_in_a_valid_zip(tmp_path):
  """An array rewritten with a valid zip CRC (a tool, or a person) still fails its checksum."""
  import zipfile

  file = checkpoint.save(tmp_path, 3, tree(), {})
  with zipfile.ZipFile(file) as z:
    members = {n: z.read(n) for n in z.namelist()}
  import io

  buf = io.BytesIO()
  np.save(buf, np.arange(6.0, dtype=np.float32).reshape(2, 3) + 1, allow_pickle=False)
  members["a0.npy"] = buf.getvalue()
  with zipfile.ZipFile(file, "w") as z:
    for n, b in members.items():
      z.writestr(n, b)
  with pytest.raises(
      checkpoint.DamagedFileError,
      match=r"ckpt_3\.npz: array a0 \(content\.leaves\[0\]\) fails its sha256",
  ):
    checkpoint.read_file(file)
  with pytest.raises(checkpoint.CheckpointError, match="no usable checkpoint.*fails its sha256"):
    checkpoint.restore(tmp_path, tree())


def test_every_checkpoint_damaged_is_an_error_naming_each(tmp_path):
  checkpoint.save(tmp_path, 1, tree(), {}, keep=2)
  checkpoint.save(tmp_path, 2, tree(), {}, keep=2)
  (tmp_path / "ckpt_1.npz").write_bytes(b"")
  (tmp_path / "ckpt_2.npz").write_bytes((tmp_path / "ckpt_2.npz").read_bytes()[:-100])
  with pytest.raises(
      checkpoint.CheckpointError,
      match=r"no usable checkpoint.*ckpt_2\.npz: " r"unreadable.*ckpt_1\.npz: not an \.npz file",
  ):
    checkpoint.restore(tmp_path, tree())


def test_the_settings_are_recorded_and_a_resume_with_others_is_refused_by_name(tmp_path):
  settings = {"game": "Pong", "seed": 0, "channels": (32, 64), "lr": 1e-4}
  checkpoint.save(tmp_path, 5, tree(), {}, config=settings)
  restored = checkpoint.restore(tmp_path, tree(), expect_config=settings)
  assert restored.config == {"game": "Pong", "seed": 0, "channels": [32, 64], "lr": 1e-4}
  with pytest.raises(
      workdir.WorkdirError,
      match=r"ckpt_5\.npz was written by a run with a "
      r"different config \(lr: 0\.0001 -> 0\.001, seed: 0 -> 1\)",
  ):
    checkpoint.restore(tmp_path, tree(), expect_config=dict(settings, seed=1, lr=1e-3))
  # A setting added after the checkpoint was written reads as its legacy value.
  checkpoint.restore(tmp_path, tree(), expect_config=dict(settings, new=0), legacy={"new": 0})
  with pytest.raises(workdir.WorkdirError, match=r"new: 0 -> 1\)"):
    checkpoint.restore(tmp_path, tree(), expect_config=dict(settings, new=1), legacy={"new": 0})


def test_a_missing_config_json_is_restored_from_the_checkpoints(tmp_path):
  settings = {"game": "Pong", "seed": 0, "channels": (32, 64)}
  config_file, ckpt_dir = tmp_path / "config.json", tmp_path / "checkpoints"
  assert checkpoint.restore_missing_config(config_file, ckpt_dir) is None  # nothing to restore
  checkpoint.save(ckpt_dir, 1, tree(), {}, config=settings)
  checkpoint.save(ckpt_dir, 2, tree(), {}, config=settings)
  (ckpt_dir / "ckpt_2.npz").write_bytes(b"PK\x03\x04 damaged")
  assert checkpoint.restore_missing_config(config_file, ckpt_dir) == ckpt_dir / "ckpt_1.npz"
  assert json.loads(config_file.read_text()) == {"game": "Pong", "seed": 0, "channels": [32, 64]}
  config_file.write_text("{}")
  assert checkpoint.restore_missing_config(config_file, ckpt_dir) is None  # present: untouched
  assert config_file.read_text() == "{}"


def test_pruning_keeps_the_newest_and_drops_an_abandoned_newer_history(tmp_path):
  for step in (10, 20, 30):
    checkpoint.save(tmp_path, step, tree(), {}, keep=2)
  (tmp_path / "ckpt_40.npz").write_bytes(b"damaged")  # the run resumed past it from 30
  (tmp_path / "ckpt_5.pkl").write_bytes(b"an old pickle")
  checkpoint.save(tmp_path, 35, tree(), {}, keep=2)
  assert checkpoint.checkpoint_steps(tmp_path) == [30, 35]


def test_a_failed_write_leaves_no_temporary_file_and_keeps_the_saved_ones(tmp_path, monkeypatch):
  checkpoint.save(tmp_path, 1, tree(), {})
  before = (tmp_path / "ckpt_1.npz").read_bytes()

  def full_disk(f, *args, **kwargs):
    f.write(b"PK\x03\x04partial")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(np, "savez", full_disk)
  with pytest.raises(OSError, match="No space left"):
    checkpoint.save(tmp_path, 2, tree(), {})
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_1.npz"]
  assert (tmp_path / "ckpt_1.npz").read_bytes() == before


def test_a_file_of_a_newer_format_or_another_kind_is_refused(tmp_path, monkeypatch):
  checkpoint.write_file(tmp_path / "ckpt_1.npz", {"x": 1}, "pretrained")
  with pytest.raises(
      checkpoint.CheckpointError, match="holds a 'pretrained' file, not a " "'checkpoint' file"
  ):
    checkpoint.restore(tmp_path, tree())
  monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 3)
  checkpoint.save(tmp_path, 2, tree(), {})
  monkeypatch.setattr(checkpoint, "FORMAT_VERSION", 2)
  with pytest.raises(checkpoint.CheckpointError, match="format version 3 by a newer version"):
    checkpoint.restore(tmp_path, tree())


# ------------------------------------------------------------------ the trainer's resume
SMALL = dict(steps=20, learn_start=19, checkpoint_every=10, log_every=10, eval_episodes=0)


@pytest.fixture(scope="module")
def spr_run(tmp_path_factory):
  """A smoke run's workdir with real checkpoints at steps 10 and 20 (the env and learner state
  of a new run; the train loop itself is tested end to end in test_train_cli.py)."""
  from agents.spr import engine, trainer
  from agents.spr.config import LEGACY_VALUES, make_config
  from agents.spr.learner import SPRLearner
  from envs.atari import AtariEnv

  path = tmp_path_factory.mktemp("spr") / "run"
  config = make_config("smoke", SMALL)
  identity = trainer.run_identity("smoke", "Pong", 0, config)
  workdir.prepare(path, identity, LEGACY_VALUES)
  env = AtariEnv("Pong", seed=0, training=True, protocol=config.env_protocol)
  learner = SPRLearner(config, env.num_actions)
  state, host, resumed = trainer.start_or_resume(
      learner, env, 0, path / "checkpoints", None, identity
  )
  assert not resumed
  for step in (10, 20):
    host["step"] = step
    engine.save_checkpoint(
        path / "checkpoints", state, dict(host, env=env.get_state()), config.checkpoint_keep
    )
  return dict(path=path, identity=identity, learner=learner, env=env)


def copy_run(run, tmp_path):
  import shutil

  return Path(shutil.copytree(run["path"], tmp_path / "run"))


def test_a_resume_without_config_json_restores_it_and_refuses_other_settings(spr_run, tmp_path):
  from agents.spr import trainer
  from agents.spr.config import make_config

  path = copy_run(spr_run, tmp_path)
  original = (path / "config.json").read_text()
  assert checkpoint.restore(
      path / "checkpoints", jax.eval_shape(spr_run["learner"].init, jax.random.PRNGKey(0))
  ).config == json.loads(original)
  (path / "config.json").unlink()
  other = make_config("smoke", dict(SMALL, spr_weight=2.0))
  with pytest.raises(workdir.WorkdirError, match=r"different config \(spr_weight: 5\.0 -> 2\.0\)"):
    trainer.train("Pong", 0, other, path, config_name="smoke", env_workers=0)
  assert (path / "config.json").read_text() == original  # restored, not the new settings
  (path / "config.json").unlink()
  final = trainer.train(
      "Pong", 0, make_config("smoke", SMALL), path, config_name="smoke", env_workers=0
  )
  assert final["steps"] == 20  # resumed from the step-20 checkpoint (nothing left to train)
  assert json.loads((path / "config.json").read_text()) == json.loads(original)


def test_a_checkpoint_of_other_settings_than_config_json_is_refused(spr_run, tmp_path):
  from agents.spr import trainer

  path = copy_run(spr_run, tmp_path)
  identity = dict(spr_run["identity"], spr_weight=2.0)  # as if config.json had been replaced
  with pytest.raises(
      workdir.WorkdirError,
      match=r"ckpt_20\.npz was written by a run with a "
      r"different config \(spr_weight: 5\.0 -> 2\.0\)",
  ):
    trainer.start_or_resume(
        spr_run["learner"], spr_run["env"], 0, path / "checkpoints", None, identity
    )


def test_the_trainer_falls_back_past_a_damaged_newest_checkpoint_saying_so(
    spr_run, tmp_path, caplog
):
  from agents.spr import trainer

  path = copy_run(spr_run, tmp_path)
  name = flip_array_bytes(path / "checkpoints" / "ckpt_20.npz")
  with caplog.at_level(logging.WARNING):
    _, host, resumed = trainer.start_or_resume(
        spr_run["learner"], spr_run["env"], 0, path / "checkpoints", None, spr_run["identity"]
    )
  assert resumed and host["step"] == 10
  assert f"ckpt_20.npz: array {name} (content." in caplog.text
  assert "ckpt_10.npz (step 10)" in caplog.text


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
  """A full disk in the middle of a write: the old file is untouched and no .tmp is left."""
  import errno

  target = tmp_path / "final.json"
  workdir.write_json_atomic(target, {"old": 1})

  def full_disk(f):
    f.write('{"new": ')
    raise OSError(errno.ENOSPC, "No space left on device")

  with pytest.raises(OSError, match="No space left"):
    workdir.replace_atomically(target, full_disk)
  assert json.loads(target.read_text()) == {"old": 1}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["final.json"]
  log = workdir.MetricsLog(tmp_path)
  log.write({"step": 1})
  workdir.write_eval_csv(tmp_path, [(1.0, 10)])
  assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_prune_keeps_the_newest_or_nothing(tmp_path):
  """What launch.train --done_checkpoints does to a finished run's checkpoints."""
  from spr import checkpoint

  ckpt = tmp_path / "checkpoints"
  for step in (100, 200, 300):
    checkpoint.save(ckpt, step, {"w": np.zeros(2)}, {"step": step}, keep=5)
  checkpoint.prune(ckpt, 1)
  assert checkpoint.checkpoint_steps(ckpt) == [300]
  checkpoint.prune(ckpt, 0)
  assert not ckpt.exists()
