"""Device-resident, frame-deduplicating prioritised replay for SPR (Schwarzer et al., 2021).

The replay is a pytree of jnp arrays (``ReplayState``) manipulated by pure functions, so the
learner's jitted step can add, sample and update priorities with no host round trip, and a
leading run axis can later be added with ``jax.vmap`` (every function works on one unbatched
state; capacity, frame shape, ``batch_size``, ``n_step``, ``spr_steps`` are static).

Storage convention (docs/CONTRACTS.md, "Frames and stacks")
----------------------------------------------------------
Slot ``t % capacity`` holds, for agent step ``t``:

* ``frames[t]``    the single frame o_t observed at step t (uint8, e.g. 84x84),
* ``actions[t]``   a_t, the action taken from o_t,
* ``rewards[t]``   r_t, the (already clipped) reward of that transition,
* ``terminals[t]`` d_t, whether the transition o_t -> o_{t+1} is a LEARNER terminal (game over
  or a life lost during training). If d_t, o_{t+1} is the first frame of a new learner episode.

A state s_j is the stack (o_{j-3}, o_{j-2}, o_{j-1}, o_j), oldest first. Frame o_{j-m} is zeroed
iff a terminal lies among slots j-m .. j-1 (it belongs to a previous learner episode), or it is
not in the live window [max(0, add_count - capacity), add_count - 1] (never written: before the
first episode; overwritten by the circular write). A stack therefore never reads an overwritten
frame, and the stack equals the actor's (zeros except the newest frame at an episode start).

Sampleable indices
------------------
With horizon ``H = max(n_step, spr_steps)`` an index (absolute step t) is sampleable iff

1. it is written and still live (not overwritten);
2. ``t + H < add_count``: the transitions t .. t+H-1 and the frame o_{t+H} are written (slot t+H
   is written completely by one add, so the batch also returns its action/reward/terminal);
3. its own stack reads no overwritten frame that it needs: after wrap-around the 3 oldest live
   steps need frames that were overwritten, unless a terminal inside the live window before
   them cuts the stack. Those are excluded (at most 3 of ``capacity`` indices) rather than
   zero-padded, so that replay stacks always equal the actor's stacks. Before wrap-around,
   frames before step 0 are genuinely "before the first episode" and are zero-padded.

Sequences that cross a terminal ARE sampleable: the losses mask their later steps using the
returned ``terminals`` slice.

Caveat for the caller: a time-limit truncation (27k-step cap) that resets the game must be stored
as a terminal (``terminal=True`` on its last transition), otherwise stacks and n-step returns
would run across the reset: this buffer has no separate "episode end without terminal" flag.

Prioritisation (Schaul et al. 2016, as in SPR/rlpyt and dopamine)
-----------------------------------------------------------------
``priorities`` stores p (e.g. the per-sample C51 loss) as given, clamped below by
``PRIORITY_EPSILON``; sampling uses P(i) = p_i^alpha / sum_{j sampleable} p_j^alpha, with
stratified uniforms (the total mass is split into ``batch_size`` equal segments and one index
is drawn per segment). New transitions get ``max_priority`` (the running max of all priorities
ever set, initially 1.0). Importance weights are w_i = (N * P(i))^-beta / max_batch(w), with N the
number of sampleable indices. Beta annealing is the caller's job.
The cumulative sum is float32: at capacity 100k (masses ~1) the per-index sampling probability
is off by ~0.2% on average, up to a few % for some indices (measured against a float64 cumsum);
a two-level (block) search would fix it if it ever matters.

Checkpointing
-------------
The state is a plain pytree: ``jax.device_get(state)`` (numpy arrays) IS the checkpoint, it can be
pickled, and ``jax.device_put`` of it round-trips exactly (tests/test_replay.py checks this).

Performance
-----------
Standalone use under jit: ``jax.jit(replay_sample, static_argnums=(2, 3, 4))``.
Jit ``replay_add`` (and the learner step that contains it) with ``donate_argnums`` for the state,
otherwise every add copies the whole frame buffer (100k x 84 x 84 uint8 = 706 MB).
"""
from __future__ import annotations

