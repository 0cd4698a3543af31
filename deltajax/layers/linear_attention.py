"""Plain linear attention, the delta rule's ablation: S_t = S_{t-1} + k_t v_t^T, o_t = S_t^T q_t,
with DeltaNet's projections, short convolutions, L2-normalised q and k and output norm, so the
update rule is the only difference."""

from typing import ClassVar

from deltajax.layers.delta_mixer import DeltaRuleMixer


class LinearAttention(DeltaRuleMixer):
    update_rule: ClassVar[str] = "linear"
