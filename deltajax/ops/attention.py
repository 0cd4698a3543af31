"""Attention helpers for the baselines: rotary embeddings, causal softmax attention (full or
sliding-window, over a whole sequence, against a KV cache or against a sliding window's ring
buffer), and causal linear attention."""

from typing import Optional

import jax
import jax.numpy as jnp

from deltajax.ops import checks
from deltajax.ops.backend import check_chunk_size, clamp_chunk
from deltajax.ops.segments import check_segment_ids, same_segment_mask

_PRECISION = jax.lax.Precision.HIGHEST


def rope(x_BTHD: jax.Array, positions: jax.Array, theta: float = 10000.0) -> jax.Array:
    """Rotary position embedding (rotate-half convention) at integer positions, [T] shared by
    the batch or [B, T] per row (positions within packed segments)."""
    D = x_BTHD.shape[-1]
    if D % 2:
        raise ValueError(f"rope needs an even head dimension, got {D}")
    inv_freq_F = theta ** (-jnp.arange(0, D, 2, dtype=jnp.float32) / D)
    angle_BTF = jnp.atleast_2d(positions).astype(jnp.float32)[..., None] * inv_freq_F[None, None]
    cos_BT1F, sin_BT1F = jnp.cos(angle_BTF)[:, :, None], jnp.sin(angle_BTF)[:, :, None]
    x1, x2 = jnp.split(x_BTHD.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos_BT1F - x2 * sin_BT1F, x2 * cos_BT1F + x1 * sin_BT1F], -1)
    return rotated.astype(x_BTHD.dtype)


def causal_attention(q_BTHD, k_BTHD, v_BTHD, *, window: Optional[int] = None,
                     segment_ids: Optional[jax.Array] = None) -> jax.Array:
    """Causal softmax attention; with `window`, each token sees itself and window - 1 before it;
    with segment_ids [B, T] (packed sequences), only tokens of its own segment."""
    local = None if window is None else (window - 1, 0)
    mask = None if segment_ids is None else same_segment_mask(segment_ids)
    return jax.nn.dot_product_attention(q_BTHD, k_BTHD, v_BTHD, mask=mask, is_causal=True,
                                        local_window_size=local)


def check_cache_positions(start, T: int, S: Optional[int]):
    """Positions start .. start+T-1 must lie in a cache of S (None: a ring buffer, which takes
    any position >= 0): a concrete start outside raises a ValueError naming it; a traced one
    gives the flag that cached_attention and ring_attention turn into NaN."""
    values = checks.concrete(start)
    if values is None:
        return (start < 0) if S is None else (start < 0) | (start + T > S)
    if values < 0:
        raise ValueError(f"start={int(values)}: cache positions start at 0")
    if S is not None and values + T > S:
        raise ValueError(f"start={int(values)}: queries at positions {int(values)}..."
                         f"{int(values) + T - 1} do not fit a KV cache of {S} positions "
                         f"(give init_cache a max_len of at least {int(values) + T})")
    return None


def cached_attention(q_BTHD, k_cache_BSHD, v_cache_BSHD, *, start: jax.Array,
                     window: Optional[int] = None) -> jax.Array:
    """Queries at positions start .. start+T-1 against a cache already holding their keys.

    Those positions must lie in the cache (0 <= start, start + T <= S): beyond it their keys were
    never written (dynamic_update_slice clamps), so a concrete `start` that overflows raises a
    ValueError and a traced one makes the output NaN.
    """
    T, S = q_BTHD.shape[1], k_cache_BSHD.shape[1]
    invalid = check_cache_positions(start, T, S)
    query_pos_T1 = start + jnp.arange(T)[:, None]
    key_pos_1S = jnp.arange(S)[None, :]
    visible_TS = key_pos_1S <= query_pos_T1
    if window is not None:
        visible_TS = visible_TS & (key_pos_1S > query_pos_T1 - window)
    return checks.poison(invalid, jax.nn.dot_product_attention(
        q_BTHD, k_cache_BSHD, v_cache_BSHD, mask=visible_TS[None, None]))


def ring_positions(start, W: int) -> jax.Array:
    """[W] the position each slot of a W-slot ring buffer holds once positions 0 .. start-1 are
    written (slot = position mod W); negative for a slot not written yet."""
    return start - 1 - (start - 1 - jnp.arange(W)) % W


def ring_attention(q_BTHD, k_BTHD, v_BTHD, k_ring_BWHD, v_ring_BWHD, *, start,
                   window: int) -> jax.Array:
    """Sliding-window attention of queries at positions start .. start+T-1 over their own keys
    (k_BTHD, v_BTHD) and the ring buffer of the `window` positions before start, so a cache of
    `window` slots serves a sequence of any length. A negative concrete start raises a ValueError;
    a traced one makes the output NaN."""
    T, W = q_BTHD.shape[1], k_ring_BWHD.shape[1]
    if W != window:
        raise ValueError(f"the ring buffer has {W} slots, window is {window}: they must be equal")
    invalid = check_cache_positions(start, T, None)
    query_pos_T1 = start + jnp.arange(T)[:, None]
    key_pos_1S = jnp.concatenate([ring_positions(start, W), start + jnp.arange(T)])[None, :]
    visible_TS = ((key_pos_1S >= 0) & (key_pos_1S <= query_pos_T1)
                  & (key_pos_1S > query_pos_T1 - window))
    keys = lambda ring, new: jnp.concatenate([ring, new.astype(ring.dtype)], axis=1)
    return checks.poison(invalid, jax.nn.dot_product_attention(
        q_BTHD.astype(k_ring_BWHD.dtype), keys(k_ring_BWHD, k_BTHD), keys(v_ring_BWHD, v_BTHD),
        mask=visible_TS[None, None]))


