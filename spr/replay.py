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

Sampleable indices (``rule``, static)
-------------------------------------
Let A = ``add_count``, N = capacity, lo = max(0, A - N) the oldest live step, n = ``n_step``,
K = ``spr_steps``, H = max(n, K), s = ``stack_size``. An index (absolute step t) is sampleable iff
it is written and live (lo <= t < A) and, by rule:

* ``"horizon"`` (default; neither reference's rule): ``t + H < A`` (the transitions t .. t+H-1
  and the frame o_{t+H} are written; slot t+H is written completely by one add, so the batch
  also returns its action/reward/terminal), and t's own stack reads no overwritten frame: after
  wrap-around the 3 oldest live steps need overwritten frames unless a terminal inside the live
  window before them cuts the stack; those are excluded (at most s-1 of N) rather than
  zero-padded, so that replay stacks always equal the actor's stacks. Before wrap-around,
  frames before step 0 are genuinely "before the first episode" and are zero-padded.
* ``"rlpyt"`` (rlpyt's PrioritizedSequenceReplayFrameBuffer as the SPR code builds it:
  batch_T = K + 1, n-step buffer, 4-frame stacks): ``lo + max(1, s-1) <= t <= A - (n + K + 3)``.
  Its SumTree turns an index on only once it is ``1 + off_backward + batch_T = n + K + 2`` steps
  behind the newest (off_backward = n for the n-step buffer), and keeps the
  ``off_forward = max(1, s-1)`` oldest live indices off, before wrap-around as well (the
  initial wrap guard leaves indices 0 .. off_forward-1 off during the first pass).
* ``"bbf"`` (google-research bigger_better_faster subsequence_replay_buffer.py
  ``is_valid_transition``, with its update_horizon = n (the maximum n when n is annealed) and
  subseq_len = K + 1): before the buffer is full (A < N) ``s-1 <= t <= A - (n + K + 2)``; once
  full, ``lo + s <= t <= A - n - 1`` (its ``invalid_range``; the subsequence length no longer
  counts there), and here also ``t + H < A`` (only binds when K > n). BBF additionally rejects an
  index whose n transitions contain an episode end that is not a terminal; this buffer stores
  time-limit ends as terminals (see the caveat below), so that case does not arise.

Sequences that cross a terminal ARE sampleable under every rule: the losses mask their later
steps using the returned ``terminals`` slice.

Caveat for the caller: a time-limit truncation (27k-step cap) that resets the game must be stored
as a terminal (``terminal=True`` on its last transition), otherwise stacks and n-step returns
would run across the reset: this buffer has no separate "episode end without terminal" flag.

Prioritisation (Schaul et al. 2016, as in SPR/rlpyt and dopamine)
-----------------------------------------------------------------
``priorities`` stores p (e.g. the per-sample C51 loss) as given, clamped below by
``PRIORITY_EPSILON``; the sampling mass of index i is m_i = p_i^alpha. rlpyt and Dopamine store
m_i itself; ``max_priority`` (the running max of all p ever set, initially 1.0) maps to
max(m) = max_priority^alpha, and p = 1 is m = 1 either way.

New transitions (``replay_add(new_priority=...)``): ``"max"`` (default; Dopamine / BBF, whose
agent adds with ``sum_tree.max_recorded_priority``) or ``"one"`` (rlpyt's SumTree
``default_value = default_priority ** alpha = 1``, which the SPR code does not change).

Draw (``draw``, static): ``"stratified"`` (default) splits the sampleable mass into
``batch_size`` equal segments and draws one index per segment; ``"proportional"`` (rlpyt
``SumTree.sample``: i.i.d. uniforms times the total) draws each index independently with
P(i) = m_i / sum_{j sampleable} m_j; ``"bbf"`` (Dopamine / BBF ``sample_index_batch``) draws
stratified over the mass of ALL written indices (its sum tree holds every added transition) and
replaces each draw that lands on a non-sampleable index by an independent proportional draw
over the sampleable mass (its rejection loop, which is exactly that in distribution).

Importance weights (``weights``, static): ``"schaul"`` (default) w_i = (N P(i))^-beta / max_batch
(w), N the number of sampleable indices, i.e. (m_i / min_batch m)^-beta; BBF's
``1 / sqrt(m + 1e-10)`` normalised by the batch max is this with beta = 0.5 (the 1e-10 is below
float32 resolution once m >= PRIORITY_EPSILON^alpha). ``"spr"``: the SPR code's
``(1 / (m_i + 1e-5))^beta`` normalised by the batch max (src/rlpyt_buffer.py; rlpyt's own
buffer has no 1e-5). Beta annealing is the caller's job.

