"""The run loop of :func:`fg2u_zo.minimize`: a typed run state, one step at a time.

Everything a resumed run needs is one :class:`RunState` (``z``, the stepper's state,
the random generator, the position in the phases, the noise estimate and its age, the
totals). A step reads it, asks the stepper for an update, and replaces it only when the
update is complete and finite: a step abandoned half-way (a signal, a failure, a
non-finite value) leaves the state as it was, with the generator rolled back, so a
resumed run redoes exactly that step. With a checkpoint, the evaluations that finished
since it was written are journaled next to it (``<checkpoint>.journal``, see
:mod:`fg2u_zo.evaluation.journal`): the redone step takes them from there instead of
solving them again, counted in ``nfev_replayed`` rather than ``nfev``.

Per step the run builds only the extras the stepper declares (see
:mod:`fg2u_zo.outer.steppers.base`): the phase's estimate (with its sketch when asked),
the noise estimate, an ``evaluate`` callable that solves a group of points through the
run's one :class:`~fg2u_zo.Evaluator` (counted in the run's totals), the problem,
estimator, transform, generator and the number of workers.

Why one module of ~540 lines: the loop, the commit of a step and the rollback on a
signal or a failure are one idea whose invariants (nothing half-committed) are easier
to check side by side; serialization, signals, phases and the journal's file handling
live in their own modules.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import signal
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import CheckpointError, FG2UValueError
from .checkpoint import Checkpoint, write_checkpoint
from .history import HistoryWriter, Progress, StepRecord, read_history
from .phases import estimator_config, estimator_options
from .run_journal import RunJournal
from .serialization import generator_from_state, generator_state
from .signals import Abandon, SignalGuard, annotate
from .steppers.base import Evaluations, StepperState

__all__ = ["RunState", "Totals", "Run", "NonFiniteStepError"]

logger = logging.getLogger(__name__)

_MESSAGES = {
    "steps": "completed {nit} steps",
    "target": "reached the target value {target:g}",
    "gtol": "gradient norm below gtol={gtol:g}",
    "callback": "a callback asked to stop",
    "max_nfev": "spent the budget of max_nfev={max_nfev} inner solves",
    "max_time": "spent the budget of max_time={max_time:g} s",
    "degenerate": ("stopped after {nit} steps: every finite difference of the last estimate "
                   "was exactly zero, so the step is below what the solver's output "
                   "resolves and the gradient says nothing; use step='auto' or a larger "
                   "fixed step"),
}


class NonFiniteStepError(FG2UValueError):
    """A step produced a NaN or infinite value, gradient or point; nothing was committed."""


@dataclass
class Totals:
    """Counts since the run began (resumed runs included)."""

    nfev: int = 0
    solver_time: float = 0.0
    wall_time: float = 0.0
    failures: dict = field(default_factory=dict)
    nfev_replayed: int = 0

    def add(self, nfev, solver_time, failures, replayed=0) -> "Totals":
        counts = dict(self.failures)
        for f in failures:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        return Totals(self.nfev + int(nfev), self.solver_time + float(solver_time),
                      self.wall_time, counts, self.nfev_replayed + int(replayed))

    def to_dict(self) -> dict:
        return {"nfev": self.nfev, "solver_time": self.solver_time,
                "wall_time": self.wall_time, "failures": dict(self.failures),
                "nfev_replayed": self.nfev_replayed}


@dataclass
class RunState:
    """The committed state of a run between two steps."""

    z: np.ndarray
    stepper_state: StepperState
    rng: np.random.Generator
    step: int = 0
    phase: int = 0
    step_in_phase: int = 0
    noise: object = None
    noise_age: int = 0
    totals: Totals = field(default_factory=Totals)


@dataclass
class _Spend:
    """What the step in progress has spent so far (committed with the step)."""

    nfev: int = 0
    solver_time: float = 0.0
    failures: list = field(default_factory=list)
    nfev_replayed: int = 0


class Run:
    """One call of :func:`fg2u_zo.minimize`: the plans, the stepper and the state."""

    def __init__(self, problem, plans, transform, stepper, config, *, checkpoint,
                 checkpoint_every, history, metadata):
        self.problem = problem
        self.plans = plans
        self.T = transform
        self.stepper = stepper
        self.config = config
        self.checkpoint_path = checkpoint
        # Only a run the user gave a checkpoint journals its evaluations.
        self.journal = None if checkpoint is None else RunJournal(checkpoint)
        self._resumed_from = None
        self.checkpoint_every = checkpoint_every
        self.history_path = history
        self.metadata = metadata
        self.history_writer = None
        self.last_checkpoint = None
        self.records = []
        self.meta_gradient = None
        self.state = None
        self.message = self.signal_message = ""
        self._warned_kinds = set()
        self._estimate_warned = set()
        self._wall_start = time.perf_counter()

    # state ------------------------------------------------------------------------------
    def _extras(self, names, **available):
        return {k: v for k, v in available.items() if k in names}

    def start_fresh(self, phi0, rng):
        z0 = self.T.inverse(phi0)
        z0, _ = self.T.project(z0)
        plan = self.plans[0]
        init_extra = self._extras(self.stepper.extras, problem=plan.problem,
                                  estimator=plan.estimator, transform=self.T, rng=rng)
        state = self.stepper.init(np.array(z0, dtype=np.float64), **init_extra)
        self.state = RunState(z=np.array(z0, dtype=np.float64), stepper_state=state, rng=rng)
        if self.history_path is not None:
            self.history_writer = HistoryWriter(self.history_path)

    def start_from(self, ck: Checkpoint):
        """Continue from a checkpoint; the history is touched only once all is valid."""
        try:
            self.stepper.check_state(ck.stepper_state, ck.num_params)
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"the stepper state in the checkpoint does not fit "
                                  f"{self.stepper.config().get('name')!r}: {exc}") from None
        self.state = RunState(
            z=np.array(ck.z, dtype=np.float64), stepper_state=ck.stepper_state,
            rng=ck.generator(), step=ck.step, phase=ck.phase, step_in_phase=ck.step_in_phase,
            noise=ck.noise, noise_age=ck.noise_age,
            totals=Totals(nfev=ck.totals["nfev"], solver_time=ck.totals["solver_time"],
                          wall_time=ck.totals["wall_time"],
                          failures=dict(ck.totals.get("failures", {})),
                          nfev_replayed=ck.totals.get("nfev_replayed", 0)))
        self._resumed_from = ck
        if self.history_path is not None:
            same = (ck.history_path is not None
                    and os.path.abspath(ck.history_path) == os.path.abspath(self.history_path))
            keep = ck.history_lines if same else None
            self.history_writer = HistoryWriter(self.history_path, keep_lines=keep)
            if same and ck.history_lines:
                try:
                    self.records = read_history(self.history_path)
                except FG2UValueError as exc:
                    logger.warning("could not read back %s: %s", self.history_path, exc)

    def phi(self) -> np.ndarray:
        return self.T.forward(self.state.z)

    def save(self, status, message):
        """Write the checkpoint (to a temporary file when none was configured)."""
        path = self.checkpoint_path
        if path is None:
            fd, path = tempfile.mkstemp(prefix="fg2u-zo-", suffix=".ckpt")
            os.close(fd)
            self.checkpoint_path = path
        if self.history_writer is not None:
            self.history_writer.sync()  # the lines the checkpoint counts are on disk first
        s = self.state
        totals = s.totals.to_dict()
        totals["wall_time"] = self.wall_time()
        ck = Checkpoint(
            phi=self.phi(), z=s.z.copy(), lower=self.T.bounds.lower,
            upper=self.T.bounds.upper, stepper_state=s.stepper_state,
            rng_state=generator_state(s.rng), step=s.step, phase=s.phase,
            step_in_phase=s.step_in_phase, history_path=self.history_path,
            history_lines=self.history_writer.lines if self.history_writer else 0,
            noise=s.noise, noise_age=s.noise_age, totals=totals, config=self.config,
            metadata=self.metadata, status=status, message=message)
        self.last_checkpoint = write_checkpoint(path, ck)
        logger.debug("checkpoint written to %s at step %d", self.last_checkpoint, s.step)
        if self.journal is not None:
            self.journal.after_save(status, ck)
        return self.last_checkpoint

    def _open_journal(self):
        """Journal from the start: a resumed run takes over its checkpoint's journal; a
        new run first writes a checkpoint of its start for the journal to belong to."""
        if self.journal is None:
            return None
        if self._resumed_from is not None:
            return self.journal.resume(self._resumed_from)
        if self.last_checkpoint is None:
            self.save("running", "started")
        return self.journal.journal

    def wall_time(self) -> float:
        return self.state.totals.wall_time + (time.perf_counter() - self._wall_start)

    # loop -------------------------------------------------------------------------------
    def run(self, *, evaluator, callbacks, target, gtol, max_nfev, max_time, progress):
        """Run the steps, then evaluate F at the final phi; returns (status, value)."""
        self._wall_start = time.perf_counter()
        total_steps = sum(p.steps for p in self.plans)
        bar = Progress(total_steps, initial=min(self.state.step, total_steps),
                       enabled=progress)
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(evaluator.journaling(self._open_journal()))
            with SignalGuard() as guard:
                try:
                    status = self._loop(evaluator, guard, callbacks, target, gtol, max_nfev,
                                        max_time, bar)
                    if status == "sigterm":
                        return status, math.nan
                    # Still inside the guard: a signal now only marks the run, and the
                    # final checkpoint below is written anyway.
                    value = self._final_value(evaluator)
                except Exception as exc:
                    self._save_on_error(exc)
                    raise
                self.message = _MESSAGES[status].format(
                    nit=self.state.step, target=target or 0.0, gtol=gtol or 0.0,
                    max_nfev=max_nfev, max_time=max_time or 0.0)
                if self.checkpoint_path is not None:
                    self.save("finished", self.message)
                return status, value
        finally:
            stack.close()
            if self.journal is not None:
                self.journal.close()
            bar.close()
            if self.history_writer is not None:
                self.history_writer.close()
            self._log_failure_totals()

    def _save_on_error(self, exc):
        if getattr(exc, "checkpoint", None) is not None:
            return
        step = self.state.step
        if self.checkpoint_path is None and step == 0:
            # Nothing done yet: a temporary checkpoint would only hold the start, and
            # suggesting to resume it would send the user after the wrong fix.
            return
        path = self.save("failed", f"stopped at step {step}: {type(exc).__name__}")
        exc.checkpoint = path
        annotate(exc, f"fg2u-zo: the run stopped at step {step}; its state is saved in "
                      f"{path}. Fix the cause, then continue with fz.resume({path!r}, "
                      f"problem) or `fg2u-zo resume {path}`.")

    def _final_value(self, evaluator):
        """``F(phi)`` at the final phi with the problem's own inner solver (one solve)."""
        phi = self.phi()
        theta, stats = evaluator.solve(self.problem.inner, phi)
        self.state.totals = self.state.totals.add(stats.nfev, stats.solver_time, [],
                                                  stats.nfev_replayed)
        return self.problem.outer_value(theta, phi)

    def _advance_phase(self):
        s = self.state
        while s.phase < len(self.plans) and s.step_in_phase >= self.plans[s.phase].steps:
            if s.phase + 1 == len(self.plans):
                return False
            s.phase += 1
            s.step_in_phase = 0
            s.noise, s.noise_age = None, 0  # a new solver/estimator: re-measure
            logger.info("step %d: entering %s (%s)", s.step, self.plans[s.phase].name,
                        estimator_config(self.plans[s.phase].estimator)["name"])
        return True

    def _loop(self, ev, guard, callbacks, target, gtol, max_nfev, max_time, bar):
        while True:
            if guard.received is not None:  # arrived between two steps
                return self._stop_on_signal(guard.received, abandoned=False)
            if not self._advance_phase():
                return "steps"
            # Replayed evaluations were solved once (before an interruption): they count
            # against the budget, so a resumed run stops where an uninterrupted one does.
            totals = self.state.totals
            if max_nfev is not None and totals.nfev + totals.nfev_replayed >= max_nfev:
                return "max_nfev"
            if max_time is not None and self.wall_time() >= max_time:
                return "max_time"
            rng_before = generator_state(self.state.rng)
            try:
                guard.abandonable = True
                try:
                    record, update = self._step(ev)
                finally:
                    guard.abandonable = False
            except (Abandon, KeyboardInterrupt) as exc:
                # Roll back to the start of the step: the state is untouched but for the
                # generator, restored here, so a resumed run redoes exactly this step.
                signum = exc.args[0] if isinstance(exc, Abandon) else signal.SIGINT
                self.state.rng = generator_from_state(rng_before)
                return self._stop_on_signal(signum, abandoned=True)
            except Exception:
                # The failed step is rolled back the same way; run() saves and re-raises.
                self.state.rng = generator_from_state(rng_before)
                raise
            bar.update(record)
            if (self.checkpoint_path is not None and self.checkpoint_every
                    and self.state.step % self.checkpoint_every == 0):
                self.save("running", f"step {self.state.step}")
            stop = False
            for cb in callbacks:
                stop = bool(cb(record)) or stop
            if guard.received is not None:
                return self._stop_on_signal(guard.received, abandoned=False)
            if stop:
                return "callback"
            if target is not None and update.value <= target:
                return "target"
            if gtol is not None and record.grad_norm <= gtol:
                return "gtol"
            if self.meta_gradient is not None and getattr(self.meta_gradient,
                                                          "degenerate", False):
                # Every difference was exactly zero: the step did not see the solver
                # move, so a zero gradient here says nothing about convergence.
                return "degenerate"

    def _step(self, ev):
        """One step: estimate, update, checks, then commit (replace the state)."""
        s = self.state
        plan = self.plans[s.phase]
        lr = plan.lr * float(plan.schedule(s.step_in_phase, plan.steps))
        phi = self.T.forward(s.z)
        spend = _Spend()
        replayed_before = ev.nfev_replayed
        wants = self.stepper.extras
        g = None
        if "estimate" in wants or "sketch" in wants:
            kwargs = {}
            if plan.accepts_noise:
                kwargs["noise"] = s.noise
            if "sketch" in wants:
                kwargs["keep_sketch"] = True
            if "warned" in estimator_options(plan.estimator):
                kwargs["warned"] = self._estimate_warned  # each warning once per run
            g = plan.estimator.estimate(plan.problem, phi, rng=s.rng, evaluator=ev, **kwargs)
            spend.nfev += int(g.nfev)
            spend.solver_time += float(g.solver_time)
            spend.failures.extend(g.failures)
            _check_finite_estimate(g, s.step, phi)
        extra = self._extras(
            wants, estimate=g, noise=s.noise, problem=plan.problem, estimator=plan.estimator,
            transform=self.T, rng=s.rng,
            evaluate=_Evaluate(ev, plan.problem.inner, s.rng, spend))
        if "workers" in wants:  # asking starts the backend: only when wanted
            extra["workers"] = ev.workers
        update = self.stepper.update(s.stepper_state, z=s.z.copy(), lr=lr, **extra)
        spend.nfev_replayed = ev.nfev_replayed - replayed_before
        spend.nfev += int(update.nfev)  # the stepper's own in-process solves (jvp passes)
        _check_finite_update(update, s.step)
        z_new, _ = self.T.project(np.asarray(update.z, dtype=np.float64))
        return self._commit(plan, update, g, z_new, lr, spend), update

    def _commit(self, plan, update, g, z_new, lr, spend):
        s = self.state
        g = update.meta_gradient if update.meta_gradient is not None else g
        noise, age = self._next_noise(plan, g, self.T.forward(z_new))
        totals = s.totals.add(spend.nfev, spend.solver_time, spend.failures,
                              spend.nfev_replayed)
        self.state = dataclasses.replace(
            s, z=z_new, stepper_state=update.state, step=s.step + 1,
            step_in_phase=s.step_in_phase + 1, noise=noise, noise_age=age, totals=totals)
        self.meta_gradient = g
        stderr_norm = float(np.linalg.norm(g.stderr)) if g is not None else math.inf
        grad = update.grad if update.grad is not None else (g.grad if g is not None
                                                           else None)
        record = StepRecord(
            step=s.step, phase=s.phase,
            estimator=(g.estimator if g is not None else "") or plan.name,
            value=float(update.value),
            grad_norm=float(np.linalg.norm(grad)) if grad is not None else math.nan,
            stderr_norm=stderr_norm, snr=float(g.snr) if g is not None else math.nan,
            nfev=spend.nfev, nfev_total=totals.nfev, solver_time=spend.solver_time,
            solver_time_total=totals.solver_time, wall_time=self.wall_time(),
            failures=len(spend.failures),
            fd_step=None if g is None or g.step is None else float(g.step),
            lr=float(lr), fd_error=_predicted_fd_error(g),
            phi=np.asarray(update.phi, dtype=np.float64), info=dict(update.info) or None,
            nfev_replayed=spend.nfev_replayed)
        if self.history_writer is not None:
            self.history_writer.write(record)
        self.records.append(record)
        self._report_failures(record.step, spend.failures)
        logger.debug("step %d: value=%.6g |g|=%.3g snr=%.3g nfev=%d", record.step,
                     record.value, record.grad_norm, record.snr, record.nfev_total)
        return record

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
                logger.warning("step %d: an evaluation failed for good (%s): %s; it was "
                               "dropped and the estimate reweighted (totals by kind in "
                               "OptimizeResult.failures)", step, f.kind,
                               f.message.strip().splitlines()[-1:] or "")

    def _log_failure_totals(self):
        if self.state is not None and self.state.totals.failures:
            counts = ", ".join(f"{kind}: {n}" for kind, n in
                               sorted(self.state.totals.failures.items()))
            logger.warning("evaluations that failed for good since the run began: %s",
                           counts)

    def _stop_on_signal(self, signum, abandoned):
        name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
        what = "abandoned the step in progress" if abandoned else "finished the step"
        step = self.state.step
        path = self.save("interrupted", f"{name} at step {step}")
        msg = (f"stopped by {name} ({what}) after {step} steps; checkpoint written to "
               f"{path}; continue with fz.resume({path!r}, problem) or "
               f"`fg2u-zo resume {path}`")
        logger.warning(msg)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt(msg)
        self.signal_message = msg
        return "sigterm"


