"""deltajax's chunked gated delta rule against the JAX peers, side by side in one process.

    python -m experiments.bench_peers --peers_path=/work/peers/src,/work/peers/site
    python -m experiments.bench_peers --peers_path=... --seq_lens=1024 --head_dims=64

For each head dimension K (= V) it first checks every peer's output and gradients (q, k, v, beta,
gate) against deltajax's chunked path at one small shape (--check_seq_len), as relative errors
||peer - deltajax|| / ||deltajax||; then for each (K, T) cell it times forward+backward of every
path under jax.jit, interleaved (study.interleaved_medians: one call of each a round, the order
rotating), medians of --repeats rounds, with XLA's peak buffer memory of the compiled
forward+backward; the table (benchmarks/results/<platform>-peers.md) gives peer/deltajax ratios.

The peers' code is not part of deltajax and is not committed: --peers_path (or PYTHONPATH) names
folders that hold their unpacked sources. Each peer's one file is loaded on its own, without its
package's __init__ (which would pull in the whole framework), so only these dependencies are
needed on the path too: jaxtyping (ejkernel); haliax, equinox, jaxtyping and aqtp (Levanter).
Getting them, as used for benchmarks/results/cpu-peers.md (pip --no-deps keeps this JAX untouched):

    mkdir -p /work/peers/src && cd /work/peers
    pip download --no-deps ejkernel==0.0.80.3 && unzip -o ejkernel-0.0.80.3-*.whl 'ejkernel/*' \
        -d src
    pip download --no-deps --pre levanter==1.2.dev1644 && unzip -o levanter-1.2.dev1644-*.whl \
        'levanter/*' -d src
    pip install --no-deps --pre --target site "haliax>=1.4.dev443" equinox jaxtyping \
        wadler_lindig beartype aqtp
    # MaxText (github.com/AI-Hypercomputer/maxtext, commit e591f30cbbf2, 2026-08-22):
    mkdir -p src/maxtext/models && git -C <maxtext clone> show \
        e591f30cbbf217ed67ef71263ec0538239f9c3b8:src/maxtext/models/qwen3.py \
        > src/maxtext/models/qwen3.py

The peers (--peers), each called so that it computes deltajax's function
o_t = S_t^T (q_t / sqrt(K)), S_t = exp(g_t) S_{t-1} + beta_t k_t (v_t - exp(g_t) S_{t-1}^T k_t)^T:
  maxtext        maxtext/models/qwen3.py, jax_chunk_gated_delta_rule (Qwen3-Next's XLA chunked
                 path, autodiff backward): [B, T, H, D] like deltajax, q scaled by K^-0.5 inside,
                 use_qk_norm_in_gdn=False, compute_dtype=float32 (its default is bfloat16). The
                 function is taken out of the file with `ast` and run with jax, jnp and lax:
                 qwen3.py's module imports need all of MaxText.
  ejkernel_xla   ejkernel/kernels/_xla/gated_delta_rule/_xla_impl_fwd.py, _chunk_gdr_fwd (what
                 ejkernel.kernels._xla.gated_delta_rule.gated_delta_rule runs for
                 use_chunked=True: exact triangular solve, autodiff backward).
  ejkernel_vjp   the same file's _chunk_gdr_fwd_neumann (its custom_vjp variant with the
                 hand-written backward of _xla_impl_bwd.py).
                 Despite its name it inverts the chunk's triangle exactly (triangular_solve).
                 Both ejkernel paths take [B, H, T, D] (transposed inside the timed function,
                 as ejkernel's public interface does), use_qk_l2norm=False, decay = the gate.
                 They clip cumulative log-gates to [-20, 20] before exp; with g >= log 0.9 a
                 64-token chunk stays within -6.8, so the clip never binds here.
  levanter       levanter/layers/gated_deltanet.py, chunk_gated_delta_rule (autodiff): haliax
                 NamedArrays with axes batch, position, heads, k_head_dim / v_head_dim,
                 use_qk_l2norm_in_kernel=False.
All take the gate as log-decay g (a_t = exp(g_t)), scale q by K^-0.5 themselves and get k
already L2-normalised (as deltajax's inputs here), so no input is changed but layout.
"""

