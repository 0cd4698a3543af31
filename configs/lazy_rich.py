"""Lazy-to-rich grokking (Kumar et al., ICLR 2024): python -m experiments.lazy_rich.

    --config=configs/lazy_rich.py:<preset>, the presets in PRESETS below (`--help` lists them)

`--config.only='a4-*'` runs part of the sweep (alpha = 4).
"""

import ml_collections

from deltajax.study import named_run, run_id

# A preset -> one line for --help.
PRESETS = {
    "kumar": "Kumar et al.: D=100, P=550 train / 1000 test, N=500; alpha 1/4-64 x eps 0.02, 0.25",
    "smoke": "seconds, for the tests",
}


def get_config(preset: str = "kumar") -> ml_collections.ConfigDict:
    if preset not in PRESETS:
        raise ValueError(f"configs/lazy_rich.py preset must be one of {tuple(PRESETS)}, got "
                         f"{preset!r}")
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.seed = 0
    c.only = ""
    c.task = ml_collections.ConfigDict(dict(
        dim=100,                      # D
        num_train=550,                # P
        num_test=1000,
        drop_fraction=0.1))           # a loss "has dropped" below this fraction of its start
    c.model = ml_collections.ConfigDict(dict(
        width=500,                    # N hidden units
        alpha=1.0,                    # output scale; set per run by the sweep
        eps=0.25))                    # phi(z) = z + eps/2 z^2; set per run by the sweep
    # Full-batch gradient descent, the study's own loop (not deltajax.train.fit).
    c.train = ml_collections.ConfigDict(dict(
        lr0=50.0,                     # learning rate = lr0 * N / alpha^2 (stable at alpha=1/4)
        num_steps=20_000,
        num_eval_points=60))          # log-spaced in steps
    alphas, epss = tuple(2.0 ** k for k in range(-2, 7, 2)), (0.02, 0.25)  # alpha 1/4 .. 64
    if preset == "smoke":
        c.task.update(dim=8, num_train=20, num_test=30)
        c.model.width = 16
        c.train.update(lr0=1.0, num_steps=20, num_eval_points=5)
        alphas, epss = (0.5, 4.0), (0.25,)
    c.sweep = [named_run(run_id(a=alpha, e=eps), model=dict(alpha=alpha, eps=eps))
               for eps in epss for alpha in alphas]
    return c
