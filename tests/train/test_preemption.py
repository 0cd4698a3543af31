"""SIGTERM/SIGINT: the step in flight finishes, is saved, fit returns preempted=True (the
process exits 0), and the resumed run equals an uninterrupted one bit for bit."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import portpicker

from deltajax.train import fit
from tests.train.helpers import MODEL, TRAIN_SOURCE, tiny_config
from tests.train.preemption_worker import PREEMPTION_STEPS, preemption_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEVICE = jax.devices()[:1]


def _assert_same(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def _saved_steps(workdir):
    return sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit())


def _signal_mid_run(run, outputs, signum, target=0, distributed=False):
    """Start one worker per output (several: localhost processes), send `signum` to worker
    `target` once the step-5 checkpoint exists, and return their exit codes and logs."""
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    port = portpicker.pick_unused_port()
    workers = [subprocess.Popen(
        [sys.executable, "-m", "tests.train.preemption_worker", str(run), str(output)]
        + ([str(i), str(len(outputs)), str(port)] if distributed else []),
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for i, output in enumerate(outputs)]
    try:
        deadline = time.monotonic() + 150
        while not (run / "checkpoints" / "5").is_dir():  # mid-run: past the first save
            codes = [w.poll() for w in workers]
            assert codes == [None] * len(workers) and time.monotonic() < deadline, codes
            time.sleep(0.01)
        workers[target].send_signal(signum)
        # A hang guard (gloo collectives slow down badly on oversubscribed cores).
        logs = [w.communicate(timeout=600)[0].decode(errors="replace") for w in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    return [w.returncode for w in workers], logs


def test_sigterm_saves_the_current_step_exits_0_and_the_resumed_run_is_bit_exact(tmp_path):
    run, output = tmp_path / "run", tmp_path / "out.json"
    codes, logs = _signal_mid_run(run, [output], signal.SIGTERM)
    log = logs[0]
    assert codes == [0], log[-3000:]
    stopped = json.loads(output.read_text())
    step = stopped["step"]
    assert stopped["preempted"] and 5 <= step < PREEMPTION_STEPS, stopped
    assert f"SIGTERM: stopped after step {step} and saved it" in log
    assert f"resume from step {step}" in log
    assert _saved_steps(run)[-1] == step
    assert [h["step"] for h in stopped["history"]] == list(range(1, step + 1))

    resumed = fit(preemption_config(), MODEL, TRAIN_SOURCE, str(run), devices=DEVICE)
    straight = fit(preemption_config(), MODEL, TRAIN_SOURCE, str(tmp_path / "straight"),
                   devices=DEVICE)
    assert not resumed.preempted and [h["step"] for h in resumed.history][0] == step + 1
    _assert_same(resumed.state.params, straight.state.params)
    _assert_same(resumed.state.opt_state, straight.state.opt_state)
    losses = [h["loss"] for h in stopped["history"] + resumed.history]
    assert losses == [h["loss"] for h in straight.history]


class _SignalAtRead:
    """TRAIN_SOURCE that sends the process `signum` when grain's reading threads first read
    example `index` (reads on the main thread are fit's checks before training)."""

    def __init__(self, signum, index):
        self._signum, self._index, self._sent = signum, index, False

    def __len__(self):
        return len(TRAIN_SOURCE)

    def __getitem__(self, index):
        loading = threading.current_thread() is not threading.main_thread()
        if loading and index == self._index and not self._sent:
            self._sent = True
            os.kill(os.getpid(), self._signum)
        return TRAIN_SOURCE[index]


def test_sigint_stops_after_a_saved_step_and_the_handlers_are_restored(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    config = tiny_config(num_steps=20, checkpoint__every_steps=50, data__shuffle=False)
    # Unshuffled: example 40 is in the batch of step 6 (read ahead by the prefetch threads).
    result = fit(config, MODEL, _SignalAtRead(signal.SIGINT, 40), str(tmp_path), devices=DEVICE)
    assert result.preempted and not result.stopped_early
    step = int(result.state.step)
    assert step < 20 and result.history[-1]["step"] == step
    assert _saved_steps(tmp_path) == [step]  # though no save was due before step 50
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_a_notice_to_one_of_two_processes_stops_both_at_the_same_saved_step(tmp_path):
    run, outputs = tmp_path / "run", [tmp_path / f"out{i}.json" for i in range(2)]
    codes, logs = _signal_mid_run(run, outputs, signal.SIGINT, target=1, distributed=True)
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    stopped = [json.loads(output.read_text()) for output in outputs]
    step = stopped[0]["step"]
    assert all(s["preempted"] and s["step"] == step for s in stopped), stopped
    assert step < PREEMPTION_STEPS and _saved_steps(run)[-1] == step
    assert all(f"resume from step {step}" in log for log in logs)
