"""Times backends of delta_rule over sequence lengths and writes a Markdown table.

    python experiments/bench_ops.py --preset=full     # benchmarks/results/<platform>-ops.md
    python experiments/bench_ops.py --preset=small    # `make bench-ops` (runs/bench_ops/)

Forward and forward+backward are timed under jax.jit (medians of --repeats calls after a warm-up
call); peak memory is XLA's buffer assignment for the compiled forward+backward (arguments +
outputs + temporaries), which is what the backward's residuals drive.
"""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from deltajax import study
from deltajax.ops import Backend, delta_rule, parse_backend

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# out_dir: runs/ is scratch, next to where the script is started; the committed tables are the
# repository's benchmarks/results/, from any directory.
PRESETS = {
    "small": dict(seq_lens=(256, 1024, 4096), repeats=3, out_dir="runs/bench_ops"),
    "full": dict(seq_lens=(256, 512, 1024, 2048, 4096, 8192, 16384), repeats=5,
                 out_dir=os.path.join(REPO, "benchmarks", "results")),
}

_where = lambda d: f"<repo>/{os.path.relpath(d, REPO)}/" if os.path.isabs(d) else f"./{d}/"
flags.DEFINE_enum("preset", "small", list(PRESETS), "Sequence lengths, repeats and output folder:\n"
                  + "\n".join(f"{name}: T={', '.join(map(str, p['seq_lens']))}; {p['repeats']} "
                               f"repeats; to {_where(p['out_dir'])}"
                               for name, p in PRESETS.items()))
flags.DEFINE_list("seq_lens", None, "Overrides the preset's sequence lengths.")
flags.DEFINE_list("backends", ["recurrent", "chunked"],
                  "Backends of delta_rule to time, by Backend value: "
                  + ", ".join(b.value for b in Backend) + ".")
flags.DEFINE_integer("batch", 1, "B")
flags.DEFINE_integer("heads", 4, "H")
flags.DEFINE_integer("head_dim", 64, "K = V")
flags.DEFINE_integer("chunk_size", 64, "chunk_size of the chunked backends.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Input dtype.")
flags.DEFINE_integer("repeats", None, "Overrides the preset's timed calls per measurement.")
flags.DEFINE_string("out", None, "Output Markdown file (default <out_dir>/<platform>-ops.md).")


@dataclasses.dataclass
class Row:
    seq_len: int
    backend: str
    forward_ms: float
    train_ms: float
    train_peak_mib: float


def make_inputs(B, T, H, D, dtype, seed=0):
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(B, T, H, D))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    arrays = (rng.normal(size=(B, T, H, D)), k, rng.normal(size=(B, T, H, D)),
              rng.uniform(0, 1, size=(B, T, H)))
    return tuple(jnp.asarray(x, dtype) for x in arrays)


def peak_mib(jitted, args):
    stats = jitted.lower(*args).compile().memory_analysis()
    total = (stats.argument_size_in_bytes + stats.output_size_in_bytes
             + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
    return total / 2**20


def measure(backend, T, *, B, H, D, dtype, chunk_size, repeats) -> Row:
    args = make_inputs(B, T, H, D, dtype)

    def forward(q, k, v, beta):
        return delta_rule(q, k, v, beta, backend=backend, chunk_size=chunk_size)[0]

    def loss(q, k, v, beta):
        return jnp.sum(forward(q, k, v, beta).astype(jnp.float32) ** 2)

    forward_jit = jax.jit(forward)
    train_jit = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))
    forward_ms = 1e3 * study.median_seconds(forward_jit, *args, repeats=repeats)
    train_ms = 1e3 * study.median_seconds(train_jit, *args, repeats=repeats)
    return Row(T, backend, forward_ms, train_ms, peak_mib(train_jit, args))


def to_markdown(rows, *, header, command) -> str:
    lines = [header, "", f"Command: `{command}`", "",
             "| T | backend | forward ms | fwd+bwd ms | fwd+bwd peak MiB |",
             "|---:|---|---:|---:|---:|"]
    lines += [f"| {r.seq_len} | {r.backend} | {r.forward_ms:.2f} | {r.train_ms:.2f} | "
              f"{r.train_peak_mib:.1f} |" for r in rows]
    by_key = {(r.seq_len, r.backend): r for r in rows}
    ratios = [(T, by_key[T, "recurrent"], by_key[T, "chunked"])
              for T in sorted({r.seq_len for r in rows})
              if (T, "recurrent") in by_key and (T, "chunked") in by_key]
    if ratios:
        lines += ["", "Chunked against jax.grad through the recurrent scan (same run):", "",
                  "| T | fwd+bwd speed-up | peak memory ratio |", "|---:|---:|---:|"]
        lines += [f"| {T} | {rec.train_ms / chk.train_ms:.1f}x | "
                  f"{rec.train_peak_mib / chk.train_peak_mib:.1f}x |" for T, rec, chk in ratios]
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    preset = PRESETS[FLAGS.preset]
    seq_lens = [int(t) for t in FLAGS.seq_lens] if FLAGS.seq_lens else preset["seq_lens"]
    repeats = FLAGS.repeats or preset["repeats"]
    platform = jax.default_backend()
    out = FLAGS.out or os.path.join(preset["out_dir"], f"{platform}-ops.md")
    B, H, D = FLAGS.batch, FLAGS.heads, FLAGS.head_dim
    header = (f"# delta_rule backends on {platform}\n\n"
              f"{study.measured_on()} B={B}, H={H}, K=V={D}, {FLAGS.dtype}, "
              f"chunk_size={FLAGS.chunk_size}, "
              f"L2-normalised k, beta in [0, 1]; medians of {repeats} calls.")

    backends = [parse_backend(b, "--backends").value for b in FLAGS.backends]
    rows = []
    for T in seq_lens:
        for backend in backends:
            rows.append(measure(backend, T, B=B, H=H, D=D, dtype=jnp.dtype(FLAGS.dtype),
                                chunk_size=FLAGS.chunk_size, repeats=repeats))
            print(f"T={T:6d} {backend:10s} fwd {rows[-1].forward_ms:9.2f} ms  "
                  f"fwd+bwd {rows[-1].train_ms:9.2f} ms  peak {rows[-1].train_peak_mib:8.1f} MiB",
                  flush=True)

    table = to_markdown(rows, header=header, command=study.command_line("experiments.bench_ops"))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as f:
        f.write(table)
    print("\n" + table + f"\nWritten to {out}")


if __name__ == "__main__":
    app.run(main)