import ast
import dataclasses
import importlib
import importlib.util
import os
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from deltajax import study
from deltajax.ops import delta_rule
from experiments.bench_ops import peak_mib, positive_ints

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = ("maxtext", "ejkernel_xla", "ejkernel_vjp", "levanter")
_FILES = {
    "maxtext": "maxtext/models/qwen3.py",
    "ejkernel_xla": "ejkernel/kernels/_xla/gated_delta_rule/_xla_impl_fwd.py",
    "ejkernel_vjp": "ejkernel/kernels/_xla/gated_delta_rule/_xla_impl_fwd.py",
    "levanter": "levanter/layers/gated_deltanet.py",
}
OURS = "deltajax"

def define_flags():
    """Defined when run as a script only: absl flags are global, and other experiments share
    these names."""
    flags.DEFINE_list("peers_path", [], "Folders searched (before PYTHONPATH) for the peers' "
                      "sources and their dependencies; see the module docstring.")
    flags.DEFINE_list("peers", list(PEERS), f"Peers to compare: any of {', '.join(PEERS)}.")
    flags.DEFINE_list("seq_lens", ["1024", "4096", "16384"], "Sequence lengths T to time.")
    flags.DEFINE_list("head_dims", ["64", "128"], "Head dimensions K (= V).")
    flags.DEFINE_integer("batch", 1, "B")
    flags.DEFINE_integer("heads", 4, "H")
    flags.DEFINE_integer("chunk_size", 64, "Chunk of every path.")
    flags.DEFINE_integer("check_seq_len", 200, "T of the correctness check (not a multiple of the "
                         "chunk, so padding is checked too).")
    flags.DEFINE_integer("repeats", 5, "Timed rounds per cell.")
    flags.DEFINE_string("out", None, "Output Markdown file (default "
                        "<repo>/benchmarks/results/<platform>-peers.md).")


def _find(relpath: str, search: list) -> str:
    for folder in search:
        path = os.path.join(folder, relpath)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(relpath)


def _maxtext(path):
    tree = ast.parse(open(path).read())
    fn = [n for n in tree.body
          if isinstance(n, ast.FunctionDef) and n.name == "jax_chunk_gated_delta_rule"]
    if not fn:
        raise ImportError(f"{path} has no jax_chunk_gated_delta_rule")
    namespace = dict(jax=jax, jnp=jnp, lax=jax.lax, Array=jax.Array)
    exec(compile(ast.Module(body=fn, type_ignores=[]), path, "exec"), namespace)
    f = namespace["jax_chunk_gated_delta_rule"]

    def run(q, k, v, beta, g, chunk_size):
        return f(q, k, v, g, beta, chunk_size=chunk_size, compute_dtype=jnp.float32)[0]
    return run


def _ejkernel_module(path):
    # A stand-in package for the one folder, so that _xla_impl_bwd's relative import works
    # without running ejkernel's __init__ files (they import every kernel and backend).
    name = "_deltajax_peer_ejkernel_gdr"
    if name not in sys.modules:
        package = types.ModuleType(name)
        package.__path__ = [os.path.dirname(path)]
        sys.modules[name] = package
    return importlib.import_module(f"{name}._xla_impl_fwd")


def _ejkernel(path, custom_vjp: bool):
    module = _ejkernel_module(path)
    bhtd = lambda x: jnp.swapaxes(x, 1, 2)  # [B, T, H, ...] <-> [B, H, T, ...]

    def run(q, k, v, beta, g, chunk_size):
        args = (bhtd(q), bhtd(k), bhtd(v), bhtd(beta), bhtd(g))
        if custom_vjp:  # chunk_size and use_qk_l2norm are its nondiff_argnums: positional
            o = module._chunk_gdr_fwd_neumann(*args, chunk_size, None, False)[0]
        else:
            o = module._chunk_gdr_fwd(*args, chunk_size=chunk_size, use_qk_l2norm=False)[0]
        return bhtd(o)
    return run


