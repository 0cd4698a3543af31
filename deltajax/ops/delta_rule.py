"""The public delta-rule op: argument checks, one resolution of the backend, and the call."""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from deltajax.ops import checks
from deltajax.ops.backend import Backend, Resolved, check_chunk_size, parse_backend, resolve
from deltajax.ops.chunked import delta_rule_chunked
from deltajax.ops.recurrent import delta_rule_recurrent
from deltajax.ops.segments import check_segment_ids, segment_index

# The values `backend` accepts, for callers that validated strings before Backend existed.
BACKENDS = tuple(b.value for b in Backend)


def delta_rule(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    beta: jax.Array,
    *,
    gate: Optional[jax.Array] = None,
    scale: Optional[float] = None,
    initial_state: Optional[jax.Array] = None,
    segment_ids: Optional[jax.Array] = None,
    num_segments: Optional[int] = None,
    return_final_state: bool = False,
    backend: Backend | str = Backend.AUTO,
    chunk_size: int = 64,
    block_sizes=None,
) -> tuple[jax.Array, Optional[jax.Array]]:
    """The (gated) delta rule over a sequence, per batch element and head.

    With S_0 = initial_state (or 0), for t = 1..T:
        S_t = exp(g_t) S_{t-1};  S_t = S_t + beta_t k_t (v_t - S_t^T k_t)^T;
        o_t = S_t^T (scale q_t)

    Layout: time before heads, [batch, time, heads, head_dim], as FLA today. Arrays in the
    head-first layout of older FLA releases ([batch, heads, time, head_dim], head_first=True) have
    the same rank and are not detectable in general: transpose them with .swapaxes(1, 2).

    Args:
      q, k: [batch, time, heads, K]. Not normalised here (DeltaNet layers L2-normalise them).
      v: [batch, time, heads, V].
      beta: [batch, time, heads], finite, in [0, 1] (classic) or [0, 2] (negative eigenvalues).
      gate: [batch, time, heads] finite log-decay g <= 0 (Gated DeltaNet); None means no decay.
      scale: multiplies q; default K ** -0.5.
      initial_state: [batch, heads, K, V], the state before token 1 (of the first segment); with
        num_segments, [batch, num_segments, heads, K, V], one per segment.
      segment_ids: [batch, time] integers, non-decreasing. The state resets to zero where the id
        changes, so packed sequences give what each would alone.
      num_segments: per-segment states, as FLA's `cu_seqlens` gives: segment n of a row is its
        n-th run of equal segment_ids (n < num_segments), starts from initial_state[:, n] (zeros
        if None) and ends in final_state[:, n] ([batch, num_segments, heads, K, V]; a segment
        the row does not have keeps its initial state). Runs on the recurrent path (`auto` and
        `recurrent`; other backends raise): the chunked forms carry one state per chunk.
      return_final_state: also return the float32 state after the last token.
      backend: a Backend or its value: "recurrent" (lax.scan, the specification), "chunked"
        (chunkwise WY form), "scan_chunked_vjp" (the scan's forward, the chunked VJP),
        "pallas", or "auto" (the measured fastest for the platform and the call; see
        deltajax/ops/README.md).
      chunk_size: tokens per chunk of the chunked backends, a power of two; clamped to the
        sequence (deltajax.ops.backend.clamp_chunk). `auto` uses its measured chunk instead.
      block_sizes: pallas_kernels BlockSizes (tiles of the Pallas kernels); Pallas path only.

    Returns:
      (o [batch, time, heads, V] in the dtype of v, final_state [batch, heads, K, V] float32 or
      None). Values outside the domain (beta outside [0, 2], a gate > 0, non-finite beta or gate,
      decreasing segment_ids) raise a ValueError naming the argument when the arrays are concrete;
      under a transformation (jit, grad, vmap) they make o, final_state and every gradient NaN.
    """
    num_segments = _check_num_segments(num_segments, segment_ids)
    B, T, H, K, V = _check_shapes(q, k, v, beta, gate, initial_state, segment_ids, num_segments)
    _check_dtypes(q, k, v, beta, gate, initial_state, segment_ids)
    chunk_size = check_chunk_size(chunk_size)
    backend = parse_backend(backend)
    if num_segments is not None:
        if backend not in (Backend.AUTO, Backend.RECURRENT):
            raise ValueError(f"num_segments (per-segment states) runs on the recurrent path: "
                             f"backend must be 'auto' or 'recurrent', got {backend.value!r}")
        backend = Backend.RECURRENT
    if scale is None:
        scale = K ** -0.5
    elif not isinstance(scale, (int, float, np.number)):
        raise ValueError(f"scale must be a Python number or None, got {type(scale).__name__}")
    invalid = _check_values(beta, gate, segment_ids, num_segments)

    request = dict(seq_len=T, head_dim=K, chunk_size=chunk_size, platform=jax.default_backend(),
                   min_chunk=None if block_sizes is None else block_sizes.min_chunk)
    evaluated = resolve(backend, differentiated=False, **request)
    differentiated = resolve(backend, differentiated=True, **request)
    if block_sizes is not None and Backend.PALLAS not in (evaluated.path, differentiated.path):
        raise ValueError(f"block_sizes applies to the Pallas path only; backend={backend.value!r} "
                         f"resolved to {evaluated.path.value!r} here")

    arrays = dict(q_BTHK=q, k_BTHK=k, v_BTHV=v, beta_BTH=beta, gate_BTH=gate,
                  initial_state_BHKV=initial_state, segment_ids_BT=segment_ids)
    static = (float(scale), block_sizes, num_segments)
    if evaluated == differentiated:
        o, final_state = _run(evaluated, static, arrays)
    else:
        o, final_state = _evaluate_one_differentiate_other(evaluated, differentiated, static,
                                                           arrays)

    o, final_state = checks.poison(invalid, (o, final_state))
    return o, (final_state if return_final_state else None)


