"""Several local runs in lockstep, their solves gathered into one parallel group.

Multi-start runs the same local method (:func:`~fg2u_zo.minimize`, a
:class:`~fg2u_zo.Continuation`, any stepper) from several starts. Run one after the
other, each step of each run is its own small parallel group: with b directions and k
starts, ``k`` groups of ``2b`` solves where one group of ``2bk`` would fill the workers.

:class:`Lockstep` runs each local method, unmodified, in its own thread against a
proxy :class:`~fg2u_zo.Evaluator`. A proxy call (``solve`` or ``map``) parks the
thread with its request. Once every live run is parked, the parent thread issues one
:meth:`Evaluator.map` over the union of the requests (a dispatcher solver routes each
point to its run's solver with that run's ``seed`` and ``warm_start``), hands every
result to the ``on_result`` of the run that asked for it, and releases the runs. So
the base solves of a step of every run form one group, their perturbed solves the
next, and a run's trial evaluations or noise probes join whatever the others ask at
the same time. A run may also park at a *rung* (a checkpoint of its progress, e.g. the
end of a continuation phase); once every live run is parked at a rung, the parent
decides which of them go on (successive halving).

Only the parent thread touches the real Evaluator (SIGALRM timeouts need the main
thread), one run computes at a time (torch.func, behind the exact estimators and the
Gauss–Newton model, is not thread-safe), and each run sees exactly the results it
would see alone: the rounds depend
only on what each run asks, never on thread timing, so the outcome is deterministic.
Each run's ``nfev`` counts its successful points and the attempts of its dropped
ones; retries of points that then succeeded are counted only in the lockstep totals.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

from ..errors import FG2UValueError, InnerSolverError, inner_solver_error
from ..evaluation.evaluator import Evaluator, MapStats
from ..evaluation.solver_memory import accepted_keywords
from ..result import Failure

__all__ = ["Lockstep"]


class _Aborted(BaseException):
    """Raised in a run's thread when the parent gives up (an error, Ctrl-C): a
    BaseException, so that no ``except Exception`` in the local method swallows it."""


class _Request:
    """One proxy call waiting for its round."""

    def __init__(self, solver, points, on_result, *, seed, warm_start, expected_shape,
                 base, max_failure_fraction=None):
        accepted = accepted_keywords(solver)
        self.solver = solver
        self.kwargs = {}
        if seed is not None and "seed" in accepted:
            self.kwargs["seed"] = seed
        if warm_start is not None and "warm_start" in accepted:
            self.kwargs["warm_start"] = warm_start
        self.points = points
        self.on_result = on_result
        self.expected_shape = None if expected_shape is None else tuple(expected_shape)
        self.base = base
        self.max_failure_fraction = max_failure_fraction
        self.stats = None
        self.error = None


class _Dispatch:
    """The solver of a gathered round: point ``[q, *phi]`` goes to request ``q``'s
    solver with its keywords. Picklable whenever the requests' solvers are."""

    def __init__(self, calls):
        self.calls = calls

    def __call__(self, point):
        solver, kwargs = self.calls[int(point[0])]
        return solver(np.array(point[1:], dtype=np.float64), **kwargs)


class _TaggedPoints:
    """The points of all requests of a round, each prefixed by its request's index."""

    def __init__(self, requests):
        self.index = [(q, j) for q, r in enumerate(requests) for j in range(len(r.points))]
        self.requests = requests

    def __len__(self):
        return len(self.index)

    def __getitem__(self, k):
        q, j = self.index[k]
        return np.concatenate(([float(q)], self.requests[q].points[j]))


class _GatheredEvaluator(Evaluator):
    """What a run of a :class:`Lockstep` sees as its Evaluator: each call waits for the
    next round. Backend, workers and failure policy are those of the real Evaluator."""

    def __init__(self, lockstep, run):   # no workers of its own: no Evaluator.__init__
        real = lockstep.evaluator
        self._lockstep, self._run_index = lockstep, run
        self.backend, self.n_jobs = real.backend, real.n_jobs
        self.timeout, self.max_retries = real.timeout, real.max_retries
        self.max_failure_fraction = real.max_failure_fraction
        self.batch_size = real.batch_size
        self.failure_counts = {}
        self.nfev_replayed = 0

    def __repr__(self):
        return f"<lockstep run {self._run_index} of {self._lockstep.evaluator!r}>"

    @property
    def workers(self) -> int:
        return self._lockstep.workers

    def start(self):
        return self

    def close(self):
        """Nothing to release: the real Evaluator belongs to the lockstep's owner."""

    @contextlib.contextmanager
    def journaling(self, journal):
        """Runs in lockstep keep no journal of their evaluations (they have no
        checkpoint to resume from)."""
        if journal is not None:
            raise FG2UValueError("runs in lockstep (fz.multistart) cannot journal their "
                                 "evaluations: they have no checkpoint")
        yield self

    def solve(self, solver, phi, *, seed=None, warm_start=None, expected_shape=None):
        box = {}

        def keep(index, theta):
            box["theta"] = theta

        request = _Request(solver, [np.array(phi, dtype=np.float64)], keep, seed=seed,
                           warm_start=warm_start, expected_shape=expected_shape, base=True)
        stats = self._lockstep.submit(self._run_index, request)
        return box["theta"], stats

    def map(self, solver, points, on_result, *, seed=None, warm_start=None,
            expected_shape=None, max_failure_fraction=None) -> MapStats:
        # Taken now, in the run's thread: the round reads them from the parent.
        pts = [np.array(points[j], dtype=np.float64) for j in range(len(points))]
        request = _Request(solver, pts, on_result, seed=seed, warm_start=warm_start,
                           expected_shape=expected_shape, base=False,
                           max_failure_fraction=max_failure_fraction)
        return self._lockstep.submit(self._run_index, request)


