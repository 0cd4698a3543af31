"""Times one jitted training step of a small LM on 1 and on 8 (virtual) devices, same global batch.

    python experiments/bench_train.py --model=tiny       # writes benchmarks/results/cpu-train.md
    python experiments/bench_train.py --model=deltanet

Each device count runs in its own process, because the CPU device count must be set before JAX
starts. The step is deltajax.train's (AdamW, clipping, masked loss) over a data-parallel mesh;
reported: the median wall time of --steps steps after --warmup, and global tokens / that time.
With --loop=fit the time of a step is fit's step_time_s: the interval between two steps' results
on the host, which includes what the loop does besides the step.
"""

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

flags.DEFINE_enum("model", "tiny", ["tiny", "deltanet"], "tiny: the trainer tests' model; "
                  "deltanet: deltajax.models.LanguageModel with DeltaNet mixers.")
flags.DEFINE_list("device_counts", ["1", "8"], "Device counts to time, one process each.")
flags.DEFINE_integer("worker_devices", None, "Internal: time this many devices and print JSON.")
flags.DEFINE_integer("batch", 16, "Global batch (sequences per step).")
flags.DEFINE_integer("seq_len", 256, "Tokens per sequence.")
flags.DEFINE_integer("vocab", 256, "Vocabulary size.")
flags.DEFINE_integer("d_model", 128, "Model width.")
flags.DEFINE_integer("num_layers", 2, "deltanet layers.")
flags.DEFINE_integer("num_heads", 2, "deltanet heads.")
flags.DEFINE_enum("backend", "auto", ["auto", "recurrent", "chunked"],
                  "deltanet delta_rule backend.")
flags.DEFINE_enum("loop", "step", ["step", "fit"],
                  "step: the jitted step alone, waited on every step; fit: deltajax.train.fit's "
                  "loop around it (grain batches, metric reads, logs; no checkpoints).")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_integer("warmup", 2, "Untimed steps first (compilation).")
flags.DEFINE_integer("worker_timeout", 900, "Seconds before a device count's run counts as hung.")
flags.DEFINE_string("out", None,
                    "Output Markdown (default benchmarks/results/<platform>-train.md).")
FLAGS = flags.FLAGS


def build_model():
    if FLAGS.model == "tiny":
        from deltajax.train.testing import TinyLM
        return TinyLM(FLAGS.vocab, d_model=FLAGS.d_model)
    from deltajax.models import LanguageModel, ModelConfig
    return LanguageModel(ModelConfig(vocab_size=FLAGS.vocab, d_model=FLAGS.d_model,
                                     num_layers=FLAGS.num_layers, num_heads=FLAGS.num_heads,
                                     mixer="deltanet", mlp="swiglu",
                                     delta_rule=dict(backend=FLAGS.backend)))


def time_steps(num_devices: int) -> dict:
    """Median step time on the first num_devices devices; runs inside the worker process."""
    import jax
    import ml_collections

    from deltajax.data import CopySource, make_dataset
    from deltajax.train import sharding
    from deltajax.train import step as step_lib
    from deltajax.train.config import merge_with_defaults, validate_config
    from deltajax.train.optimizer import make_optimizer
    from deltajax.train.trainer import init_sharded_state

    config = merge_with_defaults(ml_collections.ConfigDict(
        {"global_batch_size": FLAGS.batch, "num_steps": FLAGS.warmup + FLAGS.steps}))
    devices = jax.devices()[:num_devices]
    validate_config(config, num_devices=len(devices), num_processes=1)
    mesh = sharding.make_mesh(config, devices)
    model = build_model()
    source = CopySource(FLAGS.batch * 4, FLAGS.seq_len, FLAGS.vocab)
    if FLAGS.loop == "fit":
        return time_fit(config, model, source, devices)
    tx, schedule = make_optimizer(config)
    dataset = make_dataset(source, seed=0, global_batch_size=FLAGS.batch)
    state_sharding, state = init_sharded_state(config, model, tx, mesh, source[0]["inputs"])
    train = step_lib.jit_train_step(config, model=model, tx=tx, schedule=schedule,
                                    state_shardings=state_sharding,
                                    batch_sharding=sharding.batch_sharding(mesh))
    batches = [sharding.shard_batch(dataset[i % 4], mesh) for i in range(4)]
    times = []
    for i in range(FLAGS.warmup + FLAGS.steps):
        start = time.perf_counter()
        state, metrics = train(state, batches[i % 4])
        jax.block_until_ready((state, metrics))
        if i >= FLAGS.warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"devices": num_devices, "platform": devices[0].platform, "median_s": median,
            "tokens_per_s": FLAGS.batch * FLAGS.seq_len / median, "jax": jax.__version__,
            "loss": float(metrics["loss"]),
            "params": sum(x.size for x in jax.tree.leaves(state.params))}


def time_fit(config, model, source, devices) -> dict:
    """Median step_time_s of fit's history after the warm-up steps (no checkpoints, no bar)."""
    import tempfile

    import jax

    from deltajax.train import fit

    config.checkpoint.every_steps = 0
    config.logging.progress_bar = False
    config.logging.every_steps = config.num_steps
    with tempfile.TemporaryDirectory() as workdir:
        result = fit(config, model, source, workdir, devices=devices)
    median = statistics.median(h["step_time_s"] for h in result.history[FLAGS.warmup:])
    return {"devices": len(devices), "platform": devices[0].platform, "median_s": median,
            "tokens_per_s": FLAGS.batch * FLAGS.seq_len / median, "jax": jax.__version__,
            "loss": result.history[-1]["loss"],
            "params": sum(x.size for x in jax.tree.leaves(result.state.params))}


