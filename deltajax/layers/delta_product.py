"""DeltaProduct (Siems et al. 2025): n_h delta-rule (generalised Householder) steps per token, so
the state transition of a token is a product of n_h Householder-like matrices."""

from deltajax.layers.delta_mixer import DeltaRuleMixer


class DeltaProduct(DeltaRuleMixer):
    """num_householder (n_h) key/value/beta triples per token; n_h = 1 is DeltaNet.

    use_forget_gate=True is Gated DeltaProduct (FLA's GatedDeltaProduct): one decay per token and
    head, g = -exp(A_log) softplus(a_proj(x) + dt_bias), applied before the token's first step."""

    num_householder: int = 2
