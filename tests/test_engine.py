"""The shared run pieces (spr/runtime.py) and the engine's handling of groups
(agents/spr/engine.py). End-to-end runs of the engine are in test_train_cli.py (one run),
test_multi_run.py and test_multi_eval.py (batches)."""

import signal

import jax
import numpy as np
import pytest

from spr import checkpoint, runtime


def test_metrics_window_means_rate_and_reset():
  window = runtime.MetricsWindow(step=10)
  window.add({"loss": 1.0, "rl_loss": 0.5}, count=2)
  window.add({"loss": 3.0, "rl_loss": 0.5}, count=2)
  window.returns.append(7.0)
  assert window.means(("loss", "rl_loss", "spr_loss")) == dict(loss=1.0, rl_loss=0.25, spr_loss=0.0)
  assert window.rate(step=30, now=window.time + 4.0) == pytest.approx(5.0)
  window.reset(30, now=123.0)
  assert (window.sums, window.count, window.returns, window.step, window.time) == (
      {},
      0,
      [],
      30,
      123.0,
  )
  assert window.means(("loss",)) == {"loss": 0.0}  # an empty window divides by nothing


def test_term_flag_turns_sigterm_into_a_flag_and_a_preempted_exit_code():
  with runtime.TermFlag() as term:
    assert not term.set
    signal.raise_signal(signal.SIGTERM)
    assert term.set and term.name == "SIGTERM" and term.exit_code == 143
    error = term.preempted("at step 7 in somewhere")
  assert isinstance(error, runtime.Preempted) and error.code == 143
  assert (
      str(error) == "SIGTERM: checkpointed at step 7 in somewhere; rerun the same command to "
      "resume"
  )
  # The previous handler is back: SIGTERM is not swallowed outside the loop.
  assert signal.getsignal(signal.SIGTERM) is not term._handle  # pylint: disable=protected-access


@pytest.fixture(scope="module")
def pong_data(tmp_path_factory):
  """A small synthetic DQN Replay dataset of Pong (random frames and actions, two episodes)."""
  from spr import dqn_replay

  root = tmp_path_factory.mktemp("data")
  rng = np.random.default_rng(0)
  n = 200
  terminal = np.zeros(n, bool)
  terminal[[99, 199]] = True
  dqn_replay.write_checkpoint(
      root / "Pong" / "1",
      0,
      rng.integers(0, 255, (n, 84, 84), np.uint8),
      rng.integers(0, 6, n),
      rng.choice([-1.0, 0.0, 1.0], n),
      terminal,
  )
  return root


def _pretrain(data, workdir):
  from agents.sgi import config as sgi_config, pretrainer

  config = sgi_config.make_config("smoke", dict(encoder="nature"))
  return pretrainer.pretrain(
      str(data), ["Pong"], config, workdir, config_name="smoke", progress=False
  )


def test_pretraining_checkpoints_on_sigterm_and_resumes_to_the_uninterrupted_result(
    pong_data, tmp_path, monkeypatch
):
  """SGI pretraining runs on the shared pieces: SIGTERM mid-run writes a checkpoint at that
  step and raises Preempted (exit 143); the rerun ends where an uninterrupted run ends,
  bitwise."""
  from spr import dqn_replay

  reference = tmp_path / "reference"
  _pretrain(pong_data, reference)

  sample = dqn_replay.SequenceSampler.sample
  calls = []

  def sample_then_signal(self, rng, batch_size):
    calls.append(1)
    if len(calls) == 7:  # arrives during update 7: the loop stops after it
      signal.raise_signal(signal.SIGTERM)
    return sample(self, rng, batch_size)

  interrupted = tmp_path / "interrupted"
  with monkeypatch.context() as patch:
    patch.setattr(dqn_replay.SequenceSampler, "sample", sample_then_signal)
    with pytest.raises(runtime.Preempted) as stopped:
      _pretrain(pong_data, interrupted)
  assert stopped.value.code == 143 and str(stopped.value).startswith(
      "SIGTERM: checkpointed at step 7 in "
  )
  assert checkpoint.checkpoint_steps(interrupted / "checkpoints") == [7]
  assert not (interrupted / "final.json").exists()

  final = _pretrain(pong_data, interrupted)
  assert final["steps"] == 20
  load = lambda d: checkpoint.read_file(d / "checkpoints" / "ckpt_20.npz")["content"]["leaves"]
  for a, b in zip(load(reference), load(interrupted)):
    np.testing.assert_array_equal(a, b)


