"""One local run: a typed state, and the steps that move it, as an ask/tell machine.

A :class:`LocalRun` is one trajectory of :func:`fg2u_zo.minimize` (a multi-start holds
several). Everything a resumed run needs is its :class:`RunState` (``z``, the stepper's
state, the random generator, the position in the phases, the noise estimate and its
age, the window of recent steps that a phase's ``until`` rule reads, the totals). A
step is a plan: the phase's estimate (when the stepper declares ``"estimate"``), then
the stepper's update, each yielding the requests they need. The run never calls an
Evaluator: whoever drives it (:mod:`fg2u_zo.outer.search`) asks it for its next
request (:meth:`LocalRun.ask`) and tells it the reply (:meth:`LocalRun.tell`). The run
counts every reply once (solves, seconds, failures by kind, replays) and throws a
reply's error into the plan at its ``yield``.

A step works on a copy of the generator and replaces the state only when it is
complete and finite: a step abandoned half-way (a signal, a failure, a non-finite
value) leaves the state as it was, so a resumed run redoes exactly that step, and
its journaled solves answer the redone step's requests.

After each committed step the run decides whether to go on: the phase's ``until`` rule
(:class:`~fg2u_zo.Converged`) or its steps move it to the next phase; ``target``,
``gtol``, the callbacks, ``max_nfev``, ``max_time`` and degenerate estimates stop it;
a rung of a multi-start makes it wait for the others (:meth:`LocalRun.release`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import NonFiniteStepError
from ..evaluation.requests import advance
from ..persist.history import StepRecord
from ..persist.state import RunState, Totals
from .phases import estimator_config, estimator_options

__all__ = ["RunState", "Totals", "LocalRun", "STOP_MESSAGES"]

logger = logging.getLogger(__name__)

#: Why a local run stopped, in words.
STOP_MESSAGES = {
    "steps": "completed {nit} steps",
    "converged": "converged after {nit} steps (the last phase's `until` rule)",
    "target": "reached the target value {target:g}",
    "gtol": "gradient norm below gtol={gtol:g}",
    "callback": "a callback asked to stop",
    "max_nfev": "spent the budget of max_nfev={max_nfev} inner solves",
    "max_time": "spent the budget of max_time={max_time:g} s",
    "degenerate": ("stopped after {nit} steps: every finite difference of the last estimate "
                   "was exactly zero, so the step is below what the solver's output "
                   "resolves and the gradient says nothing; use step='auto' or a larger "
                   "fixed step"),
    "halved": "stopped by successive halving after {nit} steps",
    "failed": "failed after {nit} steps",
}


@dataclass
class _Spend:
    """What the step in progress has spent so far (committed with the step)."""

    nfev: int = 0
    solver_time: float = 0.0
    failures: list = field(default_factory=list)
    nfev_replayed: int = 0
    estimate_nfev: int = 0  # solves of the estimate's requests (the rest ran in process)
    lost: dict = field(default_factory=dict)

    def add(self, reply, estimating):
        self.nfev += reply.nfev
        self.solver_time += reply.solver_time
        self.failures.extend(reply.failures)
        self.nfev_replayed += reply.nfev_replayed
        for kind, n in reply.lost_counts.items():
            self.lost[kind] = self.lost.get(kind, 0) + n
        if estimating:
            self.estimate_nfev += reply.nfev


class LocalRun:
    """One trajectory of a run (see the module docstring).

    Parameters
    ----------
    index : int
        Its number in the run (0 but for a multi-start).
    problem : BilevelProblem
        The run's problem (its own inner solver gives the final value).
    plans : list of PhasePlan
    transform : ParameterTransform
    stepper : Stepper
    limits : dict
        ``target``, ``gtol``, ``max_nfev``, ``max_time`` (None: no limit).
    callbacks : list of callable
        ``callback(record)``; True stops the run.
    workers : int
        The run's width (the ``"workers"`` extra).
    rung_steps : tuple of int
        Step counts after which the run waits for a multi-start's decision.
    rung_phases : bool
        The end of every phase but the last is a rung.
    warned : set
        Warning keys shown in this run (one set for every local run).
    on_commit : callable
        ``on_commit(run, record)`` after each committed step (history, progress).
    clock : callable
        Seconds of wall time of the whole run (resumes included).
    """

    def __init__(self, index, problem, plans, transform, stepper, *, limits, callbacks,
                 workers, rung_steps=(), rung_phases=False, warned=None, on_commit=None,
                 clock=None):
        self.index = index
        self.problem = problem
        self.plans = plans
        self.T = transform
        self.stepper = stepper
        self.limits = limits
        self.callbacks = callbacks
        self.workers = int(workers)
        self.rung_steps = tuple(rung_steps)
        self.rung_phases = rung_phases
        self.warned = set() if warned is None else warned
        self.on_commit = on_commit
        self.clock = clock if clock is not None else time.perf_counter
        self.state = None
        self.meta_gradient = None
        self.start = None         # where it started
        self.error = None         # the exception that ended the run
        self._plan = None
        self._pending = None
        self._warned_kinds = set()
        self._estimating = False
        self._spend = None
        self._rng = None

    # -- state ----------------------------------------------------------------------------
    def start_fresh(self, phi0, rng):
        z0 = self.T.inverse(np.asarray(phi0, dtype=np.float64))
        z0, _ = self.T.project(z0)
        z0 = np.array(z0, dtype=np.float64)
        self.start = np.asarray(phi0, dtype=np.float64).copy()
        state = self._init_stepper(0, z0, rng)
        self.state = RunState(z=z0, stepper_state=state, rng=rng)

    def _init_stepper(self, phase, z, rng):
        plan = self.plans[phase]
        extra = self._extras(problem=plan.problem, estimator=plan.estimator,
                             transform=self.T, rng=rng, workers=self.workers)
        return self.stepper.init(np.array(z, dtype=np.float64), **extra)

    def _extras(self, **available):
        return {k: v for k, v in available.items() if k in self.stepper.extras}

    def phi(self) -> np.ndarray:
        return self.T.forward(self.state.z)

    def phase_summaries(self) -> list:
        """:class:`~fg2u_zo.outer.result.PhaseSummary` of each phase reached."""
        from .result import PhaseSummary

        s = self.state
        done = [PhaseSummary(self.plans[k].name, n, v) for k, (n, v) in
                enumerate(s.phase_log)]
        return done + [PhaseSummary(self.plans[s.phase].name, s.step_in_phase,
                                    s.value if s.step_in_phase else math.nan)]

    @property
    def done(self) -> bool:
        return self.state.status is not None

    @property
    def in_step(self) -> bool:
        """Whether a step is in progress (asked for solves, not committed yet)."""
        return self._plan is not None

    def abandon(self):
        """Drop the step in progress; the committed state stays."""
        self._plan = self._pending = None
        self._spend = self._rng = None

    @property
    def waiting(self):
        """``(rung, value)`` while the run waits at a rung of a multi-start, else None."""
        s = self.state
        return None if s.parked is None or self.done else (s.parked, s.value)

    def stop(self, status, message=""):
        self.state.status = status
        self.state.message = message
        self._plan = self._pending = None

    # -- the ask/tell machine -------------------------------------------------------------
    def ask(self):
        """The request the run waits for, or None (stopped, or parked at a rung)."""
        if self._pending is None and self._plan is None and not self.done \
                and self.waiting is None:
            self._next()
        return self._pending

    def tell(self, reply):
        """The reply to :meth:`ask`'s request: the step goes on (and may commit)."""
        self._spend.add(reply, self._estimating)
        self._pending = None
        request, value = self._advance(reply)
        if request is None:
            self._finish_step(value)
        else:
            self._pending = self._tagged(request)

    def release(self, stop: bool):
        """Leave the rung: go on, or stop there (successive halving)."""
        s = self.state
        rung, s.parked = s.parked, None
        if stop:
            s.stopped_at = rung
            self.stop("halved", STOP_MESSAGES["halved"].format(nit=s.step))
        elif self.rung_phases:
            self._enter(s.phase + 1)  # the rung was the end of this phase

    def _tagged(self, request):
        # Whose solves these are: the journal keeps them until this step is committed.
        request.tag = ("run", self.index, self.state.step)
        return request

    def _advance(self, reply):
        try:
            return advance(self._plan, reply)
        except BaseException:
            self._plan = self._pending = None
            raise

    def _next(self):
        """Start the next step, after the checks that may stop the run or end a phase;
        steps that ask for nothing (the torch path) run at once."""
        while not self.done and self.waiting is None:
            where = self._advance_phase()
            if where in ("steps", "converged"):
                message = self.state.message or STOP_MESSAGES[where].format(
                    nit=self.state.step)
                self.stop(where, message)
                return
            if where == "parked":
                return
            totals = self.state.totals
            max_nfev, max_time = self.limits.get("max_nfev"), self.limits.get("max_time")
            # Replayed solves were solved once (before an interruption): they count against
            # the budget, so a resumed run stops where an uninterrupted one does.
            if max_nfev is not None and totals.nfev + totals.nfev_replayed >= max_nfev:
                self.stop("max_nfev", STOP_MESSAGES["max_nfev"].format(max_nfev=max_nfev))
                return
            if max_time is not None and self.clock() >= max_time:
                self.stop("max_time", STOP_MESSAGES["max_time"].format(max_time=max_time))
                return
            self._spend = _Spend()
            self._rng = copy.deepcopy(self.state.rng)
            self._plan = self._step_plan()
            request, value = self._advance(None)
            if request is not None:
                self._pending = self._tagged(request)
                return
            self._finish_step(value)

    def _advance_phase(self):
        """Move past finished phases (their steps done, or their ``until`` rule met).
        Returns ``"running"``, ``"parked"`` (the end of a phase is a rung: wait for the
        multi-start's decision), or ``"steps"`` / ``"converged"`` when the last phase is
        finished."""
        s = self.state
        while True:
            plan = self.plans[s.phase]
            converged = s.converged is not None or (
                plan.until is not None and bool(s.window)
                and plan.until.check(*_window_columns(s.window)))
            if s.step_in_phase < plan.steps and not converged:
                return "running"
            if s.phase + 1 == len(self.plans):
                if converged and s.converged is not None:
                    s.message = (f"converged after {s.step} steps: {s.converged}")
                return "converged" if converged and (s.step_in_phase < plan.steps or
                                                     s.converged is not None) else "steps"
            if self.rung_phases:
                s.parked = s.phase
                return "parked"
            self._enter(s.phase + 1)

    def _enter(self, phase):
        s = self.state
        prev = self.plans[s.phase]
        s.phase_log = s.phase_log + [(s.step_in_phase, s.value if s.step_in_phase
                                      else math.nan)]
        s.converged = None
        s.phase = phase
        s.step_in_phase = 0
        s.noise, s.noise_age = None, 0  # a new solver/estimator: re-measure
        window, s.window = s.window, []
        plan = self.plans[phase]
        s.lr_factor = 1.0
        if plan.carry_lr is not None:
            # The moves of the previous phase's last steps, up to where it ended.
            phis = [p for p, _, _ in window][-_CARRY_WINDOW:] + [self.T.forward(s.z)]
            s.lr_factor = _carried_factor(plan.carry_lr, phis, plan.lr)
        if plan.restart:
            s.stepper_state = self._init_stepper(phase, s.z, s.rng)
        logger.info("run %d, step %d: entering %s (%s) after %s", self.index, s.step,
                    plan.name, estimator_config(plan.estimator)["name"], prev.name)

    def _step_plan(self):
        """One step as a plan: the estimate, then the stepper's update."""
        s = self.state
        plan = self.plans[s.phase]
        lr = plan.lr * s.lr_factor * float(plan.schedule(s.step_in_phase, plan.steps))
        phi = self.T.forward(s.z)
        wants = self.stepper.extras
        rng = self._rng
        g = None
        if "estimate" in wants or "sketch" in wants:
            kwargs = {}
            if plan.accepts_noise:
                kwargs["noise"] = s.noise
            if "sketch" in wants:
                kwargs["keep_sketch"] = True
            if "warned" in estimator_options(plan.estimator):
                kwargs["warned"] = self.warned  # each warning once per run
            self._estimating = True
            try:
                g = yield from plan.estimator.plan(plan.problem, phi, rng=rng, **kwargs)
            finally:
                self._estimating = False
            _check_finite_estimate(g, s.step, phi)
        extra = self._extras(estimate=g, noise=s.noise, problem=plan.problem,
                             estimator=plan.estimator, transform=self.T, rng=rng,
                             workers=self.workers)
        update = self.stepper.update(s.stepper_state, z=s.z.copy(), lr=lr, **extra)
        if not hasattr(update, "state"):  # a plan, not a StepUpdate
            update = yield from update
        _check_finite_update(update, s.step)
        return g, update, lr

    def _finish_step(self, value):
        self._plan = None
        g, update, lr = value
        z_new, _ = self.T.project(np.asarray(update.z, dtype=np.float64))
        record = self._commit(g, update, z_new, lr)
        if self.on_commit is not None:
            self.on_commit(self, record)
        self._after_commit(record, update)

    def _commit(self, g, update, z_new, lr):
        s, spend, plan = self.state, self._spend, self.plans[self.state.phase]
        g = update.meta_gradient if update.meta_gradient is not None else g
        noise, age = self._next_noise(plan, g, self.T.forward(z_new))
        # Solves that ran in this process (torch passes) are not requests: the
        # estimate's are what its nfev holds beyond its requests, the stepper's its own.
        in_process = int(update.nfev) + (max(int(g.nfev) - spend.estimate_nfev, 0)
                                         if g is not None and "estimate" in
                                         self.stepper.extras else 0)
        totals = s.totals.add(spend.nfev + in_process, spend.solver_time, spend.failures,
                              spend.nfev_replayed, spend.lost)
        stderr_norm = float(np.linalg.norm(g.stderr)) if g is not None else math.inf
        grad = update.grad if update.grad is not None else (g.grad if g is not None
                                                           else None)
        info = dict(update.info) or None
        phi = np.asarray(update.phi, dtype=np.float64)
        record = StepRecord(
            step=s.step, phase=s.phase,
            estimator=(g.estimator if g is not None else "") or plan.name,
            value=float(update.value),
            grad_norm=float(np.linalg.norm(grad)) if grad is not None else math.nan,
            stderr_norm=stderr_norm, snr=float(g.snr) if g is not None else math.nan,
            nfev=spend.nfev + in_process, nfev_total=totals.nfev,
            solver_time=spend.solver_time, solver_time_total=totals.solver_time,
            wall_time=self.clock(), failures=len(spend.failures),
            fd_step=None if g is None or g.step is None else float(g.step),
            lr=float(lr), fd_error=_predicted_fd_error(g), phi=phi, info=info,
            nfev_replayed=spend.nfev_replayed, run=self.index)
        # The recent steps a phase's `until` rule reads (and a next phase's carry_lr).
        size = max(plan.until.window if plan.until is not None else 0, _CARRY_WINDOW)
        window = (s.window + [_window_entry(plan.until, record)])[-size:]
        self.state = dataclasses.replace(
            s, z=z_new, stepper_state=update.state, rng=self._rng, step=s.step + 1,
            step_in_phase=s.step_in_phase + 1, noise=noise, noise_age=age, totals=totals,
            window=window, value=float(update.value), final_value=None,
            converged=update.converged)
        self.meta_gradient = g
        self._spend, self._rng = None, None
        self._report_failures(record.step, spend.failures)
        return record

    def _after_commit(self, record, update):
        s = self.state
        stop = False
        for cb in self.callbacks:
            stop = bool(cb(record)) or stop
        target, gtol = self.limits.get("target"), self.limits.get("gtol")
        if stop:
            self.stop("callback", STOP_MESSAGES["callback"])
        elif target is not None and update.value <= target:
            self.stop("target", STOP_MESSAGES["target"].format(target=target))
        elif gtol is not None and record.grad_norm <= gtol:
            self.stop("gtol", STOP_MESSAGES["gtol"].format(gtol=gtol))
        elif self.meta_gradient is not None and getattr(self.meta_gradient,
                                                        "degenerate", False):
            # Every difference was exactly zero: the step did not see the solver move,
            # so a zero gradient here says nothing about convergence.
            self.stop("degenerate", STOP_MESSAGES["degenerate"].format(nit=s.step))
        elif s.step in self.rung_steps:
            s.parked = self.rung_steps.index(s.step)

    def _next_noise(self, plan, g, phi_next):
        """The noise estimate for the next step, or None to have it re-probed.

        Measure once, reuse at no cost, and refresh when
        :func:`fg2u_zo.noise_needs_refresh` says so (phi moved far, the differences
        sank into the noise, ...). The age counts the steps since the probe.
        """
        s = self.state
        if not plan.accepts_noise or g is None:
            return s.noise, s.noise_age
        if g.noise is None:
            return None, s.noise_age
        age = 0 if s.noise is None else s.noise_age + 1
        from ..noise.estimate import noise_needs_refresh

        if noise_needs_refresh(g.noise, g, phi=phi_next, age=age):
            logger.debug("step %d: the noise estimate will be measured again", s.step)
            return None, age
        return g.noise, age

    def _report_failures(self, step, failures):
        """Log at WARNING the first failure of each kind (the totals come at the end)."""
        for f in failures:
            if f.kind not in self._warned_kinds:
                self._warned_kinds.add(f.kind)
                logger.warning("run %d, step %d: an evaluation failed for good (%s): %s; it "
                               "was dropped (totals by kind in OptimizeResult.failures)",
                               self.index, step, f.kind,
                               f.message.strip().splitlines()[-1:] or "")


