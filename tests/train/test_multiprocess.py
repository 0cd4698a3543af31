"""Two processes on localhost (gloo CPU collectives) train together and agree, with jit and
with pmap (whose save and resume need global arrays)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import portpicker

from deltajax.train import fit
from tests.train.helpers import MODEL, TRAIN_SOURCE
from tests.train.multiprocess_worker import multiprocess_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_two_processes_train_the_same_model_as_one_process_and_pmap_resumes(tmp_path):
    port = portpicker.pick_unused_port()
    env = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu"}
    outputs = [tmp_path / f"process{i}.json" for i in range(2)]
    workers = [subprocess.Popen(
        [sys.executable, "-m", "tests.train.multiprocess_worker", str(i), "2", str(port),
         str(tmp_path / "run"), str(outputs[i])],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    logs = []
    try:
        for worker in workers:
            # A hang guard, not a speed target: ~40 s on a quiet 2-core machine, but the two
            # processes' gloo collectives slow down badly when the cores are oversubscribed.
            logs.append(worker.communicate(timeout=600)[0].decode(errors="replace"))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert [w.returncode for w in workers] == [0, 0], "\n".join(log[-3000:] for log in logs)
    results = [json.loads(path.read_text()) for path in outputs]
    assert results[0]["processes"] == 2 and results[0]["devices"] == 4
    assert results[0]["losses"] == results[1]["losses"]
    assert results[0]["checksum"] == results[1]["checksum"]
    assert sorted(os.listdir(tmp_path / "run" / "jit" / "checkpoints")) == ["2", "4"]
    # pmap: the unreplicated state lives on each process's devices; it saves, and a run
    # stopped at step 2 resumes to the state of the uninterrupted (jit) run.
    assert sorted(os.listdir(tmp_path / "run" / "pmap" / "checkpoints")) == ["2", "4"]
    for result in results:
        assert result["pmap_steps"] == [[1, 2], [3, 4]]
        np.testing.assert_allclose(result["pmap_losses"], result["losses"], rtol=1e-6)
        assert result["pmap_vs_jit"] <= 1e-6
    single = fit(multiprocess_config(), MODEL, TRAIN_SOURCE, str(tmp_path / "single"),
                 devices=jax.devices()[:1])
    np.testing.assert_allclose(results[0]["losses"], [h["loss"] for h in single.history],
                               rtol=2e-5)
