"""spr/replay.py's reference options, on tiny hand-computed cases: the new transitions' priority
("max" Dopamine/BBF, "one" rlpyt), which indices are sampleable ("horizon", "rlpyt" as the SPR
code's rlpyt buffer, "bbf" as BBF's subsequence buffer), the draw ("stratified",
"proportional" rlpyt, "bbf" stratified-then-redraw), the importance weights ("schaul", "spr")
and duplicate indices in a priority update ("any", "first" rlpyt, "last" Dopamine/BBF)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spr import replay as rp

FRAME_SHAPE = (2, 3)

_add = jax.jit(rp.replay_add, static_argnames=("new_priority",))
_mask = jax.jit(rp.sampleable_mask, static_argnames=("n_step", "spr_steps", "stack_size", "rule"))
_indices = jax.jit(
    rp.sample_indices,
    static_argnames=("batch_size", "n_step", "spr_steps", "stack_size", "rule", "draw", "weights"),
)
_update = jax.jit(rp.replay_update_priorities, static_argnames=("duplicates",))


def fill(capacity, count, terminal_steps=(), new_priority="max"):
  """`count` adds; frame t is filled with t % 250 + 1, terminals at `terminal_steps`."""
  state = rp.replay_init(capacity, FRAME_SHAPE)
  for t in range(count):
    state = _add(
        state,
        np.full(FRAME_SHAPE, t % 250 + 1, np.uint8),
        t % 4,
        0.0,
        t in terminal_steps,
        new_priority=new_priority,
    )
  return state


def valid_steps(state, n, k, rule):
  """Sorted absolute steps of the sampleable slots."""
  mask = np.asarray(_mask(state, n_step=n, spr_steps=k, rule=rule))
  c, capacity = int(state.add_count), mask.shape[0]
  return sorted(c - 1 - (c - 1 - s) % capacity for s in np.flatnonzero(mask))


# ------------------------------------------------------------------ new transitions' priority
def test_new_priority_one_vs_max():
  state = fill(16, 3)
  state = rp.replay_update_priorities(state, jnp.array([0]), jnp.array([3.5]))
  assert float(state.max_priority) == 3.5
  one = _add(state, np.zeros(FRAME_SHAPE, np.uint8), 0, 0.0, False, new_priority="one")
  mx = _add(state, np.zeros(FRAME_SHAPE, np.uint8), 0, 0.0, False, new_priority="max")
  assert float(one.priorities[3]) == 1.0  # rlpyt: default_priority ** alpha = 1
  assert float(mx.priorities[3]) == 3.5  # Dopamine / BBF: max_recorded_priority
  # The add never changes the running max (1 <= max_priority always).
  assert float(one.max_priority) == 3.5 and float(mx.max_priority) == 3.5
  np.testing.assert_array_equal(np.asarray(one.priorities[:3]), [3.5, 1, 1])
  with pytest.raises(ValueError, match="new_priority"):
    rp.replay_add(state, np.zeros(FRAME_SHAPE, np.uint8), 0, 0.0, False, new_priority="min")


def test_new_priority_one_before_any_update():
  state = fill(8, 5, new_priority="one")
  np.testing.assert_array_equal(np.asarray(state.priorities), [1, 1, 1, 1, 1, 0, 0, 0])
  assert float(state.max_priority) == 1.0


# ------------------------------------------------------------------ sampleable indices
# Capacity 32, n = 3, K = 2, stacks of 4 (H = 3):
#   horizon: t >= lo, t + 3 < A, and after wrap lo .. lo+2 only if a live terminal cuts them;
#   rlpyt:   lo + 3 <= t <= A - (n + K + 3) = A - 8;
#   bbf:     A < 32: 3 <= t <= A - (n + K + 2) = A - 7;  A >= 32: lo + 4 <= t <= A - n - 1 = A - 4.
@pytest.mark.parametrize(
    "count,rule,expected",
    [
        (20, "horizon", range(0, 17)),
        (20, "rlpyt", range(3, 13)),
        (20, "bbf", range(3, 14)),
        (31, "bbf", range(3, 25)),  # not full yet
        (32, "bbf", range(4, 29)),  # full: the 4 oldest and only the n newest excluded
        (32, "rlpyt", range(3, 25)),
        (32, "horizon", range(0, 29)),
        (40, "horizon", range(11, 37)),  # lo = 8: 8, 9, 10 need overwritten frames
        (40, "rlpyt", range(11, 33)),
        (40, "bbf", range(12, 37)),
    ],
)
def test_sampleable_rules_hand_listed(count, rule, expected):
  assert valid_steps(fill(32, count), 3, 2, rule) == list(expected)


def test_sampleable_rules_with_terminal_after_wrap():
  """A terminal at step 9 (= lo + 1 after 40 adds in 32 slots) cuts step 10's stack, so the
  horizon rule keeps step 10; rlpyt and BBF exclude their oldest indices regardless."""
  state = fill(32, 40, terminal_steps=(9,))
  assert valid_steps(state, 3, 2, "horizon") == [10] + list(range(11, 37))
  assert valid_steps(state, 3, 2, "rlpyt") == list(range(11, 33))
  assert valid_steps(state, 3, 2, "bbf") == list(range(12, 37))


def test_sampleable_rules_spr_sizes():
  """The SPR code's sizes: n = 10, K = 5 (rlpyt batch_T 6): rlpyt excludes the newest
  1 + n + batch_T = 17 and the first 3 indices, BBF (update_horizon 10, subseq_len 6) the newest
  16 and the first 3 before it is full, the horizon rule the newest H = 10."""
  state = fill(64, 50)
  assert valid_steps(state, 10, 5, "rlpyt") == list(range(3, 33))
  assert valid_steps(state, 10, 5, "bbf") == list(range(3, 34))
  assert valid_steps(state, 10, 5, "horizon") == list(range(0, 40))


def rlpyt_events(count, capacity, n, k, s=4):
  """Independent event form of rlpyt's SumTree.advance(1), one add at a time: the add that
  takes the count from c to c+1 turns on step c - off_backward (off_backward = 1 + n + batch_T,
  batch_T = k + 1; not before off_forward = max(1, s-1) in the first pass: the initial wrap
  guard) and turns off the slots of steps c+1-off_backward .. c+off_forward."""
  back, fwd = n + k + 2, max(1, s - 1)
  on = np.zeros(capacity, bool)
  for c in range(count):
    if c - back >= fwd:
      on[(c - back) % capacity] = True
    for step in range(c + 1 - back, c + fwd + 1):
      on[step % capacity] = False
  return on


def bbf_literal(count, capacity, n, k, s=4):
  """BBF's is_valid_transition on slots, literally (cursor arithmetic, invalid_range), for the
  slots its sum tree holds (the written ones), and our need for o_{t+H}."""
  cursor, full = count % capacity, count >= capacity
  invalid = {(cursor - n + i) % capacity for i in range(s + n)}
  valid = np.zeros(capacity, bool)
  for slot in range(min(count, capacity)):
    if not full and (slot >= cursor - n - (k + 1) or slot < s - 1):
      continue
    if slot in invalid:
      continue
    t = count - 1 - (count - 1 - slot) % capacity
    valid[slot] = t + max(n, k) < count
  return valid


@pytest.mark.parametrize("n,k", [(3, 2), (10, 5), (1, 5), (2, 0)])
def test_rlpyt_and_bbf_rules_at_every_add_count(n, k):
  capacity = 24
  state = rp.replay_init(capacity, FRAME_SHAPE)
  for count in range(80):
    horizon = np.asarray(_mask(state, n_step=n, spr_steps=k))
    for rule, ref in (("rlpyt", rlpyt_events), ("bbf", bbf_literal)):
      mask = np.asarray(_mask(state, n_step=n, spr_steps=k, rule=rule))
      np.testing.assert_array_equal(
          mask, ref(count, capacity, n, k), err_msg=f"{rule} add_count={count}"
      )
      # Subsets of the horizon rule, whose batches tests/test_replay.py checks exactly.
      assert not (mask & ~horizon).any(), (rule, count)
    state = _add(state, np.full(FRAME_SHAPE, 1, np.uint8), 0, 0.0, count % 7 == 3)


def test_unknown_rule_rejected():
  with pytest.raises(ValueError, match="rule"):
    rp.sampleable_mask(fill(16, 10), 1, 1, rule="dopamine")


# ------------------------------------------------------------------ draws
def numpy_search(cum, u):
  """Index i with cum[i-1] <= u < cum[i] (exact here: the masses are small integers)."""
  return np.minimum(
      np.searchsorted(cum, u, side="right"), np.searchsorted(cum, cum[-1], side="left")
  )


def priorities_state(count, capacity, p):
  state = fill(capacity, count)
  return rp.replay_update_priorities(state, jnp.arange(capacity), jnp.asarray(p, jnp.float32))


def test_draws_reproduce_hand_computed_searches():
  """Horizon rule, 12 adds, n = K = 1: steps 0..10 sampleable. Priorities p = m^2 (alpha 0.5)
  with integer masses, so every cumulative sum is exact and the draws can be recomputed."""
  capacity, b = 16, 5
  m = np.array([1, 2, 1, 4, 1, 1, 3, 1, 2, 1, 1, 5, 7, 0, 0, 0], np.float32)
  state = priorities_state(12, capacity, m**2)
  valid = np.arange(capacity) <= 10
  cum = np.cumsum(np.where(valid, m, 0)).astype(np.float32)
  total = cum[-1]
  for i in range(10):
    key = jax.random.PRNGKey(i)
    v = np.asarray(jax.random.uniform(key, (b,), jnp.float32))
    idx, _ = _indices(
        state, key, batch_size=b, n_step=1, spr_steps=1, beta=0.4, alpha=0.5, draw="stratified"
    )
    u = (np.arange(b, dtype=np.float32) + v) * np.float32(total / np.float32(b))
    np.testing.assert_array_equal(np.asarray(idx), numpy_search(cum, u))
    idx, _ = _indices(
        state, key, batch_size=b, n_step=1, spr_steps=1, beta=0.4, alpha=0.5, draw="proportional"
    )
    np.testing.assert_array_equal(np.asarray(idx), numpy_search(cum, v * total))


def test_bbf_draw_stratified_over_written_then_redrawn():
  """8 adds in 16 slots, n = 1, K = 0, rule "bbf": sampleable 3 <= t <= 8 - 3 = 5. BBF's tree
  holds all 8 written transitions (equal priority), so its 8 strata hit slots 0..7 in order;
  the draws on 0, 1, 2, 6, 7 are redrawn proportionally from {3, 4, 5}."""
  state = fill(16, 8)
  seen = set()
  for i in range(20):
    idx, w = _indices(
        state,
        jax.random.PRNGKey(i),
        batch_size=8,
        n_step=1,
        spr_steps=0,
        beta=0.4,
        alpha=0.5,
        rule="bbf",
        draw="bbf",
    )
    idx = np.asarray(idx)
    np.testing.assert_array_equal(idx[3:6], [3, 4, 5])
    assert set(idx) <= {3, 4, 5}
    seen.update(idx[[0, 1, 2, 6, 7]].tolist())
    np.testing.assert_allclose(np.asarray(w), 1.0)
  assert seen == {3, 4, 5}


def test_bbf_draw_marginal_is_proportional_over_sampleable():
  """Rejection keeps every draw's marginal at m_i / sum over the sampleable (chi-square), while
  the newest (unsampleable, high-mass) slots are never returned."""
  capacity, alpha = 32, 0.5
  state = fill(capacity, 30)  # bbf, n = 2, K = 1: sampleable 3 <= t <= 30 - 5 = 25
  p = np.random.default_rng(0).uniform(0.2, 4.0, capacity).astype(np.float32)
  p[26:30] = 400.0  # unsampleable newest slots carry a third of the tree's mass
  state = rp.replay_update_priorities(state, jnp.arange(capacity), jnp.asarray(p))
  mask = np.asarray(_mask(state, n_step=2, spr_steps=1, rule="bbf"))
  assert list(np.flatnonzero(mask)) == list(range(3, 26))
  keys = jax.random.split(jax.random.PRNGKey(1), 500)
  draw = jax.jit(
      jax.vmap(
          lambda key: rp.sample_indices(state, key, 16, 2, 1, 0.4, alpha, rule="bbf", draw="bbf")[0]
      )
  )
  idx = np.asarray(draw(keys)).ravel()
  counts = np.bincount(idx, minlength=capacity)
  assert counts[~mask].sum() == 0
  probs = np.where(mask, p**alpha, 0.0)
  probs /= probs.sum()
  expected = idx.size * probs[mask]
  chi2 = ((counts[mask] - expected) ** 2 / expected).sum()
  assert chi2 < 60.0  # df = 22: p-value ~ 3e-5


def test_proportional_draw_is_not_stratified():
  """p = 1, 1, 4 on steps 0..2 (masses 1, 1, 2): stratified batch 2 always puts index 2
  second; the i.i.d. rlpyt draw gives (0 or 1) second in about half of the batches."""
  state = rp.replay_update_priorities(fill(16, 4), jnp.arange(3), jnp.array([1.0, 1.0, 4.0]))
  keys = jax.random.split(jax.random.PRNGKey(0), 400)
  draw = jax.jit(
      jax.vmap(lambda key: rp.sample_indices(state, key, 2, 1, 1, 0.4, 0.5, draw="proportional")[0])
  )
  idx = np.asarray(draw(keys))
  assert set(idx.ravel()) == {0, 1, 2}
  frac_low_second = np.mean(idx[:, 1] < 2)
  assert 0.4 < frac_low_second < 0.6  # P = 1/2, 400 batches: 5 sigma ~ 0.125


# ------------------------------------------------------------------ importance weights
@pytest.mark.parametrize("beta", [0.4, 1.0])
def test_spr_weights_hand_computed(beta):
  """Steps 0, 1, 2 sampleable with p = 1e-6, 1e-6, 4e-6 (alpha 0.5: masses 1e-3, 1e-3, 2e-3).
  Stratified batch 2: index 0 or 1 first, index 2 second. schaul: w = 1, (2e-3 / 1e-3)^-beta;
  SPR: 1, ((2e-3 + 1e-5) / (1e-3 + 1e-5))^-beta = 1, (201 / 101)^-beta."""
  state = rp.replay_update_priorities(fill(16, 4), jnp.arange(3), jnp.array([1e-6, 1e-6, 4e-6]))
  for i in range(5):
    for weights, expected in (("schaul", 0.5**beta), ("spr", (201 / 101) ** -beta)):
      idx, w = _indices(
          state,
          jax.random.PRNGKey(i),
          batch_size=2,
          n_step=1,
          spr_steps=1,
          beta=beta,
          alpha=0.5,
          weights=weights,
      )
      assert np.asarray(idx)[1] == 2
      np.testing.assert_allclose(np.asarray(w), [1.0, expected], rtol=2e-5)
  assert abs((201 / 101) ** -beta / 0.5**beta - 1) > 4e-3 * beta  # a real difference


def test_spr_weights_match_formula_on_any_batch():
  capacity = 32
  p = np.random.default_rng(3).uniform(1e-6, 2.0, capacity).astype(np.float32)
  state = priorities_state(30, capacity, p)
  for i in range(5):
    idx, w = _indices(
        state,
        jax.random.PRNGKey(i),
        batch_size=8,
        n_step=3,
        spr_steps=2,
        beta=0.6,
        alpha=0.5,
        rule="rlpyt",
        draw="proportional",
        weights="spr",
    )
    m = np.asarray(state.priorities, np.float64)[np.asarray(idx)] ** 0.5
    ref = (1.0 / (m + 1e-5)) ** 0.6
    np.testing.assert_allclose(np.asarray(w), ref / ref.max(), rtol=2e-5)


# ------------------------------------------------------------------ duplicate updates
@pytest.mark.parametrize("duplicates,expected", [("first", 1.0), ("last", 4.0)])
def test_duplicate_priority_updates(duplicates, expected):
  state = fill(16, 8)
  new = _update(
      state, jnp.array([3, 5, 3, 3]), jnp.array([1.0, 2.0, 3.0, 4.0]), duplicates=duplicates
  )
  pr = np.asarray(new.priorities)
  assert pr[3] == expected and pr[5] == 2.0
  np.testing.assert_array_equal(pr[[0, 1, 2, 4, 6, 7]], 1.0)
  assert float(new.max_priority) == 4.0  # every value given counts, as Dopamine's set()
  default = _update(state, jnp.array([3, 5, 3, 3]), jnp.array([1.0, 2.0, 3.0, 4.0]))
  assert float(default.priorities[3]) in (1.0, 3.0, 4.0)  # "any": one of them


# ------------------------------------------------------------------ jit and vmap
def test_options_under_jit_and_vmap():
  """A leading run axis with every reference option: vmapped add / sample / update equal the
  per-run results (the string options are bound with functools.partial)."""
  runs, capacity = 2, 24
  opts = [
      dict(rule="rlpyt", draw="proportional", weights="spr"),
      dict(rule="bbf", draw="bbf", weights="schaul"),
  ]
  for new_priority, duplicates, sample_opts in zip(("one", "max"), ("first", "last"), opts):
    add = jax.jit(jax.vmap(functools.partial(rp.replay_add, new_priority=new_priority)))
    one_sample = functools.partial(
        rp.replay_sample, batch_size=6, n_step=3, spr_steps=2, beta=0.5, alpha=0.5, **sample_opts
    )
    sample, sample_single = jax.jit(jax.vmap(one_sample)), jax.jit(one_sample)
    upd = jax.jit(jax.vmap(functools.partial(rp.replay_update_priorities, duplicates=duplicates)))
    state = jax.vmap(lambda _: rp.replay_init(capacity, FRAME_SHAPE))(jnp.arange(runs))
    singles = [rp.replay_init(capacity, FRAME_SHAPE) for _ in range(runs)]
    rng = np.random.default_rng(0)
    for t in range(40):
      frames = rng.integers(0, 255, (runs, *FRAME_SHAPE), dtype=np.uint8)
      terms = rng.random(runs) < 0.15
      state = add(state, frames, jnp.full((runs,), t % 3), jnp.zeros(runs), terms)
      singles = [
          _add(singles[r], frames[r], t % 3, 0.0, terms[r], new_priority=new_priority)
          for r in range(runs)
      ]
      if t % 10 == 9:  # move the priorities (and max_priority) between adds
        keys = jax.random.split(jax.random.PRNGKey(t), runs)
        _, idx, w = sample(state, keys)
        new_p = jnp.asarray(rng.uniform(0.1, 3.0, (runs, 6)), jnp.float32)
        state = upd(state, idx, new_p)
        for r in range(runs):
          _, ref_idx, ref_w = sample_single(singles[r], keys[r])
          np.testing.assert_array_equal(np.asarray(idx[r]), np.asarray(ref_idx))
          np.testing.assert_allclose(np.asarray(w[r]), np.asarray(ref_w), rtol=1e-6)
          singles[r] = _update(singles[r], ref_idx, new_p[r], duplicates=duplicates)
    for r in range(runs):
      jax.tree_util.tree_map(lambda a, b: np.testing.assert_array_equal(a[r], b), state, singles[r])
