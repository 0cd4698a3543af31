"""Scan vs Pallas: errors and timings of every delta_rule backend of the platform, one config.

    python experiments/compare_paths.py                    # on GPU: the H100 preset, else smoke
    python experiments/compare_paths.py --preset=h100      # B=8 T=4096 H=16 K=V=128 bf16 + sweep
    python experiments/compare_paths.py --preset=smoke     # tiny, CPU (Pallas in interpret mode)

For the config it prints the max and relative error of o, the final state and every gradient
of each backend against the reference path ("recurrent" where its scan residuals fit in memory,
else "chunked"), and times forward and forward+backward (medians after a warm-up). On GPU it
also times softmax attention (jax.nn.dot_product_attention, cuDNN flash where available) and,
if PyTorch and flash-linear-attention import, FLA's chunk_delta_rule at the same shapes. The
sweep keeps B*T fixed. Results go to benchmarks/results/<device>-paths.md.

The Pallas kernels' tiles are a pallas_kernels BlockSizes: the target's default, or the one the
flags --block_v (0 = all of V), --num_warps, --num_warps_parallel and --num_stages make from it,
so a tuning run is one command per choice:

    python experiments/compare_paths.py --preset=h100 --block_v=32 --num_warps=8 --out=...
"""

import dataclasses
import functools
import os
import re
import statistics
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from deltajax import study
from deltajax.ops import delta_rule
from pallas_kernels.block_sizes import BlockSizes

PRESETS = {
    "smoke": dict(batch=1, seq_len=128, heads=2, head_dim=32, dtype="float32", chunk_size=32,
                  sweep=(), tokens=0, repeats=1, backends=("recurrent", "chunked", "pallas")),
    "h100": dict(batch=8, seq_len=4096, heads=16, head_dim=128, dtype="bfloat16", chunk_size=64,
                 sweep=(1024, 2048, 4096, 8192, 16384), tokens=32768, repeats=10,
                 backends=("chunked", "pallas")),
}

flags.DEFINE_enum("preset", None, list(PRESETS), "Config; default h100 on GPU, else smoke:\n"
                  + "\n".join(f"{name}: B={p['batch']} T={p['seq_len']} H={p['heads']} "
                               f"K=V={p['head_dim']} {p['dtype']}; backends "
                               f"{', '.join(p['backends'])}"
                               + (f"; sweep T={', '.join(map(str, p['sweep']))}" if p['sweep']
                                  else "") for name, p in PRESETS.items()))
flags.DEFINE_list("backends", None, "delta_rule backends to compare (default: the preset's).")
flags.DEFINE_bool("gate", False, "Gated DeltaNet (a random log-decay gate).")
flags.DEFINE_integer("repeats", None, "Timed calls per measurement.")
flags.DEFINE_bool("others", True, "On GPU, also time softmax attention and FLA.")
flags.DEFINE_string("out", None, "Output Markdown (default benchmarks/results/<device>-paths.md).")
flags.DEFINE_integer("block_v", None, "Pallas BlockSizes.block_v (0 = all of V).")
flags.DEFINE_integer("num_warps", None, "Pallas BlockSizes.num_warps (GPU).")
flags.DEFINE_integer("num_warps_parallel", None, "Pallas BlockSizes.num_warps_parallel (GPU).")
flags.DEFINE_integer("num_stages", None, "Pallas BlockSizes.num_stages (GPU).")

_REF_BYTES_LIMIT = 4 * 2**30   # the scan's gradient keeps T states: use it only when they fit


@dataclasses.dataclass(frozen=True)
class Config:
    batch: int
    seq_len: int
    heads: int
    head_dim: int
    dtype: str
    chunk_size: int
    gate: bool = False

    def shape(self) -> str:
        return (f"B={self.batch} T={self.seq_len} H={self.heads} K=V={self.head_dim} "
                f"{self.dtype}{' gate' if self.gate else ''}")


