"""Checkpoints and pretrained files are loaded without running code (issue 12, "safe artifacts"):
a crafted pickle put where either is expected is refused and runs nothing; legacy pickles are
read only behind the explicit opt-in (SPR_ALLOW_PICKLE=1 or allow_pickle=True)."""

import io
import json
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from agents.sgi import finetune
from spr import checkpoint

ROOT = Path(__file__).resolve().parents[1]


class _Evil:
  """Unpickling this creates `marker` (a stand-in for any code an attacker would run)."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return open, (self.marker, "w")


def evil_pickle(marker) -> bytes:
  return pickle.dumps(
      {
          "version": 1,
          "step": 5,
          "leaves": [_Evil(marker)],
          "host": {},
          "params": {},
          "config": {},
          "num_actions": 6,
      }
  )


@pytest.fixture(autouse=True)
def _no_opt_in(monkeypatch):
  monkeypatch.delenv(checkpoint.ALLOW_PICKLE_ENV, raising=False)


def test_the_crafted_pickle_does_run_code_when_unpickled(tmp_path):
  """The payload the tests below feed in is live: plain unpickling creates the marker."""
  marker = tmp_path / "ran"
  pickle.loads(evil_pickle(marker))
  assert marker.exists()


def tree():
  return {"w": jnp.zeros(3)}


@pytest.mark.parametrize("name", ["ckpt_5.pkl", "ckpt_5.npz"])
def test_a_crafted_pickle_where_a_checkpoint_is_expected_is_refused(tmp_path, name):
  marker = tmp_path / "ran"
  ckpt_dir = tmp_path / "checkpoints"
  ckpt_dir.mkdir()
  (ckpt_dir / name).write_bytes(evil_pickle(marker))
  assert checkpoint.checkpoint_steps(ckpt_dir) == [5]  # a run with a checkpoint, not a new run
  with pytest.raises(checkpoint.UnsafeFileError) as e:
    checkpoint.restore(ckpt_dir, tree())
  if name.endswith(".pkl"):  # says why, and how to opt in
    assert "unpickling a file runs any code it holds" in str(e.value)
    assert "SPR_ALLOW_PICKLE=1" in str(e.value)
  else:  # a pickle under the safe name is refused even with the opt-in
    assert "is a pickle, not an .npz file" in str(e.value)
    with pytest.raises(checkpoint.UnsafeFileError):
      checkpoint.restore(ckpt_dir, tree(), allow_pickle=True)
  assert not marker.exists()


@pytest.mark.parametrize("name", ["pretrained.pkl", "pretrained.npz"])
def test_a_crafted_pickle_where_a_pretrained_file_is_expected_is_refused(tmp_path, name):
  marker = tmp_path / "ran"
  (tmp_path / name).write_bytes(evil_pickle(marker))
  for init_from in (tmp_path, tmp_path / name):  # the workdir, or the file itself
    with pytest.raises(finetune.PretrainedMismatch, match="--init_from: .*pickle") as e:
      finetune.load_pretrained(init_from)
    assert "\n" not in str(e.value)
    if name.endswith(".pkl"):
      assert "SPR_ALLOW_PICKLE=1" in str(e.value)
  assert not marker.exists()


def test_an_npz_holding_a_pickled_object_array_is_refused(tmp_path):
  """An .npz whose record points at an object array (np.save pickles those) is refused by
  np.load's allow_pickle=False: nothing runs."""
  marker = tmp_path / "ran"
  meta = dict(
      format="spr-npz",
      kind="checkpoint",
      version=2,
      config=None,
      arrays={"a0": dict(path="content.leaves[0]", dtype="|O", shape=[1], sha256="")},
      content=dict(step=5, leaves=[{"$t": "array", "k": "a0"}], host={}),
  )
  obj = np.empty(1, object)
  obj[0] = _Evil(marker)
  buf = io.BytesIO()
  np.save(buf, obj, allow_pickle=True)
  with zipfile.ZipFile(tmp_path / "ckpt_5.npz", "w") as z:
    z.writestr("a0.npy", buf.getvalue())
    z.writestr("__meta__.npy", _npy(np.frombuffer(json.dumps(meta).encode(), np.uint8)))
  with pytest.raises(checkpoint.CheckpointError, match=r"array a0 .* is damaged.*allow_pickle"):
    checkpoint.restore(tmp_path, tree())
  assert not marker.exists()


def _npy(a):
  buf = io.BytesIO()
  np.save(buf, a, allow_pickle=False)
  return buf.getvalue()


