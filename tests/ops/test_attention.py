"""The attention helpers of deltajax.ops against direct float64 formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.ops import cached_attention, causal_attention, linear_attention, rope
from deltajax.ops.attention import ring_attention, ring_write
from tests.numerics import relative_error

B, T, H, K, V = 2, 37, 2, 8, 6


def random_qkv(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(B, T, H, K)), rng.normal(size=(B, T, H, K)),
            rng.normal(size=(B, T, H, V)),
            rng.normal(size=(B, H, K, V)))


# Row 0 is packed: segments start at 5, 16 (a chunk boundary of chunk_size 8) and 17; row 1 is
# one sequence.
SEGMENT_IDS = np.stack([np.cumsum(np.isin(np.arange(T), (5, 16, 17))), np.zeros(T, int)])


def linear_attention_quadratic(q, k, v, S0, xp):
    """o = (tril * same segment)(Q K^T) V + Q S0 on the first segment, and S_T = S0 (if one
    segment) + K^T V over the last segment, all at once (no recurrence, no chunks)."""
    q = q * K ** -0.5
    same = SEGMENT_IDS[:, :, None] == SEGMENT_IDS[:, None, :]
    visible = (np.tril(np.ones((T, T))) * same)[:, None]
    first, last = SEGMENT_IDS == 0, SEGMENT_IDS == SEGMENT_IDS[:, -1:]
    scores = xp.einsum("bihk,bjhk->bhij", q, k) * visible
    o = (xp.einsum("bhij,bjhv->bihv", scores, v)
         + xp.einsum("bthk,bhkv->bthv", q * first[:, :, None, None], S0))
    return o, (S0 * last[:, 0, None, None, None]
               + xp.einsum("bthk,bthv->bhkv", k * last[:, :, None, None], v))


def test_linear_attention_matches_quadratic_form_values_and_gradients_packed_or_not():
    q, k, v, S0 = random_qkv()
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    op = lambda q, k, v, S0: linear_attention(q, k, v, initial_state=S0, return_final_state=True,
                                              segment_ids=jnp.asarray(SEGMENT_IDS), chunk_size=8)
    (o, S), vjp = jax.vjp(jax.jit(op), f32(q), f32(k), f32(v), f32(S0))
    o_ref, S_ref = linear_attention_quadratic(q, k, v, S0, np)
    assert relative_error(o, o_ref) < 1e-5 and relative_error(S, S_ref) < 1e-5

    rng = np.random.default_rng(1)
    do, dS = rng.normal(size=o.shape), rng.normal(size=S.shape)
    grads = vjp((f32(do), f32(dS)))
    with jax.enable_x64(True):
        _, vjp_ref = jax.vjp(lambda *a: linear_attention_quadratic(*a, jnp), q, k, v, S0)
        grads_ref = vjp_ref((jnp.asarray(do), jnp.asarray(dS)))
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        assert relative_error(grad, np.asarray(grad_ref)) < 1e-4


@pytest.mark.parametrize("chunk_size", [0, 12])
def test_linear_attention_checks_chunk_size_like_delta_rule(chunk_size):
    q, k, v, _ = (jnp.asarray(x, jnp.float32) for x in random_qkv())
    with pytest.raises(ValueError, match="chunk_size must be a positive power of two"):
        linear_attention(q, k, v, chunk_size=chunk_size)


def test_linear_attention_checks_segment_ids_like_delta_rule():
    q, k, v, _ = (jnp.asarray(x, jnp.float32) for x in random_qkv())
    with pytest.raises(ValueError, match="segment_ids must be non-decreasing"):
        linear_attention(q, k, v, segment_ids=jnp.asarray(SEGMENT_IDS[:, ::-1]))
    with pytest.raises(ValueError, match=r"segment_ids must have shape \[batch, time\]"):
        linear_attention(q, k, v, segment_ids=jnp.asarray(SEGMENT_IDS[:, :-1]))


def test_rope_scores_depend_only_on_relative_position():
    q, k, _, _ = random_qkv()
    q, k = jnp.asarray(q[:, :1], jnp.float32), jnp.asarray(k[:, :1], jnp.float32)
    score = lambda m, n: jnp.sum(rope(q, jnp.array([m]), 100.0) * rope(k, jnp.array([n]), 100.0))
    np.testing.assert_allclose(score(3, 1), score(12, 10), rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(rope(q, jnp.array([7]))), jnp.linalg.norm(q),
                               rtol=1e-6)
    assert abs(float(score(3, 1) - score(3, 2))) > 1e-3


def test_cached_attention_matches_causal_attention_with_and_without_window():
    q, k, v, _ = random_qkv()
    q, k, v = (jnp.asarray(x, jnp.float32) for x in (q, k, v))
    v = jnp.concatenate([v, v[..., :2]], -1)  # same head dim as q and k
    pad = lambda x: jnp.pad(x, [(0, 0), (0, 5), (0, 0), (0, 0)])  # cache longer than the sequence
    for window in (None, 4):
        full = causal_attention(q, k, v, window=window)
        cached = cached_attention(q, pad(k), pad(v), start=0, window=window)
        tail = cached_attention(q[:, 30:], pad(k), pad(v), start=30, window=window)
        assert relative_error(cached, full) < 1e-6
        assert relative_error(tail, full[:, 30:]) < 1e-6


def test_a_ring_buffer_of_window_slots_gives_sliding_window_attention():
    q, k, v, _ = random_qkv()
    q, k, v = (jnp.asarray(x, jnp.float32) for x in (q, k, v))
    v = jnp.concatenate([v, v[..., :2]], -1)  # same head dim as q and k
    window = 4
    full = causal_attention(q, k, v, window=window)

    @jax.jit   # one program for the whole pass (eagerly, each op of each chunk compiles)
    def by_chunks(q, k, v):
        ring_k = ring_v = jnp.zeros((B, window, H, K))
        outputs, start = [], 0
        # Chunks shorter and longer than the window, writes that wrap around the ring.
        for size in (1, 6, 3, 4, 23):
            chunk = slice(start, start + size)
            outputs.append(ring_attention(q[:, chunk], k[:, chunk], v[:, chunk], ring_k, ring_v,
                                          start=start, window=window))
            ring_k, ring_v = (ring_write(ring_k, k[:, chunk], start),
                              ring_write(ring_v, v[:, chunk], start))
            start += size
        return jnp.concatenate(outputs, 1), ring_k, ring_v

    by_chunk, ring_k, ring_v = by_chunks(q, k, v)
    assert relative_error(by_chunk, full) < 1e-6
    # Slot p mod window holds position p, for the last `window` positions.
    np.testing.assert_array_equal(ring_k[:, (T - window + np.arange(window)) % window],
                                  k[:, T - window:])
    with pytest.raises(ValueError, match=r"start=-1: cache positions start at 0"):
        ring_attention(q[:, :1], k[:, :1], v[:, :1], ring_k, ring_v, start=-1, window=window)
