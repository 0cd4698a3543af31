"""The transition analysis of the state-tracking study: the per-token state maps read from a
model match its state updates, and the group checks are zero exactly for representations (a run
trained by the study is read back in test_state_tracking.py, which trains one)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deltajax.data.state_tracking import input_elements, make_group
from deltajax.models import LanguageModel, ModelConfig
from experiments import state_tracking_transitions as transitions


def _model(**fields):
    config = dict(vocab_size=5, d_model=8, num_layers=1, num_heads=2, mixer="delta_product",
                  conv=dict(enabled=False),
                  delta_rule=dict(allow_neg_eigval=True, backend="recurrent"),
                  delta_product=dict(num_householder=2))
    model = LanguageModel(ModelConfig(**{**config, **fields}))
    # jit: the un-jitted init runs the forward op by op (seconds)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))["params"]
    return model, params


def test_transitions_rebuild_the_models_state_update():
    """The state after token t from a random state S is M[t] S + (the state after t from 0)."""
    model, params = _model()
    maps = transitions.token_transitions(model, params, 5)
    state = model.init_cache(1, 1)[0]["state"]
    assert maps.shape == (5, 2) + state.shape[2:3] * 2
    S = jax.random.normal(jax.random.PRNGKey(1), state.shape)

    @jax.jit
    def after(token, S):
        return model.apply({"params": params}, token[None, None], ({"state": S},),
                           method=LanguageModel.extend)[1][0]["state"][0]

    for token in range(5):
        t = jnp.int32(token)
        expected = np.asarray(after(t, S) - after(t, jnp.zeros_like(S)), np.float64)
        rebuilt = np.einsum("hkj,hjv->hkv", maps[token], np.asarray(S[0], np.float64))
        assert np.linalg.norm(rebuilt - expected) <= 1e-5 * np.linalg.norm(expected)
    # Two Householder steps a token: each head's map moves at most two eigenvalues, all in the
    # closed unit disc (beta in [0, 2], unit keys).
    for token, head in itertools.product(range(5), range(2)):
        moved = transitions.moving_eigenvalues(maps[token, head])
        assert len(moved) <= 2 and np.all(np.abs(moved) <= 1 + 1e-5)


@pytest.mark.parametrize("fields, match", [
    (dict(num_layers=2), "num_layers=2"),
    (dict(conv=dict(enabled=True)), "short convolutions"),
])
def test_transitions_refuse_models_whose_state_is_not_one_tokens_map(fields, match):
    model, params = _model(**fields)
    with pytest.raises(ValueError, match=match):
        transitions.token_transitions(model, params, 5)


def _permutation_matrices(group):
    """P_g e_x = e_(g(x)): the running product applies a first, then b, so P_b P_a = P_(a b)."""
    n = len(group.perms[0])
    out = np.zeros((group.order, n, n))
    for g, perm in enumerate(group.perms):
        out[g, list(perm), list(range(n))] = 1
    return out


def test_element_maps_extend_the_inputs_maps_along_words():
    # S5 from swaps (and the identity): the swaps' permutation matrices rebuild every element's.
    s5 = make_group("S5")
    exact = _permutation_matrices(s5)
    swaps = input_elements(s5, 2)
    rebuilt = transitions.element_maps({int(g): exact[g] for g in swaps}, s5.table)
    np.testing.assert_array_equal(rebuilt, exact)
    assert transitions.group_law_error(rebuilt, s5.table) == 0
    # One swap's map a rotation by 0.49 of a turn in its plane, not a reflection: no longer a
    # representation.
    bent = {int(g): exact[g] for g in swaps}
    a = 2 * np.pi * 0.49
    bent[int(swaps[1])] = bent[int(swaps[1])].copy()
    moved = np.nonzero(np.diag(exact[swaps[1]]) == 0)[0]
    bent[int(swaps[1])][np.ix_(moved, moved)] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    assert transitions.group_law_error(transitions.element_maps(bent, s5.table), s5.table) > 0.05
    three_cycles = [int(g) for g in input_elements(s5, 3) if g not in set(swaps.tolist())]
    with pytest.raises(ValueError, match="reach 60 of the group's 120"):  # A5 only
        transitions.element_maps({g: exact[g] for g in [0, *three_cycles]}, s5.table)


def test_group_checks_are_zero_for_a_representation_only():
    s3 = make_group("S3")
    exact = _permutation_matrices(s3)
    assert transitions.group_law_error(exact, s3.table) == 0
    assert transitions.group_law_error(exact.transpose(0, 2, 1), s3.table) > 0.5  # wrong order
    rotations = np.array([[[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
                          for a in 2 * np.pi * np.arange(3) / 3.01])  # not quite a third
    assert 0 < transitions.group_law_error(rotations, make_group("Z3").table) < 0.05
    assert list(transitions.element_orders(make_group("Z6").table)) == [1, 6, 3, 2, 3, 6]
    assert sorted(transitions.element_orders(s3.table)) == [1, 2, 2, 2, 3, 3]
    third = np.exp(2j * np.pi / 3)
    assert transitions.describe(np.array([third, np.conj(third)])) == "1.000 at 0.333"
