"""Output shapes of pallas_call that also work inside `shard_map` (check_vma=True)."""

import jax


def out_struct(shape, dtype, inputs) -> jax.ShapeDtypeStruct:
    """ShapeDtypeStruct varying over every manual mesh axis that any of inputs varies over.

    Under shard_map a kernel's outputs must say how they vary across devices; a kernel's output
    depends on all its inputs, so it varies wherever one of them does. Outside shard_map the
    union is empty and this is a plain ShapeDtypeStruct.
    """
    mats = [jax.typeof(x).manual_axis_type for x in inputs]
    varying = frozenset().union(*(m.varying for m in mats))
    mat = type(mats[0])(varying=varying)
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=mat)
