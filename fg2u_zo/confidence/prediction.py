"""Using the Gaussian approximation: prediction bands and samples."""

from __future__ import annotations

import numbers

import numpy as np

from ..errors import FG2UTypeError, FG2UValueError
from ..validation import as_generator, check_positive_int
from .covariance import quantile as two_sided_quantile

__all__ = ["prediction_band", "sample", "check_confidence"]


def check_confidence(confidence) -> float:
    """Validate a confidence level: a number in (0, 1)."""
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real):
        raise FG2UTypeError(f"`confidence` must be a number in (0, 1) such as 0.95, got "
                            f"{confidence!r}")
    if not 0.0 < confidence < 1.0:
        raise FG2UValueError(f"`confidence` must be in (0, 1), e.g. 0.95 (not 95), got "
                             f"{confidence!r}")
    return float(confidence)


def _finite_cov(cov):
    """``cov`` with the entries of parameters of infinite variance zeroed, and those
    parameters."""
    infinite = ~np.isfinite(np.diag(cov))
    out = np.where(np.isfinite(cov), cov, 0.0)
    return out, infinite


def prediction_band(unc, predict, *, confidence=None, step=None, evaluator=None, backend=None,
                    n_jobs=None, **evaluator_options):
    """See :meth:`fg2u_zo.Uncertainty.predict`."""
    from ..estimators.base import evaluator_scope
    from .jacobian import difference_jacobian
    from .result import PredictionBand

    if not callable(predict):
        raise FG2UTypeError(f"`predict` must be a callable predict(phi) -> array, got "
                            f"{type(predict).__name__}")
    if confidence is None:
        confidence, q = unc.confidence, unc.quantile
    else:
        confidence = check_confidence(confidence)
        q = two_sided_quantile(confidence, unc.dof)
    step = unc.step if step is None else step
    with evaluator_scope(evaluator, backend, n_jobs, evaluator_options) as ev:
        d = difference_jacobian(predict, unc.z, unc.transform, scheme="forward", step=step,
                                rng=0, evaluator=ev, name="predict")
    G = d.jacobian_z
    cov, infinite = _finite_cov(unc.cov_z)
    var = np.einsum("ij,jk,ik->i", G, cov, G)
    stderr = np.sqrt(np.clip(var, 0.0, None))
    stderr[(np.abs(G[:, infinite]) > 0).any(axis=1)] = np.inf
    value = np.asarray(d.theta, dtype=np.float64).ravel()
    dphi = unc.transform.chain(unc.z, np.ones_like(unc.z))
    return PredictionBand(value=value, stderr=stderr, lower=value - q * stderr,
                          upper=value + q * stderr, jacobian=G / dphi[None, :],
                          confidence=confidence, nfev=d.nfev)


def sample(unc, size, rng=None) -> np.ndarray:
    """See :meth:`fg2u_zo.Uncertainty.sample`."""
    size = check_positive_int(size, "size")
    if unc.unconstrained.shape[1] or not np.all(np.isfinite(unc.cov_z)):
        raise FG2UValueError(
            "cannot sample: the data leave a combination of parameters unconstrained (its "
            "variance is infinite); see Uncertainty.unconstrained, and fix or reparametrize "
            "those parameters")
    rng = as_generator(rng)
    lam, V = np.linalg.eigh(0.5 * (unc.cov_z + unc.cov_z.T))
    root = V * np.sqrt(np.clip(lam, 0.0, None))
    z = unc.z + rng.standard_normal((size, unc.z.size)) @ root.T
    return np.array([unc.transform.forward(row) for row in z])
