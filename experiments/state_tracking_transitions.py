r"""What a trained one-layer delta-rule model of the state-tracking study does to its state, token
by token: why a run that is right in distribution extrapolates or not.

    python -m experiments.state_tracking_transitions --workdir=runs/state-tracking-cpu-seeds \
        --only='Z3-*,S3-*' \
        --out=benchmarks/results/cpu-state-tracking-transitions

A token's update of the state is affine, S -> M S + B. M (per head, K x K) is read from the model
itself: the Jacobian of the state after the token with respect to the state before it (the cache
of LanguageModel.extend), so nothing of the layer is re-implemented here. For a group word
problem solved at every length, the transitions of the group's elements must compose like the
group: M_b M_a = M_(a b) for every pair, and each M_g has order dividing g's order (eigenvalues
on the unit circle at multiples of 1/order(g) of a turn). Where the inputs are some elements
only (max_moved_points: S5 from swaps), an element's M is the product of its shortest word's
input maps, so the check asks whether the inputs' maps generate a representation. The table
gives how far each run is from that (the largest error over pairs, in the spectral norm; for the
whole state and for each head alone) and the eigenvalues of the generators' transitions; the
runs' extrapolation (from result.json) beside it. A zero error is sufficient for tracking at
every length, not necessary: the state can carry directions the readout ignores, and a token
may reset them (the identity token's column shows what it moves). So a large error alone
explains no failure.
"""

import fnmatch
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deltajax import study
from deltajax.data.state_tracking import input_elements, make_group
from deltajax.train import checkpoint
from experiments.state_tracking import build_model


def token_transitions(model, params, vocab_size: int) -> np.ndarray:
    """M for every token and head of a one-layer delta-rule model: float64 [vocab, heads, K, K],
    M[t, h] @ S_h (+ a term free of S) is head h's state after token t."""
    if model.config.num_layers != 1:
        raise ValueError(f"token_transitions reads one layer's state; the model has "
                         f"num_layers={model.config.num_layers}")
    cache = model.init_cache(1, 1)
    if set(cache[0]) != {"state"}:
        raise ValueError(f"token_transitions needs a state that depends on the current token "
                         f"only (no short convolutions); the cache holds {sorted(cache[0])}")
    state = cache[0]["state"]  # [1, H, K, V]

    def after(token, state):
        _, new = model.apply({"params": params}, token[None, None], ({"state": state},),
                             method=type(model).extend)
        return new[0]["state"]

    jacobian = jax.jit(jax.vmap(jax.jacrev(after, argnums=1), in_axes=(0, None)))
    full = np.asarray(jacobian(jnp.arange(vocab_size), state), np.float64)
    # [t, 1, H, K, V, 1, H, K, V]: the update acts on K alike for every column v; read v = 0.
    heads = range(state.shape[1])
    return np.stack([full[:, 0, h, :, 0, 0, h, :, 0] for h in heads], axis=1)


def group_law_error(maps: np.ndarray, table: np.ndarray) -> float:
    """max over elements a, b of |M_b M_a - M_(a b)| (spectral norm): 0 for a representation
    of the group acting on the state as the running product does (a first, then b)."""
    n = len(table)
    return max(np.linalg.norm(maps[b] @ maps[a] - maps[table[a, b]], 2)
               for a in range(n) for b in range(n))


def element_maps(input_maps: dict, table: np.ndarray) -> np.ndarray:
    """M for every element from the inputs' maps {element: M}: the input's own map, or the
    product along a shortest word of inputs reaching the element (a first, then b: M_b M_a).
    Raises a ValueError if the inputs do not generate the group."""
    maps = dict(input_maps)
    frontier = list(input_maps)
    while frontier:
        reached = []
        for a in frontier:
            for g, m in input_maps.items():
                product = int(table[a, g])
                if product not in maps:
                    maps[product] = m @ maps[a]
                    reached.append(product)
        frontier = reached
    if len(maps) != len(table):
        raise ValueError(f"the inputs {sorted(input_maps)} reach {len(maps)} of the group's "
                         f"{len(table)} elements")
    return np.stack([maps[g] for g in range(len(table))])


def element_orders(table: np.ndarray) -> np.ndarray:
    """The order of each element of the group."""
    orders = []
    for g in range(len(table)):
        power, order = g, 1
        while power != 0:
            power, order = table[power, g], order + 1
        orders.append(order)
    return np.array(orders)