def _levanter(path):
    spec = importlib.util.spec_from_file_location("_deltajax_peer_levanter_gdn", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (equinox modules) look their module up there
    spec.loader.exec_module(module)
    import haliax as hax  # on the path once the module loaded

    def run(q, k, v, beta, g, chunk_size):
        vec = lambda x, d: hax.named(x, ("batch", "position", "heads", d))
        scalar = lambda x: hax.named(x, ("batch", "position", "heads"))
        o, _ = module.chunk_gated_delta_rule(
            vec(q, "k_head_dim"), vec(k, "k_head_dim"), vec(v, "v_head_dim"), scalar(g),
            scalar(beta), chunk_size=chunk_size, use_qk_l2norm_in_kernel=False)
        return o.rearrange(("batch", "position", "heads", "v_head_dim")).array
    return run


def load_peers(names, peers_path) -> dict:
    """name -> fn(q, k, v, beta, g, chunk_size) -> o, all [B, T, H, ...]. A missing peer raises
    a ValueError naming it, the file looked for, and where."""
    search = [os.path.abspath(p) for p in peers_path] + [p for p in sys.path if p]
    sys.path[:0] = [os.path.abspath(p) for p in peers_path]  # their dependencies
    loaded = {}
    for name in names:
        if name not in PEERS:
            raise ValueError(f"--peers: unknown peer {name!r}; choose from {', '.join(PEERS)}")
        try:
            path = _find(_FILES[name], search)
            if name == "maxtext":
                loaded[name] = _maxtext(path)
            elif name == "levanter":
                loaded[name] = _levanter(path)
            else:
                loaded[name] = _ejkernel(path, custom_vjp=name == "ejkernel_vjp")
        except (FileNotFoundError, ImportError) as e:
            raise ValueError(
                f"--peers_path: peer {name!r} needs {_FILES[name]} (and its dependencies) "
                f"under a folder of --peers_path ({', '.join(peers_path) or 'none given'}) or "
                f"PYTHONPATH; failed with {e!r}. See "
                f"experiments/bench_peers.py's docstring for how to get it, or leave it out of "
                f"--peers.") from e
    return loaded


def ours(q, k, v, beta, g, chunk_size):
    return delta_rule(q, k, v, beta, gate=g, backend="chunked", chunk_size=chunk_size)[0]


def make_inputs(B, T, H, D, seed=0):
    """q, k (L2-normalised), v [B, T, H, D]; beta in [0, 1]; g log-decay in [log 0.9, 0];
    and a fixed cotangent for o, all f32."""
    rng = np.random.default_rng(seed)
    k = rng.normal(size=(B, T, H, D))
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    arrays = (rng.normal(size=(B, T, H, D)), k, rng.normal(size=(B, T, H, D)),
              rng.uniform(0, 1, size=(B, T, H)), rng.uniform(np.log(0.9), 0, size=(B, T, H)),
              rng.normal(size=(B, T, H, D)))
    return tuple(jnp.asarray(x, jnp.float32) for x in arrays)


def train_step(fn, chunk_size):
    """jit of (loss, grads of q, k, v, beta, g) with loss = sum(o * do)."""
    def loss(q, k, v, beta, g, do):
        return jnp.sum(fn(q, k, v, beta, g, chunk_size) * do)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))


GRADS = ("q", "k", "v", "beta", "gate")


def check(fns, *, B, T, H, D, chunk_size) -> dict:
    """peer -> {'o': rel. error, 'dq': ..., ...} against deltajax's chunked path."""
    args = make_inputs(B, T, H, D, seed=1)
    rel = lambda a, b: float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
    o_ref = jax.jit(ours, static_argnums=5)(*args[:5], chunk_size)
    _, g_ref = train_step(ours, chunk_size)(*args)
    errors = {}
    for name, fn in fns.items():
        o = jax.jit(fn, static_argnums=5)(*args[:5], chunk_size)
        _, grads = train_step(fn, chunk_size)(*args)
        errors[name] = {"o": rel(o, o_ref)} | {
            f"d{n}": rel(g, r) for n, g, r in zip(GRADS, grads, g_ref, strict=True)}
    return errors


@dataclasses.dataclass
class Row:
    head_dim: int
    seq_len: int
    path: str
    train_ms: float
    peak_mib: float


