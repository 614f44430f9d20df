"""The outer loop: a torch optimizer driven by meta-gradient estimates, that never loses
the user's work.

:func:`minimize` moves an unconstrained float64 leaf tensor ``z`` with a real
``torch.optim`` optimizer; each step estimates ``grad F`` at ``phi = T(z)`` (see
:mod:`fg2u_zo.outer.transforms`), applies the chain rule, steps, and projects onto the
bounds. One :class:`~fg2u_zo.Evaluator` serves the whole run. Checkpoints (see
:mod:`fg2u_zo.outer.checkpoint`) are written every ``checkpoint_every`` steps, at the end,
on SIGINT/SIGTERM and before an inner-solver failure is re-raised; :func:`resume`
continues a run bit for bit.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..validation import as_generator, check_phi, check_positive_float, check_positive_int
from .checkpoint import (Checkpoint, config_differences, decode_noise, encode_noise,
                         generator_from_state, generator_state, read_checkpoint, to_json,
                         write_checkpoint)
from ..errors import CheckpointError, FG2UError, FG2UTypeError, FG2UValueError
from ..estimators.base import Estimator
from ..evaluation.evaluator import Evaluator
from .history import HistoryWriter, Progress, StepRecord, read_history
from ..problem import BilevelProblem
from ..result import MetaGradient
from .schedules import as_schedule, schedule_config, schedule_from_config
from .transforms import ParameterTransform, as_bounds

__all__ = ["Phase", "OptimizeResult", "minimize", "resume"]

logger = logging.getLogger(__name__)

_OPTIMIZER_ALIASES = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}
#: Why a run stopped -> whether that is a success (it ended as configured).
_STATUSES = {"steps": True, "target": True, "gtol": True, "callback": True,
             "max_nfev": True, "max_time": True, "sigint": False, "sigterm": False}


@dataclass(frozen=True)
class Phase:
    """One segment of the outer optimization: its estimator, length and inner solver.

    The two-phase paradigm of FG²U: spend the early steps on a cheap, biased estimator,
    then refine with the unbiased one. On the torch path the cheap one is TRGU or
    Neumann; on the black-box path a low-fidelity solver (coarser grid, looser
    tolerance) or fewer directions.

    Parameters
    ----------
    steps : int
        Outer steps in this phase.
    estimator : Estimator, optional
        Default: the ``estimator`` passed to :func:`minimize`.
    solver : callable, optional
        Replaces the problem's inner solver during this phase (a low-fidelity model).
        If it has a ``.torch`` method it serves the exact estimators as well.
    lr : float, optional
        Base learning rate of the phase (default: ``minimize``'s ``lr``).
    schedule : str or callable, optional
        Learning-rate schedule over the phase's own steps (default: ``minimize``'s).
    name : str, optional
        Label for logs.

    Examples
    --------
    >>> import fg2u_zo as fz
    >>> phases = [fz.Phase(steps=30, estimator=fz.FG2UZO(num_directions=2)),
    ...           fz.Phase(steps=10, estimator=fz.FG2UZO(num_directions=16))]
    """

    steps: int
    estimator: Estimator | None = None
    solver: object = None
    lr: float | None = None
    schedule: object = None
    name: str | None = None

    def __post_init__(self):
        check_positive_int(self.steps, "Phase steps")
        if self.estimator is not None and not isinstance(self.estimator, Estimator):
            raise FG2UTypeError(
                f"Phase `estimator` must be a fg2u_zo Estimator, got "
                f"{type(self.estimator).__name__}")
        if self.solver is not None and not callable(self.solver):
            raise FG2UTypeError(
                f"Phase `solver` must be an inner solver solver(phi) -> theta, got "
                f"{type(self.solver).__name__}")
        if self.lr is not None:
            check_positive_float(self.lr, "Phase lr")
        if self.schedule is not None:
            as_schedule(self.schedule)


@dataclass(frozen=True, repr=False)
class OptimizeResult:
    """Outcome of :func:`minimize`.

    Attributes
    ----------
    phi : ndarray, shape (N,)
        Final meta-parameters.
    value : float
        ``F(phi)`` at the final phi, from one more solve with the problem's own inner
        solver (NaN when the run was interrupted).
    nit : int
        Outer steps taken since the run began (resumed runs included).
    nfev : int
        Inner-solver evaluations since the run began.
    solver_time, wall_time : float
        Seconds inside the inner solver / of wall-clock time, since the run began.
    history : list of StepRecord
        One record per step (earlier steps of a resumed run are read back from the
        JSONL history when there is one).
    message : str
    success : bool
        True when the run ended as configured (steps done, target or tolerance reached,
        budget spent, a callback asked), False when a signal stopped it.
    status : str
        ``"steps"``, ``"target"``, ``"gtol"``, ``"callback"``, ``"max_nfev"``,
        ``"max_time"``, ``"sigint"`` or ``"sigterm"``.
    meta_gradient : MetaGradient or None
        The last estimate.
    z : ndarray
        The optimizer's unconstrained variable, ``phi = T(z)``.
    phase : int
        Phase the run ended in.
    checkpoint : str or None
        Path of the last checkpoint written.
    """

    phi: np.ndarray
    value: float
    nit: int
    nfev: int
    solver_time: float
    wall_time: float
    history: list
    message: str
    success: bool
    status: str
    meta_gradient: MetaGradient | None = None
    z: np.ndarray | None = None
    phase: int = 0
    checkpoint: str | None = None

    def __repr__(self) -> str:
        return (f"OptimizeResult(success={self.success}, status={self.status!r}, "
                f"value={self.value:.6g}, nit={self.nit}, nfev={self.nfev}, "
                f"solver_time={self.solver_time:.3g}, wall_time={self.wall_time:.3g}, "
                f"message={self.message!r})")


# -- configuration ----------------------------------------------------------------------
def estimator_config(estimator) -> dict:
    """Name and parameters of an estimator, JSON-ready (for checkpoints)."""
    name = getattr(estimator, "name", type(estimator).__name__)
    params = {}
    if dataclasses.is_dataclass(estimator):
        for f in dataclasses.fields(estimator):
            value = getattr(estimator, f.name)
            params[f.name] = value if _is_json_scalar(value) else repr(value)
    else:
        params["repr"] = repr(estimator)
    return {"name": name, "class": type(estimator).__name__, "params": params}


def _is_json_scalar(value):
    if isinstance(value, (list, tuple)):
        return all(_is_json_scalar(v) for v in value)
    return value is None or isinstance(value, (bool, int, str)) or (
        isinstance(value, float) and math.isfinite(value))


def estimator_from_config(config: dict):
    """Rebuild an estimator of this package from :func:`estimator_config`, or None."""
    import fg2u_zo

    cls = getattr(fg2u_zo, config.get("class", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        return None
    try:
        return cls(**config["params"])
    except (TypeError, ValueError):
        return None


def _optimizer_class(optimizer):
    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key in _OPTIMIZER_ALIASES:
            return _OPTIMIZER_ALIASES[key]
        for name in dir(torch.optim):
            cls = getattr(torch.optim, name)
            if (name.lower() == key and isinstance(cls, type)
                    and issubclass(cls, torch.optim.Optimizer)):
                return _check_optimizer_class(cls)
        raise FG2UValueError(
            f"`optimizer` must be 'adam', 'sgd', the name of a torch.optim optimizer "
            f"(e.g. 'RMSprop') or a torch.optim.Optimizer class; got {optimizer!r}")
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return _check_optimizer_class(optimizer)
    if isinstance(optimizer, torch.optim.Optimizer):
        raise FG2UTypeError(
            "`optimizer` must be an optimizer class, not an instance: minimize builds it on "
            "its own parameter tensor; pass e.g. optimizer=torch.optim.RMSprop and its "
            "options as optimizer_options={...}")
    raise FG2UTypeError(
        f"`optimizer` must be a name or a torch.optim.Optimizer class, got "
        f"{type(optimizer).__name__}")


def _check_optimizer_class(cls):
    if cls is torch.optim.LBFGS:
        raise FG2UValueError(
            "`optimizer` LBFGS needs a closure that re-evaluates the loss exactly, which a "
            "stochastic meta-gradient cannot give; use 'adam', 'sgd' or RMSprop")
    return cls


def _optimizer_name(cls) -> str:
    if getattr(torch.optim, cls.__name__, None) is cls:
        return f"torch.optim:{cls.__name__}"
    return f"{cls.__module__}:{cls.__qualname__}"


def _optimizer_from_name(name):
    module, _, attr = name.partition(":")
    if module == "torch.optim":
        return getattr(torch.optim, attr, None)
    return None


@dataclass
class _PhasePlan:
    """A phase resolved against the run's defaults."""

    steps: int
    estimator: Estimator
    problem: BilevelProblem
    lr: float
    schedule: object
    custom_solver: bool
    name: str
    accepts_noise: bool = False

    def config(self) -> dict:
        return {"estimator": estimator_config(self.estimator), "lr": self.lr,
                "schedule": schedule_config(self.schedule),
                "solver": "custom" if self.custom_solver else None}


