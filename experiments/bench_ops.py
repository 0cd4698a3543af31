"""Times backends of delta_rule over a grid of shapes and writes a Markdown table.

    python experiments/bench_ops.py --preset=grid     # K in {64, 128}, gated and not, T 1k-16k
    python experiments/bench_ops.py --preset=full     # K=64, T=256..16384, recurrent and chunked
    python experiments/bench_ops.py --preset=small    # `make bench-ops` (runs/bench_ops/)

Each cell (K = V, gated or not, T) times every backend's forward and forward+backward under
jax.jit, the calls interleaved (study.interleaved_medians: one call of each candidate a round,
the order rotating), medians of --repeats rounds after a compiling call. Achieved GFLOP/s is
the algorithm's matmul FLOPs (the *_flops functions below, not XLA's cost analysis, which
counts a loop body once) over the median time, and its fraction of the same process's measured
large-matmul rate (a jitted 2048x2048 f32 jnp.dot at precision HIGHEST, as the ops use). Peak
memory is XLA's buffer assignment for the compiled forward+backward (arguments + outputs +
temporaries), which is what the backward's residuals drive.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from deltajax import study
from deltajax.ops import Backend, delta_rule, parse_backend
from deltajax.ops.backend import clamp_chunk, resolve
from deltajax.ops.chunked import delta_rule_chunked

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# out_dir: runs/ is scratch, next to where the script is started; the committed tables are the
# repository's benchmarks/results/, from any directory.
_RESULTS = os.path.join(REPO, "benchmarks", "results")
PRESETS = {
    "small": dict(seq_lens=(256, 1024, 4096), head_dims=(64,), gated=(False,),
                  backends=("recurrent", "chunked"), repeats=3, out_dir="runs/bench_ops",
                  table="ops"),
    "full": dict(seq_lens=(256, 512, 1024, 2048, 4096, 8192, 16384), head_dims=(64,),
                 gated=(False,), backends=("recurrent", "chunked"), repeats=5,
                 out_dir=_RESULTS, table="ops"),
    # Issue 18's grid. The recurrent path's gradient would need ~9 GiB at K=128, T=16384: it is
    # left out (--backends adds it back).
    # The chunked backend and both of its layouts forced (the choice between them is measured).
    "grid": dict(seq_lens=(1024, 4096, 16384), head_dims=(64, 128), gated=(False, True),
                 backends=("chunked", "chunked:batched", "chunked:scanned"), repeats=5,
                 out_dir=_RESULTS, table="ops-grid"),
}

# The chunked backend's two layouts (deltajax/ops/chunked.py), timed as if they were backends:
# delta_rule_chunked with the layout forced, at the chunk delta_rule would use.
LAYOUTS = {"chunked:batched": True, "chunked:scanned": False}

_where = lambda d: f"<repo>/{os.path.relpath(d, REPO)}/" if os.path.isabs(d) else f"./{d}/"


def define_flags():
    """Defined when run as a script only: the tests import this module beside others whose
    flags share names (seq_lens, repeats), and absl flags are global."""
    flags.DEFINE_enum("preset", "small", list(PRESETS),
                      "Grid, backends, repeats and output folder:\n"
                      + "\n".join(f"{name}: T={', '.join(map(str, p['seq_lens']))}; K="
                                  f"{', '.join(map(str, p['head_dims']))}; gated="
                                  f"{'/'.join(map(str, p['gated']))}; {', '.join(p['backends'])}; "
                                  f"{p['repeats']} repeats; to {_where(p['out_dir'])}"
                                  f"<platform>-{p['table']}.md"
                                  for name, p in PRESETS.items()))
    flags.DEFINE_list("seq_lens", None, "Overrides the preset's sequence lengths.")
    flags.DEFINE_list("head_dims", None, "Overrides the preset's head dimensions K (= V).")
    flags.DEFINE_enum("gated", None, ["no", "yes", "both"],
                      "Overrides the preset's gate cases: no gate, a gate (log-decay uniform in "
                      "[log 0.9, 0]), or both.")
    flags.DEFINE_list("backends", None,
                      "Overrides the preset's backends of delta_rule, by Backend value: "
                      + ", ".join(b.value for b in Backend) + "; or the chunked backend's "
                      "layouts forced: " + ", ".join(LAYOUTS) + ".")
    flags.DEFINE_integer("batch", 1, "B")
    flags.DEFINE_integer("heads", 4, "H")
    flags.DEFINE_integer("chunk_size", 64, "chunk_size of the chunked backends.")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Input dtype.")
    flags.DEFINE_integer("repeats", None, "Overrides the preset's timed rounds per cell.")
    flags.DEFINE_integer("matmul_size", 2048, "n of the reference [n, n] x [n, n] jnp.dot.")
    flags.DEFINE_string("out", None, "Output Markdown file (default: the preset's).")


def chunked_forward_flops(T: int, K: int, V: int, C: int, *, B: int = 1, H: int = 1) -> float:
    """Matmul FLOPs of the chunkwise forward (deltajax/ops/README.md, "Chunkwise form").

    Per chunk of C tokens per (batch, head), 2*m*n*k for an [m, k] x [k, n] product:
        K K^T                        2 C^2 K
        Q K^T                        2 C^2 K
        A^-1 (unit lower triangular) counted as C^3/3 multiply-adds: 2 C^3 / 3
        W = A^-1 X                   2 C^2 K
        U = A^-1 Y                   2 C^2 V
        W S                          2 C K V
        Q S                          2 C K V
        (D * Q K^T) u                2 C^2 V
        (diag(D[C, :]) K)^T u        2 C K V
    over ceil(T / C) chunks (the padded tail is work done). Elementwise work is not counted.
    """
    per_chunk = 2 * (3 * C * C * K + C**3 / 3 + 2 * C * C * V + 3 * C * K * V)
    return B * H * -(-T // C) * per_chunk


def chunked_backward_flops(T: int, K: int, V: int, C: int, *, B: int = 1, H: int = 1) -> float:
    """Matmul FLOPs of the chunkwise backward (deltajax/ops/README.md, "Backward"), useful work
    only: recomputing the factors (A^-1, W, U: the forward's first six lines) is not counted.

    Per chunk of C tokens per (batch, head):
        du  = (D * QK)^T dO                  2 C^2 V
            + diag(delta) K dS'              2 C K V
        dS  = (diag(gamma) Q)^T dO           2 C K V
            - W^T du                         2 C K V
        dW  = -du S^T                        2 C K V
        dP  = dO u^T                         2 C^2 V
        d(diag(gamma) Q) = dO S^T            2 C K V
        d(diag(delta) K) = u dS'^T           2 C K V
        dX  = A^-T dW                        2 C^2 K
        dY  = A^-T dU                        2 C^2 V
        dA  = -(dX W^T + dY U^T)             2 C^2 K + 2 C^2 V
        dq from P = D * Q K^T: (dP * D) K    2 C^2 K
        dk from P: (dP * D)^T Q              2 C^2 K
        dk from A's K K^T: M K + M^T K       2 * 2 C^2 K   (M = diag(b) strict_lower(D) * dA)
    """
    per_chunk = 2 * (6 * C * C * K + 4 * C * C * V + 6 * C * K * V)
    return B * H * -(-T // C) * per_chunk


def recurrent_forward_flops(T: int, K: int, V: int, *, B: int = 1, H: int = 1) -> float:
    """Matmul FLOPs of the token scan: per token per (batch, head) three [K, V] products,
    predict S^T k, write k u^T, read S^T q: 3 * 2 K V."""
    return B * H * T * 3 * 2 * K * V


def recurrent_backward_flops(T: int, K: int, V: int, *, B: int = 1, H: int = 1) -> float:
    """jax.grad through the token scan: each forward product has two cotangent products,
    twice the forward's 3 * 2 K V per token."""
    return 2 * recurrent_forward_flops(T, K, V, B=B, H=H)


def path_flops(backend: str, T: int, K: int, V: int, chunk_size: int, *, B: int, H: int,
               differentiated: bool) -> float:
    """Matmul FLOPs of one call of `backend` as delta_rule resolves it on this platform: the
    forward alone, or forward + backward. Pallas runs the chunkwise algorithm."""
    if backend in LAYOUTS:
        C = clamp_chunk(chunk_size, T)
        return (chunked_forward_flops(T, K, V, C, B=B, H=H)
                + (chunked_backward_flops(T, K, V, C, B=B, H=H) if differentiated else 0))
    r = resolve(Backend(backend), seq_len=T, head_dim=K, chunk_size=chunk_size,
                platform=jax.default_backend(), differentiated=differentiated)
    if r.path == Backend.RECURRENT:
        flops = recurrent_forward_flops(T, K, V, B=B, H=H)
        return flops + (recurrent_backward_flops(T, K, V, B=B, H=H) if differentiated else 0)
    flops = chunked_forward_flops(T, K, V, r.chunk_size, B=B, H=H)
    return flops + (chunked_backward_flops(T, K, V, r.chunk_size, B=B, H=H)
                    if differentiated else 0)


def matmul_gflops(repeats: int, n: int) -> float:
    """The process's large-matmul rate: 2 n^3 FLOPs over the median time of a jitted f32
    [n, n] x [n, n] jnp.dot at precision HIGHEST."""
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.normal(size=(n, n)), jnp.float32) for _ in range(2))
    dot = jax.jit(lambda x, y: jnp.dot(x, y, precision=jax.lax.Precision.HIGHEST))
    return 2 * n**3 / study.median_seconds(dot, a, b, repeats=repeats) / 1e9


