"""One map of the Evaluator: scheduling, batching, retries and the failure policy.

The points are cut into tasks (batches of points, sized by :class:`BatchSizer`), at
most as many tasks as the backend's capacity are in flight, and each result is handed
to ``on_result`` as soon as it arrives and then dropped. A failed point is retried
unless the failure is deterministic (see :mod:`fg2u_zo.evaluation.worker`); a point
that keeps failing is dropped and reported; a worker that dies takes only the point it
was running with it (the others are resubmitted). With a journal (see
:mod:`fg2u_zo.evaluation.journal`), points it already holds are answered from it before
anything is submitted, and every success is journaled as it arrives.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from dataclasses import dataclass, field

from .backends import ItemDone, TaskDone, TaskLost
from ..errors import FG2UTypeError, inner_solver_error
from ..result import Failure

__all__ = ["MapStats", "BatchSizer", "MapRun"]

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
    failure_counts : dict
        ``kind -> number`` of the dropped points (the totals of ``failures``).
    resubmitted : int
        Evaluations lost through no fault of their own and run again: with a worker
        that another point crashed, killed or that left the cluster, or with the
        connection to a dask scheduler; not in ``nfev`` (whether they had started is
        unknown). The total of ``lost_counts``.
    lost_counts : dict
        ``kind -> number`` of those evaluations: ``"crash"`` (their worker died),
        ``"timeout"`` (their worker was killed for another point's overrun),
        ``"scheduler"`` (the connection to the scheduler was lost).
    tasks : int
        Tasks (batches of points) submitted to the backend.
    wall_time : float
        Seconds of wall-clock time of the call.
    nfev_replayed : int
        Points answered from the run's journal of finished evaluations (solved before
        the run was interrupted) instead of by the solver; not in ``nfev``.
    solver_time_replayed : float
        Seconds those replayed evaluations took when they were solved; not in
        ``solver_time``.
    """

    nfev: int = 0
    solver_time: float = 0.0
    failures: list = field(default_factory=list)
    failure_counts: dict = field(default_factory=dict)
    resubmitted: int = 0
    tasks: int = 0
    wall_time: float = 0.0
    nfev_replayed: int = 0
    solver_time_replayed: float = 0.0
    lost_counts: dict = field(default_factory=dict)

    @property
    def failed(self) -> set:
        """Indices of the dropped points."""
        return {f.index for f in self.failures}

    def add_failure(self, failure: Failure):
        """Record a dropped point."""
        self.failures.append(failure)
        self.failure_counts[failure.kind] = self.failure_counts.get(failure.kind, 0) + 1

    def add_lost(self, kind: str, count: int = 1):
        """Record ``count`` evaluations lost through no fault of their own, run again."""
        if count > 0:
            self.lost_counts[kind] = self.lost_counts.get(kind, 0) + count
            self.resubmitted += count


class BatchSizer:
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