def _phase_problem(problem, solver, index):
    """The problem with its inner solver replaced by a phase's (low-fidelity) solver."""
    return BilevelProblem(inner=solver, outer=problem.outer, num_params=problem.num_params,
                          differentiable_outer=problem.differentiable_outer,
                          name=f"{problem.name}[phase {index}]")


def _accepts_noise(estimator) -> bool:
    # The noise-aware estimators take `noise=`; the others would hand an unknown keyword
    # on to the Evaluator, so only pass it where the signature names it.
    try:
        params = inspect.signature(estimator.estimate).parameters
    except (TypeError, ValueError):
        return False
    return "noise" in params


def _build_plans(problem, estimator, phases, steps, lr, schedule):
    lr = check_positive_float(lr, "lr")
    schedule = as_schedule(schedule)
    if phases is None:
        if estimator is None:
            raise FG2UValueError("pass an `estimator=` (e.g. fz.FG2UZO()) or `phases=[...]`")
        phases = [Phase(steps=check_positive_int(steps, "steps"), estimator=estimator)]
    else:
        if isinstance(phases, Phase):
            phases = [phases]
        phases = list(phases)
        if not phases:
            raise FG2UValueError("`phases` must hold at least one fz.Phase")
        for i, ph in enumerate(phases):
            if not isinstance(ph, Phase):
                raise FG2UTypeError(
                    f"`phases[{i}]` must be a fz.Phase(steps=..., estimator=...), got "
                    f"{type(ph).__name__}")
    plans = []
    for i, ph in enumerate(phases):
        est = ph.estimator if ph.estimator is not None else estimator
        if est is None:
            raise FG2UValueError(
                f"`phases[{i}]` has no estimator and no default `estimator=` was given")
        if not isinstance(est, Estimator):
            raise FG2UTypeError(
                f"`estimator` must be a fg2u_zo Estimator (FG2UZO, FG2U, ...), got "
                f"{type(est).__name__}")
        prob = problem if ph.solver is None else _phase_problem(problem, ph.solver, i)
        # Fail before step 0, not at phase 2.
        try:
            est.check_problem(prob)
        except FG2UError as exc:
            raise type(exc)(f"phase {i}: {exc}") from None
        plans.append(_PhasePlan(
            steps=ph.steps, estimator=est, problem=prob,
            lr=float(ph.lr) if ph.lr is not None else lr,
            schedule=as_schedule(ph.schedule) if ph.schedule is not None else schedule,
            custom_solver=ph.solver is not None, name=ph.name or f"phase {i}",
            accepts_noise=_accepts_noise(est)))
    return plans