def ring_write(ring_BWHD: jax.Array, x_BTHD: jax.Array, start) -> jax.Array:
    """The ring buffer after positions start .. start+T-1 are written, each at slot position mod
    W; of more than W new positions only the last W stay (the earlier ones fall out anyway)."""
    W, T = ring_BWHD.shape[1], x_BTHD.shape[1]
    kept = min(T, W)   # distinct slots: a scatter with repeated indices has no defined order
    slots = (start + T - kept + jnp.arange(kept)) % W
    return ring_BWHD.at[:, slots].set(x_BTHD[:, T - kept:].astype(ring_BWHD.dtype))


def linear_attention(
    q_BTHK: jax.Array,
    k_BTHK: jax.Array,
    v_BTHV: jax.Array,
    *,
    scale: Optional[float] = None,
    initial_state: Optional[jax.Array] = None,
    segment_ids: Optional[jax.Array] = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
) -> tuple[jax.Array, Optional[jax.Array]]:
    """Causal linear attention S_t = S_{t-1} + k_t v_t^T, o_t = S_t^T (scale q_t), chunkwise.

    No normalising denominator (layers normalise the output). State and accumulation are float32;
    o comes back in the dtype of v. chunk_size: a power of two, clamped to the sequence as
    delta_rule's is (deltajax.ops.backend.clamp_chunk). segment_ids: [batch, time] integers,
    non-decreasing, as delta_rule's: the state resets to zero where the id changes
    (initial_state belongs to the first segment).
    """
    B, T, H, K = q_BTHK.shape
    V = v_BTHV.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    # A public op like delta_rule: the same check and the same clamp rule.
    C = clamp_chunk(check_chunk_size(chunk_size), T)
    N = -(-T // C)
    invalid = None if segment_ids is None else check_segment_ids(segment_ids, (B, T))

    def to_chunks(x_BTH_):
        x = jnp.pad(x_BTH_.astype(jnp.float32), [(0, 0), (0, N * C - T), (0, 0), (0, 0)])
        return jnp.moveaxis(x.reshape(B, N, C, H, x.shape[-1]), (1, 3), (0, 2))  # [N,B,H,C,.]

    # Padded tokens join the last segment; their k = v = 0 write nothing.
    ids_BT = jnp.zeros((B, T), jnp.int32) if segment_ids is None else segment_ids
    seg_NBC = jnp.moveaxis(jnp.pad(ids_BT, [(0, 0), (0, N * C - T)], mode="edge"
                                   ).reshape(B, N, C), 1, 0)
    # The segment of the state entering each chunk: that of the token before it.
    seg_prev_NB = jnp.concatenate([seg_NBC[:1, :, 0], seg_NBC[:-1, :, -1]], axis=0)
    causal_1CC = jnp.tril(jnp.ones((1, C, C), bool))

    def step(S_BHKV, chunk):
        q_BHCK, k_BHCK, v_BHCV, seg_BC, seg_prev_B = chunk
        visible_B1CC = (causal_1CC & (seg_BC[:, :, None] == seg_BC[:, None, :]))[:, None]
        reads_state_B1C1 = (seg_BC == seg_prev_B[:, None])[:, None, :, None]
        writes_next_B1C1 = (seg_BC == seg_BC[:, -1:])[:, None, :, None]
        scores_BHCC = jnp.einsum("bhik,bhjk->bhij", q_BHCK, k_BHCK, precision=_PRECISION)
        o_BHCV = (reads_state_B1C1 * jnp.einsum("bhck,bhkv->bhcv", q_BHCK, S_BHKV,
                                                precision=_PRECISION)
                  + jnp.einsum("bhij,bhjv->bhiv", jnp.where(visible_B1CC, scores_BHCC, 0.0),
                               v_BHCV, precision=_PRECISION))
        keeps_state_B111 = reads_state_B1C1[:, :, -1:]
        S_next = (keeps_state_B111 * S_BHKV
                  + jnp.einsum("bhck,bhcv->bhkv", writes_next_B1C1 * k_BHCK, v_BHCV,
                               precision=_PRECISION))
        return S_next, o_BHCV

    S0 = (jnp.zeros((B, H, K, V), jnp.float32) if initial_state is None
          else initial_state.astype(jnp.float32))
    final_state, o_NBHCV = jax.lax.scan(
        step, S0, (to_chunks(q_BTHK) * scale, to_chunks(k_BTHK), to_chunks(v_BTHV), seg_NBC,
                   seg_prev_NB))
    o_BTHV = jnp.moveaxis(o_NBHCV, (0, 2), (1, 3)).reshape(B, N * C, H, V)[:, :T]
    return checks.poison(invalid, (o_BTHV.astype(v_BTHV.dtype),
                                   final_state if return_final_state else None))
