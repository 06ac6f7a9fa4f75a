"""SGI's BatchNorm with running statistics, its grouped gradient clipping, the EMA target moved
before the update, and pretraining on the full action set then finetuning in a minimal one."""

import dataclasses

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agents.sgi import finetune
from agents.sgi import pretrainer
from agents.sgi.config import make_config as make_sgi_config
from agents.sgi.learner import SGILearner
from agents.spr.config import make_config as make_spr_config
from agents.spr.learner import SPRLearner, clip_group_labels, grouped_clip
from spr.networks import BatchNorm, NetworkConfig, make_spr_network

TINY = dict(encoder_channels=(4, 4, 4), hidden=8, num_atoms=5, transition_hidden=4)


def _bn_apply(x, state, training):
  f = hk.transform_with_state(lambda x: BatchNorm(name="bn")(x, training))
  params = {"bn": {"scale": jnp.array([2.0, 0.5]), "offset": jnp.array([0.1, -0.3])}}
  return f.apply(params, state, None, x)


@pytest.mark.parametrize("jit", [False, True])
def test_batchnorm_training_and_evaluation_math(jit):
  """Training: batch mean / biased variance normalise; running mean and UNBIASED variance move
  by momentum 0.1 from (0, 1). Evaluation: the running statistics normalise, nothing moves."""
  x = jnp.array([[[[1.0, 4.0]], [[3.0, 0.0]]], [[[2.0, 2.0]], [[6.0, 6.0]]]])  # [2, 2, 1, 2]
  c0, c1 = np.array([1.0, 3.0, 2.0, 6.0]), np.array([4.0, 0.0, 2.0, 6.0])
  state = {"bn": {"mean": jnp.zeros(2), "var": jnp.ones(2)}}
  apply = jax.jit(_bn_apply, static_argnums=2) if jit else _bn_apply
  y, new = apply(x, state, True)
  for ch, vals, scale, offset in ((0, c0, 2.0, 0.1), (1, c1, 0.5, -0.3)):
    want = (vals - vals.mean()) / np.sqrt(vals.var() + 1e-5) * scale + offset
    np.testing.assert_allclose(np.asarray(y[..., ch]).reshape(-1), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new["bn"]["mean"][ch], 0.1 * vals.mean(), rtol=1e-6)
    np.testing.assert_allclose(new["bn"]["var"][ch], 0.9 + 0.1 * vals.var(ddof=1), rtol=1e-6)
  y_eval, same = apply(x, new, False)
  mean, var = np.asarray(new["bn"]["mean"]), np.asarray(new["bn"]["var"])
  want = (np.asarray(x) - mean) / np.sqrt(var + 1e-5) * np.array([2.0, 0.5]) + np.array([0.1, -0.3])
  np.testing.assert_allclose(y_eval, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(same["bn"]["mean"], new["bn"]["mean"])


@jax.jit  # one compilation instead of one per leaf shape
def _perturbed(params, key):
  """Non-trivial norm scales: at init the residual branches are zero (last norm scale 0)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
      tree, [l + 0.3 * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)]
  )


def test_sgi_resnet_acts_per_sample_with_running_statistics():
  net = make_spr_network(NetworkConfig(encoder="sgi_m", **TINY), 4)
  assert net.has_norm_state
  x = jax.random.uniform(jax.random.PRNGKey(1), (5, 4, 84, 84))
  params, norm = net.init_with_norm_state(jax.random.PRNGKey(0), x)
  params = _perturbed(params, jax.random.PRNGKey(2))
  encode, encode_train = jax.jit(net.apply[0]), jax.jit(net.encode_train)  # jit: fewer dispatches
  # Evaluation mode: a sample's latent does not depend on the rest of the batch.
  np.testing.assert_allclose(encode(params, norm, x[:2]), encode(params, norm, x)[:2], atol=1e-5)
  # Training mode: batch statistics (a sub-batch gives other latents) and moved statistics.
  train_all, moved = encode_train(params, norm, x)
  train_two, _ = encode_train(params, norm, x[:2])
  assert float(jnp.max(jnp.abs(train_all[:2] - train_two))) > 1e-3
  assert float(jnp.max(jnp.abs(encode(params, moved, x) - encode(params, norm, x)))) > 1e-4
  # Other encoders carry no statistics.
  assert not make_spr_network(
      NetworkConfig(encoder="sgi_m", resnet_norm="layer", **TINY), 4
  ).has_norm_state
  assert not make_spr_network(NetworkConfig(encoder="nature", **TINY), 4).has_norm_state


def test_grouped_clip_clips_stem_and_transition_separately():
  """SGI's optimize_agent: encoder + heads clipped at 10, the transition model clipped at 10 on
  its own, the predictor and inverse model not at all."""
  grads = {
      "spr/~/encoder/conv": {"w": jnp.full((4,), 10.0)},  # stem norm 20
      "spr/~/goal_film/linear": {"w": jnp.zeros((2,))},
      "spr/~/transition/conv0": {"w": jnp.array([3.0, 4.0])},  # norm 5 < 10
      "spr/~/predictor": {"w": jnp.full((4,), 50.0)},
      "spr/~/inverse_out": {"w": jnp.full((4,), 50.0)},
  }
  labels = clip_group_labels(grads)
  assert labels["spr/~/goal_film/linear"]["w"] == "stem"
  assert labels["spr/~/inverse_out"]["w"] == "unclipped"
  clip = grouped_clip(10.0)
  out, _ = clip.update(grads, clip.init(grads))
  np.testing.assert_allclose(out["spr/~/encoder/conv"]["w"], np.full(4, 5.0), rtol=1e-6)
  np.testing.assert_array_equal(out["spr/~/transition/conv0"]["w"], [3.0, 4.0])
  np.testing.assert_array_equal(out["spr/~/predictor"]["w"], np.full(4, 50.0))
  np.testing.assert_array_equal(out["spr/~/inverse_out"]["w"], np.full(4, 50.0))


def _sgi_batch(cfg, num_actions, rng):
  return dict(
      frames=rng.integers(0, 255, (4, cfg.spr_steps + 4, 84, 84), dtype=np.uint8),
      goal_frames=rng.integers(0, 255, (4, 4, 84, 84), dtype=np.uint8),
      actions=rng.integers(0, num_actions, (4, cfg.spr_steps)).astype(np.int32),
  )


def test_sgi_update_moves_statistics_and_target_before_the_update():
  cfg = dataclasses.replace(
      make_sgi_config("smoke"), batch_size=4, spr_steps=1, encoder_channels=(4, 4, 4)
  )
  learner = SGILearner(cfg, 3)
  state = learner.init(jax.random.PRNGKey(0))
  old = jax.device_get(state)
  batch = _sgi_batch(cfg, 3, np.random.default_rng(0))
  # The loss of this update (the key `update` derives from the state's RNG), for its statistics.
  _, aux = jax.jit(learner.loss)(
      old.params,
      old.target_params,
      batch,
      jax.random.split(old.rng)[1],
      old.norm_state,
      old.target_norm_state,
  )
  new, metrics = learner.update(state, batch)
  assert bool(metrics.finite)
  new = jax.device_get(new)
  # Online statistics: after every online pass; target: EMA of the target's (after its passes)
  # towards the online ones after the pass on s_t (torch's update_state_dict inside forward).
  want_norm = optax.incremental_update(
      aux["norm_state_main"], aux["target_norm_state"], cfg.target_tau
  )
  for a, b in zip(jax.tree.leaves(new.target_norm_state), jax.tree.leaves(want_norm)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(new.norm_state), jax.tree.leaves(aux["norm_state"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Target = EMA towards the parameters BEFORE the update (SGI moves it inside the forward).
  want = optax.incremental_update(old.params, old.target_params, cfg.target_tau)
  for a, b in zip(jax.tree.leaves(new.target_params), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert any(
      float(np.max(np.abs(a - b))) > 0
      for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(old.params))
  )
  # Running statistics moved on both encoders, differently.
  moved = lambda a, b: max(
      float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )
  assert moved(new.norm_state, old.norm_state) > 1e-4
  assert moved(new.target_norm_state, old.target_norm_state) > 1e-6
  assert moved(new.norm_state, new.target_norm_state) > 1e-6


def test_spr_finetuning_learner_carries_statistics_and_acts_with_them():
  cfg = dataclasses.replace(
      make_spr_config("sgi"),
      batch_size=4,
      spr_steps=1,
      n_step=1,
      replay_capacity=64,
      learn_start=8,
      **TINY,
  )
  learner = SPRLearner(cfg, 3)
  state = learner.init(jax.random.PRNGKey(0))
  assert jax.tree.leaves(state.norm_state) and jax.tree.leaves(state.target_norm_state)
  rng = np.random.default_rng(0)
  for i in range(10):
    frame = rng.integers(0, 255, (84, 84), dtype=np.uint8)
    stack = rng.integers(0, 255, (4, 84, 84), dtype=np.uint8)
    old = jax.device_get(state)
    state, _, m = learner.step(
        state,
        frame,
        np.int32(i % 3),
        np.float32(0),
        np.bool_(False),
        stack,
        num_updates=1 if i >= 8 else 0,
    )
  new = jax.device_get(state)
  assert int(new.update_step) == 2 and bool(m.finite)
  want = optax.incremental_update(old.params, old.target_params, cfg.target_tau)
  for a, b in zip(jax.tree.leaves(new.target_params), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  changed = [
      float(np.max(np.abs(a - b)))
      for a, b in zip(jax.tree.leaves(new.norm_state), jax.tree.leaves(old.norm_state))
  ]
  assert max(changed) > 1e-4
  # Acting reads the running statistics: other statistics, other Q-values.
  stacks = rng.integers(0, 255, (6, 4, 84, 84), dtype=np.uint8)
  params, norm = learner.acting_params(new)
  params = _perturbed(params, jax.random.PRNGKey(4))  # residual branches start at zero
  encode, _, q_logits, _, _ = learner.network.apply
  x = jnp.asarray(stacks, jnp.float32) / 255.0
  shifted = jax.tree.map(lambda v: v + 1.0, norm)
  q = q_logits(params, None, encode(params, norm, x), None)
  q2 = q_logits(params, None, encode(params, shifted, x), None)
  assert float(jnp.max(jnp.abs(q - q2))) > 1e-6
  np.testing.assert_array_equal(
      learner.greedy_actions((params, norm), stacks),
      jnp.argmax(jnp.sum(jax.nn.softmax(q) * learner.support, -1), -1),
  )


def test_finetuning_slices_a_full_action_set_transition_model():
  """A transition model pretrained on 18 ALE actions, loaded for Breakout ([0, 1, 3, 4]): the
  same next latent for every Breakout action as the pretrained model for its ALE id."""
  cfg = dataclasses.replace(make_spr_config("sgi"), encoder="nature", **TINY)
  full = make_spr_network(cfg.network(), 18)
  x = jax.random.uniform(jax.random.PRNGKey(1), (3, 4, 84, 84))
  pre = _perturbed(full.init(jax.random.PRNGKey(0), x), jax.random.PRNGKey(3))
  payload = dict(
      params=jax.device_get(pre),
      num_actions=18,
      action_set=list(range(18)),
      config=dict(
          encoder="nature",
          encoder_channels=[4, 4, 4],
          hidden=8,
          transition_hidden=4,
          resnet_norm="batch",
      ),
  )
  game = [0, 1, 3, 4]
  small = make_spr_network(cfg.network(), 4)
  loaded = finetune.apply_pretrained(small.init(jax.random.PRNGKey(5), x), payload, cfg, game)
  latent = jax.jit(full.apply[0])(pre, None, x)
  full_step, small_step = jax.jit(full.apply[1]), jax.jit(small.apply[1])
  for index, ale_id in enumerate(game):
    want = full_step(pre, None, latent, jnp.full((3,), ale_id))
    got = small_step(loaded, None, latent, jnp.full((3,), index))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(finetune.PretrainedMismatch, match="--full_action_set"):
    finetune.check_compatible(
        dict(payload, action_set=[0, 1, 3, 4, 11, 12], num_actions=6), cfg, game
    )
  # Another encoder: the message names the flag that fixes it.
  sgi_payload = dict(payload, config=dict(payload["config"], encoder="sgi_m"))
  with pytest.raises(
      finetune.PretrainedMismatch,
      match="encoder='sgi_m', this run has encoder='nature': use --config=sgi",
  ):
    finetune.check_compatible(sgi_payload, cfg, game)
  with pytest.raises(finetune.PretrainedMismatch, match="pass --hidden=8"):
    finetune.check_compatible(
        dict(payload, config=dict(payload["config"], hidden=8)),
        dataclasses.replace(cfg, hidden=16),
        game,
    )


def test_actions_map_to_ale_ids_for_the_full_set():
  @dataclasses.dataclass
  class Ckpt:
    action: np.ndarray

  mapped = pretrainer.to_full_action_set(Ckpt(np.array([0, 3, 1, 2, 3])), [0, 1, 3, 4])
  np.testing.assert_array_equal(mapped.action, [0, 4, 1, 3, 4])
  assert pretrainer.pretraining_action_set(["Pong", "Breakout"], True) == list(range(18))
  with pytest.raises(ValueError, match="--full_action_set"):
    pretrainer.pretraining_action_set(["Pong", "Breakout"], False)
  assert pretrainer.pretraining_action_set(["Pong"], False) == [0, 1, 3, 4, 11, 12]


def test_pretrained_batchnorm_network_loads_into_finetuning(tmp_path):
  """export_pretrained -> load_pretrained -> load_into_state with an SGI ResNet: the encoder's
  parameters and running statistics, and the EMA target's, arrive as pretrained."""
  sgi_cfg = dataclasses.replace(make_sgi_config("smoke"), encoder_channels=(4, 4, 4))
  state = SGILearner(sgi_cfg, 6).init(jax.random.PRNGKey(0))
  shift = lambda tree, c: jax.tree.map(lambda v: v + c, tree)  # unlike any fresh init
  state = state._replace(
      target_params=_perturbed(state.params, jax.random.PRNGKey(1)),
      norm_state=shift(state.norm_state, 0.5),
      target_norm_state=shift(state.target_norm_state, 0.25),
  )
  pong = [0, 1, 3, 4, 11, 12]
  pretrainer.export_pretrained(tmp_path / "pretrained.npz", state, sgi_cfg, ["Pong"], pong, 7)
  payload = finetune.load_pretrained(tmp_path)
  spr_cfg = dataclasses.replace(
      make_spr_config("sgi"),
      encoder_channels=(4, 4, 4),
      hidden=16,
      transition_hidden=8,
      num_atoms=11,
  )
  learner = SPRLearner(spr_cfg, 6)
  loaded = jax.device_get(
      finetune.load_into_state(learner, learner.init(jax.random.PRNGKey(2)), payload, pong)
  )
  pre = jax.device_get(state)
  for got, want in (
      (loaded.norm_state, pre.norm_state),
      (loaded.target_norm_state, pre.target_norm_state),
  ):
    assert set(got) == set(want)
    for m in want:
      for k in want[m]:
        np.testing.assert_array_equal(got[m][k], want[m][k])
  encoder = [m for m in pre.params if "/encoder/" in m]
  assert encoder
  for m in encoder:
    for k in pre.params[m]:
      np.testing.assert_array_equal(loaded.params[m][k], pre.params[m][k])
      np.testing.assert_array_equal(loaded.target_params[m][k], pre.target_params[m][k])
