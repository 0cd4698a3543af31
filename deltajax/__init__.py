"""deltajax: delta-rule linear transformers in JAX/Flax.

`deltajax.ops` is imported with the package; `deltajax.layers`, `deltajax.models` and
`deltajax.train` on first use (module __getattr__), so `import deltajax` stays cheap.
"""

import importlib

from deltajax import ops

__version__ = "0.1.0"
_LAZY = ("layers", "models", "train")
__all__ = ["ops", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        # import_module binds the submodule on the package, so this runs once per name.
        return importlib.import_module(f"deltajax.{name}")
    raise AttributeError(f"module 'deltajax' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])
