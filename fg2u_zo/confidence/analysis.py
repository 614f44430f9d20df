""":func:`uncertainty`: the argument checks and the order of the steps.

1. the inner solver's Jacobian at the fit, one group of differences
   (:mod:`.jacobian`);
2. the Gaussian approximation in ``z``: least squares or Laplace, its covariance and
   spectrum (:mod:`.covariance`);
3. the intervals: linear (Student's t or normal quantile), or by profiling
   (:mod:`.profile`, :mod:`.fits`);
4. what the data leave unconstrained (:mod:`.identifiability`).
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import FG2UTypeError, FG2UValueError, FG2UWarning
from ..noise.advice import user_stacklevel
from ..noise.noise_estimate import NoiseEstimate
from ..noise.steps import RELATIVE_STEP, check_step
from ..validation import as_generator, check_choice, check_phi
from .covariance import (laplace_precision, least_squares_model, quantile,
                         spectrum_from_jacobian, spectrum_from_precision)
from .identifiability import findings, warn_findings
from .prediction import check_confidence
from .result import Uncertainty

__all__ = ["uncertainty", "METHODS", "SCHEMES"]

METHODS = ("linear", "profile")
SCHEMES = ("forward", "central")
_EPS = np.finfo(np.float64).eps


def _phi_of(result, num_params):
    phi = getattr(result, "phi", None)
    if phi is None:
        if isinstance(result, (np.ndarray, list, tuple)):
            phi = result
        else:
            raise FG2UTypeError(
                "`result` must be the result of a fit (fz.minimize, fz.multistart, "
                "AskTell.result(): anything with .phi) or phi itself as an array; got "
                f"{type(result).__name__}")
    return check_phi(phi, num_params, name="result.phi")


def _resolve_transform(transform, bounds, result, n):
    from ..outer.transforms import ParameterTransform, as_bounds

    if isinstance(transform, ParameterTransform):
        T = transform
    else:
        kept = getattr(result, "transform", None)
        if kept is not None and not isinstance(kept, ParameterTransform):
            raise FG2UTypeError(f"`result.transform` must be a ParameterTransform, got "
                                f"{type(kept).__name__}")
        if transform is None and bounds is None and kept is not None:
            T = kept
        else:
            if bounds is None and kept is not None:
                b = kept.bounds
            else:
                b = as_bounds(bounds, n)
            spec = transform if transform is not None else (
                list(kept.kinds) if kept is not None else None)
            T = ParameterTransform.from_spec(spec, n, b)
    if len(T.kinds) != n:
        raise FG2UValueError(f"`transform` has {len(T.kinds)} entries for N = {n} parameters")
    return T


def _names(names, n):
    if names is None:
        return tuple(f"phi[{i}]" for i in range(n))
    if isinstance(names, str) or not all(isinstance(s, str) for s in names):
        raise FG2UTypeError(f"`names` must be a sequence of {n} strings, got {names!r}")
    names = tuple(names)
    if len(names) != n:
        raise FG2UValueError(f"`names` has {len(names)} entries for N = {n} parameters")
    return names


def _sigma(sigma, loss):
    if sigma is None:
        return None
    if loss is None:
        raise FG2UValueError(
            "`sigma` applies to a fz.LeastSquares outer loss; a likelihood outer loss "
            "already holds the noise level (pass sigma=None)")
    from ..losses import check_per_datum
    k = loss.data.size
    return np.broadcast_to(check_per_datum(sigma, "sigma", k, positive=True), (k,)).copy()


def _default_rcond(differences):
    """100 times the relative accuracy of one difference: the noise probe's prediction,
    else ``max(h**p, eps / h)`` (p = 1 forward, 2 central) at the step used."""
    noise, h, scheme = differences.noise, differences.step, differences.scheme
    rel = np.nan
    if noise is not None and noise.status == "ok":
        rel = noise.relative_error(scheme)
    if not (np.isfinite(rel) and rel > 0):
        rel = max(h if scheme == "forward" else h * h, _EPS / h)
    return float(min(max(100.0 * rel, 1e-12), 1e-2))


def _fit_step(differences):
    """The relative forward step of the profile fits' Gauss–Newton models."""
    noise = differences.noise
    if differences.scheme == "forward":
        return differences.step
    if noise is not None and noise.status == "ok":
        return float(noise.step("forward"))
    return float(RELATIVE_STEP["forward"])


