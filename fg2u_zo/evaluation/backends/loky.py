"""``backend="loky"``: worker processes started with loky, steered one by one.

The pool (:mod:`fg2u_zo.evaluation.backends.pool`) is started once per Evaluator.
Timeouts: SIGALRM inside the worker, and ``timeout + kill_grace`` seconds after the
point started the parent kills the worker's process group (solvers stuck in C code)
and starts a replacement. A worker that dies costs only the point it was running;
the rest of its batch is resubmitted.
"""

from __future__ import annotations

import uuid

from .base import Backend, pickle_job

__all__ = ["LokyBackend", "create"]


class LokyBackend(Backend):
    """Worker processes started with loky, steered by :class:`ProcessPool`."""

    name = "loky"
    task_overhead = 2e-4
    process_isolated = True
    kills_on_timeout = True

    def __init__(self, n_jobs, kill_grace):
        self.n_jobs, self.kill_grace = n_jobs, kill_grace
        self.pool = None

    def start(self):
        from .pool import ProcessPool
        if self.pool is None or self.pool.closed:  # closed after workers kept dying
            self.pool = ProcessPool(self.n_jobs, kill_grace=self.kill_grace)
        return self.pool.wait_ready()

    def capacity(self):
        return 2 * self.pool.parallelism  # a task queued behind each running one

    def parallelism(self):
        return self.pool.parallelism

    def begin(self, solver, kwargs, expected_shape):
        if self.pool is None or self.pool.closed:
            self.start()
        blob = pickle_job((solver, kwargs, expected_shape), self.name)
        self.pool.set_payload(uuid.uuid4().hex, blob)

    def submit(self, task_id, items, timeout):
        self.pool.submit(task_id, items, timeout)

    def poll(self, timeout):
        return self.pool.poll(timeout)

    def cancel(self, task_ids):
        self.pool.cancel(task_ids)

    def close(self):
        if self.pool is not None:
            self.pool.close()


def create(config) -> LokyBackend:
    """The factory registered as ``"loky"``."""
    config.refuse_cluster()
    return LokyBackend(config.n_jobs, config.kill_grace)
