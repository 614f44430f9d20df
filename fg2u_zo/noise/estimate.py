"""Computational noise of a black-box inner solver, and the step it calls for.

A simulator is rarely smooth to the last digit: an iterative solver stops at a
tolerance, a legacy code prints 6 significant digits, an adaptive mesh jumps. A
finite difference divides that noise by the step, so the step must come from the
noise level. This module follows the two papers of Moré and Wild:

* *Estimating computational noise* (2011): evaluate along a line at a few equally
  spaced points and build the difference table. Smooth variation shrinks with each
  order of differencing (``Delta^k f ~ f^(k) s^k``); independent noise does not: the
  k-th difference of noise of standard deviation ``sigma`` has variance
  ``C(2k, k) sigma**2``. Where the scaled RMS of successive orders levels off (a
  *plateau*) and the differences change sign, the plateau is the noise level.
  Identical outputs mean the spacing is too small to see the noise; a table with no
  plateau means it is so large that smooth variation still dominates.
* *Estimating derivatives of noisy simulations* (2012): with the noise level known,
  measure the second (or third) derivative by a difference whose span is just large
  enough to rise well above the noise, then take the step that balances truncation
  against noise (:func:`fg2u_zo.noise.steps.noise_optimal_step`).

Two additions of ours. Outputs printed with few digits (the commonest noise of a
legacy code) are recognised from the values themselves: along a line on which an
output is nearly linear its rounding errors are a regular sequence rather than
independent draws, and the difference table then misjudges them by up to a factor
10, whereas the unit of the last printed digit gives the noise exactly. And the
derivatives are measured along a few lines drawn like the estimate's directions and
combined by their root mean square, since one line's curvature can be far from
typical (for coordinate directions, by a factor 100 on our test problems).

The scalar that is examined is the one the estimator differences: for
:class:`~fg2u_zo.FG2UZO` the projection ``q(t) = <grad_theta f(theta0), S(phi + t u)>``
(its noise is what enters each directional derivative), for
:class:`~fg2u_zo.BlackBoxES` the objective ``F(phi + t u)``.

Public: :func:`estimate_noise`, :class:`NoiseEstimate`, :func:`noise_needs_refresh`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import numpy as np

from ..validation import as_generator, check_choice, check_phi, check_positive_int
from ..estimators.directions import DIRECTION_FAMILIES, sample_directions
from ..errors import FG2UTypeError, FG2UValueError, InnerSolverError, NoiseWarning
from .steps import (default_step, max_step, min_step, noise_optimal_step, predicted_fd_error,
                    step_scale)

__all__ = ["NoiseEstimate", "estimate_noise", "noise_needs_refresh", "auto_step",
           "probe_lines"]

_EPS = np.finfo(np.float64).eps

STATUSES = ("ok", "exact", "too_small", "too_large", "failed")

#: Default number of points on the probe line (ECnoise's 7 to 9; 9 gives orders 1-8).
NUM_POINTS = 9

#: Default number of lines the derivatives are measured along.
NUM_LINES = 3

#: First probe spacing, relative to ``step_scale(phi)``: large enough that outputs
#: printed to ~4 digits change by several units of their last digit between points,
#: small enough that the 6th-8th differences of a smooth function sink below
#: double-precision rounding.
RELATIVE_SPACING = 1e-3

#: Largest probe spacing, relative to ``step_scale(phi)`` (the line then spans
#: +-0.2 of the scale with 9 points).
MAX_RELATIVE_SPACING = 0.05

#: A noise level within this many units of roundoff of the evaluated scalar's
#: magnitude is double-precision rounding, not computational noise: the classical
#: ``default_step`` is then the right one.
EXACT_RELATIVE_NOISE = 64 * _EPS

#: Outputs whose values along the probe line all have at most this many significant
#: decimal digits (or mantissa bits) are taken as printed with that precision.
_MAX_PRINTED_DIGITS = 14
#: The table must see noise above this relative level (a thousand ulps) before the
#: printed precision of the outputs is read: short decimals are otherwise a
#: coincidence of round evaluation points.
_PRINTED_MIN_RELATIVE = 1e3 * np.finfo(np.float64).eps
_TINY = np.finfo(np.float64).tiny
_MAX_PRINTED_BITS = 44

#: Outputs examined for their printed precision (those carrying the most variation).
_PRECISION_SAMPLE = 256

#: NoiseWarning is raised when the predicted relative error of the finite difference
#: exceeds WARNING_THRESHOLD, or when the outputs are printed with at most
#: WARNING_DIGITS significant digits (or in single precision): the default of C++
#: and FreeFem++ streams, whose noise costs several digits of the gradient even
#: where the error stays below the threshold, and is the cheapest to fix.
WARNING_THRESHOLD = 1e-4
WARNING_DIGITS = 7

#: A difference accepted for a derivative estimate must exceed its own noise (the
#: noise level times the stencil's noise amplification) by this factor, so that
#: noise moves the estimate by 5% at most (Moré and Wild's acceptance test).
_SIGNAL_TO_NOISE = 20.0

#: When no difference passes, the derivative is bounded by a difference of this
#: many standard deviations of the stencil's noise: a 3-sigma upper bound.
_BOUND_SIGMAS = 3.0

#: Two successive orders of the difference table agree when within this factor, and
#: ECnoise's plateau is three orders that pairwise do.
_PLATEAU_FACTOR = 4.0

#: The function may vary by at most this fraction of its magnitude across the line:
#: beyond, differences are not local (both papers' relative-change test).
_MAX_RELATIVE_CHANGE = 0.1


@dataclass(frozen=True, eq=False)
class NoiseEstimate:
    """The noise level of a black-box evaluation and the steps it calls for.

    All derivatives and errors refer to the scalar ``f(t)`` examined along a unit
    direction ``u`` (``q(t) = <grad_theta f, S(phi + t u)>`` for FG2UZO, the
    objective ``F(phi + t u)`` for BlackBoxES): the same quantity, per unit
    direction, that each finite difference of an estimate computes.

    Attributes
    ----------
    noise : float
        Standard deviation of the noise of one evaluation of ``f`` (absolute).
        ``nan`` when no estimate could be made (``status`` "too_small" or
        "failed"); for "too_large" an upper bound.
    relative_noise : float
        ``noise / scale``: about ``10**-d`` when ``f`` carries ``d`` correct digits.
    scale : float
        The magnitude of ``f`` the noise is relative to: ``max_t sum_j |g_j
        theta_j(t)|`` for the projection (the size of the terms whose rounding is
        the noise, which cancellation in the sum does not reduce), ``max_t |F(t)|``
        for the objective.
    curvature : float
        ``|f''|`` along the probe lines (root mean square over ``num_lines``), each
        from a difference that rises above the noise; an upper bound when none does
        (the function is then nearly linear).
    third_derivative : float
        ``|f'''|``, likewise.
    slope : float
        ``|f'|`` (root mean square over the lines), from the most accurate central
        difference available; the denominator of :meth:`relative_error`.
    spacing : float
        Spacing of the probe points of the final difference table.
    status : {"ok", "exact", "too_small", "too_large", "failed"}
        ``"ok"``: a noise plateau was found. ``"exact"``: the noise is at
        double-precision rounding (``relative_noise <= EXACT_RELATIVE_NOISE``) or
        zero; the steps are then :func:`fg2u_zo.noise.steps.default_step`. The others
        say why the last try failed: outputs identical (spacing too small), no
        plateau (too large), evaluations failed; the steps then fall back to the
        default as well.
    nfev : int
        Inner-solver evaluations spent by the probe (the base point excluded when it
        was shared with an estimate).
    order : int
        Order of the difference table at which the noise plateau starts (0: none, or
        a printed-precision ``method``).
    method : {"table", "digits", "bits"}
        How the noise was read: ``"table"``, the difference-table plateau (ECnoise);
        ``"digits"`` / ``"bits"``, from the unit of the last digit of outputs printed
        with few significant decimal digits / mantissa bits (each contributing a
        uniform rounding error ``q / sqrt(12)``); the difference table misjudges
        rounding on lines where the outputs are nearly linear.
    quantity : {"inner", "value"}
        Which scalar was examined (projection or objective).
    num_lines : int
        Lines the derivatives were measured along (their root mean square is
        reported); the noise is read along the first.
    num_params : int
        N, the length of the phi it was measured at.
    phi_scale : float
        :func:`fg2u_zo.noise.steps.step_scale` of that phi.
    step_forward, step_central : float
        The noise-optimal steps (Euclidean length) for each scheme.
    predicted_error_forward, predicted_error_central : float
        Predicted RMS error of one finite-difference directional derivative along a
        unit direction at those steps.
    output_noise : ndarray, shape (M,) or None
        Noise level of each output component of the solver, from the same table.
    output_relative_noise : ndarray, shape (M,) or None
        ``output_noise / max_t |theta_j(t)|`` (0 where an output is identically 0).
    attempts : tuple of (float, str)
        ``(spacing, status)`` of each try, in order.
    output_precision : int
        Significant digits (``method="digits"``) or bits (``"bits"``) of the printed
        outputs; 0 otherwise.
    solver_time : float
        Seconds spent inside the solver by the probe.
    difference_to_noise : float or None
        Filled in on the copy an estimate reports (``MetaGradient.noise``): median over
        its directions of ``|f(phi + h u_i) - f(phi)| / noise`` (forward) or
        ``|f(phi + h u_i) - f(phi - h u_i)| / noise`` (central). Near 1 the differences
        are drowned in noise. ``None`` straight out of :func:`estimate_noise`.
    """

    noise: float
    relative_noise: float
    scale: float
    curvature: float
    third_derivative: float
    slope: float
    spacing: float
    status: str
    nfev: int
    order: int
    method: str
    quantity: str
    num_lines: int
    num_params: int
    phi_scale: float
    step_forward: float
    step_central: float
    predicted_error_forward: float
    predicted_error_central: float
    output_noise: np.ndarray | None = None
    output_relative_noise: np.ndarray | None = None
    attempts: tuple = ()
    output_precision: int = 0
    solver_time: float = 0.0
    difference_to_noise: float | None = None

    def step(self, scheme: str) -> float:
        """The step chosen for ``scheme`` ("forward" or "central")."""
        return self.step_forward if scheme == "forward" else self.step_central

    def predicted_error(self, scheme: str) -> float:
        """Predicted RMS error of one directional derivative (unit direction)."""
        return (self.predicted_error_forward if scheme == "forward"
                else self.predicted_error_central)

    def relative_error(self, scheme: str) -> float:
        """``predicted_error(scheme) / slope``: the digits the difference can deliver."""
        err = self.predicted_error(scheme)
        if self.slope > 0 or np.isnan(err):
            return err / self.slope if self.slope > 0 else np.nan
        return 0.0 if err == 0 else np.inf

    @property
    def digits(self) -> float:
        """Correct significant digits of the examined scalar, ``-log10(relative_noise)``."""
        if not self.relative_noise > 0:
            return np.inf if self.relative_noise == 0 else np.nan
        return -math.log10(self.relative_noise)

    @property
    def output_digits(self) -> float:
        """Median over output components of their correct significant digits."""
        rel = self.output_relative_noise
        if rel is None or rel.size == 0:
            return np.nan
        rel = rel[rel > 0]
        return np.inf if rel.size == 0 else -math.log10(float(np.median(rel)))

    def to_dict(self) -> dict:
        """Every field as plain Python (arrays as lists), for checkpoints and logs.

        :meth:`from_dict` rebuilds an equal estimate, so a resumed run takes exactly
        the same steps. Non-finite floats stay floats (``json.dumps`` writes them as
        ``NaN``/``Infinity``).
        """
        out = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif name == "attempts":
                value = [[float(spacing), status] for spacing, status in value]
            elif isinstance(value, np.generic):
                value = value.item()
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "NoiseEstimate":
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        for name in ("output_noise", "output_relative_noise"):
            if data.get(name) is not None:
                data[name] = np.asarray(data[name], dtype=np.float64)
        data["attempts"] = tuple((float(s), str(st)) for s, st in data.get("attempts", ()))
        return cls(**data)

    def __str__(self) -> str:
        # Continuation lines are indented to sit under the value column of
        # GradientCheck's "noise     : " line.
        pad = "\n" + " " * 12
        what = "<grad_theta f, S>" if self.quantity == "inner" else "F"
        head = (f"{self.noise:.2e} on {what} ({self.relative_noise:.1e} relative, "
                f"~{self.digits:.1f} digits), status {self.status}")
        probe = f"probe: {self.nfev} solves, spacing {self.spacing:.1e}"
        if self.status in ("ok", "exact"):
            probe += f", {self.method}"
        if len(self.attempts) > 1:
            probe += " after " + ", ".join(f"{s:.0e} {st}" for s, st in self.attempts[:-1])
        if self.method in ("digits", "bits"):
            probe += f"; outputs printed with {self.output_precision} {self.method}"
        elif self.output_relative_noise is not None:
            probe += f"; outputs ~{self.output_digits:.1f} digits (median)"
        derivs = (f"|f'| ~ {self.slope:.2e}, |f''| ~ {self.curvature:.2e}, "
                  f"|f'''| ~ {self.third_derivative:.2e} (rms over {self.num_lines} lines)")
        schemes = [f"{scheme:8s}: step {self.step(scheme):.2e}, predicted error "
                   f"{self.predicted_error(scheme):.1e} ({self.relative_error(scheme):.1e} "
                   "relative)" for scheme in ("forward", "central")]
        lines = [head, probe, derivs, *schemes]
        if self.difference_to_noise is not None:
            lines.append(f"differences / noise in the estimate: {self.difference_to_noise:.3g}")
        return pad.join(lines)


