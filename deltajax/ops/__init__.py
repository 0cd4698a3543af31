"""The delta rule and the attention baselines as pure functions of arrays."""

from deltajax.ops.attention import cached_attention, causal_attention, linear_attention, rope
from deltajax.ops.backend import Backend, check_chunk_size, parse_backend
from deltajax.ops.delta_rule import BACKENDS, delta_rule

__all__ = ["BACKENDS", "Backend", "cached_attention", "causal_attention", "check_chunk_size",
           "delta_rule", "linear_attention", "parse_backend", "rope"]