def test_legacy_pickles_load_only_with_the_opt_in(tmp_path, monkeypatch):
  """A checkpoint and a pretrained file of the older (pickle) format: refused by default; read
  with allow_pickle=True or SPR_ALLOW_PICKLE=1; the run's next checkpoint is an .npz and pruning
  removes the old pickle."""
  (tmp_path / "ckpt_5.pkl").write_bytes(
      pickle.dumps(
          dict(version=1, step=5, leaves=[np.arange(3.0, dtype=np.float32)], host={"env": b"\x01"})
      )
  )
  with pytest.raises(checkpoint.UnsafeFileError):
    checkpoint.restore(tmp_path, tree())
  restored = checkpoint.restore(tmp_path, tree(), allow_pickle=True)
  assert restored.step == 5 and restored.host == {"env": b"\x01"} and restored.config is None
  monkeypatch.setenv(checkpoint.ALLOW_PICKLE_ENV, "1")
  np.testing.assert_array_equal(checkpoint.restore(tmp_path, tree()).tree["w"], [0, 1, 2])
  checkpoint.save(tmp_path, 6, restored.tree, restored.host, keep=1)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt_6.npz"]

  payload = dict(
      version=2,
      step=7,
      games=["Pong"],
      num_actions=6,
      action_set=[0, 1, 3, 4, 11, 12],
      config={"encoder": "nature"},
      params={"m": {"w": np.ones(2, np.float32)}},
  )
  (tmp_path / "pretrained.pkl").write_bytes(pickle.dumps(payload))
  assert finetune.load_pretrained(tmp_path)["step"] == 7
  monkeypatch.delenv(checkpoint.ALLOW_PICKLE_ENV)
  with pytest.raises(finetune.PretrainedMismatch, match="SPR_ALLOW_PICKLE=1"):
    finetune.load_pretrained(tmp_path)
  assert finetune.load_pretrained(tmp_path, allow_pickle=True)["step"] == 7


def test_a_pretrained_file_round_trips_exactly(tmp_path):
  """What agents/sgi/pretrainer.py writes (module -> name -> array, a config with tuples) comes
  back as written, and is preferred to a legacy pickle beside it."""
  payload = dict(
      version=2,
      step=7,
      games=["Pong"],
      num_actions=6,
      action_set=[0, 1, 3, 4, 11, 12],
      config={"encoder": "nature", "encoder_channels": (32, 64, 64)},
      params={"spr/~/encoder/conv0": {"w": np.ones((2, 2), np.float32)}},
      target_params={},
      norm_state={},
      target_norm_state={},
  )
  checkpoint.write_file(tmp_path / "pretrained.npz", payload, "pretrained")
  (tmp_path / "pretrained.pkl").write_bytes(b"never read")
  loaded = finetune.load_pretrained(tmp_path)
  assert loaded.pop("path") == str(tmp_path / "pretrained.npz")
  assert loaded.keys() == payload.keys()
  assert loaded["config"] == payload["config"] and loaded["action_set"] == payload["action_set"]
  np.testing.assert_array_equal(loaded["params"]["spr/~/encoder/conv0"]["w"], np.ones((2, 2)))
  # A checkpoint given as a pretrained file is named for what it is.
  ckpt = checkpoint.save(tmp_path / "c", 1, tree(), {})
  (tmp_path / "pretrained.npz").write_bytes(ckpt.read_bytes())
  with pytest.raises(
      finetune.PretrainedMismatch, match="holds a 'checkpoint' file, not a " "'pretrained' file"
  ):
    finetune.load_pretrained(tmp_path)


def test_launch_train_refuses_a_crafted_init_from_in_one_line(tmp_path):
  marker = tmp_path / "ran"
  pre = tmp_path / "pre"
  pre.mkdir()
  (pre / "pretrained.pkl").write_bytes(evil_pickle(marker))
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "launch.train",
          "--config=smoke",
          "--game=Pong",
          f"--init_from={pre}",
          f"--workdir={tmp_path / 'w'}",
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "SPR_ALLOW_PICKLE=1" in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not marker.exists() and not (tmp_path / "w").exists()


def test_launch_train_refuses_a_crafted_checkpoint_in_one_line(tmp_path):
  """A workdir whose only checkpoint is a crafted pickle: one `error:` line, exit 2, nothing runs."""
  marker = tmp_path / "ran"
  work = tmp_path / "w"
  (work / "checkpoints").mkdir(parents=True)
  (work / "checkpoints" / "ckpt_100.pkl").write_bytes(evil_pickle(marker))
  proc = subprocess.run(
      [sys.executable, "-m", "launch.train", "--config=smoke", "--game=Pong", f"--workdir={work}"],
      cwd=ROOT,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "SPR_ALLOW_PICKLE=1" in errors[0], proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr
  assert not marker.exists()