# --------------------------------------------------------------------------------------
# The difference table
# --------------------------------------------------------------------------------------

def _difference_levels(values):
    """Scaled RMS of each order of the difference table, and whether it changes sign.

    ``values`` has shape (m + 1, ...) (points along the line first). Returns
    ``levels`` and ``sign_change`` of shape (m, ...): ``levels[k - 1] = sqrt(gamma_k *
    mean((Delta^k f)**2))`` with ``gamma_k = (k!)**2 / (2k)!``, the factor that turns
    the mean square of k-th differences of i.i.d. noise back into its variance.
    """
    d = np.asarray(values, dtype=np.float64)
    m = d.shape[0] - 1
    gamma = 1.0
    levels, signs = [], []
    for k in range(1, m + 1):
        d = np.diff(d, axis=0)
        gamma *= 0.5 * k / (2 * k - 1)
        levels.append(np.sqrt(gamma * np.mean(d * d, axis=0)))
        signs.append((d.min(axis=0) < 0) & (d.max(axis=0) > 0))
    return np.array(levels), np.array(signs)


def _decimal_digits(x: float) -> int:
    """Significant decimal digits of the shortest string that reads back as ``x``."""
    mantissa = repr(float(x)).lstrip("-").split("e")[0].replace(".", "")
    return len(mantissa.strip("0")) or 1


