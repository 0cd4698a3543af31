"""Writes tests/models/fixtures/fla_<type>/: tiny FLA models (config.json, model.safetensors) and
the logits FLA itself computes for them (expected.npz: tokens, logits), for
tests/models/test_from_fla.py. deltajax is not imported: the logits are FLA's own.

Run once, in a venv of its own outside the repository (torch's CPU wheel, FLA 0.6.0):

    python3 -m venv /work/flavenv
    /work/flavenv/bin/pip install torch==2.13.0
    /work/flavenv/bin/pip install --no-deps flash-linear-attention==0.6.0 fla-core==0.6.0
    /work/flavenv/bin/pip install einops transformers safetensors numpy triton
    /work/flavenv/bin/python experiments/make_fla_fixtures.py

(That gave torch 2.13.0+cpu, flash-linear-attention and fla-core 0.6.0, transformers 5.23.0,
einops 0.8.2, safetensors 0.8.0, numpy 2.4.6, triton 3.9.0 on Python 3.11; triton is only
imported by FLA, nothing here runs a Triton kernel.) The output is the same bytes on every run.

FLA's layers call Triton kernels, which do not run on a CPU, so main() swaps each of them, where
the layers look them up, for FLA's own plain-torch reference or the few lines of torch that the
kernel computes:
- the delta rules: fla/ops/delta_rule/naive.py delta_rule_recurrence (DeltaNet),
  fla/ops/gated_delta_rule/naive.py naive_recurrent_gated_delta_rule with gate.py's
  naive_gdn_gate (Gated DeltaNet), fla/ops/gated_delta_product/naive.py
  naive_recurrent_gated_delta_product (Gated DeltaProduct); the L2 norm of q and k and the
  sigmoid of beta that the kernels apply inside (use_qk_l2norm_in_kernel, ...) are done first;
- the short convolutions' causal_conv1d: torch's depthwise conv1d (ShortConvolution is an
  nn.Conv1d) with its activation;
- RMSNorm's rms_norm: fla/modules/norm/layernorm.py rms_norm_ref (upcast to float32), and the
  gated output norm: rms_norm_ref times the gate's activation, as its Triton kernel computes;
- the MLP's swiglu: silu(gate) * up (the configs set fuse_swiglu=False: swiglu, then down_proj).
Weights are redrawn at O(1) scale (FLA's N(0, 0.02) would make every logit nearly 0), norms
and A_log / dt_bias too, so that a transposed or misplaced tensor changes the logits.
"""

import os
import sys

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "models", "fixtures")
SEED, BATCH, SEQ = 0, 2, 20
COMMON = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=32,
              norm_eps=1e-6, fuse_swiglu=False, fuse_cross_entropy=False)
FIXTURES = {
    # FLA's defaults but the size: 2 heads of 16, no output gate; tied embeddings.
    "delta_net": ("DeltaNetConfig", "DeltaNetForCausalLM",
                  dict(num_heads=2, tie_word_embeddings=True)),
    # Not FLA's head shape defaults: head_dim 8, expand_v 1.5, 4 value heads over 2 q/k heads.
    "gated_deltanet": ("GatedDeltaNetConfig", "GatedDeltaNetForCausalLM",
                       dict(num_heads=2, head_dim=8, expand_v=1.5, num_v_heads=4)),
    # Gated DeltaProduct: 2 Householder steps, forget gate, beta in [0, 2].
    "gated_deltaproduct": ("GatedDeltaProductConfig", "GatedDeltaProductForCausalLM",
                           dict(num_heads=4, head_dim=8, expand_v=1, num_householder=2,
                                use_forget_gate=True, allow_neg_eigval=True)),
}

_NORMS = {"causal_conv1d", "rms_norm", "swiglu"}  # every model: convs, norms, MLP
SWAPS = {"delta_net": _NORMS | {"delta_rule"},
         "gated_deltanet": _NORMS | {"gated_delta_rule", "rms_norm_gated"},
         "gated_deltaproduct": _NORMS | {"gated_delta_product", "rms_norm_gated"}}


