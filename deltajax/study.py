"""Plumbing shared by the scripts in experiments/: one config shape, named runs, resumable sweeps,
reports headed by what measured them, atomic JSON, median timing.

It lives in the package (not in experiments/) so that every script, run as
`python experiments/x.py` or as `python -m experiments.x`, imports it without sys.path edits.

A study config (configs/<study>.py:get_config(preset)) has exactly the keys of STUDY_KEYS:

    preset  the preset's name          seed  the study's seed
    train   trainer fields (deltajax.train.fit's, or the study's own optimiser loop)
    model   the model's fields (deltajax.models.ModelConfig's: groups as nested dicts)
    task    the data and what is measured
    sweep   [named_run(name, **overrides)]: built in the config file, one entry per run
    only    "" or comma-separated fnmatch patterns of run names: the runs to do now

A run's config is the study config without sweep/only, overridden by the run's overrides, plus
`name`. It trains in <workdir>/runs/<name>/ (its config.json, result.json, checkpoints, events).
"""

import copy
import datetime
import fnmatch
import functools
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any, Optional

import jax
import ml_collections

log = functools.partial(print, flush=True)
STUDY_KEYS = ("preset", "seed", "train", "model", "task", "sweep", "only")
_NAME = re.compile(r"[A-Za-z0-9_.+=-]+")


def measured_on() -> str:
    """'<date>, device: <kind> (<count> x <platform>), JAX <version>.': the header line of every
    table in benchmarks/results/."""
    device = jax.devices()[0]
    kind = f"{os.cpu_count()}-core CPU" if device.platform == "cpu" else device.device_kind
    return (f"{datetime.date.today().isoformat()}, device: {kind} ({jax.device_count()} x "
            f"{device.platform}), JAX {jax.__version__}.")


def command_line(module: str, argv: Optional[list] = None, drop: tuple = ()) -> str:
    """The command that reproduces this process, as `python -m <module> <args>` whichever way
    the script was started; arguments starting with one of `drop` are left out."""
    args = sys.argv[1:] if argv is None else argv
    kept = [shlex.quote(a) for a in args if not (drop and a.startswith(drop))]
    return " ".join(["python", "-m", module, *kept])


def run_id(*parts, **values) -> str:
    """Joins parts and key-value pairs with '-': run_id("deltanet", T=128, lr="2.2e-03") is
    'deltanet-T128-lr2.2e-03'. Numbers are written with :g; pass a string for another format."""
    pieces = [str(p) for p in parts]
    pieces += [f"{k}{v:g}" if isinstance(v, (int, float)) else f"{k}{v}" for k, v in
               values.items()]
    name = "-".join(pieces)
    if not _NAME.fullmatch(name):
        raise ValueError(f"run_id: {name!r} must be letters, digits and _.+=- only (a directory "
                         "name on every filesystem)")
    return name


def named_run(name: str, **overrides) -> dict:
    """One entry of a config's sweep: the run's name and the nested fields it changes."""
    run_id(name)  # checks the name
    return {"name": name, "overrides": overrides}


def write_json(path: str, data: Any) -> None:
    """Written whole or not at all: a crash mid-write leaves the previous file."""
    write_text(path, json.dumps(data, indent=1) + "\n")


def write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def publish_table(path: str, table: str) -> None:
    """A benchmark's Markdown table written whole to path (its folder made) and printed."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_text(path, table)
    print("\n" + table + f"\nWritten to {path}")


def read_json(path: str, default: Any = None) -> Any:
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def median_seconds(fn: Callable, *args, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of fn(*args) over `repeats` calls after `warmup` untimed ones (the first
    compiles); each call is waited for with jax.block_until_ready."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"median_seconds: repeats must be >= 1 and warmup >= 0, got "
                         f"{repeats} and {warmup}")
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(fns: dict, *args, repeats: int = 5) -> dict:
    """Median wall seconds of each fns[name](*args), timed in rounds of one call each, the order
    rotating, so that a slow spell of the machine hits every candidate alike. Each function is
    called once untimed first (it compiles)."""
    if repeats < 1:
        raise ValueError(f"interleaved_medians: repeats must be >= 1, got {repeats}")
    for fn in fns.values():
        jax.block_until_ready(fn(*args))
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            jax.block_until_ready(fns[name](*args))
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def new_config(study: str, preset: str, presets) -> ml_collections.ConfigDict:
    """A study config's start: `preset` checked against the study's presets (a ValueError
    naming them), the study's seed 0 and no run selection."""
    if preset not in presets:
        raise ValueError(f"configs/{study}.py preset must be one of {tuple(presets)}; got "
                         f"{preset!r}")
    return ml_collections.ConfigDict(dict(preset=preset, seed=0, only=""))