def _binary_bits(x):
    """Significant bits of the mantissa of each (non-zero) double in ``x``."""
    mantissa, _ = np.frexp(np.abs(x))
    k = (mantissa * 2.0 ** 53).astype(np.int64)  # exact: a double has 53 bits
    return 53 - np.log2(k & -k).astype(np.int64)


def _rounding_units(thetas, candidates):
    """Rounding unit of each output value, when the outputs were printed short.

    A simulator that writes ``%.6g`` hands back doubles that are the nearest to
    6-digit decimals, a single-precision code doubles with 24-bit mantissas. The
    shortest decimal string (resp. the mantissa) of every value of a moving output
    along the line is then at most that long, which a full-precision double almost
    never is for nine values in a row (a chance of about 1e-15 at 14 digits). The
    unit of the last digit ``q`` of each value follows, and its rounding error is
    uniform on ``[-q/2, q/2]``.

    Parameters
    ----------
    thetas : ndarray, shape (m + 1, M)
    candidates : ndarray of int
        The outputs to examine (the largest contributions, at most
        ``_PRECISION_SAMPLE``).

    Returns
    -------
    kind : {"digits", "bits"} or None
    precision : ndarray, shape (len(candidates),)
        Digits (or bits) of each candidate, ``0`` where it looks full precision.
    """
    sub = thetas[:, candidates]
    nonzero = sub != 0
    digits = np.zeros(len(candidates), dtype=np.int64)
    for j in range(len(candidates)):
        values = sub[nonzero[:, j], j]
        for v in values:  # stop at the first full-precision value: the usual case
            digits[j] = max(digits[j], _decimal_digits(v))
            if digits[j] > _MAX_PRINTED_DIGITS:
                break
    bits = np.where(nonzero, _binary_bits(np.where(nonzero, sub, 1.0)), 0).max(axis=0)
    dec = (digits > 0) & (digits <= _MAX_PRINTED_DIGITS)
    binary = (bits > 0) & (bits <= _MAX_PRINTED_BITS)
    if dec.mean() >= binary.mean() and dec.any():
        return "digits", np.where(dec, digits, 0)
    if binary.any():
        return "bits", np.where(binary, bits, 0)
    return None, digits * 0


def _unit_of_last_digit(values, kind, precision):
    """``q(x)``: the unit of the last of ``precision`` digits (or bits) of each value."""
    values = np.abs(values)
    precision = np.broadcast_to(precision, values.shape)
    out = np.zeros_like(values)
    nz = values > 0
    if kind == "digits":
        out[nz] = 10.0 ** (np.floor(np.log10(values[nz])) - precision[nz] + 1)
    else:
        _, e = np.frexp(values[nz])
        out[nz] = np.ldexp(1.0, e - precision[nz])
    return out


@dataclass(frozen=True)
class _Table:
    """The decision on one difference table."""

    status: str
    noise: float = np.nan
    order: int = 0
    method: str = "table"
    output_noise: np.ndarray | None = None
    precision: int = 0
    levels: np.ndarray | None = None


