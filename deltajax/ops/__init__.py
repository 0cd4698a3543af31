"""The delta rule and the attention baselines as pure functions of arrays."""

from deltajax.ops.attention import cached_attention, causal_attention, linear_attention, rope
from deltajax.ops.delta_rule import BACKENDS, delta_rule

__all__ = ["BACKENDS", "cached_attention", "causal_attention", "delta_rule", "linear_attention",
           "rope"]