from typing import Sequence, Tuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

# Lower bound on stored priorities, so that an index whose loss is exactly 0 never becomes
# unsampleable by chance. With alpha = 0.5 its sampling mass is 1e-3 of a priority-1 index.
PRIORITY_EPSILON = 1e-6
FRAME_STACK = 4


@chex.dataclass(frozen=True)
class ReplayState:
    """Replay contents; see the module docstring for the slot convention."""

    frames: chex.Array  # uint8 [capacity, *frame_shape]
    actions: chex.Array  # int32 [capacity]
    rewards: chex.Array  # float32 [capacity], clipped by the caller
    terminals: chex.Array  # bool [capacity], learner terminal of the transition FROM this frame
    priorities: chex.Array  # float32 [capacity], p (not p^alpha); 0 where never written
    max_priority: chex.Array  # float32 []
    add_count: chex.Array  # int32 [], total adds (write position = add_count % capacity)


@chex.dataclass(frozen=True)
class ReplayBatch:
    """A sampled batch (also usable as a mapping: ``batch["observations"]``).

    With B = batch size, K = spr_steps, n = n_step, H = max(n, K):
      observations      uint8 [B, K+1, 4, *frame_shape]  stacks s_t .. s_{t+K}
      actions           int32 [B, K+1]                    a_t .. a_{t+K}
      rewards           float32 [B, H+1]                  r_t .. r_{t+H}
      terminals         bool [B, H+1]                     d_t .. d_{t+H}
      next_observations uint8 [B, 4, *frame_shape]        s_{t+n} (n-step bootstrap state)
    Index k of actions/rewards/terminals is the transition taken from s_{t+k}.
    """

    observations: chex.Array
    actions: chex.Array
    rewards: chex.Array
    terminals: chex.Array
    next_observations: chex.Array


def replay_init(capacity: int, frame_shape: Sequence[int] = (84, 84)) -> ReplayState:
    """An empty replay of ``capacity`` single frames (allocated on the default device)."""
    capacity = int(capacity)
    return ReplayState(
        frames=jnp.zeros((capacity, *frame_shape), jnp.uint8),
        actions=jnp.zeros((capacity,), jnp.int32),
        rewards=jnp.zeros((capacity,), jnp.float32),
        terminals=jnp.zeros((capacity,), jnp.bool_),
        priorities=jnp.zeros((capacity,), jnp.float32),
        max_priority=jnp.asarray(1.0, jnp.float32),
        add_count=jnp.asarray(0, jnp.int32),
    )


def replay_add(state: ReplayState, frame, action, reward, terminal) -> ReplayState:
    """Stores step ``t = add_count``: frame o_t, action a_t, reward r_t, terminal d_t.

    The new slot gets priority ``max_priority``. Jit with ``donate_argnums=0`` to update in place.
    """
    capacity = state.frames.shape[0]
    slot = state.add_count % capacity
    frame = jnp.asarray(frame, jnp.uint8)
    chex.assert_shape(frame, state.frames.shape[1:])
    frames = jax.lax.dynamic_update_slice(
        state.frames, frame[None], (slot,) + (0,) * frame.ndim)
    return state.replace(
        frames=frames,
        actions=state.actions.at[slot].set(jnp.asarray(action, jnp.int32)),
        rewards=state.rewards.at[slot].set(jnp.asarray(reward, jnp.float32)),
        terminals=state.terminals.at[slot].set(jnp.asarray(terminal, jnp.bool_)),
        priorities=state.priorities.at[slot].set(state.max_priority),
        add_count=state.add_count + 1,
    )


def _absolute_steps(state: ReplayState) -> Tuple[chex.Array, chex.Array]:
    """(abs_step [capacity], lo): the absolute step each slot holds (negative if never
    written) and the oldest live step ``max(0, add_count - capacity)``."""
    capacity = state.frames.shape[0]
    c = state.add_count
    slots = jnp.arange(capacity, dtype=jnp.int32)
    # Newest step t < c with t = slot (mod capacity); negative when the slot was never written.
    abs_step = c - 1 - jnp.mod(c - 1 - slots, capacity)
    lo = jnp.maximum(c - capacity, 0)
    return abs_step, lo


