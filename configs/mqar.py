"""The MQAR recall study (Arora et al. 2023; Yang et al. 2024, DeltaNet, Fig. 2) as presets.

    python -m experiments.mqar --config=configs/mqar.py:cpu --workdir=runs/mqar-cpu

The presets are PRESETS below (`--help` lists them): `paper` has vocab 8192 and 100k training
sequences per setting. Fields shared by every run are flags
(--config.model.delta_rule.backend=recurrent, --config.train.num_steps=100);
--config.only='deltanet-*,attention-*' runs part of the sweep.
"""

import ml_collections
import numpy as np

from deltajax.study import named_run, new_config, run_id

# A preset -> one line for --help.
PRESETS = {
    "paper": "the published grid, every mixer with and without short conv, 4 lrs, 2 seeds; GPU/TPU",
    "cpu_sweep": "conv ablation at (128, 16); make-run mixers at (64, 4) to (256, 16), "
                 "lr 1e-2, d 32; 2 seeds",
    "cpu_hard": "(512, 64): DeltaNet with and without conv, d_model 128 and 256; 2 cores, hours",
    "cpu": "`make run`: DeltaNet, linear attention (L2 and elu+1 maps), attention+conv; minutes",
    "smoke": "seconds, for the tests",
}
# (seq_len, num_kv_pairs) of the published grid.
PAPER_SETTINGS = ((64, 4), (128, 8), (256, 16), (512, 64))
PAPER_LEARNING_RATES = tuple(float(lr) for lr in np.logspace(-4, -2, 4))
# The CPU presets' first learning rate: the grid's third, fixed before any CPU run.
CPU_LEARNING_RATE = PAPER_LEARNING_RATES[2]
# `make run`'s, the grid's fourth: at the third, attention+conv passed 99% at (128, 16) with one
# seed of two in cpu_sweep; at the fourth, cpu_sweep has every make-run mixer with both seeds.
MAKE_RUN_LEARNING_RATE = PAPER_LEARNING_RATES[3]
SEEDS = (0, 1)
MAKE_RUN_MIXERS = ("deltanet", "linear_attention", "linear_attention_elu", "attention_conv")
# A mixer of the study -> its model fields. A ModelConfig rejects an option group that none of
# its layers uses, so each variant drops the base model's groups it does not use. The
# recurrent mixers carry FLA's short convolution by default; `_noconv` removes it. Attention
# is plain by default; `_conv` gives it the same front end (as Zoology's newer configs do).
MIXERS = {
    "deltanet": dict(mixer="deltanet", attention=None),
    "deltanet_noconv": dict(mixer="deltanet", conv=dict(enabled=False), attention=None),
    "gated_deltanet": dict(mixer="gated_deltanet", attention=None),
    "gated_deltanet_noconv": dict(mixer="gated_deltanet", conv=dict(enabled=False),
                                  attention=None),
    "linear_attention": dict(mixer="linear_attention", delta_rule=None, attention=None),
    "linear_attention_noconv": dict(mixer="linear_attention", conv=dict(enabled=False),
                                    delta_rule=None, attention=None),
    # Katharopoulos et al.'s positive feature map elu(x) + 1 instead of L2-normalised q and k.
    "linear_attention_elu": dict(mixer="linear_attention", delta_rule=None, attention=None,
                                 linear_attention=dict(feature_map="elu_plus_one")),
    "attention": dict(mixer="attention", delta_rule=None),
    "attention_conv": dict(mixer="attention", delta_rule=None, attention=dict(conv_size=4)),
    "swa": dict(mixer="swa", delta_rule=None),
    "swa_conv": dict(mixer="swa", delta_rule=None, attention=dict(conv_size=4)),
}
def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    c = new_config("mqar", preset, PRESETS)

    c.task = ml_collections.ConfigDict()
    c.task.vocab_size = 8192
    c.task.num_train_examples = 100_000
    c.task.num_eval_examples = 3_072   # Zoology's 3,000, rounded to whole batches
    c.task.power_a = 0.01
    c.task.seq_len = 64                # set per run by the sweep, as is num_kv_pairs
    c.task.num_kv_pairs = 4

    # Zoology's MQAR models: two layers, no MLP. One head, so a layer's state is d_model^2.
    c.model = ml_collections.ConfigDict(dict(
        d_model=64, num_layers=2, num_heads=1, mixer="deltanet", mlp=None, dtype="float32",
        conv=None,                                        # the mixers' default short conv
        delta_rule=dict(backend="auto", chunk_size=64),   # "recurrent" (the lax.scan), "chunked"
        attention=dict(window_size=32,                    # "swa": tokens each position sees
                       conv_size=None),                   # set by the *_conv mixers
        linear_attention=None))                           # set by linear_attention_elu

    # deltajax.train.fit's fields; the study sets eval.num_batches to cover the eval set.
    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 25_000         # 64 epochs of 100k sequences at batch 256
    c.train.global_batch_size = 256
    c.train.optimizer = ml_collections.ConfigDict(dict(learning_rate=1e-3, weight_decay=0.1,
                                                       b2=0.999))
    c.train.schedule = ml_collections.ConfigDict(dict(name="cosine", warmup_steps=500))
    c.train.eval = ml_collections.ConfigDict(dict(
        every_steps=500, early_stop_metric="eval/accuracy", early_stop_value=0.99))
    c.train.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, max_to_keep=1))
    c.train.logging = ml_collections.ConfigDict(dict(every_steps=100))

    mixers, d_models = tuple(MIXERS), (64, 128, 256, 512)
    settings, learning_rates, seeds = PAPER_SETTINGS, PAPER_LEARNING_RATES, SEEDS
    if preset in ("cpu", "cpu_sweep", "cpu_hard"):
        _shrink_for_cpu(c)
        learning_rates = (CPU_LEARNING_RATE,)
    if preset == "cpu":
        # Every mixer with the short conv: attention without it does not learn recall within
        # the budget (the cpu_sweep preset measures that).
        mixers, d_models, settings, seeds = MAKE_RUN_MIXERS, (64,), ((128, 16),), (0,)
        learning_rates = (MAKE_RUN_LEARNING_RATE,)
    elif preset == "cpu_sweep":
        mixers = tuple(m for m in MIXERS if not m.startswith("swa"))
        d_models, settings = (64,), ((128, 16),)
    elif preset == "cpu_hard":
        mixers, d_models, settings = ("deltanet", "deltanet_noconv"), (128, 256), ((512, 64),)
        c.task.vocab_size = 1024  # MQAR needs a vocabulary larger than seq_len
    elif preset == "smoke":
        _shrink_for_cpu(c)
        mixers, d_models, settings, learning_rates, seeds = ("deltanet", "attention"), (16,), \
            ((32, 4),), (3e-3,), (0,)
        c.task.update(num_train_examples=64, num_eval_examples=16)
        c.train.update(num_steps=4, global_batch_size=8)
        c.train.schedule.warmup_steps = 1
        c.train.eval.every_steps = 2
        c.train.checkpoint.every_steps = 2
    c.sweep = sweep(mixers, d_models, settings, learning_rates, seeds)
    if preset == "cpu_sweep":  # twice the pairs: 32 of a head's 64 key dimensions
        # and, added once linear attention and attention+conv had stayed at chance there, the
        # grid's next learning rate for the same three mixers (Zoology's protocol: the best of
        # one grid per mixer).
        c.sweep += sweep(MAKE_RUN_MIXERS, d_models, ((128, 32),),
                         (*learning_rates, MAKE_RUN_LEARNING_RATE), seeds)
        # Added after those: `make run`'s cell at its learning rate, and at half the width,
        # where the 16 pairs fill half of a head's 32 key dimensions.
        c.sweep += sweep(MAKE_RUN_MIXERS, (32, 64), ((128, 16),), (MAKE_RUN_LEARNING_RATE,),
                         seeds)
        # and then the published cells short of (512, 64), which train in minutes here.
        c.sweep += sweep(MAKE_RUN_MIXERS, d_models, PAPER_SETTINGS[:3],
                         (MAKE_RUN_LEARNING_RATE,), seeds)
    return c