def chunk_matmul_gflops(repeats: int, *, batch_heads: int, C: int, K: int, V: int,
                        steps: int = 64) -> float:
    """The rate of the matmuls the chunked scans are made of: a jitted lax.scan of `steps`
    steps, each one [batch_heads, C, K] x [batch_heads, K, V] f32 jnp.einsum at precision HIGHEST
    (2 batch_heads C K V FLOPs a step), the largest matmul a scan step of the chunked path does:
    a ceiling for the chunked path, whose other matmuls are smaller. The large-matmul rate is
    what the CPU reaches on matmuls large enough to use every core."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(steps, batch_heads, C, K)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(steps, batch_heads, K, V)), jnp.float32)

    def scan(x, y):
        def step(acc, xy):
            return acc + jnp.einsum("bck,bkv->bcv", *xy, precision=jax.lax.Precision.HIGHEST), None
        return jax.lax.scan(step, jnp.zeros((batch_heads, C, V), jnp.float32), (x, y))[0]

    seconds = study.median_seconds(jax.jit(scan), x, y, repeats=repeats)
    return 2 * steps * batch_heads * C * K * V / seconds / 1e9


@dataclasses.dataclass
class Row:
    head_dim: int
    gated: bool
    seq_len: int
    backend: str
    forward_ms: float
    train_ms: float
    forward_gflops: float
    train_gflops: float
    train_peak_mib: float


def make_inputs(B, T, H, D, dtype, gated, seed=0):
    """q, k (L2-normalised), v, beta in [0, 1], and gate (log-decay in [log 0.9, 0]) or None."""
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(B, T, H, D))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    arrays = (rng.normal(size=(B, T, H, D)), k, rng.normal(size=(B, T, H, D)),
              rng.uniform(0, 1, size=(B, T, H)))
    gate = jnp.asarray(rng.uniform(np.log(0.9), 0, size=(B, T, H)), jnp.float32) if gated else None
    return tuple(jnp.asarray(x, dtype) for x in arrays) + (gate,)


def peak_mib(jitted, args):
    stats = jitted.lower(*args).compile().memory_analysis()
    total = (stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
    return total / 2**20


def measure_cell(backends, T, *, B, H, D, gated, dtype, chunk_size, repeats) -> list[Row]:
    """Every backend's forward and forward+backward at one shape, timed interleaved."""
    args = make_inputs(B, T, H, D, dtype, gated)
    fns, trains = {}, {}
    for backend in backends:
        def forward(q, k, v, beta, gate, backend=backend):
            if backend in LAYOUTS:
                return delta_rule_chunked(q, k, v, beta, gate_BTH=gate, scale=D ** -0.5,
                                          chunk_size=clamp_chunk(chunk_size, T),
                                          batched=LAYOUTS[backend])[0]
            return delta_rule(q, k, v, beta, gate=gate, backend=backend,
                              chunk_size=chunk_size)[0]

        def loss(q, k, v, beta, gate, forward=forward):
            return jnp.sum(forward(q, k, v, beta, gate).astype(jnp.float32) ** 2)

        fns[backend, "forward"] = jax.jit(forward)
        trains[backend] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4) if gated
                                                     else (0, 1, 2, 3)))
        fns[backend, "train"] = trains[backend]
    seconds = study.interleaved_medians(fns, *args, repeats=repeats)
    rows = []
    for backend in backends:
        fwd, train = seconds[backend, "forward"], seconds[backend, "train"]
        flops = {d: path_flops(backend, T, D, D, chunk_size, B=B, H=H, differentiated=d)
                 for d in (False, True)}
        rows.append(Row(D, gated, T, backend, 1e3 * fwd, 1e3 * train, flops[False] / fwd / 1e9,
                        flops[True] / train / 1e9, peak_mib(trains[backend], args)))
    return rows


