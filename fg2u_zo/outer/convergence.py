"""When a phase of the outer loop has converged: the rule that moves a continuation on
(a ``Phase(until=...)`` of :func:`~fg2u_zo.horizon_phases`) or ends a local run."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import FG2UValueError
from ..validation import check_positive_float, check_positive_int

__all__ = ["Converged"]


@dataclass(frozen=True)
class Converged:
    """When a phase has converged: the rule that moves continuation on.

    A phase has converged after ``min_steps`` steps once, over the last ``patience``
    steps, every step moved each coordinate of phi by at most ``xtol``, or the
    meta-gradient estimate was indistinguishable from its noise (``snr`` below the
    given level; only for estimators that report a standard error). A trust-region
    step that was rejected (``record.info["accepted"]`` False, as the Gauss–Newton
    stepper reports) moved nothing, but counts as a move of its trial's length
    (``info["step_norm"]``, in the optimizer's variable): a shrinking radius is not
    convergence until the trials themselves are below ``xtol``.

    Parameters
    ----------
    xtol : float
        Largest move of any coordinate of phi, in phi's units (for log-coefficients a
        relative change of the coefficient).
    snr : float, optional
        Converged when ``|g| / stderr(g)`` stayed below this (e.g. 1: the estimate is
        noise). None: not used. Exact estimates (``FG2UZO`` with ``num_directions = N``
        orthogonal directions, FG2U) report an infinite ratio and never trigger it.
    patience : int
        Consecutive steps the condition must hold.
    min_steps : int
        Steps a phase takes at least.

    Examples
    --------
    >>> import fg2u_zo as fz
    >>> rule = fz.Converged(xtol=1e-3, patience=2)
    >>> rule.check([[0.0], [0.1], [0.1005], [0.1007]])
    True
    """

    xtol: float = 1e-3
    snr: float | None = None
    patience: int = 3
    min_steps: int = 1

    def __post_init__(self):
        check_positive_float(self.xtol, "xtol", allow_zero=True)
        if self.snr is not None:
            check_positive_float(self.snr, "snr")
        check_positive_int(self.patience, "patience")
        check_positive_int(self.min_steps, "min_steps")

    def check(self, phis, snrs=None, trials=None) -> bool:
        """Whether a phase with these points (and SNRs) has converged.

        Parameters
        ----------
        phis : sequence of array_like
            phi of each step of the phase, in order.
        snrs : sequence of float, optional
            The estimates' signal-to-noise ratios, one per step.
        trials : sequence of float, optional
            Length of each step's rejected trial (0 where none was rejected).
        """
        n = len(phis)
        if n < max(self.min_steps, 1):
            return False
        if self.snr is not None and snrs is not None and len(snrs) >= self.patience:
            if all(float(s) < self.snr for s in list(snrs)[-self.patience:]):
                return True
        if n < self.patience + 1:
            return False
        recent = np.asarray([np.asarray(p, dtype=np.float64) for p in
                             list(phis)[-(self.patience + 1):]])
        moves = np.max(np.abs(np.diff(recent, axis=0)), axis=1)
        if trials is not None:
            moves = np.maximum(moves, np.asarray(list(trials)[-self.patience:], dtype=float))
        return bool(np.all(moves <= self.xtol))

    @property
    def window(self) -> int:
        """How many recent steps :meth:`check` reads."""
        return max(self.patience + 1, self.min_steps)

    @staticmethod
    def entry(record) -> tuple:
        """``(phi, snr, trial)`` of a step record: what :meth:`check` reads of it.

        ``trial`` is the length of a rejected trust-region trial
        (``record.info["step_norm"]`` when ``info["accepted"]`` is False), else 0.
        """
        if record.phi is None:
            raise FG2UValueError(
                "Converged needs phi in the step records (N <= PHI_MAX_SIZE); use max "
                "steps per phase instead")
        info = record.info or {}
        rejected = info.get("accepted") is False
        trial = float(info.get("step_norm") or 0.0) if rejected else 0.0
        return np.array(record.phi, dtype=np.float64), float(record.snr), trial

    def config(self) -> dict:
        """The rule's parameters, JSON (stored with a run's configuration)."""
        return {"xtol": self.xtol, "snr": self.snr, "patience": self.patience,
                "min_steps": self.min_steps}

    def callback(self):
        """A fresh ``minimize`` callback that returns True once the phase converged.

        It reads ``record.phi`` (written for N <= ``PHI_MAX_SIZE``), ``record.snr`` and
        the trust-region fields of ``record.info`` (see :meth:`entry`).
        """
        window = []

        def converged(record):
            window.append(self.entry(record))
            del window[:-self.window]
            phis, snrs, trials = zip(*window)
            return self.check(phis, snrs, trials)

        return converged
