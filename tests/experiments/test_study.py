"""deltajax.study, the plumbing of every study: named runs, run selection, overrides, the sweep
runner's skip and resume, the report files, median timing. A fake train_fn keeps these free of
compiles; the study tests train real smoke runs through the same runner."""

import functools
import json
import os

import ml_collections
import pytest

from deltajax import study


def _config(**only) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict(dict(
        preset="toy", seed=0, only="", train=dict(num_steps=4, optimizer=dict(learning_rate=0.1)),
        model=dict(width=2, conv=None), task=dict(n=3)))
    c.sweep = [study.named_run(study.run_id("m", w=w, lr=f"{lr:.1e}"), model=dict(width=w),
                               train=dict(optimizer=dict(learning_rate=lr)))
               for w in (2, 4) for lr in (1e-3, 3e-3)]
    c.update(only)
    return c


def _fake_train(calls):
    def train(config, run_dir):
        calls.append(config.name)
        done = study.read_json(os.path.join(run_dir, "progress.json"), 0)
        study.write_json(os.path.join(run_dir, "progress.json"), config.train.num_steps)
        return {"width": config.model.width, "resumed_from": done}
    return train


def test_run_id_names_the_swept_values_and_rejects_path_characters():
    assert study.run_id("deltanet", T=128, kv=16, d=64, lr=f"{2.15e-3:.1e}") == \
        "deltanet-T128-kv16-d64-lr2.2e-03"
    assert study.run_id(a=0.25, e=4.0) == "a0.25-e4"
    with pytest.raises(ValueError, match="run_id"):
        study.run_id("deltanet", mixer="a/b")


def test_run_config_applies_the_overrides_and_rejects_unknown_fields():
    c = _config()
    this = study.run_config(c, c.sweep[3])
    assert (this.name, this.model.width, this.train.optimizer.learning_rate) == (
        "m-w4-lr3.0e-03", 4, 3e-3)
    assert this.train.num_steps == 4 and "sweep" not in this and "only" not in this
    group = study.run_config(c, study.named_run("g", model=dict(conv=dict(enabled=False))))
    assert group.model.conv.enabled is False  # a group replacing None (its defaults)
    with pytest.raises(ValueError, match=r"config.sweep\['bad'\].overrides.model.widht"):
        study.run_config(c, study.named_run("bad", model=dict(widht=3)))


def test_check_config_names_missing_keys_and_repeated_runs():
    c = _config()
    del c["task"]
    with pytest.raises(ValueError, match="missing \\['task'\\]"):
        study.check_config(c, "toy")
    c = _config()
    c.sweep = c.sweep + [c.sweep[0]]
    with pytest.raises(ValueError, match="repeated: \\['m-w2-lr1.0e-03'\\]"):
        study.check_config(c, "toy")


def test_only_selects_runs_by_pattern_and_rejects_a_pattern_matching_nothing():
    names = lambda c: [r["name"] for r in study.select_runs(c)]
    assert names(_config(only="m-w4-*")) == ["m-w4-lr1.0e-03", "m-w4-lr3.0e-03"]
    assert names(_config(only="*lr1.0e-03, m-w4-lr3*")) == [
        "m-w2-lr1.0e-03", "m-w4-lr1.0e-03", "m-w4-lr3.0e-03"]
    assert len(names(_config())) == 4
    with pytest.raises(ValueError, match="config.only: 'm-w8-\\*' matches no run"):
        study.select_runs(_config(only="m-w8-*"))


def test_sweep_skips_finished_runs_and_resumes_a_run_whose_config_changed(tmp_path):
    calls = []
    first = study.run_sweep(_config(only="m-w2-*"), str(tmp_path), _fake_train(calls),
                            log=lambda _: None)
    assert calls == ["m-w2-lr1.0e-03", "m-w2-lr3.0e-03"]
    assert [r["name"] for r in first] == calls and first[0]["width"] == 2
    run_dir = tmp_path / "runs" / "m-w2-lr1.0e-03"
    assert json.loads((run_dir / "config.json").read_text())["model"]["width"] == 2
    # An interrupted sweep: a run without result.json is handed to train_fn again, the finished
    # ones are skipped; a run whose config changed (num_steps) is handed back to resume.
    os.remove(tmp_path / "runs" / "m-w2-lr3.0e-03" / "result.json")
    calls.clear()
    again = study.run_sweep(_config(), str(tmp_path), _fake_train(calls), log=lambda _: None)
    assert calls == ["m-w2-lr3.0e-03", "m-w4-lr1.0e-03", "m-w4-lr3.0e-03"]
    assert again[0] == first[0] and again[1]["resumed_from"] == 4
    calls.clear()
    longer = _config(only="m-w2-lr1*")
    longer.train.num_steps = 8
    printed = []
    assert study.run_sweep(longer, str(tmp_path), _fake_train(calls), log=printed.append)[0][
        "resumed_from"] == 4 and calls == ["m-w2-lr1.0e-03"]
    assert "its config changed since it finished" in printed[0]  # said, never silent
    assert [r["name"] for r in study.finished_results(_config(), str(tmp_path))] == [
        "m-w2-lr3.0e-03", "m-w4-lr1.0e-03", "m-w4-lr3.0e-03"]  # the first now has num_steps 8


