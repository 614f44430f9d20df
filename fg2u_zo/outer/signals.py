"""SIGINT/SIGTERM during a run: finish or abandon the step, then checkpoint and stop."""

from __future__ import annotations

import logging
import signal
import threading

from ..errors import FG2UError

__all__ = ["Abandon", "SignalGuard", "annotate"]

logger = logging.getLogger(__name__)


class Abandon(BaseException):
    """Raised from the signal handler to abandon the step in progress.

    A BaseException, so that code catching Exception inside an estimator does not
    swallow it.
    """


class SignalGuard:
    """SIGINT/SIGTERM handling during a run; previous handlers restored on exit.

    - SIGTERM (a batch scheduler's "time is up"): abandon the step in progress at once.
    - First SIGINT (Ctrl-C): finish the step, then stop; a second SIGINT abandons it.

    Either way the run writes a checkpoint of a consistent state (an abandoned step is
    rolled back to its start) and stops. Handlers can only be installed from the main
    thread; elsewhere the guard does nothing.
    """

    def __init__(self):
        self.received = None
        self.abandonable = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum, frame):
        repeated = self.received is not None
        if self.received != signal.SIGTERM:
            self.received = signum
        if self.abandonable and (signum == signal.SIGTERM or repeated):
            self.abandonable = False  # raise once; the rollback must not be interrupted
            raise Abandon(signum)
        if signum == signal.SIGINT:
            logger.warning("interrupt received: finishing the current step, then writing a "
                           "checkpoint; interrupt again to abandon the step")


def annotate(exc, text):
    """Append ``text`` to an exception's message, keeping its class and attributes."""
    if isinstance(exc, FG2UError) and exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]}\n{text}",) + exc.args[1:]
    elif hasattr(exc, "add_note"):
        exc.add_note(text)