def _classify(f, scale, thetas, line):
    """The decision on one table of the examined scalar ``f`` and the outputs.

    Two ways to read the noise:

    * *printed precision* (``"digits"`` or ``"bits"``): when the outputs that carry
      most of the examined scalar's variation were printed short (see
      :func:`_rounding_units`). Rounding errors along a line on which an output is
      nearly linear follow a regular pattern (the fractional parts of an arithmetic
      progression), not independent draws, and the difference table misjudges them
      (by up to a factor 10 on a fifth of random lines in our measurements). The
      unit ``q`` of the last digit is known instead, and a finite difference between
      points many units apart sees a uniform rounding error, ``q / sqrt(12)``.
    * *table* (ECnoise): the first order whose scaled level changes sign and agrees,
      within a factor 4, with the next two.
    """
    if np.ptp(f) > _MAX_RELATIVE_CHANGE * scale:
        return _Table("too_large")
    d = np.diff(thetas, axis=0)
    moving = np.any(d != 0, axis=0)
    if not moving.any():
        return _Table("too_small")  # identical outputs: the spacing is below their resolution
    table = _table_decision(f, thetas)
    # Short printed values alone prove nothing: a full-precision model evaluated at
    # round numbers along a coordinate line returns short decimals too. Read the
    # printed precision only once the table has seen noise above round-off.
    if table.status == "too_small" or (
            table.status == "ok" and table.noise > _PRINTED_MIN_RELATIVE * max(scale, _TINY)):
        printed = _printed_precision(f, thetas, line)
        if printed is not None:
            return printed
    return table


def _printed_precision(f, thetas, line):
    """The :class:`_Table` read from the unit of the last printed digit, or None."""
    # Each output's share of the examined scalar, to which its rounding is relative.
    w = line.weights * np.mean(thetas * thetas, axis=0)
    nonzero = np.any(thetas != 0, axis=0)
    if not w.sum() > 0:
        w = nonzero.astype(np.float64)
    candidates = np.argsort(-w)[:min(_PRECISION_SAMPLE, int(nonzero.sum()))]
    kind, precision = _rounding_units(thetas, candidates)
    printed = precision > 0
    if kind is None or w[candidates[printed]].sum() < 0.5 * w[candidates].sum():
        return None
    # Outputs not examined are taken to be printed like the examined ones. Outputs
    # that did not move at this spacing are rounded all the same: a finite
    # difference with a longer step will see their rounding error.
    per_output = np.full(thetas.shape[1], int(precision[printed].max()))
    per_output[candidates] = np.where(printed, precision, 0)
    q = _unit_of_last_digit(thetas, kind, np.maximum(per_output, 1)[None, :])
    out = np.sqrt(np.mean(q * q, axis=0) / 12.0)
    # Examined outputs at full precision: the floor of their table bounds their noise.
    full = np.zeros(thetas.shape[1], dtype=bool)
    full[candidates[~printed]] = True
    if full.any():
        out[full] = _difference_levels(thetas[:, full])[0].min(axis=0)
    return _Table("ok", line.noise_from_outputs(out), 0, kind, out,
                  int(precision[printed].max()))


def _table_decision(f, thetas):
    """ECnoise's reading of the difference table of ``f``."""
    m = len(f) - 1
    if np.count_nonzero(np.diff(f) == 0) >= (m + 1) / 2:
        return _Table("too_small")  # half the values repeat (ECnoise's test)
    levels, signs = _difference_levels(f)
    for k in range(m - 2):
        window = levels[k:k + 3]
        # The plateau: three successive orders agree, and the first of them changes
        # sign (smooth variation would keep a constant sign at a small spacing).
        if signs[k] and window.max() <= _PLATEAU_FACTOR * window.min():
            out = _difference_levels(thetas)[0][k]
            return _Table("ok", float(levels[k]), k + 1, "table", out, levels=levels)
    if np.all(levels[-3:] == 0):
        # Exactly representable low-degree polynomial: no noise at all.
        return _Table("exact", 0.0, 0, "table", np.zeros(thetas.shape[1]))
    # No plateau: smooth variation dominates every order. The smallest level bounds
    # the noise from above.
    return _Table("too_large", float(levels.min()))


# --------------------------------------------------------------------------------------
# Evaluations along the probe line
# --------------------------------------------------------------------------------------

class _Line:
    """Solver outputs and the examined scalar along ``phi + t u``, keyed by ``t``."""

    def __init__(self, problem, phi, u, theta0, quantity, g_theta, evaluator, seed):
        self.problem, self.phi, self.u = problem, phi, u
        self.quantity, self.evaluator, self.seed = quantity, evaluator, seed
        self.theta0 = theta0
        self.shape = theta0.shape
        if quantity == "inner":
            self.g = np.asarray(g_theta, dtype=np.float64).ravel()
            self.weights = self.g ** 2
        else:
            self.g = None
            self.weights = np.ones(theta0.size)
        self.thetas, self.values, self.mags = {}, {}, {}
        self.nfev, self.solver_time = 0, 0.0
        self._store(0.0, theta0)

    def point(self, t):
        # Built as phi + t u exactly like the estimate's perturbed points, so the
        # solver sees the same kind of point the finite differences will.
        return self.phi + t * self.u

    def _store(self, t, theta):
        flat = np.asarray(theta, dtype=np.float64).ravel()
        self.thetas[t] = flat
        if self.quantity == "inner":
            terms = self.g * flat
            self.values[t] = float(np.sum(terms))
            self.mags[t] = float(np.sum(np.abs(terms)))
        else:
            value = self.problem.outer_value(theta, self.point(t))
            self.values[t] = value
            self.mags[t] = abs(value)

    def evaluate(self, ts):
        """Solve at the points ``t`` not seen yet; return the set of those that failed."""
        todo = [t for t in ts if t not in self.thetas]
        if not todo:
            return set()
        points = [self.point(t) for t in todo]

        def on_result(k, theta):
            self._store(todo[k], theta)

        try:
            stats = self.evaluator.map(self.problem.inner, points, on_result, seed=self.seed,
                                       warm_start=self.theta0, expected_shape=self.shape)
        except InnerSolverError:
            # Too many points failed (the line left the solver's domain, say): for the
            # probe that only means "not this far". The error carries no count; each
            # point was tried at least once.
            self.nfev += len(todo)
            for t in todo:
                self.thetas.pop(t, None)
                self.values.pop(t, None)
                self.mags.pop(t, None)
            return set(todo)
        self.nfev += stats.nfev
        self.solver_time += stats.solver_time
        return {todo[f.index] for f in stats.failures}

    def noise_from_outputs(self, output_noise, draws=64):
        """Noise of the examined scalar caused by independent noise on each output."""
        if self.quantity == "inner":
            return float(np.sqrt(np.sum((self.g * output_noise) ** 2)))
        # The outer loss is a black box here: propagate by Monte Carlo, with uniform
        # errors of the same standard deviation (rounding's distribution), drawn
        # from a fixed generator so the estimate is reproducible.
        rng = np.random.default_rng(0 if self.seed is None else self.seed)
        half = math.sqrt(3.0) * output_noise
        base = self.theta0.ravel()
        values = [self.problem.outer_value(
            (base + rng.uniform(-half, half)).reshape(self.shape), self.phi)
            for _ in range(draws)]
        return float(np.std(values, ddof=1))

    def has(self, *ts):
        return all(t in self.values for t in ts)

    def f(self, t):
        return self.values[t]


