"""The trainer's ConfigDict schema, its defaults, and the checks run before any compute.

Studies start from `default_config()` and override fields; `merge_with_defaults` rejects keys that
are not in the schema (a typo would otherwise be silently ignored) and `validate_config` every
value that cannot work, naming its full path and what is allowed (FIELD_RULES covers every field).
"""

import math
import os

import ml_collections

SCHEDULES = ("constant", "cosine", "wsd", "wsm")
DECAY_SHAPES = ("linear", "cosine", "1-sqrt")
COMPUTE_DTYPES = ("float32", "bfloat16")
PARALLELISM = ("jit", "pmap")
CPU_COLLECTIVES = ("gloo", "mpi")  # jax_cpu_collectives_implementation


# What flash-linear-attention's training leaves undecayed (its param grouping: biases, norm and
# embedding weights, and the parameters its layers mark _no_weight_decay, the decay's A_log and
# dt_bias). Convolution and linear kernels decay. "dt_bias" is its own name here: decay_mask
# matches whole path components, so "bias" does not cover it.
FLA_NO_DECAY_NAMES = ("bias", "scale", "embedding", "A_log", "dt_bias")


def default_config() -> ml_collections.ConfigDict:
    """Every field the trainer reads, with its default. Fields set to None are optional."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_steps = 100
    c.global_batch_size = 8           # sequences per step over all hosts and devices
    c.grad_accum_steps = 1            # microbatches per step; the update equals the full batch's
    c.compute_dtype = "float32"       # "bfloat16": forward/backward in bf16, params stay float32

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 1e-3  # peak learning rate
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.1    # decoupled (AdamW)
    # Parameters whose path contains one of these names get no weight decay: FLA's groups
    # (biases, norms, embeddings, the decay's A_log and dt_bias).
    c.optimizer.no_decay_names = FLA_NO_DECAY_NAMES
    c.optimizer.grad_clip_norm = 1.0  # global-norm clipping; None or 0 turns it off

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "cosine"        # one of SCHEDULES
    c.schedule.warmup_steps = 0
    c.schedule.final_lr_fraction = 0.0  # lr at the end of a decay, as a fraction of the peak
    c.schedule.decay_fraction = 0.2   # WSD: the last fraction of num_steps spent decaying
    c.schedule.decay_shape = "1-sqrt"  # WSD decay: one of DECAY_SHAPES

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 50     # 0 turns checkpointing off
    c.checkpoint.max_to_keep = 3
    c.checkpoint.async_save = True
    c.checkpoint.best_metric = ml_collections.config_dict.placeholder(str)  # e.g. "eval/loss"
    c.checkpoint.best_mode = "min"
    c.checkpoint.restore_dir = ml_collections.config_dict.placeholder(str)  # start from this run

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 0            # 0: no evaluation during training
    c.eval.num_batches = 4
    # Stop when this eval metric reaches early_stop_value (>= with early_stop_mode "max", <= with
    # "min"), e.g. "eval/accuracy" and 0.99; a checkpoint is saved at the stopping step.
    c.eval.early_stop_metric = ml_collections.config_dict.placeholder(str)
    c.eval.early_stop_value = ml_collections.config_dict.placeholder(float)
    c.eval.early_stop_mode = "max"

    c.logging = ml_collections.ConfigDict()
    c.logging.every_steps = 10
    c.logging.histogram_every_steps = 0  # 0: no parameter histograms
    c.logging.progress_bar = True     # on a TTY outside CI; otherwise fit logs status lines

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1                  # devices on the data axis; -1: all that model leaves
    c.mesh.model = 1                  # devices on the model axis (matrices split on last dim)
    c.mesh.parallelism = "jit"        # "jit" (Mesh + NamedSharding) or "pmap"

    c.data = ml_collections.ConfigDict()
    # The synthetic copy task train_and_evaluate uses when no source is passed.
    c.data.seq_len = 32
    c.data.vocab_size = 16
    c.data.num_train_examples = 4096
    c.data.num_eval_examples = 256
    c.data.shuffle = True
    c.data.num_epochs = ml_collections.config_dict.placeholder(int)  # None: repeat forever
    c.data.prefetch_threads = 2
    c.data.prefetch_buffer = 4
    # True: read the whole train source into host memory once and cut every batch from it with
    # one gather (deltajax.data.InMemoryIterator): the same batches, order and checkpointed
    # position as grain, without grain's per-example cost (a full-batch grokking step of 3,831
    # examples: 0.4 ms instead of 81 ms). An explicit choice, not a size threshold: reading a
    # source whole costs what its __getitem__ costs (3.5 s for 20k MQAR examples) and holds it in
    # memory. For small sources read every step; prefetch_* are then unused.
    c.data.in_memory = False

    # Keyword arguments of deltajax.models.ModelConfig, used by train_and_evaluate when no model
    # is passed; checked by ModelConfig, not here.
    c.model = ml_collections.ConfigDict(
        dict(vocab_size=16, d_model=32, num_layers=2, num_heads=2, mixer="deltanet", mlp=None))

    c.distributed = ml_collections.ConfigDict()
    c.distributed.initialize = False  # call jax.distributed.initialize() (multi-host)
    c.distributed.coordinator_address = ml_collections.config_dict.placeholder(str)
    c.distributed.num_processes = ml_collections.config_dict.placeholder(int)
    c.distributed.process_id = ml_collections.config_dict.placeholder(int)
    c.distributed.cpu_collectives = ml_collections.config_dict.placeholder(str)  # "gloo" on CPU
    return c


def merge_with_defaults(config) -> ml_collections.ConfigDict:
    """The defaults overridden by `config` (a ConfigDict or dict, possibly already merged);
    a key the schema lacks raises naming its path."""
    overrides = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    merged = default_config()
    _override(merged, overrides, prefix="")
    return merged


def _override(schema, overrides, prefix):
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if key not in schema:
            raise ValueError(f"config.{path} is not a trainer config field; known fields at "
                             f"this level: {sorted(schema.keys())}")
        if path == "model":  # free-form: replaced whole, checked by ModelConfig
            schema[key] = ml_collections.ConfigDict(value)
        elif isinstance(schema[key], ml_collections.ConfigDict):
            if not isinstance(value, dict):
                raise ValueError(f"config.{path} must be a ConfigDict of fields, got {value!r}")
            _override(schema[key], value, prefix=f"{path}.")
        else:
            if isinstance(value, dict):
                raise ValueError(f"config.{path} must be a value, not a ConfigDict")
            if isinstance(schema[key], tuple) and isinstance(value, list):
                value = tuple(value)
            try:
                schema[key] = value
            except TypeError as error:
                raise ValueError(f"config.{path}: {error}") from None


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int, num_processes: int):
    """Raise a ValueError naming the first field (its full path and allowed values) that cannot
    work, alone or with the fields it depends on, on these devices and processes.

    `config` is merged (merge_with_defaults). Checks that need the model, the data or the disk
    beyond restore_dir's existence are deltajax.train.preflight.check_run's."""
    for path, (allowed, accepts) in FIELD_RULES.items():
        value = _get(config, path)
        if not accepts(value):
            raise ValueError(f"config.{path} must be {allowed}, got {value!r}")
    _check_schedule(config)
    _check_early_stop(config.eval)
    best = config.checkpoint.best_metric
    if best is not None and not config.eval.every_steps:
        raise ValueError(f"config.checkpoint.best_metric={best!r} needs config.eval.every_steps "
                         "> 0 (best checkpoints are saved after an evaluation)")
    d = config.distributed
    if d.process_id is not None and d.num_processes is not None and \
            d.process_id >= d.num_processes:
        raise ValueError(f"config.distributed.process_id must be in [0, config.distributed."
                         f"num_processes={d.num_processes}), got {d.process_id}")
    data, model = mesh_shape(config, num_devices)
    batch = config.global_batch_size
    if batch % config.grad_accum_steps:
        raise ValueError(f"config.global_batch_size={batch} must be divisible by "
                         f"config.grad_accum_steps={config.grad_accum_steps}")
    if (batch // config.grad_accum_steps) % data:
        raise ValueError(f"config.global_batch_size={batch} / grad_accum_steps="
                         f"{config.grad_accum_steps} must be divisible by the data axis "
                         f"(config.mesh.data = {data} devices)")
    if batch % num_processes:
        raise ValueError(f"config.global_batch_size={batch} must be divisible by the "
                         f"{num_processes} processes")
    if config.mesh.parallelism == "pmap" and model != 1:
        raise ValueError(f"config.mesh.model must be 1 with mesh.parallelism='pmap', got {model}")
    restore_dir = config.checkpoint.restore_dir
    if restore_dir is not None and not os.path.isdir(restore_dir):
        raise ValueError(f"config.checkpoint.restore_dir={restore_dir!r} is not a directory")


def _check_schedule(config):
    """warmup_steps against num_steps: constant and wsm only warm up; cosine needs a step left
    to decay; wsd's warmup must end before its decay starts (as schedules.wsd requires)."""
    s, steps = config.schedule, config.num_steps
    if s.name == "cosine":
        limit, why = steps - 1, f"< config.num_steps={steps}: the cosine needs a step to decay"
    elif s.name == "wsd":
        decay_start = steps - max(int(round(s.decay_fraction * steps)), 1)
        limit, why = decay_start, (f"<= {decay_start}, where the decay of config.schedule."
                                   f"decay_fraction={s.decay_fraction} of config.num_steps="
                                   f"{steps} starts")
    else:
        limit, why = steps, f"<= config.num_steps={steps}"
    if s.warmup_steps > limit:
        raise ValueError(f"config.schedule.warmup_steps must be in [0, {max(limit, 0)}] with "
                         f"config.schedule.name={s.name!r} ({why}), got {s.warmup_steps}")


