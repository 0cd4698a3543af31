"""The float64 reference itself, against hand-computed first steps."""

import numpy as np

from tests.ops.cases import Case, make_inputs
from tests.ops.reference import delta_rule_reference


def test_reference_first_two_steps_by_hand():
    inputs, _ = make_inputs(Case(T=2, gate=True, initial_state=True))
    q, k, v, beta, g, S0 = (inputs[n] for n in ("q", "k", "v", "beta", "gate", "initial_state"))
    o, final_state = delta_rule_reference(**inputs, scale=0.5)
    b, h = 1, 0
    S = S0[b, h]
    for t in range(2):
        S = np.exp(g[b, t, h]) * S
        S = S + beta[b, t, h] * np.outer(k[b, t, h], v[b, t, h] - S.T @ k[b, t, h])
        np.testing.assert_allclose(o[b, t, h], S.T @ (0.5 * q[b, t, h]), rtol=1e-12)
    np.testing.assert_allclose(final_state[b, h], S, rtol=1e-12)


def test_reference_resets_state_at_segment_start():
    inputs, _ = make_inputs(Case(T=4, initial_state=True))
    segment_ids = np.array([[0, 0, 1, 1]] * 2)
    o, _ = delta_rule_reference(**inputs, segment_ids=segment_ids)
    tail = {n: x[:, 2:] for n, x in inputs.items() if n != "initial_state"}
    o_tail, _ = delta_rule_reference(**tail)
    np.testing.assert_allclose(o[:, 2:], o_tail, rtol=1e-12)
