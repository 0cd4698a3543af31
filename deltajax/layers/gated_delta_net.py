"""Gated DeltaNet (Yang et al. 2025): the delta rule with a Mamba-style decay per head,
S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,
g_t = -exp(A_log) softplus(a(x_t) + dt_bias)."""

from deltajax.layers.delta_mixer import DeltaRuleMixer


class GatedDeltaNet(DeltaRuleMixer):
    """DeltaNet with the forget gate and, as published, the SiLU output gate."""

    use_forget_gate: bool = True
    use_output_gate: bool = True
