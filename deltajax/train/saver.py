"""fit's checkpoint saves: failures of asynchronous saves surfaced at the next step, once, short.

orbax finishes an async save in a background thread and keeps its exception until the next
save waits on it (many steps later, under a long chained traceback). Saver asks after every
step whether the save in flight ended, and re-raises its failure as one SaveError line: the
step, the directory and the root cause.
"""

from absl import logging

from deltajax.train import checkpoint as ckpt


class SaveError(RuntimeError):
    """A checkpoint save failed; the message names the step, the directory and the cause."""


class Saver:
    """The run's managers ({"last", "best"}, from resume.make_managers) and their saves."""

    def __init__(self, managers: dict):
        self.managers = managers
        self._step = {name: None for name in managers}  # the step of each one's newest save

    def __contains__(self, name: str) -> bool:
        return name in self.managers

    def directory(self, name: str) -> str:
        return str(self.managers[name].directory)

    def save(self, name: str, step: int, state, data_iterator=None, metrics=None) -> None:
        """Start a save of `step` (async if so configured), after the earlier one finished."""
        self._wait(name)
        self._step[name] = step
        try:
            ckpt.save(self.managers[name], step, state, data_iterator, metrics)
        except Exception as error:  # a synchronous failure (directory gone, disk full)
            raise save_error(step, self.directory(name), error) from None

    def check(self) -> None:
        """Raise the failure of a save that has ended since the last call; never blocks."""
        for name, manager in self.managers.items():
            if not manager.is_saving_in_progress():
                self._wait(name)

    def wait(self) -> None:
        """Block until every save is on disk; raise the first failure."""
        for name in self.managers:
            self._wait(name)

    def close(self, *, raise_errors: bool) -> None:
        """Wait for pending saves and close; failures are only logged while another error is
        already on its way out (raising here would hide it)."""
        try:
            for name in self.managers:
                try:
                    self._wait(name)
                except SaveError as error:
                    if raise_errors:
                        raise
                    logging.error("%s", error)
        finally:
            for manager in self.managers.values():
                manager.close()

    def _wait(self, name: str) -> None:
        try:
            self.managers[name].wait_until_finished()
        except Exception as error:  # orbax re-raises the background thread's exception
            raise save_error(self._step[name], self.directory(name), error) from None


def save_error(step, directory: str, error: BaseException) -> SaveError:
    """One line: the step, the directory, and the innermost cause of orbax's exception."""
    cause = error
    while cause.__cause__ is not None or (cause.__context__ is not None
                                          and not cause.__suppress_context__):
        cause = cause.__cause__ or cause.__context__
    text = str(cause).strip().splitlines()
    reason = f"{type(cause).__name__}: {text[0]}" if text else type(cause).__name__
    return SaveError(f"saving the checkpoint of step {step} to {directory} failed ({reason}); "
                     "the checkpoints saved before it are intact: fix the cause (free disk "
                     "space, permissions) and run again to resume from the newest")
