"""Compare an estimator with a reference gradient, like ``scipy.optimize.check_grad``."""

from __future__ import annotations

import numpy as np

from .validation import as_generator
from .result import GradientCheck

__all__ = ["check_meta_gradient"]


def check_meta_gradient(problem, phi, *, estimator=None, reference=None, rng=0,
                        **estimate_options) -> GradientCheck:
    """Relative error and cosine of an estimator against a reference gradient.

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
    **estimate_options
        Passed to both ``estimate`` calls (``backend``, ``n_jobs``, ``evaluator`` ...).

    Returns
    -------
    GradientCheck
        With ``rel_err = ||g - g_ref|| / ||g_ref||`` and ``cosine``.

    Examples
    --------
    >>> import numpy as np, fg2u_zo as fz
    >>> problem = fz.BilevelProblem(inner=lambda phi: np.sin(phi),
    ...                             outer=lambda theta, phi: (theta ** 2).sum())
    >>> check = fz.check_meta_gradient(
    ...     problem, np.array([0.3, 0.7]),
    ...     estimator=fz.FG2UZO(num_directions=2, directions="coordinate"))
    >>> bool(check.rel_err < 1e-6)
    True
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
    rng = as_generator(rng)
    est = estimator.estimate(problem, phi, rng=rng, **estimate_options)
    ref = reference.estimate(problem, phi, rng=rng, **estimate_options)
    ref_norm = float(np.linalg.norm(ref.grad))
    diff = float(np.linalg.norm(est.grad - ref.grad))
    rel_err = diff / ref_norm if ref_norm > 0 else diff
    denom = float(np.linalg.norm(est.grad)) * ref_norm
    cosine = float(np.dot(est.grad, ref.grad) / denom) if denom > 0 else float("nan")
    return GradientCheck(rel_err=rel_err, cosine=cosine, estimate=est, reference=ref)
