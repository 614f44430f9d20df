"""Compare an estimator with a reference gradient, like ``scipy.optimize.check_grad``,
and say whether the difference is within what the estimator's own error explains."""

from __future__ import annotations

import numpy as np

from .errors import FG2UValueError
from .validation import as_generator
from .result import GradientCheck

__all__ = ["check_meta_gradient", "gradient_verdict"]

#: Standard errors of the difference a check allows (as the unbiasedness tests do).
NUM_STDERR = 5.0

#: Relative error a check allows on top of the Monte-Carlo spread: the truncation and
#: noise error of finite differences (a reference by ``CoordinateFD`` has it too).
RTOL = 1e-3


def check_meta_gradient(problem, phi, *, estimator=None, reference=None, rng=0,
                        rtol=RTOL, num_stderr=NUM_STDERR,
                        **estimate_options) -> GradientCheck:
    """Relative error, cosine and a pass/fail verdict of an estimator against a reference.

    Parameters
    ----------
    problem : BilevelProblem
    phi : array_like, shape (N,)
    estimator : Estimator, optional
        Default: ``FG2UZO(num_directions=16)`` (``BlackBoxES`` when the outer loss is
        not differentiable).
    reference : Estimator, optional
        Default: ``RGU()`` when the problem has a torch inner solver, else
        ``CoordinateFD()`` (2N + 1 solves).
    rng : None, int or numpy.random.Generator
    rtol : float
        Relative error allowed for the finite differences' truncation and noise (the
        predicted error of a noise probe replaces it when larger). Default 1e-3.
    num_stderr : float
        Standard errors of the difference allowed for the Monte-Carlo spread of
        random directions. Default 5.
    **estimate_options
        Passed to both ``estimate`` calls (``backend``, ``n_jobs``, ``evaluator`` ...).

    Returns
    -------
    GradientCheck
        With ``rel_err = ||g - g_ref|| / ||g_ref||``, ``cosine``, and the verdict
        ``passed`` with the ``tolerance`` it used and its ``reason``
        (see :func:`gradient_verdict`).

    Examples
    --------
    >>> import numpy as np, fg2u_zo as fz
    >>> problem = fz.BilevelProblem(inner=lambda phi: np.sin(phi),
    ...                             outer=lambda theta, phi: (theta ** 2).sum())
    >>> check = fz.check_meta_gradient(
    ...     problem, np.array([0.3, 0.7]),
    ...     estimator=fz.FG2UZO(num_directions=2, directions="coordinate"))
    >>> bool(check.rel_err < 1e-6), check.passed
    (True, True)
    """
    # Imported here: the estimators import this package's modules at import time.
    from .estimators.exact import RGU
    from .estimators.zeroth_order import FG2UZO, BlackBoxES, CoordinateFD

    if estimator is None:
        estimator = (FG2UZO(num_directions=16) if problem.differentiable_outer
                     else BlackBoxES(num_directions=16))
    if reference is None:
        reference = (RGU() if problem.inner_torch is not None and problem.differentiable_outer
                     else CoordinateFD())
    for name, value in (("rtol", rtol), ("num_stderr", num_stderr)):
        if not (isinstance(value, (int, float, np.floating)) and np.isfinite(value)
                and value >= 0):
            raise FG2UValueError(f"`{name}` must be a finite number >= 0, got {value!r}")
    rng = as_generator(rng)
    est = estimator.estimate(problem, phi, rng=rng, **estimate_options)
    ref = reference.estimate(problem, phi, rng=rng, **estimate_options)
    ref_norm = float(np.linalg.norm(ref.grad))
    diff = float(np.linalg.norm(est.grad - ref.grad))
    rel_err = diff / ref_norm if ref_norm > 0 else diff
    denom = float(np.linalg.norm(est.grad)) * ref_norm
    cosine = float(np.dot(est.grad, ref.grad) / denom) if denom > 0 else float("nan")
    tolerance, passed, reason = gradient_verdict(est, ref, rtol=rtol, num_stderr=num_stderr)
    return GradientCheck(rel_err=rel_err, cosine=cosine, estimate=est, reference=ref,
                         tolerance=tolerance, passed=passed, reason=reason)


def _predicted_relative_error(g) -> float:
    """The noise probe's predicted relative error of one difference, or 0."""
    if g.noise is None or g.scheme is None:
        return 0.0
    err = g.noise.relative_error(g.scheme)
    return float(err) if np.isfinite(err) else 0.0


def gradient_verdict(estimate, reference, *, rtol=RTOL, num_stderr=NUM_STDERR):
    """``(tolerance, passed, reason)`` for ``||estimate.grad - reference.grad||``.

    ``tolerance = num_stderr * sqrt(||se||^2 + ||se_ref||^2) + max(rtol, num_stderr *
    e, num_stderr * e_ref) * ||g_ref||``, where ``se`` are the per-coordinate standard
    errors (``E ||g - E g||^2 = ||se||^2``) and ``e`` the predicted relative error of
    one finite difference from a noise probe (0 without one). A degenerate estimate
    (every difference below the output resolution), a non-finite gradient or an
    infinite standard error (one random direction) fails with the reason.
    """
    for name, g in (("estimate", estimate), ("reference", reference)):
        if not np.all(np.isfinite(g.grad)):
            return float("nan"), False, f"the {name} gradient is not finite"
        if g.degenerate:
            return float("nan"), False, (
                f"every finite difference of the {name} was zero or below the output "
                f"resolution (step {g.step:.3g}): use step='auto' or a larger step")
    se = float(np.sqrt(np.sum(np.square(estimate.stderr))
                       + np.sum(np.square(reference.stderr))))
    if not np.isfinite(se):
        return float("nan"), False, (
            "no finite standard error to judge by (a single random direction); use "
            "num_directions >= 2")
    ref_norm = float(np.linalg.norm(reference.grad))
    relative = max(rtol, num_stderr * _predicted_relative_error(estimate),
                   num_stderr * _predicted_relative_error(reference))
    tolerance = num_stderr * se + relative * ref_norm
    diff = float(np.linalg.norm(estimate.grad - reference.grad))
    budget = (f"{num_stderr:g} standard errors ({num_stderr * se:.3g}) + {relative:.1e} x "
              f"|g_ref| ({relative * ref_norm:.3g})")
    if diff <= tolerance:
        return tolerance, True, f"|g - g_ref| = {diff:.3g} <= {tolerance:.3g} = {budget}"
    return tolerance, False, f"|g - g_ref| = {diff:.3g} > {tolerance:.3g} = {budget}"
