"""Packing variable-length examples into fixed-length rows with segment ids (grain's first-fit
packer), as a random-access source for deltajax.data.make_dataset and LanguageModel's
segment_ids_BT."""

from collections.abc import Sequence

import grain
import numpy as np
from grain.experimental import FirstFitPackIterDataset

from deltajax.data.synthetic import IGNORE_INDEX


def pack_examples(examples: Sequence[dict], seq_len: int, *, num_packing_bins: int = 16,
                  seed: int = 0) -> list[dict]:
    """Rows {"inputs", "targets", "segment_ids": int32 [seq_len]} of first-fit packed examples.

    examples: dicts with "inputs" and "targets", 1-D of equal length per example (each its own
    next-token targets, so no target crosses into another example). Segment ids count 1, 2, ...
    within a row; the padding after the last example gets one id past the last (ids stay
    non-decreasing) and IGNORE_INDEX targets. Packing is deterministic for a seed; the rows are
    materialised once, so the batches and their resumption work as for any other source.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    for i, example in enumerate(examples):
        lengths = {key: np.shape(example[key]) for key in ("inputs", "targets")}
        if len(set(lengths.values())) != 1 or len(lengths["inputs"]) != 1:
            raise ValueError(f"examples[{i}] must hold 1-D inputs and targets of one length, got "
                             f"shapes {lengths}")
        if not 1 <= lengths["inputs"][0] <= seq_len:
            raise ValueError(f"examples[{i}] has {lengths['inputs'][0]} tokens; each example "
                             f"must have 1 to seq_len={seq_len}")
    source = grain.MapDataset.source([{key: np.asarray(example[key], np.int32)
                                       for key in ("inputs", "targets")}
                                      for example in examples])
    packed = FirstFitPackIterDataset(source.to_iter_dataset(),
                                     length_struct={"inputs": seq_len, "targets": seq_len},
                                     num_packing_bins=num_packing_bins, seed=seed)
    rows = []
    for row in packed:
        ids = row["inputs_segment_ids"].astype(np.int32)
        padding = ids == 0  # grain's id of the padding
        rows.append({"inputs": row["inputs"].astype(np.int32),
                     "targets": np.where(padding, IGNORE_INDEX, row["targets"]).astype(np.int32),
                     "segment_ids": np.where(padding, ids.max() + 1, ids).astype(np.int32)})
    return rows
