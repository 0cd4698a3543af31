"""DeltaProduct (Siems et al. 2025): n_h delta-rule (generalised Householder) steps per token, so
the state transition of a token is a product of n_h Householder-like matrices."""

from deltajax.layers.delta_mixer import DeltaRuleMixer


class DeltaProduct(DeltaRuleMixer):
    """num_householder (n_h) key/value/beta triples per token; n_h = 1 is DeltaNet."""

    num_householder: int = 2
