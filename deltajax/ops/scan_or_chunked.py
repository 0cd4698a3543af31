"""The recurrent scan when a call is only evaluated, the chunked form when it is differentiated.

On a CPU the token scan is the faster forward (a cheap matrix-vector product per token), while
under `jax.grad` the chunked custom VJP is an order of magnitude faster and lighter than
differentiating the scan (benchmarks/results/cpu-ops.md). JAX runs a custom_vjp's primal when
nothing differentiates it and its fwd rule when something does, so one op gets both.
"""

import functools
from typing import Optional

import jax

from deltajax.ops.chunked import delta_rule_chunked
from deltajax.ops.recurrent import delta_rule_recurrent


def delta_rule_scan_or_chunked(q_BTHK, k_BTHK, v_BTHV, beta_BTH, *, scale: float, chunk_size: int,
                               gate_BTH: Optional[jax.Array] = None,
                               initial_state_BHKV: Optional[jax.Array] = None,
                               segment_ids_BT: Optional[jax.Array] = None):
    """Returns (o_BTHV in the input dtype, final state_BHKV in float32)."""
    arrays = dict(q_BTHK=q_BTHK, k_BTHK=k_BTHK, v_BTHV=v_BTHV, beta_BTH=beta_BTH,
                  gate_BTH=gate_BTH, initial_state_BHKV=initial_state_BHKV,
                  segment_ids_BT=segment_ids_BT)
    return _scan_or_chunked((float(scale), int(chunk_size)), arrays)


def _chunked(static, arrays):
    scale, chunk_size = static
    return delta_rule_chunked(**arrays, scale=scale, chunk_size=chunk_size)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _scan_or_chunked(static, arrays):
    return delta_rule_recurrent(**arrays, scale=static[0])


def _scan_or_chunked_fwd(static, arrays):
    # The chunked pullback (a pytree of its residuals) is the residual.
    outputs, pullback = jax.vjp(functools.partial(_chunked, static), arrays)
    return outputs, pullback


def _scan_or_chunked_bwd(static, pullback, cotangents):
    del static
    return pullback(cotangents)


_scan_or_chunked.defvjp(_scan_or_chunked_fwd, _scan_or_chunked_bwd)
