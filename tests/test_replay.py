"""Tests of spr/replay.py against an independent actor-side reference (frames carry their step
number, stacks are built the way an actor builds them, validity by brute force)."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spr import replay as rp

FRAME_SHAPE = (2, 3)


# --------------------------------------------------------------------------- reference helpers
def make_history(episode_lengths, seed=0, open_end=False):
  """Frames filled with step+1 (so 0 only ever means zero padding), random actions/rewards,
  terminal on the last transition of each learner episode (but the last one if open_end)."""
  rng = np.random.default_rng(seed)
  total = sum(episode_lengths)
  assert total < 255
  frames = np.stack([np.full(FRAME_SHAPE, t + 1, np.uint8) for t in range(total)])
  actions = rng.integers(0, 18, total).astype(np.int32)
  rewards = rng.choice([-1.0, 0.0, 1.0], total).astype(np.float32)
  terminals = np.zeros(total, bool)
  terminals[np.cumsum(episode_lengths) - 1] = True
  terminals[-1] &= not open_end
  return frames, actions, rewards, terminals


def actor_stacks(frames, terminals):
  """What an actor holds at each step: zeros + newest frame at a learner-episode start."""
  stacks, cur = [], None
  for t in range(len(frames)):
    if t == 0 or terminals[t - 1]:
      cur = [np.zeros(FRAME_SHAPE, np.uint8)] * 3 + [frames[t]]
    else:
      cur = cur[1:] + [frames[t]]
    stacks.append(np.stack(cur))
  return np.stack(stacks)


_jit_add = jax.jit(rp.replay_add, donate_argnums=0)


def fill(capacity, hist, upto=None, add=_jit_add, frame_shape=FRAME_SHAPE):
  frames, actions, rewards, terminals = hist
  state = rp.replay_init(capacity, frame_shape)
  for t in range(len(frames) if upto is None else upto):
    state = add(state, frames[t], actions[t], rewards[t], terminals[t])
  return state


def abs_step_of_slot(slot, c, capacity):
  """Brute force: the newest step t < c stored in `slot`, or None."""
  ts = [t for t in range(c) if t % capacity == slot]
  return ts[-1] if ts else None


def brute_valid(c, capacity, terminals, horizon):
  lo = max(0, c - capacity)
  valid = np.zeros(capacity, bool)
  for s in range(capacity):
    t = abs_step_of_slot(s, c, capacity)
    if t is None or t < lo or t + horizon >= c:
      continue
    ok = True
    for m in range(1, 4):
      f = t - m
      if 0 <= f < lo and not any(terminals[u] for u in range(lo, t)):
        ok = False  # needs an overwritten frame not provably cut by a live terminal
    valid[s] = ok
  return valid


_gather = jax.jit(rp.replay_gather, static_argnames=("n_step", "spr_steps", "stack_size"))
_mask = jax.jit(rp.sampleable_mask, static_argnames=("n_step", "spr_steps", "stack_size"))
_sample = jax.jit(
    rp.replay_sample, static_argnames=("batch_size", "n_step", "spr_steps", "stack_size")
)

# Short episodes (1, 2) included: stacks cut twice, sequences crossing several terminals.
EPISODES = [3, 1, 6, 2, 9, 1, 5, 7, 4, 2]  # 40 steps


def check_batch_against_reference(batch, indices, c, capacity, hist, n, k):
  frames, actions, rewards, terminals = hist
  ref = actor_stacks(frames[:c], terminals[:c])
  h = max(n, k)
  obs = np.asarray(batch.observations)
  nxt = np.asarray(batch.next_observations)
  for b, s in enumerate(np.asarray(indices)):
    t = abs_step_of_slot(int(s), c, capacity)
    assert t is not None and t + h < c
    np.testing.assert_array_equal(obs[b], ref[t : t + k + 1], err_msg=f"stacks at t={t}")
    np.testing.assert_array_equal(nxt[b], ref[t + n], err_msg=f"next stack at t={t}")
    np.testing.assert_array_equal(np.asarray(batch.actions[b]), actions[t : t + k + 1])
    np.testing.assert_array_equal(np.asarray(batch.rewards[b]), rewards[t : t + h + 1])
    np.testing.assert_array_equal(np.asarray(batch.terminals[b]), terminals[t : t + h + 1])


# ----------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(
    "capacity,n,k", [(64, 3, 5), (64, 10, 5), (40, 3, 5), (16, 3, 5), (16, 10, 5)]
)
def test_gather_all_valid_indices_matches_actor(capacity, n, k):
  """Exact stacks (zero padding at every learner-episode start, never across a reset, never
  an overwritten frame), next stacks and aligned action/reward/terminal slices, for every
  sampleable index; capacity 40 after 40 adds is full but not wrapped (step 0's stack must not
  read slot 39), capacity 16 after 40 adds exercises the wrap-around."""
  hist = make_history(EPISODES, open_end=True)
  c = len(hist[0])
  state = fill(capacity, hist)
  mask = np.asarray(_mask(state, n_step=n, spr_steps=k))
  np.testing.assert_array_equal(mask, brute_valid(c, capacity, hist[3], max(n, k)))
  idx = np.flatnonzero(mask).astype(np.int32)
  assert len(idx) > 0
  batch = _gather(state, idx, n_step=n, spr_steps=k)
  check_batch_against_reference(batch, idx, c, capacity, hist, n, k)


def test_mask_matches_bruteforce_at_every_add_count():
  capacity, n, k = 16, 3, 5
  hist = make_history(EPISODES)
  state = rp.replay_init(capacity, FRAME_SHAPE)
  for t in range(len(hist[0]) + 1):
    mask = np.asarray(_mask(state, n_step=n, spr_steps=k))
    np.testing.assert_array_equal(
        mask, brute_valid(t, capacity, hist[3], max(n, k)), err_msg=f"add_count={t}"
    )
    if t < len(hist[0]):
      state = _jit_add(state, *(x[t] for x in hist))


def test_wraparound_window_and_oldest_exclusion():
  """After 40 adds in 16 slots the live steps are 24..39; with n=3, K=5 (t + 5 < 40) the
  candidates are 24..34. Steps 22..26 form one learner episode, so the stacks of 24, 25, 26
  need the overwritten frames 22 and/or 23: they are excluded, leaving 27..34."""
  capacity, n, k = 16, 3, 5
  hist = make_history(EPISODES, open_end=True)
  assert list(np.flatnonzero(hist[3])) == [2, 3, 9, 11, 20, 21, 26, 33, 37]
  state = fill(capacity, hist)
  mask = np.asarray(_mask(state, n_step=n, spr_steps=k))
  valid_steps = sorted(abs_step_of_slot(s, 40, capacity) for s in np.flatnonzero(mask))
  assert valid_steps == list(range(27, 35))
  # The excluded oldest step is still safe to gather: overwritten frames read as zeros, not
  # as the newer frames of steps 38 and 39 now in their slots.
  oldest = np.array([24 % capacity], np.int32)
  batch = _gather(state, oldest, n_step=n, spr_steps=k)
  np.testing.assert_array_equal(np.asarray(batch.observations[0, 0, :, 0, 0]), [0, 0, 0, 25])
  # Sampled indices only in the valid window.
  for i in range(20):
    _, idx, _ = _sample(
        state, jax.random.PRNGKey(i), batch_size=16, n_step=n, spr_steps=k, beta=0.4, alpha=0.5
    )
    assert mask[np.asarray(idx)].all()


def test_no_sample_with_unwritten_horizon():
  capacity, n, k = 64, 10, 5
  hist = make_history(EPISODES)
  for c in (12, 25, 40):
    state = fill(capacity, hist, upto=c)
    for i in range(10):
      batch, idx, _ = _sample(
          state, jax.random.PRNGKey(i), batch_size=32, n_step=n, spr_steps=k, beta=0.4, alpha=0.5
      )
      assert (np.asarray(idx) + max(n, k) < c).all(), (c, idx)
    check_batch_against_reference(batch, idx, c, capacity, hist, n, k)


def test_prioritised_frequencies():
  """20k samples: per-index counts match P(i) = p^alpha / sum (5 sigma, binomial), and a
  chi-square bound; never-sampleable slots are never drawn."""
  capacity, n, k, alpha = 48, 3, 2, 0.5
  hist = make_history(EPISODES)
  state = fill(capacity, hist)  # 40 adds, no wrap: valid steps 0..36
  rng = np.random.default_rng(1)
  p = rng.uniform(0.05, 5.0, capacity).astype(np.float32)
  state = rp.replay_update_priorities(state, jnp.arange(capacity), jnp.asarray(p))
  mask = np.asarray(_mask(state, n_step=n, spr_steps=k))
  assert mask.sum() == 37
  keys = jax.random.split(jax.random.PRNGKey(0), 625)
  draw = jax.jit(jax.vmap(lambda key: rp.sample_indices(state, key, 32, n, k, 0.4, alpha)[0]))
  idx = np.asarray(draw(keys)).ravel()
  total = idx.size
  counts = np.bincount(idx, minlength=capacity)
  probs = np.where(mask, p**alpha, 0.0)
  probs /= probs.sum()
  assert counts[~mask].sum() == 0
  expected = total * probs[mask]
  sigma = np.sqrt(total * probs[mask] * (1 - probs[mask]))
  assert (np.abs(counts[mask] - expected) < 5 * sigma).all()
  chi2 = ((counts[mask] - expected) ** 2 / expected).sum()
  assert chi2 < 80.0  # df = 36: p-value ~ 3e-5 (stratification only lowers the variance)


def test_stratified_one_draw_per_segment():
  capacity, n, k = 16, 1, 1
  hist = make_history([3, 6])
  state = fill(capacity, hist)  # 9 adds: valid steps 0..7, equal priority
  for i in range(5):
    _, idx, w = _sample(
        state, jax.random.PRNGKey(i), batch_size=8, n_step=n, spr_steps=k, beta=0.4, alpha=0.5
    )
    # Equal masses, 8 segments for 8 indices: each index exactly once, in order.
    np.testing.assert_array_equal(np.asarray(idx), np.arange(8))
    np.testing.assert_allclose(np.asarray(w), 1.0)
  # Unequal masses: draw b lies in the b-th segment of the cumulative mass.
  p = np.random.default_rng(0).uniform(0.1, 3.0, capacity).astype(np.float32)
  state = rp.replay_update_priorities(state, jnp.arange(capacity), jnp.asarray(p))
  mass = np.where(np.asarray(_mask(state, n_step=n, spr_steps=k)), p**0.5, 0.0)
  cum = np.concatenate([[0.0], np.cumsum(mass)])
  for i in range(20):
    _, idx, _ = _sample(
        state, jax.random.PRNGKey(i), batch_size=4, n_step=n, spr_steps=k, beta=0.4, alpha=0.5
    )
    for b, s in enumerate(np.asarray(idx)):
      lo_seg, hi_seg = b * cum[-1] / 4, (b + 1) * cum[-1] / 4
      assert cum[s] <= hi_seg + 1e-5 and cum[s + 1] >= lo_seg - 1e-5


@pytest.mark.parametrize("beta,expected", [(0.4, 0.5**0.4), (1.0, 0.5)])
def test_is_weights_hand_computed(beta, expected):
  """Valid steps 0, 1, 2 (4 adds, horizon 1) with p = 1, 1, 4 and alpha 0.5: masses 1, 1, 2,
  P = 1/4, 1/4, 1/2, N = 3. Batch 2: segment [0, 2) -> index 0 or 1, segment [2, 4) -> 2.
  w = (3/4)^-beta, (3/2)^-beta, normalised by the max: 1, 0.5^beta."""
  state = fill(16, make_history([4]))
  state = rp.replay_update_priorities(state, jnp.arange(3), jnp.array([1.0, 1.0, 4.0]))
  seen = set()
  for i in range(20):
    _, idx, w = _sample(
        state, jax.random.PRNGKey(i), batch_size=2, n_step=1, spr_steps=1, beta=beta, alpha=0.5
    )
    idx = np.asarray(idx)
    assert idx[0] in (0, 1) and idx[1] == 2
    seen.add(int(idx[0]))
    np.testing.assert_allclose(np.asarray(w), [1.0, expected], rtol=1e-5)
  assert seen == {0, 1}


def test_priority_update_and_max_priority():
  hist = make_history([10])
  state = fill(16, hist, upto=5)
  np.testing.assert_array_equal(np.asarray(state.priorities[:6]), [1, 1, 1, 1, 1, 0])
  state = rp.replay_update_priorities(state, jnp.array([0, 2]), jnp.array([3.5, 0.0]))
  assert float(state.max_priority) == 3.5
  assert float(state.priorities[0]) == 3.5  # stored as is, not p^alpha
  assert state.priorities[2] == np.float32(rp.PRIORITY_EPSILON)  # zero guarded
  state = rp.replay_update_priorities(state, jnp.array([0]), jnp.array([0.5]))
  assert float(state.max_priority) == 3.5  # running max never decreases
  state = _jit_add(state, hist[0][5], hist[1][5], hist[2][5], hist[3][5])
  assert float(state.priorities[5]) == 3.5  # new transitions at max priority
  assert int(state.add_count) == 6


def test_jit_and_nojit_agree():
  hist = make_history(EPISODES[:5])  # 21 steps: wraps a 16-slot buffer, cheap eagerly
  s_jit = fill(16, hist)
  s_eager = fill(16, hist, add=rp.replay_add)
  jax.tree_util.tree_map(np.testing.assert_array_equal, s_jit, s_eager)
  key = jax.random.PRNGKey(3)
  out_jit = _sample(s_jit, key, batch_size=8, n_step=3, spr_steps=5, beta=0.4, alpha=0.5)
  out_eager = rp.replay_sample(s_eager, key, 8, 3, 5, 0.4, 0.5)
  jax.tree_util.tree_map(np.testing.assert_array_equal, out_jit, out_eager)


def test_batch_layout_full_size_frames():
  b, n, k = 4, 10, 5
  state = rp.replay_init(40)
  frame = np.arange(84 * 84, dtype=np.uint8).reshape(84, 84)
  for t in range(30):
    state = _jit_add(state, frame, t % 6, 1.0, t == 17)
  batch, idx, w = _sample(
      state, jax.random.PRNGKey(0), batch_size=b, n_step=n, spr_steps=k, beta=0.4, alpha=0.5
  )
  assert batch.observations.shape == (b, k + 1, 4, 84, 84)
  assert batch.observations.dtype == jnp.uint8
  assert batch.next_observations.shape == (b, 4, 84, 84)
  assert batch.next_observations.dtype == jnp.uint8
  assert batch.actions.shape == (b, k + 1) and batch.actions.dtype == jnp.int32
  assert batch.rewards.shape == (b, n + 1) and batch.rewards.dtype == jnp.float32
  assert batch.terminals.shape == (b, n + 1) and batch.terminals.dtype == jnp.bool_
  assert idx.shape == (b,) and idx.dtype == jnp.int32
  assert w.shape == (b,) and w.dtype == jnp.float32
  assert batch["observations"] is batch.observations  # mapping access works too


def test_checkpoint_roundtrip_exact():
  hist = make_history(EPISODES)
  state = fill(16, hist)
  state = rp.replay_update_priorities(state, jnp.array([3, 7]), jnp.array([0.3, 2.0]))
  host = jax.device_get(state)
  assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(host))
  restored = jax.device_put(pickle.loads(pickle.dumps(host)))
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(restored)):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)
  key = jax.random.PRNGKey(5)
  out_a = _sample(state, key, batch_size=8, n_step=3, spr_steps=5, beta=0.4, alpha=0.5)
  out_b = _sample(restored, key, batch_size=8, n_step=3, spr_steps=5, beta=0.4, alpha=0.5)
  jax.tree_util.tree_map(np.testing.assert_array_equal, out_a, out_b)


def test_vmap_over_runs():
  """A leading run axis: vmapped add / sample / update equal the per-run results."""
  hists = [make_history(EPISODES, seed=0), make_history(EPISODES[::-1], seed=1)]
  singles = [fill(16, h) for h in hists]
  state = jax.vmap(lambda _: rp.replay_init(16, FRAME_SHAPE))(jnp.arange(2))
  add = jax.jit(jax.vmap(rp.replay_add), donate_argnums=0)
  for t in range(len(hists[0][0])):
    state = add(state, *(jnp.stack([h[j][t] for h in hists]) for j in range(4)))
  keys = jax.random.split(jax.random.PRNGKey(0), 2)
  sample = jax.jit(jax.vmap(lambda s, key: rp.replay_sample(s, key, 8, 3, 5, 0.4, 0.5)))
  out = sample(state, keys)
  for r in range(2):
    single = jax.tree_util.tree_map(lambda x: x[r], state)
    jax.tree_util.tree_map(np.testing.assert_array_equal, single, singles[r])
    ref = _sample(singles[r], keys[r], batch_size=8, n_step=3, spr_steps=5, beta=0.4, alpha=0.5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a[r], b), out, ref)
  upd = jax.jit(jax.vmap(rp.replay_update_priorities))(state, out[1], jnp.full((2, 8), 7.0))
  np.testing.assert_array_equal(np.asarray(upd.max_priority), [7.0, 7.0])
