"""What a run of :func:`fg2u_zo.minimize` returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..result import MetaGradient

__all__ = ["OptimizeResult", "STATUSES"]

#: Why a run stopped -> whether that is a success (it ended as configured).
STATUSES = {"steps": True, "target": True, "gtol": True, "callback": True,
            "max_nfev": True, "max_time": True, "sigint": False, "sigterm": False,
            "degenerate": False}


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
    nfev_replayed : int
        Evaluations a resumed run took from the journal of its checkpoint (they had
        finished before the interruption) instead of solving them again; not in
        ``nfev``. ``nfev + nfev_replayed`` is the ``nfev`` of an uninterrupted run.
    solver_time, wall_time : float
        Seconds inside the inner solver / of wall-clock time, since the run began.
    history : list of StepRecord
        One record per step (earlier steps of a resumed run are read back from the
        JSONL history when there is one).
    message : str
    success : bool
        True when the run ended as configured (steps done, target or tolerance reached,
        budget spent, a callback asked), False when a signal stopped it or the
        estimates were degenerate.
    status : str
        ``"steps"``, ``"target"``, ``"gtol"``, ``"callback"``, ``"max_nfev"``,
        ``"max_time"``, ``"sigint"``, ``"sigterm"`` or ``"degenerate"`` (every
        finite difference of an estimate was exactly zero: the step is below the
        solver's output resolution; not a success).
    meta_gradient : MetaGradient or None
        The last estimate.
    z : ndarray
        The optimizer's unconstrained variable, ``phi = T(z)``.
    phase : int
        Phase the run ended in.
    checkpoint : str or None
        Path of the last checkpoint written.
    failures : dict of str -> int
        Evaluations that failed for good since the run began, by kind
        (``"exception"``, ``"nonfinite"``, ``"timeout"``, ...; see
        :class:`~fg2u_zo.Failure`). Empty when none failed.
    transform : ParameterTransform or None
        The run's ``phi = T(z)`` with its bounds (:mod:`fg2u_zo.outer.transforms`);
        :func:`fg2u_zo.uncertainty` computes intervals in ``z`` through it.
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
    failures: dict = field(default_factory=dict)
    nfev_replayed: int = 0
    transform: object = None

    def __repr__(self) -> str:
        return (f"OptimizeResult(success={self.success}, status={self.status!r}, "
                f"value={self.value:.6g}, nit={self.nit}, nfev={self.nfev}, "
                f"solver_time={self.solver_time:.3g}, wall_time={self.wall_time:.3g}, "
                + (f"failures={self.failures!r}, " if self.failures else "")
                + (f"nfev_replayed={self.nfev_replayed}, " if self.nfev_replayed else "")
                + f"message={self.message!r})")
