"""deltajax: delta-rule linear transformers in JAX/Flax."""

from deltajax import ops

__version__ = "0.1.0"
__all__ = ["ops"]
