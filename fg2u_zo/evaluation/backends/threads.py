"""``backend="threading"``: a thread pool in this process.

For solvers that release the GIL (external processes, numpy/scipy kernels); solvers
share memory with the caller and need not pickle. Threads cannot be killed: a
timed-out solver is abandoned in a helper thread (see
:mod:`fg2u_zo.evaluation.worker`), recorded as ``"timeout"``, and keeps running in the
background until it returns.
"""

from __future__ import annotations

import queue
import time

from .base import Backend
from .events import outcome_events
from .sequential import SequentialBackend
from ..worker import run_items

__all__ = ["ThreadingBackend", "create"]


class ThreadingBackend(Backend):
    """A thread pool of ``n_jobs`` threads."""

    name = "threading"
    task_overhead = 5e-5

    def __init__(self, n_jobs):
        self.n_jobs = n_jobs
        self._executor = None
        self._done = queue.Queue()
        self._futures = {}
        self._live = None

    def start(self):
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor
            self._executor = ThreadPoolExecutor(self.n_jobs, thread_name_prefix="fg2u-zo")
        return 0.0

    def capacity(self):
        return 2 * self.n_jobs  # a queued task per thread: no gap between tasks

    def parallelism(self):
        return self.n_jobs

    def begin(self, solver, kwargs, expected_shape):
        self._live = (solver, kwargs, expected_shape)

    def end(self):
        self._live = None

    def submit(self, task_id, items, timeout):
        self.start()
        solver, kwargs, shape = self._live
        submitted = time.perf_counter()
        future = self._executor.submit(run_items, solver, kwargs, shape, items, timeout)
        self._futures[task_id] = future
        future.add_done_callback(lambda f: self._done.put((task_id, f, submitted)))

    def cancel(self, task_ids):
        for task_id in task_ids:
            future = self._futures.pop(task_id, None)
            if future is not None:
                future.cancel()  # a running one finishes unobserved

    def poll(self, timeout):
        events = []
        try:
            item = self._done.get(timeout=timeout)
        except queue.Empty:
            return events
        while True:
            task_id, future, submitted = item
            if self._futures.pop(task_id, None) is future and not future.cancelled():
                outcomes, _ = future.result()  # run_items never raises
                events += outcome_events(task_id, outcomes, time.perf_counter() - submitted)
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                return events

    def close(self):
        if self._executor is not None:
            # Do not wait: abandoned solvers may still be running in their threads.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


def create(config) -> Backend:
    """The factory registered as ``"threading"`` (one thread: the sequential backend)."""
    config.refuse_cluster()
    if config.n_jobs == 1:
        return SequentialBackend()
    return ThreadingBackend(config.n_jobs)
