"""The stepper protocol: what the outer loop asks of a method that moves phi.

A stepper is a frozen configuration with two functions, in the spirit of optax's
``init / update(..., **extra_args)``:

``init(z0, **extra) -> StepperState``
    The state before the first step, at the unconstrained start ``z0``.
``update(state, *, z, lr, **extra) -> StepUpdate``
    One outer step from ``z``: the next ``z`` and the new state.

The run hands ``update`` (and ``init``) only the extras the stepper declares in
``extras`` (a class attribute); a stepper never inspects signatures and the run never
sniffs them. The extras a run can give:

``"estimate"``
    The phase estimator's :class:`~fg2u_zo.MetaGradient` at ``phi = T(z)``, computed by
    the run before ``update``. With ``"sketch"`` also declared the estimate keeps its
    sketch (``MetaGradient.sketch``).
``"sketch"``
    Only a flag: ask for ``"estimate"`` with its sketch kept.
``"noise"``
    The :class:`~fg2u_zo.NoiseEstimate` in use, or None.
``"evaluate"``
    A callable ``evaluate(points, *, warm_start=None) -> Evaluations`` that solves the
    phase's inner problem at a sequence of phi points in one parallel group of the
    run's evaluator; its solves are counted in the run's totals. A stepper that asks
    for trial points uses it, then accepts or rejects them in its state.
``"problem"``, ``"estimator"``, ``"transform"``, ``"rng"``, ``"workers"``
    The phase's BilevelProblem and Estimator, the run's ParameterTransform, the run's
    numpy Generator (draw only from it, in this process) and the evaluator's number of
    simultaneous evaluations.

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

__all__ = ["Stepper", "StepperState", "StepUpdate", "Evaluations", "EXTRAS"]

#: Every extra a run can hand to a stepper.
EXTRAS = frozenset({"estimate", "sketch", "noise", "evaluate", "problem", "estimator",
                    "transform", "rng", "workers"})


@dataclass(frozen=True)
class StepperState:
    """A stepper's state: numpy arrays and JSON-able data (no objects, no pickles).

    Attributes
    ----------
    arrays : dict of str -> ndarray
        Stored bit for bit in the checkpoint's npz (``allow_pickle=False``).
    data : dict
        JSON-able scalars, lists and dicts (floats survive as ``repr``).
    """

    arrays: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluations:
    """Outcome of the ``evaluate`` extra: one parallel group of inner solves.

    Attributes
    ----------
    thetas : list of (ndarray or None)
        The outputs, in the order of the points; None where the evaluation failed for
        good.
    failures : list of Failure
        The failed evaluations (``index`` is the position in ``points``).
    nfev : int
        Solves spent (already added to the run's totals).
    solver_time : float
        Seconds inside the solver (already added to the run's totals).
    """

    thetas: list
    failures: list = field(default_factory=list)
    nfev: int = 0
    solver_time: float = 0.0


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
    failures : list of Failure
        Evaluations of this step that failed for good (the estimate's included).
    info : dict
        Extra JSON-able history fields of this stepper (e.g. ``rho``, ``delta``,
        ``accepted``).
    nfev : int
        Solves the stepper ran itself, in this process, beyond the estimate's and the
        ``evaluate`` extra's (which the run counts): e.g. forward-mode passes through a
        torch inner solver, one per direction as ``FG2U`` counts them. Added to the
        run's ``nfev``.
    """

    z: np.ndarray
    state: StepperState
    phi: np.ndarray
    value: float
    grad: np.ndarray | None = None
    meta_gradient: object = None
    failures: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    nfev: int = 0


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