# A collective that never completes aborts the worker after a minute instead of hanging it.
# (DeltaNet on 8 devices once hung here: jaxlib's LAPACK triangular solve waited on the
# intra-op thread pool that the other devices held in the all-reduce; deltajax.ops.chunked
# no longer calls it.)
CPU_FLAGS = ("--xla_cpu_collective_call_warn_stuck_timeout_seconds=30 "
             "--xla_cpu_collective_call_terminate_timeout_seconds=60")


def run_worker(num_devices: int) -> dict:
    """This script again, in a fresh process that sets the CPU device count first; a failed
    run gives {"devices", "error"}."""
    args = [sys.executable, os.path.abspath(__file__), f"--worker_devices={num_devices}"]
    args += [f"--{name}={FLAGS[name].value}" for name in
             ("model", "backend", "batch", "seq_len", "vocab", "d_model", "num_layers", "num_heads",
              "steps", "warmup", "loop")]
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {CPU_FLAGS}"}
    try:
        result = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=env,
                                timeout=FLAGS.worker_timeout)
    except subprocess.TimeoutExpired:
        return {"devices": num_devices, "error": f"hung past {FLAGS.worker_timeout} s"}
    if result.returncode:
        stuck = "Termination timeout" in result.stderr
        reason = "XLA:CPU all-reduce deadlock" if stuck else f"exit code {result.returncode}"
        print(f"worker with {num_devices} devices failed ({reason}):\n{result.stderr[-2000:]}",
              file=sys.stderr)
        return {"devices": num_devices, "error": reason}
    return json.loads(result.stdout.strip().splitlines()[-1])


def section(rows: list, command: str) -> str:
    """This model's part of the results file: its setting, command and table."""
    done = [r for r in rows if "error" not in r]
    if not done:
        raise SystemExit(f"every device count failed: {rows}")
    first = done[0]
    shapes = (f"{first['params']:,} params, global batch B={FLAGS.batch}, T={FLAGS.seq_len}, "
              f"vocab={FLAGS.vocab}, d_model={FLAGS.d_model}")
    if FLAGS.model == "deltanet":
        shapes += (f", {FLAGS.num_layers} layers, {FLAGS.num_heads} heads, SwiGLU MLP, "
                   f"backend={FLAGS.backend}")
    timed = "the fit loop (its step_time_s)" if FLAGS.loop == "fit" else "the jitted step"
    lines = [f"## {_section_name()}", "",
             f"{datetime.date.today()}, device: {os.cpu_count()}-core {platform.machine()} "
             f"{first['platform'].upper()}, JAX {first['jax']}. {shapes}; AdamW + clipping, "
             f"float32, jit over a data-parallel mesh; {timed}, medians of {FLAGS.steps} steps "
             f"after {FLAGS.warmup} warm-up steps. The 8 CPU devices are virtual "
             "(`jax_num_cpu_devices=8`) and share the same cores.", "",
             f"Command: `{command}`", "",
             "| devices | median step ms | tokens/s |", "|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['devices']} | failed: {r['error']} | - |")
        else:
            lines.append(f"| {r['devices']} | {1000 * r['median_s']:.1f} | "
                         f"{r['tokens_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"


def _section_name() -> str:
    return f"model={FLAGS.model}" + (", loop=fit" if FLAGS.loop == "fit" else "")


def write_section(path: str, platform_name: str, text: str) -> None:
    """Replace this model's section of the results file, keeping the other models'."""
    sections = {}
    if os.path.exists(path):
        for part in open(path).read().split("\n## ")[1:]:
            sections[part.split("\n", 1)[0]] = "## " + part.rstrip("\n") + "\n"
    sections[_section_name()] = text
    body = "\n".join(sections[k] for k in sorted(sections))
    with open(path, "w") as f:
        f.write(f"# Training step on {platform_name}\n\n{body}")


def main(argv):
    del argv
    if FLAGS.worker_devices is not None:
        import jax
        jax.config.update("jax_num_cpu_devices", FLAGS.worker_devices)
        print(json.dumps(time_steps(FLAGS.worker_devices)))
        return
    rows = [run_worker(int(n)) for n in FLAGS.device_counts]
    for row in rows:
        if "error" in row:
            print(f"{row['devices']} devices: failed ({row['error']})")
        else:
            print(f"{row['devices']} devices: {1000 * row['median_s']:.1f} ms/step, "
                  f"{row['tokens_per_s']:,.0f} tokens/s")
    platform_name = next(r["platform"] for r in rows if "error" not in r) if any(
        "error" not in r for r in rows) else "cpu"
    out = FLAGS.out or os.path.join(REPO, "benchmarks", "results", f"{platform_name}-train.md")
    command = "python experiments/bench_train.py " + " ".join(sys.argv[1:])
    os.makedirs(os.path.dirname(out), exist_ok=True)
    write_section(out, platform_name, section(rows, command.strip()))
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
