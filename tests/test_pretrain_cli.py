"""The smoke chain through the entry points: launch.collect -> launch.pretrain -> launch.train
--init_from (finetuning), plus resume, bad data and mismatched checkpoints. Uses the Nature CNN
(the SGI ResNet is checked in test_sgi_losses.py: its depthwise convolutions are slow on CPU)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spr import checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--encoder=nature"]


def run(cmd, check=True):
  proc = subprocess.run(
      [sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=600
  )
  if check and proc.returncode != 0:
    raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
  return proc


def one_error(proc):
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
  assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-2000:]
  return errors[0]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  root = tmp_path_factory.mktemp("chain")
  data, pre, fine = root / "data", root / "pre", root / "fine"
  collect = run(
      [
          "launch.collect",
          "--game=Pong",
          "--policy=random",
          "--steps=300",
          "--checkpoint_size=128",
          f"--out={data}",
      ]
  )
  pretrain = run(
      [
          "launch.pretrain",
          "--config=smoke",
          *SMALL,
          f"--data_dir={data}",
          "--games=Pong",
          f"--workdir={pre}",
      ]
  )
  finetune = run(
      [
          "launch.train",
          "--config=smoke",
          *SMALL,
          "--game=Pong",
          f"--workdir={fine}",
          f"--init_from={pre}",
          "--encoder_lr=1e-6",
          "--head_first_lr=3e-5",
          "--grad_clip=0",
          "--target_tau=0.01",
          "--steps=200",
          "--eval_episodes=1",
          "--done_checkpoints=all",
      ]
  )  # a test below reads the first checkpoint
  return dict(data=data, pre=pre, fine=fine, collect=collect, pretrain=pretrain, finetune=finetune)


def test_collect_writes_the_layout(chain):
  logs = chain["data"] / "Pong" / "1" / "replay_logs"
  for i in range(3):
    for name in (
        "$store$_observation",
        "$store$_action",
        "$store$_reward",
        "$store$_terminal",
        "add_count",
        "invalid_range",
    ):
      assert (logs / f"{name}_ckpt.{i}.gz").exists()
  assert "checkpoints [0, 1, 2]" in chain["collect"].stdout


def test_pretrain_writes_the_run_files(chain):
  pre = chain["pre"]
  config = json.loads((pre / "config.json").read_text())
  assert config["config_name"] == "smoke" and config["games"] == ["Pong"]
  assert config["steps"] == 20 and config["encoder"] == "nature"
  lines = [json.loads(l) for l in (pre / "metrics.jsonl").read_text().splitlines()]
  assert [l["step"] for l in lines] == [5, 10, 15, 20]
  assert all(np.isfinite(l["loss"]) and l["samples_per_s"] > 0 and "time_s" in l for l in lines)
  assert all(k in lines[-1] for k in ("spr_loss", "goal_loss", "inverse_loss"))
  final = json.loads((pre / "final.json").read_text())
  assert final["steps"] == 20 and final["num_actions"] == 6 and final["transitions"] == 300
  assert sorted(p.name for p in (pre / "checkpoints").iterdir()) == ["ckpt_10.npz", "ckpt_20.npz"]
  payload = checkpoint.read_file(pre / "pretrained.npz", "pretrained")["content"]
  assert payload["step"] == 20 and payload["num_actions"] == 6
  assert "samples/s" in chain["pretrain"].stdout
  again = run(
      [
          "launch.pretrain",
          "--config=smoke",
          *SMALL,
          f"--data_dir={chain['data']}",
          "--games=Pong",
          f"--workdir={pre}",
      ]
  )
  assert "already finished" in again.stderr


def test_pretrain_resume_gives_the_uninterrupted_result(chain, tmp_path):
  import shutil

  pre = tmp_path / "pre"
  shutil.copytree(chain["pre"], pre)
  (pre / "final.json").unlink()
  (pre / "checkpoints" / "ckpt_20.npz").unlink()
  run(
      [
          "launch.pretrain",
          "--config=smoke",
          *SMALL,
          f"--data_dir={chain['data']}",
          "--games=Pong",
          f"--workdir={pre}",
      ]
  )
  load = lambda d: checkpoint.read_file(d / "checkpoints" / "ckpt_20.npz")["content"]["leaves"]
  for a, b in zip(load(chain["pre"]), load(pre)):
    np.testing.assert_array_equal(a, b)
  steps = [json.loads(l)["step"] for l in (pre / "metrics.jsonl").read_text().splitlines()]
  assert steps == [5, 10, 15, 20]


def test_finetune_starts_from_the_pretrained_weights(chain):
  import jax
  import jax.numpy as jnp
  from agents.spr import config as spr_config
  from spr.networks import make_spr_network

  fine = chain["fine"]
  assert (fine / "final.json").exists()
  assert "loaded pretrained encoder" in chain["finetune"].stderr
  config = spr_config.config_from_json(json.loads((fine / "config.json").read_text()))
  assert config.init_from == str(chain["pre"])
  template = jax.eval_shape(
      make_spr_network(config.network(), 6).init, jax.random.PRNGKey(0), jnp.zeros((1, 4, 84, 84))
  )
  names = [(m, k) for m in sorted(template) for k in sorted(template[m])]
  payload = checkpoint.read_file(chain["pre"] / "pretrained.npz")["content"]
  ckpt = checkpoint.read_file(fine / "checkpoints" / "ckpt_100.npz")["content"]  # 1 update done
  leaves = dict(zip(names, ckpt["leaves"][: len(names)]))
  checked = 0
  for (m, k), value in leaves.items():
    if "/encoder" in m or (m.endswith("value_hidden") and k == "w_mu"):
      # encoder lr 1e-6 / head lr 3e-5: one Adam step moves a weight by at most ~lr.
      np.testing.assert_allclose(value, payload["params"][m][k], atol=5e-5)
      checked += 1
  assert checked >= 4


def test_collect_with_a_checkpoint_policy(chain, tmp_path):
  proc = run(
      [
          "launch.collect",
          "--game=Pong",
          "--policy=checkpoint",
          f"--workdir={chain['fine']}",
          "--steps=40",
          "--checkpoint_size=1000",
          f"--out={tmp_path}",
      ]
  )
  assert "checkpoints [0]" in proc.stdout
  from spr import dqn_replay

  assert len(dqn_replay.load_checkpoint(tmp_path / "Pong" / "1", 0)) == 40


def test_mismatched_checkpoint_is_a_one_line_error(chain, tmp_path):
  base = ["launch.train", "--config=smoke", *SMALL, f"--init_from={chain['pre']}"]
  err = one_error(run([*base, "--game=Breakout", f"--workdir={tmp_path / 'a'}"], check=False))
  assert "pretrained on ALE actions [0, 1, 3, 4, 11, 12]" in err
  assert "this game has [0, 1, 3, 4]" in err and "--full_action_set" in err
  err = one_error(
      run(
          [*base, "--game=Pong", "--encoder_channels=16,16,16", f"--workdir={tmp_path / 'b'}"],
          check=False,
      )
  )
  assert "encoder_channels" in err
  err = one_error(
      run(
          [
              "launch.train",
              "--config=smoke",
              "--game=Pong",
              f"--init_from={tmp_path / 'nothing'}",
              f"--workdir={tmp_path / 'c'}",
          ],
          check=False,
      )
  )
  assert "does not exist" in err
  assert not any((tmp_path / w).exists() for w in "abc")


def test_bad_data_is_a_one_line_error_naming_the_file(chain, tmp_path):
  import shutil

  data = tmp_path / "data"
  shutil.copytree(chain["data"], data, ignore=shutil.ignore_patterns("npy_cache"))
  bad = data / "Pong" / "1" / "replay_logs" / "$store$_reward_ckpt.1.gz"
  bad.write_bytes(bad.read_bytes()[:20])
  err = one_error(
      run(
          [
              "launch.pretrain",
              "--config=smoke",
              *SMALL,
              f"--data_dir={data}",
              "--games=Pong",
              f"--workdir={tmp_path / 'w'}",
          ],
          check=False,
      )
  )
  assert "$store$_reward_ckpt.1.gz" in err
  err = one_error(
      run(
          [
              "launch.pretrain",
              "--config=smoke",
              f"--data_dir={data}",
              "--games=Breakout",
              f"--workdir={tmp_path / 'w2'}",
          ],
          check=False,
      )
  )
  assert "Breakout: missing" in err


def test_games_with_other_action_sets_pretrain_on_the_full_set(chain, tmp_path):
  """Pong (6 actions) + Breakout (4): refused without --full_action_set; with it, pretraining
  maps each game's actions to ALE ids (18 actions) and Breakout finetunes in its minimal set."""
  data = tmp_path / "data"
  run(
      [
          "launch.collect",
          "--game=Breakout",
          "--policy=random",
          "--steps=200",
          "--checkpoint_size=128",
          f"--out={data}",
      ]
  )
  (data / "Pong").symlink_to(chain["data"] / "Pong", target_is_directory=True)
  base = [
      "launch.pretrain",
      "--config=smoke",
      *SMALL,
      f"--data_dir={data}",
      "--games=Pong,Breakout",
      "--steps=4",
  ]
  err = one_error(run([*base, f"--workdir={tmp_path / 'refused'}"], check=False))
  assert "--full_action_set" in err and "Pong: 6" in err and "Breakout: 4" in err
  run([*base, "--full_action_set=true", f"--workdir={tmp_path / 'pre'}"])
  payload = checkpoint.read_file(tmp_path / "pre" / "pretrained.npz")["content"]
  assert payload["num_actions"] == 18 and payload["action_set"] == list(range(18))
  assert payload["games"] == ["Pong", "Breakout"]
  fine = run(
      [
          "launch.train",
          "--config=smoke",
          *SMALL,
          "--game=Breakout",
          "--steps=120",
          "--eval_episodes=1",
          f"--init_from={tmp_path / 'pre'}",
          f"--workdir={tmp_path / 'fine'}",
      ]
  )
  assert "loaded pretrained encoder" in fine.stderr