def _as_callbacks(callback):
    if callback is None:
        return []
    if callable(callback):
        return [callback]
    try:
        callbacks = list(callback)
    except TypeError:
        raise FG2UTypeError(
            f"`callback` must be a callable or a list of callables, got "
            f"{type(callback).__name__}") from None
    for cb in callbacks:
        if not callable(cb):
            raise FG2UTypeError(f"`callback` entries must be callable, got {type(cb).__name__}")
    return callbacks


def _check_optional_positive(value, name, integer=False):
    if value is None:
        return None
    if integer:
        return check_positive_int(value, name)
    return check_positive_float(value, name)


# -- signals -----------------------------------------------------------------------------
class _Abandon(BaseException):
    """Raised from the signal handler to abandon the step in progress.

    A BaseException, so that code catching Exception inside an estimator does not
    swallow it.
    """


class _SignalGuard:
    """SIGINT/SIGTERM handling during a run; previous handlers restored on exit.

    - SIGTERM (a batch scheduler's "time is up"): abandon the step in progress at once.
    - First SIGINT (Ctrl-C): finish the step, then stop; a second SIGINT abandons it.

    Either way the run writes a checkpoint of a consistent state (an abandoned step is
    rolled back to its start) and stops. Handlers can only be installed from the main
    thread; elsewhere the guard does nothing.
    """

    def __init__(self):
        self.received = None
        self.abandonable = False
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def _handle(self, signum, frame):
        repeated = self.received is not None
        if self.received != signal.SIGTERM:
            self.received = signum
        if self.abandonable and (signum == signal.SIGTERM or repeated):
            self.abandonable = False  # raise once; the rollback must not be interrupted
            raise _Abandon(signum)
        if signum == signal.SIGINT:
            logger.warning("interrupt received: finishing the current step, then writing a "
                           "checkpoint; interrupt again to abandon the step")


def _annotate(exc, text):
    """Append ``text`` to an exception's message, keeping its class and attributes."""
    if isinstance(exc, FG2UError) and exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]}\n{text}",) + exc.args[1:]
    elif hasattr(exc, "add_note"):
        exc.add_note(text)


