"""The protocol between the Evaluator and the place where solves run.

A backend runs *tasks* (batches of points) and reports *events*
(:mod:`~fg2u_zo.evaluation.backends.events`); the Evaluator keeps every policy
(batching, retries, failure accounting, counting) and never needs to know where a
task ran. One map goes::

    backend.start()                          # once per Evaluator: workers, a cluster
    backend.begin(solver, kwargs, shape)     # once per map: ship the solver
    backend.submit(task_id, items, timeout)  # up to capacity() tasks in flight
    backend.poll(wait) -> [event, ...]       # ItemDone / TaskDone / TaskLost
    backend.cancel(task_ids)                 # only when the map is given up
    backend.end()                            # the map is over
    backend.close()                          # the Evaluator is closed

What runs next to the solver (timeouts, validation of the output, the outcome
record) is :func:`fg2u_zo.evaluation.worker.evaluate` /
:func:`~fg2u_zo.evaluation.worker.run_items`; a backend calls it where the solver
runs and hands the outcomes back.

A new engine is one subclass and one :func:`~fg2u_zo.evaluation.backends.register_backend`
call; ``tests/test_backends_conformance.py`` runs every registered backend through
the same checks.
"""

from __future__ import annotations

import abc
import pickle
from dataclasses import dataclass

from ...errors import FG2UTypeError, FG2UValueError

__all__ = ["Backend", "BackendConfig", "pickle_job"]


@dataclass(frozen=True)
class BackendConfig:
    """What the Evaluator tells a backend factory.

    Attributes
    ----------
    name : str
        The registered name the backend was asked for by.
    n_jobs : int
        Workers to start (>= 1).
    kill_grace : float
        Seconds after a point's timeout before a process that did not stop is killed.
    client : distributed.Client or None
        An existing dask client.
    scheduler_address : str or None
        The address of a cluster to connect to.
    """

    name: str
    n_jobs: int
    kill_grace: float = 2.0
    client: object = None
    scheduler_address: str | None = None

    def refuse_cluster(self):
        """Raise when a cluster was given to a backend that starts its own workers."""
        if self.client is not None:
            raise FG2UValueError(f"`client` is a dask client: use it with backend='dask', "
                                 f"not {self.name!r}")
        if self.scheduler_address is not None:
            raise FG2UValueError(f"`scheduler_address` applies to backend='dask' or 'ray', "
                                 f"not {self.name!r}")


class Backend(abc.ABC):
    """Where the Evaluator's tasks run; subclass it to add an engine.

    A *task* is ``(task_id, items, timeout)`` with ``items = [(index, point), ...]``;
    each point is evaluated with :func:`fg2u_zo.evaluation.worker.evaluate` (or
    :func:`~fg2u_zo.evaluation.worker.run_items`), which enforces the per-point
    timeout and turns everything into an :class:`~fg2u_zo.evaluation.worker.Outcome`.
    The backend reports, from :meth:`poll`:

    * :class:`~fg2u_zo.evaluation.backends.events.ItemDone` per evaluated point, then
      :class:`~fg2u_zo.evaluation.backends.events.TaskDone` when the task ends;
    * :class:`~fg2u_zo.evaluation.backends.events.TaskLost` when the worker running it
      died or had to be killed: the points without an outcome are then retried or
      charged by the Evaluator.

    The methods are called from one thread, one map at a time. Results must be the
    solver's bytes: the Evaluator checks nothing a backend could round.

    Attributes
    ----------
    name : str
        Name for messages.
    isolates_tasks : bool
        True when a lost task that held a single point proves that point guilty (no
        other task shared its worker's fate). False for engines that cannot say which
        of a worker's tasks killed it (dask).
    task_overhead : float
        Typical seconds to dispatch one task; automatic batching makes tasks last at
        least ten times this.
    in_caller_thread : bool
        Tasks run in the calling thread during :meth:`poll`: batching would only delay
        the results, so the Evaluator submits one point per task.
    process_isolated : bool
        Solves run in worker processes: a solver that kills its process (a segfault,
        ``os._exit``, the out-of-memory killer) costs a worker, reported as a failure
        of kind ``"crash"``, not the caller.
    kills_on_timeout : bool
        A solver past its timeout is stopped even when it does not return to Python
        (stuck in C code, SIGALRM blocked): its process is killed. Where False, a
        timed-out solver is interrupted when it can be (SIGALRM in a main thread) or
        abandoned to run on in the background (threads); either way the point is
        reported as ``"timeout"`` and the map goes on.
    """

    name = "backend"
    isolates_tasks = True
    task_overhead = 1e-4
    in_caller_thread = False
    process_isolated = False
    kills_on_timeout = False

    def start(self) -> float:
        """Start workers or connect to a cluster, and wait until they accept work.

        Called before the first map and again after :meth:`close`; must be cheap when
        already started.

        Returns
        -------
        float
            Seconds it took.
        """
        return 0.0

    @abc.abstractmethod
    def capacity(self) -> int:
        """Tasks worth having in flight, queued ones included."""

    def parallelism(self) -> int:
        """Tasks that run at the same time (what batch sizes are balanced over)."""
        return self.capacity()

    def workers(self) -> int:
        """Evaluations that can run at once (an existing cluster's, not ``n_jobs``)."""
        return self.parallelism()

    @abc.abstractmethod
    def begin(self, solver, kwargs, expected_shape):
        """Get ready for a map: ship ``(solver, kwargs, expected_shape)`` where needed.

        ``kwargs`` (``seed=``, ``warm_start=``) go to every call of the solver;
        ``expected_shape`` (or None) to :func:`~fg2u_zo.evaluation.worker.evaluate`.
        """

    def end(self):
        """The map is over: release what :meth:`begin` shipped."""

    @abc.abstractmethod
    def submit(self, task_id, items, timeout):
        """Start (or queue) a task: ``items = [(index, point), ...]``, ``timeout`` per point."""

    @abc.abstractmethod
    def poll(self, timeout) -> list:
        """Wait up to ``timeout`` seconds for something to happen; return the events."""

    @abc.abstractmethod
    def cancel(self, task_ids):
        """Forget these tasks: drop queued ones, let running ones end unobserved (or
        stop them); no event of theirs may follow."""

    @abc.abstractmethod
    def close(self):
        """Stop the workers and release everything :meth:`start` made; idempotent."""


def pickle_job(job, backend: str) -> bytes:
    """cloudpickle ``job`` once, with an error that says what to do when it fails."""
    import cloudpickle  # a dependency of joblib
    try:
        return cloudpickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - pickling errors come in many types
        raise FG2UTypeError(
            f"the inner solver (or its warm_start) cannot be pickled for backend="
            f"{backend!r}: {type(exc).__name__}: {exc}. Make it a module-level function or "
            "a picklable object, or use backend='threading' / 'sequential'") from exc
