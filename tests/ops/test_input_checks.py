"""Values out of the op's domain: a ValueError naming the argument when concrete; under jit, grad
and vmap, NaN outputs and NaN (not zero) gradients. Shape errors point at the layout."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.ops import cached_attention, delta_rule

B, T, H, K, V = 1, 4, 2, 4, 3
GOOD_BETA = jnp.full((B, T, H), 0.5)
GOOD_GATE = jnp.full((B, T, H), -0.1)


def arrays():
    rng = np.random.default_rng(0)
    q, k = (jnp.asarray(rng.normal(size=(B, T, H, K)), jnp.float32) for _ in range(2))
    return q, k, jnp.asarray(rng.normal(size=(B, T, H, V)), jnp.float32)


def set_one(x, value):
    """x with one entry set to value: a single bad token must be enough."""
    return x.at[0, T - 1, 1].set(value)


BAD_VALUES = {
    "beta 3": (dict(beta=set_one(GOOD_BETA, 3.0)), r"beta must be finite and in \[0, 2\].*got 3"),
    "beta < 0": (dict(beta=set_one(GOOD_BETA, -0.5)), r"beta must be finite and in \[0, 2\]"),
    "beta nan": (dict(beta=set_one(GOOD_BETA, jnp.nan)), r"beta must be finite.*got nan"),
    "beta inf": (dict(beta=set_one(GOOD_BETA, jnp.inf)), r"beta must be finite.*got inf"),
    "gate > 0": (dict(gate=set_one(GOOD_GATE, 0.1)), r"gate must be a finite log-decay <= 0"),
    "gate -inf": (dict(gate=set_one(GOOD_GATE, -jnp.inf)), r"gate must be a finite .*got -inf"),
    "gate nan": (dict(gate=set_one(GOOD_GATE, jnp.nan)), r"gate must be a finite .*got nan"),
}


def call(beta=GOOD_BETA, gate=GOOD_GATE, backend="recurrent"):
    q, k, v = arrays()
    return delta_rule(q, k, v, beta, gate=gate, backend=backend, return_final_state=True)


@pytest.mark.parametrize("name", BAD_VALUES)
def test_concrete_out_of_domain_values_raise_naming_the_argument(name):
    values, message = BAD_VALUES[name]
    with pytest.raises(ValueError, match=message):
        call(**values)


@functools.cache
def jitted(backend):
    return jax.jit(functools.partial(call, backend=backend))


@pytest.mark.parametrize("name", BAD_VALUES)
def test_traced_out_of_domain_values_make_o_and_the_state_nan(name):
    o, state = jitted("recurrent")(**BAD_VALUES[name][0])
    assert np.all(np.isnan(o)) and np.all(np.isnan(state))


def test_traced_valid_values_stay_finite():
    o, state = jitted("recurrent")()
    assert np.all(np.isfinite(o)) and np.all(np.isfinite(state))


@functools.cache
def gradients(backend):
    """Gradients of a loss linear in o (so no NaN reaches them through the loss itself)."""
    def loss(q, k, v, beta, gate):
        o, _ = delta_rule(q, k, v, beta, gate=gate, backend=backend)
        return jnp.sum(o)
    return jax.jit(jax.grad(loss, argnums=range(5)))


@pytest.mark.parametrize("backend", ["recurrent", "chunked"])
@pytest.mark.parametrize("bad", ["gate > 0", "beta 3"])
def test_out_of_domain_values_under_grad_give_nan_gradients_not_zeros(backend, bad):
    good = dict(beta=GOOD_BETA, gate=GOOD_GATE)
    grads = gradients(backend)(*arrays(), *good.values())
    assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in grads)
    grads = gradients(backend)(*arrays(), *{**good, **BAD_VALUES[bad][0]}.values())
    for name, g in zip(("q", "k", "v", "beta", "gate"), grads, strict=True):
        assert np.all(np.isnan(g)), f"d/d{name} is not all NaN"


def test_under_vmap_only_the_bad_example_is_nan():
    q, k, v = arrays()
    op = jax.vmap(lambda q, k, v, beta: delta_rule(q[None], k[None], v[None], beta[None],
                                                   backend="recurrent")[0][0])
    beta = jnp.stack([GOOD_BETA[0], set_one(GOOD_BETA, 3.0)[0]])
    o = op(*(jnp.concatenate([x, x]) for x in (q, k, v)), beta)
    assert np.all(np.isfinite(o[0])) and np.all(np.isnan(o[1]))


@pytest.mark.parametrize("shapes", [
    dict(q=(B, T, H)),             # rank 3
    dict(v=(B, H, T, V)),          # v head-first, q and k not
])
def test_shape_errors_name_the_layout_and_the_old_fla_one(shapes):
    q, k, v = arrays()
    given = dict(q=q, k=k, v=v)
    given.update({name: jnp.zeros(shape) for name, shape in shapes.items()})
    with pytest.raises(ValueError, match=r"\[batch, time, heads, head_dim\].*older FLA.*"
                                         r"\[batch, heads, time, head_dim\].*swapaxes\(1, 2\)"):
        delta_rule(given["q"], given["k"], given["v"], GOOD_BETA)


S = 6


def cache_call(start):
    q_1THD = jnp.ones((1, 2, 1, 2))
    cache = jnp.ones((1, S, 1, 2))
    return cached_attention(q_1THD, cache, cache, start=start)


def test_cached_attention_past_the_cache_raises_naming_start():
    assert np.all(np.isfinite(cache_call(jnp.int32(S - 2))))
    with pytest.raises(ValueError, match=r"start=5: .*5...6 do not fit a KV cache of 6 .*"
                                         r"max_len of at least 7"):
        cache_call(jnp.int32(S - 1))
    with pytest.raises(ValueError, match=r"start=-1"):
        cache_call(-1)


def test_cached_attention_past_the_cache_under_jit_is_nan():
    op = jax.jit(cache_call)
    assert np.all(np.isfinite(op(jnp.int32(S - 2))))
    assert np.all(np.isnan(op(jnp.int32(S - 1))))