def trainer_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A run's config.train with deltajax.train.fit's defaults filled in and the study's seed."""
    # Here, not at the top: the configs import this module, and deltajax.train pulls in orbax
    # and grain, which a config read (or --help) does not need.
    from deltajax.train.config import merge_with_defaults

    train = merge_with_defaults(config.train)
    train.seed = config.seed
    return train


def check_config(config: ml_collections.ConfigDict, study: str) -> None:
    """Raises a ValueError naming what breaks the shared shape: the top-level keys, unique run
    names, and every run's overrides naming existing fields."""
    keys = set(config.keys())
    if keys != set(STUDY_KEYS):
        raise ValueError(f"configs/{study}.py: the config's top-level keys must be {STUDY_KEYS}; "
                         f"missing {sorted(set(STUDY_KEYS) - keys)}, unexpected "
                         f"{sorted(keys - set(STUDY_KEYS))}")
    names = [run["name"] for run in config.sweep]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"config.sweep: run names must be unique; repeated: {duplicates}")
    for run in config.sweep:
        run_config(config, run)


def select_runs(config: ml_collections.ConfigDict) -> list:
    """The runs of config.sweep that config.only selects (all when it is empty), in order."""
    patterns = [p.strip() for p in (config.only or "").split(",") if p.strip()]
    if not patterns:
        return list(config.sweep)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(run["name"], pattern) for run in config.sweep):
            raise ValueError(f"config.only: {pattern!r} matches no run; the runs are "
                             f"{[run['name'] for run in config.sweep]}")
    return [run for run in config.sweep
            if any(fnmatch.fnmatchcase(run["name"], p) for p in patterns)]


def run_config(config: ml_collections.ConfigDict, run: dict) -> ml_collections.ConfigDict:
    """The study config without sweep and only, with the run's overrides applied and its name."""
    base = {k: v for k, v in config.to_dict().items() if k not in ("sweep", "only")}
    merged = _override(base, run["overrides"], f"config.sweep[{run['name']!r}].overrides")
    return ml_collections.ConfigDict({**merged, "name": run["name"]})


def _override(base: dict, overrides: dict, path: str) -> dict:
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if key not in merged:
            raise ValueError(f"{path}.{key} is not a field of the study config; fields here: "
                             f"{sorted(merged)}")
        if isinstance(value, dict) and isinstance(merged[key], dict):
            merged[key] = _override(merged[key], value, f"{path}.{key}")
        else:  # a value, or a whole option group replacing None (the group's defaults)
            merged[key] = copy.deepcopy(value)
    return merged


class Preempted(Exception):
    """Raised by a study's train_fn when fit returned preempted (SIGTERM/SIGINT, after saving):
    the sweep stops before writing that run's result.json, and main() exits 0."""