def to_markdown(rows, *, header, command, dot_gflops, matmul_size, chunk_gflops,
                chunk_shape) -> str:
    """chunk_gflops: K -> chunk_matmul_gflops at that K (= V); chunk_shape: its (B H, C)."""
    batch_heads, C = chunk_shape
    lines = [header, "", f"Command: `{command}`", "",
             f"Large-matmul rate of this process: {dot_gflops:.1f} GFLOP/s (median of a jitted "
             f"{matmul_size}x{matmul_size} f32 jnp.dot, precision HIGHEST). Chunk-matmul rate: "
             + ", ".join(f"K={K}: {rate:.1f} GFLOP/s ({100 * rate / dot_gflops:.0f}% of it)"
                         for K, rate in chunk_gflops.items())
             + f" (bench_ops.chunk_matmul_gflops: a lax.scan of 64 steps of one "
             f"[{batch_heads}, {C}, K] x [{batch_heads}, K, K] einsum, the largest matmul of a "
             "chunked scan step). GFLOP/s: the algorithm's matmul FLOPs (bench_ops.py's *_flops) "
             "over the median time; the backward counts useful FLOPs only, not the recomputation "
             "of the chunk factors. % dot: fwd+bwd GFLOP/s as a fraction of the large-matmul "
             "rate; % chunk: of the chunk-matmul rate at that K.", "",
             "| K=V | gate | T | backend | forward ms | fwd+bwd ms | fwd GFLOP/s | "
             "fwd+bwd GFLOP/s | % dot | % chunk | fwd+bwd peak MiB |",
             "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.head_dim} | {'yes' if r.gated else 'no'} | {r.seq_len} | {r.backend} | "
              f"{r.forward_ms:.2f} | {r.train_ms:.2f} | {r.forward_gflops:.2f} | "
              f"{r.train_gflops:.2f} | {100 * r.train_gflops / dot_gflops:.1f}% | "
              f"{100 * r.train_gflops / chunk_gflops[r.head_dim]:.0f}% | "
              f"{r.train_peak_mib:.1f} |" for r in rows]
    by_key = {(r.head_dim, r.gated, r.seq_len, r.backend): r for r in rows}
    ratios = [(key, by_key[key + ("recurrent",)], by_key[key + ("chunked",)])
              for key in dict.fromkeys((r.head_dim, r.gated, r.seq_len) for r in rows)
              if key + ("recurrent",) in by_key and key + ("chunked",) in by_key]
    if ratios:
        lines += ["", "Chunked against jax.grad through the recurrent scan (same run):", "",
                  "| K=V | gate | T | fwd+bwd speed-up | peak memory ratio |",
                  "|---:|---|---:|---:|---:|"]
        lines += [f"| {K} | {'yes' if gated else 'no'} | {T} | "
                  f"{rec.train_ms / chk.train_ms:.1f}x | "
                  f"{rec.train_peak_mib / chk.train_peak_mib:.1f}x |"
                  for (K, gated, T), rec, chk in ratios]
    return "\n".join(lines) + "\n"