#: Steps of a phase whose moves a next phase's ``carry_lr`` reads.
_CARRY_WINDOW = 3


def _window_entry(rule, record):
    """``(phi, snr, trial)`` of a step for the window (the rule's reading, when any)."""
    if rule is not None:
        return rule.entry(record)
    phi = None if record.phi is None else np.array(record.phi, dtype=np.float64)
    return phi, float(record.snr), 0.0


def _window_columns(window):
    phis, snrs, trials = zip(*window) if window else ((), (), ())
    return list(phis), list(snrs), list(trials)


def _carried_factor(factor, phis, lr):
    """``factor`` x the largest coordinate move between ``phis`` (the previous phase's
    last steps and its end), relative to the new phase's ``lr`` (at most 1); 1 when
    there are no moves to read."""
    phis = [np.asarray(p, dtype=np.float64) for p in phis if p is not None]
    if len(phis) < 2:
        return 1.0
    move = float(np.max(np.abs(np.diff(np.asarray(phis), axis=0))))
    return min(1.0, factor * move / lr) if move > 0 else 1.0


def _check_finite_estimate(g, step, phi):
    bad = []
    if not math.isfinite(float(g.value)):
        bad.append(f"the value F(phi) = {g.value}")
    grad = np.asarray(g.grad, dtype=np.float64)
    if not np.all(np.isfinite(grad)):
        idx = np.flatnonzero(~np.isfinite(grad))
        bad.append(f"the meta-gradient (entries {idx[:10].tolist()} are "
                   f"{grad[idx[:3]].tolist()})")
    if bad:
        raise NonFiniteStepError(
            f"step {step}: {' and '.join(bad)} at phi = {np.asarray(phi).tolist()[:10]} is "
            "not finite; the step was not taken and nothing was committed (the stepper "
            "state and the last checkpoint are those of the last good step). Check the "
            "outer loss and the inner solver's outputs at that phi (a sqrt or log of a "
            "negative number?), or bound phi away from there with bounds=")


def _check_finite_update(update, step):
    z = np.asarray(update.z, dtype=np.float64)
    bad = []
    if not np.all(np.isfinite(z)):
        bad.append("the next point z")
    if not math.isfinite(float(update.value)):
        bad.append(f"the value {update.value}")
    for name, arr in update.state.arrays.items():
        arr = np.asarray(arr)
        if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
            bad.append(f"the stepper state array {name!r}")
    if bad:
        raise NonFiniteStepError(
            f"step {step}: the stepper returned a non-finite {', '.join(bad)}; the step was "
            "not taken and nothing was committed (the last checkpoint is the last good "
            "step's). A learning rate too large for the problem's scale?")


def _predicted_fd_error(g) -> float | None:
    """The noise estimate's predicted relative error of one difference, if any."""
    if g is None or g.noise is None or g.scheme is None:
        return None
    err = float(g.noise.relative_error(g.scheme))
    return err if math.isfinite(err) else None