# -- the run -----------------------------------------------------------------------------
class _Run:
    """State and steps of one call of :func:`minimize` (internal)."""

    def __init__(self, problem, plans, transform, opt_cls, opt_options, config, *,
                 checkpoint, checkpoint_every, history, metadata):
        self.problem = problem
        self.plans = plans
        self.T = transform
        self.opt_cls, self.opt_options = opt_cls, opt_options
        self.config = config
        self.checkpoint_path = checkpoint
        self.checkpoint_every = checkpoint_every
        self.history_path = history
        self.metadata = metadata
        self.history_writer = None
        self.last_checkpoint = None
        self.records = []
        self.meta_gradient = None

    # state ------------------------------------------------------------------------------
    def start_fresh(self, phi0, rng):
        z0 = self.T.inverse(phi0)
        z0, _ = self.T.project(z0)
        self._init_state(z0, rng)
        self.step = self.phase = self.step_in_phase = 0
        self.noise, self.noise_age = None, 0
        self.totals = {"nfev": 0, "solver_time": 0.0, "wall_time": 0.0}
        if self.history_path is not None:
            self.history_writer = HistoryWriter(self.history_path)

    def start_from(self, ck: Checkpoint):
        self._init_state(np.array(ck.z, dtype=np.float64), ck.generator())
        try:
            self.optimizer.load_state_dict(ck.optimizer_state)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(
                f"the optimizer state in the checkpoint does not fit "
                f"{self.opt_cls.__name__}: {exc}") from None
        self.step, self.phase, self.step_in_phase = ck.step, ck.phase, ck.step_in_phase
        self.noise = decode_noise(ck.noise)
        self.noise_age = int((ck.noise or {}).get("age", 0))
        self.totals = {"nfev": int(ck.totals.get("nfev", 0)),
                       "solver_time": float(ck.totals.get("solver_time", 0.0)),
                       "wall_time": float(ck.totals.get("wall_time", 0.0))}
        if self.history_path is not None:
            same = (ck.history_path is not None
                    and os.path.abspath(ck.history_path) == os.path.abspath(self.history_path))
            keep = ck.history_lines if same else None
            if same and os.path.exists(self.history_path) and ck.history_lines:
                try:
                    self.records = read_history(self.history_path)[:ck.history_lines]
                except FG2UValueError as exc:
                    logger.warning("could not read back %s: %s", self.history_path, exc)
            self.history_writer = HistoryWriter(self.history_path, keep_lines=keep)

    def _init_state(self, z0, rng):
        self.z = torch.tensor(z0, dtype=torch.float64, requires_grad=True)
        first = self.plans[0]
        try:
            self.optimizer = self.opt_cls([self.z], lr=first.lr, **self.opt_options)
        except TypeError as exc:
            raise FG2UTypeError(
                f"cannot build optimizer {self.opt_cls.__name__} with optimizer_options="
                f"{self.opt_options!r}: {exc}") from None
        self.rng = rng

    def phi(self) -> np.ndarray:
        return self.T.forward(self.z.detach().numpy())

    def save(self, status, message, rng_state=None):
        """Write the checkpoint (to a temporary file when none was configured)."""
        path = self.checkpoint_path
        if path is None:
            fd, path = tempfile.mkstemp(prefix="fg2u-zo-", suffix=".ckpt")
            os.close(fd)
            self.checkpoint_path = path
        if self.history_writer is not None:
            self.history_writer.sync()  # the lines the checkpoint counts are on disk first
        totals = dict(self.totals)
        totals["wall_time"] = self.wall_time()
        ck = Checkpoint(
            phi=self.phi(), z=self.z.detach().numpy().copy(),
            lower=self.T.bounds.lower, upper=self.T.bounds.upper,
            optimizer_state=self.optimizer.state_dict(),
            rng_state=rng_state if rng_state is not None else generator_state(self.rng),
            step=self.step, phase=self.phase, step_in_phase=self.step_in_phase,
            history_path=(os.path.abspath(self.history_path)
                          if self.history_path is not None else None),
            history_lines=self.history_writer.lines if self.history_writer else 0,
            noise=self._encoded_noise(), totals=totals, config=self.config,
            metadata=self.metadata, status=status, message=message)
        self.last_checkpoint = write_checkpoint(path, ck)
        logger.debug("checkpoint written to %s at step %d", self.last_checkpoint, self.step)
        return self.last_checkpoint

    def _encoded_noise(self):
        encoded = encode_noise(self.noise)
        if encoded is not None:
            encoded["age"] = self.noise_age
        return encoded

    def wall_time(self) -> float:
        return self.totals["wall_time"] + (time.perf_counter() - self._wall_start)

    # loop -------------------------------------------------------------------------------
    def run(self, *, evaluator, callbacks, target, gtol, max_nfev, max_time, progress):
        """Run the steps, then evaluate F at the final phi; returns (status, value)."""
        self._wall_start = time.perf_counter()
        total_steps = sum(p.steps for p in self.plans)
        bar = Progress(total_steps, initial=min(self.step, total_steps), enabled=progress)
        try:
            with _SignalGuard() as guard:
                try:
                    status = self._loop(evaluator, guard, callbacks, target, gtol, max_nfev,
                                        max_time, bar)
                    if status == "sigterm":
                        return status, math.nan
                    # Still inside the guard: a signal now only marks the run, and the
                    # final checkpoint below is written anyway.
                    value = self._final_value(evaluator)
                except Exception as exc:
                    if getattr(exc, "checkpoint", None) is None:
                        path = self.save("failed", f"stopped at step {self.step}: "
                                                   f"{type(exc).__name__}")
                        exc.checkpoint = path
                        _annotate(exc, f"fg2u-zo: the run stopped at step {self.step}; its "
                                       f"state is saved in {path}. Fix the cause, then "
                                       f"continue with fz.resume({path!r}, problem) or "
                                       f"`fg2u-zo resume {path}`.")
                    raise
                self.message = _MESSAGES[status].format(
                    nit=self.step, target=target or 0.0, gtol=gtol or 0.0,
                    max_nfev=max_nfev, max_time=max_time or 0.0)
                if self.checkpoint_path is not None:
                    self.save("finished", self.message)
                return status, value
        finally:
            bar.close()
            if self.history_writer is not None:
                self.history_writer.close()

    def _final_value(self, evaluator):
        """``F(phi)`` at the final phi with the problem's own inner solver (one solve)."""
        phi = self.phi()
        theta, stats = evaluator.solve(self.problem.inner, phi)
        self.totals["nfev"] += stats.nfev
        self.totals["solver_time"] += stats.solver_time
        return self.problem.outer_value(theta, phi)

    def _advance_phase(self):
        while (self.phase < len(self.plans)
               and self.step_in_phase >= self.plans[self.phase].steps):
            if self.phase + 1 == len(self.plans):
                return False
            self.phase += 1
            self.step_in_phase = 0
            self.noise, self.noise_age = None, 0  # a new solver/estimator: re-measure
            logger.info("step %d: entering %s (%s)", self.step, self.plans[self.phase].name,
                        estimator_config(self.plans[self.phase].estimator)["name"])
        return True

    def _loop(self, ev, guard, callbacks, target, gtol, max_nfev, max_time, bar):
        while True:
            if guard.received is not None:  # arrived between two steps
                return self._stop_on_signal(guard.received, abandoned=False)
            if not self._advance_phase():
                return "steps"
            if max_nfev is not None and self.totals["nfev"] >= max_nfev:
                return "max_nfev"
            if max_time is not None and self.wall_time() >= max_time:
                return "max_time"
            plan = self.plans[self.phase]
            lr = plan.lr * float(plan.schedule(self.step_in_phase, plan.steps))
            z_np = self.z.detach().numpy().copy()
            phi = self.T.forward(z_np)
            rng_before = generator_state(self.rng)
            extra = {"noise": self.noise} if plan.accepts_noise else {}
            try:
                guard.abandonable = True
                try:
                    g = plan.estimator.estimate(plan.problem, phi, rng=self.rng,
                                                evaluator=ev, **extra)
                finally:
                    guard.abandonable = False
            except (_Abandon, KeyboardInterrupt) as exc:
                # Roll back to the start of the step: z and the optimizer are untouched,
                # the generator is restored, so a resumed run redoes exactly this step.
                signum = exc.args[0] if isinstance(exc, _Abandon) else signal.SIGINT
                self.rng = generator_from_state(rng_before)
                return self._stop_on_signal(signum, abandoned=True)
            except Exception:
                # The failed step is rolled back the same way; run() saves and re-raises.
                self.rng = generator_from_state(rng_before)
                raise
            record = self._commit(plan, phi, z_np, g, lr)
            bar.update(record)
            if (self.checkpoint_path is not None and self.checkpoint_every
                    and self.step % self.checkpoint_every == 0):
                self.save("running", f"step {self.step}")
            stop = False
            for cb in callbacks:
                stop = bool(cb(record)) or stop
            if guard.received is not None:
                return self._stop_on_signal(guard.received, abandoned=False)
            if stop:
                return "callback"
            if target is not None and g.value <= target:
                return "target"
            if gtol is not None and record.grad_norm <= gtol:
                return "gtol"

    def _commit(self, plan, phi, z_np, g, lr):
        """Apply one estimate: chain rule, optimizer step, projection, bookkeeping."""
        grad_z = self.T.chain(z_np, g.grad)
        self.optimizer.zero_grad(set_to_none=True)
        self.z.grad = torch.from_numpy(np.ascontiguousarray(grad_z, dtype=np.float64))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        z_new, changed = self.T.project(self.z.detach().numpy().copy())
        if changed.any():
            with torch.no_grad():
                self.z.copy_(torch.from_numpy(z_new))
        self.z.grad = None
        self._update_noise(plan, g)
        self.meta_gradient = g
        self.totals["nfev"] += int(g.nfev)
        self.totals["solver_time"] += float(g.solver_time)
        stderr_norm = float(np.linalg.norm(g.stderr))
        record = StepRecord(
            step=self.step, phase=self.phase, estimator=g.estimator or plan.name,
            value=float(g.value), grad_norm=float(np.linalg.norm(g.grad)),
            stderr_norm=stderr_norm, snr=float(g.snr), nfev=int(g.nfev),
            nfev_total=self.totals["nfev"], solver_time=float(g.solver_time),
            solver_time_total=self.totals["solver_time"], wall_time=self.wall_time(),
            failures=len(g.failures), fd_step=None if g.step is None else float(g.step),
            lr=float(lr), fd_error=_predicted_fd_error(g), phi=phi)
        self.step += 1
        self.step_in_phase += 1
        if self.history_writer is not None:
            self.history_writer.write(record)
        self.records.append(record)
        logger.debug("step %d: value=%.6g |g|=%.3g snr=%.3g nfev=%d", record.step,
                     record.value, record.grad_norm, record.snr, record.nfev_total)
        return record

    def _update_noise(self, plan, g):
        """Keep the noise estimate for the next step, or drop it to have it re-probed.

        Measure once, reuse at no cost, and refresh when
        :func:`fg2u_zo.noise_needs_refresh` says so (phi moved far, the differences
        sank into the noise, ...). ``noise_age`` counts the steps since the probe.
        """
        if not plan.accepts_noise:
            return
        if g.noise is None:
            self.noise = None
            return
        self.noise_age = 0 if self.noise is None else self.noise_age + 1
        self.noise = g.noise
        try:
            from ..noise.estimate import noise_needs_refresh
        except ImportError:  # pragma: no cover - noise.py ships with the package
            return
        if noise_needs_refresh(self.noise, g, phi=self.phi(), age=self.noise_age):
            logger.debug("step %d: the noise estimate will be measured again", self.step)
            self.noise = None

    def _stop_on_signal(self, signum, abandoned):
        name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
        what = "abandoned the step in progress" if abandoned else "finished the step"
        path = self.save("interrupted", f"{name} at step {self.step}")
        msg = (f"stopped by {name} ({what}) after {self.step} steps; checkpoint written to "
               f"{path}; continue with fz.resume({path!r}, problem) or "
               f"`fg2u-zo resume {path}`")
        logger.warning(msg)
        if signum == signal.SIGINT:
            raise KeyboardInterrupt(msg)
        self.signal_message = msg
        return "sigterm"


