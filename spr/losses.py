"""Pure loss functions of the SPR agent (C51 + double DQN + n-step + SPR loss).

Conventions (rlax style): every function acts on ONE stream of experience
(no batch axis); the `batched_*` helpers are `jax.vmap`s of them over a
leading batch axis. Names: `_tm1` is the time step whose prediction is being
trained (s_{t-1}, a_{t-1}), `_t` the bootstrap step; `r_t` is the (n-step)
return and `discount_t` the bootstrap discount (gamma^n, or 0 after a
terminal).

What was checked against the reference code (mila-iqia/spr, PyTorch/rlpyt):

* `src/algos.py`, `dist_rl_loss`: target support `next_z = clamp(R + (1 -
  done_n) * gamma^n * z, V_min, V_max)`, projection coefficients
  `clamp(1 - |next_z - z| / delta_z, 0, 1)` summed against the TARGET net's
  probabilities at `argmax_a sum_i z_i p_online(s_t, a)_i` (double DQN with
  the online net's expected Q), loss `-sum(target_p * log_softmax(online))`
  (cross-entropy). Priorities sent to the replay are NOT the cross-entropy but
  `KL = sum(clamp(target_p, 1e-6, 1) * (log(clamp(target_p, 1e-6, 1)) -
  log_pred))`, clamped to [1e-6, 1e6] (see `categorical_kl_priority`).
* `src/models.py`, `spr_loss` (`mpr_loss` in older commits):
  `F.normalize(x, p=2, dim=-1, eps=1e-3)` on both sides (i.e.
  x / max(||x||, 1e-3), eps is 1e-3, NOT torch's default 1e-12), then
  `mse(f1, f2).sum(-1)` = 2 - 2 cos for non-tiny vectors.
* `src/algos.py`, `loss`: `nonterminals = 1 - sign(cumsum(done, 0))`
  over the sampled sequence of K+1 `done` flags (done[j] = the transition out
  of s_{i+j} ended the episode, rlpyt's sampler convention), multiplied
  into the per-step SPR loss `[K+1, B]`; then `model_spr_loss =
  spr_loss[1:].mean(0)` (mean over k = 1..K, masked steps count as zeros in
  the denominator), `t0_spr_loss = spr_loss[0]`; total
  `t0_weight * t0 + model_spr_weight * model`, with defaults (scripts/run.py)
  `--t0-mpr-loss-weight 0`, `--model-mpr-weight 5`; the IS weights multiply
  both before the batch mean.
"""

import functools
from typing import Optional

import chex
import jax
import jax.numpy as jnp

Array = chex.Array
Numeric = chex.Numeric

# F.normalize eps in the SPR code (src/models.py, spr_loss).
SPR_NORMALIZE_EPS = 1e-3
# NaN-guard of the SPR code's KL priorities (src/algos.py, EPS).
SPR_PRIORITY_EPS = 1e-6


# ---------------------------------------------------------------------------
# C51 projection and distributional double-DQN loss.
# ---------------------------------------------------------------------------


def categorical_projection(z_src: Array, probs: Array, z_dst: Array) -> Array:
  """Projects a categorical distribution onto a fixed support (C51).

  See "A Distributional Perspective on Reinforcement Learning" by Bellemare,
  Dabney and Munos (https://arxiv.org/abs/1707.06887), Algorithm 1.

  The atoms `z_src` (any locations, e.g. `r + gamma^n * z`) are first clipped
  to [z_dst[0], z_dst[-1]]; the mass `probs[j]` of atom j is then split
  between the two neighbouring atoms of `z_dst` linearly in distance (all of
  it to one atom when it lands exactly on it). Written as the dense form of
  the SPR/rlpyt code: `out_i = sum_j clip(1 - |z_src_j - z_dst_i| / dz, 0, 1)
  * probs_j`, which is exact for an equally spaced `z_dst`.

  Args:
    z_src: source atom locations, shape [M].
    probs: probabilities of the source atoms, shape [M].
    z_dst: target support, equally spaced and increasing, shape [N], N >= 2.

  Returns:
    The projected probabilities on `z_dst`, shape [N] (sums to sum(probs)).
  """
  chex.assert_rank([z_src, probs, z_dst], 1)
  chex.assert_equal_shape([z_src, probs])
  if z_dst.shape[0] < 2:
    raise ValueError('z_dst needs at least 2 atoms.')
  v_min, v_max = z_dst[0], z_dst[-1]
  delta_z = z_dst[1] - z_dst[0]
  z_src = jnp.clip(z_src, v_min, v_max)
  coeffs = jnp.clip(1.0 - jnp.abs(z_src[None, :] - z_dst[:, None]) / delta_z, 0.0, 1.0)
  return jnp.sum(coeffs * probs[None, :], axis=-1)


