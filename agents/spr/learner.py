"""The SPR learner: one pure, jitted step over (train state, transition).

Everything a run needs to continue lives in `TrainState` (parameters, optimiser state, the
device-resident replay, the RNG key and the counters), so a step is a pure function of it and of
the transition the env just produced:

    state, next_action, metrics = learner.step(state, frame, action, reward, terminal, next_stack)

adds the transition to replay, runs `updates_per_step` gradient updates (sampling from replay on
the device) and picks the action for the next state, in ONE device call with no host round trip
inside. The state is donated, so the replay's frame buffer is updated in place. Written with no
Python-side state so that it can be vmapped over independent runs and scanned over steps.

References: Schwarzer et al., "Data-Efficient Reinforcement Learning with Self-Predictive
Representations", ICLR 2021; Hessel et al. 2018 (Rainbow); van Hasselt et al. 2019 (DER).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from agents.spr.config import SPRConfig
from spr import diagnostics, losses, objectives, param_roles, predictors, replay
from spr.networks import make_spr_network

Params = Any
# fold_in salt of the diagnostics' key: a stream the training never draws from.
_DIAGNOSTICS_STREAM = 0x5D1A6


class TrainState(NamedTuple):
  params: Params
  target_params: Params  # () without `config.has_target`: the target is then the online network
  opt_state: Any
  replay: Any
  rng: jax.Array
  env_step: jax.Array  # int32 [], transitions added so far
  update_step: jax.Array  # int32 [], gradient updates done so far
  # EMA statistics of a closed-form SPR predictor (spr.predictors); () for the learned one.
  predictor_state: Any = ()
  # BatchNorm running statistics of the online / EMA-target encoder (the SGI ResNet with
  # resnet_norm="batch", spr.networks.BatchNorm); () for every other network.
  norm_state: Any = ()
  target_norm_state: Any = ()  # () also without a stored target (the online statistics serve)


class StepMetrics(NamedTuple):
  """Sums over the updates of one step (zeros when no update ran)."""

  loss: jax.Array
  rl_loss: jax.Array
  spr_loss: jax.Array
  updates: jax.Array
  finite: jax.Array  # bool: every loss and gradient norm of the step was finite


def clip_group_labels(params: Params) -> Params:
  """'transition' for the transition model; 'unclipped' for the predictor and SGI's inverse
  dynamics model; 'stem' (encoder and every Q / goal head layer) otherwise
  (`spr.param_roles.clip_group`)."""
  return param_roles.labels(params, param_roles.clip_group)


grouped_clip = param_roles.grouped_clip


def lr_group_labels(params: Params) -> Params:
  """SGI's learning-rate groups: 'encoder', 'head_first' (the first layer of both dueling
  streams, SGI's q_l1), 'rest' (`spr.param_roles.lr_group`)."""
  return param_roles.labels(params, param_roles.lr_group)


def _base_optimizer(config: SPRConfig, learning_rate: float) -> optax.GradientTransformation:
  """Adam, or for BBF AdamW with decoupled weight decay on weights only (rank-1 params, biases
  and norm scales, are not decayed), as its create_scaling_optimizer(decay_bias=False)."""
  if config.optimizer == "adamw":
    return optax.adamw(
        learning_rate,
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
        mask=lambda p: jax.tree.map(lambda x: x.ndim != 1, p),
    )
  return optax.adam(learning_rate, eps=config.adam_eps)


def make_optimizer(config: SPRConfig) -> optax.GradientTransformation:
  """Adam (lr 1e-4, eps 1.5e-4) after gradient-norm clipping at 10, as the SPR code.

  The SPR code clips two groups separately - encoder + Q head ("stem"), and the transition
  model - and leaves the predictor unclipped (src/algos.py, optimize_agent): `grouped_clip`.
  """
  parts = []
  if config.grad_clip > 0:
    parts.append(grouped_clip(config.grad_clip))
  if config.encoder_lr > 0 or config.head_first_lr > 0:
    # SGI finetuning: one optimiser per parameter group (encoder / first head layer / rest).
    rates = {
        "encoder": config.encoder_lr or config.learning_rate,
        "head_first": config.head_first_lr or config.learning_rate,
        "rest": config.learning_rate,
    }
    parts.append(
        optax.multi_transform(
            {g: _base_optimizer(config, lr) for g, lr in rates.items()}, lr_group_labels
        )
    )
  else:
    parts.append(_base_optimizer(config, config.learning_rate))
  return optax.chain(*parts)


