"""A whole run as an ask/tell machine: its stages, its local runs, its rounds.

A :class:`Search` is what :func:`fg2u_zo.minimize` runs, a multi-start included, and
what :class:`~fg2u_zo.AskTell` hands to the user's scheduler. It goes through stages:

``"screen"``
    (multi-start only) F at the points of a space-filling design, one request;
``"local"``
    the local runs (one for a plain run) in lockstep: each round gathers the next
    request of every run that has one into one parallel group, so a multi-start needs
    no thread and a round fills the workers with every run's solves; at a rung the
    runs wait for each other and a strategy stops those that fell behind;
``"final"``
    F at each run's end on the run's problem (one solve each, one group);
``"done"``.

:meth:`Search.next_group` gives the requests of the next round and
:meth:`Search.tell` takes their replies. Each reply goes to whoever asked (a local run,
the screening, a final value); the runs count their own solves. The group sizes are
kept (``rounds(W)`` of the result). A strategy (:mod:`fg2u_zo.globalize.multistart`)
decides the design, the starts, the rungs and the halving; the Search itself knows
nothing of designs.

Persistence: the Search's state is data (:class:`~fg2u_zo.persist.state.SearchState`);
:class:`~fg2u_zo.persist.checkpoint.RunStore` writes it, the history and the journal.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time

import numpy as np

from ..errors import FG2UError, InnerSolverError
from ..evaluation.requests import Request
from ..persist.state import SearchState, Totals
from .progress import Progress, log_step
from .run import STOP_MESSAGES

__all__ = ["Search", "STATUSES"]

logger = logging.getLogger(__name__)

#: Why a run stopped -> whether that is a success (it ended as configured).
STATUSES = {"steps": True, "converged": True, "target": True, "gtol": True,
            "callback": True, "max_nfev": True, "max_time": True, "halved": True,
            "sigint": False, "sigterm": False, "degenerate": False, "failed": False}


class Search:
    """The stages and local runs of one run (see the module docstring).

    Parameters
    ----------
    problem : BilevelProblem
        The run's problem (its inner solver and outer loss give the final values).
    make_run : callable
        ``make_run(index) -> LocalRun`` with the run's phases, stepper, limits ...
    strategy : object, optional
        A multi-start strategy (:class:`fg2u_zo.globalize.multistart.MultiStart`); None
        for one local run.
    isolate_failures : bool
        A local run that raises stops alone (multi-start); else the error ends the run.
    progress : bool or None
        The progress bar (None: when stderr is a terminal).
    total_steps : int
        The most steps the run can take (the bar's length).
    """

    def __init__(self, problem, make_run, *, strategy=None, isolate_failures=False,
                 progress=None, total_steps=0):
        self.problem = problem
        self.make_run = make_run
        self.strategy = strategy
        self.isolate_failures = isolate_failures
        self.state = None
        self.runs = []
        self.records = []
        self.store = None
        self.draining = False
        self._owners = []
        self._commits = []
        self._total_steps = total_steps
        self._progress_enabled = progress
        self._bar = None
        self._clock_start = time.perf_counter()
        self.warned = set()

    # -- the clock ----------------------------------------------------------------------
    def wall_time(self) -> float:
        """Seconds of wall time since the run began, resumes included."""
        base = self.state.wall_time if self.state is not None else 0.0
        return base + (time.perf_counter() - self._clock_start)

    # -- starting -----------------------------------------------------------------------
    def start_fresh(self, phi0, rng):
        n = np.size(phi0) if phi0 is not None else self.problem.num_params
        empty = np.zeros((0, n))
        self.state = SearchState(stage="local", runs=[], design=empty,
                                 design_values=np.zeros(0), starts=empty)
        if self.strategy is None:
            self._spawn([np.asarray(phi0, dtype=np.float64)], [rng])
            return
        self.state.stage = "screen"
        self.state.design = self.strategy.design(rng, phi0)
        self.state.design_values = np.full(len(self.state.design), np.nan)
        self.state.rng = rng

    def start_from(self, state: SearchState):
        """Continue from a checkpoint's state."""
        self.state = state
        self._clock_start = time.perf_counter()
        self.runs = []
        for i, run_state in enumerate(state.runs):
            run = self.make_run(i)
            run.state = run_state
            if i < len(state.starts):
                run.start = state.starts[i].copy()
            self._bind(run)
            self.runs.append(run)

    def _bind(self, run):
        run.on_commit = self._on_commit
        run.clock = self.wall_time
        run.warned = self.warned

    def _spawn(self, starts, rngs):
        self.state.starts = np.asarray(starts, dtype=np.float64)
        for i, (start, rng) in enumerate(zip(starts, rngs)):
            run = self.make_run(i)
            self._bind(run)
            run.start_fresh(start, rng)
            self.runs.append(run)
            self.state.runs.append(run.state)

    # -- the rounds ---------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.state.stage == "done"

    def next_group(self):
        """The requests of the next round, or None when the run is over (or draining
        after a first Ctrl-C and no step is in progress)."""
        self._owners = []
        while True:
            stage = self.state.stage
            if stage == "screen":
                if self.draining:
                    return None
                if not self.strategy.screens:  # the one start given: nothing to screen
                    self._screened()
                    continue
                return self._group([(self._screen_request(), ("screen",))])
            if stage == "local":
                group = self._local_group()
                if group:
                    return self._group(group)
                if self.draining:
                    return None
                self.state.stage = "final"
                continue
            if stage == "final":
                if self.draining:
                    return None
                group = self._final_group()
                if group:
                    return self._group(group)
                self.state.stage = "done"
                self._close_bar()
                continue
            return None

    def _group(self, pairs):
        self._owners = [owner for _, owner in pairs]
        requests = [request for request, _ in pairs]
        self._size = sum(len(r) for r in requests)
        return requests

    def _screen_request(self):
        design = self.state.design
        values = self.state.design_values
        problem = self.strategy.screen_problem

        def keep(k, theta):
            values[k] = problem.outer_value(theta, design[k])

        # F at a failed point is inf: the design goes on without it.
        return Request(problem.inner, list(design), max_failure_fraction=1.0,
                       on_result=keep, label="screen", tag=("screen",))

    def _local_group(self):
        while True:
            pairs = []
            for run in self.runs:
                if run.done or (self.draining and not run.in_step):
                    continue
                request = self._guard(run, run.ask)
                if request is not None:
                    pairs.append((request, ("run", run.index)))
            if pairs:
                return pairs
            parked = [run for run in self.runs if not run.done and run.waiting is not None]
            if not parked or self.draining:
                return []
            self._decide(parked)

    def _decide(self, parked):
        """Every live run waits at a rung (or is done): stop those that fell behind."""
        rung = min(run.waiting[0] for run in parked)
        at = [run for run in parked if run.waiting[0] == rung]
        values = {run.index: run.waiting[1] for run in at}
        stop = self.strategy.decide(rung, values) if self.strategy is not None else set()
        for run in at:
            run.release(run.index in stop)
        if stop:
            logger.info("rung %d: %d of %d run(s) go on", rung, len(at) - len(stop), len(at))

    def _final_group(self):
        pairs = []
        for run in self.runs:
            s = run.state
            if s.final_value is not None or s.status == "failed":
                continue
            pairs.append((Request(self.problem.inner, [run.phi()], base=True,
                                  label="final value", tag=("final",)),
                          ("final", run.index)))
        return pairs

    def tell(self, replies):
        """The replies to :meth:`next_group`'s requests, in order."""
        owners, self._owners = self._owners, []
        if len(replies) != len(owners):
            raise FG2UError(f"{len(replies)} replies for a group of {len(owners)} requests")
        self.state.groups.append(int(self._size))
        for owner, reply in zip(owners, replies):
            if owner[0] == "screen":
                self.state.totals = self.state.totals.add_reply(reply)
                self._screened()
            elif owner[0] == "run":
                run = self.runs[owner[1]]
                self._guard(run, run.tell, reply)
            else:
                self.state.totals = self.state.totals.add_reply(reply)
                self._final_value(self.runs[owner[1]], reply)

    def _guard(self, run, method, *args):
        """Call a run's method; with isolated failures, an error stops that run alone."""
        if not self.isolate_failures:
            return method(*args)
        try:
            return method(*args)
        except Exception as exc:
            run.stop("failed", f"failed at step {run.state.step}: {type(exc).__name__}: "
                               f"{exc}")
            run.state.error = f"{type(exc).__name__}: {exc}"
            run.error = exc
            logger.warning("local run %d raised %s at step %d; the others go on: %s",
                           run.index, type(exc).__name__, run.state.step, exc)
            return None

    def _screened(self):
        values = self.state.design_values
        values[~np.isfinite(values)] = np.inf
        chosen = self.strategy.choose(values)
        if not chosen:
            raise InnerSolverError(
                f"F could not be evaluated at any of the {len(values)} design points (every "
                "solve failed); check the bounds", kind="exception")
        starts = self.state.design[chosen]
        rngs = self.state.rng.spawn(len(starts))
        self.state.rng = None
        self._spawn(list(starts), rngs)
        self.state.stage = "local"
        self._commits.append(None)  # a stage passed: worth a checkpoint

    def _final_value(self, run, reply):
        if reply.error is not None:
            if not self.isolate_failures:
                raise reply.error
            run.state.final_value = math.inf
            return
        theta = reply.thetas[0]
        run.state.final_value = float(self.problem.outer_value(theta, run.phi()))

    # -- commits --------------------------------------------------------------------------
    def _on_commit(self, run, record):
        self.records.append(record)
        if self.store is not None:
            self.store.write_record(record)
        totals = self.totals()
        if self._bar is None:
            done = sum(r.state.step for r in self.runs)
            self._bar = Progress(self._total_steps, initial=done - 1,
                                 enabled=self._progress_enabled)
        self._bar.update(record, totals.nfev)
        log_step(record, nfev=totals.nfev, rounds=len(self.state.groups))
        self._commits.append(record)

    def take_commits(self) -> list:
        """Records committed (and stage changes, as None) since the last call."""
        out, self._commits = self._commits, []
        return out

    def _close_bar(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self):
        self._close_bar()

    # -- interruption -------------------------------------------------------------------
    def abandon(self):
        """Drop the steps in progress (their runs keep their committed state)."""
        self._owners = []
        for run in self.runs:
            run.abandon()

    def pending_tag(self, tag) -> bool:
        """Whether a journal record with ``tag`` may still answer a solve of this run
        after a resumption (its step is not committed, its stage not passed)."""
        if not tag:
            return False
        kind = tag[0]
        if kind == "screen":
            return self.state.stage == "screen"
        if kind == "final":
            return self.state.stage in ("local", "final")
        if kind == "run" and len(tag) == 3:
            _, index, step = tag
            if not isinstance(index, int) or not 0 <= index < len(self.runs):
                return False
            run = self.runs[index].state
            return run.status is None and isinstance(step, int) and step >= run.step
        return False

    def snapshot(self) -> SearchState:
        """The state to checkpoint (the runs' committed states, the wall time so far)."""
        self.state.runs = [run.state for run in self.runs]
        return dataclasses.replace(self.state, wall_time=self.wall_time())

    def phis(self) -> np.ndarray:
        n = self.state.design.shape[1] if self.state.design.ndim == 2 else 0
        if not self.runs:
            return np.zeros((0, n))
        return np.asarray([run.phi() for run in self.runs], dtype=np.float64)

    # -- summaries ------------------------------------------------------------------------
    def totals(self) -> Totals:
        total = self.state.totals
        for run in self.runs:
            total = total.merged(run.state.totals)
        return total

    def best(self) -> int:
        """The index of the run with the lowest final value (its last value before)."""
        def key(i):
            s = self.runs[i].state
            v = s.final_value if s.final_value is not None else s.value
            return (s.status == "failed" or not math.isfinite(v), v, i)
        return min(range(len(self.runs)), key=key) if self.runs else 0

    def message(self) -> str:
        if self.strategy is None:
            s = self.runs[0].state
            return s.message or STOP_MESSAGES.get(s.status, "")
        best = self.runs[self.best()].state if self.runs else None
        failed = sum(r.state.status == "failed" for r in self.runs)
        value = best.final_value if best is not None and best.final_value is not None \
            else math.nan
        return (f"{len(self.runs)} local run(s) from {len(self.state.design)} screened "
                f"point(s); best F = {value:.6g}" + (f"; {failed} run(s) failed"
                                                      if failed else ""))
