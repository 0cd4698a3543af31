"""The delta rule as pure functions of arrays."""

from deltajax.ops.delta_rule import BACKENDS, delta_rule

__all__ = ["BACKENDS", "delta_rule"]