def make_inputs(cfg: Config, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    B, T, H, D = cfg.batch, cfg.seq_len, cfg.heads, cfg.head_dim
    k = rng.normal(size=(B, T, H, D))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    arrays = dict(q=rng.normal(size=(B, T, H, D)), k=k, v=rng.normal(size=(B, T, H, D)))
    arrays = {name: jnp.asarray(x, cfg.dtype) for name, x in arrays.items()}
    arrays["beta"] = jnp.asarray(rng.uniform(0, 1, size=(B, T, H)), jnp.float32)
    if cfg.gate:
        arrays["gate"] = jnp.asarray(np.log(rng.uniform(0.9, 1.0, size=(B, T, H))), jnp.float32)
    return arrays


def _functions(backend, cfg: Config, block_sizes: Optional[BlockSizes] = None):
    tiles = dict(block_sizes=block_sizes) if backend == "pallas" and block_sizes else {}

    def forward(arrays):
        return delta_rule(**arrays, return_final_state=True, backend=backend,
                          chunk_size=cfg.chunk_size, **tiles)

    def loss(arrays):
        o, final_state = forward(arrays)
        return jnp.sum(o.astype(jnp.float32) ** 2) + jnp.sum(final_state)

    return jax.jit(forward), jax.jit(jax.value_and_grad(loss))


def median_ms(fn, *args, repeats):
    return 1e3 * study.median_seconds(fn, *args, repeats=repeats)


def chunked_flops(cfg: Config) -> tuple[float, float]:
    """Matmul FLOPs of the chunked algorithm: (forward, forward+backward).

    Per chunk of C tokens and head: K K^T, Q K^T, W = T X (2 C^2 K each), U = T Y and (D*QK) u
    (2 C^2 V each), W S, Q S, K^T u (2 C K V each), the triangular solve (C^3 / 3). The backward
    is counted as twice the forward, the usual convention (it recomputes W, U and does ~2x the
    forward's products).
    """
    C, K, V = cfg.chunk_size, cfg.head_dim, cfg.head_dim
    chunks = cfg.batch * cfg.heads * -(-cfg.seq_len // C)
    forward = chunks * (6 * C * C * K + 4 * C * C * V + 6 * C * K * V + C ** 3 / 3)
    return forward, 3 * forward


def chunked_bytes(cfg: Config) -> float:
    """HBM bytes of the forward: read q, k, v, beta, write o and the per-chunk states."""
    B, T, H, D = cfg.batch, cfg.seq_len, cfg.heads, cfg.head_dim
    itemsize = jnp.dtype(cfg.dtype).itemsize
    return B * T * H * (4 * D * itemsize + 4) + B * H * -(-T // cfg.chunk_size) * D * D * 4


def matmul_tflops(dtype, n=8192, repeats=10) -> float:
    """The card's measured dense matmul rate (for the achieved/peak ratio)."""
    a = jnp.ones((n, n), dtype)
    ms = median_ms(jax.jit(lambda a: a @ a), a, repeats=repeats)
    return 2 * n ** 3 / (ms * 1e-3) / 1e12


def errors(result, reference) -> dict:
    """Max abs and relative (Frobenius) error of o, the final state and every gradient."""
    (o, final_state), (_, grads) = result
    (o_ref, final_ref), (_, grads_ref) = reference
    pairs = {"o": (o, o_ref), "final_state": (final_state, final_ref)}
    pairs.update({f"d{name}": (g, grads_ref[name]) for name, g in grads.items()})
    out = {}
    for name, (x, y) in pairs.items():
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        out[name] = (float(np.max(np.abs(x - y))),
                     float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30)))
    return out


def reference_backend(cfg: Config) -> str:
    states = cfg.batch * cfg.seq_len * cfg.heads * cfg.head_dim ** 2 * 4
    return "recurrent" if states < _REF_BYTES_LIMIT else "chunked"


def time_attention(cfg: Config, repeats) -> Optional[tuple[float, float]]:
    """(forward ms, fwd+bwd ms) of causal softmax attention, cuDNN flash if it is there."""
    B, T, H, D = cfg.batch, cfg.seq_len, cfg.heads, cfg.head_dim
    q = jnp.ones((B, T, H, D), cfg.dtype)
    for implementation in ("cudnn", None):
        try:
            fwd = jax.jit(functools.partial(jax.nn.dot_product_attention, is_causal=True,
                                            implementation=implementation))
            train = jax.jit(jax.grad(
                lambda q, k, v, fwd=fwd: jnp.sum(fwd(q, k, v).astype(jnp.float32)),
                argnums=(0, 1, 2)))
            return (median_ms(fwd, q, q, q, repeats=repeats),
                    median_ms(train, q, q, q, repeats=repeats))
        except Exception as error:  # cuDNN missing or shape unsupported: the XLA kernel then
            print(f"dot_product_attention implementation={implementation}: {error}")
    return None


def time_fla(cfg: Config, repeats) -> tuple[Optional[tuple[float, float]], str]:
    """FLA's Triton chunk_(gated_)delta_rule at the same shapes, if torch and fla import."""
    try:
        import torch
        from fla.ops.delta_rule import chunk_delta_rule
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as error:
        return None, f"not installed ({type(error).__name__})"
    B, T, H, D = cfg.batch, cfg.seq_len, cfg.heads, cfg.head_dim
    dtype = dict(bfloat16=torch.bfloat16, float32=torch.float32)[cfg.dtype]
    make = lambda *shape: torch.randn(*shape, device="cuda", dtype=dtype, requires_grad=True)
    q, v = make(B, T, H, D), make(B, T, H, D)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, D, device="cuda"), dim=-1)
    k = k.to(dtype).requires_grad_()
    beta = torch.rand(B, T, H, device="cuda", dtype=dtype).requires_grad_()
    g = torch.log(torch.rand(B, T, H, device="cuda") * 0.1 + 0.9).requires_grad_()

    def forward():
        if cfg.gate:
            return chunk_gated_delta_rule(q, k, v, g, beta)[0]
        return chunk_delta_rule(q, k, v, beta)[0]

    def train():
        forward().float().square().sum().backward()

    def ms(fn):
        fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(repeats):
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)

    try:
        with torch.no_grad():
            forward_ms = ms(forward)
        return (forward_ms, ms(train)), "ok"
    except Exception as error:
        return None, f"failed ({type(error).__name__}: {error})"