def _predicted_fd_error(g) -> float | None:
    """The noise estimate's predicted relative error of one difference, if any."""
    if g.noise is None or g.scheme is None:
        return None
    err = float(g.noise.relative_error(g.scheme))
    return err if math.isfinite(err) else None


_MESSAGES = {
    "steps": "completed {nit} steps",
    "target": "reached the target value {target:g}",
    "gtol": "gradient norm below gtol={gtol:g}",
    "callback": "a callback asked to stop",
    "max_nfev": "spent the budget of max_nfev={max_nfev} inner solves",
    "max_time": "spent the budget of max_time={max_time:g} s",
}


def minimize(problem, phi0=None, estimator=None, *, optimizer="adam", optimizer_options=None,
             lr=1e-2, steps=100, schedule="constant", bounds=None, transform=None,
             phases=None, callback=None, target=None, gtol=None, max_nfev=None,
             max_time=None, checkpoint=None, checkpoint_every=1, history=None,
             resume=False, rng=None, backend=None, n_jobs=None, evaluator=None,
             progress=None, metadata=None) -> OptimizeResult:
    """Minimize ``F(phi) = f(S(phi), phi)`` with a torch optimizer fed by meta-gradient
    estimates.

    Each step: ``phi = T(z)``; ``g = estimator.estimate(problem, phi)``; the optimizer
    steps ``z`` with ``dF/dz = g * T'(z)``; ``phi`` is projected into ``bounds``.

    Parameters
    ----------
    problem : BilevelProblem
    phi0 : array_like, shape (N,)
        Starting point, inside ``bounds`` (strictly, for ``'logit'`` entries). May be
        omitted when resuming.
    estimator : Estimator, optional
        The meta-gradient estimator (FG2UZO, FG2U, BlackBoxES, ...); the default of
        every phase.
    optimizer : {"adam", "sgd"}, a torch.optim class name, or a torch.optim.Optimizer class
        Built on one float64 leaf tensor as ``optimizer([z], lr=lr, **optimizer_options)``.
    optimizer_options : dict, optional
        E.g. ``{"momentum": 0.9}`` for SGD, ``{"betas": (0.9, 0.99)}`` for Adam.
    lr : float
        Base learning rate.
    steps : int
        Number of outer steps (ignored when ``phases`` is given: their steps add up).
    schedule : {"constant", "cosine", "linear"} or callable
        Learning-rate factor ``schedule(step, num_steps)`` over each phase's steps (see
        :mod:`fg2u_zo.outer.schedules`); ``"linear"`` is the decay of the FG²U paper's PDE runs.
    bounds : (lo, hi) or scipy.optimize.Bounds, optional
        Numbers or per-parameter sequences; None means unbounded. Enforced by projection
        after every step (and by the transform for ``'logit'`` entries).
    transform : None, "log", "logit", a sequence of N names, or [(indices, name), ...]
        Reparametrization ``phi = T(z)`` per parameter (see :mod:`fg2u_zo.outer.transforms`);
        the optimizer moves ``z``.
    phases : list of Phase, optional
        Successive segments with their own estimator, steps, inner solver, lr and schedule
        (the two-phase paradigm). The optimizer state carries over between phases.
    callback : callable or list of callables, optional
        ``callback(record: StepRecord)`` after each step; returning True stops the run.
    target : float, optional
        Stop once the value at the start of a step is <= target.
    gtol : float, optional
        Stop once ``||g||`` (in phi space) is <= gtol.
    max_nfev : int, optional
        Do not start a step once this many inner solves were spent.
    max_time : float, optional
        Do not start a step after this many seconds of wall-clock time.
    checkpoint : path-like, optional
        Checkpoint file (see :mod:`fg2u_zo.outer.checkpoint`), written every
        ``checkpoint_every`` steps, at the end, on SIGINT/SIGTERM, and before an
        inner-solver failure is re-raised. Without one, a failure or a signal still
        writes a checkpoint, to a temporary file named in the message.
    checkpoint_every : int
        Steps between checkpoints (default 1: each step is saved).
    history : path-like, optional
        JSONL file, one line per step (see :mod:`fg2u_zo.outer.history`).
    resume : bool or "auto"
        False: start fresh, and refuse to overwrite an existing ``checkpoint`` file.
        True: continue from ``checkpoint`` (which must exist) exactly where it stopped;
        its configuration must match this call (:class:`CheckpointError` names what
        differs); ``rng`` and ``phi0`` are then taken from the checkpoint. ``"auto"``:
        continue when the file exists, else start fresh.
    rng : None, int or numpy.random.Generator
        Draws the directions, always in this process.
    backend, n_jobs : optional
        Options of the one :class:`Evaluator` made for the whole run and closed at its
        end. Or pass ``evaluator=`` (kept open).
    evaluator : Evaluator, optional
    progress : bool, optional
        tqdm progress bar with the value and nfev; None: only when stderr is a terminal.
        Needs the ``progress`` extra; without tqdm there is no bar and no error.
    metadata : dict, optional
        JSON-able data stored in the checkpoint (the CLI stores its config path).

    Returns
    -------
    OptimizeResult

    Raises
    ------
    InnerSolverError
        When an estimate fails past the evaluator's threshold; a checkpoint of the state
        at the start of the failed step is written first and its path is in the message
        (and in ``exc.checkpoint``).
    KeyboardInterrupt
        On SIGINT, after the current step and a checkpoint. SIGTERM abandons the step in
        progress, writes a checkpoint and returns with ``status="sigterm"``.
    CheckpointError
        When resuming from a checkpoint that does not match this run.

    Examples
    --------
    >>> import numpy as np, fg2u_zo as fz
    >>> from fg2u_zo.testing import RidgeHyperproblem
    >>> ridge = RidgeHyperproblem(num_features=3)
    >>> res = fz.minimize(ridge.problem(), np.zeros(3), fz.FG2UZO(num_directions=4),
    ...                   lr=0.1, steps=30, bounds=(-3, 3), rng=0, progress=False)
    >>> bool(res.value < ridge.problem().outer_value(ridge.inner(np.zeros(3)), np.zeros(3)))
    True
    """
    if not isinstance(problem, BilevelProblem):
        raise FG2UTypeError(
            f"`problem` must be a fz.BilevelProblem, got {type(problem).__name__}")
    if resume not in (False, True, "auto"):
        raise FG2UValueError(f"`resume` must be False, True or 'auto', got {resume!r}")
    ck = None
    if checkpoint is not None:
        checkpoint = os.path.abspath(os.fspath(checkpoint))
        if os.path.exists(checkpoint):
            if resume is False:
                raise CheckpointError(
                    f"checkpoint {checkpoint!r} already exists; pass resume=True to continue "
                    "that run (or use fz.resume), or delete the file / choose another path to "
                    "start over")
            ck = read_checkpoint(checkpoint)
        elif resume is True:
            raise CheckpointError(
                f"resume=True but checkpoint {checkpoint!r} does not exist; pass "
                "resume='auto' to start fresh when it is missing")
    elif resume is True:
        raise FG2UValueError("resume=True needs `checkpoint=` the file to continue from")

    if ck is not None:
        num_params = ck.num_params
        if phi0 is not None:
            check_phi(phi0, num_params, "phi0")  # same length, or CheckpointError below
        if problem.num_params is not None and problem.num_params != num_params:
            raise CheckpointError(
                f"checkpoint {checkpoint!r} does not match this problem: num_params: "
                f"checkpoint has {num_params}, the problem has {problem.num_params}")
    else:
        if phi0 is None:
            raise FG2UValueError("pass the starting point `phi0`")
        phi0 = check_phi(phi0, problem.num_params, "phi0")
        num_params = phi0.size
    bounds_ = as_bounds(bounds, num_params)
    T = ParameterTransform.from_spec(transform, num_params, bounds_)
    plans = _build_plans(problem, estimator, phases, steps, lr, schedule)
    opt_cls = _optimizer_class(optimizer)
    opt_options = dict(optimizer_options or {})
    callbacks = _as_callbacks(callback)
    target = None if target is None else float(target)
    gtol = _check_optional_positive(gtol, "gtol")
    max_nfev = _check_optional_positive(max_nfev, "max_nfev", integer=True)
    max_time = _check_optional_positive(max_time, "max_time")
    checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    history = None if history is None else os.path.abspath(os.fspath(history))
    config = {
        "num_params": num_params,
        "optimizer": {"name": _optimizer_name(opt_cls), "options": _jsonable(opt_options)},
        "transform": T.config(),
        "phases": [p.config() for p in plans],
        "phase_steps": [p.steps for p in plans],
    }
    if ck is not None:
        _check_matches(checkpoint, ck, config, bounds_)
    else:
        bad = bounds_.violations(phi0)
        if bad.size:
            raise FG2UValueError(
                f"`phi0` must lie inside `bounds`; phi0{bad[:10].tolist()} = "
                f"{phi0[bad[:3]].tolist()} is outside [{bounds_.lower[bad[:3]].tolist()}, "
                f"{bounds_.upper[bad[:3]].tolist()}]")

    run = _Run(problem, plans, T, opt_cls, opt_options, config, checkpoint=checkpoint,
               checkpoint_every=checkpoint_every, history=history,
               metadata=_jsonable(metadata or {}))
    if ck is not None:
        run.start_from(ck)
        logger.info("resuming %s at step %d (phase %d)", checkpoint, ck.step, ck.phase)
    else:
        run.start_fresh(phi0, as_generator(rng))

    own = evaluator is None
    if own:
        ev = Evaluator(backend=backend, n_jobs=n_jobs)
    else:
        if backend is not None or n_jobs is not None:
            raise FG2UValueError("pass either `evaluator=` or `backend=`/`n_jobs=`, not both")
        if not isinstance(evaluator, Evaluator):
            raise FG2UTypeError(
                f"`evaluator` must be a fg2u_zo.Evaluator, got {type(evaluator).__name__}")
        ev = evaluator
    try:
        status, value = run.run(evaluator=ev, callbacks=callbacks, target=target, gtol=gtol,
                                max_nfev=max_nfev, max_time=max_time, progress=progress)
    finally:
        if own:
            ev.close()
    message = run.signal_message if status == "sigterm" else run.message
    logger.info("minimize: %s (value %.6g, nfev %d)", message, value, run.totals["nfev"])
    return OptimizeResult(
        phi=run.phi(), value=float(value), nit=run.step, nfev=run.totals["nfev"],
        solver_time=run.totals["solver_time"], wall_time=run.wall_time(),
        history=run.records, message=message, success=_STATUSES[status], status=status,
        meta_gradient=run.meta_gradient, z=run.z.detach().numpy().copy(), phase=run.phase,
        checkpoint=run.last_checkpoint)


