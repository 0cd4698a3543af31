"""The run's metrics on disk beside its checkpoints, so that a finished run, re-run, returns them.

<workdir>/fit_history.jsonl holds one line per train step (FitResult.history's dicts), appended
when a checkpoint is saved and at the end; <workdir>/fit_summary.json holds the evaluations and
whether the run stopped early, rewritten at the same times. Lines past the step a run resumes
from (written before a kill whose checkpoint did not complete) are dropped on resume. Only
process 0 writes. Not result.json: deltajax.study writes that name in the same directories.
"""

import json
import math
import os
from typing import Optional

import jax

HISTORY = "fit_history.jsonl"
SUMMARY = "fit_summary.json"


class RunRecord:
    """The metrics of the steps up to the newest checkpoint, and of those since."""

    def __init__(self, workdir: str, start: int):
        self._history_path = os.path.join(workdir, HISTORY)
        self._summary_path = os.path.join(workdir, SUMMARY)
        lines, whole = _read_lines(self._history_path)
        kept = [h for h in lines if h["step"] <= start]
        summary = _read_json(self._summary_path) or {}
        self.prior_history = kept
        self.prior_eval_history = [e for e in summary.get("eval_history", [])
                                   if e["step"] <= start]
        self.prior_summary = summary if summary.get("step") == start else None
        # An earlier call that ended (not killed) at `start` logged no step past it.
        self.logged_past_start = not (self.prior_summary or {}).get("ended", False)
        self._unwritten: list = []
        if jax.process_index() == 0 and (len(kept) < len(lines) or not whole):
            _write_atomic(self._history_path, "".join(_line(h) for h in kept))

    def add(self, history_entry: dict) -> None:
        self._unwritten.append(history_entry)

    def write(self, step: int, eval_history: list, eval_metrics: dict, stopped_early: bool, *,
              ended: bool = False):
        """Record the steps added so far and the evaluations of the run up to `step`; ended:
        this call returns after `step`."""
        if jax.process_index() != 0:
            return
        os.makedirs(os.path.dirname(self._history_path), exist_ok=True)
        with open(self._history_path, "a") as f:
            f.write("".join(_line(h) for h in self._unwritten))
        self._unwritten = []
        summary = {"step": step, "eval_metrics": eval_metrics,
                   "eval_history": self.prior_eval_history + eval_history,
                   "stopped_early": stopped_early, "ended": ended}
        _write_atomic(self._summary_path, json.dumps(_json_safe(summary), indent=1))


def _line(entry: dict) -> str:
    return json.dumps(_json_safe(entry)) + "\n"


def _json_safe(value):
    """NaN and inf as strings, so that the files stay strict JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _read_lines(path: str) -> tuple[list, bool]:
    """(the entries, whether every line was whole)."""
    if not os.path.exists(path):
        return [], True
    entries = []
    with open(path) as f:
        for line in f:
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill mid-write
                return entries, False
    return entries, True


def _read_json(path: str) -> Optional[dict]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
