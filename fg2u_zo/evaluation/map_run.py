"""One map of the Evaluator: scheduling, batching, retries and the failure policy.

A map runs the points of one or several requests (one parallel group) as one stream.
The points are cut into tasks (batches of points, sized by :class:`BatchSizer`), at
most as many tasks as the backend's capacity are in flight, and each result is handed
to ``on_result`` as soon as it arrives and then dropped. A failed point is retried
unless the failure is deterministic (see :mod:`fg2u_zo.evaluation.worker`); a point
that keeps failing is dropped and reported; a worker that dies takes only the point it
was running with it (the others are resubmitted). Every point is charged to its
request, which has its own failure policy: a request whose policy is broken is given
up (its remaining points are not submitted) without stopping the others. With a journal (see
:mod:`fg2u_zo.persist.journal`), points it already holds are answered from it before
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

__all__ = ["MapStats", "BatchSizer", "MapRun", "Call", "policy_error"]

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


class Call:
    """One request as a map sees it: its points, how its solver is called, its share
    of the bookkeeping (a :class:`~fg2u_zo.evaluation.requests.Reply`) and its failure
    policy.

    Parameters
    ----------
    points : sequence
        The request's points (taken when submitted).
    on_result : callable or None
        ``on_result(j, theta)`` per success; None keeps the outputs in ``reply.thetas``.
    reply : Reply
        Filled in as the map runs.
    base : bool
        A failure for good of the single point is an error.
    max_failure_fraction : float
        More failures than this fraction of the points is an error.
    context : dict or None
        The journal context (see :meth:`Request.context`); None: not journaled.
    expected_shape : tuple or None
        Checked here, in the parent, when ``check_shape`` (the workers check it when
        the whole map shares one shape).
    check_shape : bool
    tag : tuple
        Whose the solves are (kept with each journal record).
    """

    def __init__(self, points, on_result, reply, *, base, max_failure_fraction, context,
                 expected_shape, check_shape, tag=()):
        self.points = points
        self.on_result = on_result
        self.reply = reply
        self.base = base
        self.max_failure_fraction = max_failure_fraction
        self.context = context
        self.expected_shape = None if expected_shape is None else tuple(expected_shape)
        self.check_shape = check_shape
        self.tag = tag
        self.size = len(points)
        self.error = None


class MapRun:
    """The scheduling loop and failure policy of one map (see Evaluator.map).

    A map runs the points of one or several :class:`Call` s (the requests of one
    parallel group) as one stream of tasks; each point is charged to its call.

    Parameters
    ----------
    backend : Backend
        Started, with :meth:`~Backend.begin` called for this map.
    calls : list of Call
    submit_point : callable
        ``submit_point(q, j) -> point`` as the backend's solver takes it (the point
        itself, or tagged with its call when several solvers share the map).
    task_ids : iterator of int
        Source of task ids, shared by the maps of one Evaluator (events of an earlier,
        abandoned map can never be mistaken for this one's).
    timeout, max_retries
        The Evaluator's settings for this call.
    sizer : BatchSizer
    item_bytes : int or None
        Size of one result, to cap the bytes a task holds.
    journal : ReplayCache, optional
        Answers the points it holds (handed on first, in index order) and records every
        success as it arrives.
    raise_errors : bool
        Raise a call's broken failure policy at once (one call: ``Evaluator.map`` and
        ``solve``); else record it in the call's reply and skip its remaining points.
    """

    def __init__(self, backend, calls, submit_point, *, task_ids, timeout, max_retries,
                 sizer, item_bytes, journal=None, raise_errors=True):
        self.backend = backend
        self.calls = calls
        self.submit_point = submit_point
        self.task_ids = task_ids
        self.timeout = timeout
        self.max_retries = max_retries
        self.sizer = sizer
        self.item_bytes = item_bytes
        self.journal = journal
        self.raise_errors = raise_errors
        # Point k of the map is point j of call q.
        self.index = [(q, j) for q, call in enumerate(calls) for j in range(call.size)]
        self.total = len(self.index)
        self.tasks = 0
        self.fresh = iter(range(self.total))
        self.unsubmitted = self.total
        self.retry = collections.deque()  # points to run again, batched
        self.suspects = collections.deque()  # points lost in a crash: run one per task
        self.suspected = set()
        self.attempts = collections.Counter()
        self.owner = {}  # index -> task id it is in flight with
        self.in_flight = {}  # task id -> indices still without an outcome
        self.exclusive = None  # a suspect's task that runs with nothing else in flight
        self._first_of = {}  # task id -> its first point

    def _live(self, k):
        return self.calls[self.index[k][0]].error is None

    def _point(self, k):
        q, j = self.index[k]
        return self.calls[q].points[j]

    # -- submitting ---------------------------------------------------------------------

    def _pop_live(self, queue):
        while queue:
            k = queue.popleft()
            if self._live(k):
                return k
        return None

    def _next_items(self):
        k = self._pop_live(self.suspects)
        if k is not None:
            return [k]
        size = self.sizer.size(self.unsubmitted + len(self.retry),
                               self.backend.parallelism(), self.item_bytes)
        items = []
        while self.retry and len(items) < size:
            k = self._pop_live(self.retry)
            if k is not None:
                items.append(k)
        while len(items) < size and self.unsubmitted:
            k = next(self.fresh)
            self.unsubmitted -= 1
            if self._live(k):
                items.append(k)
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
                k = self._pop_live(self.suspects)
                if k is not None:
                    self.exclusive = self._submit([k])
                continue
            indices = self._next_items()
            if not indices:
                return
            self._submit(indices)

    def _submit(self, indices):
        task_id = next(self.task_ids)
        self._first_of[task_id] = indices[0]
        for index in indices:
            self.owner[index] = task_id
        self.in_flight[task_id] = list(indices)
        self.tasks += 1
        self.backend.submit(task_id, [(k, self.submit_point(*self.index[k]))
                                      for k in indices], self.timeout)
        return task_id

    # -- the loop -----------------------------------------------------------------------

    def _replay(self):
        """Answer the points the journal holds; only the others will be submitted."""
        todo = []
        for k in range(self.total):
            q, j = self.index[k]
            call = self.calls[q]
            hit = None if call.context is None else self.journal.lookup(call.context,
                                                                        call.points[j])
            if hit is not None and call.expected_shape is not None \
                    and hit.theta.shape != call.expected_shape:
                hit = None  # a record of another output shape: solve again
            if hit is None:
                todo.append(k)
                continue
            call.reply.nfev_replayed += 1
            call.reply.solver_time_replayed += hit.solver_time
            self.sizer.observe(hit.solver_time)
            self._deliver(call, j, hit.theta)
        self.fresh = iter(todo)
        self.unsubmitted = len(todo)

    def run(self):
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
            wall = time.perf_counter() - start
            for call in self.calls:
                call.reply.wall_time = wall
            if self.calls:
                self.calls[0].reply.tasks = self.tasks
        return [call.reply for call in self.calls]

    def _handle(self, event):
        if event.task_id not in self.in_flight:
            return  # an event of a task given up on
        if isinstance(event, ItemDone):
            self._item(event.task_id, event.outcome)
        elif isinstance(event, TaskDone):
            indices = self.in_flight.pop(event.task_id)
            if indices or event.rerun:
                self._task_reply(event.task_id, indices).add_lost("crash", event.rerun)
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
            if event.rerun:
                self._task_reply(event.task_id, indices).add_lost("crash", event.rerun)
            if event.blameless:
                # Lost with the scheduler, not with a point: run again as before.
                for index in reversed(lost):
                    (self.suspects if index in self.suspected else self.retry).appendleft(index)
                    self._reply(index).add_lost(event.kind)
                return
            culprit = event.culprit if event.culprit in lost else None
            self._lost(lost, culprit, event.kind, event.message, event.seconds,
                       event.attempts)
        else:
            raise FG2UTypeError(f"backend {self.backend.name!r} reported {event!r}, which is "
                                "not an ItemDone, TaskDone or TaskLost event")

    def _item(self, task_id, outcome):
        k = outcome.index
        if self.owner.get(k) != task_id:
            return
        q, j = self.index[k]
        call = self.calls[q]
        call.reply.nfev += 1
        call.reply.solver_time += outcome.seconds
        self.sizer.observe(outcome.seconds)
        del self.owner[k]
        self.in_flight[task_id].remove(k)
        if call.error is not None:
            return  # solved, and counted, but its request was already given up
        kind, message, retryable = outcome.kind, outcome.message, outcome.retryable
        if outcome.ok and call.check_shape and call.expected_shape is not None \
                and outcome.theta.shape != call.expected_shape:
            kind, retryable = "shape", True
            message = (f"solver returned shape {outcome.theta.shape}, expected "
                       f"{call.expected_shape}, the shape of its other outputs")
        if kind is None:
            self.suspected.discard(k)
            if self.journal is not None and call.context is not None:
                # The solve is done, whatever on_result does with it.
                self.journal.record(call.context, call.points[j], outcome.theta,
                                    solver_time=outcome.seconds,
                                    attempts=self.attempts[k] + 1, tag=call.tag)
            self._deliver(call, j, outcome.theta)
        else:
            self._charge(k, kind, message, retryable)

    @staticmethod
    def _deliver(call, j, theta):
        if call.on_result is not None:
            call.on_result(j, theta)
        else:
            call.reply.thetas[j] = theta

    def _reply(self, index):
        """The reply of the request that point ``index`` of the map belongs to."""
        return self.calls[self.index[index][0]].reply

    def _task_reply(self, task_id, indices):
        """The reply a task's own bookkeeping is charged to: its first point's request
        (a task holds consecutive points, usually of one request)."""
        first = indices[0] if indices else self._first_of.get(task_id, 0)
        return self._reply(first) if self.calls else MapStats()

    def _release(self, index, task_id):
        if self.owner.get(index) == task_id:
            del self.owner[index]

    def _lost(self, lost, culprit, kind, message, seconds, attempts=1):
        lost = [k for k in lost if self._live(k)]
        if not lost:
            return
        if culprit is None and len(lost) == 1 and (
                self.backend.isolates_tasks or lost[0] in self.suspected):
            # Alone in its task and nothing else could have shared its fate: guilty.
            culprit = lost[0]
        for index in lost:
            if index == culprit:
                reply = self.calls[self.index[index][0]].reply
                reply.nfev += attempts
                reply.solver_time += seconds
                self._charge(index, kind, message, attempts=attempts)
            elif culprit is None:
                # Cannot tell who crashed the worker: rerun each alone, free of charge;
                # the one that crashes again alone is the culprit.
                self.suspected.add(index)
                self.suspects.append(index)
                self._reply(index).add_lost(kind)
            else:
                self.retry.appendleft(index)  # innocent bystander
                self._reply(index).add_lost(kind)

    def _charge(self, index, kind, message, retryable=True, attempts=1):
        """``attempts`` failed attempts of ``index``: retry it or drop it."""
        self.attempts[index] += attempts
        attempts = self.attempts[index]
        if retryable and attempts <= self.max_retries:
            logger.debug("point %d failed (%s), retrying", index, kind)
            (self.suspects if index in self.suspected else self.retry).append(index)
            return
        q, j = self.index[index]
        call = self.calls[q]
        failure = Failure(j, None, kind, message, attempts)
        call.reply.add_failure(failure)
        error = policy_error(call.reply.failures, call.size, base=call.base,
                             max_failure_fraction=call.max_failure_fraction)
        if error is None:
            return
        if self.raise_errors:
            raise error
        call.error = call.reply.error = error


def policy_error(failures, size, *, base, max_failure_fraction):
    """The :class:`~fg2u_zo.InnerSolverError` a request's failures call for, or None:
    its base point failed, or more than ``max_failure_fraction`` of its ``size`` points
    (the last failure's message is carried)."""
    if not failures:
        return None
    last = failures[-1]
    if base:
        return inner_solver_error(
            f"the inner solver failed at the base point phi after {last.attempts} "
            f"attempt(s) ({last.kind}):\n{last.message}", kind=last.kind,
            detail=last.message)
    if len(failures) > max_failure_fraction * size:
        return inner_solver_error(
            f"{len(failures)} of {size} evaluations failed for good, more than "
            f"max_failure_fraction={max_failure_fraction} of them (stopped early); the last "
            f"failure, at point {last.index} after {last.attempts} attempt(s), was "
            f"({last.kind}):\n{last.message}", kind=last.kind, detail=last.message)
    return None