def uncertainty(result, problem, *, confidence=0.95, method="linear", sigma=None, names=None,
                transform=None, bounds=None, scheme="forward", step="auto", noise=None,
                rcond=None, warn=True, rng=None, evaluator=None, backend=None, n_jobs=None,
                **evaluator_options) -> Uncertainty:
    """Covariance, confidence intervals and identifiability of a calibration at its fit.

    The inner solver's Jacobian at ``result.phi`` is measured by one parallel group of
    finite differences (noise-aware steps, through an :class:`~fg2u_zo.Evaluator`), and
    the outer loss is approximated by a Gaussian in the fit's unconstrained variable
    ``z`` (``phi = T(z)``):

    - for a :class:`~fg2u_zo.LeastSquares` loss, ``cov = s**2 (J^T W J)^-1`` with
      ``s**2 = 2 F / (M - N)`` in the loss's units (``sigma=None``, as
      ``scipy.optimize.curve_fit(absolute_sigma=False)``) or from the given absolute
      ``sigma``; intervals from Student's t with ``M - N`` degrees of freedom (normal
      quantiles with a given ``sigma``). A ``regularization`` is a Gaussian prior: it
      adds its Hessian to the precision;
    - for any other outer loss, which must be a *negative log-likelihood* of the data
      (up to a constant; not a mean misfit, whose scale says nothing about the noise),
      the Laplace covariance: the inverse of the generalized Gauss–Newton Hessian
      ``[J; T']^T (Hessian of f) [J; T']``; normal quantiles.

    With ``transform="log"`` (or ``"logit"``, or the run's transform) the interval is
    symmetric in ``z`` and mapped back: asymmetric in ``phi``. ``method="profile"``
    replaces the linear intervals by profile-likelihood ones. When the data leave a
    combination unconstrained, or a parameter's interval spans more than a decade, an
    :class:`~fg2u_zo.IdentifiabilityWarning` names the parameters and the combination.

    Parameters
    ----------
    result : OptimizeResult, another result with ``.phi``, or array_like of shape (N,)
        The fit. Its ``transform`` (an :class:`OptimizeResult` of :func:`fg2u_zo.minimize`
        has one) is used unless ``transform=`` overrides it.
    problem : BilevelProblem
        The calibrated problem, with a differentiable (torch) outer loss.
    confidence : float
        Level of the intervals, in (0, 1).
    method : {"linear", "profile"}
        ``"linear"``: from the covariance. ``"profile"``: where the loss, re-minimized
        over the other parameters (Gauss–Newton runs, warm-started, the fits of all
        parameters side by side), stays within the threshold matching the linear
        method's quantile (``t**2`` with ``M - N`` dof, else chi-square(1)): honest where
        the model is far from linear; open (``inf`` or a bound) where the data do not
        bound it. Costs a few fits per side.
    sigma : None, float or array_like of shape (K,)
        Least squares only: absolute standard deviations of the data. None: estimated
        from the residuals.
    names : sequence of str, optional
        Parameter names for the report and the warning (default ``phi[i]``).
    transform : None, "identity", "log", "logit", per-parameter names or ParameterTransform
        Overrides the result's transform.
    bounds : (lo, hi), optional
        Bounds for ``transform`` (``"logit"`` needs them); default: the result's.
    scheme : {"forward", "central"}
        Differences of the Jacobian: N + 1 solves (forward) or 2N + 1 (central).
    step : "auto" or float
        The relative step ``r`` (coordinate j of z moves by ``r * max(1, |z_j|)``);
        ``"auto"`` measures the noise first (:func:`fg2u_zo.estimate_noise` in those
        scaled coordinates, 8 solves or more, counted in ``nfev``).
    noise : NoiseEstimate, optional
        Reuse the noise estimate of an earlier call (``Uncertainty.noise``) instead of a
        probe.
    rcond : float, optional
        A direction whose singular value is below ``rcond`` times the largest (of the
        equilibrated precision) is unconstrained. Default: 100 times the relative
        accuracy of one difference.
    warn : bool
        Issue the :class:`~fg2u_zo.IdentifiabilityWarning` (the findings are in
        ``Uncertainty.identifiability`` either way).
    rng : None, int or numpy.random.Generator
        Seeds the noise probe's lines and the profile fits' directions.
    evaluator : Evaluator, optional
        Run the solves on it (the profile fits of one round share its parallel groups).
    backend, n_jobs, **evaluator_options
        Otherwise, options of a temporary :class:`~fg2u_zo.Evaluator`.

    Returns
    -------
    Uncertainty

    Raises
    ------
    FG2UTypeError, FG2UValueError
        A result without phi, a problem that is not a BilevelProblem, a numpy outer loss,
        ``M <= N`` with ``sigma=None``, a bad option (the message names it).

    Warns
    -----
    IdentifiabilityWarning
        A combination is unconstrained, or an interval spans more than a decade.
    FG2UWarning
        The fit is not a minimum (the precision has a negative eigenvalue, or a profile
        fit found a lower loss).

    Examples
    --------
    >>> import numpy as np, fg2u_zo as fz
    >>> t = np.linspace(0.0, 1.0, 20)
    >>> A = np.column_stack([np.ones_like(t), t])
    >>> y = A @ np.array([1.0, 2.0]) + 0.1 * np.random.default_rng(0).standard_normal(20)
    >>> problem = fz.BilevelProblem(inner=lambda phi: A @ phi, outer=fz.LeastSquares(y))
    >>> fit = np.linalg.lstsq(A, y, rcond=None)[0]
    >>> unc = fz.uncertainty(fit, problem, sigma=0.1, names=["a", "b"], rng=0)
    >>> bool(np.allclose(unc.stderr, 0.1 * np.sqrt(np.diag(np.linalg.inv(A.T @ A)))))
    True
    >>> unc.interval.shape, unc.dof
    ((2, 2), None)
    """
    from ..estimators.base import evaluator_scope
    from ..losses import LeastSquares
    from ..problem import BilevelProblem
    from .jacobian import difference_jacobian
    from .profile import profile_intervals

    if not isinstance(problem, BilevelProblem):
        raise FG2UTypeError(f"`problem` must be a fz.BilevelProblem, got "
                            f"{type(problem).__name__}")
    problem.require_differentiable_outer("fz.uncertainty")
    phi = _phi_of(result, problem.num_params)
    n = phi.size
    confidence = check_confidence(confidence)
    method = check_choice(method, "method", METHODS)
    scheme = check_choice(scheme, "scheme", SCHEMES)
    step = check_step(step)
    if noise is not None and not isinstance(noise, NoiseEstimate):
        raise FG2UTypeError(f"`noise` must be a NoiseEstimate (Uncertainty.noise) or None, "
                            f"got {type(noise).__name__}")
    if rcond is not None and (isinstance(rcond, bool) or not isinstance(rcond, (int, float))
                              or not 0 < rcond < 1):
        raise FG2UValueError(f"`rcond` must be a number in (0, 1), got {rcond!r}")
    names = _names(names, n)
    T = _resolve_transform(transform, bounds, result, n)
    z = T.inverse(phi)
    loss = problem.outer if isinstance(problem.outer, LeastSquares) else None
    sigma = _sigma(sigma, loss)
    rng = as_generator(rng)

    with evaluator_scope(evaluator, backend, n_jobs, evaluator_options) as ev:
        d = difference_jacobian(problem.inner, z, T, scheme=scheme, step=step, noise=noise,
                                rng=rng, evaluator=ev, name=problem.name)
        theta, J_z = d.theta, d.jacobian_z
        value = problem.outer_value(theta, phi)
        dphi = T.chain(z, np.ones(n))
        rcond = _default_rcond(d) if rcond is None else float(rcond)
        if loss is not None:
            model = least_squares_model(loss, J_z, theta, phi, dphi, sigma)
            spec = spectrum_from_jacobian(model.jacobian, rcond)
            unit, dof, noise_sd = model.unit, model.dof, model.noise_sd
        else:
            H = laplace_precision(problem, theta, phi, J_z, dphi)
            spec = spectrum_from_precision(H, rcond)
            # f is the negative log-likelihood: one unit of chi-square is 1/2 of it.
            unit, dof, noise_sd = 0.5, None, None
            if spec.min_eigenvalue < -rcond ** 2:
                warnings.warn(
                    "the Hessian of the loss at the fit has a negative eigenvalue "
                    f"({spec.min_eigenvalue:.2e} of the largest): the fit is not a minimum, "
                    "and the Laplace covariance does not apply there; fit to convergence "
                    "first", FG2UWarning, stacklevel=user_stacklevel())
        q = quantile(confidence, dof)
        linear_z = np.column_stack([z - q * spec.stderr, z + q * spec.stderr])
        linear = np.column_stack([T.forward(linear_z[:, 0]), T.forward(linear_z[:, 1])])
        is_open = np.column_stack([~np.isfinite(spec.stderr)] * 2)
        nfev = d.nfev
        profiles = None
        interval = linear
        if method == "profile":
            interval_z, is_open, profiles, spent = profile_intervals(
                problem, T, z, value, unit=unit, q=q * q, spectrum=spec, names=names,
                settings_step=_fit_step(d), evaluator=ev, rng=rng)
            nfev += spent
            interval = np.column_stack([p.interval for p in profiles]).T
            profiles = tuple(profiles)

    se = spec.stderr
    with np.errstate(invalid="ignore"):
        cov = spec.cov * np.outer(dphi, dphi)
        corr = spec.cov / np.outer(se, se)
    finite = np.isfinite(se) & (se > 0)
    corr[~np.outer(finite, finite)] = np.nan
    np.fill_diagonal(corr, np.where(finite, 1.0, np.nan))
    found = findings(spec, interval, is_open, names, T.kinds, confidence, rcond)
    if warn:
        warn_findings(found)
    return Uncertainty(
        phi=phi, z=z, value=float(value), names=names, transform=T, confidence=confidence,
        method=method, loss="least_squares" if loss is not None else "likelihood",
        theta=np.asarray(theta), jacobian=J_z / dphi[None, :], cov=cov, cov_z=spec.cov,
        stderr=dphi * se, corr=corr, interval=interval, linear_interval=linear,
        open=is_open, singular_values=spec.singular_values, directions=spec.directions,
        unconstrained=spec.unconstrained, condition_number=spec.condition_number, dof=dof,
        quantile=q, noise_sd=noise_sd, unit=unit, nfev=int(nfev), step=d.step,
        scheme=scheme, rcond=rcond, noise=d.noise, profiles=profiles,
        identifiability=tuple(found))
