"""SGI pretraining learner: one pure, jitted update on a host-sampled batch.

    state = learner.init(rng)
    state, metrics = learner.update(state, batch)   # batch: spr.dqn_replay.SequenceSampler output

The batch carries single uint8 frames (`frames` [B, K+4, 84, 84], `goal_frames` [B, 4, 84, 84]):
stacks are built on the device (the stack of s_{t+k} is frames[:, k:k+4]), so the host->device
copy is ~7 KB per frame instead of 28 KB per stacked state.

Loss (mila-iqia/SGI src/algos.py `loss` + src/models.py `forward(train=True)`), weights 1/1/1:
* SPR: online encoder + transition rollout + projection (first head layer) + predictor against the
  EMA target's projections of the augmented future states, normalised L2, mean over k = 1..K.
* Goal-conditioned RL: goal = the EMA target's latent of the hindsight state s_{t+j} (flattened
  7x7x64 map, SGI's conv_goal), noised / permuted / renormalised (`losses.hindsight_goals`);
  reward from the target latents of s_t and s_{t+1} (`latent_goal_distance`,
  `hindsight_goal_returns`, goal n-step 1); C51 double-DQN loss of the FiLM goal head, bootstrap
  from the EMA target's goal head at s_{t+1}, action selected by the online goal head.
* Inverse dynamics: MLP(online projection of the rolled-out latent at k, target projection at k+1)
  -> a_k, cross-entropy, mean over k = 0..K-1.
No terminal masks are needed: the sampler never returns a sequence that crosses a terminal.
The EMA target (tau 0.01) of all parameters serves SPR, the goal reward and the bootstrap. SGI
keeps two copies with the same tau: target_encoder/projection (momentum_tau), moved inside the
forward pass, i.e. towards the parameters before the update - what we do - and the agent's
target model (target_update_tau), moved after the update; we keep one.

Gradient clipping as SGI's optimize_agent: encoder + heads and the transition model clipped
separately at 10 (each its own global norm), the predictor and inverse model not clipped.

BatchNorm (SGI's norm_type="bn", resnet_norm="batch"): every encoder call runs in training mode
with its own batch statistics, as SGI's separate forwards do (target on the goal frames, online on
s_t, target on s_t..s_{t+K}, online on s_{t+1} for the double-DQN selector); the online running
statistics move with the online calls, the target's with the target calls and then the EMA
towards the online ones (torch's update_state_dict copies buffers too).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from agents.sgi.config import SGIConfig
from spr import augmentation, losses
from spr.networks import make_sgi_network
from spr.param_roles import grouped_clip

Params = Any


class SGIState(NamedTuple):
  params: Params
  target_params: Params
  opt_state: Any
  rng: jax.Array
  step: jax.Array  # int32 [], gradient updates done
  # BatchNorm running statistics of the online / target encoder; () without BatchNorm.
  norm_state: Any = ()
  target_norm_state: Any = ()


class SGIMetrics(NamedTuple):
  loss: jax.Array
  spr_loss: jax.Array
  goal_loss: jax.Array
  inverse_loss: jax.Array
  inverse_accuracy: jax.Array
  goal_return: jax.Array  # mean |goal return|: the reward signal's size
  finite: jax.Array


def make_optimizer(config: SGIConfig) -> optax.GradientTransformation:
  parts = []
  if config.grad_clip > 0:
    parts.append(grouped_clip(config.grad_clip))
  parts.append(optax.adam(config.learning_rate, eps=config.adam_eps))
  return optax.chain(*parts)


def stacks_from_frames(frames: jax.Array) -> jax.Array:
  """uint8 frames `[B, T+3, H, W]` -> stacks `[B, T, 4, H, W]` (stack t = frames[:, t:t+4])."""
  t = frames.shape[1] - 3
  return jnp.stack([frames[:, i:i + 4] for i in range(t)], axis=1)


class SGILearner:
  """Pure functions of SGI pretraining for a config and an action count."""

  def __init__(self, config: SGIConfig, num_actions: int):
    self.config = config
    self.num_actions = num_actions
    self.network = make_sgi_network(config.network(), num_actions)
    self.optimizer = make_optimizer(config)
    self.support = jnp.linspace(config.v_min, config.v_max, config.num_atoms)
    self.update = jax.jit(self._update, donate_argnums=0)

  def init(self, rng: jax.Array) -> SGIState:
    init_rng, rng = jax.random.split(rng)
    dummy = jnp.zeros((1, 4, 84, 84), jnp.float32)
    params, norm_state = self.network.init_with_norm_state(init_rng, dummy)
    norm_state = norm_state if self.network.has_norm_state else ()
    return SGIState(params=params, target_params=jax.tree.map(jnp.copy, params),
                    opt_state=self.optimizer.init(params), rng=rng,
                    step=jnp.zeros((), jnp.int32), norm_state=norm_state,
                    target_norm_state=jax.tree.map(jnp.copy, norm_state))

  def _encode_train(self, params: Params, norm_state: Any, images: jax.Array):
    """Training-mode encoding -> (latent, new running statistics) (unchanged without BN)."""
    if self.network.has_norm_state:
      return self.network.encode_train(params, norm_state, images)
    return self.network.apply[0](params, None, images), norm_state

  def loss(self, params: Params, target_params: Params, batch: dict, rng: jax.Array,
           norm_state: Any = (), target_norm_state: Any = ()):
    """Weighted SPR + goal RL + inverse dynamics loss; returns (scalar, aux dict); the aux dict
    carries the running statistics (`norm_state` after every online call, `norm_state_main`
    after the call on s_t, `target_norm_state` after the target's calls)."""
    cfg = self.config
    encode, transition, _, project, predict, goal_q_logits, inverse = self.network.apply
    obs = stacks_from_frames(batch["frames"])  # uint8 [B, K+1, 4, 84, 84]
    b, k1 = obs.shape[:2]
    k_steps = k1 - 1
    actions = batch["actions"].astype(jnp.int32)  # [B, K]
    keys = jax.random.split(rng, 6)
    if cfg.augmentation:
      prep = augmentation.augment
    else:
      prep = lambda key, x: x.astype(jnp.float32) / 255.0

    target = jax.lax.stop_gradient(target_params)
    online_fixed = jax.lax.stop_gradient(params)
    # ---- target side (no gradient): latents of s_t..s_{t+K} and of the goal state.
    flat_obs = obs.reshape((b * k1,) + obs.shape[2:])
    seq_in, goal_in = prep(keys[0], flat_obs), prep(keys[1], batch["goal_frames"])
    if self.network.has_norm_state:  # separate calls, SGI's order (see the module docstring)
      goal_lat, target_norm_state = self._encode_train(target, target_norm_state, goal_in)
      latent, norm_main = self._encode_train(params, norm_state, prep(keys[2], obs[:, 0]))
      seq_flat, target_norm_state = self._encode_train(target, target_norm_state, seq_in)
    else:  # per-sample encoders: one call over every target input
      t_lat = encode(target, None, jnp.concatenate([seq_in, goal_in]))
      seq_flat, goal_lat = t_lat[:b * k1], t_lat[b * k1:]
      latent, norm_main = encode(params, None, prep(keys[2], obs[:, 0])), norm_state
    seq_lat = seq_flat.reshape((b, k1) + seq_flat.shape[1:])  # [B, K+1, h, w, c]
    goal_lat = goal_lat.reshape(b, -1)
    t_proj = project(target, None, seq_flat).reshape(b, k1, -1)

    # ---- online rollout.
    z, projs, preds = latent, [project(params, None, latent)], []
    for k in range(k_steps):  # unrolled (see agents/spr/learner.py)
      z = transition(params, None, z, actions[:, k])
      projs.append(project(params, None, z))
      preds.append(predict(params, None, projs[-1]))
    preds = jnp.stack(preds, axis=1)  # [B, K, P]
    ones = jnp.ones((b, k_steps), jnp.float32)
    spr_per_step = losses.batched_self_predictive_loss(preds, t_proj[:, 1:], ones)
    spr_loss = jnp.mean(spr_per_step, axis=1)  # [B]

    # ---- inverse dynamics.
    online_proj = jnp.stack(projs[:-1], axis=1)  # projections of z_0 .. z_{K-1}
    inv_logits = inverse(params, None, online_proj.reshape(b * k_steps, -1),
                         t_proj[:, 1:].reshape(b * k_steps, -1)).reshape(b, k_steps, -1)
    inverse_loss = losses.batched_inverse_dynamics_loss(inv_logits, actions)
    inverse_acc = jnp.mean(jnp.argmax(inv_logits, -1) == actions)

    # ---- goal-conditioned RL with hindsight goals (goal n-step 1).
    goals = losses.hindsight_goals(keys[3], goal_lat, cfg.goal_noise, cfg.goal_permute_prob)
    flat_seq = seq_lat.reshape(b, k1, -1)
    dist = losses.latent_goal_distance(flat_seq[:, :2], goals[:, None, :],
                                       cfg.goal_distance_scale)  # [B, 2]
    returns = jax.vmap(losses.hindsight_goal_returns, in_axes=(0, 0, None, None))(
        dist, jnp.ones((b, 1), jnp.float32), cfg.gamma, cfg.goal_reward_scale)[:, -1]
    returns = jax.lax.stop_gradient(returns)
    goal_logits = goal_q_logits(params, None, latent, goals)
    next_target_logits = goal_q_logits(target, None, seq_lat[:, 1], goals)
    next_online_lat, norm_state = self._encode_train(online_fixed, norm_main,
                                                     prep(keys[4], obs[:, 1]))
    selector = jnp.sum(jax.nn.softmax(goal_q_logits(online_fixed, None, next_online_lat, goals))
                       * self.support, axis=-1)
    discounts = jnp.full((b,), cfg.gamma, jnp.float32)
    goal_loss = losses.batched_categorical_double_q_loss(
        goal_logits, actions[:, 0], returns, discounts, next_target_logits, selector,
        self.support)

    total = jnp.mean(cfg.spr_weight * spr_loss + cfg.goal_weight * goal_loss
                     + cfg.inverse_weight * inverse_loss)
    aux = dict(spr_loss=jnp.mean(spr_loss), goal_loss=jnp.mean(goal_loss),
               inverse_loss=jnp.mean(inverse_loss), inverse_accuracy=inverse_acc,
               goal_return=jnp.mean(jnp.abs(returns)), norm_state=norm_state,
               norm_state_main=norm_main, target_norm_state=target_norm_state)
    return total, aux

  def _update(self, state: SGIState, batch: dict) -> tuple[SGIState, SGIMetrics]:
    cfg = self.config
    rng, key = jax.random.split(state.rng)
    (loss, aux), grads = jax.value_and_grad(self.loss, has_aux=True)(
        state.params, state.target_params, batch, key, state.norm_state, state.target_norm_state)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # SGI moves its target encoder inside the forward pass: towards the pre-update parameters.
    target = optax.incremental_update(state.params, state.target_params, cfg.target_tau)
    target_norm = optax.incremental_update(aux.pop("norm_state_main"),
                                           aux.pop("target_norm_state"), cfg.target_tau)
    norm_state = aux.pop("norm_state")
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
    metrics = SGIMetrics(loss=loss, finite=finite, **aux)
    return SGIState(params, target, opt_state, rng, state.step + 1, norm_state,
                    target_norm), metrics


__all__ = ["SGILearner", "SGIState", "SGIMetrics", "stacks_from_frames", "make_optimizer"]