def time_cell(fns, *, B, T, H, D, chunk_size, repeats) -> list[Row]:
    args = make_inputs(B, T, H, D)
    steps = {name: train_step(fn, chunk_size) for name, fn in fns.items()}
    seconds = study.interleaved_medians(steps, *args, repeats=repeats)
    return [Row(D, T, name, 1e3 * seconds[name], peak_mib(steps[name], args)) for name in steps]


def to_markdown(errors, rows, *, header, command, check_seq_len) -> str:
    lines = [header, "", f"Command: `{command}`", "",
             f"Relative error ||peer - deltajax|| / ||deltajax|| of the output and of each "
             f"gradient (loss sum(o * do), do random) at T={check_seq_len}, against deltajax's "
             f"chunked path:", "",
             "| K=V | peer | o | " + " | ".join(f"d{n}" for n in GRADS) + " |",
             "|---:|---|" + "---:|" * (1 + len(GRADS))]
    for D, by_peer in errors.items():
        lines += [f"| {D} | {name} | " + " | ".join(f"{e:.1e}" for e in errs.values()) + " |"
                  for name, errs in by_peer.items()]
    lines += ["", "Forward+backward (jax.value_and_grad under jax.jit), medians of interleaved "
              "calls; peak = XLA's buffers of the compiled forward+backward. Ratios: peer / "
              "deltajax (above 1: deltajax is faster or smaller).", "",
              "| K=V | T | path | fwd+bwd ms | time ratio | peak MiB | memory ratio |",
              "|---:|---:|---|---:|---:|---:|---:|"]
    base = {(r.head_dim, r.seq_len): r for r in rows if r.path == OURS}
    for r in rows:
        b = base[r.head_dim, r.seq_len]
        lines.append(f"| {r.head_dim} | {r.seq_len} | {r.path} | {r.train_ms:.2f} | "
                     f"{r.train_ms / b.train_ms:.2f}x | {r.peak_mib:.1f} | "
                     f"{r.peak_mib / b.peak_mib:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    seq_lens = positive_ints(FLAGS.seq_lens, "seq_lens")
    head_dims = positive_ints(FLAGS.head_dims, "head_dims")
    positive_ints([FLAGS.check_seq_len], "check_seq_len")
    peers = load_peers(FLAGS.peers, FLAGS.peers_path)
    fns = {OURS: ours} | peers
    B, H, C = FLAGS.batch, FLAGS.heads, FLAGS.chunk_size
    platform = jax.default_backend()
    out = FLAGS.out or os.path.join(REPO, "benchmarks", "results", f"{platform}-peers.md")
    header = (f"# deltajax's chunked gated delta rule against JAX peers on {platform}\n\n"
              f"{study.measured_on()} B={B}, H={H}, float32, chunk_size={C} for every path, "
              f"L2-normalised k, beta in [0, 1], gate log-decay in [log 0.9, 0]; medians of "
              f"{FLAGS.repeats} interleaved calls. Peers: see experiments/bench_peers.py's "
              f"docstring for their versions and how each is called.")

    errors, rows = {}, []
    for D in head_dims:
        errors[D] = check(peers, B=B, T=FLAGS.check_seq_len, H=H, D=D, chunk_size=C)
        for name, errs in errors[D].items():
            print(f"K={D:4d} {name:14s} " + "  ".join(f"{k} {e:.1e}" for k, e in errs.items()),
                  flush=True)
        for T in seq_lens:
            rows += time_cell(fns, B=B, T=T, H=H, D=D, chunk_size=C, repeats=FLAGS.repeats)
            for r in rows[-len(fns):]:
                print(f"K={D:4d} T={T:6d} {r.path:14s} fwd+bwd {r.train_ms:9.2f} ms  "
                      f"peak {r.peak_mib:8.1f} MiB", flush=True)

    table = to_markdown(errors, rows, header=header, check_seq_len=FLAGS.check_seq_len,
                        command=study.command_line("experiments.bench_peers"))
    study.publish_table(out, table)


if __name__ == "__main__":
    define_flags()
    app.run(main)
