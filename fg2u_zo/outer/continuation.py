"""Continuation in the horizon: fit the early observations first, then extend.

A long horizon makes the misfit of an oscillatory, dispersive or chaotic simulator
rugged: a small error in a coefficient becomes a phase error that grows with time, and
past some time the misfit has a local minimum wherever a wave lines up with the wrong
crest. Over a short horizon the same misfit has one minimum. Continuation runs a
sequence of phases with growing horizons ``T_1 < T_2 < ... <= T``: phase k fits the
observations with ``t <= T_k`` with the simulator run only to ``T_k`` (cheaper too),
warm-started from the end of phase k - 1, and moves on once the phase has converged.

- :func:`~fg2u_zo.horizon_schedule` chooses the horizons from the observation times
  (:mod:`fg2u_zo.outer.horizons`);
- :class:`~fg2u_zo.Converged` says when a phase has converged (the steps or the
  gradient's signal-to-noise ratio stopped moving; :mod:`fg2u_zo.outer.convergence`);
- :class:`Continuation` holds the phases (one :class:`~fg2u_zo.BilevelProblem` per
  horizon, built by the user's ``build(horizon)``) and runs them, one
  :func:`~fg2u_zo.minimize` call per phase sharing one Evaluator;
  :func:`continuation` is the one-call form;
- :func:`~fg2u_zo.horizon_phases` turns the same schedule into ``fz.Phase`` objects for a
  single ``fz.minimize`` run (fixed steps per phase, one checkpoint).
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field

import numpy as np

from ..errors import FG2UTypeError, FG2UValueError
from ..problem import BilevelProblem
from ..validation import as_generator, check_positive_float
from .convergence import Converged
from .horizons import per_phase

__all__ = ["Continuation", "ContinuationResult", "continuation", "as_callbacks"]


@dataclass(frozen=True, repr=False)
class ContinuationResult:
    """Outcome of a :class:`Continuation` run (the fields of
    :class:`~fg2u_zo.OptimizeResult` plus the phases).

    Attributes
    ----------
    phi : ndarray
        The end point.
    value : float
        ``F`` at ``phi`` on the problem of the last phase run (the whole horizon unless
        the run stopped earlier).
    nit, nfev : int
        Steps and inner solves over all phases.
    solver_time, wall_time : float
    history : list of StepRecord
        Every step; ``record.phase`` is the phase index, ``record.step`` counts from the
        start of the first phase, ``record.nfev_total`` likewise.
    horizons : ndarray
        The horizon of each phase.
    phase_steps : list of int
        Steps each phase took (phases not reached are absent).
    phase_values : list of float
        ``F`` at the end of each phase, on that phase's problem.
    phase_results : list of OptimizeResult
        The :func:`~fg2u_zo.minimize` result of each phase.
    status : str
        ``"completed"`` (every phase ran), ``"stopped"`` (told to stop between phases,
        e.g. by successive halving) or the last phase's status when it ended otherwise.
    success : bool
    message : str
    phase : int
        The last phase run.
    """

    phi: np.ndarray
    value: float
    nit: int
    nfev: int
    solver_time: float
    wall_time: float
    history: list
    horizons: np.ndarray
    phase_steps: list
    phase_values: list
    phase_results: list
    status: str
    success: bool
    message: str
    phase: int

    def __repr__(self) -> str:
        return (f"ContinuationResult(success={self.success}, status={self.status!r}, "
                f"value={self.value:.6g}, phases={len(self.phase_steps)}/"
                f"{len(self.horizons)}, nit={self.nit}, nfev={self.nfev})")


#: minimize() keywords a Continuation sets itself.
_RESERVED = ("steps", "phases", "checkpoint", "resume", "history", "phi0", "estimator",
             "problem")


@dataclass(frozen=True)
class Continuation:
    """Phases with growing horizons, run one after the other from a warm start.

    Parameters
    ----------
    build : callable
        ``build(horizon) -> BilevelProblem``: the problem restricted to the
        observations with ``t <= horizon``, its inner solver run only to ``horizon``.
        Called once per horizon, when the Continuation is made.
    horizons : sequence of float
        Strictly increasing (see :func:`horizon_schedule`).
    steps : int or sequence of int
        Most steps of each phase (one number for all, or one per phase).
    until : Converged, sequence of (Converged or None), or None
        When a phase before the last moves on before its ``steps`` (default
        ``Converged()``: the steps stayed below 1e-3 for 3 steps). One rule for all, or
        one per phase before the last. None: always take ``steps``.
    stop : Converged, optional
        When the last phase stops before its ``steps`` (default: never).
    lr : float or sequence of float, optional
        Learning rate of each phase (default ``minimize``'s ``lr`` keyword).
    carry_lr : float, optional
        Warm-start the step size too: each phase after the first starts with this
        factor times the largest move of any coordinate of phi over the previous
        phase's last 3 steps, capped at its own learning rate. The previous phase ended
        near the new minimum (that is what continuation is for), so it need not first
        overshoot by a full learning rate and then shrink back (Rprop, Adam and SGD all
        take steps of about ``lr`` at first). None (default): every phase starts at its
        learning rate.

    Attributes
    ----------
    problems : tuple of BilevelProblem
        One per horizon.

    Notes
    -----
    Each phase is one :func:`~fg2u_zo.minimize` call, warm-started at the previous
    phase's end point; the optimizer's own state (Adam's moments, Rprop's step sizes)
    starts afresh with each phase, as it should on a new objective.

    Examples
    --------
    Fitting a frequency: over ``t <= 10`` the misfit has a local minimum near every
    frequency that lines up some crests, and a local method started at 2 stops at one
    of them; over ``t <= 1.2`` it has one minimum.

    >>> import numpy as np, torch, fg2u_zo as fz
    >>> t = np.linspace(0.0, 10.0, 101)
    >>> data = torch.as_tensor(np.sin(1.3 * t))
    >>> def build(horizon):
    ...     keep = t <= horizon
    ...     return fz.BilevelProblem(
    ...         inner=lambda phi: np.sin(phi[0] * t[keep]),
    ...         outer=lambda theta, phi: ((theta - data[keep]) ** 2).mean())
    >>> fz.horizon_schedule(t[1:]).round(2).tolist()
    [1.2, 2.5, 5.0, 10.0]
    >>> plan = fz.Continuation(build, fz.horizon_schedule(t[1:]), steps=100,
    ...                        stop=fz.Converged(xtol=1e-5))
    >>> res = plan.run(np.array([2.0]), fz.FG2UZO(num_directions=1, step=1e-6),
    ...                optimizer="Rprop", lr=0.05, rng=0, progress=False)
    >>> round(float(res.phi[0]), 4), res.status, len(res.phase_steps)
    (1.3, 'completed', 4)
    >>> alone = fz.minimize(build(10.0), np.array([2.0]), fz.FG2UZO(num_directions=1,
    ...                     step=1e-6), optimizer="Rprop", lr=0.05, steps=100, rng=0,
    ...                     progress=False)
    >>> round(float(alone.phi[0]), 1)
    2.1
    """

    build: object
    horizons: tuple
    steps: object = 100
    until: object = dataclasses.field(default_factory=Converged)
    stop: Converged | None = None
    lr: object = None
    carry_lr: float | None = None
    problems: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not callable(self.build):
            raise FG2UTypeError(
                f"`build` must be a callable build(horizon) -> BilevelProblem, got "
                f"{type(self.build).__name__}")
        horizons = np.asarray(self.horizons, dtype=np.float64).ravel()
        if horizons.size == 0 or not np.all(np.isfinite(horizons)) or np.any(
                np.diff(horizons) <= 0):
            raise FG2UValueError(
                "`horizons` must be a non-empty, strictly increasing sequence of finite "
                f"times (see fz.horizon_schedule), got {self.horizons!r}")
        object.__setattr__(self, "horizons", tuple(float(h) for h in horizons))
        k = horizons.size
        object.__setattr__(self, "steps", per_phase(self.steps, k, "steps", int))
        until = self.until
        if until is None or isinstance(until, Converged):
            until = (until,) * max(k - 1, 0)
        else:
            until = tuple(until)
            if len(until) != max(k - 1, 0) or not all(
                    u is None or isinstance(u, Converged) for u in until):
                raise FG2UValueError(
                    f"`until` must be a Converged, None, or one of them for each of the "
                    f"{k - 1} phases before the last")
        object.__setattr__(self, "until", until)
        if self.stop is not None and not isinstance(self.stop, Converged):
            raise FG2UTypeError(f"`stop` must be a fz.Converged or None, got "
                                f"{type(self.stop).__name__}")
        if self.lr is not None:
            object.__setattr__(self, "lr", per_phase(self.lr, k, "lr", float))
        if self.carry_lr is not None:
            check_positive_float(self.carry_lr, "carry_lr")
        problems = []
        for h in self.horizons:
            problem = self.build(h)
            if not isinstance(problem, BilevelProblem):
                raise FG2UTypeError(
                    f"`build({h!r})` must return a fz.BilevelProblem, got "
                    f"{type(problem).__name__}")
            problems.append(problem)
        object.__setattr__(self, "problems", tuple(problems))

    @property
    def num_phases(self) -> int:
        return len(self.horizons)

    def run(self, phi0, estimator=None, *, rng=None, backend=None, n_jobs=None,
            evaluator=None, callback=None, between=None, **options) -> ContinuationResult:
        """Run the phases from ``phi0``.

        Parameters
        ----------
        phi0 : array_like
        estimator : Estimator
            The meta-gradient estimator of every phase.
        rng : None, int or numpy.random.Generator
            One generator drives every phase (in order).
        backend, n_jobs, evaluator : optional
            One Evaluator for all phases (made here from ``backend``/``n_jobs`` and
            closed at the end, or the one passed, kept open).
        callback : callable or list, optional
            ``callback(record)`` after each step, as for :func:`~fg2u_zo.minimize`,
            with the record of the whole run (``phase``, ``step`` as in the history);
            returning True stops the run.
        between : callable, optional
            ``between(phase, result) -> bool`` after each phase but the last; True
            stops the run there (successive halving in :func:`~fg2u_zo.multistart`
            uses it).
        **options
            Other :func:`~fg2u_zo.minimize` keywords (``optimizer``, ``lr``,
            ``bounds``, ``transform``, ``schedule``, ...), the same for every phase.

        Returns
        -------
        ContinuationResult
        """
        from ..evaluation.evaluator import Evaluator
        from .minimize import minimize

        for key in _RESERVED:
            if key in options:
                raise FG2UValueError(
                    f"Continuation.run sets `{key}` itself (per phase); give steps per "
                    "phase to the Continuation, and run a single fz.minimize with "
                    "fz.horizon_phases(...) for checkpoints")
        user_callbacks = as_callbacks(callback, "callback")
        rng = as_generator(rng)
        own = evaluator is None
        ev = Evaluator(backend=backend, n_jobs=n_jobs) if own else evaluator
        if not own and (backend is not None or n_jobs is not None):
            raise FG2UValueError("pass either `evaluator=` or `backend=`/`n_jobs=`, not both")
        phi = np.asarray(phi0, dtype=np.float64)
        history, results, values = [], [], []
        step0 = nfev0 = 0
        solver_time = wall_time = 0.0
        status, message = "completed", ""
        try:
            for k, problem in enumerate(self.problems):
                last = k == self.num_phases - 1
                rule = self.stop if last else self.until[k]
                hooks, flags = _phase_callbacks(k, step0, nfev0, history, rule,
                                                user_callbacks)
                kwargs = dict(options)
                if self.lr is not None:
                    kwargs["lr"] = self.lr[k]
                if self.carry_lr is not None and k > 0:
                    kwargs["lr"] = _carried_lr(self.carry_lr, history, k - 1, phi,
                                               kwargs.get("lr", _default_lr()))
                res = minimize(problem, phi, estimator, steps=self.steps[k], rng=rng,
                               evaluator=ev, callback=hooks, **kwargs)
                results.append(res)
                values.append(float(res.value))
                phi = np.asarray(res.phi, dtype=np.float64)
                step0 += res.nit
                nfev0 += res.nfev
                solver_time += res.solver_time
                wall_time += res.wall_time
                if flags["user"]:
                    status, message = "callback", "a callback asked to stop"
                    break
                if not res.success:   # a signal: stop where the phase stopped
                    status, message = res.status, res.message
                    break
                if last:
                    break
                if between is not None and between(k, res):
                    status = "stopped"
                    message = f"stopped after phase {k} (horizon {self.horizons[k]:g})"
                    break
        finally:
            if own:
                ev.close()
        if status == "completed":
            message = (f"completed {len(results)} phases (horizons up to "
                       f"{self.horizons[-1]:g}), {step0} steps")
        return ContinuationResult(
            phi=phi, value=values[-1], nit=step0, nfev=nfev0, solver_time=solver_time,
            wall_time=wall_time, history=history,
            horizons=np.asarray(self.horizons), phase_steps=[r.nit for r in results],
            phase_values=values, phase_results=results, status=status,
            success=all(r.success for r in results),
            message=message, phase=len(results) - 1)


def _default_lr():
    import inspect

    from .minimize import minimize

    return inspect.signature(minimize).parameters["lr"].default


def _carried_lr(factor, history, phase, end, lr, window=3):
    """``factor`` x the largest coordinate move over the last ``window`` steps of
    ``phase`` (which ended at ``end``), at most ``lr`` (``lr`` itself when the records
    hold no phi)."""
    phis = [r.phi for r in history if r.phase == phase][-window:] + [end]
    if len(phis) < 2 or any(p is None for p in phis):
        return lr
    move = float(np.max(np.abs(np.diff(np.asarray(phis, dtype=np.float64), axis=0))))
    return min(lr, factor * move) if move > 0 else lr


def _phase_callbacks(k, step0, nfev0, history, rule, user_callbacks):
    """The callbacks of phase ``k``: relabel each record for the whole run, keep it,
    hand it to the user's callbacks, then ask the move-on rule."""
    flags = {"user": False}
    converged = rule.callback() if rule is not None else None

    def on_step(record):
        record = dataclasses.replace(record, step=step0 + record.step, phase=k,
                                     nfev_total=nfev0 + record.nfev_total)
        history.append(record)
        stop = False
        for cb in user_callbacks:
            stop = bool(cb(record)) or stop
        if stop:
            flags["user"] = True
            return True
        return bool(converged(record)) if converged is not None else False

    return [on_step], flags


def continuation(build, horizons, phi0, estimator=None, *, steps=100, until=Converged(),
                 stop=None, lr=None, **options) -> ContinuationResult:
    """Minimize over growing horizons: ``Continuation(...).run(...)`` in one call.

    Parameters
    ----------
    build, horizons, steps, until, stop
        As for :class:`Continuation`.
    phi0, estimator
        The start and the meta-gradient estimator.
    lr : float or sequence of float, optional
        Learning rate (per phase).
    **options
        :meth:`Continuation.run` and :func:`~fg2u_zo.minimize` keywords.

    Returns
    -------
    ContinuationResult
    """
    if lr is not None and not isinstance(lr, numbers.Real):
        plan = Continuation(build, horizons, steps=steps, until=until, stop=stop, lr=lr)
    else:
        plan = Continuation(build, horizons, steps=steps, until=until, stop=stop)
        if lr is not None:
            options["lr"] = lr
    return plan.run(phi0, estimator, **options)


def as_callbacks(callback, name="callback"):
    """``callback`` (None, a callable or a sequence of callables) as a list."""
    if callback is None:
        return []
    if callable(callback):
        return [callback]
    callbacks = list(callback)
    for cb in callbacks:
        if not callable(cb):
            raise FG2UTypeError(f"`{name}` entries must be callable, got {type(cb).__name__}")
    return callbacks