def test_a_group_of_one_steps_with_the_learners_own_step_and_a_batch_with_the_vmapped_one():
  """A run alone runs the single-run program (bitwise what the learner's step gives); runs in a
  group of several run the vmapped one. Both hand back arrays with a leading run axis."""
  from agents.spr import engine
  from agents.spr.config import make_config
  from agents.spr.learner import learner_for

  learner = learner_for(make_config("smoke"), 6)
  states = [learner.init(jax.random.PRNGKey(s)) for s in (0, 1)]
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 255, (2, 84, 84), np.uint8)
  stacks = rng.integers(0, 255, (2, 4, 84, 84), np.uint8)
  rewards, terminals = np.array([1.0, -2.0]), np.array([False, True])

  def group(runs, state):
    fake_runs = [engine.Run(engine.RunSpec("Pong", s, f"w{s}"), None, None, {}, None) for s in runs]
    return engine.Group(
        learner, fake_runs, state, 0, np.array([2, 3], np.int32)[: len(runs)], frames[: len(runs)]
    )

  alone = group([0], jax.tree.map(np.copy, jax.device_get(states[0])))
  out = jax.device_get(
      engine._step_group(
          alone,
          0,
          False,
          rewards[:1],
          terminals[:1],  # pylint: disable=protected-access
          stacks[:1],
      )
  )
  actions, metrics = engine._with_run_axis(alone, out)  # pylint: disable=protected-access
  expected_state, expected_action, _ = learner.step(
      jax.tree.map(np.copy, jax.device_get(states[0])),
      frames[0],
      np.int32(2),
      np.float32(1.0),
      np.bool_(False),
      stacks[0],
      num_updates=0,
  )
  assert actions.shape == (1,) and metrics.loss.shape == (1,)
  assert actions[0] == int(expected_action)
  for x, y in zip(jax.tree.leaves(alone.state), jax.tree.leaves(expected_state)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

  both = group([0, 1], engine.stack_states(states))
  actions, metrics = jax.device_get(engine._step_group(both, 0, False, rewards, terminals, stacks))  # pylint: disable=protected-access
  assert both.stacked and actions.shape == (2,) and metrics.loss.shape == (2,)
  assert int(both.state.env_step[0]) == int(both.state.env_step[1]) == 1


def test_diagnostics_are_logged_and_leave_the_run_unchanged(tmp_path):
  """`diagnostics_every` adds `diag_*` lines to metrics.jsonl after learn_start, and the run is
  bitwise the run without them (the diagnostics draw from their own key and write nothing)."""
  import json

  from agents.spr import engine
  from agents.spr.config import make_config
  from spr import checkpoint as ckpt

  small = dict(steps=60, learn_start=20, eval_episodes=0, log_every=30, checkpoint_every=60)
  finals = {}
  for every in (0, 20):
    config = make_config("smoke", dict(small, diagnostics_every=every, diagnostics_batch_size=16))
    workdir = tmp_path / f"every_{every}"
    finals[every] = engine.train_runs(
        [engine.RunSpec("Pong", 0, workdir)], config, "smoke", progress=False, env_workers=0
    )
  plain, diagnosed = tmp_path / "every_0", tmp_path / "every_20"
  lines = [json.loads(l) for l in (diagnosed / "metrics.jsonl").read_text().splitlines()]
  diag = [l for l in lines if any(k.startswith("diag_") for k in l)]
  assert [l["step"] for l in diag] == [40, 60]  # every 20 steps after learn_start (20)
  expected = {
      "diag_srank_latent",
      "diag_srank_projection",
      "diag_dormant_encoder",
      "diag_dormant_head",
      "diag_drift_projection",
      "diag_spr_cos",
      "diag_spr_cos_k1",
      "diag_spr_cos_k2",
      "diag_predictor_linear_stable_rank",
      "diag_predictor_batch_lrp_stable_rank",
      "diag_predictor_batch_stiefel_orthogonality_gap",
      "diag_grad_norm_encoder",
      "diag_grad_norm_transition",
      "diag_greedy_top_action_share",
      "diag_greedy_action_entropy",
  }
  assert expected <= set(diag[0])
  # On 16 samples, not the training batch of 4 (srank is at most the number of samples).
  assert 4 < diag[0]["diag_srank_latent"] <= 16
  assert 0.0 <= diag[0]["diag_dormant_encoder"] <= 1.0 and diag[0]["diag_grad_norm_encoder"] > 0
  assert not any(
      k.startswith("diag_")
      for l in (plain / "metrics.jsonl").read_text().splitlines()
      for k in json.loads(l)
  )
  load = lambda d: ckpt.read_file(d / "checkpoints" / "ckpt_60.npz")["content"]["leaves"]
  for a, b in zip(load(plain), load(diagnosed)):
    np.testing.assert_array_equal(a, b)
  # launch.diagnose recomputes them from the checkpoint after the fact: the values logged at 60,
  # also for the run trained without them.
  from launch import diagnose

  for workdir in (diagnosed, plain):
    result = diagnose.diagnose_run(workdir, batch_size=16)
    assert (result["step"], result["batch_size"], result["game"]) == (60, 16, "Pong")
    assert result["top_action"] in ("NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE")
    logged = {k.removeprefix("diag_"): v for k, v in diag[-1].items() if k.startswith("diag_")}
    assert set(result["diagnostics"]) == set(logged)
    for key, value in logged.items():
      assert result["diagnostics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
  # One final-evaluation episode of Pong always taking the top greedy action: a constant policy
  # does not return the ball often enough to win points.
  assert -21.0 <= diagnose.constant_action_score(result, 1) <= -15.0
  # At init: the networks of PRNGKey(seed) on the same batch; the gradient differs from step 60's.
  init = diagnose.diagnose_run(diagnosed, batch_size=16, at_init=True)["diagnostics"]
  assert init["grad_norm_encoder"] != pytest.approx(result["diagnostics"]["grad_norm_encoder"])
