"""train_and_evaluate with the real DeltaNet LanguageModel on the copy task, and its resume."""

import jax
import numpy as np

from deltajax.train import train_and_evaluate
from tests.train.helpers import tiny_config


def test_a_deltanet_language_model_learns_the_copy_task_and_resumes(tmp_path):
    config = tiny_config(num_steps=30, global_batch_size=16, eval__every_steps=30,
                         eval__num_batches=2, checkpoint__every_steps=15,
                         optimizer__learning_rate=1e-2, data__seq_len=16, data__vocab_size=8,
                         data__num_train_examples=512, data__num_eval_examples=64)
    config.model = dict(vocab_size=8, d_model=32, num_layers=2, num_heads=2, mixer="deltanet",
                        mlp=None, delta_rule=dict(chunk_size=16))
    first = train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1], stop_at=15)
    second = train_and_evaluate(config, str(tmp_path), devices=jax.devices()[:1])
    losses = [h["loss"] for h in first.history + second.history]
    assert len(losses) == 30 and all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1
    assert second.history[0]["step"] == 16
    assert np.isfinite(second.eval_metrics["eval/loss"])
    # Targets are copies of tokens 1..7: below log 7 the model uses what it has seen.
    assert second.eval_metrics["eval/loss"] < np.log(7)