def _swap_triton_for_torch():
    """FLA's Triton calls -> FLA's naive references (see the module docstring)."""
    import fla.layers.delta_net as delta_net
    import fla.layers.gated_deltanet as gated_deltanet
    import fla.layers.gated_deltaproduct as gated_deltaproduct
    import fla.modules.causal_conv1d.ops as conv_ops
    import fla.modules.mlp as mlp
    import fla.modules.norm.fused_norm_gate as norm_gate
    import fla.modules.norm.layernorm as layernorm
    import torch
    import torch.nn.functional as F
    from einops import repeat
    from fla.ops.delta_rule.naive import delta_rule_recurrence
    from fla.ops.gated_delta_product.naive import naive_recurrent_gated_delta_product
    from fla.ops.gated_delta_rule.gate import naive_gdn_gate
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    def l2(x):  # the kernels' use_qk_l2norm_in_kernel: x / sqrt(sum(x^2) + 1e-6)
        x = x.float()
        return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)

    def causal_conv1d(x, weight, bias=None, activation=None, initial_state=None,
                      output_final_state=False, cu_seqlens=None, residual=None, **_):
        assert initial_state is None and cu_seqlens is None and residual is None
        T = x.shape[1]
        y = F.conv1d(x.transpose(1, 2), weight[:, None], bias, padding=weight.shape[-1] - 1,
                     groups=weight.shape[0])[..., :T].transpose(1, 2)
        return (F.silu(y) if activation in ("silu", "swish") else y), None

    def rms_norm(x, weight, bias, residual=None, eps=1e-5, prenorm=False,
                 residual_in_fp32=False):
        return layernorm.rms_norm_ref(x, weight, bias, residual, eps, prenorm, upcast=True)

    def rms_norm_gated(x, g, weight, bias, activation="swish", residual=None, prenorm=False,
                       residual_in_fp32=False, eps=1e-6):
        assert residual is None and not prenorm
        y = layernorm.rms_norm_ref(x, weight, bias, eps=eps, upcast=True)
        g = g.float()
        return (y * (g * torch.sigmoid(g) if activation in ("swish", "silu")
                     else torch.sigmoid(g))).to(x.dtype)

    def delta_rule(q, k, v, beta, initial_state=None, output_final_state=False,
                   cu_seqlens=None, use_qk_l2norm_in_kernel=False, **_):
        assert initial_state is None and cu_seqlens is None and use_qk_l2norm_in_kernel
        # delta_rule_recurrence takes [B, H, T, D].
        t = lambda x: x.transpose(1, 2).contiguous()
        o, _ = delta_rule_recurrence(t(l2(q)), t(l2(k)), t(v), t(beta))
        return t(o), None

    def gated_delta_rule(q, k, v, g, beta, initial_state=None, output_final_state=False,
                         use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=False,
                         allow_neg_eigval=False, use_gate_in_kernel=False, A_log=None,
                         dt_bias=None, cu_seqlens=None, **_):
        assert initial_state is None and cu_seqlens is None and use_qk_l2norm_in_kernel
        if use_beta_sigmoid_in_kernel:
            beta = beta.sigmoid() * (2 if allow_neg_eigval else 1)
        if use_gate_in_kernel:
            g = naive_gdn_gate(g, A_log, dt_bias)
        if g is None:
            g = torch.zeros_like(beta)
        groups = v.shape[2] // q.shape[2]  # grouped value heads: q/k head i // groups
        q, k = (repeat(x, "b t h d -> b t (h g) d", g=groups) for x in (l2(q), l2(k)))
        return naive_recurrent_gated_delta_rule(q, k, v, beta, g)

    def gated_delta_product(q, k, v, g, beta, num_householder, scale=None, initial_state=None,
                            output_final_state=False, use_qk_l2norm_in_kernel=False,
                            cu_seqlens=None, **_):
        assert initial_state is None and cu_seqlens is None and use_qk_l2norm_in_kernel
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        return naive_recurrent_gated_delta_product(l2(q), l2(k), v, g, beta, scale,
                                                   num_householder=num_householder)

    def swiglu(gate, up):
        return F.silu(gate) * up

    calls = set()  # the swaps that ran, checked per model in main()

    def counted(fn):
        def wrapper(*args, **kwargs):
            calls.add(fn.__name__)
            return fn(*args, **kwargs)
        return wrapper

    conv_ops.causal_conv1d = gated_deltanet.causal_conv1d = counted(causal_conv1d)
    layernorm.rms_norm = counted(rms_norm)
    norm_gate.rms_norm_gated = counted(rms_norm_gated)
    mlp.swiglu = counted(swiglu)
    delta_net.chunk_delta_rule = delta_net.fused_recurrent_delta_rule = counted(delta_rule)
    gated_deltanet.chunk_gated_delta_rule = counted(gated_delta_rule)
    gated_deltanet.fused_recurrent_gated_delta_rule = counted(gated_delta_rule)
    gated_deltaproduct.chunk_gated_delta_product = counted(gated_delta_product)
    gated_deltaproduct.fused_recurrent_gated_delta_rule = counted(gated_delta_rule)
    return calls


def _redraw(model, generator):
    """O(1)-scale weights: linears N(0, 1/fan_in), convolutions N(0, 0.5^2), embeddings N(0, 1),
    norms 1 + N(0, 0.2^2), A_log log U(0.5, 4), dt_bias N(0, 1)."""
    import torch
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = torch.randn(p.shape, generator=generator, dtype=torch.float32)
            if name.endswith("A_log"):
                p.copy_(torch.log(0.5 + 3.5 * torch.rand(p.shape, generator=generator)))
            elif name.endswith("dt_bias") or "embeddings" in name:
                p.copy_(n)
            elif "norm" in name:
                p.copy_(1 + 0.2 * n)
            elif "conv1d" in name:
                p.copy_(0.5 * n)
            else:
                p.copy_(n / p.shape[-1] ** 0.5)


def main():
    import fla
    import fla.models
    import torch

    calls = _swap_triton_for_torch()
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    for name, (config_cls, model_cls, options) in FIXTURES.items():
        config = getattr(fla.models, config_cls)(**COMMON, **options)
        model = getattr(fla.models, model_cls)(config).float().eval()
        _redraw(model, generator)
        tokens = torch.randint(0, config.vocab_size, (BATCH, SEQ), generator=generator)
        # Grad enabled: the gated layers then take their chunk path (the product's own naive
        # reference); no_grad would pick fused_recurrent, swapped all the same.
        calls.clear()
        logits = model(input_ids=tokens).logits.detach().float().numpy()
        assert calls == SWAPS[name], (name, calls)  # every Triton call went to its reference
        directory = os.path.join(OUT, f"fla_{name}")
        os.makedirs(directory, exist_ok=True)
        model.save_pretrained(directory, safe_serialization=True)  # config.json as FLA writes it
        if os.path.exists(os.path.join(directory, "generation_config.json")):
            os.remove(os.path.join(directory, "generation_config.json"))
        np.savez_compressed(os.path.join(directory, "expected.npz"),
                            tokens=tokens.numpy().astype(np.int32), logits=logits,
                            fla_version=fla.__version__)
        print(f"{name}: logits {logits.shape}, std {logits.std():.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
