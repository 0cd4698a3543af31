"""Grokking on modular arithmetic (python -m experiments.grokking_modular).

    --config=configs/grokking.py:<preset>           one run: PRESETS below
    --config=configs/grokking.py:<preset>,<sweep>   a sweep over one field: SWEEPS below

A sweep keeps everything else as in the preset (e.g. `cpu,mixer`); `--help` lists both.
`--config.only='deltanet-*'` runs part of a sweep (one mixer).
"""

import ml_collections

from deltajax.study import named_run, run_id

# A preset -> one line for --help.
PRESETS = {
    "nanda": "Nanda et al. 2023: p=113, a+b, 30% train, 1 layer, full batch",
    "cpu": "the same recipe at p=53 and 50% train: what a shared 2-core CPU trains in minutes",
    "power": "Power et al. 2022: p=97, a/b, 2 layers, batch 512, 1e5 steps",
    "smoke": "seconds, for the tests",
}
# A sweep -> one line for --help (the smoke preset sweeps fewer values).
SWEEPS = {
    "mixer": "attention, deltanet, gated_deltanet",
    "weight_decay": "0, 0.1, 1",
    "train_fraction": "0.3, 0.5",
}
# A mixer -> its model fields. Sequences are 3 tokens: a delta-rule chunk of 4 wastes little.
# The delta-rule mixers read no attention options (a preset may set them for attention).
MIXERS = {
    "attention": dict(mixer="attention"),
    "deltanet": dict(mixer="deltanet", delta_rule=dict(chunk_size=4), attention=None),
    "gated_deltanet": dict(mixer="gated_deltanet", delta_rule=dict(chunk_size=4), attention=None),
}
# The `delta` sweep: one factor changed from the preset's recipe per run, every run with the same
# step cap (DELTA_STEPS), chosen before any of them ran. name -> (mixer, overrides).
DELTA_STEPS = 4000
DELTA_VARIANTS = {
    "attention": ("attention", {}),                  # the reference, same budget
    "deltanet": ("deltanet", {}),                    # longer training alone (2x the mixer sweep)
    "deltanet-lr3e-3": ("deltanet", dict(train=dict(optimizer=dict(learning_rate=3e-3)))),
    # FLA leaves norm scales and the decay's A_log and dt_bias out of weight decay.
    "gated_deltanet-fla_wd": ("gated_deltanet", dict(train=dict(optimizer=dict(
        no_decay_names=("scale", "A_log", "dt_bias"))))),
    "deltanet-neg": ("deltanet", dict(model=dict(delta_rule=dict(allow_neg_eigval=True)))),
    "deltanet-1head": ("deltanet", dict(model=dict(num_heads=1))),
    # Added after the six above ran, once DeltaNet grokked at lr 3e-3: attention at the same lr.
    "attention-lr3e-3": ("attention", dict(train=dict(optimizer=dict(learning_rate=3e-3)))),
}
SWEEPS["delta"] = ", ".join(DELTA_VARIANTS) + f" ({DELTA_STEPS} steps each)"


def get_config(arg: str = "nanda") -> ml_collections.ConfigDict:
    preset, _, sweep_name = arg.partition(",")
    if preset not in PRESETS:
        raise ValueError(f"configs/grokking.py preset must be one of {tuple(PRESETS)} (optionally "
                         f"',<sweep>'), got {preset!r}")
    c = _nanda()
    c.preset = arg
    sweeps = dict(weight_decay=(0.0, 0.1, 1.0), train_fraction=(0.3, 0.5),
                  mixer=("attention", "deltanet", "gated_deltanet"), delta=tuple(DELTA_VARIANTS))
    if preset in ("nanda", "power"):
        # The authors' positional scheme: learned absolute positions, no RoPE (the `cpu` preset
        # keeps RoPE and the 0.02 embedding draw its committed tables were made with).
        c.model.update(position_embedding=3, attention=dict(rope=False))
    if preset == "nanda":
        c.model.embed_init_std = 128 ** -0.5  # Nanda's W_E, W_pos: randn / sqrt(d_model)
    if preset == "cpu":
        # Nanda's recipe (optimizer, model) on a smaller table: ~0.3 s per full-batch step here.
        c.task.update(p=53, train_fraction=0.5, eval_every=50, segment_steps=500,
                      stop_after_grok=250)
        c.train.num_steps = 2000      # the cap: what the shared CPU affords per run
        if sweep_name == "delta":
            c.train.num_steps = DELTA_STEPS
    elif preset == "power":
        c.task.update(p=97, operation="/", train_fraction=0.5, eval_every=500,
                      segment_steps=5000, stop_after_grok=5000)
        c.train.num_steps = 100_000
        c.train.global_batch_size = 512  # min(512, n_train / 2): 512 for any fraction > 0.11
        c.train.data.shuffle = True
        c.model.update(num_layers=2, norm="rmsnorm")
    elif preset == "smoke":
        c.task.update(p=7, train_fraction=0.5, eval_every=2, segment_steps=4, stop_after_grok=100)
        c.train.num_steps = 6
        c.train.schedule.warmup_steps = 2
        c.train.logging.every_steps = 2
        c.model.update(d_model=16, num_heads=2, mlp_hidden_dim=32)
        sweeps = dict(weight_decay=(0.0, 1.0), train_fraction=(0.5,),
                      mixer=("attention", "deltanet"), delta=("deltanet-neg",))
    if sweep_name and sweep_name not in sweeps:
        raise ValueError(f"configs/grokking.py sweep must be one of {tuple(sweeps)}, got "
                         f"{sweep_name!r}")
    c.sweep = sweep(c, sweep_name, sweeps.get(sweep_name, ()))
    return c