def categorical_double_q_target(
    r_t: Numeric,
    discount_t: Numeric,
    logits_t_target: Array,
    q_t_selector: Array,
    support: Array,
) -> Array:
  """Projected double-DQN C51 target distribution (no gradient).

  See Bellemare et al. 2017 (https://arxiv.org/abs/1707.06887) for the
  projection and van Hasselt, Guez and Silver 2016, "Deep Reinforcement
  Learning with Double Q-learning" (https://arxiv.org/abs/1509.06461) for the
  action selection: a* = argmax_a q_t_selector[a] (the ONLINE network's
  expected Q at s_t), then the TARGET network's distribution at a* is
  shifted to r_t + discount_t * support and projected back onto `support`.

  Args:
    r_t: n-step return, scalar.
    discount_t: bootstrap discount (gamma^n, or 0 at/after a terminal), scalar.
    logits_t_target: target-network logits at s_t, shape [A, N].
    q_t_selector: online-network Q values at s_t used for the argmax, [A].
    support: the fixed support z, shape [N].

  Returns:
    Target probabilities, shape [N], wrapped in `stop_gradient`.
  """
  chex.assert_rank([r_t, discount_t, logits_t_target, q_t_selector, support], [0, 0, 2, 1, 1])
  chex.assert_equal_shape_prefix([logits_t_target, q_t_selector], 1)
  chex.assert_equal_shape_suffix([logits_t_target, support], 1)
  a_star = jnp.argmax(q_t_selector)
  p_t = jax.nn.softmax(logits_t_target[a_star])
  z_t = r_t + discount_t * support
  return jax.lax.stop_gradient(categorical_projection(z_t, p_t, support))


def categorical_double_q_loss(
    logits_tm1: Array,
    a_tm1: Numeric,
    r_t: Numeric,
    discount_t: Numeric,
    logits_t_target: Array,
    q_t_selector: Array,
    support: Array,
) -> Array:
  """Distributional (C51) double-Q cross-entropy loss for one transition.

  See Bellemare et al. 2017 (https://arxiv.org/abs/1707.06887) and van
  Hasselt et al. 2016 (https://arxiv.org/abs/1509.06461); as used by Rainbow
  / DER and SPR (Schwarzer et al. 2021, https://arxiv.org/abs/2007.05929,
  code: mila-iqia/spr src/algos.py `dist_rl_loss`).

  loss = -sum_i target_i * log softmax(logits_tm1[a_tm1])_i with
  target = stop_gradient(Proj(r_t + discount_t * z, p_target(s_t, a*))),
  a* = argmax q_t_selector.

  The value is a per-transition loss; vmapped over a batch (see
  `batched_categorical_double_q_loss`) it can serve as replay priorities.
  The SPR code itself prioritises by the KL divergence, see
  `categorical_kl_priority` (same gradient, differs by the target entropy).

  Args:
    logits_tm1: online logits at s_{t-1}, shape [A, N].
    a_tm1: action taken at s_{t-1}, int scalar.
    r_t: n-step return, scalar.
    discount_t: bootstrap discount, gamma^n or 0, scalar.
    logits_t_target: target-network logits at s_t, shape [A, N].
    q_t_selector: online Q values at s_t (argmax selects a*), shape [A].
    support: fixed support z, equally spaced, shape [N].

  Returns:
    Scalar cross-entropy loss.
  """
  chex.assert_rank([logits_tm1, a_tm1], [2, 0])
  chex.assert_equal_shape([logits_tm1, logits_t_target])
  chex.assert_type(a_tm1, int)
  target = categorical_double_q_target(r_t, discount_t, logits_t_target, q_t_selector, support)
  log_p_tm1 = jax.nn.log_softmax(logits_tm1[a_tm1])
  return -jnp.sum(target * log_p_tm1)


