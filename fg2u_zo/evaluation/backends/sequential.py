"""``backend="sequential"``: every task runs in the calling thread, when polled.

Timeouts use SIGALRM in the main thread (they interrupt ``time.sleep``, Python loops,
subprocess waits); in another thread the solver runs in a helper thread that is
abandoned on timeout. A solver that segfaults takes the caller down with it.
"""

from __future__ import annotations

import time

from .base import Backend
from .events import ItemDone, TaskDone
from ..worker import evaluate

__all__ = ["SequentialBackend", "create"]


class SequentialBackend(Backend):
    """Runs each task in the calling thread when polled."""

    name = "sequential"
    task_overhead = 0.0
    in_caller_thread = True

    def __init__(self):
        self._pending = []
        self._live = None

    def capacity(self):
        return 1

    def begin(self, solver, kwargs, expected_shape):
        self._live = (solver, kwargs, expected_shape)

    def end(self):
        self._live = None

    def submit(self, task_id, items, timeout):
        self._pending.append((task_id, items, timeout))

    def cancel(self, task_ids):
        task_ids = set(task_ids)
        self._pending = [t for t in self._pending if t[0] not in task_ids]

    def poll(self, timeout):
        events = []
        while self._pending:
            task_id, items, task_timeout = self._pending.pop(0)
            solver, kwargs, shape = self._live
            start = time.perf_counter()
            for index, point in items:
                outcome, _ = evaluate(solver, index, point, kwargs, shape, task_timeout)
                events.append(ItemDone(task_id, outcome))
            events.append(TaskDone(task_id, time.perf_counter() - start))
        return events

    def close(self):
        self._pending = []


def create(config) -> SequentialBackend:
    """The factory registered as ``"sequential"``."""
    config.refuse_cluster()
    return SequentialBackend()