def run_sweep(config, workdir: str, train_fn: Callable, *,
              after_each: Optional[Callable[[list], None]] = None, log=log) -> list:
    """train_fn(run_config, run_dir) -> result dict, for every selected run, in order.

    A run whose result.json exists and whose config.json equals its config now is skipped; any
    other run is handed to train_fn, which resumes from its own checkpoints in run_dir. So the
    same command continues an interrupted sweep, and a changed field (num_steps) extends a run."""
    runs = select_runs(config)
    results = []
    for index, run in enumerate(runs, 1):
        run_dir = os.path.join(workdir, "runs", run["name"])
        this = run_config(config, run)
        result = _finished(this, run_dir)
        if result is None:
            if os.path.exists(os.path.join(run_dir, "result.json")):
                log(f"[{index}/{len(runs)}] {run['name']}: its config changed since it "
                    "finished; training again from its checkpoints")
            os.makedirs(run_dir, exist_ok=True)
            if jax.process_index() == 0:
                write_text(os.path.join(run_dir, "config.json"), _json(this))
            result = {"name": run["name"], **train_fn(this, run_dir)}
            if jax.process_index() == 0:
                write_json(os.path.join(run_dir, "result.json"), result)
            log(f"[{index}/{len(runs)}] {run['name']}: done")
        else:
            log(f"[{index}/{len(runs)}] {run['name']}: reused (finished before with this same "
                "config)")
        results.append(result)
        if after_each is not None:
            after_each(results)
    return results


def finished_results(config, workdir: str) -> list:
    """The results of the selected runs that have finished in workdir with their current config."""
    results = []
    for run in select_runs(config):
        result = _finished(run_config(config, run), os.path.join(workdir, "runs", run["name"]))
        if result is not None:
            results.append(result)
    return results


def _finished(this, run_dir: str) -> Optional[dict]:
    result = read_json(os.path.join(run_dir, "result.json"))
    stored = read_json(os.path.join(run_dir, "config.json"))
    if result is None or stored != json.loads(_json(this)):
        return None
    return result


def _json(config) -> str:
    return config.to_json_best_effort(indent=1, sort_keys=True) + "\n"


def write_report(config, workdir: str, results: list, report: Callable, *,
                 command: str, out: Optional[str] = None) -> str:
    """Writes <workdir>/results.md, results.png and config.json, and the same to <out>.md, .png,
    .json when out is given. report(config, results, workdir, png_path) draws the figure
    and returns (title, Markdown body); returns the body."""
    if jax.process_index() != 0:
        return ""
    prefix = os.path.join(workdir, "results")
    title, body = report(config, results, workdir, prefix + ".png")
    for path, config_path in [(prefix, os.path.join(workdir, "config.json"))] + (
            [(out, out + ".json")] if out else []):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        name = os.path.basename(config_path)
        text = (f"# {title}\n\n{measured_on()}\n\n```bash\n{command}\n```\n\n"
                f"Config: [`{name}`]({name}); {len(results)} of {len(select_runs(config))} runs "
                f"finished.\n\n{body}")
        write_text(path + ".md", text.rstrip("\n") + "\n")
        write_text(config_path, _json(config))
        if path != prefix and os.path.exists(prefix + ".png"):
            shutil.copyfile(prefix + ".png", path + ".png")
    return body


def run_study(config, workdir: str, *, study: str, train_fn: Callable, report: Callable,
              command: str = "", out: Optional[str] = None, report_only: bool = False) -> list:
    """Checks the config, trains every selected run (skipping finished ones, resuming the
    rest), rewriting the report after each; report_only reports the finished runs only."""
    check_config(config, study)
    os.makedirs(workdir, exist_ok=True)
    command = command or f"python -m experiments.{study}"
    start = time.perf_counter()
    if report_only:
        results = finished_results(config, workdir)
    else:
        results = run_sweep(config, workdir, train_fn, after_each=lambda so_far: write_report(
            config, workdir, so_far, report, command=command))
    print(write_report(config, workdir, results, report, command=command, out=out))
    where = f"{out}.md" if out else os.path.join(workdir, "results.md")
    minutes, seconds = divmod(round(time.perf_counter() - start), 60)
    print(f"wrote {where} in {minutes} min {seconds} s; logs: tensorboard --logdir "
          f"{os.path.join(workdir, 'runs')}")
    return results


def resolve_config_arg(arg: str, root: str) -> str:
    """`<file>[:<preset>]` with a relative file that does not exist from the current directory
    taken from `root` (the repository) where it exists there, so that `--config=configs/x.py`
    works from any directory; anything else unchanged (the loader's error names it)."""
    path, colon, preset = arg.partition(":")
    if path and not os.path.isabs(path) and not os.path.exists(path):
        candidate = os.path.join(root, path)
        if os.path.exists(candidate):
            return candidate + colon + preset
    return arg


