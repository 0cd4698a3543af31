"""The checks of a run that need more than its config: the model against the data, the data
against num_steps and the evaluation, restore_dir on disk. fit runs them before any device work
or directory is made, so a run that could not finish fails at once, naming what to change.
"""

import os
from collections.abc import Sequence
from typing import Optional

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from deltajax.data import IGNORE_INDEX
from deltajax.train.config import merge_with_defaults, validate_config

# Sources up to this many examples are read whole for the token check; larger ones at this many
# evenly spaced examples (first and last included), so the check stays well under a second.
MAX_SCANNED_EXAMPLES = 4096


def check_run(config, model: nn.Module, train_source: Sequence,
              eval_source: Optional[Sequence] = None, *, num_devices: int,
              num_processes: int) -> None:
    """Raise a ValueError naming the config field(s) or argument of the first check that fails.

    validate_config (every field and the mesh), then: train_source holds a global batch, and
    config.data.num_epochs of it hold config.num_steps batches on every host; when fit evaluates
    (eval_source given and config.eval.every_steps > 0), eval_source holds a global batch (fewer
    than config.eval.num_batches is a warning: evaluation uses what there is); every token id of
    the data (inputs, and targets other than IGNORE_INDEX) is below the model's vocabulary, read
    abstractly (jax.eval_shape: no compile, no device memory) from its logits' last dimension;
    config.checkpoint.restore_dir holds a finished checkpoint step. No file is written."""
    config = merge_with_defaults(config)
    validate_config(config, num_devices=num_devices, num_processes=num_processes)
    batch = config.global_batch_size
    if len(train_source) < batch:
        raise ValueError(f"train_source has {len(train_source)} examples, fewer than "
                         f"config.global_batch_size={batch}")
    _check_epochs(config, len(train_source), num_processes)
    sources = {"train_source": train_source}
    if eval_source is not None and config.eval.every_steps:
        _check_eval(config, len(eval_source), num_processes)
        sources["eval_source"] = eval_source
    vocab = model_vocab_size(model, np.asarray(train_source[0]["inputs"]))
    for name, source in sources.items():
        _check_tokens(name, source, vocab)
    if config.checkpoint.restore_dir is not None:
        _check_restore_dir(config.checkpoint.restore_dir)


def batches_per_host(num_examples: int, num_epochs: int, global_batch_size: int,
                     num_processes: int) -> int:
    """Whole batches the last host's slice of num_epochs epochs holds (the fewest of any host),
    as pipeline.make_dataset slices and batches them."""
    stream = num_examples * num_epochs
    last = num_processes - 1
    return len(range(last, stream, num_processes)) // (global_batch_size // num_processes)


def _check_epochs(config, num_examples: int, num_processes: int) -> None:
    epochs, steps, batch = config.data.num_epochs, config.num_steps, config.global_batch_size
    if epochs is None:
        return
    have = batches_per_host(num_examples, epochs, batch, num_processes)
    if have >= steps:
        return
    need = -(-steps * batch // num_examples)
    while batches_per_host(num_examples, need, batch, num_processes) < steps:
        need += 1
    raise ValueError(f"config.data.num_epochs={epochs} of the {num_examples} train examples holds "
                     f"{have} batches of config.global_batch_size={batch}, fewer than "
                     f"config.num_steps={steps}: set config.data.num_epochs >= {need}, or None "
                     "(repeat forever)")


def _check_eval(config, num_examples: int, num_processes: int) -> None:
    batch, wanted = config.global_batch_size, config.eval.num_batches
    have = batches_per_host(num_examples, 1, batch, num_processes)
    if have < 1:
        raise ValueError(f"eval_source has {num_examples} examples, fewer than one batch of "
                         f"config.global_batch_size={batch}; evaluation (config.eval.every_steps="
                         f"{config.eval.every_steps}) needs at least one")
    if have < wanted:
        logging.warning("eval_source holds %d batches of config.global_batch_size=%d; evaluation "
                        "uses those %d, not config.eval.num_batches=%d", have, batch, have, wanted)


def model_vocab_size(model: nn.Module, inputs_T: np.ndarray) -> int:
    """The last dimension of the model's logits on one sequence, from shapes alone."""
    tokens = jax.ShapeDtypeStruct((1, inputs_T.shape[0]), np.int32)
    rng = jax.eval_shape(jax.random.PRNGKey, 0)
    logits, _ = jax.eval_shape(model.init_with_output, rng, tokens)
    return int(logits.shape[-1])


def _scanned_indices(num_examples: int) -> np.ndarray:
    if num_examples <= MAX_SCANNED_EXAMPLES:
        return np.arange(num_examples)
    return np.unique(np.linspace(0, num_examples - 1, MAX_SCANNED_EXAMPLES).astype(np.int64))


def _check_tokens(name: str, source: Sequence, vocab: int) -> None:
    """Token ids in [0, vocab); targets may also be IGNORE_INDEX (masked from the loss)."""
    for index in _scanned_indices(len(source)):
        example = source[int(index)]
        for key in ("inputs", "targets"):
            ids = np.asarray(example[key])
            if key == "targets":
                ids = ids[ids != IGNORE_INDEX]
            if not ids.size:
                continue
            where = f"{name}[{int(index)}]['{key}']"
            if ids.min() < 0:
                raise ValueError(f"{where} holds token id {int(ids.min())}; token ids are >= 0 "
                                 f"(targets may also be {IGNORE_INDEX}, masked from the loss)")
            if ids.max() >= vocab:
                raise ValueError(
                    f"{where} holds token id {int(ids.max())}, outside the model's vocabulary "
                    f"[0, {vocab}) (its logits' last dimension; config.model.vocab_size for a "
                    f"model built from the config), which makes the loss NaN: give the model a "
                    f"vocab_size of at least {int(ids.max()) + 1}")


def _check_restore_dir(directory: str) -> None:
    if not os.access(directory, os.R_OK | os.X_OK):
        raise ValueError(f"config.checkpoint.restore_dir={directory!r} is not readable")
    if ocp.utils.checkpoint_steps(directory):
        return
    nested = os.path.join(directory, "checkpoints")
    hint = (f" (its checkpoints/ folder does: set it to {nested!r})"
            if os.path.isdir(nested) and ocp.utils.checkpoint_steps(nested) else "")
    raise ValueError(f"config.checkpoint.restore_dir={directory!r} holds no finished checkpoint "
                     f"step{hint}; it names another run's <workdir>/checkpoints folder")