q_values = objectives.q_values


class SPRLearner:
  """Builds the pure functions of one SPR agent for a given config and action count.

  The variant (BBF, SGI finetuning, a closed-form predictor, BatchNorm) is a choice of
  `spr.objectives` pieces made here, once: the target rule, the encoder-call plan, the
  double-DQN selector, the priorities and the predictor."""

  def __init__(self, config: SPRConfig, num_actions: int):
    cfg = self.config = config
    self.num_actions = num_actions
    self.network = make_spr_network(config.network(), num_actions)
    self.optimizer = make_optimizer(config)
    self.support = jnp.linspace(config.v_min, config.v_max, config.num_atoms)
    # -1 = auto: chunks of 16 on CPU (cache-friendly), one batch on accelerators.
    self.encoder_chunk = (
        config.encoder_chunk
        if config.encoder_chunk >= 0
        else (16 if jax.default_backend() == "cpu" else 0)
    )
    self.encoder = objectives.Encoder(self.network, self.encoder_chunk)
    self.target = objectives.target_rule(
        cfg.has_target, cfg.target_tau, cfg.target_ema_before_update
    )
    self.prepare = objectives.input_preparation(cfg.augmentation)
    self.latents = objectives.latent_plan(
        self.network.has_norm_state, cfg.has_target, cfg.bootstrap_with_target, cfg.double_dqn
    )
    self.selector = objectives.online_selector if cfg.double_dqn else objectives.bootstrap_selector
    self.priority = objectives.PRIORITIES[cfg.priority_kind]
    self.predictor = (
        objectives.learned_predictor(self.network.apply.predict)
        if cfg.predictor == "linear"
        else objectives.closed_form_predictor(cfg.predictor, cfg.predictor_ema, cfg.predictor_ridge)
    )
    # One compiled step per number of updates (0 during the random phase, then the config's).
    self.step = jax.jit(self._step, static_argnames=("num_updates", "reset"), donate_argnums=0)
    self.greedy_actions = jax.jit(self._greedy_actions)
    self._init_jit = jax.jit(self._init)

  # ---------------------------------------------------------------- state
  def init(self, rng: jax.Array) -> TrainState:
    """A new run's state. Jitted: one compilation (cached across processes) instead of a
    dispatch and compilation per op (`python -m launch.bench --probes`); the same values."""
    return self._init_jit(rng)

  def _init(self, rng: jax.Array) -> TrainState:
    params, norm_state, rng = objectives.init_network(self.network, rng)
    return TrainState(
        params=params,
        target_params=self.target.init(params),
        opt_state=self.optimizer.init(params),
        replay=replay.replay_init(self.config.replay_capacity),
        rng=rng,
        env_step=jnp.zeros((), jnp.int32),
        update_step=jnp.zeros((), jnp.int32),
        predictor_state=(
            ()
            if self.config.predictor == "linear"
            else predictors.init_state(2 * self.config.hidden)
        ),
        norm_state=norm_state,
        target_norm_state=self.target.init(norm_state),
    )

  def target_view(self, state: TrainState) -> tuple[Params, Any]:
    """(params, BatchNorm running statistics) of the network that acts as the target: the
    stored EMA target, or the online network when none is stored."""
    return (
        self.target.view(state.params, state.target_params),
        self.target.view(state.norm_state, state.target_norm_state),
    )

  # ---------------------------------------------------------------- loss
  def loss(
      self,
      params: Params,
      target_params: Params,
      batch: dict,
      is_weights: jax.Array,
      rng: jax.Array,
      n: jax.Array | None = None,
      gamma: jax.Array | None = None,
      predictor_state: Any = (),
      norm_state: Any = (),
      target_norm_state: Any = (),
  ):
    """Importance-weighted C51 double-DQN loss plus the SPR loss (Schwarzer et al. 2021, Eq. 4).

    Args:
      params: online parameters (differentiated).
      target_params: the stored target (held fixed), or () without one (`TrainState`).
      batch: replay batch; `observations` uint8 `[B, K+1, 4, 84, 84]`, `next_observations` uint8
        `[B, 4, 84, 84]`, `actions` int `[B, K+1]`, `rewards` and `terminals` `[B, H+1]` with
        index 0 the transition from s_i.
      is_weights: `[B]` prioritised-replay importance weights (applied to both losses).
      rng: key for augmentation and noisy-layer noise.
      n, gamma: traced n-step and discount (BBF annealing); None: the config's fixed values.
      predictor_state: EMA statistics of a closed-form predictor (config.predictor != "linear").
      norm_state, target_norm_state: BatchNorm running statistics of the online / stored target
        encoder (() without them).
    Returns:
      (scalar loss, aux dict with per-sample `priorities` [B], the loss parts, the new
      `predictor_state` and the running statistics: `norm_state` after every online pass,
      `norm_state_main` after the pass on s_i only and `target_norm_state` after the target's
      pass, before the EMA - see `update`).
    """
    cfg, net = self.config, self.network.apply
    # The order of the calls that read `params` sets the order in which their gradients are
    # summed: keep it, or the results stop being bitwise those of earlier runs.
    keys = jax.random.split(rng, 7)
    inputs = objectives.latent_inputs(
        self.prepare,
        keys,
        batch["observations"],
        batch["next_observations"],
        self.latents.first_frame,
        cfg.next_state_augmentation == "shared",
    )
    views = objectives.net_views(
        params, self.target.view(params, target_params), cfg.bootstrap_with_target
    )
    lat = self.latents(
        self.encoder, views, inputs, norm_state, self.target.view(norm_state, target_norm_state)
    )
    next_logits = net.q_logits(views.bootstrap, None, lat.bootstrap, keys[4])
    selector = self.selector(
        net.q_logits, views.fixed, lat.selector, next_logits, keys[6], self.support
    )
    logits = net.q_logits(params, None, lat.online, keys[6])
    # With n / gamma given (BBF's annealing, traced) steps >= n are masked inside n_step_return.
    # `next_observations` must be the matching bootstrap state (see `bootstrap_offset`).
    returns, discounts = losses.batched_n_step_return(
        batch["rewards"][:, : cfg.n_step],
        batch["terminals"][:, : cfg.n_step],
        cfg.gamma if gamma is None else gamma,
        n,
        convention=cfg.n_step_convention,
    )
    rl_loss, priorities = objectives.categorical_double_q_objective(
        logits,
        batch["actions"][:, 0],
        returns,
        discounts,
        next_logits,
        selector,
        self.support,
        self.priority,
    )
    spr_loss, predictor_state = objectives.spr_rollout_loss(
        net.transition,
        net.project,
        self.predictor,
        params,
        views.target,
        lat.online,
        lat.future,
        batch["actions"],
        batch["terminals"],
        predictor_state,
        cfg.spr_weight,
    )
    total = jnp.mean(is_weights * (rl_loss + spr_loss))
    aux = dict(
        priorities=priorities,
        rl_loss=jnp.mean(rl_loss),
        spr_loss=jnp.mean(spr_loss),
        predictor_state=predictor_state,
        norm_state=lat.norm_state,
        norm_state_main=lat.norm_main,
        target_norm_state=lat.target_norm_state,
    )
    return total, aux

  # ---------------------------------------------------------------- update
  @property
  def replay_options(self) -> dict[str, Any]:
    """The static sampling options of `spr.replay` this config runs with."""
    return replay.protocol_options(self.config.replay_protocol)["sample"]

  def beta_progress(self, state: TrainState) -> jax.Array:
    """Fraction of the PER beta annealing done at this update, on rlpyt's clock (rlpyt/algos/dqn/
    dqn.py update_itr_hyperparams, which the SPR code runs): beta is annealed over iterations
    learn_start .. steps and set AFTER each iteration's updates, so the updates of iteration i
    (the step that stores transition i, `env_step` = i + 1 transitions) use progress
    (i - 1 - learn_start) / (steps - learn_start), clipped to [0, 1]."""
    cfg = self.config
    done = state.env_step.astype(jnp.float32) - 2.0 - cfg.learn_start
    return jnp.clip(done / max(cfg.steps - cfg.learn_start, 1), 0.0, 1.0)

  def training_batch(
      self, state: TrainState, key: jax.Array, beta: jax.Array, batch_size: int | None = None
  ):
    """(batch, indices, IS weights, annealed n / gamma kwargs) of one update: a prioritised
    sample of the replay (`batch_size` samples, the config's by default), with the bootstrap
    stacks the config's n-step convention (and BBF's annealed n) needs."""
    cfg = self.config
    batch, indices, is_weights = replay.replay_sample(
        state.replay,
        key,
        batch_size or cfg.batch_size,
        cfg.n_step,
        cfg.spr_steps,
        beta,
        cfg.priority_alpha,
        **self.replay_options,
    )
    anneal = {}
    if annealing(cfg):
      n, gamma = self.annealed_n_gamma(cycle_updates(cfg, state.env_step, state.update_step))
      lo, hi = cfg.n_step_final or cfg.n_step, cfg.n_step
      batch = batch.replace(
          next_observations=bootstrap_stacks(
              state.replay,
              indices,
              bootstrap_offset(cfg, n),
              bootstrap_offset(cfg, lo),
              bootstrap_offset(cfg, hi),
          )
      )
      anneal = dict(n=n, gamma=gamma)
    elif bootstrap_offset(cfg, cfg.n_step) != cfg.n_step:
      batch = batch.replace(
          next_observations=replay.replay_gather(
              state.replay, indices, bootstrap_offset(cfg, cfg.n_step), 0
          ).next_observations
      )
    return batch, indices, is_weights, anneal

  def update(self, state: TrainState) -> tuple[TrainState, StepMetrics]:
    """One gradient update on a prioritised batch sampled from the state's replay."""
    cfg = self.config
    rng, sample_key, loss_key = jax.random.split(state.rng, 3)
    progress = self.beta_progress(state)
    beta = cfg.priority_beta_start + (cfg.priority_beta_end - cfg.priority_beta_start) * progress
    batch, indices, is_weights, anneal = self.training_batch(state, sample_key, beta)
    step = objectives.gradient_update(
        self.loss,
        self.optimizer,
        self.target,
        state.params,
        state.target_params,
        state.opt_state,
        batch,
        is_weights,
        loss_key,
        **anneal,
        predictor_state=state.predictor_state,
        norm_state=state.norm_state,
        target_norm_state=state.target_norm_state,
    )
    new_replay = replay.replay_update_priorities(
        state.replay,
        indices,
        step.aux["priorities"],
        **replay.protocol_options(cfg.replay_protocol)["update"],
    )
    metrics = StepMetrics(
        loss=step.loss,
        rl_loss=step.aux["rl_loss"],
        spr_loss=step.aux["spr_loss"],
        updates=jnp.ones((), jnp.int32),
        finite=step.finite,
    )
    return (
        state._replace(
            params=step.params,
            target_params=step.target_params,
            opt_state=step.opt_state,
            replay=new_replay,
            rng=rng,
            update_step=state.update_step + 1,
            predictor_state=step.aux["predictor_state"],
            norm_state=step.aux["norm_state"],
            target_norm_state=step.target_norm_state,
        ),
        metrics,
    )

  # ---------------------------------------------------------------- diagnostics
  def diagnostics(self, state: TrainState) -> dict[str, jax.Array]:
    """Representation diagnostics of the current networks on one replay batch of
    `diagnostics_batch_size` samples: a flat dict of float scalars
    (`spr.diagnostics.latent_diagnostics`; metrics.jsonl writes them as `diag_*`).

    Reads the state and changes nothing: the batch is drawn with a key folded off `state.rng`
    (the training stream does not advance) and nothing is written back, so a run follows the same
    trajectory with or without diagnostics. The networks are in evaluation mode on unaugmented
    frames (BatchNorm reads its running statistics, noisy layers use their mean weights).
    Logged: srank of the encoder latents and of the projections (Kumar et al. 2021), dormant
    units of the encoder and of the head's first layer (Sokar et al. 2023), online/target
    projection drift, the self-predictive cosine for each k = 1..K, the shape of the run's
    predictor (the learned linear map, or the closed-form one from the run's EMA statistics:
    stable rank, singular-value spread, distance to the orthogonal group, Richemond et al.
    2023) and, beside it, each closed-form predictor of this batch's (rolled projection, target
    projection) statistics (`predictor_batch_<name>_*`), the gradient norm of the training loss
    per parameter role on this batch, and how concentrated the greedy policy of the acting network
    (`acting_params`) is over the batch's states (`greedy_top_action_share`,
    `greedy_action_entropy`).
    """
    cfg, net = self.config, self.network.apply
    sample_key, loss_key = jax.random.split(jax.random.fold_in(state.rng, _DIAGNOSTICS_STREAM))
    # PER beta 1 (full importance correction), not the run's annealed beta: the gradient norms
    # are those of the loss on this batch with unbiased weights.
    batch, _, is_weights, anneal = self.training_batch(
        state, sample_key, 1.0, cfg.diagnostics_batch_size
    )
    grads = jax.grad(
        lambda p: self.loss(
            p,
            state.target_params,
            batch,
            is_weights,
            loss_key,
            **anneal,
            predictor_state=state.predictor_state,
            norm_state=state.norm_state,
            target_norm_state=state.target_norm_state,
        )[0]
    )(state.params)
    params, norm_state = state.params, state.norm_state
    target_params, target_norm = self.target_view(state)
    obs = batch["observations"]  # [B, K+1, 4, 84, 84]
    b, k_plus_1 = obs.shape[:2]
    frames = objectives.scale_frames(obs.reshape((b * k_plus_1,) + obs.shape[2:]))
    latents = self.encoder(params, frames[::k_plus_1], norm_state)  # s_i of each sample
    projections = net.project(params, None, latents)
    target_latents = self.encoder(target_params, frames, target_norm)
    # The greedy policy is that of the network that acts: BBF acts with its EMA target, whose
    # latents of s_0 are already in `target_latents` (`acting_params` is then `target_view`).
    acting, _ = self.acting_params(state)
    acting_latents = target_latents[::k_plus_1] if cfg.act_with_target else latents
    q = q_values(net.q_logits(acting, None, acting_latents, None), self.support)
    target_projections = net.project(target_params, None, target_latents).reshape(b, k_plus_1, -1)
    extra = {}
    weights = {cfg.predictor: self.predictor_weights(state)}
    if k_plus_1 > 1:
      rolled = objectives.transition_rollout(
          lambda z, a: net.transition(params, None, z, a), latents, batch["actions"][:, :-1]
      )
      rolled_projections = net.project(params, None, jnp.concatenate(rolled))  # [K*B, D]
      predictions, _ = self.predictor(
          params, rolled_projections, target_projections[:, 1:], state.predictor_state
      )
      # Every closed-form predictor of this batch's statistics, side by side with the run's.
      d = target_projections.shape[-1]
      sigma, cross = predictors.batch_statistics(
          rolled_projections.astype(jnp.float32),
          target_projections[:, 1:].transpose(1, 0, 2).reshape(-1, d).astype(jnp.float32),
      )
      for name, from_stats in predictors.FROM_STATS.items():
        weights[f"batch_{name}"] = from_stats(sigma, cross, cfg.predictor_ridge)
      extra = dict(
          predictions=predictions.reshape(k_plus_1 - 1, b, -1).transpose(1, 0, 2),
          spr_targets=target_projections[:, 1:],
          spr_mask=losses.batched_spr_sequence_mask(batch["terminals"][:, :k_plus_1]),
      )
    return diagnostics.latent_diagnostics(
        latents,
        projections,
        target_projections=target_projections[:, 0],
        predictor_weights=weights,
        grads=grads,
        q_values=q,
        **extra,
    )

  def predictor_weights(self, state: TrainState) -> jax.Array:
    """The SPR predictor as a matrix W [D, D] (predictions = projections @ W (+ bias)): the
    learned linear layer's kernel, or the closed-form W of the run's EMA statistics."""
    if self.config.predictor == "linear":
      [kernel] = [
          mod["w"] for name, mod in state.params.items() if param_roles.role(name) == "predictor"
      ]
      return kernel
    stats = state.predictor_state
    return predictors.FROM_STATS[self.config.predictor](
        stats.sigma, stats.cross, self.config.predictor_ridge
    )

  # ---------------------------------------------------------------- acting
  def _greedy_actions(
      self, acting: tuple[Params, Any], stacks: jax.Array, noise_rng: jax.Array | None = None
  ) -> jax.Array:
    """Greedy actions `[N]` for uint8 stacks `[N, 4, 84, 84]` with `acting` = (params, norm
    state) from `acting_params`: no augmentation, BatchNorm with its running statistics; noisy
    layers sample noise only when `noise_rng` is given (training), mean weights otherwise."""
    params, norm_state = acting
    latent = self.encoder(params, objectives.scale_frames(stacks), norm_state)
    logits = self.network.apply.q_logits(params, None, latent, noise_rng)
    return jnp.argmax(q_values(logits, self.support), axis=-1)

  # ---------------------------------------------------------------- BBF
  def annealed_n_gamma(self, cycle: jax.Array) -> tuple[jax.Array, jax.Array]:
    """BBF's exponential interpolation after each reset, p = min(cycle / anneal_updates, 1):
    n = round(n_max * (n_final / n_max)^p) (10 -> 3) and 1 - gamma = (1 - gamma_start)^(1-p) *
    (1 - gamma)^p (0.97 -> 0.997), as exponential_decay_scheduler in BBF's spr_agent.py."""
    cfg = self.config
    p = jnp.minimum(cycle.astype(jnp.float32) / cfg.anneal_updates, 1.0)
    n_final = cfg.n_step_final or cfg.n_step  # 0: n is not annealed (gamma may be)
    n = jnp.round(cfg.n_step * jnp.power(n_final / cfg.n_step, p)).astype(jnp.int32)
    n = jnp.clip(n, n_final, cfg.n_step)
    one_minus = jnp.power(1.0 - cfg.gamma_start, 1.0 - p) * jnp.power(1.0 - cfg.gamma, p)
    return n, (1.0 - one_minus).astype(jnp.float32)

  def reset(self, state: TrainState) -> TrainState:
    """BBF shrink-and-perturb reset (its jit_reset with BBF.gin's settings): encoder and
    transition model become shrink * old + perturb * fresh init; head, projection and predictor
    are replaced by the fresh init; the EMA target gets the same treatment with ANOTHER fresh init;
    the optimiser state is re-initialised (BBF copies no optimiser entries)."""
    cfg = self.config
    rng, k_online, k_target = jax.random.split(state.rng, 3)
    dummy = jnp.zeros((1, 4, 84, 84), jnp.float32)

    def mix(old, key):
      fresh = self.network.init(key, dummy)
      return {
          m: {
              k: (
                  cfg.shrink_factor * v + cfg.perturb_factor * fresh[m][k]
                  if _shrink_perturbed(m)
                  else fresh[m][k]
              )
              for k, v in mod.items()
          }
          for m, mod in old.items()
      }

    params = mix(state.params, k_online)
    target = self.target.map(lambda t: mix(t, k_target), state.target_params)
    return state._replace(
        params=params, target_params=target, opt_state=self.optimizer.init(params), rng=rng
    )

  def epsilon(self, env_step: jax.Array) -> jax.Array:
    """Training epsilon of action a_j, j = `env_step` (chosen once j transitions are stored).

    With `epsilon_decay_steps`: Dopamine's linearly_decaying_epsilon(decay, step, warmup =
    learn_start, epsilon_train) at step = j + 1, since BBF / Dopamine increment their step counter
    in `_train_step`, before the action is selected: epsilon(a_j) = clip((decay + learn_start -
    j - 1) / decay) for epsilon_train 0 (BBF: 1 through a_1999, 0 from a_4000). Without: 1 for
    j <= learn_start (rlpyt's schedule, see `_step`), then epsilon_train."""
    cfg = self.config
    if cfg.epsilon_decay_steps == 0:
      return jnp.where(env_step <= cfg.learn_start, 1.0, cfg.epsilon_train)
    left = (cfg.epsilon_decay_steps + cfg.learn_start - env_step - 1).astype(jnp.float32)
    bonus = jnp.clip(
        (1.0 - cfg.epsilon_train) * left / cfg.epsilon_decay_steps, 0.0, 1.0 - cfg.epsilon_train
    )
    return cfg.epsilon_train + bonus

  def acting_params(self, state: TrainState) -> tuple[Params, Any]:
    """What acts (training and evaluation), as the pair (params, BatchNorm running statistics)
    that `greedy_actions` takes: the online network, or BBF's EMA target."""
    if self.config.act_with_target:
      return self.target_view(state)
    return state.params, state.norm_state

  def _step(
      self,
      state: TrainState,
      frame: jax.Array,
      action: jax.Array,
      reward: jax.Array,
      terminal: jax.Array,
      next_stack: jax.Array,
      num_updates: int,
      reset: bool = False,
  ):
    """Adds (frame, action, clipped reward, terminal), runs `num_updates` updates, then picks
    the action for `next_stack`: uniformly random before `learn_start`, else greedy with noise
    (SPR); epsilon-greedy with the acting parameters when the config has an epsilon schedule
    (BBF). `reset` (static; the caller decides it with `is_reset_step`) applies a BBF
    shrink-and-perturb reset after the updates."""
    cfg = self.config
    new_replay = replay.replay_add(
        state.replay,
        frame,
        action,
        reward,
        terminal,
        **replay.protocol_options(cfg.replay_protocol)["add"],
    )
    state = state._replace(replay=new_replay, env_step=state.env_step + 1)
    zero = jnp.zeros((), jnp.float32)
    metrics = StepMetrics(zero, zero, zero, jnp.zeros((), jnp.int32), jnp.ones((), bool))
    if num_updates:
      # Unrolled, not lax.scan: on XLA:CPU a scan whose body holds the conv backward passes ran
      # several times slower than the same updates unrolled (see launch.bench).
      per_update = []
      for _ in range(num_updates):
        state, m = self.update(state)
        per_update.append(m)
      metrics = StepMetrics(
          loss=sum(m.loss for m in per_update),
          rl_loss=sum(m.rl_loss for m in per_update),
          spr_loss=sum(m.spr_loss for m in per_update),
          updates=sum(m.updates for m in per_update),
          finite=jnp.all(jnp.stack([m.finite for m in per_update])),
      )
    if reset:
      state = self.reset(state)
    rng, act_key, noise_key = jax.random.split(state.rng, 3)
    greedy = self._greedy_actions(self.acting_params(state), next_stack[None], noise_key)[0]
    if cfg.epsilon_decay_steps == 0 and cfg.epsilon_train == 0.0:  # SPR: noisy nets explore
      random_action = jax.random.randint(act_key, (), 0, self.num_actions)
      # a_j is uniformly random for j <= learn_start (rlpyt's epsilon is 1 through iteration
      # min_itr_learn, then eps_final over eps_steps - min_itr = 1 iteration; SPR: eps_final 0).
      next_action = jnp.where(state.env_step <= cfg.learn_start, random_action, greedy)
    else:
      coin_key, random_key = jax.random.split(act_key)
      random_action = jax.random.randint(random_key, (), 0, self.num_actions)
      explore = jax.random.uniform(coin_key) < self.epsilon(state.env_step)
      next_action = jnp.where(explore, random_action, greedy)
    return state._replace(rng=rng), next_action.astype(jnp.int32), metrics

  def first_action(self, state: TrainState) -> tuple[TrainState, jax.Array]:
    """The action for the very first state (always in the random phase when learn_start > 0)."""
    rng, key = jax.random.split(state.rng)
    return state._replace(rng=rng), jax.random.randint(key, (), 0, self.num_actions)