def _jsonable(value):
    """``value`` as JSON for the checkpoint, or a TypeError naming what cannot be stored."""
    try:
        encoded = to_json(value)
        json.dumps(encoded, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise FG2UTypeError(f"cannot store {value!r} in a checkpoint (JSON): {exc}") from None
    return encoded


def _check_matches(path, ck, config, bounds):
    """Raise CheckpointError naming every difference that would change the trajectory."""
    saved = dict(ck.config)
    diffs = []
    saved_steps = saved.pop("phase_steps", None)
    current = dict(config)
    current_steps = current.pop("phase_steps")
    diffs += config_differences(saved, current)
    if saved_steps is not None:
        if len(saved_steps) != len(current_steps):
            diffs.append(f"number of phases: checkpoint has {len(saved_steps)}, this run has "
                         f"{len(current_steps)}")
        else:
            # Phases already finished must keep their length; the current and later ones
            # may be lengthened (to continue a run) or shortened down to where it is.
            for i in range(min(ck.phase, len(saved_steps))):
                if saved_steps[i] != current_steps[i]:
                    diffs.append(f"phases[{i}].steps: checkpoint has {saved_steps[i]} (a "
                                 f"finished phase), this run has {current_steps[i]}")
            if ck.phase < len(current_steps) and current_steps[ck.phase] < ck.step_in_phase:
                diffs.append(f"phases[{ck.phase}].steps: the checkpoint is {ck.step_in_phase} "
                             f"steps into it, this run allows only {current_steps[ck.phase]}")
    for name, saved_b, cur_b in (("lower", ck.lower, bounds.lower),
                                 ("upper", ck.upper, bounds.upper)):
        if saved_b.shape != cur_b.shape or not np.array_equal(saved_b, cur_b):
            diffs.append(f"bounds ({name}): checkpoint has {saved_b.tolist()}, this run has "
                         f"{cur_b.tolist()}")
    if diffs:
        raise CheckpointError(
            f"checkpoint {path!r} does not match this run:\n  " + "\n  ".join(diffs)
            + "\nresume with the configuration it was written with (fz.resume rebuilds it), "
              "or start a new run with another checkpoint path")


def resume(checkpoint, problem, estimator=None, *, phases=None, optimizer=None,
           schedule=None, steps=None, **options) -> OptimizeResult:
    """Continue a run from its checkpoint, exactly where it stopped.

    The estimators, optimizer, learning rates, schedules, transforms and bounds are
    rebuilt from the checkpoint; pass only what it cannot hold (a custom estimator class,
    a phase's inner solver, a schedule callable, a user optimizer class). What you pass
    must match what the checkpoint recorded.

    Parameters
    ----------
    checkpoint : path-like
    problem : BilevelProblem
        The same problem (its num_params is checked).
    estimator, phases, optimizer, schedule : optional
        Needed only when the checkpoint cannot rebuild them (the error says which).
    steps : int, optional
        New total number of steps; the last phase is lengthened (or shortened) to match.
        Default: the run's original length.
    **options
        Other :func:`minimize` keywords: ``callback``, ``target``, ``gtol``,
        ``max_nfev``, ``max_time``, ``checkpoint_every``, ``history`` (default: the
        checkpoint's), ``backend``, ``n_jobs``, ``evaluator``, ``progress``,
        ``metadata``.

    Returns
    -------
    OptimizeResult

    Examples
    --------
    >>> import os, tempfile, numpy as np, fg2u_zo as fz
    >>> from fg2u_zo.testing import RidgeHyperproblem
    >>> problem = RidgeHyperproblem(num_features=3).problem()
    >>> path = os.path.join(tempfile.mkdtemp(), "run.ckpt")
    >>> first = fz.minimize(problem, np.zeros(3), fz.FG2UZO(num_directions=4), lr=0.1,
    ...                     steps=5, rng=0, checkpoint=path, progress=False)
    >>> more = fz.resume(path, problem, steps=8, progress=False)
    >>> more.nit
    8
    """
    for key in ("resume", "phi0", "rng", "lr", "transform", "bounds", "optimizer_options"):
        if key in options:
            raise FG2UValueError(
                f"resume() takes `{key}` from the checkpoint; to change it start a new run "
                "with fz.minimize")
    path = os.path.abspath(os.fspath(checkpoint))
    ck = read_checkpoint(path)
    cfg = ck.config
    saved_phases = cfg["phases"]
    saved_steps = list(cfg["phase_steps"])
    if steps is not None:
        steps = check_positive_int(steps, "steps")
        extra = steps - sum(saved_steps)
        if saved_steps[-1] + extra < 1 or steps < ck.step:
            raise FG2UValueError(
                f"`steps` must be >= {max(ck.step, sum(saved_steps[:-1]) + 1)} (steps already "
                f"done / length of the earlier phases), got {steps}")
        saved_steps[-1] += extra
    if phases is None:
        phases = []
        for i, (pc, n) in enumerate(zip(saved_phases, saved_steps)):
            if pc["solver"] is not None:
                raise CheckpointError(
                    f"phase {i} of the checkpoint ran on its own inner solver, which a "
                    "checkpoint cannot hold; pass phases=[fz.Phase(...), ...] as in the "
                    "original run")
            est = estimator
            if est is None:
                est = estimator_from_config(pc["estimator"])
                if est is None:
                    raise CheckpointError(
                        f"cannot rebuild phase {i}'s estimator {pc['estimator']['name']!r} "
                        "from the checkpoint; pass estimator= (or phases=) as in the "
                        "original run")
            sched = schedule_from_config(pc["schedule"])
            if sched is None:
                if schedule is None:
                    raise CheckpointError(
                        f"phase {i} used the schedule {pc['schedule'].get('callable')}, a "
                        "callable a checkpoint cannot hold; pass schedule= as in the "
                        "original run")
                sched = schedule
            phases.append(Phase(steps=n, estimator=est, lr=pc["lr"], schedule=sched))
    elif steps is not None:
        phases = list(phases)
        phases[-1] = dataclasses.replace(phases[-1], steps=saved_steps[-1])
    if optimizer is None:
        optimizer = _optimizer_from_name(cfg["optimizer"]["name"])
        if optimizer is None:
            raise CheckpointError(
                f"the checkpoint's optimizer {cfg['optimizer']['name']!r} is not a "
                "torch.optim class; pass optimizer= as in the original run")
    options.setdefault("history", ck.history_path)
    options.setdefault("metadata", ck.metadata)
    bounds = (ck.lower, ck.upper)
    return minimize(problem, None, None, optimizer=optimizer,
                    optimizer_options=cfg["optimizer"]["options"], lr=saved_phases[0]["lr"],
                    phases=phases, bounds=bounds, transform=list(cfg["transform"]),
                    checkpoint=path, resume=True, **options)
