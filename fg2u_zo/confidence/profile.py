"""Profile-likelihood intervals: walk out from the fit until the loss has risen enough.

The profile of parameter ``j`` at ``c`` is the loss minimized over the other
parameters with ``z_j = c``. Its statistic is ``Delta(c) = (F_prof(c) - F_hat) / unit``
(``unit``: the change of the loss that is one unit of ``chi**2``, see
:mod:`.covariance`), and the interval is where ``Delta <= q`` with ``q`` the square of
the linear method's quantile: ``t**2`` with ``M - N`` degrees of freedom (the F(1, M - N)
quantile, the likelihood-ratio test with an estimated noise level) or ``z**2`` (the
chi-square(1) quantile) when the noise level is known or the loss is a likelihood. On
a linear model the two methods therefore agree exactly.

Each side of each parameter is a :class:`Walker` along ``z_j`` (in the transformed
variable, where the bounds of ``phi`` are limits). It steps out from the fit, first to
the linear interval's end and then by extrapolating the signed root ``sqrt(Delta)``
(linear in ``c`` for a quadratic profile) to a little past the threshold, at most
quadrupling the distance each time; once a point lies above the threshold it refines
the crossing by interpolation inside the bracket. A side whose profile stays below the
threshold up to a bound of ``phi``, or over :data:`MAX_LOG_SPAN` in a log or logit
variable, or over :data:`MAX_POINTS` points, is open: the data do not bound it, and the
interval's end is the bound (``inf`` without one).

The ``2N`` walkers are independent: each round, every walker still running proposes
its next fit, and the round's fits run side by side (:func:`.fits.run_fits`).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import FG2UWarning
from ..noise.advice import user_stacklevel
from .fits import Fit, FitSettings, run_fits

__all__ = ["Profile", "Walker", "profile_intervals", "MAX_POINTS", "MAX_LOG_SPAN",
           "RTOL", "MAX_REFINE"]

#: Most points a side takes before it is declared open.
MAX_POINTS = 14
#: Largest distance walked in a log or logit variable: ten decades.
MAX_LOG_SPAN = 10.0 * math.log(10.0)
#: Largest distance walked in an untransformed variable, relative to max(1, |z|).
MAX_RELATIVE_SPAN = 1e6
#: A point whose sqrt(Delta) is within this relative distance of sqrt(q) ends the side.
RTOL = 1e-3
#: Interpolation steps inside a bracket at most.
MAX_REFINE = 6


@dataclass(frozen=True)
class Profile:
    """The profile of one parameter.

    Attributes
    ----------
    index : int
    name : str
    values : ndarray
        The parameter's values (in ``phi``) where the others were re-optimized, sorted,
        the fit itself included.
    z : ndarray
        The same in ``z``.
    statistic : ndarray
        ``Delta`` at each (0 at the fit).
    threshold : float
        ``q``: the interval is where ``statistic <= threshold``.
    interval : ndarray, shape (2,)
        In ``phi``.
    open : ndarray of bool, shape (2,)
        Whether each end is open (the profile never reached the threshold on that side).
    """

    index: int
    name: str
    values: np.ndarray
    z: np.ndarray
    statistic: np.ndarray
    threshold: float
    interval: np.ndarray
    open: np.ndarray


class Walker:
    """One side of one parameter's profile (see the module docstring).

    Parameters
    ----------
    index, side : int
        The parameter, and ``-1`` (lower end) or ``+1`` (upper end).
    z_hat : ndarray
        The fit, in ``z``.
    q : float
        The threshold of ``Delta``.
    first : float
        Distance of the first point (the linear half-width, or a guess).
    limit : float
        Largest distance (to a bound, or the span walked at most).
    at_bound : bool
        Whether ``limit`` is a bound of ``phi`` (else the walking span).
    slope : ndarray
        ``d z_free / d z_j`` of the linear approximation, for warm starts (0 where
        unknown).
    """

    def __init__(self, index, side, z_hat, q, first, limit, at_bound, slope):
        self.index, self.side = index, side
        self.z_hat = np.asarray(z_hat, dtype=np.float64)
        self.root = math.sqrt(q)
        self.first = float(min(first, limit))
        self.limit = float(limit)
        self.at_bound = at_bound
        self.slope = slope
        self.points = [(0.0, 0.0, self.z_hat.copy())]   # (distance, Delta, z)
        self.below = 0
        self.above = None
        self.refined = 0
        self.status = "running"   # "closed" | "open" | "failed"
        self.end = np.nan

    # -- proposals -------------------------------------------------------------------
    def _rho(self, k):
        return math.sqrt(max(self.points[k][1], 0.0))

    def _distance(self):
        if self.above is not None:
            (db, _, _), (da, _, _) = self.points[self.below], self.points[self.above]
            rb, ra = self._rho(self.below), self._rho(self.above)
            d = db + (self.root - rb) * (da - db) / (ra - rb) if ra > rb else 0.5 * (da + db)
            # Regula falsi may creep along one end: keep clear of both.
            margin = 1e-3 * (da - db)
            return float(min(max(d, db + margin), da - margin))
        if len(self.points) == 1:
            return self.first
        order = sorted(range(len(self.points)), key=lambda k: self.points[k][0])
        k1, k2 = order[-2], order[-1]
        d1, d2 = self.points[k1][0], self.points[k2][0]
        r1, r2 = self._rho(k1), self._rho(k2)
        if r2 > r1 and d2 > d1:
            # Aim a little past the threshold, so that the next point brackets it.
            d = d2 + (1.02 * self.root - r2) * (d2 - d1) / (r2 - r1)
            d = min(max(d, 1.1 * d2), 4.0 * d2)
        else:
            d = 4.0 * d2
        return float(min(d, self.limit))

    def propose(self) -> Fit:
        d = self._distance()
        self._pending = d
        near = min(range(len(self.points)), key=lambda k: abs(self.points[k][0] - d))
        dn, _, zn = self.points[near]
        start = zn + self.slope * (self.side * (d - dn))
        return Fit(self.index, float(self.z_hat[self.index] + self.side * d), start)

    # -- outcomes --------------------------------------------------------------------
    def observe(self, delta, z, failed=False):
        d = self._pending
        if failed:
            self.status = "failed"
            return
        self.points.append((d, float(delta), np.asarray(z, dtype=np.float64)))
        k = len(self.points) - 1
        rho = self._rho(k)
        if abs(rho - self.root) <= RTOL * self.root:
            self.status, self.end = "closed", self._secant(k, d, rho)
            return
        if rho > self.root:
            if self.above is None or d < self.points[self.above][0]:
                self.above = k
        elif d > self.points[self.below][0]:
            self.below = k
        if self.above is not None:
            self.refined += 1
            da, db = self.points[self.above][0], self.points[self.below][0]
            if self.refined > MAX_REFINE or da - db <= 1e-9 * da:
                self.status, self.end = "closed", self._distance()
            return
        if d >= self.limit or len(self.points) > MAX_POINTS:
            self.status = "open"

    def _secant(self, k, d, rho):
        """The crossing from the point that hit the threshold and the nearest other one
        (removes most of the remaining ``RTOL``)."""
        others = [i for i in range(len(self.points)) if i != k]
        i = min(others, key=lambda i: abs(self.points[i][0] - d))
        di, ri = self.points[i][0], self._rho(i)
        if (rho - ri) * (d - di) <= 0:
            return d
        return float(d + (self.root - rho) * (d - di) / (rho - ri))

    def end_z(self) -> float:
        """The end of the interval in ``z`` (``+-inf`` or the bound when open)."""
        j = self.index
        if self.status == "closed":
            return float(self.z_hat[j] + self.side * self.end)
        if self.status == "open":
            if self.at_bound:
                return float(self.z_hat[j] + self.side * self.limit)
            return self.side * np.inf
        return np.nan


def _limits(transform, z_hat, j, side):
    """The largest distance to walk along ``z_j``, and whether it is a bound."""
    kind = transform.kinds[j]
    lo, hi = transform.bounds.lower[j], transform.bounds.upper[j]
    if kind == "logit":
        return MAX_LOG_SPAN, False
    if kind == "log":
        bound = math.log(hi) if side > 0 and np.isfinite(hi) else (
            math.log(lo) if side < 0 and lo > 0 else None)
        span = MAX_LOG_SPAN
    else:
        bound = hi if side > 0 and np.isfinite(hi) else (
            lo if side < 0 and np.isfinite(lo) else None)
        span = MAX_RELATIVE_SPAN * max(1.0, abs(z_hat[j]))
    if bound is not None and abs(bound - z_hat[j]) <= span:
        return abs(bound - z_hat[j]), True
    return span, False


def profile_intervals(problem, transform, z_hat, value, *, unit, q, spectrum, names,
                      settings_step, evaluator, rng):
    """Profile every parameter on both sides.

    Parameters
    ----------
    problem : BilevelProblem
    transform : ParameterTransform
    z_hat : ndarray, shape (N,)
        The fit, in ``z``.
    value : float
        The loss at the fit.
    unit : float
        The change of the loss that is one unit of chi-square.
    q : float
        The threshold of ``Delta``.
    spectrum : Spectrum
        The linear approximation (first steps, warm starts, tolerances).
    names : sequence of str
    settings_step : float
        Relative forward-difference step of the fits' Gauss–Newton models.
    evaluator : Evaluator
    rng : numpy.random.Generator

    Returns
    -------
    interval_z : ndarray, shape (N, 2)
    open : ndarray of bool, shape (N, 2)
    profiles : list of Profile
    nfev : int
    """
    z_hat = np.asarray(z_hat, dtype=np.float64)
    n = z_hat.size
    se = spectrum.stderr
    walkers = []
    P = spectrum.precision
    for j in range(n):
        # Along the profile of the quadratic model the free parameters follow
        # z_free = -P_ff^+ P_fj (z_j - z_hat_j): finite even where the covariance is not
        # (along an unconstrained combination they move with z_j).
        free = np.arange(n) != j
        slope = np.zeros(n)
        slope[free] = -np.linalg.pinv(P[np.ix_(free, free)], rcond=1e-12) @ P[free, j]
        for side in (-1, 1):
            limit, at_bound = _limits(transform, z_hat, j, side)
            first = (math.sqrt(q) * se[j] if np.isfinite(se[j]) and se[j] > 0
                     else 0.1 * max(1.0, abs(z_hat[j])))
            walkers.append(Walker(j, side, z_hat, q, first, limit, at_bound, slope))
    finite_se = np.where(np.isfinite(se) & (se > 0), se, np.nan)
    step_tol = np.empty(n)
    radius = np.empty(n)
    for j in range(n):
        others = np.delete(finite_se, j)
        others = others[np.isfinite(others)]
        step_tol[j] = (1e-4 * others.min() if others.size
                       else 1e-8 * max(1.0, float(np.max(np.abs(z_hat)))))
        radius[j] = float(np.linalg.norm(others)) if others.size else np.nan
    settings = FitSettings(problem=problem, transform=transform, step=settings_step,
                           value_tol=1e-5 * unit, step_tol=step_tol, radius=radius)
    nfev = 0
    lowest = (value, None)
    while True:
        active = [w for w in walkers if w.status == "running"]
        if not active:
            break
        fits = [w.propose() for w in active]
        outcomes, spent = run_fits(fits, settings, evaluator, rng)
        nfev += spent
        for w, out in zip(active, outcomes):
            failed = out.error is not None or not np.isfinite(out.value)
            if not failed and out.value < lowest[0]:
                lowest = (out.value, out.z)
            w.observe((out.value - value) / unit if not failed else np.nan, out.z, failed)
    if lowest[1] is not None and (value - lowest[0]) / unit > 1e-2:
        warnings.warn(
            f"a profile fit reached F = {lowest[0]:.8g}, below F = {value:.8g} at the "
            f"result, at phi = {np.round(transform.forward(lowest[1]), 8).tolist()}: the "
            "result is not the minimum of the loss, and its intervals are too narrow; fit "
            "again from that point", FG2UWarning, stacklevel=user_stacklevel())

    interval_z = np.full((n, 2), np.nan)
    is_open = np.zeros((n, 2), dtype=bool)
    profiles = []
    for j in range(n):
        pair = [w for w in walkers if w.index == j]
        pts = [(0.0, 0.0, z_hat[j])]
        for w in pair:
            col = 0 if w.side < 0 else 1
            interval_z[j, col] = w.end_z()
            is_open[j, col] = w.status == "open"
            pts += [(w.side * d, delta, z[j]) for d, delta, z in w.points[1:]]
        pts.sort(key=lambda p: p[0])
        zs = np.array([p[2] for p in pts])
        phis = _forward_one(transform, j, zs, z_hat)
        ends = _forward_one(transform, j, interval_z[j], z_hat)
        profiles.append(Profile(index=j, name=names[j], values=phis, z=zs,
                                statistic=np.array([p[1] for p in pts]), threshold=float(q),
                                interval=ends, open=is_open[j].copy()))
    return interval_z, is_open, profiles, nfev


def _forward_one(transform, j, zs, z_hat):
    """``phi_j = T_j(z_j)`` for each value in ``zs`` (NaN stays NaN)."""
    zs = np.asarray(zs, dtype=np.float64)
    out = np.full(zs.shape, np.nan)
    for i, zj in enumerate(zs):
        if np.isnan(zj):
            continue
        z = z_hat.copy()
        z[j] = zj
        out[i] = transform.forward(z)[j]
    return out