def _check_early_stop(eval_config):
    metric, value = eval_config.early_stop_metric, eval_config.early_stop_value
    if metric is None and value is None:
        return
    if metric is None or value is None:
        raise ValueError("config.eval.early_stop_metric and config.eval.early_stop_value are set "
                         f"together, got {metric!r} and {value!r}")
    if not metric.startswith("eval/"):
        raise ValueError(f"config.eval.early_stop_metric must name an eval metric such as "
                         f"'eval/accuracy' or 'eval/loss', got {metric!r}")
    if not eval_config.every_steps:
        raise ValueError("config.eval.early_stop_metric needs config.eval.every_steps > 0")


def mesh_shape(config, num_devices: int) -> tuple[int, int]:
    """(data, model) axis sizes; raises naming config.mesh.* when they don't fit the devices."""
    model = config.mesh.model
    if not isinstance(model, int) or model < 1 or num_devices % model:
        raise ValueError(f"config.mesh.model={model!r} must be a positive integer dividing the "
                         f"{num_devices} devices")
    data = config.mesh.data if config.mesh.data != -1 else num_devices // model
    if not isinstance(data, int) or data < 1 or data * model > num_devices:
        raise ValueError(f"config.mesh.data={config.mesh.data!r} times config.mesh.model={model} "
                         f"must be at most the {num_devices} devices (-1: all that remain)")
    return data, model