def resolve_config_argv(argv: list, root: str) -> list:
    """argv with the file of --config=<file>[:<preset>] (or `--config <file>`) resolved by
    resolve_config_arg; --config.<field> overrides untouched."""
    resolved = list(argv)
    for i, arg in enumerate(resolved):
        name, eq, value = arg.partition("=")
        if name in ("--config", "-config"):
            if eq:
                resolved[i] = f"{name}={resolve_config_arg(value, root)}"
            elif i + 1 < len(resolved):
                resolved[i + 1] = resolve_config_arg(resolved[i + 1], root)
    return resolved


def config_help(config_file: str) -> str:
    """The presets of a config module and its sweeps, one line each, for --help: from its
    PRESETS and SWEEPS ({name: one-line description}, or a sequence of names) when it has them."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_study_config_help", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    name = os.path.join(os.path.basename(os.path.dirname(config_file)),
                        os.path.basename(config_file))
    lines = []
    for title, table in ((f"Presets ({name}:<preset>):", getattr(module, "PRESETS", None)),
                         (f"Sweeps ({name}:<preset>,<sweep>):", getattr(module, "SWEEPS", None))):
        if isinstance(table, (tuple, list)):  # names without descriptions
            table = dict.fromkeys(table, "")
        if isinstance(table, dict) and table:
            width = max(map(len, table))
            lines += ["", title] + [f"  {key.ljust(width)}  {text}".rstrip()
                                    for key, text in table.items()]
    return "\n".join(lines[1:])


def main(module: str, run_study_fn: Callable, default_config: str, default_workdir: str) -> None:
    """The absl entry point of a study script: --config=configs/<study>.py:<preset> (with
    --config.<field>=... overrides), --workdir, --out and --report_only. Flags are defined here,
    when the script runs, so that tests import several study modules into one process.

    A relative --config file is read from the current directory, else from the repository the
    script sits in; --workdir and --out are relative to the current directory (a study's
    outputs go where it is started, like any command's)."""
    from absl import app, flags
    from absl import logging as absl_logging
    from ml_collections import config_flags

    from deltajax.train import logging as train_logging

    # The repository: the parent of the script's experiments/ folder (no script file: here).
    script = sys.modules["__main__"]
    script_file = getattr(script, "__file__", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(script_file))) if script_file else "."
    default_config = resolve_config_arg(default_config, root)
    # The presets go under the script's docstring, which --help prints as written ("%" escaped:
    # absl formats it with %); a flag's help would be re-wrapped.
    script.__doc__ = ((script.__doc__ or "").rstrip("\n") + "\n\n"
                      + config_help(default_config.partition(":")[0]).replace("%", "%%") + "\n")
    config_flags.DEFINE_config_file("config", default_config,
                                    "configs/<study>.py:<preset> (the presets above); fields as "
                                    "--config.<field>=...")
    flags.DEFINE_string("workdir", default_workdir, "Runs go to <workdir>/runs/<run name>/.")
    flags.DEFINE_string("out", None, "Also write the table, figure and config to <out>.md, "
                        ".png, .json (e.g. benchmarks/results/cpu-mqar-sweep).")
    flags.DEFINE_bool("report_only", False, "Report the runs already finished; train nothing.")
    # Key flags of the script (absl's --help lists those of sys.argv[0], the main module).
    for name in ("config", "workdir", "out", "report_only"):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])

    def _main(argv):
        del argv
        train_logging.show_status_lines()  # fit's progress; not orbax's INFO on every save
        FLAGS = flags.FLAGS
        try:
            run_study_fn(FLAGS.config, FLAGS.workdir, out=FLAGS.out,
                         report_only=FLAGS.report_only,
                         command=command_line(module, drop=("--report_only",)))
        except Preempted as stop:  # saved: the same command resumes; exit 0 for the scheduler
            absl_logging.warning("%s", stop)

    app.run(_main, argv=resolve_config_argv(sys.argv, root))