def sampleable_mask(state: ReplayState, n_step: int, spr_steps: int,
                    stack_size: int = FRAME_STACK) -> chex.Array:
    """bool [capacity]: which slots can be sampled (see the module docstring)."""
    capacity = state.frames.shape[0]
    horizon = max(int(n_step), int(spr_steps))
    if horizon + stack_size > capacity:
        raise ValueError(f"capacity {capacity} too small for horizon {horizon}")
    abs_step, lo = _absolute_steps(state)
    c = state.add_count
    live = abs_step >= lo  # implies written (lo >= 0)
    future_written = abs_step + horizon < c
    # History: only matters once the buffer has wrapped (lo > 0). Step t = lo + o with
    # o < stack_size - 1 needs overwritten frames unless a terminal in [lo, t-1] cuts them.
    offset = abs_step - lo
    history_ok = (lo == 0) | (offset >= stack_size - 1)
    cut = jnp.zeros_like(history_ok)
    for m in range(1, stack_size - 1):
        # terminal at step t - m (live when m <= offset) zeroes every frame <= t - m.
        prev_terminal = jnp.roll(state.terminals, m)  # prev_terminal[s] = terminals[s - m]
        cut = cut | ((offset >= m) & prev_terminal)
    history_ok = history_ok | cut
    return live & future_written & history_ok


def replay_gather(state: ReplayState, indices: chex.Array, n_step: int, spr_steps: int,
                  stack_size: int = FRAME_STACK) -> ReplayBatch:
    """Builds the batch for the given slot ``indices`` [B] (normally sampleable ones).

    All frames come from ONE gather of [B, F] frames, F = the distinct offsets among
    -3..K and n-3..n (K+4+4 at most), then stacks are assembled and zero-masked locally.
    """
    n_step, spr_steps = int(n_step), int(spr_steps)
    horizon = max(n_step, spr_steps)
    capacity = state.frames.shape[0]
    indices = jnp.asarray(indices, jnp.int32)
    chex.assert_rank(indices, 1)
    s = stack_size

    # Static offset tables. Stack at offset j uses frames j-s+1 .. j.
    stack_offsets = [j for j in range(spr_steps + 1)] + [n_step]  # last = bootstrap stack
    frame_offsets = sorted({j - m for j in stack_offsets for m in range(s)})
    pos = {f: k for k, f in enumerate(frame_offsets)}
    take = np.array([[pos[j - s + 1 + q] for q in range(s)] for j in stack_offsets])  # [J, s]
    frame_off_of = np.array([[j - s + 1 + q for q in range(s)] for j in stack_offsets])

    abs_step, lo = _absolute_steps(state)
    t = abs_step[indices]  # [B] absolute step of each sampled index

    frame_slots = jnp.mod(indices[:, None] + jnp.asarray(frame_offsets, jnp.int32)[None],
                          capacity)  # [B, F]
    gathered = state.frames[frame_slots]  # [B, F, *frame_shape]: the one big gather
    stacks = gathered[:, take]  # [B, J, s, *frame_shape]

    # Terminals at offsets -(s-1) .. horizon; tcum[:, k] = #terminals in offsets [-(s-1), k-s).
    t_offsets = np.arange(-(s - 1), horizon + 1)
    t_slots = jnp.mod(indices[:, None] + jnp.asarray(t_offsets, jnp.int32)[None], capacity)
    term = state.terminals[t_slots]  # [B, horizon + s]
    tcum = jnp.concatenate(
        [jnp.zeros_like(term[:, :1], jnp.int32), jnp.cumsum(term.astype(jnp.int32), axis=1)],
        axis=1)
    # Frame f of the stack at j is kept iff no terminal in offsets [f, j-1] and t+f is live.
    j_of = np.broadcast_to(np.array(stack_offsets)[:, None], frame_off_of.shape)
    n_term = tcum[:, j_of + s - 1] - tcum[:, frame_off_of + s - 1]  # [B, J, s]
    keep = (n_term == 0) & (t[:, None, None] + jnp.asarray(frame_off_of)[None] >= lo)
    keep = keep.reshape(keep.shape + (1,) * (stacks.ndim - keep.ndim))
    stacks = jnp.where(keep, stacks, jnp.zeros((), stacks.dtype))

    seq_slots = jnp.mod(indices[:, None] + jnp.arange(horizon + 1, dtype=jnp.int32)[None],
                        capacity)  # [B, H+1]
    return ReplayBatch(
        observations=stacks[:, :spr_steps + 1],
        actions=state.actions[seq_slots[:, :spr_steps + 1]],
        rewards=state.rewards[seq_slots],
        terminals=term[:, s - 1:],
        next_observations=stacks[:, spr_steps + 1],
    )