def moving_eigenvalues(transition_KK: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """The eigenvalues a token moves (those not 1: its keys' directions), by angle."""
    values = np.linalg.eigvals(transition_KK)
    values = values[np.abs(values - 1) > tol]
    return values[np.argsort(np.angle(values))]


def describe(values: np.ndarray) -> str:
    """Eigenvalues as modulus and angle in turns, "0.998 at 0.333"; conjugate pairs once."""
    kept = [v for v in values if v.imag >= -1e-9]
    return ", ".join(f"{abs(v):.3f} at {np.angle(v) / (2 * np.pi):.3f}" for v in kept) or "none"


def analyse_run(run_dir: str) -> dict:
    """The transitions of a finished run's last checkpoint, checked against its group."""
    with open(os.path.join(run_dir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    group = make_group(config.task.name)
    model = build_model(config)
    directory = os.path.join(run_dir, "checkpoints")
    with checkpoint.reader(directory) as manager:
        step = manager.latest_step()
    if step is None:
        raise ValueError(f"{run_dir}: no checkpoint to read")
    params = checkpoint.load_params(directory, step)
    per_head = token_transitions(model, params, group.order)  # [G, H, K, K]
    inputs = input_elements(group, config.task.get("max_moved_points", 0))
    orders = element_orders(group.table)
    # Per head (one head can track while another does something else); the whole state's
    # maps are block-diagonal, so its errors are the heads' largest.
    head_maps = [element_maps({int(g): per_head[g, h] for g in inputs}, group.table)
                 for h in range(per_head.shape[1])]
    head_errors = [group_law_error(maps, group.table) for maps in head_maps]
    order_error = max(np.linalg.norm(np.linalg.matrix_power(maps[g], int(orders[g]))
                                     - np.eye(len(maps[g])), 2)
                      for maps in head_maps for g in range(group.order))
    # The generators shown: the inputs of largest order (Z3: 1 and 2; S3: the 3-cycles; S5
    # from swaps: two swaps).
    largest = orders[inputs].max()
    shown = [int(g) for g in inputs if orders[g] == largest][:2]
    result = study.read_json(os.path.join(run_dir, "result.json"), {})
    return {"name": config.name, "group": group.name, "step": int(step),
            "group_law_error": float(max(head_errors)),
            "head_group_law_errors": [float(e) for e in head_errors],
            "order_error": float(order_error),
            "generators": {int(g): {"order": int(orders[g]),
                                    "eigenvalues": [describe(moving_eigenvalues(per_head[g, h]))
                                                    for h in range(per_head.shape[1])]}
                           for g in shown},
            # A representation maps the identity to I: what its token moves instead.
            "identity": [describe(moving_eigenvalues(per_head[0, h]))
                         for h in range(per_head.shape[1])],
            "accuracy_by_length": result.get("accuracy_by_length", {})}


def markdown(analyses: list) -> str:
    lines = ["| run | step | accuracy by position bin (%) | group-law error | per head | "
             "order error | "
             "generators and identity: eigenvalues moved, per head (modulus at angle, turns) |",
             "|---|---:|---|---:|---|---:|---|"]
    for a in analyses:
        accuracy = " / ".join(f"{100 * v:.1f}" for v in a["accuracy_by_length"].values())
        generators = "<br>".join(
            f"{g} (order {d['order']}): " + "; ".join(f"head {h}: {e}" for h, e in
                                                      enumerate(d["eigenvalues"]))
            for g, d in a["generators"].items())
        identity = "; ".join(f"head {h}: {e}" for h, e in enumerate(a["identity"]))
        lines.append(f"| {a['name']} | {a['step']} | {accuracy or '-'} | "
                     f"{a['group_law_error']:.3f} | "
                     f"{' / '.join(f'{e:.3f}' for e in a['head_group_law_errors'])} | "
                     f"{a['order_error']:.3f} | {generators}"
                     f"<br>identity: {identity} |")
    return "\n".join(lines)


def analyse(workdir: str, only: str) -> list:
    """analyse_run for every run under workdir/runs whose name matches one of the
    comma-separated globs in `only`, in name order."""
    runs = os.path.join(workdir, "runs")
    if not os.path.isdir(runs):
        raise ValueError(f"--workdir={workdir!r} has no runs/ folder")
    patterns = [p for p in only.split(",") if p]
    names = sorted(n for n in os.listdir(runs) if any(fnmatch.fnmatch(n, p) for p in patterns))
    if not names:
        raise ValueError(f"--only={only!r} matches no run in {runs}")
    return [analyse_run(os.path.join(runs, n)) for n in names]


def main(argv) -> None:
    del argv
    from absl import flags
    f = flags.FLAGS
    analyses = analyse(f.workdir, f.only)
    text = (f"# State tracking: the learned transitions\n\n{study.measured_on()}\n\n```bash\n"
            f"{study.command_line('experiments.state_tracking_transitions')}\n```\n\n"
            f"{__doc__.split(chr(10) + chr(10), 2)[2].strip()}\n\n{markdown(analyses)}\n")
    print(text)
    if f.out:
        study.write_text(f.out + ".md", text)
        study.write_json(f.out + ".json", analyses)


if __name__ == "__main__":
    from absl import app, flags
    flags.DEFINE_string("workdir", "runs/state-tracking-cpu-seeds", "A state-tracking study's "
                        "workdir (its runs/ folder holds the runs).")
    flags.DEFINE_string("only", "Z3-*,S3-*",
                        "Comma-separated globs of run names (one-layer runs of a group task, "
                        "no short convolutions).")
    flags.DEFINE_string("out", None, "Also write <out>.md and <out>.json.")
    app.run(main)