class _Evaluate:
    """The ``evaluate`` extra: one parallel group of solves, counted with the step."""

    def __init__(self, evaluator, solver, rng, spend):
        self.evaluator, self.solver, self.rng, self.spend = evaluator, solver, rng, spend

    def __call__(self, points, *, warm_start=None) -> Evaluations:
        points = [np.asarray(p, dtype=np.float64) for p in points]
        for i, p in enumerate(points):
            if not np.all(np.isfinite(p)):
                raise NonFiniteStepError(
                    f"the stepper asked to evaluate a non-finite point (points[{i}] = "
                    f"{p.tolist()[:5]}); nothing of this step was committed")
        thetas = [None] * len(points)

        def keep(index, theta):
            thetas[index] = theta

        # Like the estimators: a seed for stochastic solvers, drawn in this process.
        seed = int(self.rng.integers(2**31 - 1))
        # The stepper decides what a failed point means (a failed trial shrinks the
        # radius, a failed direction is drawn again): never raise here, so the group's
        # solves and failures reach the run's totals and history.
        stats = self.evaluator.map(self.solver, points, keep, seed=seed,
                                   warm_start=warm_start, max_failure_fraction=1.0)
        self.spend.nfev += stats.nfev
        self.spend.solver_time += stats.solver_time
        self.spend.failures.extend(stats.failures)
        return Evaluations(thetas=thetas, failures=list(stats.failures), nfev=stats.nfev,
                           solver_time=stats.solver_time)


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
