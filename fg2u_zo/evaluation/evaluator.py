"""The Evaluator: the only code that calls an inner solver.

Counting (nfev), timing, parallelism, batching, timeouts, retries, validation of the
solver's output and the failure policy live here, in the parent process, and nowhere
else. Where the solver runs is a backend's business (:mod:`fg2u_zo.evaluation.backends`); what
runs next to the solver is in :mod:`fg2u_zo.evaluation.worker`.

How a map goes: the points are cut into tasks (batches of points, sized so that a
task lasts at least a few tens of milliseconds, see ``batch_size``), at most as many
tasks as there are workers are in flight, and each result is handed to the caller's
``on_result`` as soon as it arrives and then dropped. A failed point is retried; a
point that keeps failing is dropped and reported; a worker that dies takes only the
point it was running with it (the others are resubmitted).
"""

from __future__ import annotations

import collections
import inspect
import itertools
import logging
import math
import numbers
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field

from .backends import (BACKENDS, DaskBackend, LokyBackend, RayBackend, SequentialBackend,
                        ThreadingBackend, effective_n_jobs, from_parallel_config)
from ..validation import check_choice, check_positive_float, check_positive_int
from ..errors import FG2UTypeError, FG2UValueError, inner_solver_error
from ..result import Failure

__all__ = ["Evaluator", "MapStats", "BACKENDS"]

logger = logging.getLogger(__name__)

# Automatic batching: a task should last at least this long (and at least
# _OVERHEAD_FACTOR times the backend's per-task overhead), so that dispatching it costs
# a few percent at most ...
_MIN_TASK_SECONDS = 0.02
_OVERHEAD_FACTOR = 10.0
# ... but no task holds more than this many bytes of results at once.
_MAX_TASK_BYTES = 32 * 2**20
# How long one wait on the backend lasts; short enough to notice deadlines.
_POLL_SECONDS = 0.5


def _accepted_keywords(solver) -> frozenset:
    """Which of ``warm_start`` / ``seed`` the solver's signature accepts."""
    try:
        sig = inspect.signature(solver)
    except (TypeError, ValueError):
        return frozenset()
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return frozenset({"warm_start", "seed"})
    return frozenset(name for name in ("warm_start", "seed") if name in sig.parameters)


@dataclass
class MapStats:
    """Bookkeeping of one :meth:`Evaluator.map` or :meth:`Evaluator.solve` call.

    Attributes
    ----------
    nfev : int
        Solver calls whose outcome is known: every result a worker returned (success
        or failure, retries included) plus every attempt charged to a point that
        crashed its worker or was killed for overrunning the timeout.
    solver_time : float
        Seconds spent inside the solver, as timed by the workers and summed here.
    failures : list of Failure
        Points dropped after their retries (``direction`` is left None here).
    resubmitted : int
        Evaluations lost with a worker that another point crashed and run again; not
        in ``nfev`` (whether they had started is unknown).
    tasks : int
        Tasks (batches of points) submitted to the backend.
    wall_time : float
        Seconds of wall-clock time of the call.
    """

    nfev: int = 0
    solver_time: float = 0.0
    failures: list = field(default_factory=list)
    resubmitted: int = 0
    tasks: int = 0
    wall_time: float = 0.0

    @property
    def failed(self) -> set:
        """Indices of the dropped points."""
        return {f.index for f in self.failures}