def sample_indices(state: ReplayState, rng: chex.PRNGKey, batch_size: int, n_step: int,
                   spr_steps: int, beta, alpha,
                   stack_size: int = FRAME_STACK) -> Tuple[chex.Array, chex.Array]:
    """Stratified proportional sampling: (indices int32 [B], is_weights float32 [B]).

    The caller must make sure at least one index is sampleable (e.g. sample only after the
    2000 random warm-up steps); with none, the indices returned are garbage (but in range).
    """
    valid = sampleable_mask(state, n_step, spr_steps, stack_size)
    mass = jnp.where(valid, jnp.power(state.priorities, alpha), 0.0)
    cumsum = jnp.cumsum(mass)
    total = cumsum[-1]
    # Stratified uniforms: one draw per equal segment of the total mass.
    u = (jnp.arange(batch_size, dtype=jnp.float32)
         + jax.random.uniform(rng, (batch_size,), jnp.float32)) * (total / batch_size)
    indices = jnp.searchsorted(cumsum, u, side="right")  # cumsum[i-1] <= u < cumsum[i]
    # u may round up to `total`: clamp to the last index that carries mass.
    last = jnp.searchsorted(cumsum, total, side="left")
    indices = jnp.minimum(indices, last).astype(jnp.int32)
    probs = mass[indices] / total
    num_valid = jnp.sum(valid).astype(jnp.float32)
    weights = jnp.power(num_valid * probs, -beta)
    weights = weights / jnp.max(weights)
    return indices, weights.astype(jnp.float32)


def replay_sample(state: ReplayState, rng: chex.PRNGKey, batch_size: int, n_step: int,
                  spr_steps: int, beta, alpha,
                  stack_size: int = FRAME_STACK) -> Tuple[ReplayBatch, chex.Array, chex.Array]:
    """Prioritised sample: (batch, indices int32 [B], is_weights float32 [B]).

    ``batch_size``, ``n_step``, ``spr_steps`` must be static under jit; ``beta``, ``alpha`` may be
    traced. See ``ReplayBatch`` for the layout.
    """
    indices, weights = sample_indices(state, rng, batch_size, n_step, spr_steps, beta, alpha,
                                      stack_size)
    batch = replay_gather(state, indices, n_step, spr_steps, stack_size)
    return batch, indices, weights


def replay_update_priorities(state: ReplayState, indices: chex.Array,
                             priorities: chex.Array) -> ReplayState:
    """Stores p = max(priorities, PRIORITY_EPSILON) at ``indices``, tracks ``max_priority``.

    With duplicate indices one of the values wins (unspecified which, as XLA scatter).
    A NaN priority is stored as NaN (and poisons sampling): guard the loss upstream.
    """
    p = jnp.maximum(jnp.asarray(priorities, jnp.float32), PRIORITY_EPSILON)
    chex.assert_equal_shape([p, indices])
    return state.replace(
        priorities=state.priorities.at[indices].set(p),
        max_priority=jnp.maximum(state.max_priority, jnp.max(p)),
    )
