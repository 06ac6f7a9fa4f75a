"""Checkpoints (atomic, verified, fall back past a corrupt file) and the workdir files."""
import json

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
  step, restored, host = checkpoint.restore(tmp_path, tree())
  assert step == 30 and host == {"step": 30, "env": b"\x00\x01"}
  for x, y in zip(jax.tree.leaves(restored), jax.tree.leaves(tree(30))):
    np.testing.assert_array_equal(x, y)
    assert x.dtype == y.dtype
  assert not list(tmp_path.glob(".*tmp"))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path):
  checkpoint.save(tmp_path, 1, tree(1), {}, keep=2)
  checkpoint.save(tmp_path, 2, tree(2), {}, keep=2)
  path = tmp_path / "ckpt_2.pkl"
  path.write_bytes(path.read_bytes()[:50])  # truncated, as by a full disk
  step, restored, _ = checkpoint.restore(tmp_path, tree())
  assert step == 1
  np.testing.assert_array_equal(restored["a"], tree(1)["a"])


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

  spr = run_identity("spr", "Pong", 0, make_config("spr"))
  older = {k: v for k, v in spr.items() if k not in LEGACY_VALUES}
  (tmp_path / "config.json").write_text(json.dumps(older))
  workdir.prepare(tmp_path, spr, LEGACY_VALUES)  # spr's values are the legacy ones: resumes
  assert json.loads((tmp_path / "config.json").read_text()) == json.loads(json.dumps(older))
  with pytest.raises(workdir.WorkdirError, match="target_ema_before_update: False -> True"):
    workdir.prepare(tmp_path, dict(spr, target_ema_before_update=True), LEGACY_VALUES)
  with pytest.raises(workdir.WorkdirError, match="different config"):
    workdir.prepare(tmp_path, spr)  # without the table the missing keys differ
  # The sgi finetuning config changed both settings: an older sgi run is refused.
  sgi = run_identity("sgi", "Pong", 0, make_config("sgi"))
  (tmp_path / "config.json").write_text(json.dumps(
      {k: v for k, v in sgi.items() if k not in LEGACY_VALUES}))
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