def _nanda() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.only = ""
    c.train = ml_collections.ConfigDict(dict(
        num_steps=20_000,             # a cap: the run stops once test accuracy has grokked
        global_batch_size=0,          # 0: full batch (the whole train split every step)
        optimizer=dict(learning_rate=1e-3, weight_decay=1.0, b1=0.9, b2=0.98, grad_clip_norm=0.0,
                       no_decay_names=()),  # torch AdamW decays every parameter, embeddings too
        schedule=dict(name="constant", warmup_steps=10),
        logging=dict(every_steps=100, progress_bar=False),
        # The whole table is read every step: held in memory it costs 0.4 ms a batch, not
        # grain's ~80 ms (deltajax/data/in_memory.py; same batches and resume position).
        data=dict(shuffle=False, in_memory=True, prefetch_threads=1, prefetch_buffer=2)))
    # The residual stream has no LayerNorm and a ReLU MLP. Positions: RoPE and the 0.02
    # embedding draw here; the nanda and power presets set the authors' (learned positions).
    # The vocabulary is task.p + 1 (the residues and '=').
    c.model = ml_collections.ConfigDict(dict(
        d_model=128, num_layers=1, num_heads=4, mixer="attention", mlp="relu",
        mlp_hidden_dim=512, norm=None, tie_embeddings=False, delta_rule=None, attention=None,
        position_embedding=None, embed_init_std=0.02))
    c.task = ml_collections.ConfigDict(dict(
        p=113, operation="+", train_fraction=0.3, split_seed=0,
        eval_every=100,               # checkpoint interval; test metrics and weight norm are
                                      # computed from every checkpoint
        segment_steps=1000,           # fit() runs this many steps per call between analyses
        threshold=0.99,               # accuracy that counts as learned (train) or grokked (test)
        stop_after_grok=500,          # steps to keep training once test accuracy passed it
        spectrum_top_k=5))            # key frequencies reported in the table
    return c


def sweep(c, name: str, values) -> list:
    """One run per value of the swept field (one run, the preset's, when name is empty)."""
    if not name:
        return [_run(c, c.model.mixer, c.task.train_fraction, c.train.optimizer.weight_decay)]
    runs = []
    for value in values:
        if name == "delta":
            mixer, overrides = DELTA_VARIANTS[value]
            runs.append(_run(c, mixer, c.task.train_fraction, c.train.optimizer.weight_decay,
                             variant=value, overrides=overrides))
        elif name == "mixer":
            runs.append(_run(c, value, c.task.train_fraction, c.train.optimizer.weight_decay))
        elif name == "weight_decay":
            runs.append(_run(c, c.model.mixer, c.task.train_fraction, float(value)))
        else:
            runs.append(_run(c, c.model.mixer, float(value), c.train.optimizer.weight_decay))
    return runs


def _run(c, mixer: str, train_fraction: float, weight_decay: float, variant: str = "",
         overrides: dict = None) -> dict:
    """Names the swept values, e.g. attention-p113-add-f0.3-wd1 (a `delta` variant's name
    first: deltanet-lr3e-3-p53-add-f0.5-wd1)."""
    op = {"+": "add", "-": "sub", "/": "div"}.get(c.task.operation, "poly")
    name = run_id(variant or mixer, f"p{c.task.p}", op, f=train_fraction, wd=weight_decay)
    overrides = overrides or {}
    model = {**MIXERS[mixer], **overrides.get("model", {})}
    if "delta_rule" in overrides.get("model", {}):
        model["delta_rule"] = {**MIXERS[mixer]["delta_rule"], **overrides["model"]["delta_rule"]}
    optimizer = {"weight_decay": weight_decay,
                 **overrides.get("train", {}).get("optimizer", {})}
    return named_run(name, model=model, task=dict(train_fraction=train_fraction),
                     train=dict(optimizer=optimizer))