def categorical_kl_priority(
    logits_tm1: Array,
    a_tm1: Numeric,
    r_t: Numeric,
    discount_t: Numeric,
    logits_t_target: Array,
    q_t_selector: Array,
    support: Array,
    eps: float = SPR_PRIORITY_EPS,
) -> Array:
  """The SPR code's replay priority: KL(target || prediction), no gradient.

  mila-iqia/spr src/algos.py `dist_rl_loss`: target_p clamped to [eps, 1],
  KL = sum(target_p * (log target_p - log_pred)), clamped to [eps, 1/eps].
  Same arguments as `categorical_double_q_loss`.

  Returns:
    Scalar, stop-gradient KL divergence.
  """
  target = categorical_double_q_target(r_t, discount_t, logits_t_target, q_t_selector, support)
  log_p_tm1 = jax.nn.log_softmax(logits_tm1[a_tm1])
  target = jnp.clip(target, eps, 1.0)
  kl = jnp.sum(target * (jnp.log(target) - log_p_tm1))
  return jax.lax.stop_gradient(jnp.clip(kl, eps, 1.0 / eps))


def batched_categorical_double_q_loss(
    logits_tm1: Array,
    a_tm1: Array,
    r_t: Array,
    discount_t: Array,
    logits_t_target: Array,
    q_t_selector: Array,
    support: Array,
) -> Array:
  """vmap of `categorical_double_q_loss` over a leading batch axis of every
  argument except `support` ([N]); returns per-sample losses [B]."""
  fn = functools.partial(categorical_double_q_loss, support=support)
  return jax.vmap(fn)(logits_tm1, a_tm1, r_t, discount_t, logits_t_target, q_t_selector)


def batched_categorical_kl_priority(
    logits_tm1,
    a_tm1,
    r_t,
    discount_t,
    logits_t_target,
    q_t_selector,
    support,
    eps: float = SPR_PRIORITY_EPS,
) -> Array:
  """vmap of `categorical_kl_priority` over a leading batch axis -> [B]."""
  fn = functools.partial(categorical_kl_priority, support=support, eps=eps)
  return jax.vmap(fn)(logits_tm1, a_tm1, r_t, discount_t, logits_t_target, q_t_selector)


# ---------------------------------------------------------------------------
# n-step returns.
# ---------------------------------------------------------------------------