def time_decode(cfg: Config, repeats, block_sizes=None) -> tuple[float, float]:
    """(XLA recurrent step ms, fused Pallas step ms) for one token with a [B, H, K, V] state."""
    from pallas_kernels.recurrent_step import recurrent_step_donated
    B, H, D = cfg.batch, cfg.heads, cfg.head_dim
    x = jnp.ones((B, 1, H, D), cfg.dtype)
    beta = jnp.full((B, 1, H), 0.5, jnp.float32)
    state = jnp.zeros((B, H, D, D), jnp.float32)
    xla = jax.jit(lambda x, state: delta_rule(x, x, x, beta, initial_state=state,
                                              return_final_state=True, backend="recurrent"))
    xla_ms = median_ms(xla, x, state, repeats=repeats)
    target = "tpu" if jax.default_backend() == "tpu" else "gpu"
    flat_x, flat_b = jnp.ones((B * H, D), cfg.dtype), jnp.full((B * H,), 0.5, jnp.float32)
    fused = lambda S: recurrent_step_donated(flat_x, flat_x, flat_x, flat_b, flat_b, S,
                                             target=target,
                                             interpret=jax.default_backend() == "cpu",
                                             block_sizes=block_sizes)
    S = jnp.zeros((B * H, D, D), jnp.float32)
    _, S = fused(S)   # compile; the state is donated, so each call feeds the next
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, S = fused(S)
        jax.block_until_ready(S)
        times.append(time.perf_counter() - start)
    return xla_ms, 1e3 * statistics.median(times)