Duplicate indices in one priority update (``duplicates``, static): ``"any"`` (default; one of
the values wins, unspecified which, as XLA scatter), ``"first"`` (rlpyt
``SumTree.update_batch_priorities``: ``np.unique(..., return_index=True)``) or ``"last"``
(Dopamine / BBF ``set_priority``: a Python loop of ``sum_tree.set``).

The cumulative sum is float32 (both references use float64 trees): at capacity 100k (masses ~1)
the per-index sampling probability is off by ~0.2% on average, up to a few % for some indices
(measured against a float64 cumsum); a two-level (block) search would fix it if it ever matters.

Checkpointing
-------------
The state is a plain pytree: ``jax.device_get(state)`` (numpy arrays) IS the checkpoint, it can be
pickled, and ``jax.device_put`` of it round-trips exactly (tests/test_replay.py checks this).

Performance
-----------
Standalone use under jit: ``jax.jit(replay_sample, static_argnums=(2, 3, 4),
static_argnames=("stack_size", "rule", "draw", "weights"))``. Under ``jax.vmap`` pass the string
options with ``functools.partial`` (vmap maps keyword arguments).
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

# Static options (see the module docstring); the first of each is the default.
NEW_PRIORITIES = ("max", "one")  # Dopamine/BBF running max; rlpyt SumTree default 1
SAMPLEABLE_RULES = ("horizon", "rlpyt", "bbf")
DRAWS = ("stratified", "proportional", "bbf")
IS_WEIGHTS = ("schaul", "spr")
DUPLICATES = ("any", "first", "last")
# The SPR code's importance weights (1 / (m + SPR_IS_WEIGHT_EPS))^beta (src/rlpyt_buffer.py).
SPR_IS_WEIGHT_EPS = 1e-5


# Which reference's replay a run reproduces: the static options of each function, by name.
# "rlpyt": the SPR / SGI code's PrioritizedSequenceReplayFrameBuffer (mila-iqia/spr on rlpyt);
# "bbf": BBF's PrioritizedJaxSubsequenceParallelEnvReplayBuffer (on Dopamine's sum tree);
# "horizon": this codebase's rule before either was matched (kept to ablate and to read old runs).
PROTOCOLS = {
    "rlpyt": dict(
        new_priority="one", rule="rlpyt", draw="proportional", weights="spr", duplicates="first"
    ),
    "bbf": dict(new_priority="max", rule="bbf", draw="bbf", weights="schaul", duplicates="last"),
    "horizon": dict(
        new_priority="max", rule="horizon", draw="stratified", weights="schaul", duplicates="any"
    ),
}


def protocol_options(protocol: str) -> dict:
  """The static options of ``protocol`` (a key of ``PROTOCOLS``), split by function:
  ``{"add": {...}, "sample": {...}, "update": {...}}``."""
  _check_option("protocol", protocol, tuple(PROTOCOLS))
  o = PROTOCOLS[protocol]
  return {
      "add": dict(new_priority=o["new_priority"]),
      "sample": dict(rule=o["rule"], draw=o["draw"], weights=o["weights"]),
      "update": dict(duplicates=o["duplicates"]),
  }


def first_sampleable_count(
    rule: str, n_step: int, spr_steps: int, stack_size: int = FRAME_STACK
) -> int:
  """The smallest add count at which ``rule`` has a sampleable index (before wrap-around)."""
  _check_option("rule", rule, SAMPLEABLE_RULES)
  n_step, spr_steps = int(n_step), int(spr_steps)
  if rule == "rlpyt":  # t >= s - 1 and t + n + K + 3 <= A
    return max(1, stack_size - 1) + n_step + spr_steps + 3
  if rule == "bbf":  # t >= s - 1 and t + n + K + 1 < A (and t + H < A)
    return stack_size - 1 + max(n_step + spr_steps + 2, max(n_step, spr_steps) + 1)
  return max(n_step, spr_steps) + 1  # t = 0 and t + H < A


def _check_option(name: str, value: str, allowed: Tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f"{name}={value!r}: expected one of {allowed}")


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