def positive_ints(values, flag: str) -> list[int]:
    """A list flag's values as positive integers, or a ValueError naming the flag."""
    try:
        ints = [int(v) for v in values]
    except ValueError:
        ints = []
    if not ints or min(ints) < 1:
        raise ValueError(f"--{flag}: positive integers expected, got {values}")
    return ints


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    preset = PRESETS[FLAGS.preset]
    seq_lens = positive_ints(FLAGS.seq_lens or preset["seq_lens"], "seq_lens")
    head_dims = positive_ints(FLAGS.head_dims or preset["head_dims"], "head_dims")
    gated_cases = ({"no": (False,), "yes": (True,), "both": (False, True)}[FLAGS.gated]
                   if FLAGS.gated else preset["gated"])
    backends = [b if b in LAYOUTS else parse_backend(b, "--backends").value
                for b in (FLAGS.backends or preset["backends"])]
    repeats = FLAGS.repeats or preset["repeats"]
    platform = jax.default_backend()
    out = FLAGS.out or os.path.join(preset["out_dir"], f"{platform}-{preset['table']}.md")
    B, H = FLAGS.batch, FLAGS.heads
    header = (f"# delta_rule backends on {platform}\n\n"
              f"{study.measured_on()} B={B}, H={H}, K=V in {{{', '.join(map(str, head_dims))}}}, "
              f"{FLAGS.dtype}, chunk_size={FLAGS.chunk_size}, L2-normalised k, beta in [0, 1], "
              f"gate (where used) log-decay in [log 0.9, 0]; medians of {repeats} interleaved "
              f"calls.")

    n = FLAGS.matmul_size
    dot_gflops = matmul_gflops(max(repeats, 3), n)
    print(f"jnp.dot {n}x{n} f32: {dot_gflops:.1f} GFLOP/s", flush=True)
    chunk_gflops = {D: chunk_matmul_gflops(max(repeats, 3), batch_heads=B * H,
                                           C=FLAGS.chunk_size, K=D, V=D) for D in head_dims}
    print("chunk matmuls: " + ", ".join(f"K={D} {g:.1f} GFLOP/s" for D, g in chunk_gflops.items()),
          flush=True)
    rows = []
    for D in head_dims:
        for gated in gated_cases:
            for T in seq_lens:
                rows += measure_cell(backends, T, B=B, H=H, D=D, gated=gated,
                                     dtype=jnp.dtype(FLAGS.dtype), chunk_size=FLAGS.chunk_size,
                                     repeats=repeats)
                for r in rows[-len(backends):]:
                    print(f"K={D:4d} gate={'yes' if gated else 'no':3s} T={T:6d} {r.backend:16s}"
                          f" fwd {r.forward_ms:9.2f} ms  fwd+bwd {r.train_ms:9.2f} ms "
                          f"({r.train_gflops:7.2f} GFLOP/s)  peak {r.train_peak_mib:8.1f} MiB",
                          flush=True)

    table = to_markdown(rows, header=header, dot_gflops=dot_gflops, matmul_size=n,
                        chunk_gflops=chunk_gflops, chunk_shape=(B * H, FLAGS.chunk_size),
                        command=study.command_line("experiments.bench_ops"))
    study.publish_table(out, table)


if __name__ == "__main__":
    define_flags()
    app.run(main)
