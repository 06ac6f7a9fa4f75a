"""The pieces the SPR and SGI learners compose their losses and updates from.

`spr/losses.py` holds the per-stream maths (one transition, one sequence). This module holds the
batched objectives a learner's loss is made of, as pure functions of arrays and of the network's
functions (`spr.networks.SPRApply` / `SGIApply`, passed in), each with its reference:

* inputs and encoder calls: `input_preparation` (augment or scale), `encode_chunked`,
  `Encoder`, and the no-gradient latents a batch needs, one function per encoder-call plan
  (`per_sample_latents`, `batch_norm_latents` for SPR; `sgi_per_sample_latents`,
  `sgi_batch_norm_latents` for SGI), chosen once from the config by `latent_plan`;
* the EMA target as a rule chosen once (`target_rule`: `EmaTarget` or `OnlineTarget`), so that
  no objective tests for an absent target: `view` gives the parameters that act as the target;
* objectives: `categorical_double_q_objective` (C51 double-DQN loss with its replay priorities,
  `PRIORITIES`), `spr_rollout_loss` (K-step rollout + self-predictive loss with a learned or
  closed-form predictor), `hindsight_goal_reward`, `goal_objective` and `inverse_objective` (SGI);
* the update tail both learners share: `init_network`, `gradient_update` (value_and_grad,
  optimiser, EMA target, finite flag).

A variant (BBF, SGI finetuning, closed-form predictor, BatchNorm) is a choice of these pieces made
when a learner is built, not a branch inside its loss.

References: Schwarzer et al., "Data-Efficient Reinforcement Learning with Self-Predictive
Representations", ICLR 2021 (code mila-iqia/spr); Schwarzer et al., "Pretraining Representations
for Data-Efficient Reinforcement Learning", NeurIPS 2021 (code mila-iqia/SGI); Schwarzer et al.,
"Bigger, Better, Faster", ICML 2023 (code google-research/bigger_better_faster).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import optax

from spr import augmentation, losses, predictors

Array = chex.Array
Params = Any


def q_values(logits: Array, support: Array) -> Array:
  """Expected values `[..., A]` of C51 logits `[..., A, N]` on `support` `[N]`."""
  return jnp.sum(jax.nn.softmax(logits, axis=-1) * support, axis=-1)


# ---------------------------------------------------------------------------
# Inputs and encoder calls.
# ---------------------------------------------------------------------------


def scale_frames(frames: Array) -> Array:
  """uint8 frames -> float32 in [0, 1] (no augmentation: acting, evaluation)."""
  return frames.astype(jnp.float32) / 255.0


def input_preparation(augment: bool) -> Callable[[chex.PRNGKey, Array], Array]:
  """`prepare(key, uint8 stacks [B, C, H, W]) -> float [B, C, H, W]`: the SPR code's random
  shift + intensity (`spr.augmentation.augment`, shift on uint8, then /255 and intensity), or
  plain scaling when the config has no augmentation (the key is then unused)."""
  if augment:
    return augmentation.augment
  return lambda key, frames: scale_frames(frames)


def encode_chunked(
    encode: Callable, params: Params, norm_state: Any, images: Array, chunk: int
) -> Array:
  """`encode(params, norm_state, images)` over chunks of `chunk` images (an unrolled loop).

  The same values as one call for an encoder that acts per sample (evaluation mode): on XLA:CPU a
  convolution over 192 images took 85 ms at once and 31-34 ms in chunks of 16-32 (the working set
  stays in cache); on a GPU one large batch is best (`chunk` 0: no chunking).

  Args:
    encode: `SPRApply.encode`.
    params: network parameters.
    norm_state: BatchNorm running statistics, or () / None without them.
    images: float `[M, C, H, W]`.
    chunk: images per call; <= 0 or >= M: one call.

  Returns:
    Latents `[M, h, w, c]`.
  """
  n = images.shape[0]
  if chunk <= 0 or n <= chunk:
    return encode(params, norm_state, images)
  return jnp.concatenate(
      [encode(params, norm_state, images[i : i + chunk]) for i in range(0, n, chunk)]
  )


@dataclasses.dataclass(frozen=True)
class Encoder:
  """How a learner calls its network's encoder: `network` is a `spr.networks.NetworkFunctions`,
  `chunk` the chunk size of evaluation-mode calls (`encode_chunked`)."""

  network: Any
  chunk: int = 0

  def __call__(self, params: Params, images: Array, norm_state: Any = ()) -> Array:
    """Evaluation-mode latents (running statistics, if any, are read, not moved)."""
    return encode_chunked(self.network.apply.encode, params, norm_state, images, self.chunk)

  def train(self, params: Params, norm_state: Any, images: Array) -> tuple[Array, Any]:
    """Training-mode encoding -> (latent, new running statistics). With BatchNorm running
    statistics this is ONE call with the batch statistics of `images` (as one torch forward);
    without, the evaluation-mode call, and the (empty) statistics pass through."""
    if self.network.has_norm_state:
      return self.network.encode_train(params, norm_state, images)
    return self(params, images), norm_state


class NetViews(NamedTuple):
  """The parameters one loss reads, each in the role it plays."""

  online: Params  # differentiated
  fixed: Params  # the online parameters without gradient (double-DQN selector, BN passes)
  target: Params  # the target view (EMA target, or the online parameters), no gradient
  bootstrap: Params  # the C51 bootstrap network: `target` or `fixed`


def net_views(params: Params, target: Params, bootstrap_with_target: bool = True) -> NetViews:
  """`NetViews` of online `params` and the target view `target` (`TargetRule.view`).

  The C51 bootstrap uses the target (BBF), or the online parameters (the SPR code's C51 target
  network is re-synced after every optimiser step; SGI finetuning bootstraps from the online net
  while its SPR targets come from the EMA encoder)."""
  fixed = jax.lax.stop_gradient(params)
  target = jax.lax.stop_gradient(target)
  return NetViews(params, fixed, target, target if bootstrap_with_target else fixed)


class LatentInputs(NamedTuple):
  """A batch's network inputs, float in [0, 1], independently augmented (the SPR code draws one
  augmentation per network input)."""

  current: Array  # s_i, [B, C, H, W]: the online pass with gradient
  sequence: Array  # [B * M, C, H, W]: the target's pass, M = K (s_{i+1..i+K}) or K + 1 (s_i..)
  bootstrap: Array  # s_{i+n}, [B, C, H, W], for the bootstrap network
  selector: Array  # s_{i+n} for the double-DQN selector (`bootstrap` itself when shared)


def latent_inputs(
    prepare: Callable,
    keys: Array,
    observations: Array,
    next_observations: Array,
    first_frame: int,
    shared_next: bool,
) -> LatentInputs:
  """Prepares the inputs of an SPR batch with `keys[0..3]` (current, sequence, bootstrap,
  selector).

  Args:
    prepare: `input_preparation(...)`.
    keys: at least 4 keys.
    observations: uint8 `[B, K+1, C, H, W]`, s_i..s_{i+K}.
    next_observations: uint8 `[B, C, H, W]`, the bootstrap state s_{i+n}.
    first_frame: 1: the sequence is s_{i+1}..s_{i+K}; 0: s_i..s_{i+K} (`LatentPlan.first_frame`).
    shared_next: one augmentation of s_{i+n} for the bootstrap network and the selector (BBF's
      spr_agent.py) instead of two independent ones (the SPR code's separate forwards).

  Returns:
    `LatentInputs`.
  """
  chex.assert_rank([observations, next_observations], [5, 4])
  b = observations.shape[0]
  seq = observations if first_frame == 0 else observations[:, first_frame:]
  m = seq.shape[1]
  sequence = (
      prepare(keys[1], seq.reshape((b * m,) + seq.shape[2:]))
      if m
      else jnp.zeros((0,) + seq.shape[2:], jnp.float32)
  )
  current = prepare(keys[0], observations[:, 0])
  bootstrap = prepare(keys[2], next_observations)
  selector = bootstrap if shared_next else prepare(keys[3], next_observations)
  return LatentInputs(current, sequence, bootstrap, selector)


class BatchLatents(NamedTuple):
  """The latents one SPR update needs, and the BatchNorm running statistics they leave."""

  online: Array  # [B, h, w, c]: s_i, online, with gradient
  future: Array  # [B * K, h, w, c] (sample-major): s_{i+1..i+K}, target (SPR targets)
  bootstrap: Array  # [B, h, w, c]: s_{i+n}, bootstrap network
  selector: Array  # [B, h, w, c]: s_{i+n}, online without gradient (double-DQN selector)
  norm_main: Any  # online statistics after the pass on s_i (what the EMA target moves towards)
  norm_state: Any  # online statistics after every online pass
  target_norm_state: Any  # the target's statistics after its pass (before the EMA)


@dataclasses.dataclass(frozen=True)
class PerSampleLatents:
  """Encoder-call plan for encoders without batch statistics (every sample is encoded alone, so
  inputs that share parameters share one evaluation-mode call: fewer, larger convolutions).

  `groups`: the no-gradient calls, each (a `NetViews` field, indices into (sequence, bootstrap,
  selector)); see `latent_plan`. The online latent of s_i is a call of its own."""

  groups: tuple[tuple[str, tuple[int, ...]], ...]
  first_frame: int = 1

  def __call__(
      self,
      encoder: Encoder,
      views: NetViews,
      inputs: LatentInputs,
      norm_state: Any = (),
      target_norm_state: Any = (),
  ) -> BatchLatents:
    """The latents of one SPR batch (the same signature for every plan).

    Args:
      encoder: the learner's `Encoder`.
      views: `net_views(...)`.
      inputs: `latent_inputs(...)` with this plan's `first_frame`.
      norm_state: the online encoder's running statistics (() without BatchNorm).
      target_norm_state: the target view's running statistics (`TargetRule.view`).

    Returns:
      `BatchLatents`.
    """
    images = (inputs.sequence, inputs.bootstrap, inputs.selector)
    out = encode_grouped(
        encoder, [(getattr(views, role), [images[i] for i in idx]) for role, idx in self.groups]
    )
    future, bootstrap, selector = out
    latent = encoder(views.online, inputs.current)
    return BatchLatents(
        latent, future, bootstrap, selector, norm_state, norm_state, target_norm_state
    )


def encode_grouped(
    encoder: Encoder, calls: Sequence[tuple[Params, Sequence[Array]]]
) -> list[Array]:
  """One evaluation-mode encoder call per (params, images) entry over its images concatenated;
  returns the latents of every image array, in order."""
  out = []
  for params, images in calls:
    latents = encoder(params, images[0] if len(images) == 1 else jnp.concatenate(images))
    start = 0
    for x in images:
      out.append(latents[start : start + x.shape[0]])
      start += x.shape[0]
  return out


@dataclasses.dataclass(frozen=True)
class BatchNormLatents:
  """Encoder-call plan for an encoder with BatchNorm running statistics (SGI's ResNet with
  resnet_norm="batch", finetuning). Training-mode BatchNorm normalises with each call's batch
  statistics, so the calls are the SPR/SGI code's own forwards, in its order: online on s_i
  (with gradient), the target encoder on s_i..s_{i+K} (frame 0 too: it shapes the batch
  statistics), the bootstrap network on s_{i+n}, the online network on s_{i+n} (double-DQN
  selector; `selector_pass` False: no such forward, whose statistics would move in torch only if
  it ran). Running statistics move on the online and target encoders; the bootstrap network's
  pass changes none that is kept (torch's copy of the online net, re-synced)."""

  selector_pass: bool = True
  first_frame: int = 0

  def __call__(
      self,
      encoder: Encoder,
      views: NetViews,
      inputs: LatentInputs,
      norm_state: Any = (),
      target_norm_state: Any = (),
  ) -> BatchLatents:
    """As `PerSampleLatents.__call__`; `inputs.sequence` holds s_i..s_{i+K}."""
    latent, norm_main = encoder.train(views.online, norm_state, inputs.current)
    seq, target_norm_state = encoder.train(views.target, target_norm_state, inputs.sequence)
    b = latent.shape[0]
    k1 = seq.shape[0] // b
    future = seq.reshape((b, k1) + seq.shape[1:])[:, 1:].reshape((b * (k1 - 1),) + seq.shape[1:])
    bootstrap, _ = encoder.train(views.bootstrap, norm_main, inputs.bootstrap)
    if self.selector_pass:
      selector, norm_state = encoder.train(views.fixed, norm_main, inputs.selector)
    else:
      selector, norm_state = bootstrap, norm_main
    return BatchLatents(
        latent, future, bootstrap, selector, norm_main, norm_state, target_norm_state
    )


LatentPlan = PerSampleLatents | BatchNormLatents


def latent_plan(
    has_norm_state: bool, stored_target: bool, bootstrap_with_target: bool, double_dqn: bool = True
) -> LatentPlan:
  """The encoder-call plan of an SPR loss, chosen once from the config.

  Per-sample encoders: the no-gradient inputs (sequence -> target, bootstrap -> bootstrap
  network, selector -> online) are encoded in order, consecutive inputs with the same parameters
  in one call: one call without a stored target (every view is the online parameters), target
  on (sequence, bootstrap) + online on the selector when the bootstrap uses the target, target
  on the sequence + online on (bootstrap, selector) otherwise."""
  if has_norm_state:
    return BatchNormLatents(selector_pass=double_dqn)
  roles = ("target", "target" if bootstrap_with_target else "fixed", "fixed")
  groups: list[tuple[str, tuple[int, ...]]] = []
  for i, role in enumerate(roles):
    if groups and (groups[-1][0] == role or not stored_target):
      groups[-1] = (groups[-1][0], groups[-1][1] + (i,))
    else:
      groups.append((role, (i,)))
  return PerSampleLatents(tuple(groups))


class SGILatents(NamedTuple):
  """The latents of an SGI pretraining batch."""

  online: Array  # [B, h, w, c]: s_t, online, with gradient
  sequence: Array  # [B * (K+1), h, w, c] (sample-major): s_t..s_{t+K}, target
  goal: Array  # [B, h, w, c]: the hindsight goal state, target
  next_online: Array  # [B, h, w, c]: s_{t+1}, online without gradient (double-DQN selector)
  norm_main: Any
  norm_state: Any
  target_norm_state: Any


def sgi_per_sample_latents(
    encoder: Encoder,
    views: NetViews,
    sequence: Array,
    goal: Array,
    current: Array,
    next_input: Array,
    norm_state: Any = (),
    target_norm_state: Any = (),
) -> SGILatents:
  """SGI's latents for per-sample encoders: one target call over the sequence and the goal."""
  seq, goal_lat = encode_grouped(encoder, [(views.target, [sequence, goal])])
  latent = encoder(views.online, current)
  next_online, _ = encoder.train(views.fixed, norm_state, next_input)
  return SGILatents(latent, seq, goal_lat, next_online, norm_state, norm_state, target_norm_state)


def sgi_batch_norm_latents(
    encoder: Encoder,
    views: NetViews,
    sequence: Array,
    goal: Array,
    current: Array,
    next_input: Array,
    norm_state: Any = (),
    target_norm_state: Any = (),
) -> SGILatents:
  """SGI's latents with BatchNorm: separate training-mode calls in SGI's order (mila-iqia/SGI
  src/models.py): target on the goal frames, online on s_t, target on s_t..s_{t+K}, online on
  s_{t+1} (the double-DQN selector, from the statistics after the pass on s_t)."""
  goal_lat, target_norm_state = encoder.train(views.target, target_norm_state, goal)
  latent, norm_main = encoder.train(views.online, norm_state, current)
  seq, target_norm_state = encoder.train(views.target, target_norm_state, sequence)
  next_online, norm_state = encoder.train(views.fixed, norm_main, next_input)
  return SGILatents(latent, seq, goal_lat, next_online, norm_main, norm_state, target_norm_state)


# ---------------------------------------------------------------------------
# The EMA target.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EmaTarget:
  """A stored target network moved by an EMA of weight `tau` on the online parameters.

  `before_update`: towards the parameters BEFORE the optimiser step (the SPR and SGI code move
  their target encoder at the end of the forward pass, mila-iqia/spr src/models.py
  update_state_dict; with tau 1 the target then lags one update behind), or after it (BBF).
  BatchNorm running statistics are EMA'd towards the online ones as they were after the online
  pass on s_i (torch's update_state_dict copies buffers too, inside that forward)."""

  tau: float
  before_update: bool = True

  def init(self, tree: Any) -> Any:
    """The stored target of a fresh state: a copy of `tree`."""
    return jax.tree.map(jnp.copy, tree)

  def view(self, online: Any, stored: Any) -> Any:
    """What acts as the target: the stored one."""
    del online
    return stored

  def map(self, fn: Callable[[Any], Any], stored: Any) -> Any:
    """`fn` applied to the stored target (e.g. a BBF reset)."""
    return fn(stored)

  def moved(
      self, before: Params, after: Params, stored: Params, norm_main: Any, stored_norm: Any
  ) -> tuple[Params, Any]:
    """(target params, target running statistics) after one update."""
    source = before if self.before_update else after
    return (
        optax.incremental_update(source, stored, self.tau),
        optax.incremental_update(norm_main, stored_norm, self.tau),
    )


@dataclasses.dataclass(frozen=True)
class OnlineTarget:
  """No stored target (tau 1 moved after the update): the online network is the target. Stored
  as () in the state, which every method here maps to and from."""

  def init(self, tree: Any) -> Any:
    del tree
    return ()

  def view(self, online: Any, stored: Any) -> Any:
    del stored
    return online

  def map(self, fn: Callable[[Any], Any], stored: Any) -> Any:
    del fn, stored
    return ()

  def moved(
      self, before: Params, after: Params, stored: Params, norm_main: Any, stored_norm: Any
  ) -> tuple[Params, Any]:
    del before, after, stored, norm_main, stored_norm
    return (), ()


TargetRule = EmaTarget | OnlineTarget


def target_rule(stored: bool, tau: float, before_update: bool) -> TargetRule:
  """`EmaTarget(tau, before_update)` when a target is stored, else `OnlineTarget()`."""
  return EmaTarget(tau, before_update) if stored else OnlineTarget()


# ---------------------------------------------------------------------------
# C51 double-DQN loss and replay priorities.
# ---------------------------------------------------------------------------


def kl_priorities(rl_args: tuple, rl_loss: Array, support: Array) -> Array:
  """The SPR code's priorities: clamped KL(target || prediction), not the cross-entropy
  (mila-iqia/spr src/algos.py; `losses.categorical_kl_priority`)."""
  del rl_loss
  return losses.batched_categorical_kl_priority(*jax.lax.stop_gradient(rl_args), support)


def ce_priorities(rl_args: tuple, rl_loss: Array, support: Array) -> Array:
  """BBF's priorities: it stores sqrt(CE + 1e-10) and samples proportionally to it; we store
  CE + 1e-10 and sample p^alpha with alpha 0.5 (the BBF configs), the same distribution."""
  del rl_args, support
  return jax.lax.stop_gradient(rl_loss) + 1e-10


PRIORITIES: dict[str, Callable[[tuple, Array, Array], Array]] = {
    "kl": kl_priorities,
    "ce": ce_priorities,
}


def categorical_double_q_objective(
    logits_tm1: Array,
    a_tm1: Array,
    r_t: Array,
    discount_t: Array,
    logits_t_target: Array,
    q_t_selector: Array,
    support: Array,
    priority: Callable[[tuple, Array, Array], Array] = kl_priorities,
) -> tuple[Array, Array]:
  """C51 double-DQN loss of a batch and the replay priorities it gives.

  Bellemare et al. 2017, van Hasselt et al. 2016, as SPR runs them (mila-iqia/spr src/algos.py
  `dist_rl_loss`); see `losses.categorical_double_q_loss`.

  Args:
    logits_tm1: online logits at s_i, `[B, A, N]`.
    a_tm1: actions taken at s_i, int `[B]`.
    r_t: n-step returns, `[B]`.
    discount_t: bootstrap discounts, `[B]`.
    logits_t_target: bootstrap network's logits at s_{i+n}, `[B, A, N]`.
    q_t_selector: Q values selecting a* at s_{i+n}, `[B, A]`.
    support: atoms `[N]`.
    priority: a `PRIORITIES` entry.

  Returns:
    (per-sample cross-entropy `[B]`, priorities `[B]` without gradient).
  """
  chex.assert_rank([logits_tm1, a_tm1, r_t, discount_t, q_t_selector], [3, 1, 1, 1, 2])
  chex.assert_equal_shape([logits_tm1, logits_t_target])
  args = (logits_tm1, a_tm1, r_t, discount_t, logits_t_target, q_t_selector)
  loss = losses.batched_categorical_double_q_loss(*args, support)
  return loss, priority(args, loss, support)


def online_selector(
    q_logits: Callable,
    params: Params,
    latent: Array,
    bootstrap_logits: Array,
    noise_rng: Array | None,
    support: Array,
) -> Array:
  """Double DQN: a* from the online network's Q values `[B, A]` at `latent` (s_{i+n}), with
  `noise_rng` (the same noise as the online head: the SPR code resets noise once per loss)."""
  del bootstrap_logits
  return q_values(q_logits(params, None, latent, noise_rng), support)


def bootstrap_selector(
    q_logits: Callable,
    params: Params,
    latent: Array,
    bootstrap_logits: Array,
    noise_rng: Array | None,
    support: Array,
) -> Array:
  """No double DQN: a* from the bootstrap network's own Q values `[B, A]`."""
  del q_logits, params, latent, noise_rng
  return q_values(bootstrap_logits, support)


# ---------------------------------------------------------------------------
# SPR: K-step rollout and self-predictive loss.
# ---------------------------------------------------------------------------


def transition_rollout(
    transition: Callable[[Array, Array], Array],
    latent: Array,
    actions: Array,
    observe: Callable[[Array], Any] | None = None,
) -> list:
  """Rolls a latent transition model K steps with the replayed actions (Schwarzer et al. 2021,
  Sec. 2.2): z_0 = `latent`, z_{k+1} = transition(z_k, a_k).

  Unrolled in Python: on XLA:CPU a scanned backward pass through the convolutions ran ~14x
  slower than the same steps unrolled. `observe` runs right after each step: the order of the
  calls that read the parameters sets the order in which their gradients are summed, so a
  caller that reads each step at once (SGI) gets the sums it always had.

  Args:
    transition: `(latent [B, ...], action int [B]) -> next latent [B, ...]`.
    latent: z_0, `[B, ...]`.
    actions: a_0..a_{K-1}, int `[B, K]`.
    observe: applied to each z_{k+1} as it is made; None: the latents themselves.

  Returns:
    [observe(z_1), ..., observe(z_K)].
  """
  chex.assert_rank(actions, 2)
  chex.assert_equal_shape_prefix([latent, actions], 1)
  out, z = [], latent
  for k in range(actions.shape[1]):
    z = transition(z, actions[:, k])
    out.append(z if observe is None else observe(z))
  return out


# A predictor maps (params, online projections [K*B, D] k-major, target projections [B, K, D],
# predictor state) to (predictions [K*B, D], new predictor state).
Predictor = Callable[[Params, Array, Array, Any], tuple[Array, Any]]


def learned_predictor(predict: Callable) -> Predictor:
  """SPR's learned linear predictor (`SPRApply.predict`); its state passes through."""

  def predictor(params, projections, targets, state):
    del targets
    return predict(params, None, projections), state

  return predictor


def closed_form_predictor(name: str, ema: float, ridge: float) -> Predictor:
  """A closed-form predictor of `spr.predictors.PREDICTORS` (Richemond et al. 2023; Tian et al.
  2021) from EMA statistics of (online projection, target projection) pairs; no gradient flows
  through its weights."""
  solve = predictors.PREDICTORS[name]

  def predictor(params, projections, targets, state):
    del params
    b, k = targets.shape[:2]
    pairs_target = targets.transpose(1, 0, 2).reshape(k * b, -1)
    weights, state = solve(
        jax.lax.stop_gradient(projections), pairs_target, state, ema=ema, ridge=ridge
    )
    return projections @ jax.lax.stop_gradient(weights), state

  return predictor


def self_predictive_objective(predictions: Array, targets: Array, mask: Array) -> Array:
  """Per-sample SPR loss: the masked per-step normalised L2 (`losses.self_predictive_loss`)
  averaged over k = 1..K, masked steps counting as zeros (mila-iqia/spr src/algos.py
  `spr_loss[1:].mean(0)`; mila-iqia/SGI the same, without a mask).

  Args:
    predictions: `[B, K, D]`.
    targets: `[B, K, D]` (no gradient).
    mask: `[B, K]`.

  Returns:
    `[B]`.
  """
  chex.assert_rank([predictions, targets, mask], [3, 3, 2])
  per_step = losses.batched_self_predictive_loss(predictions, targets, mask)
  return jnp.mean(per_step, axis=1)


def spr_rollout_loss(
    transition: Callable,
    project: Callable,
    predictor: Predictor,
    params: Params,
    target: Params,
    latent: Array,
    future: Array,
    actions: Array,
    terminals: Array,
    predictor_state: Any,
    weight: float,
) -> tuple[Array, Any]:
  """SPR's self-predictive loss (Schwarzer et al. 2021, Eq. 2-4; mila-iqia/spr src/models.py
  `do_spr_loss`, src/algos.py `loss`): roll the transition model K steps from the online latent of
  s_i, project (online) and predict, and compare with the target's projections of s_{i+1..i+K},
  masked after a terminal (`losses.spr_sequence_mask`).

  Args:
    transition, project: `SPRApply.transition`, `SPRApply.project`.
    predictor: `learned_predictor(...)` or `closed_form_predictor(...)`.
    params: online parameters (differentiated); `target`: the target view (no gradient).
    latent: online latent of s_i, `[B, h, w, c]`.
    future: target latents of s_{i+1..i+K}, `[B * K, h, w, c]` sample-major.
    actions: `[B, >= K]`, a_i..; terminals: done flags `[B, >= K+1]`, d_i...
    predictor_state: a closed-form predictor's EMA statistics (passed through otherwise).
    weight: `spr_weight` (SPR's model_spr_weight 5).

  Returns:
    (weight * per-sample mean over k `[B]`, new predictor state); zeros for K = 0.
  """
  b = latent.shape[0]
  k = future.shape[0] // b
  if k == 0:
    return jnp.zeros((b,), jnp.float32), predictor_state
  chex.assert_rank([actions, terminals], 2)
  # Project and predict all K steps in one matmul each ([K*B, ...], k-major): the same values as
  # per step, and one large GEMM is much cheaper than K small ones.
  rolled = jnp.concatenate(
      transition_rollout(lambda z, a: transition(params, None, z, a), latent, actions[:, :k])
  )
  targets = project(target, None, future).reshape(b, k, -1)
  projections = project(params, None, rolled)  # [K*B, D], k-major
  predictions, predictor_state = predictor(params, projections, targets, predictor_state)
  predictions = predictions.reshape(k, b, -1).transpose(1, 0, 2)  # [B, K, D]
  mask = losses.batched_spr_sequence_mask(terminals[:, : k + 1])
  return weight * self_predictive_objective(predictions, targets, mask), predictor_state


# ---------------------------------------------------------------------------
# SGI: goal-conditioned RL with hindsight goals, inverse dynamics.
# ---------------------------------------------------------------------------


def hindsight_goal_reward(
    latents: Array, goals: Array, gamma: float, distance_scale: float, reward_scale: float
) -> Array:
  """SGI's one-step goal return (goal n-step 1; mila-iqia/SGI src/algos.py, src/scrl.py):
  gamma * reward_scale * (d(s_t, g) - d(s_{t+1}, g)) with `losses.latent_goal_distance` on
  target latents, no gradient (`losses.hindsight_goal_returns`).

  Args:
    latents: flattened target latents of s_t and s_{t+1}, `[B, 2, D]`.
    goals: `[B, D]` (`losses.hindsight_goals`).
    gamma, distance_scale, reward_scale: SGI's 0.99, 5, 10.

  Returns:
    `[B]`.
  """
  chex.assert_rank([latents, goals], [3, 2])
  b = latents.shape[0]
  dist = losses.latent_goal_distance(latents, goals[:, None, :], distance_scale)  # [B, 2]
  returns = jax.vmap(losses.hindsight_goal_returns, in_axes=(0, 0, None, None))(
      dist, jnp.ones((b, 1), jnp.float32), gamma, reward_scale
  )[:, -1]
  return jax.lax.stop_gradient(returns)


def goal_objective(
    goal_q_logits: Callable,
    views: NetViews,
    latent: Array,
    next_target: Array,
    next_online: Array,
    goals: Array,
    actions: Array,
    returns: Array,
    gamma: float,
    support: Array,
) -> Array:
  """SGI's goal-conditioned C51 double-DQN loss (mila-iqia/SGI src/algos.py): the online goal
  head at s_t, the bootstrap from the target's goal head at s_{t+1}, a* from the online goal head
  at s_{t+1}, discount gamma (no terminals: the sampler never crosses one).

  Args:
    goal_q_logits: `SGIApply.goal_q_logits`.
    views: `NetViews` (online, fixed, target).
    latent: online latent of s_t `[B, h, w, c]`; next_target / next_online: target / online
      (no gradient) latents of s_{t+1}.
    goals: `[B, D]`; actions: a_t int `[B]`; returns: `hindsight_goal_reward`, `[B]`.
    gamma: discount; support: atoms `[N]`.

  Returns:
    Per-sample loss `[B]`.
  """
  chex.assert_rank([latent, goals, actions, returns], [4, 2, 1, 1])
  logits = goal_q_logits(views.online, None, latent, goals)
  next_logits = goal_q_logits(views.target, None, next_target, goals)
  selector = q_values(goal_q_logits(views.fixed, None, next_online, goals), support)
  discounts = jnp.full(returns.shape, gamma, jnp.float32)
  return losses.batched_categorical_double_q_loss(
      logits, actions, returns, discounts, next_logits, selector, support
  )


def inverse_objective(
    inverse: Callable[[Array, Array], Array],
    projections: Array,
    next_projections: Array,
    actions: Array,
) -> tuple[Array, Array]:
  """SGI's inverse dynamics (mila-iqia/SGI src/models.py `inverse_model`): an MLP on (online
  projection at k, target projection at k+1) predicts a_k; cross-entropy, mean over k.

  Args:
    inverse: `(projection [M, P], next projection [M, P]) -> action logits [M, A]`.
    projections: online projections of z_0..z_{K-1}, `[B, K, P]`.
    next_projections: target projections of s_{t+1..t+K}, `[B, K, P]`.
    actions: a_0..a_{K-1}, int `[B, K]`.

  Returns:
    (per-sample loss `[B]`, accuracy of the argmax over every step, scalar).
  """
  chex.assert_equal_shape([projections, next_projections])
  chex.assert_equal_shape_prefix([projections, actions], 2)
  b, k = actions.shape
  logits = inverse(projections.reshape(b * k, -1), next_projections.reshape(b * k, -1)).reshape(
      b, k, -1
  )
  return (
      losses.batched_inverse_dynamics_loss(logits, actions),
      jnp.mean(jnp.argmax(logits, -1) == actions),
  )


# ---------------------------------------------------------------------------
# State and update.
# ---------------------------------------------------------------------------


def init_network(network: Any, rng: Array) -> tuple[Params, Any, Array]:
  """(parameters, BatchNorm running statistics or (), remaining key) of a fresh network."""
  init_rng, rng = jax.random.split(rng)
  dummy = jnp.zeros((1, 4, 84, 84), jnp.float32)
  params, norm_state = network.init_with_norm_state(init_rng, dummy)
  return params, (norm_state if network.has_norm_state else ()), rng


class Update(NamedTuple):
  """What one gradient update produced."""

  loss: Array
  aux: dict
  params: Params
  opt_state: Any
  target_params: Params
  target_norm_state: Any
  finite: Array  # bool: the loss and the gradient norm are finite


def gradient_update(
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    target: TargetRule,
    params: Params,
    target_params: Params,
    opt_state: Any,
    *args,
    **kwargs,
) -> Update:
  """One optimiser step on `loss_fn(params, target_params, *args, **kwargs) -> (loss, aux)`,
  then the target's move (`TargetRule.moved`, from `aux["norm_state_main"]` and
  `aux["target_norm_state"]`)."""
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      params, target_params, *args, **kwargs
  )
  updates, opt_state = optimizer.update(grads, opt_state, params)
  new_params = optax.apply_updates(params, updates)
  new_target, target_norm = target.moved(
      params, new_params, target_params, aux["norm_state_main"], aux["target_norm_state"]
  )
  finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(grads))
  return Update(loss, aux, new_params, opt_state, new_target, target_norm, finite)
