"""The grokking study: Fourier progress measure, delay detection, configs, and a smoke study
that resumes its run and writes the table, figure, config and events."""

import functools
import glob

import jax
import numpy as np
import pytest

from configs.grokking import get_config
from deltajax import study
from deltajax.analysis import first_step_above, fourier_spectrum, top_frequencies
from deltajax.models import ModelConfig
from experiments import grokking_modular as gm


def test_spectrum_of_a_cosine_embedding_peaks_at_its_frequency():
    p, k = 31, 7
    rng = np.random.default_rng(0)
    a = np.arange(p)[:, None]
    embedding = (np.cos(2 * np.pi * k * a / p + 0.3) * rng.normal(size=(1, 16))
                 + 0.05 * rng.normal(size=(p, 16)))
    spectrum = fourier_spectrum(embedding)
    assert spectrum.shape == (p // 2 + 1,)
    np.testing.assert_allclose(np.sum(spectrum ** 2), np.sum(embedding ** 2), rtol=1e-10)
    top, share = top_frequencies(spectrum, 1)
    assert top.tolist() == [k] and share > 0.9


def test_spectrum_folds_even_p_without_losing_norm():
    embedding = np.random.default_rng(1).normal(size=(10, 3))
    np.testing.assert_allclose(np.sum(fourier_spectrum(embedding) ** 2), np.sum(embedding ** 2))


def test_first_step_above_is_strict_and_none_when_never():
    assert first_step_above([10, 20, 30], [0.5, 0.99, 0.995], 0.99) == 30
    assert first_step_above([10, 20], [0.1, 0.2], 0.99) is None
    with pytest.raises(ValueError, match="steps_N"):
        first_step_above([2, 1], [0.0, 1.0], 0.5)


def test_nanda_preset_is_the_published_setup():
    c = get_config("nanda")
    assert (c.task.p, c.task.operation, c.task.train_fraction) == (113, "+", 0.3)
    assert (c.model.d_model, c.model.num_heads, c.model.mlp_hidden_dim, c.model.num_layers,
            c.model.norm, c.model.mlp) == (128, 4, 512, 1, None, "relu")
    o = c.train.optimizer
    assert (o.learning_rate, o.weight_decay, o.b2, o.no_decay_names) == (1e-3, 1.0, 0.98, ())
    assert c.train.schedule.warmup_steps == 10 and c.train.global_batch_size == 0
    assert [r["name"] for r in c.sweep] == ["attention-p113-add-f0.3-wd1"]
    train, _ = gm.make_splits(c)
    trainer = gm.trainer_config(c, len(train))
    assert trainer.global_batch_size == len(train) == 3831 and "task" not in trainer
    power = get_config("power")
    assert (power.task.p, power.model.num_layers, power.train.global_batch_size,
            power.train.num_steps) == (97, 2, 512, 100_000)
    for preset in ("nandaa", "cpu,lr"):
        with pytest.raises(ValueError, match="preset|sweep"):
            get_config(preset)


def test_sweeps_change_only_the_swept_field():
    runs = get_config("cpu,weight_decay")
    assert [r["name"] for r in runs.sweep] == [f"attention-p53-add-f0.5-wd{w}"
                                               for w in ("0", "0.1", "1")]
    configs = [study.run_config(runs, r) for r in runs.sweep]
    assert [x.train.optimizer.weight_decay for x in configs] == [0.0, 0.1, 1.0]
    assert [x.task.train_fraction for x in configs] == [0.5] * 3
    mixers = get_config("cpu,mixer")
    assert [study.run_config(mixers, r).model.mixer for r in mixers.sweep] == [
        "attention", "deltanet", "gated_deltanet"]
    for preset in ("nanda", "cpu,mixer", "power,train_fraction", "smoke,weight_decay",
                   "cpu,delta", "nanda,mixer"):
        study.check_config(get_config(preset), "grokking")


def _differences(a, b, path=""):
    """The dotted paths at which two nested dicts differ."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [] if a == b else [path]
    return [d for key in sorted(set(a) | set(b))
            for d in _differences(a.get(key), b.get(key), f"{path}.{key}".lstrip("."))]


def test_delta_sweep_changes_one_factor_per_run_and_builds_every_model():
    config = get_config("cpu,delta")
    runs = {r["name"].split("-p53")[0]: study.run_config(config, r).to_dict()
            for r in config.sweep}
    base = runs["deltanet"]
    assert base["train"]["num_steps"] == 4000 and base["model"]["mixer"] == "deltanet"
    changed = {name: [d for d in _differences(base, run) if d != "name"]
               for name, run in runs.items()}
    assert changed["deltanet-lr3e-3"] == ["train.optimizer.learning_rate"]
    assert changed["deltanet-neg"] == ["model.delta_rule.allow_neg_eigval"]
    assert changed["deltanet-1head"] == ["model.num_heads"]
    assert set(changed["gated_deltanet-fla_wd"]) == {"model.mixer",
                                                     "train.optimizer.no_decay_names"}
    assert _differences(runs["attention"], runs["attention-lr3e-3"]) == [
        "name", "train.optimizer.learning_rate"]
    for run in runs.values():
        ModelConfig(vocab_size=54, **run["model"])


def test_nanda_and_power_presets_use_the_authors_learned_positions():
    nanda = study.run_config(get_config("nanda"), get_config("nanda").sweep[0]).model
    assert nanda.position_embedding == 3 and not nanda.attention.rope
    assert abs(nanda.embed_init_std - 128 ** -0.5) < 1e-9
    power = get_config("power").model
    assert power.position_embedding == 3 and not power.attention.rope
    assert get_config("cpu").model.position_embedding is None  # its tables used RoPE
    for run in get_config("nanda,mixer").sweep[1:]:  # the delta-rule mixers read no RoPE field
        ModelConfig(vocab_size=114, **study.run_config(get_config("nanda,mixer"),
                                                        run).model.to_dict())


def test_smoke_study_resumes_its_run_and_writes_table_figure_config_and_events(
        tmp_path, monkeypatch):
    starts = []
    real_fit = gm.fit

    def recording_fit(*args, **kwargs):
        result = real_fit(*args, **kwargs)
        starts.append(result.history[0]["step"])
        return result

    monkeypatch.setattr(gm, "fit", recording_fit)
    one_device = functools.partial(gm.train_and_evaluate, devices=jax.devices()[:1],
                                   log=lambda _: None)  # not conftest's 8
    run = functools.partial(study.run_study, study="grokking", train_fn=one_device,
                            report=gm.report, out=str(tmp_path / "table"))
    config = get_config("smoke")
    config.task.segment_steps = 6
    first = run(config, str(tmp_path))[0]
    config.train.num_steps = 8      # a changed run resumes from its last checkpoint
    second = run(config, str(tmp_path))[0]
    assert starts == [1, 7]         # the second call starts after the checkpoint
    assert first["steps"] == 6 and second["steps"] == 8
    assert len(second["spectrum"]) == 7 // 2 + 1 and second["n_train"] == 24
    table = (tmp_path / "table.md").read_text()
    assert "| attention-p7-add-f0.5-wd1 | attention | 7 |" in table
    assert table.rstrip().endswith("| - |")  # p = 7 is no published setting
    assert (tmp_path / "table.png").stat().st_size > 10_000
    assert '"p": 7' in (tmp_path / "table.json").read_text()
    assert glob.glob(str(tmp_path / "runs" / "attention-p7-add-f0.5-wd1" / "tensorboard" /
                         "events.*"))


def test_published_results_sit_beside_the_published_settings_only():
    nanda = dict(mixer="attention", p=113, train_fraction=0.3)
    assert "Nanda" in gm.published("+", nanda)
    assert "Power" in gm.published("/", dict(nanda, p=97, train_fraction=0.5))
    assert gm.published("+", dict(nanda, mixer="deltanet")) == "-"
    assert gm.published("+", dict(nanda, p=53)) == "-"
