"""Phases of a run: what each segment estimates with, on which problem, at which rate.

A :class:`Phase` is what the user writes; a :class:`PhasePlan` is the phase resolved
against the run's defaults (its estimator, its problem with the phase's own inner solver
and outer loss, its learning rate and schedule), checked before step 0.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..errors import FG2UError, FG2UTypeError, FG2UValueError
from ..estimators.base import Estimator
from ..problem import BilevelProblem
from ..validation import check_positive_float, check_positive_int
from .schedules import as_schedule, schedule_config

__all__ = ["Phase", "PhasePlan", "build_plans", "estimator_config", "estimator_from_config",
           "accepts_noise", "keeps_sketch", "estimator_options", "check_stepper_fits"]


@dataclass(frozen=True)
class Phase:
    """One segment of the outer optimization: its estimator, length and problem.

    The two-phase paradigm of FG²U: spend the early steps on a cheap, biased estimator,
    then refine with the unbiased one. On the torch path the cheap one is TRGU or
    Neumann; on the black-box path a low-fidelity solver (coarser grid, looser
    tolerance) or fewer directions. Continuation in the horizon gives each phase its
    own outer loss (fit the early observations first, then all of them).

    Parameters
    ----------
    steps : int
        Outer steps in this phase.
    estimator : Estimator, optional
        Default: the ``estimator`` passed to :func:`minimize`.
    solver : callable, optional
        Replaces the problem's inner solver during this phase (a low-fidelity model).
        If it has a ``.torch`` method it serves the exact estimators as well.
    outer : callable, optional
        Replaces the problem's outer loss during this phase (same calling convention as
        ``BilevelProblem(outer=...)``), e.g. a misfit over a shorter horizon.
    lr : float, optional
        Base learning rate of the phase (default: ``minimize``'s ``lr``).
    schedule : str or callable, optional
        Learning-rate schedule over the phase's own steps (default: ``minimize``'s).
    name : str, optional
        Label for logs.
    until : Converged, optional
        Ends the phase before its ``steps`` once the rule holds (see
        :class:`~fg2u_zo.Converged`); on the last phase it ends the run (status
        ``"converged"``). None: the phase takes its ``steps``.
    restart : bool
        Start the stepper afresh when the phase begins (its state is built anew at the
        phase's start point: Adam's moments, Rprop's step sizes, a trust radius), as a
        new objective calls for (continuation in the horizon). False: the state carries
        over from the previous phase.
    carry_lr : float, optional
        Warm-start the step size: the phase starts with this factor times the largest
        move of any coordinate of phi over the previous phase's last steps (those its
        ``until`` rule kept), capped at the phase's learning rate. First-order steppers
        only.

    The stepper (``minimize``'s ``optimizer``) is one for the whole run: its state
    carries over from phase to phase unless ``restart``.

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
    outer: object = None
    until: object = None
    restart: bool = False
    carry_lr: float | None = None

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
        if self.outer is not None and not callable(self.outer):
            raise FG2UTypeError(
                f"Phase `outer` must be an outer loss outer(theta, phi) -> scalar, got "
                f"{type(self.outer).__name__}")
        if self.lr is not None:
            check_positive_float(self.lr, "Phase lr")
        if self.schedule is not None:
            as_schedule(self.schedule)
        if self.until is not None and not (callable(getattr(self.until, "check", None))
                                           and callable(getattr(self.until, "entry", None))):
            raise FG2UTypeError(f"Phase `until` must be a fz.Converged (or None), got "
                                f"{type(self.until).__name__}")
        if not isinstance(self.restart, (bool, np.bool_)):
            raise FG2UTypeError(f"Phase `restart` must be True or False, got "
                                f"{self.restart!r}")
        if self.carry_lr is not None:
            check_positive_float(self.carry_lr, "Phase carry_lr")


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
    """Rebuild an estimator of this package from :func:`estimator_config`, or None.

    Only the public estimator classes are candidates: the name in the checkpoint picks
    one of them, never a module to import.
    """
    from ..estimators import estimator_classes

    name = config.get("class", "") if isinstance(config, dict) else ""
    cls = estimator_classes().get(name) if isinstance(name, str) else None
    params = config.get("params")
    if not (isinstance(cls, type) and issubclass(cls, Estimator)) or not isinstance(
            params, dict):
        return None
    try:
        return cls(**params)
    except (TypeError, ValueError):
        return None


@dataclass
class PhasePlan:
    """A phase resolved against the run's defaults."""

    steps: int
    estimator: Estimator
    problem: BilevelProblem
    lr: float
    schedule: object
    custom_solver: bool
    name: str
    accepts_noise: bool = False
    custom_outer: bool = False
    until: object = None
    restart: bool = False
    carry_lr: float | None = None

    def config(self) -> dict:
        return {"estimator": estimator_config(self.estimator), "lr": self.lr,
                "schedule": schedule_config(self.schedule),
                "solver": "custom" if self.custom_solver else None,
                "outer": "custom" if self.custom_outer else None,
                "until": None if self.until is None else self.until.config(),
                "restart": bool(self.restart), "carry_lr": self.carry_lr}


def phase_problem(problem, solver, outer, index):
    """The problem with a phase's own inner solver and/or outer loss."""
    return BilevelProblem(inner=problem.inner if solver is None else solver,
                          outer=problem.outer if outer is None else outer,
                          inner_torch=problem.inner_torch if solver is None else None,
                          num_params=problem.num_params,
                          differentiable_outer=problem.differentiable_outer,
                          name=f"{problem.name}[phase {index}]")


def accepts_noise(estimator) -> bool:
    """Whether ``estimator.estimate`` takes ``noise=`` (declared in ``Estimator.options``)."""
    return "noise" in estimator_options(estimator)


def keeps_sketch(estimator) -> bool:
    """Whether ``estimator.estimate`` takes ``keep_sketch=`` (FG2UZO, BlackBoxES,
    CoordinateFD, FG2U)."""
    return "keep_sketch" in estimator_options(estimator)


def estimator_options(estimator) -> frozenset:
    """The extra keywords an estimator declares (``Estimator.options``); nothing is
    read from its signature."""
    return frozenset(getattr(estimator, "options", ()))


def check_stepper_fits(stepper, plans) -> None:
    """Refuse, before step 0, a stepper that asks for sketches of an estimator that
    cannot keep them, and a phase's ``carry_lr`` for a stepper without a learning rate."""
    if not stepper.uses_lr:
        for i, plan in enumerate(plans):
            if plan.carry_lr is not None:
                raise FG2UValueError(
                    f"phase {i}: `carry_lr` warm-starts a learning rate, and the stepper "
                    f"{stepper.config().get('name')!r} has none (it sizes its steps itself, "
                    "e.g. with a trust radius); leave carry_lr out")
    if "sketch" not in stepper.extras:
        return
    for i, plan in enumerate(plans):
        if not keeps_sketch(plan.estimator):
            raise FG2UValueError(
                f"phase {i}: the stepper {stepper.config().get('name')!r} needs estimates "
                f"that keep their sketch, which {type(plan.estimator).__name__} cannot "
                "give; use FG2UZO, BlackBoxES, CoordinateFD or FG2U in that phase")


def build_plans(problem, estimator, phases, steps, lr, schedule) -> list:
    """Resolve ``phases`` (or a single phase of ``steps``) into checked plans."""
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
        custom = ph.solver is not None or ph.outer is not None
        prob = problem if not custom else phase_problem(problem, ph.solver, ph.outer, i)
        # Fail before step 0, not at phase 2.
        try:
            est.check_problem(prob)
        except FG2UError as exc:
            raise type(exc)(f"phase {i}: {exc}") from None
        plans.append(PhasePlan(
            steps=ph.steps, estimator=est, problem=prob,
            lr=float(ph.lr) if ph.lr is not None else lr,
            schedule=as_schedule(ph.schedule) if ph.schedule is not None else schedule,
            custom_solver=ph.solver is not None, name=ph.name or f"phase {i}",
            accepts_noise=accepts_noise(est), custom_outer=ph.outer is not None,
            until=ph.until, restart=bool(ph.restart), carry_lr=ph.carry_lr))
    return plans
