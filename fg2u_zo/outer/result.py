"""What a run of :func:`fg2u_zo.minimize` returns: one type for every run, plain,
in phases (continuation) or from many starts (multi-start)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..result import MetaGradient
from .search import STATUSES

__all__ = ["OptimizeResult", "RunSummary", "PhaseSummary", "STATUSES"]


@dataclass(frozen=True)
class PhaseSummary:
    """One phase of a local run, as it went.

    Attributes
    ----------
    name : str
    steps : int
        Steps the run took in it.
    value : float
        The value of its last step (on the phase's own problem; NaN if none).
    """

    name: str
    steps: int
    value: float


@dataclass(frozen=True)
class RunSummary:
    """One local run of a multi-start (a plain run has one too).

    Attributes
    ----------
    index : int
    start : ndarray, shape (N,)
    phi : ndarray, shape (N,)
        Where it ended.
    value : float
        ``F`` at ``phi`` on the run's problem (inf where that solve or the run failed).
    status : str
        Why it stopped (``"steps"``, ``"converged"``, ``"halved"``, ``"failed"``, ...).
    nit, nfev : int
        Its steps and solves.
    phase : int
        The phase it ended in.
    stopped_at : int or None
        The rung at which successive halving stopped it.
    error : str or None
        The error that ended it.
    phases : list of PhaseSummary
    """

    index: int
    start: np.ndarray
    phi: np.ndarray
    value: float
    status: str
    nit: int
    nfev: int
    phase: int
    stopped_at: int | None = None
    error: str | None = None
    phases: list = field(default_factory=list)


@dataclass(frozen=True, repr=False)
class OptimizeResult:
    """Outcome of :func:`minimize` (and of :func:`~fg2u_zo.multistart`,
    :meth:`AskTell.result <fg2u_zo.AskTell.result>`).

    Attributes
    ----------
    phi : ndarray, shape (N,)
        Final meta-parameters (the best run's end, for a multi-start).
    value : float
        ``F(phi)`` at the final phi, from one more solve with the problem's own inner
        solver (NaN when the run was interrupted).
    nit : int
        Outer steps taken since the run began (resumed runs included; summed over the
        local runs of a multi-start).
    nfev : int
        Inner-solver evaluations since the run began.
    nfev_replayed : int
        Evaluations a resumed run took from the journal of its checkpoint (they had
        finished before the interruption) instead of solving them again; not in
        ``nfev``. ``nfev + nfev_replayed`` is the ``nfev`` of an uninterrupted run.
    solver_time, wall_time : float
        Seconds inside the inner solver / of wall-clock time, since the run began.
    history : list of StepRecord
        One record per step (``record.run`` says which local run; earlier steps of a
        resumed run are read back from the JSONL history when there is one).
    message : str
    success : bool
        True when the run ended as configured (steps done, converged, target or
        tolerance reached, budget spent, a callback asked; for a multi-start: at least
        one local run did), False when a signal stopped it or the estimates were
        degenerate.
    status : str
        Why the (best) run stopped: ``"steps"``, ``"converged"``, ``"target"``,
        ``"gtol"``, ``"callback"``, ``"max_nfev"``, ``"max_time"``, ``"sigint"``,
        ``"sigterm"`` or ``"degenerate"`` (every finite difference of an estimate was
        exactly zero: the step is below the solver's output resolution; not a success).
    meta_gradient : MetaGradient or None
        The last estimate.
    z : ndarray
        The optimizer's unconstrained variable, ``phi = T(z)``.
    phase : int
        Phase the (best) run ended in.
    checkpoint : str or None
        Path of the last checkpoint written.
    failures : dict of str -> int
        Evaluations that failed for good since the run began, by kind
        (``"exception"``, ``"nonfinite"``, ``"timeout"``, ...; see
        :class:`~fg2u_zo.Failure`). Empty when none failed.
    lost : dict of str -> int
        Evaluations lost through no fault of their own and run again, by kind
        (``"crash"``: their worker died or left the cluster; ``"timeout"``: it was
        killed for another point's overrun; ``"scheduler"``: the connection to a dask
        scheduler was lost). Not in ``nfev``. Empty when none was lost.
    groups : list of int
        Solves of each parallel group, in order (a group's solves were all in flight
        together): ``rounds(W)`` of them with ``W`` workers.
    workers : int
        The run's width: the solves one parallel round holds, fixed when it started.
    optimizer : str
        The stepper that moved phi (``"gauss-newton"``, ``"torch.optim:Adam"``, ...).
    transform : ParameterTransform
        ``phi = T(z)`` of the run, with its bounds.
    phases : list of PhaseSummary
        The (best) run's phases.
    runs : list of RunSummary
        Every local run (one for a plain run), best first is not implied: ``index``
        order.
    design, design_values : ndarray
        A multi-start's screened points (``phi0`` first when given) and ``F`` at each
        (inf where the solve failed); empty otherwise.
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
    lost: dict = field(default_factory=dict)
    groups: list = field(default_factory=list)
    workers: int = 1
    optimizer: str = ""
    transform: object = None
    phases: list = field(default_factory=list)
    runs: list = field(default_factory=list)
    design: np.ndarray | None = None
    design_values: np.ndarray | None = None

    def rounds(self, workers: int | None = None) -> int:
        """Parallel rounds with ``workers`` simultaneous solves (default: the run's
        width): ``sum(ceil(g / W))`` over the groups."""
        from ..validation import check_positive_int

        w = self.workers if workers is None else check_positive_int(workers, "workers")
        return int(sum(-(-g // w) for g in self.groups))

    @property
    def ends(self) -> np.ndarray:
        """Every local run's end point, shape (k, N)."""
        return np.asarray([r.phi for r in self.runs], dtype=np.float64)

    @property
    def end_values(self) -> np.ndarray:
        """``F`` at every local run's end, shape (k,)."""
        return np.asarray([r.value for r in self.runs], dtype=np.float64)

    def __repr__(self) -> str:
        many = len(self.runs) > 1
        return (f"OptimizeResult(success={self.success}, status={self.status!r}, "
                f"value={self.value:.6g}, nit={self.nit}, nfev={self.nfev}, "
                + (f"runs={len(self.runs)}, " if many else "")
                + f"solver_time={self.solver_time:.3g}, wall_time={self.wall_time:.3g}, "
                + (f"failures={self.failures!r}, " if self.failures else "")
                + (f"lost={self.lost!r}, " if self.lost else "")
                + (f"nfev_replayed={self.nfev_replayed}, " if self.nfev_replayed else "")
                + f"message={self.message!r})")