def _noise_table(line, num_points, spacing, phi):
    """Evaluate one table at ``spacing`` and classify it."""
    center = (num_points - 1) // 2
    ts = [float((i - center) * spacing) for i in range(num_points)]
    ts[center] = 0.0
    failed = line.evaluate(ts)
    if failed:
        return _Table("failed"), ts
    f = np.array([line.f(t) for t in ts])
    thetas = np.array([line.thetas[t] for t in ts])
    scale = max(line.mags[t] for t in ts)
    table = _classify(f, scale, thetas, line)
    if table.status == "ok" and table.noise <= EXACT_RELATIVE_NOISE * scale:
        table = replace(table, status="exact")
    return table, ts


def _difference(line, p, h):
    """Centred difference of order ``p`` (1, 2, 3) at span ``h``, or None if not at hand.

    Returns ``(D, c, nsd, change)``: ``D ~ c h**p f^(p)``, the noise standard
    deviation of ``D`` in units of the noise, and the largest change of ``f`` from
    ``f(0)`` over the stencil.
    """
    f0 = line.f(0.0)
    if p == 1:
        if not line.has(h, -h):
            return None
        a, b = line.f(h), line.f(-h)
        return a - b, 2.0, math.sqrt(2.0), max(abs(a - f0), abs(b - f0))
    if p == 2:
        if not line.has(h, -h):
            return None
        a, b = line.f(h), line.f(-h)
        return a - 2.0 * f0 + b, 1.0, math.sqrt(6.0), max(abs(a - f0), abs(b - f0))
    if not line.has(h, -h, 2 * h, -2 * h):
        return None
    a1, b1, a2, b2 = line.f(h), line.f(-h), line.f(2 * h), line.f(-2 * h)
    change = max(abs(x - f0) for x in (a1, b1, a2, b2))
    return a2 - 2.0 * a1 + 2.0 * b1 - b2, 2.0, math.sqrt(10.0), change


def _spans(line):
    return sorted({abs(t) for t in line.values if t > 0 and -t in line.values})


def _derivative(line, p, noise, scale):
    """``(|f^(p)|, accepted, largest span)`` from the spans at hand.

    The smallest span whose difference rises ``_SIGNAL_TO_NOISE`` times above its
    noise is used (least truncation error among the trustworthy ones). When none
    does, the largest span gives an upper bound ``max(|D|, 100 sigma) / (c h**p)``:
    the function is flatter than that, so a step computed from it errs on the
    small, safe side.
    """
    largest = None
    for h in _spans(line):
        diff = _difference(line, p, h)
        if diff is None:
            continue
        D, c, nsd, change = diff
        if change > _MAX_RELATIVE_CHANGE * scale:
            break  # spans only grow from here: no longer local
        if abs(D) >= _SIGNAL_TO_NOISE * nsd * noise:
            return abs(D) / (c * h ** p), True, h
        largest = (h, D, c, nsd)
    if largest is None:
        return np.nan, False, 0.0
    h, D, c, nsd = largest
    return max(abs(D), _BOUND_SIGMAS * nsd * noise) / (c * h ** p), False, h


def _slope(line, noise, third):
    """``|f'|`` from the central difference with the smallest predicted error."""
    best = (np.inf, np.nan)
    for h in _spans(line):
        diff = _difference(line, 1, h)
        if diff is None:
            continue
        D = diff[0]
        err = predicted_fd_error(h, noise, third, "central") if np.isfinite(third) else 0.0
        if err < best[0] or not np.isfinite(best[0]):
            best = (err, abs(D) / (2.0 * h))
    return best[1]


def _refine_derivatives(line, noise, scale, p, phi, max_rounds=3):
    """Moré and Wild's derivative step: widen the span until the ``p``-th difference
    stands out of the noise, a few points at a time along the same line."""
    h_cap = max_step(phi)
    for _ in range(max_rounds):
        mu, accepted, largest = _derivative(line, p, noise, scale)
        if accepted or largest <= 0 or largest >= h_cap or not np.isfinite(mu):
            return
        c, nsd = (1.0, math.sqrt(6.0)) if p == 2 else (2.0, math.sqrt(10.0))
        D = _difference(line, p, largest)[0]
        if abs(D) > _BOUND_SIGMAS * nsd * noise:
            # The difference is seen: aim at twice the acceptance threshold.
            need = 2.0 * _SIGNAL_TO_NOISE * nsd * noise
            growth = (need / abs(D)) ** (1.0 / p)
        else:
            growth = 10.0  # lost in the noise: no clue how far, widen by a decade
        h = float(min(h_cap, largest * min(100.0, max(2.0, growth))))
        ts = [h, -h] if p == 2 else [h, -h, 2 * h, -2 * h]
        if line.evaluate(ts):
            return  # a failed point: keep what we have


# --------------------------------------------------------------------------------------
# The probe
# --------------------------------------------------------------------------------------

def _second_table(line, table, num_points, spacing, s_min, phi, attempts):
    """Pool a second, finer table into a plateau found at a high order.

    When smooth variation fills the first orders of the table, the noise is read from
    the few differences of order ``k >= 3`` that remain, and the estimate spreads (a
    1-in-20 chance of falling below a third of the truth at ``k = 4`` with 9 points).
    A spacing that shrinks the second differences below the noise (smooth
    differences of order 2 scale as the spacing squared) moves the plateau down to
    orders 1-2; the two estimates are pooled, weighted by their numbers of
    differences.
    """
    shrink = float(np.clip(math.sqrt(3.0 * table.levels[1] / table.noise), 3.0, 100.0))
    fine, _ = _noise_table(line, num_points, max(spacing / shrink, s_min), phi)
    attempts.append((max(spacing / shrink, s_min), fine.status))
    if fine.status != "ok" or fine.method != "table":
        return table
    n1, n2 = num_points - table.order, num_points - fine.order
    pool = (lambda a, b: np.sqrt((n1 * np.square(a) + n2 * np.square(b)) / (n1 + n2)))
    return replace(table, noise=float(pool(table.noise, fine.noise)),
                   output_noise=pool(table.output_noise, fine.output_noise))


