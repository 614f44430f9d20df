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

Public: :func:`estimate_noise` here; :class:`NoiseEstimate` and
:func:`noise_needs_refresh` in their own modules, all re-exported by
:mod:`fg2u_zo.noise`. The ideas live in one module each: :mod:`.noise_estimate` (the result type),
:mod:`.table` (difference table, printed precision), :mod:`.line` (evaluations and
derivatives along a line), :mod:`.advice` (the warning), :mod:`.reuse` (reusing an
estimate, refreshing it); this module runs the probe.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ..directions import DIRECTION_FAMILIES, sample_directions
from ..errors import FG2UValueError
from ..evaluation.evaluator import evaluator_scope
from ..evaluation.requests import Request, drive, new_seed
from ..validation import as_generator, check_choice, check_phi, check_positive_int
from .advice import check_warned, warn_about_noise
from .line import ProbeLine, measured_derivative, measured_slope, refine_derivatives
from .noise_estimate import NoiseEstimate
from .steps import default_step, max_step, min_step, noise_optimal_step, predicted_fd_error, step_scale
from .table import TableDecision, classify_table

# Names that lived in this module before it was split by idea; new code imports them
# from fg2u_zo.noise.
from .reuse import (auto_step, check_noise_estimate, difference_ratio,  # noqa: F401
                    noise_needs_refresh)

__all__ = ["estimate_noise", "probe_noise", "probe_lines", "NUM_POINTS", "NUM_LINES",
           "RELATIVE_SPACING", "MAX_RELATIVE_SPACING", "EXACT_RELATIVE_NOISE"]

_EPS = np.finfo(np.float64).eps

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


def _noise_table(line, num_points, spacing, phi):
    """Evaluate one table at ``spacing`` and classify it (a plan)."""
    center = (num_points - 1) // 2
    ts = [float((i - center) * spacing) for i in range(num_points)]
    ts[center] = 0.0
    failed = yield from line.evaluate(ts)
    if failed:
        return TableDecision("failed"), ts
    f = np.array([line.f(t) for t in ts])
    thetas = np.array([line.thetas[t] for t in ts])
    scale = max(line.mags[t] for t in ts)
    table = classify_table(f, scale, thetas, line)
    if table.status == "ok" and table.noise <= EXACT_RELATIVE_NOISE * scale:
        table = replace(table, status="exact")
    return table, ts


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
    differences. A plan.
    """
    shrink = float(np.clip(math.sqrt(3.0 * table.levels[1] / table.noise), 3.0, 100.0))
    fine, _ = yield from _noise_table(line, num_points, max(spacing / shrink, s_min), phi)
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


def probe_noise(problem, phi, U, *, theta0, g_theta=None, quantity="inner", seed=None,
                request=None, scheme="central", num_points=NUM_POINTS, spacing=None,
                max_tries=4, warn=True, base_nfev=0, base_solver_time=0.0,
                warned=None):
    """The noise probe, as a plan; ``theta0 = S(phi)`` is known.

    ``U`` holds unit directions, one per row: the noise is read along the first, the
    derivatives are measured along each and combined by their root mean square (the
    aggregate truncation error of many directional differences is the RMS of theirs,
    and derivatives along a single line can be far from typical). Shared by
    :func:`estimate_noise`, the estimators and the Gauss–Newton stepper (which pass
    their own base solve, so the probe costs ``num_points - 1`` solves plus retries
    and a few points per line for the derivatives).

    Each group of points along a line is one request: by default
    ``Request(problem.inner, points, seed=seed, warm_start=theta0, ...)``; a caller
    whose points live elsewhere (the stepper's unconstrained ``z``) passes
    ``request(points, on_result, warm_start, expected_shape) -> Request``.

    The NoiseWarning (``warn=True``) points at the first frame outside the package
    and is skipped when its key is already in ``warned`` (see
    :mod:`fg2u_zo.noise.advice`).
    """
    if request is None:
        def request(points, on_result, warm_start, expected_shape):
            return Request(problem.inner, points, seed=seed, warm_start=warm_start,
                           expected_shape=expected_shape, on_result=on_result,
                           label="probe")
    U = _distinct_lines(np.atleast_2d(np.asarray(U, dtype=np.float64)))
    line = ProbeLine(problem, phi, U[0], theta0, quantity, g_theta, request, seed)
    scale_phi = step_scale(phi)
    s_min, s_max = min_step(phi), MAX_RELATIVE_SPACING * scale_phi
    spacing = RELATIVE_SPACING * scale_phi if spacing is None else float(spacing)
    attempts = []
    too_small_at, too_large_at = None, None
    for _ in range(max_tries):
        table, ts = yield from _noise_table(line, num_points, spacing, phi)
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
        table = yield from _second_table(line, table, num_points, spacing, s_min, phi,
                                         attempts)
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
        yield from refine_derivatives(line, sigma, scale, need, phi)
        # The other lines start at the span that worked on the first.
        start = measured_derivative(line, need, sigma, scale)[2] or spacing
        for u in U[1:]:
            other = ProbeLine(problem, phi, u, theta0, quantity, g_theta, request, seed)
            lines.append(other)
            if (yield from other.evaluate([start, -start] if need == 2 else
                                          [start, -start, 2 * start, -2 * start])):
                continue
            yield from refine_derivatives(other, sigma, scale, need, phi)
    s_for_derivs = sigma if np.isfinite(sigma) else 0.0
    per_line = []
    for ln in lines:
        mu2 = measured_derivative(ln, 2, s_for_derivs, scale)[0]
        mu3 = measured_derivative(ln, 3, s_for_derivs, scale)[0]
        per_line.append((mu2, mu3, measured_slope(ln, s_for_derivs, mu3)))
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

    # Exact ties between neighbouring points of the first line (ties everywhere is the
    # "too_small" case): a piecewise-constant response, whatever the table concluded.
    jumps = np.diff([line.values[t] for t in sorted(line.values)])
    flat = float(np.mean(jumps == 0)) if jumps.size and np.any(jumps != 0) else 0.0
    est = NoiseEstimate(
        flat_fraction=flat,
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
        warn_about_noise(est, scheme, warned)
    return est


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
                   spacing=None, max_tries=4, through="auto", warn=True, warned=None,
                   backend=None, n_jobs=None, **evaluator_options) -> NoiseEstimate:
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
        gradient: the predicted relative error of one ``scheme`` difference exceeds
        :data:`fg2u_zo.noise.advice.WARNING_THRESHOLD` (1e-2), or the outputs never
        changed along the probe line. The warning points at the caller's line.
    warned : set, optional
        Keys of the warnings already shown in this run: a warning whose key is in it is
        not shown again, and a shown one adds its key. Pass the same set to every
        call of a run to be warned once.

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
    check_warned(warned)
    rng = as_generator(rng)
    seed = new_seed(rng)
    U = probe_lines(rng, phi.size, directions, num_lines)

    def plan():
        reply = yield Request(problem.inner, [phi], seed=seed, base=True, label="base")
        theta0 = reply.thetas[0]
        g_theta = problem.outer_parts(theta0, phi)[1] if through == "inner" else None
        return (yield from probe_noise(
            problem, phi, U, theta0=theta0, g_theta=g_theta, quantity=through, seed=seed,
            scheme=scheme, num_points=num_points, spacing=spacing, max_tries=max_tries,
            warn=warn, base_nfev=reply.nfev, base_solver_time=reply.solver_time,
            warned=warned))

    with evaluator_scope(evaluator, backend, n_jobs, evaluator_options) as ev:
        return drive(plan(), ev)