def _run(path: Resolved, static, arrays):
    """Returns (o_BTHV, final state_BHKV) of one resolved path."""
    scale, block_sizes, num_segments = static
    match path.path:
        case Backend.RECURRENT:
            return delta_rule_recurrent(**arrays, scale=scale, num_segments=num_segments)
        case Backend.CHUNKED:
            return delta_rule_chunked(**arrays, scale=scale, chunk_size=path.chunk_size)
        case Backend.PALLAS:
            # Imported here: the Pallas stack costs an import that CPU users of the other paths
            # never need.
            from deltajax.ops.pallas import delta_rule_pallas

            # block_sizes only when given, so the call works with either kernel API.
            extra = {} if block_sizes is None else dict(block_sizes=block_sizes)
            return delta_rule_pallas(**arrays, scale=scale, chunk_size=path.chunk_size,
                                     target=path.target, interpret=path.interpret, **extra)
    raise AssertionError(f"not a concrete path: {path}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _evaluate_one_differentiate_other(evaluated, differentiated, static, arrays):
    # JAX runs a custom_vjp's primal when nothing differentiates the call and its fwd rule when
    # something does, so one op evaluates with one path and differentiates with another.
    del differentiated
    return _run(evaluated, static, arrays)


def _differentiated_fwd(evaluated, differentiated, static, arrays):
    del evaluated
    # The other path's pullback (a pytree of its residuals) is the residual.
    return jax.vjp(functools.partial(_run, differentiated, static), arrays)


def _differentiated_bwd(evaluated, differentiated, static, pullback, cotangents):
    del evaluated, differentiated, static
    return pullback(cotangents)


_evaluate_one_differentiate_other.defvjp(_differentiated_fwd, _differentiated_bwd)


# Every shape error ends with this: old FLA's head-first arrays pass the rank checks.
LAYOUT_HINT = ("(delta_rule takes q, k, v as [batch, time, heads, head_dim]; arrays in the "
               "head-first layout of older FLA releases, [batch, heads, time, head_dim], need "
               ".swapaxes(1, 2))")


def _shape_error(name, expected, x):
    return ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)} {LAYOUT_HINT}")