def _shrink_perturbed(module_name: str) -> bool:
  """Haiku modules BBF shrinks and perturbs at a reset (its "encoder,transition_model")."""
  return param_roles.shrink_perturbed(param_roles.role(module_name))


def bootstrap_offset(config: SPRConfig, n):
  """Offset of the bootstrap state of an n-step target: s_{t+n}, or s_{t+n-1} under BBF's
  n_step_convention (losses.n_step_return)."""
  return n - 1 if config.n_step_convention == "bbf" else n


def bootstrap_stacks(
    replay_state, indices: jax.Array, n: jax.Array, n_min: int, n_max: int
) -> jax.Array:
  """Bootstrap stacks s_{t+n} `[B, 4, 84, 84]` for a traced n in [n_min, n_max] (BBF's annealed
  n): one small gather per possible n (replay stacks need a static offset), then a select."""
  options = [
      replay.replay_gather(replay_state, indices, m, 0).next_observations
      for m in range(n_min, n_max + 1)
  ]
  return jnp.stack(options)[jnp.clip(n, n_min, n_max) - n_min]


def annealing(config: SPRConfig) -> bool:
  return config.anneal_updates > 0 and (
      (config.n_step_final and config.n_step_final != config.n_step)
      or (config.gamma_start and config.gamma_start != config.gamma)
  )