class Lockstep:
    """Run local methods side by side, one Evaluator group per round of their solves.

    Parameters
    ----------
    evaluator : Evaluator
        The real Evaluator; only the calling thread uses it.

    Attributes
    ----------
    groups : list of int
        Points of each group sent to the evaluator, in order (``ceil(g / W)`` parallel
        rounds each with ``W`` workers).
    nfev : int
        Solves of all groups (retries included).
    solver_time : float
    workers : int
        The evaluator's number of simultaneous evaluations.

    Examples
    --------
    >>> import numpy as np, fg2u_zo as fz
    >>> from fg2u_zo.outer.lockstep import Lockstep
    >>> problem = fz.BilevelProblem(inner=lambda phi: phi - 1.0,
    ...                             outer=lambda theta, phi: (theta ** 2).sum())
    >>> def local(start):
    ...     return lambda ev, rung: fz.minimize(
    ...         problem, start, fz.FG2UZO(num_directions=2, step=1e-6), lr=0.1, steps=5,
    ...         evaluator=ev, rng=0, progress=False)
    >>> with fz.Evaluator() as ev:
    ...     ls = Lockstep(ev)
    ...     out, errors = ls.run([local(np.zeros(2)), local(np.ones(2))])
    >>> ls.groups[:3]       # 2 base solves, then 2 x 4 perturbed solves, ...
    [2, 8, 2]
    """

    def __init__(self, evaluator):
        if not isinstance(evaluator, Evaluator):
            raise TypeError(f"`evaluator` must be a fg2u_zo.Evaluator, got "
                            f"{type(evaluator).__name__}")
        self.evaluator = evaluator
        self.workers = int(evaluator.workers)
        self.groups = []
        self.nfev = 0
        self.solver_time = 0.0
        self._cond = threading.Condition()
        self._state = {}      # run -> "running" | "request" | "rung" | "done"
        self._requests = {}   # run -> _Request
        self._rungs = {}      # run -> (key, value)
        self._answers = {}    # run -> whether the run stops at its rung
        self._abort = False
        # One run computes at a time (the GIL allows little more anyway): torch.func's
        # transforms (the exact estimators, the Gauss-Newton model) keep global state
        # and crash when two threads use them at once.
        self._turn = threading.Lock()

    # -- called from the runs' threads -------------------------------------------------
    def submit(self, run, request):
        """Park ``run`` with ``request`` until its round is done; return its MapStats."""
        with self._cond:
            self._requests[run] = request
        self._park(run, "request")
        if request.error is not None:
            raise request.error
        return request.stats

    def rung(self, run, key, value) -> bool:
        """Park ``run`` at rung ``key`` with ``value``; True when it must stop there."""
        with self._cond:
            self._rungs[run] = (key, float(value))
        self._park(run, "rung")
        with self._cond:
            return self._answers.pop(run)

    def _park(self, run, state):
        """Wait (without the turn) until the parent releases ``run``, then take the turn
        back. Called by the run's thread, which holds the turn."""
        with self._cond:
            self._state[run] = state
            self._cond.notify_all()
        self._turn.release()
        try:
            with self._cond:
                self._cond.wait_for(lambda: self._state[run] == "running" or self._abort)
                aborted = self._abort
        finally:
            self._turn.acquire()
        if aborted:
            raise _Aborted()

    # -- the parent ----------------------------------------------------------------------
    def run(self, tasks, decide=None):
        """Run ``tasks`` in lockstep until all have returned.

        Parameters
        ----------
        tasks : list of callable
            ``task(evaluator, rung) -> result``: run the local method with this
            ``evaluator`` (the proxy) and call ``rung(key, value) -> bool`` at its
            checkpoints (stop when it returns True).
        decide : callable, optional
            ``decide(key, values) -> set of runs to stop``, with ``values`` a dict
            ``run -> value`` of the runs parked at rung ``key``; called once every live
            run is parked. Default: none stops.

        Returns
        -------
        results : list
            What each task returned (None where it raised).
        errors : list
            The exception each task raised, or None.
        """
        n = len(tasks)
        results, errors = [None] * n, [None] * n
        self._state = {i: "running" for i in range(n)}
        threads = [threading.Thread(target=self._body, args=(i, task, results, errors),
                                    name=f"fg2u-zo lockstep run {i}", daemon=True)
                   for i, task in enumerate(tasks)]
        for th in threads:
            th.start()
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(
                        lambda: all(s != "running" for s in self._state.values()))
                    waiting = sorted(r for r, s in self._state.items() if s == "request")
                    parked = sorted(r for r, s in self._state.items() if s == "rung")
                if not waiting and not parked:
                    break
                if waiting:
                    # Every run is parked: the requests can be read without the lock.
                    self._round([self._requests.pop(r) for r in waiting])
                    released = waiting
                else:
                    key = min(self._rungs[r][0] for r in parked)
                    at = [r for r in parked if self._rungs[r][0] == key]
                    values = {r: self._rungs.pop(r)[1] for r in at}
                    stop = set(decide(key, values)) if decide is not None else set()
                    for r in at:
                        self._answers[r] = r in stop
                    released = at
                with self._cond:
                    for r in released:
                        self._state[r] = "running"
                    self._cond.notify_all()
        except BaseException:
            with self._cond:
                self._abort = True
                self._cond.notify_all()
            raise
        finally:
            for th in threads:
                th.join()
        return results, errors

    def _body(self, run, task, results, errors):
        proxy = _GatheredEvaluator(self, run)
        self._turn.acquire()
        try:
            results[run] = task(proxy, lambda key, value: self.rung(run, key, value))
        except _Aborted:
            pass
        except BaseException as exc:   # reported to the caller with the run's index
            errors[run] = exc
        finally:
            self._turn.release()
            with self._cond:
                self._state[run] = "done"
                self._cond.notify_all()

    def _round(self, requests):
        """One Evaluator.map over every point of ``requests``; fill in their outcomes."""
        points = _TaggedPoints(requests)
        dispatch = _Dispatch([(r.solver, r.kwargs) for r in requests])
        ok = [0] * len(requests)

        def on_result(k, theta):
            q, j = points.index[k]
            r = requests[q]
            if r.error is not None:
                return
            if r.expected_shape is not None and np.shape(theta) != r.expected_shape:
                shape_failures[q].append(Failure(
                    j, None, "shape", f"the solver returned shape {np.shape(theta)}, "
                    f"expected {r.expected_shape}", 1))
                return
            try:
                r.on_result(j, theta)
                ok[q] += 1
            except Exception as exc:   # the run's own reduction failed: its error
                r.error = exc

        shape_failures = [[] for _ in requests]
        ev = self.evaluator
        policy = ev.max_failure_fraction
        # One run's failures must stop only that run: the gathered map never raises for
        # failed points, each request's own policy is checked below.
        try:
            stats = ev.map(dispatch, points, on_result, max_failure_fraction=1.0)
        except InnerSolverError as exc:
            for r in requests:
                r.error = exc
            self.groups.append(len(points))
            return
        self.groups.append(len(points))
        self.nfev += stats.nfev
        self.solver_time += stats.solver_time
        failures = [list(f) for f in shape_failures]
        for f in stats.failures:
            q, j = points.index[f.index]
            failures[q].append(Failure(j, None, f.kind, f.message, f.attempts))
        total = max(len(points), 1)
        for q, r in enumerate(requests):
            own = failures[q]
            r.stats = MapStats(
                nfev=ok[q] + sum(f.attempts for f in own),
                solver_time=stats.solver_time * len(r.points) / total,
                failures=own, wall_time=stats.wall_time)
            if r.error is not None or not own:
                continue
            last = own[-1]
            if r.base:
                r.error = inner_solver_error(
                    f"the inner solver failed at the base point phi after {last.attempts} "
                    f"attempt(s) ({last.kind}):\n{last.message}", kind=last.kind,
                    detail=last.message)
            elif len(own) > (policy if r.max_failure_fraction is None
                             else r.max_failure_fraction) * len(r.points):
                r.error = inner_solver_error(
                    f"{len(own)} of {len(r.points)} evaluations failed for good, more than "
                    f"max_failure_fraction={policy} of them; the last failure, at point "
                    f"{last.index} after {last.attempts} attempt(s), was ({last.kind}):\n"
                    f"{last.message}", kind=last.kind, detail=last.message)