def _check_num_segments(num_segments, segment_ids) -> Optional[int]:
    if num_segments is None:
        return None
    if (isinstance(num_segments, bool) or not isinstance(num_segments, (int, np.integer))
            or num_segments < 1):
        raise ValueError(f"num_segments must be a positive integer or None, got {num_segments!r}")
    if segment_ids is None:
        raise ValueError("num_segments needs segment_ids: the segments are its runs of equal ids")
    return int(num_segments)


def _check_shapes(q, k, v, beta, gate, initial_state, segment_ids, num_segments):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if jnp.ndim(x) != 4:
            raise _shape_error(name, "[batch, time, heads, head_dim] (rank 4)", jnp.asarray(x))
    B, T, H, K = q.shape
    V = v.shape[-1]
    if T < 1:
        raise ValueError(f"q must have at least one time step, got shape {tuple(q.shape)} "
                         f"{LAYOUT_HINT}")
    if k.shape != q.shape:
        raise _shape_error("k", f"{tuple(q.shape)} like q", k)
    if v.shape[:3] != (B, T, H):
        raise _shape_error("v", f"({B}, {T}, {H}, V) matching q's [batch, time, heads]", v)
    for name, x in (("beta", beta), ("gate", gate)):
        if x is not None and tuple(jnp.shape(x)) != (B, T, H):
            raise _shape_error(name, f"[batch, time, heads] = {(B, T, H)}", jnp.asarray(x))
    if initial_state is not None:
        if num_segments is None and tuple(initial_state.shape) != (B, H, K, V):
            raise _shape_error("initial_state", f"[batch, heads, K, V] = {(B, H, K, V)}",
                               initial_state)
        if num_segments is not None and tuple(initial_state.shape) != (B, num_segments, H, K, V):
            raise _shape_error("initial_state", f"[batch, num_segments, heads, K, V] = "
                               f"{(B, num_segments, H, K, V)}", initial_state)
    if segment_ids is not None and tuple(jnp.shape(segment_ids)) != (B, T):
        raise _shape_error("segment_ids", f"[batch, time] = {(B, T)}", jnp.asarray(segment_ids))
    return B, T, H, K, V


def _check_dtypes(q, k, v, beta, gate, initial_state, segment_ids):
    for name, x in (("q", q), ("k", k), ("v", v), ("beta", beta), ("gate", gate),
                    ("initial_state", initial_state)):
        if x is not None and not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{name} must have a floating dtype, got {x.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if segment_ids is not None and not jnp.issubdtype(segment_ids.dtype, jnp.integer):
        raise ValueError(f"segment_ids must have an integer dtype, got {segment_ids.dtype}")


def _check_values(beta, gate, segment_ids, num_segments) -> Optional[jax.Array]:
    """Raises on out-of-domain concrete values; returns a traced 'invalid' flag otherwise."""
    # Written as "not (in the domain)" so NaN, which fails every comparison, is invalid too.
    in_domain = dict(beta=lambda x: (x >= 0) & (x <= 2),
                     gate=lambda x: (x <= 0) & (x > -np.inf))
    messages = dict(beta="beta must be finite and in [0, 2] ([0, 1] classic, up to 2 for negative "
                         "eigenvalues) everywhere",
                    gate="gate must be a finite log-decay <= 0 everywhere")
    flags = []
    for name, x in (("beta", beta), ("gate", gate)):
        if x is None:
            continue
        values = checks.concrete(x)
        if values is None:
            flags.append(jnp.any(~in_domain[name](x)))
        elif not np.all(ok := in_domain[name](values)):
            raise ValueError(f"{messages[name]}, got {checks.first(values, ~ok)}")
    if segment_ids is not None:
        flags.append(check_segment_ids(segment_ids, segment_ids.shape))
        values = checks.concrete(segment_ids)
        if num_segments is not None:
            # Segments past num_segments would have no state slot.
            if values is None:
                flags.append(jnp.any(segment_index(segment_ids)[:, -1] >= num_segments))
            elif (count := int(np.max(np.sum(np.diff(values, axis=1) != 0, axis=1)) + 1)
                  ) > num_segments:
                raise ValueError(f"segment_ids has a row of {count} segments, more than "
                                 f"num_segments={num_segments}")
    return checks.any_invalid(flags)