def _rms(values):
    values = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    return float(np.sqrt(np.mean(values ** 2))) if values.size else np.nan


def _distinct_lines(U):
    """Drop repeated lines (``u`` and ``-u`` are the same line)."""
    kept = []
    for u in U:
        if not any(abs(abs(float(np.dot(u, k))) - 1.0) < 1e-12 for k in kept):
            kept.append(u)
    return kept


def probe_noise(problem, phi, U, *, theta0, g_theta=None, quantity="inner", evaluator,
                seed=None, scheme="central", num_points=NUM_POINTS, spacing=None,
                max_tries=4, warn=True, stacklevel=2, base_nfev=0,
                base_solver_time=0.0) -> NoiseEstimate:
    """The noise probe; ``theta0 = S(phi)`` is known.

    ``U`` holds unit directions, one per row: the noise is read along the first, the
    derivatives are measured along each and combined by their root mean square (the
    aggregate truncation error of many directional differences is the RMS of theirs,
    and derivatives along a single line can be far from typical). Shared by
    :func:`estimate_noise` and the estimators (which pass their own base solve, so the
    probe costs ``num_points - 1`` solves plus retries and a few points per line for
    the derivatives).
    """
    U = _distinct_lines(np.atleast_2d(np.asarray(U, dtype=np.float64)))
    line = _Line(problem, phi, U[0], theta0, quantity, g_theta, evaluator, seed)
    scale_phi = step_scale(phi)
    s_min, s_max = min_step(phi), MAX_RELATIVE_SPACING * scale_phi
    spacing = RELATIVE_SPACING * scale_phi if spacing is None else float(spacing)
    attempts = []
    too_small_at, too_large_at = None, None
    for _ in range(max_tries):
        table, ts = _noise_table(line, num_points, spacing, phi)
        status = table.status
        attempts.append((spacing, status))
        if status in ("ok", "exact"):
            break
        if status == "too_small":
            too_small_at = spacing
        else:  # too large, or failed points (often: the line left the solver's domain)
            too_large_at = spacing
        if too_small_at is not None and too_large_at is not None:
            nxt = math.sqrt(too_small_at * too_large_at)  # bisect in log-space
        else:
            nxt = spacing * (100.0 if status == "too_small" else 0.01)
        nxt = min(max(nxt, s_min), s_max)
        if nxt == spacing or nxt in {s for s, _ in attempts}:
            break
        spacing = nxt
    if (table.status == "ok" and table.method == "table" and table.order >= 3
            and len(attempts) < max_tries and spacing > s_min):
        table = _second_table(line, table, num_points, spacing, s_min, phi, attempts)
    scale = max(line.mags[t] for t in ts if t in line.mags)
    output_noise = output_rel = None
    if table.output_noise is not None:
        output_noise = table.output_noise
        peak = np.max(np.abs(np.array([line.thetas[t] for t in ts])), axis=0)
        output_rel = np.divide(output_noise, peak, out=np.zeros_like(output_noise),
                               where=peak > 0)
    sigma = table.noise if status in ("ok", "exact", "too_large") else np.nan
    need = 2 if scheme == "forward" else 3
    lines = [line]
    if status == "ok":
        _refine_derivatives(line, sigma, scale, need, phi)
        # The other lines start at the span that worked on the first.
        start = _derivative(line, need, sigma, scale)[2] or spacing
        for u in U[1:]:
            other = _Line(problem, phi, u, theta0, quantity, g_theta, evaluator, seed)
            lines.append(other)
            if other.evaluate([start, -start] if need == 2 else
                              [start, -start, 2 * start, -2 * start]):
                continue
            _refine_derivatives(other, sigma, scale, need, phi)
    s_for_derivs = sigma if np.isfinite(sigma) else 0.0
    per_line = []
    for ln in lines:
        mu2 = _derivative(ln, 2, s_for_derivs, scale)[0]
        mu3 = _derivative(ln, 3, s_for_derivs, scale)[0]
        per_line.append((mu2, mu3, _slope(ln, s_for_derivs, mu3)))
    curvature, third, slope = (_rms(col) for col in zip(*per_line))

    steps, errors = {}, {}
    for sch, mu in (("forward", curvature), ("central", third)):
        if status == "ok":
            h = noise_optimal_step(sigma, mu, sch) if np.isfinite(mu) else np.inf
            h = float(min(max(h, min_step(phi)), max_step(phi)))
        else:
            h = default_step(phi, sch)
        steps[sch] = h
        errors[sch] = (predicted_fd_error(h, sigma, mu, sch)
                       if np.isfinite(sigma) and np.isfinite(mu) else np.nan)

    est = NoiseEstimate(
        noise=float(sigma), relative_noise=float(sigma / scale) if scale > 0 else np.nan,
        scale=float(scale), curvature=float(curvature), third_derivative=float(third),
        slope=float(slope), spacing=float(spacing), status=status,
        nfev=sum(ln.nfev for ln in lines) + base_nfev, order=int(table.order),
        method=table.method, quantity=quantity, num_lines=len(lines),
        num_params=int(phi.size), phi_scale=scale_phi,
        step_forward=steps["forward"], step_central=steps["central"],
        predicted_error_forward=errors["forward"], predicted_error_central=errors["central"],
        output_noise=output_noise, output_relative_noise=output_rel,
        attempts=tuple(attempts), output_precision=table.precision,
        solver_time=sum(ln.solver_time for ln in lines) + base_solver_time)
    if warn:
        _maybe_warn(est, scheme, stacklevel + 1)
    return est


