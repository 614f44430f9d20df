"""The stepper protocol: what the outer loop asks of a method that moves phi.

A stepper is a frozen configuration with two functions, in the spirit of optax's
``init / update(..., **extra_args)``:

``init(z0, **extra) -> StepperState``
    The state before the first step, at the unconstrained start ``z0``.
``update(state, *, z, lr, **extra) -> StepUpdate`` or a plan
    One outer step from ``z``: the next ``z`` and the new state. A stepper that needs
    solves of its own (trial points, new directions) returns a *plan* instead: a
    generator that yields :class:`~fg2u_zo.evaluation.requests.Request` s (make them
    with :func:`solve_points`), is told each :class:`~fg2u_zo.evaluation.requests.Reply`
    at its ``yield``, and returns the StepUpdate. It never holds an Evaluator: the run
    answers its requests, counts them with the step, journals them, and merges them
    with other runs' requests (multi-start), or hands them to the user's scheduler
    (:class:`~fg2u_zo.AskTell`).

The run hands ``update`` (and ``init``) only the extras the stepper declares in
``extras`` (a class attribute; a name outside :data:`EXTRAS` is refused when the
stepper is made); a stepper never inspects signatures and the run never sniffs them.
The extras a run can give:

``"estimate"``
    The phase estimator's :class:`~fg2u_zo.MetaGradient` at ``phi = T(z)``, planned by
    the run before ``update``. With ``"sketch"`` also declared the estimate keeps its
    sketch (``MetaGradient.sketch``).
``"sketch"``
    Only a flag: ask for ``"estimate"`` with its sketch kept.
``"noise"``
    The :class:`~fg2u_zo.NoiseEstimate` in use, or None.
``"problem"``, ``"estimator"``, ``"transform"``, ``"rng"``, ``"workers"``
    The phase's BilevelProblem and Estimator, the run's ParameterTransform, the step's
    numpy Generator (draw only from it, in this process) and the run's width: how many
    solves one parallel round holds.

State is data: ``StepperState.arrays`` (numpy arrays, stored in the checkpoint's npz
without pickles) and ``StepperState.data`` (JSON). A stepper never keeps state on
itself; the run keeps the returned state, so a step abandoned half-way (a signal, a
failure) leaves the previous state untouched and a resumed run continues bit for bit.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from ...errors import FG2UTypeError, FG2UValueError, NonFiniteStepError
from ...evaluation.requests import Request, new_seed
from ...persist.state import StepperState

__all__ = ["Stepper", "StepperState", "StepUpdate", "EXTRAS", "check_extras", "solve_points"]

#: Every extra a run can hand to a stepper.
EXTRAS = frozenset({"estimate", "sketch", "noise", "problem", "estimator", "transform",
                    "rng", "workers"})


@dataclass(frozen=True)
class StepUpdate:
    """What one ``update`` returns.

    Attributes
    ----------
    z : ndarray, shape (N,)
        The next unconstrained point (the run projects it onto the bounds).
    state : StepperState
        The stepper's new state.
    phi : ndarray, shape (N,)
        The point the step's ``value`` belongs to (the run's history records it).
    value : float
        ``F`` at ``phi``.
    grad : ndarray or None, shape (N,)
        The gradient in phi space the step used (its norm goes to the history).
    meta_gradient : MetaGradient or None
        The estimate behind the step, when there was one.
    info : dict
        Extra JSON-able history fields of this stepper (e.g. ``rho``, ``delta``,
        ``accepted``).
    nfev : int
        Solves the stepper ran itself, in this process, beyond those it asked for with
        requests (which the run counts): e.g. forward-mode passes through a torch inner
        solver, one per direction as ``FG2U`` counts them. Added to the run's ``nfev``.
    converged : str or None
        The stepper's own verdict that the phase has converged, in words (e.g. "the
        trust radius fell below xtol"): the run then ends the phase as its ``until``
        rule would (the run itself, with status ``"converged"``, on the last phase).
        None: go on.
    """

    z: np.ndarray
    state: StepperState
    phi: np.ndarray
    value: float
    grad: np.ndarray | None = None
    meta_gradient: object = None
    info: dict = field(default_factory=dict)
    nfev: int = 0
    converged: str | None = None


class Stepper(abc.ABC):
    """Base class of the outer-loop methods (see the module docstring).

    Subclasses are frozen dataclasses holding configuration only, with a ``name`` (the
    registry key), the ``extras`` they need, and :meth:`config` (JSON, what must match
    for a checkpoint to be resumed with this stepper).
    """

    name: ClassVar[str] = "stepper"
    extras: ClassVar[frozenset] = frozenset({"estimate"})
    #: Whether the run's learning rate and schedule mean anything to this stepper.
    uses_lr: ClassVar[bool] = True

    @abc.abstractmethod
    def init(self, z0: np.ndarray, **extra) -> StepperState:
        """State before the first step at the unconstrained start ``z0``."""

    @abc.abstractmethod
    def update(self, state: StepperState, *, z: np.ndarray, lr: float,
               **extra) -> StepUpdate:
        """One outer step from ``z``."""

    def config(self) -> dict:
        """JSON-able configuration stored in (and compared against) checkpoints."""
        return {"name": self.name}

    @classmethod
    def from_config(cls, config: dict) -> "Stepper":
        """Rebuild a stepper from :meth:`config` (what a resumed run does).

        The default passes every key but ``name`` as a keyword argument; override it
        when :meth:`config` stores something else.
        """
        return cls(**{key: value for key, value in config.items() if key != "name"})

    def check_state(self, state: StepperState, num_params: int) -> None:
        """Raise ``ValueError`` (or ``TypeError``) naming what is wrong with a state read
        from a checkpoint; called on resume before anything is written.

        The default checks nothing; a stepper whose state has arrays of known shapes
        should check them here.
        """


def check_extras(stepper) -> None:
    """Refuse a stepper that declares an extra no run can give (a misspelling would
    otherwise arrive as a missing keyword at the first step)."""
    extras = getattr(stepper, "extras", None)
    if not isinstance(extras, (frozenset, set, tuple, list)) or not all(
            isinstance(e, str) for e in extras):
        raise FG2UTypeError(f"the stepper {type(stepper).__name__} must declare `extras` as "
                            f"a frozenset of names, got {extras!r}")
    unknown = sorted(set(extras) - EXTRAS)
    if unknown:
        raise FG2UValueError(
            f"the stepper {type(stepper).__name__} declares the extra(s) {unknown}, which "
            f"no run gives; the extras are {sorted(EXTRAS)} (a stepper that needs solves "
            "yields requests: see fg2u_zo.outer.steppers.base.solve_points)")


def solve_points(solver, points, rng, *, warm_start=None, label="") -> Request:
    """A request for the solves of a stepper: every point must be finite; one seed for
    the group, drawn from ``rng``; failed points are reported, never raised (the
    stepper decides what a failed trial or direction means).

    Raises
    ------
    NonFiniteStepError
        When a point is not finite (nothing of the step is committed).
    """
    points = [np.asarray(p, dtype=np.float64) for p in points]
    for i, p in enumerate(points):
        if not np.all(np.isfinite(p)):
            raise NonFiniteStepError(
                f"the stepper asked to evaluate a non-finite point (points[{i}] = "
                f"{p.tolist()[:5]}); nothing of this step was committed")
    return Request(solver, points, seed=new_seed(rng), warm_start=warm_start,
                   max_failure_fraction=1.0, label=label)