def n_step_return(
    rewards: Array,
    terminals: Array,
    gamma: Numeric,
    n: Optional[Numeric] = None,
    convention: str = 'textbook',
) -> tuple[Array, Array]:
  """Truncated n-step return and bootstrap discount for one start index.

  Rainbow-style n-step target (Hessel et al. 2018; Sutton 1988) as computed by
  rlpyt's replay for SPR: R = sum_{j<n} gamma^j r_j, stopping after the first
  terminal (the terminal transition's own reward is included), and discount
  gamma^n if no terminal among the n transitions else 0. `gamma` and `n` may
  be traced values (BBF anneals both): the arrays have a static length n_max
  and steps j >= n are masked out.

  Args:
    rewards: r_0..r_{n_max-1}, rewards of the transitions out of s_i..., [n_max].
    terminals: done flags of the same transitions, [n_max] (bool/int/float).
    gamma: discount, scalar (may be traced).
    n: number of steps, 1 <= n <= n_max, int scalar (may be traced);
      defaults to n_max. Values above n_max are not checked under jit.
    convention: 'textbook' (rlpyt, Dopamine's DQN: the bootstrap is
      gamma^n Z(s_{i+n}) and any terminal among the n transitions stops it) or
      'bbf' (BBF's subsequence_replay_buffer.py sample_transition_batch, which
      produced its published numbers: the same return, but the caller
      bootstraps from s_{i+n-1} and the LAST transition's terminal is never
      read - google-research issue #1851).

  Returns:
    (return, discount): scalars; discount = gamma^n * prod_{j<n}(1 - term_j)
    ('textbook') or gamma^n * prod_{j<n-1}(1 - term_j) ('bbf').
  """
  if convention not in ('textbook', 'bbf'):
    raise ValueError(f"convention must be 'textbook' or 'bbf', got {convention!r}")
  chex.assert_rank([rewards, terminals], 1)
  chex.assert_equal_shape([rewards, terminals])
  n_max = rewards.shape[0]
  dtype = jnp.result_type(rewards.dtype, jnp.float32)
  rewards = rewards.astype(dtype)
  gamma = jnp.asarray(gamma, dtype)
  if n is None:
    n = n_max
  n = jnp.asarray(n)
  j = jnp.arange(n_max)
  in_window = (j < n).astype(dtype)
  term = (terminals != 0).astype(dtype) * in_window
  # alive[j] = 1 iff no terminal among transitions 0..j-1 (inside the window).
  not_term_cum = jnp.cumprod(1.0 - term)
  alive = jnp.concatenate([jnp.ones((1,), dtype), not_term_cum[:-1]])
  powers = jnp.power(gamma, j.astype(dtype))
  ret = jnp.sum(powers * rewards * alive * in_window)
  if convention == 'bbf':
    # alive[n-1]: no terminal among transitions 0..n-2 (all ones past the window).
    stop = jnp.sum(alive * (j == n - 1).astype(dtype))
  else:
    stop = not_term_cum[-1]
  discount = jnp.power(gamma, n.astype(dtype)) * stop
  return ret, discount


def batched_n_step_return(
    rewards: Array,
    terminals: Array,
    gamma: Numeric,
    n: Optional[Numeric] = None,
    convention: str = 'textbook',
) -> tuple[Array, Array]:
  """vmap of `n_step_return` over [B, n_max] rewards/terminals (shared gamma,
  n, convention) -> ([B], [B])."""
  fn = functools.partial(n_step_return, gamma=gamma, n=n, convention=convention)
  return jax.vmap(fn)(rewards, terminals)


# ---------------------------------------------------------------------------
# SPR self-predictive loss.
# ---------------------------------------------------------------------------


def l2_normalize(x: Array, eps: float) -> Array:
  """x / max(||x||_2, eps) over the last axis (torch F.normalize semantics).

  Written as sqrt(max(sum x^2, eps^2)) so the gradient is finite at x = 0.
  """
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(sq, eps * eps))


def self_predictive_loss(
    predictions: Array,
    targets: Array,
    mask: Array,
    eps: float = SPR_NORMALIZE_EPS,
) -> Array:
  """Per-step SPR loss: normalised L2 (= 2 - 2 cos) times a validity mask.

  See "Data-Efficient Reinforcement Learning with Self-Predictive
  Representations", Schwarzer et al. 2021 (https://arxiv.org/abs/2007.05929),
  Eq. 2; code mila-iqia/spr src/models.py `spr_loss`:
  `F.normalize(., p=2, dim=-1, eps=1e-3)` on both sides, then the squared
  distance summed over features. Targets are wrapped in stop_gradient.

  Args:
    predictions: online predictions y_hat_{t+k}, shape [K, D].
    targets: target projections y~_{t+k}, shape [K, D] (no gradient).
    mask: validity of each step (see `spr_sequence_mask`), shape [K].
    eps: lower bound of the norm in the normalisation (the SPR code's 1e-3).

  Returns:
    Per-step losses, shape [K], in [0, 4]; 0 where mask is 0.
  """
  chex.assert_rank([predictions, targets, mask], [2, 2, 1])
  chex.assert_equal_shape([predictions, targets])
  chex.assert_equal_shape_prefix([predictions, mask], 1)
  targets = jax.lax.stop_gradient(targets)
  p = l2_normalize(predictions, eps)
  t = l2_normalize(targets, eps)
  per_step = jnp.sum(jnp.square(p - t), axis=-1)
  return per_step * mask.astype(per_step.dtype)