def _maybe_warn(est, scheme, stacklevel):
    if est.status == "too_small":
        warnings.warn(
            f"the inner solver's output did not change along the noise probe line even at "
            f"spacing {est.spacing:.1e} ({len(est.attempts)} tries): its printed precision "
            "is too coarse for finite differences, or it does not depend on phi. Print "
            "more digits or tighten the solver's tolerance; falling back to the default "
            f"step {est.step(scheme):.1e}.", NoiseWarning, stacklevel=stacklevel)
        return
    if est.status != "ok":
        return
    rel = est.relative_error(scheme)
    short = _printed_short(est)
    if not (rel > WARNING_THRESHOLD or short):
        return
    if short:
        what = (f"the solver's output is printed with {est.output_precision} significant "
                + ("digits" if est.method == "digits" else "bits (single precision)"))
    else:
        what = "noise in the solver's output"
    advice = ["print more significant digits in the solver's output (17 is exact)"
              if short else "print more significant digits in the solver's output",
              "tighten its convergence tolerance"]
    if scheme == "forward":
        advice.append(f"use scheme='central' (predicted {est.relative_error('central'):.1e})")
    warnings.warn(
        f"{what}, which limits the finite-difference gradient: the differenced quantity "
        f"carries ~{est.digits:.1f} significant digits (noise {est.noise:.1e}, relative "
        f"{est.relative_noise:.1e}), so {scheme} differences at the best step "
        f"h={est.step(scheme):.2e} have a predicted relative error of {rel:.1e}. To fix: "
        + "; ".join(advice) + ".", NoiseWarning, stacklevel=stacklevel)


def _printed_short(est):
    """Outputs printed with single precision or fewer digits (the 6 of a C stream)."""
    return ((est.method == "digits" and est.output_precision <= WARNING_DIGITS)
            or (est.method == "bits" and est.output_precision <= 24))


def auto_step(noise: NoiseEstimate, phi: np.ndarray, scheme: str) -> float:
    """The step ``step="auto"`` takes at ``phi`` from a (possibly older) estimate.

    The noise-optimal step when the probe found noise (clipped to the current
    ``[min_step(phi), max_step(phi)]``), else the scale-aware default at ``phi``.
    """
    if noise.status == "ok":
        return float(min(max(noise.step(scheme), min_step(phi)), max_step(phi)))
    return default_step(phi, scheme)


def check_noise_estimate(noise, num_params: int, quantity: str):
    """Validate a ``noise=`` argument handed to an estimator for reuse."""
    if noise is None:
        return None
    if not isinstance(noise, NoiseEstimate):
        raise FG2UTypeError(
            f"`noise` must be a fg2u_zo.NoiseEstimate (from estimate_noise or a previous "
            f"MetaGradient.noise) or None, got {type(noise).__name__}")
    if noise.num_params != num_params:
        raise FG2UValueError(
            f"`noise` was measured with N={noise.num_params} meta-parameters, but phi has "
            f"{num_params}; pass noise=None to measure it again")
    if noise.quantity != quantity:
        what = {"inner": "the projection <grad_theta f, S> (FG2UZO)",
                "value": "the objective F (BlackBoxES)"}
        raise FG2UValueError(
            f"`noise` was measured on {what[noise.quantity]}, but this estimator "
            f"differences {what[quantity]}; estimate it with "
            f"estimate_noise(..., through={quantity!r}) or pass noise=None")
    return noise


def difference_ratio(noise: NoiseEstimate, differences) -> NoiseEstimate:
    """The copy of ``noise`` an estimate reports, with its ``difference_to_noise``."""
    d = np.abs(np.asarray(differences, dtype=np.float64))
    d = d[np.isfinite(d)]
    if d.size == 0 or not np.isfinite(noise.noise):
        return noise
    median = float(np.median(d))
    ratio = median / noise.noise if noise.noise > 0 else np.inf
    return replace(noise, difference_to_noise=ratio)


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------

def probe_lines(rng, n, family="gaussian", num_lines=NUM_LINES):
    """Unit directions for the probe, drawn like the estimate's directions.

    The step is tuned to the derivatives along the probe lines, so those lines should
    look like the lines the differences are taken along: along a random gaussian line
    a separable function's third derivative is about N times smaller than along a
    coordinate axis.
    """
    V = sample_directions(family, n, num_lines, rng)
    return V / np.linalg.norm(V, axis=1, keepdims=True)