def _get(config, dotted):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def _int(low, high=None):
    return lambda v: (isinstance(v, int) and not isinstance(v, bool) and low <= v
                      and (high is None or v <= high))


def _real(low, high=math.inf, *, low_open=False, high_open=False):
    def accepts(v):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            return False
        return (low < v if low_open else low <= v) and (v < high if high_open else v <= high)
    return accepts


def _optional(accepts):
    return lambda v: v is None or accepts(v)


def _is_bool(v):
    return isinstance(v, bool)


def _one_of(choices):
    return lambda v: isinstance(v, str) and v in choices


def _non_empty_str(v):
    return isinstance(v, str) and bool(v)


# Every field of default_config() (model: checked by ModelConfig), as
# path -> (what is allowed, in words; the check). Cross-field checks are in validate_config.
FIELD_RULES = {
    "seed": ("an integer in [0, 2**32)", _int(0, 2**32 - 1)),  # grain's shuffle seed range
    "num_steps": ("an integer >= 1", _int(1)),
    "global_batch_size": ("an integer >= 1", _int(1)),
    "grad_accum_steps": ("an integer >= 1", _int(1)),
    "compute_dtype": (f"one of {COMPUTE_DTYPES}", _one_of(COMPUTE_DTYPES)),
    "optimizer.learning_rate": ("a finite number > 0", _real(0.0, low_open=True)),
    "optimizer.b1": ("a number in [0, 1)", _real(0.0, 1.0, high_open=True)),
    "optimizer.b2": ("a number in [0, 1)", _real(0.0, 1.0, high_open=True)),
    "optimizer.eps": ("a finite number > 0", _real(0.0, low_open=True)),
    "optimizer.weight_decay": ("a finite number >= 0", _real(0.0)),
    "optimizer.no_decay_names": (
        "a tuple of parameter names (str)",
        lambda v: isinstance(v, tuple) and all(isinstance(n, str) for n in v)),
    "optimizer.grad_clip_norm": ("a finite number >= 0 (0 or None: no clipping)",
                                 _optional(_real(0.0))),
    "schedule.name": (f"one of {SCHEDULES}", _one_of(SCHEDULES)),
    "schedule.warmup_steps": ("an integer >= 0", _int(0)),
    "schedule.final_lr_fraction": ("a number in [0, 1]", _real(0.0, 1.0)),
    "schedule.decay_fraction": ("a number in (0, 1]", _real(0.0, 1.0, low_open=True)),
    "schedule.decay_shape": (f"one of {DECAY_SHAPES}", _one_of(DECAY_SHAPES)),
    "checkpoint.every_steps": ("an integer >= 0 (0: no checkpoints)", _int(0)),
    "checkpoint.max_to_keep": ("an integer >= 1 (None: keep every checkpoint)",
                               _optional(_int(1))),
    "checkpoint.async_save": ("True or False", _is_bool),
    "checkpoint.best_metric": (
        "None or an eval metric such as 'eval/loss'",
        lambda v: v is None or (isinstance(v, str) and v.startswith("eval/"))),
    "checkpoint.best_mode": ("one of ('min', 'max')", _one_of(("min", "max"))),
    "checkpoint.restore_dir": ("None or a directory path", _optional(_non_empty_str)),
    "eval.every_steps": ("an integer >= 0 (0: no evaluation)", _int(0)),
    "eval.num_batches": ("an integer >= 1", _int(1)),
    "eval.early_stop_metric": ("None or an eval metric name", _optional(_non_empty_str)),
    "eval.early_stop_value": ("None or a finite number", _optional(_real(-math.inf))),
    "eval.early_stop_mode": ("one of ('min', 'max')", _one_of(("min", "max"))),
    "logging.every_steps": ("an integer >= 1 (train scalars are written every so many steps)",
                            _int(1)),
    "logging.histogram_every_steps": ("an integer >= 0 (0: no histograms)", _int(0)),
    "logging.progress_bar": ("True or False", _is_bool),
    "mesh.data": ("-1 (all devices the model axis leaves) or an integer >= 1",
                  lambda v: _int(-1, -1)(v) or _int(1)(v)),
    "mesh.model": ("an integer >= 1", _int(1)),
    "mesh.parallelism": (f"one of {PARALLELISM}", _one_of(PARALLELISM)),
    "data.seq_len": ("an integer >= 2", _int(2)),
    "data.vocab_size": ("an integer >= 2", _int(2)),
    "data.num_train_examples": ("an integer >= 1", _int(1)),
    "data.num_eval_examples": ("an integer >= 1", _int(1)),
    "data.shuffle": ("True or False", _is_bool),
    "data.num_epochs": ("an integer >= 1 (None: repeat forever)", _optional(_int(1))),
    "data.in_memory": ("True or False", _is_bool),
    "data.prefetch_threads": ("an integer >= 0", _int(0)),
    "data.prefetch_buffer": ("an integer >= 0", _int(0)),
    "model": ("a ConfigDict of deltajax.models.ModelConfig fields",
              lambda v: isinstance(v, ml_collections.ConfigDict)),
    "distributed.initialize": ("True or False", _is_bool),
    "distributed.coordinator_address": ("None or 'host:port'", _optional(_non_empty_str)),
    "distributed.num_processes": ("None or an integer >= 1", _optional(_int(1))),
    "distributed.process_id": ("None or an integer >= 0", _optional(_int(0))),
    "distributed.cpu_collectives": (f"None or one of {CPU_COLLECTIVES}",
                                    _optional(_one_of(CPU_COLLECTIVES))),
}
