"""The chunked backend on odd shapes drawn by hypothesis: tiny heads, K != V, chunk 1, T > C."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from deltajax.ops import delta_rule
from tests.numerics import relative_error
from tests.ops.reference import delta_rule_reference

shapes = st.tuples(
    st.integers(1, 2),            # B
    st.integers(1, 70),           # T
    st.integers(1, 3),            # H
    st.integers(1, 9),            # K
    st.integers(1, 9),            # V
    st.sampled_from([1, 2, 8, 32]),  # chunk_size
)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(shapes)
def test_chunked_matches_reference_on_any_shape(shape):
    B, T, H, K, V, chunk_size = shape
    rng = np.random.default_rng(T * 100 + K * 10 + V)
    k = rng.normal(size=(B, T, H, K))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    arrays = dict(q=rng.normal(size=(B, T, H, K)), k=k, v=rng.normal(size=(B, T, H, V)),
                  beta=rng.uniform(0, 2, (B, T, H)), gate=np.log(rng.uniform(0.7, 1, (B, T, H))),
                  initial_state=rng.normal(size=(B, H, K, V)))
    segment_ids = np.sort(rng.integers(0, 3, (B, T)), axis=1).astype(np.int32)
    arrays = {name: np.asarray(x, np.float32).astype(np.float64) for name, x in arrays.items()}
    o_ref, final_ref = delta_rule_reference(**arrays, segment_ids=segment_ids)
    o, final_state = jax.jit(lambda a, s: delta_rule(**a, segment_ids=s, return_final_state=True,
                                                     backend="chunked", chunk_size=chunk_size))(
        {name: jnp.asarray(x, jnp.float32) for name, x in arrays.items()}, segment_ids)
    assert relative_error(o, o_ref) < 1e-5
    assert relative_error(final_state, final_ref) < 1e-5