def batched_self_predictive_loss(
    predictions: Array, targets: Array, mask: Array, eps: float = SPR_NORMALIZE_EPS
) -> Array:
  """vmap of `self_predictive_loss`: [B, K, D], [B, K, D], [B, K] -> [B, K]."""
  fn = functools.partial(self_predictive_loss, eps=eps)
  return jax.vmap(fn)(predictions, targets, mask)


def nonterminal_prefix_mask(terminals: Array) -> Array:
  """`1 - sign(cumsum(terminals))`: 1 until (and excluding) the first terminal.

  The exact expression of mila-iqia/spr src/algos.py (`nonterminals`).

  Args:
    terminals: done flags, shape [T].

  Returns:
    Float mask [T]: out[j] = 1 iff terminals[0..j] are all 0.
  """
  chex.assert_rank(terminals, 1)
  done = (terminals != 0).astype(jnp.float32)
  return 1.0 - jnp.sign(jnp.cumsum(done))


def spr_sequence_mask(terminals: Array, convention: str = 'spr_code') -> Array:
  """Validity mask of the SPR prediction steps k = 1..K.

  Input: the K+1 done flags d_0..d_K of the transitions out of
  s_i..s_{i+K} (d_j = 1 when the transition s_{i+j} -> s_{i+j+1} ended the
  episode; the SPR/rlpyt replay returns exactly these K+1 flags with a
  sequence of K+1 observations).

  * 'spr_code' (default, what mila-iqia/spr src/algos.py runs):
    `nonterminals = 1 - sign(cumsum(done))` over d_0..d_K, steps 1..K =
    `nonterminals[1:]`, i.e. step k is valid iff no terminal among d_0..d_k.
    This is one step stricter than necessary: if d_k = 1, s_{i+k} itself is
    still a genuine state of the episode (its outgoing transition ends it),
    but the code masks its prediction too. We follow the code because it is
    what produced the published SPR numbers; the difference only touches the
    last state of an episode.
  * 'exclusive' (the natural definition): step k is valid iff no terminal
    among d_0..d_{k-1} (the transitions actually rolled through); d_K is
    ignored.

  Args:
    terminals: done flags d_0..d_K, shape [K+1].
    convention: 'spr_code' or 'exclusive'.

  Returns:
    Float mask of shape [K] for k = 1..K.
  """
  chex.assert_rank(terminals, 1)
  nonterminals = nonterminal_prefix_mask(terminals)
  if convention == 'spr_code':
    return nonterminals[1:]
  if convention == 'exclusive':
    return nonterminals[:-1]
  raise ValueError(f'Unknown convention {convention!r}.')


def batched_spr_sequence_mask(terminals: Array, convention: str = 'spr_code') -> Array:
  """vmap of `spr_sequence_mask`: done flags [B, K+1] -> masks [B, K]."""
  return jax.vmap(functools.partial(spr_sequence_mask, convention=convention))(terminals)