def test_run_study_writes_the_report_headed_by_device_and_command(tmp_path):
    def report(config, results, workdir, png_path):
        with open(png_path, "wb") as f:
            f.write(b"png")
        return "Toy", "| " + " | ".join(r["name"] for r in results) + " |\n"

    out = tmp_path / "published" / "toy"
    study.run_study(_config(only="m-w4-*"), str(tmp_path / "work"), study="toy",
                    train_fn=_fake_train([]), report=report, out=str(out),
                    command="python -m experiments.toy --config=configs/toy.py:toy")
    for prefix, config_name in ((tmp_path / "work" / "results", "config.json"), (out, "toy.json")):
        text = prefix.with_suffix(".md").read_text()
        assert text.startswith("# Toy\n\n") and ", JAX " in text and "device: " in text
        assert "python -m experiments.toy --config=configs/toy.py:toy" in text
        assert f"Config: [`{config_name}`]" in text and "2 of 2 runs finished" in text
        assert "| m-w4-lr1.0e-03 | m-w4-lr3.0e-03 |" in text
        assert prefix.with_suffix(".png").read_bytes() == b"png"
    assert json.loads(out.with_suffix(".json").read_text())["only"] == "m-w4-*"
    assert json.loads((tmp_path / "work" / "config.json").read_text())["preset"] == "toy"


def test_command_line_is_the_module_form_without_dropped_flags():
    argv = ["--config=configs/mqar.py:cpu", "--report_only", "--config.only=a b"]
    assert study.command_line("experiments.mqar", argv, drop=("--report_only",)) == \
        "python -m experiments.mqar --config=configs/mqar.py:cpu '--config.only=a b'"


def test_write_json_replaces_the_file_whole(tmp_path):
    path = str(tmp_path / "r.json")
    study.write_json(path, {"a": 1})
    study.write_json(path, {"a": 2})
    assert study.read_json(path) == {"a": 2} and os.listdir(tmp_path) == ["r.json"]
    assert study.read_json(str(tmp_path / "missing.json"), default=[]) == []


def test_median_seconds_times_the_calls_after_warmup():
    calls = []
    seconds = study.median_seconds(lambda x: calls.append(x) or x, 3, repeats=3, warmup=2)
    assert calls == [3] * 5 and 0 <= seconds < 1
    with pytest.raises(ValueError, match="repeats"):
        study.median_seconds(lambda: None, repeats=0)


def test_interleaved_medians_rotate_the_order_of_the_candidates():
    calls = []
    fns = {name: functools.partial(lambda name, x: calls.append(name) or x, name)
           for name in "abc"}
    medians = study.interleaved_medians(fns, 1, repeats=3)
    assert set(medians) == set("abc") and all(0 <= s < 1 for s in medians.values())
    # One untimed call each, then rounds a b c, b c a, c a b.
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab"
    with pytest.raises(ValueError, match="repeats"):
        study.interleaved_medians(fns, 1, repeats=0)


def test_a_preempted_run_stops_the_sweep_without_a_result_and_runs_again(tmp_path):
    calls = []

    def preempted(config, run_dir):
        calls.append(config.name)
        raise study.Preempted(f"{run_dir}: preempted")

    with pytest.raises(study.Preempted):
        study.run_sweep(_config(), str(tmp_path), preempted, log=lambda _: None)
    assert len(calls) == 1  # the sweep stops at the preempted run
    assert not os.path.exists(os.path.join(tmp_path, "runs", calls[0], "result.json"))
    again = study.run_sweep(_config(), str(tmp_path), _fake_train([]), log=lambda _: None)
    assert len(again) == 4  # the preempted run is not taken as finished