def compare(cfg: Config, backends, *, repeats, others,
            block_sizes: Optional[BlockSizes] = None) -> dict:
    """Errors against the reference path and timings of every backend for one config.

    block_sizes: the Pallas kernels' tiles; None = the target's default.
    """
    arrays = make_inputs(cfg)
    ref_name = reference_backend(cfg)
    results, timings = {}, {}
    for backend in dict.fromkeys([ref_name] + list(backends)):
        forward, train = _functions(backend, cfg, block_sizes)
        results[backend] = (forward(arrays), train(arrays))
        if backend in backends:
            timings[backend] = (median_ms(forward, arrays, repeats=repeats),
                                median_ms(train, arrays, repeats=repeats))
        print(f"{cfg.shape()} {backend:10s} fwd {timings.get(backend, (0, 0))[0]:9.2f} ms  "
              f"fwd+bwd {timings.get(backend, (0, 0))[1]:9.2f} ms", flush=True)
    errs = {b: errors(results[b], results[ref_name]) for b in backends if b != ref_name}
    extra = {}
    if "pallas" in backends:
        extra["decode step: XLA recurrent / fused Pallas ms"] = time_decode(cfg, repeats,
                                                                            block_sizes)
    if others and jax.default_backend() == "gpu":
        extra["softmax attention"] = time_attention(cfg, repeats)
        extra["FLA chunk_delta_rule"], extra["FLA status"] = time_fla(cfg, repeats)
    return dict(config=cfg, reference=ref_name, errors=errs, timings=timings, extra=extra,
                block_sizes=block_sizes)


def to_markdown(report: dict, sweep: list, *, header: str, peak_tflops: Optional[float]) -> str:
    cfg = report["config"]
    tiles = report.get("block_sizes") or "the target's default BlockSizes"
    lines = [header, "", f"## {cfg.shape()}, chunk_size={cfg.chunk_size}", "",
             f"Pallas tiles: {tiles}", "",
             f"Errors against `{report['reference']}` (max abs / relative):", "",
             "| backend | array | max abs | relative |", "|---|---|---:|---:|"]
    for backend, errs in report["errors"].items():
        lines += [f"| {backend} | {name} | {m:.2e} | {r:.2e} |" for name, (m, r) in errs.items()]
    lines += ["", "| path | forward ms | fwd+bwd ms | fwd+bwd TFLOP/s |", "|---|---:|---:|---:|"]
    _, train_flops = chunked_flops(cfg)
    for backend, (f_ms, t_ms) in report["timings"].items():
        tflops = train_flops / (t_ms * 1e-3) / 1e12
        of_peak = f" ({100 * tflops / peak_tflops:.0f}% of matmul)" if peak_tflops else ""
        lines.append(f"| delta_rule {backend} | {f_ms:.2f} | {t_ms:.2f} | {tflops:.1f}{of_peak} |")
    for name, value in report["extra"].items():
        if name.startswith("decode"):
            lines.append(f"| {name} (one token, B*H states) | "
                         f"{value[0]:.3f} / {value[1]:.3f} | | |")
            continue
        if name == "FLA status":
            continue
        if value is None:
            status = report["extra"].get("FLA status", "unavailable") if "FLA" in name else "n/a"
            lines.append(f"| {name} | {status} | | |")
        else:
            lines.append(f"| {name} | {value[0]:.2f} | {value[1]:.2f} | |")
    timings = report["timings"]
    if "pallas" in timings and "chunked" in timings:
        lines += ["", f"Pallas fwd+bwd speed-up over XLA chunked: "
                      f"{timings['chunked'][1] / timings['pallas'][1]:.1f}x"]
    fla = report["extra"].get("FLA chunk_delta_rule")
    if "pallas" in timings and fla:
        lines.append(f"Pallas / FLA fwd+bwd time: {timings['pallas'][1] / fla[1]:.2f}")
    if peak_tflops:
        lines.append(f"Measured dense {cfg.dtype} matmul rate: {peak_tflops:.0f} TFLOP/s; "
                     f"forward HBM bytes (model): {chunked_bytes(cfg) / 2**20:.0f} MiB.")
    if sweep:
        lines += ["", "## Sweep at a fixed number of tokens per batch", "",
                  "| B | T | backend | forward ms | fwd+bwd ms | fwd+bwd TFLOP/s |",
                  "|---:|---:|---|---:|---:|---:|"]
        for rep in sweep:
            c = rep["config"]
            flops = chunked_flops(c)[1]
            for backend, (f_ms, t_ms) in rep["timings"].items():
                lines.append(f"| {c.batch} | {c.seq_len} | {backend} | {f_ms:.2f} | {t_ms:.2f} | "
                             f"{flops / (t_ms * 1e-3) / 1e12:.1f} |")
            fla = rep["extra"].get("FLA chunk_delta_rule")
            if fla:
                lines.append(f"| {c.batch} | {c.seq_len} | FLA | {fla[0]:.2f} | {fla[1]:.2f} | "
                             f"{flops / (fla[1] * 1e-3) / 1e12:.1f} |")
    return "\n".join(lines) + "\n"