def sweep(mixers, d_models, settings, learning_rates, seeds=(0,)) -> list:
    """One run per (seed, learning rate, d_model, setting, mixer). Seeds, then learning rates
    outermost: a sweep stopped part-way has covered every cell at the first seed and rates."""
    unknown = sorted(set(mixers) - set(MIXERS))
    if unknown:
        raise ValueError(f"configs/mqar.py mixers: {unknown} are not among {sorted(MIXERS)}")
    runs = []
    for seed in seeds:
        for lr in learning_rates:
            for d_model in d_models:
                for seq_len, kv in settings:
                    for mixer in mixers:
                        name = run_id(mixer, T=seq_len, kv=kv, d=d_model, lr=f"{lr:.1e}",
                                      seed=seed)
                        runs.append(named_run(
                            name, seed=seed, model=dict(MIXERS[mixer], d_model=d_model),
                            task=dict(seq_len=seq_len, num_kv_pairs=kv),
                            train=dict(optimizer=dict(learning_rate=float(lr)))))
    return runs


def _shrink_for_cpu(c):
    """Vocabulary, data and step budget for two CPU cores; every mixer gets the same recipe.

    The vocabulary still exceeds every seq_len; logits over 8192 tokens would cost more than
    the model. At most 1500 steps of batch 32 (48k sequences, 2.4 epochs), early stop at 99%."""
    c.task.update(vocab_size=512, num_train_examples=20_000, num_eval_examples=256)
    c.train.update(num_steps=1500, global_batch_size=32)
    c.train.schedule.warmup_steps = 50
    c.train.eval.every_steps = 100
    c.train.checkpoint.every_steps = 100
    c.train.logging.every_steps = 50
