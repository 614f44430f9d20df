"""The Evaluator: the only code that calls an inner solver.

Counting (nfev), timing, parallelism, batching, timeouts, retries, validation of the
solver's output and the failure policy live here, in the parent process, and nowhere
else. Where the solver runs is a backend's business
(:mod:`fg2u_zo.evaluation.backends`, looked up by name in its registry); what runs
next to the solver is in :mod:`fg2u_zo.evaluation.worker`; the scheduling loop of one
call is :class:`~fg2u_zo.evaluation.map_run.MapRun`.

Why one module of ~530 lines: the Evaluator's public surface (``solve``, ``map``, the
backend's life cycle, the journal hook) and its documentation, about a third of the
lines, belong to one class; the loop, the backends and the worker side are elsewhere.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import numbers
import sys
import threading
import weakref

import numpy as np

from .backends import BackendConfig, BackendNames, check_backend_name, create_backend
from .joblib_config import effective_n_jobs, from_parallel_config, usable_cpus
from .map_run import BatchSizer, Call, MapRun, MapStats
from .requests import ReplayCache, Reply, Request
from .solver_memory import SolverMemory, accepted_keywords
from .worker import headline
from ..validation import check_positive_float, check_positive_int
from ..errors import FG2UTypeError, FG2UValueError

__all__ = ["Evaluator", "MapStats", "BACKENDS", "evaluator_scope"]

logger = logging.getLogger(__name__)

#: The registered backend names, read from the registry at every use.
BACKENDS = BackendNames()

# The oversubscription hint is given once per process.
_HINTED = set()


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
    backend : {"sequential", "loky", "threading", "dask", "ray"} or a registered name, optional
        Where the solver runs: a name of the backend registry
        (:func:`~fg2u_zo.register_backend`, :func:`~fg2u_zo.available_backends`).
        Precedence: this argument; else the backend of an
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
          (:mod:`fg2u_zo.evaluation.backends.pool`). Timeouts: SIGALRM inside the worker, and
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
        the CPUs this process may use (``joblib.cpu_count()``) for the other backends.
        More workers than CPUs slow a CPU-bound solver down (a hint is logged once). An
        existing dask or ray cluster runs as many evaluations at once as it has
        threads/CPUs, whatever ``n_jobs`` says: :attr:`workers` reports that number.
    timeout : float, optional
        Seconds allowed for one evaluation; ``None``: no limit. An evaluation that runs
        longer is a failure of kind ``"timeout"``.
    max_retries : int
        Further attempts at a failed evaluation (same point) before it is dropped.
        Failures that the same point gives again are not retried: the solver rejected
        its arguments (``FG2UValueError``/``FG2UTypeError``), or reported an unusable
        result itself (an ``InnerSolverError`` of kind ``"nonfinite"`` or
        ``"missing_executable"``, or any exception with ``retryable = False``).
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

    Attributes
    ----------
    failure_counts : dict
        ``kind -> number`` of evaluations dropped for good since the Evaluator was
        made (each call's own are in its :class:`MapStats`). The first failure of each
        kind is logged at WARNING (logger ``fg2u_zo.evaluation.evaluator``) with the
        count of its call; later ones are only counted.
    startup_time : float
        Seconds the last start of the workers took.
    nfev_replayed : int
        Evaluations answered from an attached journal (:meth:`journaling`) since the
        Evaluator was made, instead of by the solver; not counted in any ``nfev``.
    lost_counts : dict
        ``kind -> number`` of evaluations lost through no fault of their own and run
        again since the Evaluator was made (see :attr:`MapStats.lost_counts`: a
        worker that died or left, the connection to a dask scheduler); each call
        that lost some logs one line at INFO.

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

    # Class-level defaults: also those of subclasses that do not run __init__.
    _journal = None
    nfev_replayed = 0

    def __init__(self, backend=None, n_jobs=None, *, timeout=None, max_retries=1,
                 max_failure_fraction=0.5, batch_size="auto", scheduler_address=None,
                 client=None, kill_grace=2.0):
        if backend is not None:
            check_backend_name(backend)
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
            n_jobs = 1 if backend == "sequential" else usable_cpus()
        if client is None and backend == "dask" and scheduler_address is None:
            client = config_client
        self.backend = backend
        self.n_jobs = n_jobs
        self.scheduler_address = scheduler_address
        self.client = client
        #: seconds spent starting workers or a cluster (the last start)
        self.startup_time = 0.0
        #: failures for good since the Evaluator was made, by kind (see MapStats)
        self.failure_counts = {}
        self.nfev_replayed = 0
        self.lost_counts = {}
        self._warned_kinds = set()
        self._task_ids = itertools.count()
        self._lock = threading.RLock()
        self._running = False
        self._memory = SolverMemory()
        self._impl = None
        self._finalizer = None
        self._make_backend()  # fails now, not at first use, when dask/ray is missing
        if client is None and scheduler_address is None and backend != "sequential":
            self._hint_oversubscription()

    def _make_backend(self):
        config = BackendConfig(name=self.backend, n_jobs=self.n_jobs, kill_grace=self.kill_grace,
                               client=self.client, scheduler_address=self.scheduler_address)
        impl = create_backend(self.backend, config)
        self._impl = impl
        self._started = False
        # Workers and clusters go away with the Evaluator even without close().
        self._finalizer = weakref.finalize(self, impl.close)

    def _hint_oversubscription(self):
        cpus = usable_cpus()
        if self.n_jobs <= cpus or "n_jobs" in _HINTED:
            return
        _HINTED.add("n_jobs")
        logger.warning(
            "n_jobs=%d is more than the %d CPU(s) this process may use: the workers "
            "oversubscribe the cores, and a CPU-bound solver then runs slower per call and "
            "no faster overall; use n_jobs <= %d unless the solver mostly waits (I/O, a "
            "remote program). This hint is given once.", self.n_jobs, cpus, cpus)

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
    def backend_object(self):
        """The :class:`~fg2u_zo.Backend` this Evaluator runs on (made anew after
        :meth:`close`; starts nothing)."""
        if self._impl is None:
            self._make_backend()
        return self._impl

    @property
    def workers(self) -> int:
        """Evaluations that can run at once: ``n_jobs``, or for an existing dask
        cluster its worker threads (asked of the scheduler; starts the backend)."""
        self.start()
        return int(self._impl.workers())

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

    @contextlib.contextmanager
    def journaling(self, journal):
        """Inside the block, answer solves from ``journal`` (a
        :class:`~fg2u_zo.evaluation.requests.ReplayCache` such as a run's
        :class:`~fg2u_zo.persist.journal.EvaluationJournal`, or None for none) and
        record every success as it arrives; replayed ones count in
        ``nfev_replayed``, not ``nfev``. Used by :func:`fg2u_zo.minimize` with a
        ``checkpoint=``; raises FG2UValueError when a journal is already attached."""
        if journal is None:
            yield self
            return
        if not isinstance(journal, ReplayCache):
            raise FG2UTypeError(f"`journal` must be a ReplayCache (lookup, record, "
                                f"replayable), got {type(journal).__name__}")
        if self._journal is not None:
            raise FG2UValueError("this Evaluator already journals another run's "
                                 "evaluations; runs sharing an Evaluator must not overlap")
        self._journal = journal
        try:
            yield self
        finally:
            self._journal = None

    def _report(self, replies, call):
        """Add a call's failures to the totals; log each kind the first time it appears."""
        lost = {}
        for reply in replies:
            for kind, count in reply.lost_counts.items():
                lost[kind] = lost.get(kind, 0) + count
                self.lost_counts[kind] = self.lost_counts.get(kind, 0) + count
        if lost:
            logger.info("%d evaluation(s) of this %s were lost through no fault of their "
                        "own and run again (%s); totals in Evaluator.lost_counts",
                        sum(lost.values()), call,
                        ", ".join(f"{k}: {n}" for k, n in sorted(lost.items())))
        for reply in replies:
            for kind, count in reply.failure_counts.items():
                self.failure_counts[kind] = self.failure_counts.get(kind, 0) + count
                if kind in self._warned_kinds:
                    continue
                self._warned_kinds.add(kind)
                first = next(f for f in reply.failures if f.kind == kind)
                logger.warning(
                    "%d evaluation(s) of the inner solver failed for good with kind %r in "
                    "this %s (after %d attempt(s) at most; first: %s). Later failures of "
                    "this kind are counted in Evaluator.failure_counts and the results' "
                    "failures, not logged.", count, kind, call,
                    max(f.attempts for f in reply.failures if f.kind == kind),
                    headline(first.message))

    def evaluate(self, requests, *, raise_errors=False) -> list:
        """Answer ``requests`` in one parallel group: every point of every request is
        in flight together (as far as the workers allow).

        Parameters
        ----------
        requests : sequence of Request
            See :class:`~fg2u_zo.evaluation.requests.Request`. Requests may name
            different solvers and keywords.
        raise_errors : bool
            Raise a request's broken failure policy at once (and abandon the group);
            by default it is put in that request's reply and the others go on.

        Returns
        -------
        list of Reply
            One per request, in order.

        Examples
        --------
        >>> import numpy as np, fg2u_zo as fz
        >>> from fg2u_zo.evaluation.requests import Request
        >>> with fz.Evaluator() as ev:
        ...     a, b = ev.evaluate([Request(np.square, [np.ones(2), 2 * np.ones(2)]),
        ...                         Request(np.negative, [np.ones(1)])])
        >>> [t.tolist() for t in a.thetas], b.thetas[0].tolist(), a.nfev + b.nfev
        ([[1.0, 1.0], [4.0, 4.0]], [-1.0], 3)
        """
        requests = list(requests)
        for r in requests:
            if not isinstance(r, Request):
                raise FG2UTypeError(f"`requests` must hold fg2u_zo Requests, got "
                                    f"{type(r).__name__}")
            if not callable(r.solver):
                raise FG2UTypeError(
                    f"the inner solver must be callable, got {type(r.solver).__name__}")
        with self._lock:
            if self._running:
                raise FG2UValueError("Evaluator.map/solve is not re-entrant: do not call the "
                                     "same Evaluator from on_result")
            self._running = True
            try:
                return self._evaluate(requests, raise_errors)
            finally:
                self._running = False

    def _evaluate(self, requests, raise_errors):
        self.start()
        impl = self._impl
        calls, learn = [], []
        for r in requests:
            accepted = accepted_keywords(r.solver)
            shape = r.expected_shape
            if shape is None and len(r.points):
                shape = self._known_shape(r.solver, r.points[0])
            learn.append(r.base and r.expected_shape is None)
            reply = Reply(thetas=[None] * len(r.points))
            policy = (self.max_failure_fraction if r.max_failure_fraction is None
                      else float(r.max_failure_fraction))
            calls.append(Call(
                r.points, r.on_result, reply, base=r.base, max_failure_fraction=policy,
                context=r.context(accepted) if self._journal is not None else None,
                expected_shape=shape, check_shape=False, tag=r.tag))
            calls[-1].kwargs = r.kwargs(accepted)
        # One solver and one set of keywords for the whole group: the backend gets them
        # as they are (and the workers check the output shape); otherwise each point
        # travels tagged with its request and a dispatcher picks the solver.
        first = requests[0] if requests else None
        shared = first is not None and all(
            r.solver is first.solver and _same_kwargs(c.kwargs, calls[0].kwargs)
            and c.expected_shape == calls[0].expected_shape for r, c in zip(requests, calls))
        if shared:
            solver, kwargs, shape = first.solver, calls[0].kwargs, calls[0].expected_shape

            def submit_point(q, j):
                return calls[q].points[j]
        else:
            solver, kwargs, shape = _Dispatch([(r.solver, c.kwargs)
                                               for r, c in zip(requests, calls)]), {}, None
            for c in calls:
                c.check_shape = True

            def submit_point(q, j):
                return np.concatenate(([float(q)], np.asarray(calls[q].points[j],
                                                              dtype=np.float64).ravel()))
        shapes = [c.expected_shape for c in calls if c.expected_shape is not None]
        item_bytes = 8 * max(1, max(math.prod(s) for s in shapes)) if shapes else None
        # In the calling thread a batch would only delay on_result: one by one.
        batch_size = 1 if impl.in_caller_thread else self.batch_size
        prior = [self._memory.seconds(r.solver) for r in requests]
        prior = max((p for p in prior if p is not None), default=None)
        sizer = BatchSizer(batch_size, impl.task_overhead, prior)
        run = MapRun(impl, calls, submit_point, task_ids=self._task_ids,
                     timeout=self.timeout, max_retries=self.max_retries, sizer=sizer,
                     item_bytes=item_bytes, journal=self._journal,
                     raise_errors=raise_errors)
        impl.begin(solver, kwargs, shape)
        replies = [c.reply for c in calls]
        try:
            run.run()
        finally:
            impl.end()
            self.nfev_replayed += sum(r.nfev_replayed for r in replies)
            self._report(replies, "solve" if len(requests) == 1 and requests[0].base
                         else "map")
        for r, reply, learns in zip(requests, replies, learn):
            if not r.base or reply.error is not None or not len(r.points):
                continue
            theta = reply.thetas[0]
            # A replayed solve still tells how long the solver takes.
            seconds = ((reply.solver_time + reply.solver_time_replayed)
                       / max(reply.nfev + reply.nfev_replayed, 1))
            shape = (theta.shape if theta is not None else None) if learns else None
            self._memory.note(r.solver, seconds, np.shape(r.points[0]), shape)
        return replies

    def _known_shape(self, solver, point):
        """The output shape this solver gave at a base point shaped like ``point``."""
        return self._memory.shape(solver, np.shape(point))

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
            Shape the output must have. Default: the shape of this solver's output at
            an earlier base point of the same shape (a later base solve that returns
            another shape is a failure of kind ``"shape"``, retried like any other);
            unchecked at the first solve.

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
        (reply,) = self.evaluate([Request(solver, [phi], seed=seed, warm_start=warm_start,
                                          expected_shape=expected_shape, base=True)],
                                 raise_errors=True)
        return reply.thetas[0], reply.stats()

    def map(self, solver, points, on_result, *, seed=None, warm_start=None,
            expected_shape=None, max_failure_fraction=None) -> MapStats:
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
            Shape every output must have (else a failure of kind ``"shape"``). Default:
            the shape of this solver's output at an earlier base point (see
            :meth:`solve`), if any.
        max_failure_fraction : float in [0, 1], optional
            This map's failure policy instead of the Evaluator's; 1 never raises (the
            caller handles every dropped point itself, as a trust-region stepper does
            with a failed trial).

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
        if max_failure_fraction is not None:
            if isinstance(max_failure_fraction, bool) or not isinstance(
                    max_failure_fraction, numbers.Real) or not 0.0 <= max_failure_fraction <= 1.0:
                raise FG2UValueError(
                    f"`max_failure_fraction` must be in [0, 1], got {max_failure_fraction!r}")
            max_failure_fraction = float(max_failure_fraction)
        if not callable(on_result):
            raise FG2UTypeError(f"`on_result` must be callable, got {type(on_result).__name__}")
        (reply,) = self.evaluate([Request(solver, points, seed=seed, warm_start=warm_start,
                                          expected_shape=expected_shape,
                                          max_failure_fraction=max_failure_fraction,
                                          on_result=on_result)], raise_errors=True)
        return reply.stats()