def spr_loss_weighting(per_step: Array, weight: Numeric = 5.0) -> Array:
  """Combines the per-step SPR losses as the SPR code does.

  mila-iqia/spr src/algos.py `loss`: `model_spr_loss = spr_loss[1:].mean(0)`
  (mean over k = 1..K with masked steps contributing 0 to the sum but still
  counted in the denominator K), total = `t0_weight * spr_loss[0] +
  model_spr_weight * model_spr_loss` with t0_weight = 0 and
  model_spr_weight = 5 (scripts/run.py defaults; K = 5 so this equals the
  plain sum over k). Replay IS weights multiply the result before the batch
  mean (done by the learner, not here).

  Args:
    per_step: masked per-step losses for k = 1..K, shape [K].
    weight: `model_spr_weight` (5 in SPR).

  Returns:
    Scalar weight * mean_k per_step.
  """
  chex.assert_rank(per_step, 1)
  return weight * jnp.mean(per_step)


# ---------------------------------------------------------------------------
# SGI: goal-conditioned RL with hindsight goals, and inverse dynamics.
# (Schwarzer et al., "Pretraining Representations for Data-Efficient
# Reinforcement Learning", NeurIPS 2021, https://arxiv.org/abs/2106.04799;
# code mila-iqia/SGI src/scrl.py and src/algos.py.)
# ---------------------------------------------------------------------------

# SGI's defaults (scripts/config.yaml): goal_dist "exp" with distance_scale 5 (hard-coded in
# src/algos.py), goal_reward_scale 10, goal_noise_weight 0.5, goal_permute_prob 0.2.
GOAL_DISTANCE_SCALE = 5.0
GOAL_REWARD_SCALE = 10.0


def latent_goal_distance(
    latent: Array, goal: Array, scale: Numeric = GOAL_DISTANCE_SCALE, eps: float = SPR_NORMALIZE_EPS
) -> Array:
  """SGI's goal distance d(s, g) = 1 - exp(-scale * ||n(s) - n(g)||^2).

  mila-iqia/SGI src/scrl.py `exp_distance` / `norm_dist`: n = F.normalize(p=2,
  eps=1e-3) over the feature axis, then the squared distance times `scale`.

  Args:
    latent: flattened latent of a state, [D] (or [..., D]).
    goal: flattened goal latent, [D] (broadcastable against `latent`).
    scale: the distance temperature (5 in SGI).
    eps: normalisation floor (torch F.normalize eps, 1e-3).

  Returns:
    d in [0, 1 - exp(-4 * scale)], shape latent.shape[:-1].
  """
  chex.assert_rank(latent, goal.ndim)
  x = l2_normalize(latent, eps)
  g = l2_normalize(goal, eps)
  return 1.0 - jnp.exp(-scale * jnp.sum(jnp.square(x - g), axis=-1))


def hindsight_goal_returns(
    distances: Array, nonterminal: Array, gamma: Numeric, reward_scale: Numeric = GOAL_REWARD_SCALE
) -> Array:
  """Discounted goal returns of one sequence, exactly as SGI's `calculate_returns`.

  Reward for moving closer to the goal in latent space:
  r_j = reward_scale * (d_j - d_{j+1}), d_j = distance of s_{t+j} to the goal
  (see `latent_goal_distance`, computed on TARGET latents, no gradient). The
  code discounts with `cumprod(nonterminal * gamma)`, so the j-step return is
  R_j = sum_{l <= j} reward_scale * (d_l - d_{l+1}) * prod_{m <= l} gamma * nt_m,
  i.e. the first reward already carries one factor gamma (one step off the
  usual n-step convention; we follow the code, it produced SGI's numbers).

  Args:
    distances: d_0 .. d_n, shape [n+1].
    nonterminal: nt_0 .. nt_{n-1}, 1 while the episode goes on, shape [n].
    gamma: discount.
    reward_scale: SGI's goal_reward_scale (10).

  Returns:
    R_0 .. R_{n-1}, shape [n]; R_{n-1} is the n-step goal return.
  """
  chex.assert_rank([distances, nonterminal], 1)
  if distances.shape[0] != nonterminal.shape[0] + 1:
    raise ValueError(
        f'distances needs one more entry than nonterminal, got '
        f'{distances.shape} and {nonterminal.shape}'
    )
  deltas = distances[:-1] - distances[1:]
  discounts = jnp.cumprod(nonterminal.astype(distances.dtype) * gamma)
  return jnp.cumsum(reward_scale * deltas * discounts)


