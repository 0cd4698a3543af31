"""DeltaNet (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule over
Sequence Length"): S_t = (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T."""

from deltajax.layers.delta_mixer import DeltaRuleMixer


class DeltaNet(DeltaRuleMixer):
    """Bias-free q/k/v projections, short convolutions with SiLU, L2-normalised q and k,
    beta = sigmoid(linear(x)) per head (x2 with allow_neg_eigval), per-head RMSNorm of the
    output (gated by silu(linear(x)) with use_output_gate), output projection."""