def updates_at(config: SPRConfig, stored: int) -> int:
  """Gradient updates run by the step that brings the replay to `stored` transitions: none until
  MORE than `learn_start` are stored. The SPR code (rlpyt's runner: iteration i collects
  transition i, then `optimize_agent` updates iff i >= min_itr_learn) first updates with 2001
  transitions stored, as Dopamine / BBF (`add_count > min_replay_history`)."""
  return config.updates_per_step if stored > config.learn_start else 0


def updates_through(config: SPRConfig, env_step):
  """Gradient updates done once the step that stored transition number `env_step` (1-based: the
  replay then holds `env_step` transitions) has run; see `updates_at`."""
  if isinstance(env_step, int):  # host bookkeeping: no device op, no sync
    return config.updates_per_step * max(env_step - config.learn_start, 0)
  return config.updates_per_step * jnp.maximum(env_step - config.learn_start, 0)


def is_reset_step(config: SPRConfig, env_step: int) -> bool:
  """Whether the step that stores transition number `env_step` ends with a BBF reset: every
  `config.reset_interval` steps while `env_step + interval <= reset_until` (BBF's
  no_resets_after), after that step's updates (BBF 2023 code, spr_agent.py _train_step)."""
  r = config.reset_interval
  return bool(r > 0 and env_step > 0 and env_step % r == 0 and env_step + r <= config.reset_until)


def cycle_updates(config: SPRConfig, env_step: jax.Array, update_step: jax.Array) -> jax.Array:
  """Updates since the last reset before this step's updates (since the start if none): the
  clock of BBF's n / gamma annealing, a pure function of the counters."""
  r = config.reset_interval
  if r <= 0 or config.reset_until < 2 * r:
    return update_step
  last_allowed = ((config.reset_until - r) // r) * r
  last = jnp.minimum(((env_step - 1) // r) * r, last_allowed)
  return jnp.where(last > 0, update_step - updates_through(config, last), update_step)


@functools.lru_cache(maxsize=None)
def learner_for(config: SPRConfig, num_actions: int) -> SPRLearner:
  """Learners are cached so that compiled functions are shared across runs in one process."""
  return SPRLearner(config, num_actions)


def param_count(params: Params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))


__all__ = [
    "SPRLearner",
    "TrainState",
    "StepMetrics",
    "make_optimizer",
    "grouped_clip",
    "q_values",
    "learner_for",
    "param_count",
    "is_reset_step",
    "cycle_updates",
    "updates_through",
    "annealing",
    "updates_at",
]
