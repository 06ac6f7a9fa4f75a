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
from spr import losses, objectives
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
  return jnp.stack([frames[:, i : i + 4] for i in range(t)], axis=1)


class SGILearner:
  """Pure functions of SGI pretraining for a config and an action count, composed from the
  `spr.objectives` pieces the SPR learner uses (encoder calls, EMA target, update tail)."""

  def __init__(self, config: SGIConfig, num_actions: int):
    self.config = config
    self.num_actions = num_actions
    self.network = make_sgi_network(config.network(), num_actions)
    self.optimizer = make_optimizer(config)
    self.support = jnp.linspace(config.v_min, config.v_max, config.num_atoms)
    self.encoder = objectives.Encoder(self.network)
    # SGI moves its target encoder inside the forward pass: towards the pre-update parameters.
    self.target = objectives.EmaTarget(config.target_tau, before_update=True)
    self.prepare = objectives.input_preparation(config.augmentation)
    self.latents = (
        objectives.sgi_batch_norm_latents
        if self.network.has_norm_state
        else objectives.sgi_per_sample_latents
    )
    self.update = jax.jit(self._update, donate_argnums=0)

  def init(self, rng: jax.Array) -> SGIState:
    params, norm_state, rng = objectives.init_network(self.network, rng)
    return SGIState(
        params=params,
        target_params=self.target.init(params),
        opt_state=self.optimizer.init(params),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
        norm_state=norm_state,
        target_norm_state=self.target.init(norm_state),
    )

  def loss(
      self,
      params: Params,
      target_params: Params,
      batch: dict,
      rng: jax.Array,
      norm_state: Any = (),
      target_norm_state: Any = (),
  ):
    """Weighted SPR + goal RL + inverse dynamics loss; returns (scalar, aux dict); the aux dict
    carries the running statistics (`norm_state` after every online call, `norm_state_main`
    after the call on s_t, `target_norm_state` after the target's calls)."""
    cfg, net, prep = self.config, self.network.apply, self.prepare
    obs = stacks_from_frames(batch["frames"])  # uint8 [B, K+1, 4, 84, 84]
    b, k1 = obs.shape[:2]
    actions = batch["actions"].astype(jnp.int32)  # [B, K]
    keys = jax.random.split(rng, 6)
    views = objectives.net_views(params, target_params)
    lat = self.latents(
        self.encoder,
        views,
        prep(keys[0], obs.reshape((b * k1,) + obs.shape[2:])),
        prep(keys[1], batch["goal_frames"]),
        prep(keys[2], obs[:, 0]),
        prep(keys[4], obs[:, 1]),
        norm_state,
        target_norm_state,
    )
    seq_lat = lat.sequence.reshape((b, k1) + lat.sequence.shape[1:])  # [B, K+1, h, w, c]
    t_proj = net.project(views.target, None, lat.sequence).reshape(b, k1, -1)

    # ---- SPR: per-step projections and predictions (no mask: the sampler never crosses a
    # terminal), and the inverse model on (online projection at k, target projection at k+1).
    # Each step is projected as it is made: the order of the calls that read `params` sets the
    # order in which their gradients are summed (bitwise the results of earlier runs).
    def project_and_predict(z):
      projection = net.project(params, None, z)
      return projection, net.predict(params, None, projection)

    projs = [net.project(params, None, lat.online)]
    steps = objectives.transition_rollout(
        lambda z, a: net.transition(params, None, z, a), lat.online, actions, project_and_predict
    )
    projs += [p for p, _ in steps]
    preds = jnp.stack([q for _, q in steps], axis=1)  # [B, K, P]
    spr_loss = objectives.self_predictive_objective(preds, t_proj[:, 1:], jnp.ones(actions.shape))
    inverse_loss, inverse_acc = objectives.inverse_objective(
        lambda x, y: net.inverse(params, None, x, y),
        jnp.stack(projs[:-1], axis=1),
        t_proj[:, 1:],
        actions,
    )

    # ---- goal-conditioned RL with hindsight goals (goal n-step 1).
    goals = losses.hindsight_goals(
        keys[3], lat.goal.reshape(b, -1), cfg.goal_noise, cfg.goal_permute_prob
    )
    returns = objectives.hindsight_goal_reward(
        seq_lat.reshape(b, k1, -1)[:, :2],
        goals,
        cfg.gamma,
        cfg.goal_distance_scale,
        cfg.goal_reward_scale,
    )
    goal_loss = objectives.goal_objective(
        net.goal_q_logits,
        views,
        lat.online,
        seq_lat[:, 1],
        lat.next_online,
        goals,
        actions[:, 0],
        returns,
        cfg.gamma,
        self.support,
    )

    total = jnp.mean(
        cfg.spr_weight * spr_loss + cfg.goal_weight * goal_loss + cfg.inverse_weight * inverse_loss
    )
    aux = dict(
        spr_loss=jnp.mean(spr_loss),
        goal_loss=jnp.mean(goal_loss),
        inverse_loss=jnp.mean(inverse_loss),
        inverse_accuracy=inverse_acc,
        goal_return=jnp.mean(jnp.abs(returns)),
        norm_state=lat.norm_state,
        norm_state_main=lat.norm_main,
        target_norm_state=lat.target_norm_state,
    )
    return total, aux

  def _update(self, state: SGIState, batch: dict) -> tuple[SGIState, SGIMetrics]:
    rng, key = jax.random.split(state.rng)
    step = objectives.gradient_update(
        self.loss,
        self.optimizer,
        self.target,
        state.params,
        state.target_params,
        state.opt_state,
        batch,
        key,
        state.norm_state,
        state.target_norm_state,
    )
    aux = {
        k: v
        for k, v in step.aux.items()
        if k not in ("norm_state", "norm_state_main", "target_norm_state")
    }
    metrics = SGIMetrics(loss=step.loss, finite=step.finite, **aux)
    return (
        SGIState(
            step.params,
            step.target_params,
            step.opt_state,
            rng,
            state.step + 1,
            step.aux["norm_state"],
            step.target_norm_state,
        ),
        metrics,
    )


__all__ = ["SGILearner", "SGIState", "SGIMetrics", "stacks_from_frames", "make_optimizer"]