class _BatchSizer:
    """How many points go into the next task.

    With ``batch_size="auto"`` the per-point solver time is measured on the results
    (and guessed from the base solve before any comes back), and tasks are made to
    last at least ``max(20 ms, 10 x the backend's per-task overhead)``, so that
    dispatching costs a few percent at most; but there are always at least two tasks
    per worker left, so that no worker idles at the end of the map while another one
    finishes a long batch.
    """

    def __init__(self, batch_size, overhead, prior_seconds=None):
        self.fixed = None if batch_size == "auto" else batch_size
        self.overhead = overhead
        self.prior = prior_seconds
        self.total, self.count = 0.0, 0

    def observe(self, seconds):
        self.total += seconds
        self.count += 1

    def size(self, remaining, workers, item_bytes):
        if self.fixed is not None:
            return self.fixed
        per_point = self.total / self.count if self.count else self.prior
        if per_point is None:
            return 1
        target = max(_MIN_TASK_SECONDS, _OVERHEAD_FACTOR * self.overhead)
        k = math.ceil(target / max(per_point, 1e-7))
        k = min(k, math.ceil(remaining / (2 * workers)))
        if item_bytes:
            k = min(k, max(1, _MAX_TASK_BYTES // item_bytes))
        return max(1, k)


class _MapRun:
    """The scheduling loop and failure policy of one map (see Evaluator.map)."""

    def __init__(self, evaluator, backend, points, on_result, *, base, sizer, item_bytes):
        self.ev = evaluator
        self.backend = backend
        self.points = points
        self.on_result = on_result
        self.base = base
        self.sizer = sizer
        self.item_bytes = item_bytes
        self.total = len(points)
        self.stats = MapStats()
        self.fresh = iter(range(self.total))
        self.unsubmitted = self.total
        self.retry = collections.deque()  # points to run again, batched
        self.suspects = collections.deque()  # points lost in a crash: run one per task
        self.suspected = set()
        self.attempts = collections.Counter()
        self.owner = {}  # index -> task id it is in flight with
        self.in_flight = {}  # task id -> indices still without an outcome
        self.task_ids = evaluator._task_ids

    # -- submitting ---------------------------------------------------------------------

    def _next_items(self):
        if self.suspects:
            return [self.suspects.popleft()]
        k = self.sizer.size(self.unsubmitted + len(self.retry), self.backend.parallelism(),
                            self.item_bytes)
        items = []
        while self.retry and len(items) < k:
            items.append(self.retry.popleft())
        while len(items) < k and self.unsubmitted:
            items.append(next(self.fresh))
            self.unsubmitted -= 1
        return items

    def _fill(self):
        capacity = self.backend.capacity()
        while len(self.in_flight) < capacity:
            indices = self._next_items()
            if not indices:
                return
            task_id = next(self.task_ids)
            for index in indices:
                self.owner[index] = task_id
            self.in_flight[task_id] = list(indices)
            self.stats.tasks += 1
            self.backend.submit(task_id, [(i, self.points[i]) for i in indices], self.ev.timeout)

    # -- the loop -----------------------------------------------------------------------

    def run(self):
        start = time.perf_counter()
        try:
            while True:
                self._fill()
                if not self.in_flight:
                    break
                for event in self.backend.poll(_POLL_SECONDS):
                    self._handle(event)
        finally:
            if self.in_flight:  # aborted (threshold, on_result raised, Ctrl-C)
                self.backend.cancel(list(self.in_flight))
            self.stats.wall_time = time.perf_counter() - start
        return self.stats

    def _handle(self, event):
        tag, task_id = event[0], event[1]
        if task_id not in self.in_flight:
            return  # an event of a task given up on
        if tag == "item":
            index, ok, value, seconds = event[2]
            if self.owner.get(index) != task_id:
                return
            self.stats.nfev += 1
            self.stats.solver_time += seconds
            self.sizer.observe(seconds)
            del self.owner[index]
            self.in_flight[task_id].remove(index)
            if ok:
                self.suspected.discard(index)
                self.on_result(index, value)
            else:
                self._charge(index, *value)
        elif tag == "done":
            indices = self.in_flight.pop(task_id)
            for index in indices:  # defensive: a task that ended without these outcomes
                self._release(index, task_id)
                self.retry.append(index)
        elif tag == "lost":
            _, _, _, culprit, kind, message, seconds = event
            indices = self.in_flight.pop(task_id)
            # Every point of the task still without an outcome is lost, whatever the
            # backend listed.
            lost = [i for i in indices if self.owner.get(i) == task_id]
            for index in lost:
                del self.owner[index]
            self._lost(lost, culprit if culprit in lost else None, kind, message, seconds)

    def _release(self, index, task_id):
        if self.owner.get(index) == task_id:
            del self.owner[index]

    def _lost(self, lost, culprit, kind, message, seconds):
        if not lost:
            return
        if culprit is None and len(lost) == 1 and (
                self.backend.isolates_tasks or lost[0] in self.suspected):
            # Alone in its task and nothing else could have shared its fate: guilty.
            culprit = lost[0]
        for index in lost:
            if index == culprit:
                self.stats.nfev += 1
                self.stats.solver_time += seconds
                self._charge(index, kind, message)
            elif culprit is None:
                # Cannot tell who crashed the worker: rerun each alone, free of charge;
                # the one that crashes again alone is the culprit.
                self.suspected.add(index)
                self.suspects.append(index)
                self.stats.resubmitted += 1
            else:
                self.retry.appendleft(index)  # innocent bystander
                self.stats.resubmitted += 1

    def _charge(self, index, kind, message):
        """One failed attempt of ``index``: retry it or drop it."""
        self.attempts[index] += 1
        attempts = self.attempts[index]
        if attempts <= self.ev.max_retries:
            logger.debug("point %d failed (%s), retrying", index, kind)
            (self.suspects if index in self.suspected else self.retry).append(index)
            return
        self.stats.failures.append(Failure(index, None, kind, message, attempts))
        if self.base:
            raise inner_solver_error(
                f"the inner solver failed at the base point phi after {attempts} attempt(s) "
                f"({kind}):\n{message}", kind=kind, detail=message)
        nfail = len(self.stats.failures)
        if nfail > self.ev.max_failure_fraction * self.total:
            raise inner_solver_error(
                f"{nfail} of {self.total} evaluations failed for good, more than "
                f"max_failure_fraction={self.ev.max_failure_fraction} of them (stopped "
                f"early); the last failure, at point {index} after {attempts} attempt(s), "
                f"was ({kind}):\n{message}", kind=kind, detail=message)


class Evaluator:
    """Evaluates an inner solver at many points, serially or in parallel.

    The only object that calls inner solvers: it counts evaluations (``nfev``) and
    solver seconds where the results are gathered, batches fast solves, enforces
    timeouts, retries failed evaluations and drops those that keep failing, and raises
    when too many fail. Results are bitwise identical whatever the backend and the
    number of workers (points travel as float64 arrays, pickled losslessly), as long as
    the solver itself is deterministic for a given ``seed`` (beware of libraries whose
    results depend on their thread count: process workers get ``cores // n_jobs``
    BLAS/OpenMP threads unless the variables are set).

    Parameters
    ----------
    backend : {"sequential", "loky", "threading", "dask", "ray"}, optional
        Where the solver runs. Precedence: this argument; else the backend of an
        enclosing ``joblib.parallel_config`` (``"dask"`` there uses its Client;
        ``prefer="threads"`` means ``"threading"``); else ``"dask"`` when ``client`` or
        ``scheduler_address`` is given; else ``"loky"`` when ``n_jobs > 1``, otherwise
        ``"sequential"``. The configuration is read when the Evaluator is created.

        * ``"sequential"``: in the calling thread. Timeouts use SIGALRM in the main
          thread (they interrupt ``time.sleep``, Python loops, subprocess waits); in
          another thread the solver runs in a helper thread that is abandoned on
          timeout. A solver that segfaults takes the caller down with it.
        * ``"loky"``: worker processes (loky's start method: no re-import of
          ``__main__``, cloudpickle), started once per Evaluator and steered one by one
          (:mod:`fg2u_zo.evaluation.pool`). Timeouts: SIGALRM inside the worker, and
          ``timeout + kill_grace`` seconds after the point started the parent kills the
          worker's process group (solvers stuck in C code) and starts a replacement.
          A worker that dies costs only the point it was running (retried, then
          dropped as ``"crash"``); the rest of its batch is resubmitted.
        * ``"threading"``: a thread pool; for solvers that release the GIL (external
          processes, numpy/scipy kernels). Threads cannot be killed: a timed-out
          solver is abandoned (recorded as ``"timeout"``, the estimate goes on) and
          keeps running in the background until it returns.
        * ``"dask"``: a dask.distributed cluster (``client``, ``scheduler_address`` or a
          new ``LocalCluster(n_workers=n_jobs, threads_per_worker=1, processes=True,
          host="127.0.0.1", dashboard_address=None)`` closed by :meth:`close`). Dask
          runs tasks in threads: a timed-out solver is abandoned like with
          ``"threading"``, and on a cluster this Evaluator started the worker that
          holds it is restarted. A worker that dies fails its tasks with KilledWorker
          (at once on clusters started here, after the scheduler's
          ``allowed-failures`` otherwise); since dask cannot tell which of its tasks
          killed it, they are rerun one point per task and a point that kills a worker
          again is the culprit. Large payloads are scattered to the workers once per map.
        * ``"ray"``: ray tasks (``ray.init(num_cpus=n_jobs)`` unless ray is already
          initialized, or ``ray.init(address=scheduler_address)``). Timeouts: SIGALRM in
          the worker, then ``ray.cancel(force=True)``. Needs ``pip install 'fg2u-zo[ray]'``.
    n_jobs : int, optional
        Number of workers; joblib's convention for negative values (``-1``: all CPUs).
        Default: the ``joblib.parallel_config`` value, else 1 for ``"sequential"`` and
        ``os.cpu_count()`` for the other backends. An existing dask or ray cluster runs
        as many evaluations at once as it has threads/CPUs, whatever ``n_jobs`` says:
        :attr:`workers` reports that number.
    timeout : float, optional
        Seconds allowed for one evaluation; ``None``: no limit. An evaluation that runs
        longer is a failure of kind ``"timeout"``.
    max_retries : int
        Further attempts at a failed evaluation (same point) before it is dropped.
    max_failure_fraction : float in [0, 1)
        When more than this fraction of a map's points are dropped, the map stops
        with :class:`~fg2u_zo.InnerSolverError` (as soon as that is certain).
    batch_size : "auto" or int
        Points per task. ``"auto"`` measures the solve time (the base solve first,
        then every result) and groups fast solves so that each task lasts at least
        ~20 ms (30 ms on dask, whose tasks cost a few ms each), leaving at least two
        tasks per worker; the sequential backend always goes point by point. Pass an
        int for a remote cluster with a slow network.
    scheduler_address : str, optional
        ``"tcp://host:port"`` of a dask scheduler, or the address of a ray cluster.
    client : distributed.Client, optional
        An existing dask client (not closed by :meth:`close`).
    kill_grace : float
        Seconds after ``timeout`` before a process that did not stop is killed.

    Raises
    ------
    FG2UValueError, FG2UTypeError
        For an invalid argument; the message names it.
    ImportError
        When dask or ray is asked for and not installed.

    Notes
    -----
    ``timeout``, ``max_retries``, ``max_failure_fraction`` and ``batch_size`` are read
    at every call and may be changed between calls; the workers stay up. One call at a
    time: an Evaluator is not re-entrant (do not call it from ``on_result``).

    Examples
    --------
    >>> import numpy as np, fg2u_zo as fz
    >>> with fz.Evaluator(timeout=10.0, max_retries=1) as ev:
    ...     theta, stats = ev.solve(lambda phi: 2.0 * phi, np.ones(3))
    ...     out = {}
    ...     stats = ev.map(lambda phi: 2.0 * phi, [np.zeros(3), np.ones(3)],
    ...                    lambda k, theta: out.__setitem__(k, float(theta.sum())))
    >>> theta.tolist(), out, stats.nfev
    ([2.0, 2.0, 2.0], {0: 0.0, 1: 6.0}, 2)

    Reuse one Evaluator across estimates so that the workers start only once:

    >>> problem = fz.BilevelProblem(inner=lambda phi: 2.0 * phi,
    ...                             outer=lambda theta, phi: (theta ** 2).sum())
    >>> with fz.Evaluator("threading", n_jobs=2) as ev:
    ...     g = fz.FG2UZO(num_directions=4, step=1e-4).estimate(problem, np.ones(3), rng=0,
    ...                                                         evaluator=ev)
    >>> g.nfev
    9
    """

    def __init__(self, backend=None, n_jobs=None, *, timeout=None, max_retries=1,
                 max_failure_fraction=0.5, batch_size="auto", scheduler_address=None,
                 client=None, kill_grace=2.0):
        if backend is not None:
            check_choice(backend, "backend", BACKENDS)
        if n_jobs is not None:
            if isinstance(n_jobs, bool) or not isinstance(n_jobs, numbers.Integral):
                raise FG2UTypeError(f"`n_jobs` must be an integer (>= 1, or -1 for all CPUs), "
                                    f"got {n_jobs!r}")
            if n_jobs == 0:
                raise FG2UValueError("`n_jobs` must be >= 1, or negative to count from the "
                                     "number of CPUs (-1: all of them); got 0")
        self.timeout = check_positive_float(timeout, "timeout", allow_none=True)
        self.max_retries = check_positive_int(max_retries, "max_retries", minimum=0)
        if isinstance(max_failure_fraction, bool) or not isinstance(
                max_failure_fraction, numbers.Real) or not 0.0 <= max_failure_fraction < 1.0:
            raise FG2UValueError(
                f"`max_failure_fraction` must be in [0, 1), got {max_failure_fraction!r}")
        self.max_failure_fraction = float(max_failure_fraction)
        if batch_size != "auto":
            batch_size = check_positive_int(batch_size, "batch_size")
        self.batch_size = batch_size
        self.kill_grace = check_positive_float(kill_grace, "kill_grace", allow_zero=True)
        if scheduler_address is not None and not isinstance(scheduler_address, str):
            raise FG2UTypeError(f"`scheduler_address` must be a string such as "
                                f"'tcp://host:8786', got {type(scheduler_address).__name__}")
        if client is not None:
            dist = sys.modules.get("distributed")
            if dist is None or not isinstance(client, dist.Client):
                raise FG2UTypeError(f"`client` must be a distributed.Client, got "
                                    f"{type(client).__name__}")
            if scheduler_address is not None:
                raise FG2UValueError("pass `client` or `scheduler_address`, not both")

        config_backend = config_n_jobs = config_client = None
        if backend is None or n_jobs is None:
            config_backend, config_n_jobs, config_client = from_parallel_config()
        if backend is None:
            if client is not None:
                backend = "dask"
            elif config_backend is not None:
                backend = config_backend
            elif scheduler_address is not None:
                backend = "dask"
        if n_jobs is None and config_n_jobs is not None:
            n_jobs = config_n_jobs
        if n_jobs is not None:
            n_jobs = effective_n_jobs(int(n_jobs))
        if backend is None:
            backend = "loky" if (n_jobs or 1) > 1 else "sequential"
        if n_jobs is None:
            import os
            n_jobs = 1 if backend == "sequential" else (os.cpu_count() or 1)
        if client is None and backend == "dask" and scheduler_address is None:
            client = config_client
        if client is not None and backend != "dask":
            raise FG2UValueError(f"`client` is a dask client: use it with backend='dask', "
                                 f"not {backend!r}")
        if scheduler_address is not None and backend not in ("dask", "ray"):
            raise FG2UValueError(f"`scheduler_address` applies to backend='dask' or 'ray', "
                                 f"not {backend!r}")
        self.backend = backend
        self.n_jobs = n_jobs
        self.scheduler_address = scheduler_address
        self.client = client
        #: seconds spent starting workers or a cluster (the last start)
        self.startup_time = 0.0
        self._task_ids = itertools.count()
        self._lock = threading.RLock()
        self._running = False
        self._last_solve = None  # (weakref to solver, seconds): a batching prior
        self._impl = None
        self._finalizer = None
        self._make_backend()  # fails now, not at first use, when dask/ray is missing

    def _make_backend(self):
        name = self.backend
        if name == "sequential" or (name == "threading" and self.n_jobs == 1):
            impl = SequentialBackend()
        elif name == "threading":
            impl = ThreadingBackend(self.n_jobs)
        elif name == "loky":
            impl = LokyBackend(self.n_jobs, self.kill_grace)
        elif name == "dask":
            impl = DaskBackend(self.n_jobs, client=self.client,
                               scheduler_address=self.scheduler_address,
                               kill_grace=self.kill_grace)
        else:
            impl = RayBackend(self.n_jobs, scheduler_address=self.scheduler_address,
                              kill_grace=self.kill_grace)
        self._impl = impl
        self._started = False
        # Workers and clusters go away with the Evaluator even without close().
        self._finalizer = weakref.finalize(self, impl.close)

    def __repr__(self):
        return (f"Evaluator(backend={self.backend!r}, n_jobs={self.n_jobs}, "
                f"timeout={self.timeout}, max_retries={self.max_retries}, "
                f"max_failure_fraction={self.max_failure_fraction}, "
                f"batch_size={self.batch_size!r})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def workers(self) -> int:
        """Evaluations that can run at once: ``n_jobs``, or for an existing dask
        cluster its worker threads (asked of the scheduler; starts the backend)."""
        self.start()
        count = getattr(self._impl, "workers", None)
        return int(count()) if callable(count) else int(self._impl.parallelism())

    def start(self):
        """Start the workers (or cluster) now and wait until they accept work.

        Otherwise they start at the first :meth:`solve` or :meth:`map`. The seconds
        it took are kept in :attr:`startup_time`.

        Returns
        -------
        Evaluator
            ``self``.
        """
        if self._impl is None:
            self._make_backend()
        if not self._started:
            self.startup_time = self._impl.start()
            self._started = True
        return self

    def close(self):
        """Release what this Evaluator started: worker processes, thread pools, a dask
        LocalCluster and its client, a ray runtime. A given dask ``client`` stays open.
        The Evaluator can be used again afterwards (workers start anew)."""
        if self._finalizer is not None:
            self._finalizer()  # runs impl.close() once
        self._impl, self._finalizer = None, None

    def _kwargs(self, solver, seed, warm_start):
        accepted = _accepted_keywords(solver)
        kwargs = {}
        if seed is not None and "seed" in accepted:
            kwargs["seed"] = seed
        if warm_start is not None and "warm_start" in accepted:
            kwargs["warm_start"] = warm_start
        return kwargs

    def _prior_seconds(self, solver):
        if self._last_solve is None:
            return None
        ref, seconds = self._last_solve
        return seconds if ref() is solver else None

    def _run(self, solver, points, on_result, *, seed, warm_start, expected_shape, base):
        if not callable(solver):
            raise FG2UTypeError(f"the inner solver must be callable, got {type(solver).__name__}")
        with self._lock:
            if self._running:
                raise FG2UValueError("Evaluator.map/solve is not re-entrant: do not call the "
                                     "same Evaluator from on_result")
            self._running = True
            try:
                self.start()
                impl = self._impl
                item_bytes = None
                if expected_shape is not None:
                    item_bytes = 8 * max(1, math.prod(expected_shape))
                # In the calling thread a batch would only delay on_result: one by one.
                batch_size = 1 if isinstance(impl, SequentialBackend) else self.batch_size
                sizer = _BatchSizer(batch_size, impl.task_overhead, self._prior_seconds(solver))
                run = _MapRun(self, impl, points, on_result, base=base, sizer=sizer,
                              item_bytes=item_bytes)
                impl.begin(solver, self._kwargs(solver, seed, warm_start), expected_shape)
                try:
                    return run.run()
                finally:
                    impl.end()
            finally:
                self._running = False

    def solve(self, solver, phi, *, seed=None, warm_start=None, expected_shape=None):
        """Evaluate the solver at one point, with retries, on the backend's workers.

        Parameters
        ----------
        solver : callable
            ``solver(phi, *, warm_start=None, seed=None) -> ndarray``; the keywords are
            passed only when its signature accepts them.
        phi : ndarray
            The point.
        seed : int, optional
            Passed as ``seed=`` (common random numbers for stochastic solvers).
        warm_start : ndarray, optional
            Passed as ``warm_start=``.
        expected_shape : tuple, optional
            Shape the output must have.

        Returns
        -------
        theta : ndarray
            The solver's output as float64.
        stats : MapStats

        Raises
        ------
        InnerSolverError
            When every attempt failed (exception, NaN/inf, wrong shape, timeout,
            crash); the message carries the tail of the last traceback or stderr, and
            the subclass matches the kind (``InvalidSolverOutputError`` for NaN/shape).

        Examples
        --------
        >>> import numpy as np, fg2u_zo as fz
        >>> theta, stats = fz.Evaluator().solve(np.cumsum, np.ones(3))
        >>> theta.tolist(), stats.nfev
        ([1.0, 2.0, 3.0], 1)
        """
        box = {}

        def keep(index, theta):
            box["theta"] = theta

        stats = self._run(solver, [phi], keep, seed=seed, warm_start=warm_start,
                          expected_shape=expected_shape, base=True)
        try:
            self._last_solve = (weakref.ref(solver), stats.solver_time / max(stats.nfev, 1))
        except TypeError:  # not weak-referenceable: no batching prior
            self._last_solve = None
        return box["theta"], stats

    def map(self, solver, points, on_result, *, seed=None, warm_start=None,
            expected_shape=None) -> MapStats:
        """Evaluate the solver at every point and hand each result to ``on_result``.

        Parameters
        ----------
        solver : callable
            ``solver(phi, *, warm_start=None, seed=None) -> ndarray``.
        points : sequence of ndarray
            Anything with ``__len__`` and ``__getitem__``; points are taken when they are
            submitted (and again for a retry), never all at once.
        on_result : callable
            ``on_result(index, theta)``, called in the calling thread as results arrive,
            in any order, once per successful point. Reduce ``theta`` and drop it:
            memory then stays O(size of one theta x number of workers).
        seed, warm_start : optional
            Passed to every call that accepts them (the same for every point).
        expected_shape : tuple, optional
            Shape every output must have (else a failure of kind ``"shape"``).

        Returns
        -------
        MapStats
            ``nfev``, ``solver_time`` and the dropped points (``failures``).

        Raises
        ------
        InnerSolverError
            When more than ``max_failure_fraction`` of the points are dropped; the
            message carries the tail of the last error.

        Examples
        --------
        >>> import numpy as np, fg2u_zo as fz
        >>> sums = {}
        >>> def keep_sum(k, theta):
        ...     sums[k] = float(theta.sum())
        >>> stats = fz.Evaluator().map(np.square, [np.ones(2), 2 * np.ones(2)], keep_sum)
        >>> sums, stats.nfev, stats.failures
        ({0: 2.0, 1: 8.0}, 2, [])
        """
        return self._run(solver, points, on_result, seed=seed, warm_start=warm_start,
                         expected_shape=expected_shape, base=False)
