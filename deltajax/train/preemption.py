"""Preemption notices (SIGTERM on TPU pods and SLURM, SIGINT from a terminal) as a per-step flag.

One process: fit's own handlers set a flag, and the step being run finishes before fit saves
and returns. Several processes must stop at the same step, so there the notice goes through
JAX's preemption service (started by jax.distributed.initialize): its notifier owns SIGTERM and
`reached_preemption_sync_point(step)` turns true on every process at the same step, agreed in
the background by the coordination service, not by a collective per step. SIGINT there is
re-sent as SIGTERM so that Ctrl-C on one process stops them all at one step too.
"""

import os
import signal
import threading
from typing import Optional

import jax
from absl import logging
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Watcher:
    """Use as a context manager around the loop; `reached(step)` every step, on every process.

    The previous handlers come back on exit. Off the main thread (signals cannot be caught
    there) or on several processes without JAX's preemption service, nothing is installed."""

    def __init__(self):
        self._signal: Optional[int] = None
        self._previous: dict = {}
        self._multi = jax.process_count() > 1
        self._service = self._multi and _preemption_service_running()

    def __enter__(self) -> "Watcher":
        if threading.current_thread() is not threading.main_thread():
            return self
        if self._multi and not self._service:
            logging.warning("JAX's preemption service is off (jax_enable_preemption_service): "
                            "on %d processes SIGTERM will stop training without a save",
                            jax.process_count())
            return self
        # With the service, SIGTERM stays with its notifier; only SIGINT is forwarded to it.
        for signum in (signal.SIGINT,) if self._multi else SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        del frame
        if self._multi:
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if self._signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait
        self._signal = signum
        logging.warning("received %s: finishing the current step, then saving and stopping",
                        signal.Signals(signum).name)

    @property
    def signal_name(self) -> str:
        if self._service:
            return "preemption notice (SIGTERM or SIGINT on a process)"
        return "SIGTERM" if self._signal is None else signal.Signals(self._signal).name

    def reached(self, step: int) -> bool:
        """True when training should save `step` and stop; the same on every process."""
        if self._service:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._signal is not None


def _preemption_service_running() -> bool:
    try:  # the only place JAX (0.4 to 0.12) tells whether the service was started
        from jax._src import distributed
        return distributed.global_state.preemption_sync_manager is not None
    except (ImportError, AttributeError):
        return False