def _same_kwargs(a, b):
    """Whether two keyword dicts pass the same values (arrays compared by identity or
    bytes)."""
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if x is y:
            continue
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)
                    and x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)):
                return False
        elif x != y:
            return False
    return True


class _Dispatch:
    """The solver of a group whose requests name different solvers or keywords: point
    ``[q, *phi]`` goes to request ``q``'s solver with its keywords. Picklable whenever
    the requests' solvers are."""

    def __init__(self, calls):
        self.calls = calls

    def __call__(self, point):
        solver, kwargs = self.calls[int(point[0])]
        return solver(np.array(point[1:], dtype=np.float64), **kwargs)


@contextlib.contextmanager
def evaluator_scope(evaluator, backend, n_jobs, options):
    """Use the caller's evaluator, or make one for this call and close it after.

    The ``evaluator=`` / ``backend=, n_jobs=, **options`` pair of every ``estimate``
    (and of :func:`fg2u_zo.estimate_noise`).
    """
    if evaluator is not None:
        if backend is not None or n_jobs is not None or options:
            raise FG2UValueError(
                "pass either `evaluator=` or `backend=`/`n_jobs=`/evaluator options, "
                "not both: configure the Evaluator you pass instead")
        if not isinstance(evaluator, Evaluator):
            raise FG2UTypeError(
                f"`evaluator` must be a fg2u_zo.Evaluator, got {type(evaluator).__name__}")
        yield evaluator
        return
    own = Evaluator(backend=backend, n_jobs=n_jobs, **options)
    try:
        yield own
    finally:
        own.close()