def hindsight_goals(
    rng: chex.PRNGKey,
    goal_latents: Array,
    noise_weight: Numeric = 0.5,
    permute_prob: float = 0.2,
    eps: float = SPR_NORMALIZE_EPS,
) -> Array:
  """SGI's goal relabelling: hindsight target latents, noised, permuted, renormalised.

  mila-iqia/SGI src/scrl.py `add_noise` then `permute_goals`, then the model's
  min-max `renormalize` (src/algos.py `sample_goals`):
    w ~ U(0, 1) * noise_weight per goal, noise = n(N(0, I)),
    g' = n(w * noise + (1 - w) * g);
    with probability `permute_prob` a goal is replaced by a uniformly drawn
    goal of the batch (with replacement, possibly itself);
    finally (g' - min) / (max - min) per goal.
  Acts on a whole batch (the permutation mixes samples), unlike the per-stream
  functions above.

  Args:
    rng: key.
    goal_latents: target latents of the hindsight goal states, [B, D].
    noise_weight: maximum noise mixing weight (0.5).
    permute_prob: probability of swapping in another sample's goal (0.2).
    eps: normalisation floor (1e-3).

  Returns:
    Goals [B, D] in [0, 1], no gradient.
  """
  chex.assert_rank(goal_latents, 2)
  b = goal_latents.shape[0]
  k_noise, k_w, k_perm, k_mask = jax.random.split(rng, 4)
  goals = jax.lax.stop_gradient(goal_latents)
  noise = l2_normalize(jax.random.normal(k_noise, goals.shape, goals.dtype), eps)
  w = jax.random.uniform(k_w, (b, 1), goals.dtype) * noise_weight
  goals = l2_normalize(w * noise + (1.0 - w) * goals, eps)
  if permute_prob > 0:
    other = jax.random.randint(k_perm, (b,), 0, b)
    swap = jax.random.uniform(k_mask, (b,)) < permute_prob
    goals = goals[jnp.where(swap, other, jnp.arange(b))]
  lo = jnp.min(goals, axis=-1, keepdims=True)
  hi = jnp.max(goals, axis=-1, keepdims=True)
  return (goals - lo) / jnp.maximum(hi - lo, 1e-8)


def inverse_dynamics_loss(logits: Array, actions: Array, mask: Optional[Array] = None) -> Array:
  """Inverse dynamics cross-entropy of one sequence, averaged over its K steps.

  SGI (src/models.py, `inverse_model`): an MLP on [online projection of the
  rolled-out latent at k, target projection at k+1] predicts a_k;
  `F.cross_entropy` per step, mean over the K steps (the code applies no
  terminal mask; `mask` multiplies the per-step losses when given, masked
  steps still count in the mean, as the SPR loss).

  Args:
    logits: predicted action logits, [K, A].
    actions: actions a_0 .. a_{K-1}, int [K].
    mask: optional validity of each step, [K].

  Returns:
    Scalar mean cross-entropy.
  """
  chex.assert_rank([logits, actions], [2, 1])
  chex.assert_equal_shape_prefix([logits, actions], 1)
  chex.assert_type(actions, int)
  log_p = jax.nn.log_softmax(logits, axis=-1)
  per_step = -jnp.take_along_axis(log_p, actions[:, None], axis=-1)[:, 0]
  if mask is not None:
    chex.assert_equal_shape([per_step, mask])
    per_step = per_step * mask.astype(per_step.dtype)
  return jnp.mean(per_step)


def batched_inverse_dynamics_loss(
    logits: Array, actions: Array, mask: Optional[Array] = None
) -> Array:
  """vmap of `inverse_dynamics_loss`: [B, K, A], [B, K] (, [B, K]) -> [B]."""
  if mask is None:
    return jax.vmap(inverse_dynamics_loss)(logits, actions)
  return jax.vmap(inverse_dynamics_loss)(logits, actions, mask)