def replay_add(
    state: ReplayState, frame, action, reward, terminal, new_priority: str = "max"
) -> ReplayState:
  """Stores step ``t = add_count``: frame o_t, action a_t, reward r_t, terminal d_t.

  The new slot's priority p (static ``new_priority``): ``"max"`` gives ``max_priority``, the
  running max of all priorities set (Dopamine / BBF add with ``sum_tree.max_recorded_priority``;
  their stored mass is p^alpha and max(p^alpha) = max(p)^alpha); ``"one"`` gives 1 (rlpyt's
  SumTree ``default_value = default_priority ** alpha`` = 1, which the SPR code keeps; p = 1 is
  mass 1 for any alpha). ``max_priority`` is left as is: it starts at 1 and never decreases, so
  it stays the max of everything stored. Jit with ``donate_argnums=0`` to update in place.
  """
  _check_option("new_priority", new_priority, NEW_PRIORITIES)
  capacity = state.frames.shape[0]
  slot = state.add_count % capacity
  frame = jnp.asarray(frame, jnp.uint8)
  chex.assert_shape(frame, state.frames.shape[1:])
  frames = jax.lax.dynamic_update_slice(state.frames, frame[None], (slot,) + (0,) * frame.ndim)
  priority = state.max_priority if new_priority == "max" else jnp.ones((), state.priorities.dtype)
  return state.replace(
      frames=frames,
      actions=state.actions.at[slot].set(jnp.asarray(action, jnp.int32)),
      rewards=state.rewards.at[slot].set(jnp.asarray(reward, jnp.float32)),
      terminals=state.terminals.at[slot].set(jnp.asarray(terminal, jnp.bool_)),
      priorities=state.priorities.at[slot].set(priority),
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


def sampleable_mask(
    state: ReplayState,
    n_step: int,
    spr_steps: int,
    stack_size: int = FRAME_STACK,
    rule: str = "horizon",
) -> chex.Array:
  """bool [capacity]: which slots can be sampled under ``rule`` (static; see the module
  docstring): ``"horizon"`` (default), ``"rlpyt"`` (the SPR code's rlpyt buffer) or ``"bbf"``
  (BBF's subsequence buffer)."""
  _check_option("rule", rule, SAMPLEABLE_RULES)
  capacity = state.frames.shape[0]
  n_step, spr_steps, stack_size = int(n_step), int(spr_steps), int(stack_size)
  horizon = max(n_step, spr_steps)
  if horizon + stack_size > capacity:
    raise ValueError(f"capacity {capacity} too small for horizon {horizon}")
  abs_step, lo = _absolute_steps(state)
  c = state.add_count
  live = abs_step >= lo  # implies written (lo >= 0)
  future_written = abs_step + horizon < c
  if rule == "rlpyt":
    # rlpyt/replays/sum_tree.py SumTree.advance with off_backward = 1 + n + batch_T
    # (sequence/prioritized.py init_priority_tree, batch_T = K + 1) and off_forward =
    # max(1, s - 1) (frame.py FrameBufferMixin): index c - 1 - off_backward is turned on at
    # each add, the off_forward oldest live ones are off (initial wrap guard included).
    newest_ok = abs_step + (n_step + spr_steps + 3) <= c
    oldest_ok = abs_step >= lo + max(1, stack_size - 1)
    return live & newest_ok & oldest_ok  # implies future_written and a live stack
  if rule == "bbf":
    # bbf/replay_memory/subsequence_replay_buffer.py is_valid_transition: before full,
    # index < cursor - update_horizon - subseq_len and index >= stack_size - 1; once full
    # only invalid_range(cursor): cursor - update_horizon .. cursor + stack_size - 1.
    full = c >= capacity
    newest_ok = jnp.where(full, abs_step + n_step < c, abs_step + (n_step + spr_steps + 1) < c)
    oldest_ok = abs_step >= lo + jnp.where(full, stack_size, stack_size - 1)
    # future_written: our gather needs o_{t+H}; binds only for K > n once full.
    return live & newest_ok & oldest_ok & future_written
  # "horizon". History: only matters once the buffer has wrapped (lo > 0). Step t = lo + o
  # with o < stack_size - 1 needs overwritten frames unless a terminal in [lo, t-1] cuts them.
  offset = abs_step - lo
  history_ok = (lo == 0) | (offset >= stack_size - 1)
  cut = jnp.zeros_like(history_ok)
  for m in range(1, stack_size - 1):
    # terminal at step t - m (live when m <= offset) zeroes every frame <= t - m.
    prev_terminal = jnp.roll(state.terminals, m)  # prev_terminal[s] = terminals[s - m]
    cut = cut | ((offset >= m) & prev_terminal)
  history_ok = history_ok | cut
  return live & future_written & history_ok


def replay_gather(
    state: ReplayState,
    indices: chex.Array,
    n_step: int,
    spr_steps: int,
    stack_size: int = FRAME_STACK,
) -> ReplayBatch:
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

  frame_slots = jnp.mod(
      indices[:, None] + jnp.asarray(frame_offsets, jnp.int32)[None], capacity
  )  # [B, F]
  gathered = state.frames[frame_slots]  # [B, F, *frame_shape]: the one big gather
  stacks = gathered[:, take]  # [B, J, s, *frame_shape]

  # Terminals at offsets -(s-1) .. horizon; tcum[:, k] = #terminals in offsets [-(s-1), k-s).
  t_offsets = np.arange(-(s - 1), horizon + 1)
  t_slots = jnp.mod(indices[:, None] + jnp.asarray(t_offsets, jnp.int32)[None], capacity)
  term = state.terminals[t_slots]  # [B, horizon + s]
  tcum = jnp.concatenate(
      [jnp.zeros_like(term[:, :1], jnp.int32), jnp.cumsum(term.astype(jnp.int32), axis=1)], axis=1
  )
  # Frame f of the stack at j is kept iff no terminal in offsets [f, j-1] and t+f is live.
  j_of = np.broadcast_to(np.array(stack_offsets)[:, None], frame_off_of.shape)
  n_term = tcum[:, j_of + s - 1] - tcum[:, frame_off_of + s - 1]  # [B, J, s]
  keep = (n_term == 0) & (t[:, None, None] + jnp.asarray(frame_off_of)[None] >= lo)
  keep = keep.reshape(keep.shape + (1,) * (stacks.ndim - keep.ndim))
  stacks = jnp.where(keep, stacks, jnp.zeros((), stacks.dtype))

  seq_slots = jnp.mod(
      indices[:, None] + jnp.arange(horizon + 1, dtype=jnp.int32)[None], capacity
  )  # [B, H+1]
  return ReplayBatch(
      observations=stacks[:, : spr_steps + 1],
      actions=state.actions[seq_slots[:, : spr_steps + 1]],
      rewards=state.rewards[seq_slots],
      terminals=term[:, s - 1 :],
      next_observations=stacks[:, spr_steps + 1],
  )


def _search(cumsum: chex.Array, u: chex.Array) -> chex.Array:
  """The index i with cumsum[i-1] <= u < cumsum[i] (Dopamine's ``query_value < left_sum``
  descent; rlpyt's ``>`` differs only on a measure-zero set), as int32."""
  indices = jnp.searchsorted(cumsum, u, side="right")
  # u may round up to the total: clamp to the last index that carries mass.
  last = jnp.searchsorted(cumsum, cumsum[-1], side="left")
  return jnp.minimum(indices, last).astype(jnp.int32)


def _stratified_uniforms(rng: chex.PRNGKey, batch_size: int, total: chex.Array) -> chex.Array:
  """One uniform in each of ``batch_size`` equal segments of [0, total)."""
  return (
      jnp.arange(batch_size, dtype=jnp.float32)
      + jax.random.uniform(rng, (batch_size,), jnp.float32)
  ) * (total / batch_size)


def sample_indices(
    state: ReplayState,
    rng: chex.PRNGKey,
    batch_size: int,
    n_step: int,
    spr_steps: int,
    beta,
    alpha,
    stack_size: int = FRAME_STACK,
    rule: str = "horizon",
    draw: str = "stratified",
    weights: str = "schaul",
) -> Tuple[chex.Array, chex.Array]:
  """Prioritised sampling: (indices int32 [B], is_weights float32 [B]).

  Static options (module docstring): ``rule`` which indices are sampleable
  (``sampleable_mask``); ``draw`` ``"stratified"`` (default), ``"proportional"`` (rlpyt,
  i.i.d.) or ``"bbf"`` (stratified over all written indices, non-sampleable draws redrawn
  i.i.d. from the sampleable ones); ``weights`` ``"schaul"`` (default, (N P(i))^-beta / max) or
  ``"spr"`` ((m_i + 1e-5)^-beta / max, the SPR code's).

  The caller must make sure at least one index is sampleable (e.g. sample only after the
  2000 random warm-up steps); with none, the indices returned are garbage (but in range).
  """
  _check_option("draw", draw, DRAWS)
  _check_option("weights", weights, IS_WEIGHTS)
  valid = sampleable_mask(state, n_step, spr_steps, stack_size, rule)
  mass = jnp.where(valid, jnp.power(state.priorities, alpha), 0.0)
  cumsum = jnp.cumsum(mass)
  total = cumsum[-1]
  if draw == "stratified":
    indices = _search(cumsum, _stratified_uniforms(rng, batch_size, total))
  elif draw == "proportional":
    # rlpyt SumTree.sample: np.random.rand(n) * tree[0], with replacement.
    u = jax.random.uniform(rng, (batch_size,), jnp.float32) * total
    indices = _search(cumsum, u)
  else:  # "bbf"
    # Dopamine / BBF sample_index_batch: stratified over the tree, which holds every added
    # transition (sampleable or not); each invalid draw is redrawn with sum_tree.sample
    # (plain proportional over the tree) until valid, i.e. proportionally over the valid.
    strat_rng, redraw_rng = jax.random.split(rng)
    written = _absolute_steps(state)[0] >= 0
    tree_cumsum = jnp.cumsum(jnp.where(written, jnp.power(state.priorities, alpha), 0.0))
    first = _search(tree_cumsum, _stratified_uniforms(strat_rng, batch_size, tree_cumsum[-1]))
    redraw = _search(cumsum, jax.random.uniform(redraw_rng, (batch_size,), jnp.float32) * total)
    indices = jnp.where(valid[first], first, redraw)
  sampled_mass = mass[indices]
  if weights == "spr":
    # src/rlpyt_buffer.py: (1 / (priorities + 1e-5)) ** beta / max, priorities = p^alpha.
    w = jnp.power(sampled_mass + SPR_IS_WEIGHT_EPS, -beta)
  else:
    probs = sampled_mass / total
    num_valid = jnp.sum(valid).astype(jnp.float32)
    w = jnp.power(num_valid * probs, -beta)
  w = w / jnp.max(w)
  return indices, w.astype(jnp.float32)


def replay_sample(
    state: ReplayState,
    rng: chex.PRNGKey,
    batch_size: int,
    n_step: int,
    spr_steps: int,
    beta,
    alpha,
    stack_size: int = FRAME_STACK,
    rule: str = "horizon",
    draw: str = "stratified",
    weights: str = "schaul",
) -> Tuple[ReplayBatch, chex.Array, chex.Array]:
  """Prioritised sample: (batch, indices int32 [B], is_weights float32 [B]).

  ``batch_size``, ``n_step``, ``spr_steps``, ``stack_size``, ``rule``, ``draw``, ``weights``
  must be static under jit; ``beta``, ``alpha`` may be traced. See ``sample_indices`` for the
  options and ``ReplayBatch`` for the layout.
  """
  indices, is_weights = sample_indices(
      state, rng, batch_size, n_step, spr_steps, beta, alpha, stack_size, rule, draw, weights
  )
  batch = replay_gather(state, indices, n_step, spr_steps, stack_size)
  return batch, indices, is_weights


def replay_update_priorities(
    state: ReplayState, indices: chex.Array, priorities: chex.Array, duplicates: str = "any"
) -> ReplayState:
  """Stores p = max(priorities, PRIORITY_EPSILON) at ``indices``, tracks ``max_priority``.

  With duplicate indices (static ``duplicates``): ``"any"`` (default) one of the values wins,
  unspecified which (XLA scatter); ``"first"`` the first occurrence wins (rlpyt
  ``SumTree.update_batch_priorities``, ``np.unique(..., return_index=True)``); ``"last"`` the
  last one wins (Dopamine / BBF ``set_priority``, one ``sum_tree.set`` per index in order).
  ``max_priority`` takes the max over all the values given, duplicates included (Dopamine's
  ``max_recorded_priority`` sees every ``set``; rlpyt tracks no max).
  A NaN priority is stored as NaN (and poisons sampling): guard the loss upstream.
  """
  _check_option("duplicates", duplicates, DUPLICATES)
  p = jnp.maximum(jnp.asarray(priorities, jnp.float32), PRIORITY_EPSILON)
  indices = jnp.asarray(indices, jnp.int32)
  chex.assert_rank(indices, 1)
  chex.assert_equal_shape([p, indices])
  if duplicates == "any":
    new_priorities = state.priorities.at[indices].set(p)
  else:
    # Keep position b unless another position with the same index comes before it
    # ("first") or after it ("last"); the others scatter out of range and are dropped.
    pos = jnp.arange(indices.shape[0])
    same = indices[:, None] == indices[None, :]
    if duplicates == "first":
      other = pos[None, :] < pos[:, None]  # other[b, b'] = b' comes before b
    else:
      other = pos[None, :] > pos[:, None]
    keep = ~jnp.any(same & other, axis=1)
    target = jnp.where(keep, indices, state.priorities.shape[0])
    new_priorities = state.priorities.at[target].set(p, mode="drop")
  return state.replace(
      priorities=new_priorities,
      max_priority=jnp.maximum(state.max_priority, jnp.max(p)),
  )
