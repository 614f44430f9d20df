"""Did an estimate's finite differences rise above the resolution of the outputs?

A fixed step below the solver's precision (``step=1e-17`` at ``phi ~ 1``, where
``phi + h u`` rounds back to ``phi``; ``step=1e-7`` on a solver that prints 6
significant digits) gives perturbed outputs equal to the base output, or differing
from it by the rounding of the last printed digit only. The gradient is then zero or
noise, and an outer loop would report convergence where nothing converged.

:class:`OutputResolution` watches each perturbed output as it arrives (O(1) memory per
point, nothing of size M kept) and says which points moved by no more than the
resolution of the outputs:

* exactly zero change: always;
* within one unit of the last printed digit (or bit) in every output, when the outputs
  are printed short: the unit the noise probe read (``NoiseEstimate.output_noise`` of
  a ``"digits"`` or ``"bits"`` estimate is that unit over ``sqrt(12)``), or, without
  such an estimate, ``D`` digits when every examined value (base and perturbed) has
  at most :data:`~fg2u_zo.noise.table.MAX_PRINTED_DIGITS` significant decimal digits.

Noise that is not rounding (an iterative solver's tolerance) is not judged output by
output: a projection on many outputs can rise above the noise while each output stays
within its own, and the noise probe already picks a step for the projection.
"""

from __future__ import annotations

import math

import numpy as np

from .steps import min_step, step_scale
from .table import MAX_PRINTED_DIGITS, PRECISION_SAMPLE, decimal_digits

__all__ = ["OutputResolution"]

_EPS = np.finfo(np.float64).eps

#: Tolerance on "within one unit of the last digit": the unit is computed from the
#: base output's leading digit, and a decimal read back as a double is off by an ulp.
_UNIT_SLACK = 1.0 + 1e-6


class OutputResolution:
    """Per perturbed point: did its output move beyond the output resolution?

    Parameters
    ----------
    theta0 : ndarray
        The base output ``S(phi)``.
    num_points : int
        Perturbed points of the plan.
    noise : NoiseEstimate, optional
        A probe's estimate; when it read the printed precision (method ``"digits"`` or
        ``"bits"``), its ``output_noise`` gives the rounding unit of each output.
    """

    def __init__(self, theta0, num_points, noise=None):
        self.theta0 = np.asarray(theta0, dtype=np.float64).ravel()
        absolute = np.abs(self.theta0)
        nonzero = absolute > 0
        # Unit of the leading digit of each base output: a change of d_j is
        # d_j / lead_j units of the first digit, 10**(1 - D) units of the last.
        self.lead = np.full(self.theta0.shape, np.nan)
        self.lead[nonzero] = 10.0 ** np.floor(np.log10(absolute[nonzero]))
        self.sample = np.argsort(-absolute)[:min(PRECISION_SAMPLE, int(nonzero.sum()))]
        self.digits = self._digits(self.theta0)
        self.threshold = None
        output_noise = getattr(noise, "output_noise", None)
        if (getattr(noise, "method", None) in ("digits", "bits") and output_noise is not None
                and np.size(output_noise) == self.theta0.size):
            level = np.asarray(output_noise, dtype=np.float64).ravel()
            if np.all(np.isfinite(level)):
                self.threshold = math.sqrt(12.0) * level
        self.unchanged = np.zeros(num_points, dtype=bool)
        self.lead_ratio = np.full(num_points, np.inf)
        self.noise_ratio = np.full(num_points, np.inf)

    def _digits(self, values):
        """Most significant decimal digits among the sampled values (stops early)."""
        most = 0
        for v in values[self.sample]:
            if v != 0:
                most = max(most, decimal_digits(v))
                if most > MAX_PRINTED_DIGITS:
                    break
        return most

    def observe(self, k, theta) -> None:
        """Record how far the output of point ``k`` moved from the base output."""
        flat = np.asarray(theta, dtype=np.float64).ravel()
        change = np.abs(flat - self.theta0)
        self.unchanged[k] = not change.any()
        if self.unchanged[k]:
            return
        moved_from_zero = np.isnan(self.lead) & (change > 0)
        self.lead_ratio[k] = (np.inf if moved_from_zero.any()
                              else float(np.nanmax(change / self.lead)))
        if self.threshold is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(change > 0, change / self.threshold, 0.0)
            self.noise_ratio[k] = float(np.max(ratio))
        if self.digits <= MAX_PRINTED_DIGITS:
            self.digits = max(self.digits, self._digits(flat))

    @property
    def printed_digits(self) -> int | None:
        """``D`` when every examined value had at most ``MAX_PRINTED_DIGITS`` digits."""
        return self.digits if 0 < self.digits <= MAX_PRINTED_DIGITS else None

    def below(self) -> np.ndarray:
        """Boolean per point: the output moved by no more than the resolution."""
        below = self.unchanged.copy()
        if self.threshold is not None:
            below |= self.noise_ratio <= 1.0
        elif self.printed_digits is not None:
            below |= self.lead_ratio <= 10.0 ** (1 - self.printed_digits) * _UNIT_SLACK
        return below

    def describe(self, below) -> str:
        """In words, what the degenerate differences were compared with."""
        if self.unchanged[below].all():
            return "exactly zero (the perturbed outputs equal the base output)"
        if self.threshold is not None:
            return ("within one unit of the last digit the solver prints in every output "
                    "(as the noise probe read it)")
        return (f"within one unit of the last of the {self.printed_digits} significant "
                "digits the solver prints")

    def relative_resolution(self) -> float:
        """The outputs' relative resolution: ``10**(1 - D)`` for printed outputs, the
        probe's rounding unit relative to the largest output, or double-precision
        rounding."""
        if self.printed_digits is not None:
            return 10.0 ** (1 - self.printed_digits)
        if self.threshold is not None:
            peak = np.max(np.abs(self.theta0))
            if peak > 0:
                return max(float(np.max(self.threshold)) / peak, _EPS)
        return _EPS

    def suggested_step(self, phi, scheme) -> float:
        """A step whose differences rise above the resolution ``r``: the classical
        ``r**(1/2)`` (forward) or ``r**(1/3)`` (central) relative step, times the
        scale of ``phi`` (``default_step`` when ``r`` is double-precision rounding)."""
        r = self.relative_resolution()
        power = 0.5 if scheme == "forward" else 1.0 / 3.0
        return max(r ** power * step_scale(phi), min_step(phi))