def estimate_noise(problem, phi, *, rng=None, evaluator=None, scheme="central",
                   num_points=NUM_POINTS, num_lines=NUM_LINES, directions="gaussian",
                   spacing=None, max_tries=4, through="auto", warn=True, backend=None,
                   n_jobs=None, **evaluator_options) -> NoiseEstimate:
    """Estimate the computational noise of the inner solver at ``phi``, and the steps.

    Evaluates the solver at ``num_points`` equally spaced points ``phi + t u`` along a
    random unit direction ``u`` (``phi`` itself is the middle one) and reads the noise
    level off the difference table (ECnoise, Moré and Wild 2011); retries with a
    spacing 100 times larger when the outputs do not change, 100 times smaller when
    smooth variation hides the noise, bisecting once both have been seen. Then measures
    ``|f''|`` and ``|f'''|`` with differences that rise above the noise (adding a few
    points on the same line if needed) and derives the noise-optimal step of each
    scheme (Moré and Wild 2012). Every evaluation goes through the Evaluator.

    Parameters
    ----------
    problem : BilevelProblem
    phi : array_like, shape (N,)
    rng : None, int or numpy.random.Generator
        Draws the probe direction (and the common seed handed to stochastic solvers).
    evaluator : Evaluator, optional
        Reuse an evaluator; otherwise ``backend``, ``n_jobs`` and
        ``**evaluator_options`` configure a temporary one.
    scheme : {"central", "forward"}
        The scheme whose derivative (``|f'''|`` or ``|f''|``) is refined with extra
        points when the table does not suffice, and whose predicted error decides the
        warning; the other is estimated from the same points.
    num_points : int
        Points on the line (>= 4; default 9, difference orders 1 to 8).
    num_lines : int
        Lines the derivatives are measured along (default 3; the first also gives
        the noise). More lines make the step less dependent on one direction's
        curvature, at 2 (forward) or 4 (central) solves or more per line.
    directions : str
        Family the lines are drawn from (as the estimator's ``directions``).
    spacing : float, optional
        First spacing (default ``1e-3 * max(1, rms(phi))``).
    max_tries : int
        Tables tried at most (default 4).
    through : {"auto", "inner", "value"}
        The scalar examined: ``"inner"`` the projection ``<grad_theta f(theta0), S(phi +
        t u)>`` that FG2UZO differences, ``"value"`` the objective ``F`` that
        BlackBoxES differences; ``"auto"``: ``"inner"`` when the outer loss is
        differentiable.
    warn : bool
        Raise :class:`~fg2u_zo.NoiseWarning` when output precision limits the
        gradient: the predicted relative error of ``scheme`` exceeds
        ``WARNING_THRESHOLD`` (1e-4), the outputs are printed with at most
        ``WARNING_DIGITS`` (7) significant digits or in single precision, or they
        never changed along the probe line.

    Returns
    -------
    NoiseEstimate
        ``nfev`` counts every solve, the one at ``phi`` included.

    Warns
    -----
    NoiseWarning
        When output precision limits the finite-difference accuracy.

    Examples
    --------
    A solver that prints 6 significant digits:

    >>> import numpy as np, fg2u_zo as fz
    >>> def solver(phi):
    ...     return np.array([float(f"{x:.5e}") for x in np.exp(phi) + phi ** 2])
    >>> problem = fz.BilevelProblem(inner=solver,
    ...                             outer=lambda theta, phi: 0.5 * (theta ** 2).sum())
    >>> est = fz.estimate_noise(problem, np.array([0.3, -0.2, 0.5]), rng=0, warn=False)
    >>> est.status, est.method, est.output_precision
    ('ok', 'digits', 6)
    >>> bool(1e-3 < est.step("central") < 1e-1)  # 6e-6 for outputs exact to the double
    True
    """
    # Imported here: estimator.py imports the evaluator, which this module does not need
    # at import time.
    from ..estimators.base import Estimator

    phi = check_phi(phi, problem.num_params)
    check_choice(scheme, "scheme", ("forward", "central"))
    check_choice(through, "through", ("auto", "inner", "value"))
    num_points = check_positive_int(num_points, "num_points", minimum=4)
    num_lines = check_positive_int(num_lines, "num_lines")
    check_choice(directions, "directions", DIRECTION_FAMILIES)
    max_tries = check_positive_int(max_tries, "max_tries")
    if spacing is not None and not (np.isfinite(spacing) and spacing > 0):
        raise FG2UValueError(f"`spacing` must be > 0, got {spacing}")
    if through == "auto":
        through = "inner" if problem.differentiable_outer else "value"
    if through == "inner":
        problem.require_differentiable_outer("estimate_noise(through='inner')")
    rng = as_generator(rng)
    seed = int(rng.integers(2**31 - 1))
    U = probe_lines(rng, phi.size, directions, num_lines)
    with Estimator._evaluator_scope(evaluator, backend, n_jobs, evaluator_options) as ev:
        theta0, stats = ev.solve(problem.inner, phi, seed=seed)
        g_theta = problem.outer_parts(theta0, phi)[1] if through == "inner" else None
        return probe_noise(problem, phi, U, theta0=theta0, g_theta=g_theta, quantity=through,
                           evaluator=ev, seed=seed, scheme=scheme, num_points=num_points,
                           spacing=spacing, max_tries=max_tries, warn=warn, stacklevel=2,
                           base_nfev=stats.nfev, base_solver_time=stats.solver_time)


def noise_needs_refresh(previous, result=None, *, phi=None, age=None, max_age=None,
                        min_age=1, scale_change=2.0, min_difference_to_noise=10.0) -> bool:
    """Whether a kept :class:`NoiseEstimate` should be measured again.

    Meant for an outer loop that passes ``noise=`` to its estimator: measure once, reuse
    (no extra solves), and refresh when this returns True. The reasons, in order:

    1. there is no estimate yet (``previous is None``) -> True;
    2. ``age`` (outer steps since it was measured) is below ``min_age`` -> False
       (never re-probe at every step, even when the diagnostics below stay poor, e.g.
       near a stationary point where the differences are small by nature);
    3. ``age >= max_age`` -> True (a periodic refresh);
    4. phi's size changed, or its scale ``max(1, rms(phi))`` moved by more than a
       factor ``scale_change`` -> True (steps are lengths in phi-space);
    5. the last probe failed or saw no change of the outputs ("failed", "too_small")
       -> True;
    6. the latest estimate's finite differences were within ``min_difference_to_noise``
       times the noise (``result.noise.difference_to_noise``) -> True: the step is
       drowned in noise, as happens when the curvature or the noise changed since.

    Parameters
    ----------
    previous : NoiseEstimate or None
        The estimate in use.
    result : MetaGradient, optional
        The latest estimate made with it (its ``noise`` carries the differences'
        size).
    phi : array_like, optional
        The current meta-parameters.
    age, max_age, min_age : int, optional
        Outer steps since ``previous`` was measured, and the bounds described above.
    scale_change : float
        Allowed factor of change of phi's scale.
    min_difference_to_noise : float
        Smallest acceptable median ``|difference| / noise``.

    Returns
    -------
    bool

    Examples
    --------
    >>> import numpy as np, fg2u_zo as fz
    >>> def solver(phi):
    ...     return np.round(np.sin(phi) + 2.0, 8)
    >>> problem = fz.BilevelProblem(inner=solver,
    ...                             outer=lambda theta, phi: (theta ** 2).sum())
    >>> phi = np.array([0.1, 0.2])
    >>> est = fz.FG2UZO(num_directions=2)
    >>> g = est.estimate(problem, phi, rng=0)          # probes the noise
    >>> g2 = est.estimate(problem, phi, rng=1, noise=g.noise)   # reuses it
    >>> g2.nfev == 2 * 2 + 1
    True
    >>> fz.noise_needs_refresh(g.noise, g2, phi=phi, age=1)
    False
    >>> fz.noise_needs_refresh(g.noise, g2, phi=10 * phi + 5, age=1)
    True
    """
    if previous is None:
        return True
    if not isinstance(previous, NoiseEstimate):
        raise FG2UTypeError(
            f"`previous` must be a NoiseEstimate or None, got {type(previous).__name__}")
    if age is not None and age < min_age:
        return False
    if age is not None and max_age is not None and age >= max_age:
        return True
    if phi is not None:
        phi = np.asarray(phi, dtype=np.float64).ravel()
        if phi.size != previous.num_params:
            return True
        ratio = step_scale(phi) / previous.phi_scale
        if not 1.0 / scale_change <= ratio <= scale_change:
            return True
    if previous.status in ("failed", "too_small"):
        return True
    latest = getattr(result, "noise", None) if result is not None else None
    if isinstance(latest, NoiseEstimate) and latest.difference_to_noise is not None:
        if latest.difference_to_noise < min_difference_to_noise:
            return True
    return False