def device_name() -> str:
    if jax.default_backend() == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", jax.devices()[0].device_kind.lower()).strip("-")


def block_sizes_from_flags(FLAGS, platform: str) -> Optional[BlockSizes]:
    """The target's default BlockSizes with the fields the flags set; None when none is set."""
    given = {name: getattr(FLAGS, name) for name in
             ("block_v", "num_warps", "num_warps_parallel", "num_stages")
             if getattr(FLAGS, name) is not None}
    if not given:
        return None
    if given.get("block_v") == 0:
        given["block_v"] = None
    target = "tpu" if platform == "tpu" else "gpu"
    return dataclasses.replace(BlockSizes.for_target(target), **given)


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    platform = jax.default_backend()
    block_sizes = block_sizes_from_flags(FLAGS, platform)
    preset = PRESETS[FLAGS.preset or ("h100" if platform == "gpu" else "smoke")]
    backends = FLAGS.backends or list(preset["backends"])
    repeats = FLAGS.repeats or preset["repeats"]
    cfg = Config(preset["batch"], preset["seq_len"], preset["heads"], preset["head_dim"],
                 preset["dtype"], preset["chunk_size"], FLAGS.gate)
    report = compare(cfg, backends, repeats=repeats, others=FLAGS.others,
                     block_sizes=block_sizes)
    sweep = [compare(dataclasses.replace(cfg, batch=max(1, preset["tokens"] // T), seq_len=T),
                     [b for b in backends if b != "recurrent"], repeats=repeats,
                     others=FLAGS.others, block_sizes=block_sizes)
             for T in preset["sweep"]]
    peak = matmul_tflops(cfg.dtype) if platform != "cpu" else None

    target = "" if platform in ("gpu", "tpu") else " (Pallas in interpret mode on CPU)"
    device = jax.devices()[0].device_kind if platform != "cpu" else f"{os.cpu_count()}-core CPU"
    header = (f"# Scan vs Pallas paths on {device}{target}\n\n"
              f"{study.measured_on()} Medians of {repeats} calls after a warm-up.\n\n"
              f"Command: `{study.command_line('experiments.compare_paths')}`")
    table = to_markdown(report, sweep, header=header, peak_tflops=peak)
    # The committed tables are the repository's, whichever directory the script starts in.
    out = FLAGS.out or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "benchmarks", "results", f"{device_name()}-paths.md")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write(table)
    print("\n" + table + f"\nWritten to {out}")


if __name__ == "__main__":
    app.run(main)