class MapRun:
    """The scheduling loop and failure policy of one map (see Evaluator.map).

    Parameters
    ----------
    backend : Backend
        Started, with :meth:`~Backend.begin` called for this map.
    points : sequence
        The points; ``points[i]`` is taken when it is submitted.
    on_result : callable
        ``on_result(index, theta)``.
    task_ids : iterator of int
        Source of task ids, shared by the maps of one Evaluator (events of an earlier,
        abandoned map can never be mistaken for this one's).
    timeout, max_retries, max_failure_fraction
        The Evaluator's settings for this call.
    base : bool
        The single point of :meth:`Evaluator.solve`: a failure for good raises.
    sizer : BatchSizer
    item_bytes : int or None
        Size of one result, to cap the bytes a task holds.
    journal : JournalCall, optional
        Answers the points it holds (handed to ``on_result`` first, in index order)
        and records every success as it arrives.
    """

    def __init__(self, backend, points, on_result, *, task_ids, timeout, max_retries,
                 max_failure_fraction, base, sizer, item_bytes, journal=None):
        self.backend = backend
        self.points = points
        self.on_result = on_result
        self.task_ids = task_ids
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_failure_fraction = max_failure_fraction
        self.base = base
        self.sizer = sizer
        self.item_bytes = item_bytes
        self.journal = journal
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
        self.exclusive = None  # a suspect's task that runs with nothing else in flight

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
            if self.exclusive in self.in_flight:
                return
            if self.suspects and not self.backend.isolates_tasks:
                # On a backend that cannot say which task killed a worker, a point rerun
                # alone must be alone on the whole backend: a crash of anything else in
                # flight could be blamed on it. Wait for the others, then run it by itself.
                if self.in_flight:
                    return
                self.exclusive = self._submit([self.suspects.popleft()])
                return
            indices = self._next_items()
            if not indices:
                return
            self._submit(indices)

    def _submit(self, indices):
        task_id = next(self.task_ids)
        for index in indices:
            self.owner[index] = task_id
        self.in_flight[task_id] = list(indices)
        self.stats.tasks += 1
        self.backend.submit(task_id, [(i, self.points[i]) for i in indices], self.timeout)
        return task_id

    # -- the loop -----------------------------------------------------------------------

    def _replay(self):
        """Answer the points the journal holds; only the others will be submitted."""
        todo = []
        for index in range(self.total):
            hit = self.journal.lookup(self.points[index])
            if hit is None:
                todo.append(index)
                continue
            self.stats.nfev_replayed += 1
            self.stats.solver_time_replayed += hit.solver_time
            self.sizer.observe(hit.solver_time)
            self.on_result(index, hit.theta)
        self.fresh = iter(todo)
        self.unsubmitted = len(todo)

    def run(self) -> MapStats:
        start = time.perf_counter()
        try:
            if self.journal is not None and self.journal.replayable:
                self._replay()
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
        if event.task_id not in self.in_flight:
            return  # an event of a task given up on
        if isinstance(event, ItemDone):
            self._item(event.task_id, event.outcome)
        elif isinstance(event, TaskDone):
            self.stats.add_lost("crash", event.rerun)
            indices = self.in_flight.pop(event.task_id)
            for index in indices:  # defensive: a task that ended without these outcomes
                self._release(index, event.task_id)
                self.retry.append(index)
        elif isinstance(event, TaskLost):
            indices = self.in_flight.pop(event.task_id)
            # Every point of the task still without an outcome is lost, whatever the
            # backend listed.
            lost = [i for i in indices if self.owner.get(i) == event.task_id]
            for index in lost:
                del self.owner[index]
            self.stats.add_lost("crash", event.rerun)
            if event.blameless:
                # Lost with the scheduler, not with a point: run again as before.
                for index in reversed(lost):
                    (self.suspects if index in self.suspected else self.retry).appendleft(index)
                self.stats.add_lost(event.kind, len(lost))
                return
            culprit = event.culprit if event.culprit in lost else None
            self._lost(lost, culprit, event.kind, event.message, event.seconds,
                       event.attempts)
        else:
            raise FG2UTypeError(f"backend {self.backend.name!r} reported {event!r}, which is "
                                "not an ItemDone, TaskDone or TaskLost event")

    def _item(self, task_id, outcome):
        index = outcome.index
        if self.owner.get(index) != task_id:
            return
        self.stats.nfev += 1
        self.stats.solver_time += outcome.seconds
        self.sizer.observe(outcome.seconds)
        del self.owner[index]
        self.in_flight[task_id].remove(index)
        if outcome.ok:
            self.suspected.discard(index)
            if self.journal is not None:  # the solve is done, whatever on_result does
                self.journal.record(self.points[index], outcome.theta,
                                    solver_time=outcome.seconds,
                                    attempts=self.attempts[index] + 1)
            self.on_result(index, outcome.theta)
        else:
            self._charge(index, outcome.kind, outcome.message, outcome.retryable)

    def _release(self, index, task_id):
        if self.owner.get(index) == task_id:
            del self.owner[index]

    def _lost(self, lost, culprit, kind, message, seconds, attempts=1):
        if not lost:
            return
        if culprit is None and len(lost) == 1 and (
                self.backend.isolates_tasks or lost[0] in self.suspected):
            # Alone in its task and nothing else could have shared its fate: guilty.
            culprit = lost[0]
        for index in lost:
            if index == culprit:
                self.stats.nfev += attempts
                self.stats.solver_time += seconds
                self._charge(index, kind, message, attempts=attempts)
            elif culprit is None:
                # Cannot tell who crashed the worker: rerun each alone, free of charge;
                # the one that crashes again alone is the culprit.
                self.suspected.add(index)
                self.suspects.append(index)
                self.stats.add_lost(kind)
            else:
                self.retry.appendleft(index)  # innocent bystander
                self.stats.add_lost(kind)

    def _charge(self, index, kind, message, retryable=True, attempts=1):
        """``attempts`` failed attempts of ``index``: retry it or drop it."""
        self.attempts[index] += attempts
        attempts = self.attempts[index]
        if retryable and attempts <= self.max_retries:
            logger.debug("point %d failed (%s), retrying", index, kind)
            (self.suspects if index in self.suspected else self.retry).append(index)
            return
        self.stats.add_failure(Failure(index, None, kind, message, attempts))
        if self.base:
            raise inner_solver_error(
                f"the inner solver failed at the base point phi after {attempts} attempt(s) "
                f"({kind}):\n{message}", kind=kind, detail=message)
        nfail = len(self.stats.failures)
        if nfail > self.max_failure_fraction * self.total:
            raise inner_solver_error(
                f"{nfail} of {self.total} evaluations failed for good, more than "
                f"max_failure_fraction={self.max_failure_fraction} of them (stopped "
                f"early); the last failure, at point {index} after {attempts} attempt(s), "
                f"was ({kind}):\n{message}", kind=kind, detail=message)
