"""The Gaussian approximation at the fit: precision, covariance and its spectrum.

Everything is in the run's unconstrained variable ``z`` (``phi = T(z)``), where the
approximation is made; :mod:`.analysis` maps intervals back to ``phi``.

Least squares (:class:`~fg2u_zo.LeastSquares`). The loss is
``f = factor * sum_i u_i**2 + regularization / 2 * ||D phi||**2`` with the weighted
residuals ``u_i = sqrt(w_i) (theta_i - y_i) / sigma_i`` (``factor`` = 1/(2K) for
``scale="mean"``, 1/2 for ``"sum"``). It is the negative log-likelihood of data with
noise of standard deviation ``s sigma_i / sqrt(w_i)``, divided by ``1 / (2 factor s**2)``,
and the ridge term is then a Gaussian prior. So the precision is
``J_r^T J_r / (factor s**2)`` with ``J_r`` the Jacobian of the loss's residual vector
(:meth:`~fg2u_zo.LeastSquares.residuals`: the data rows and the penalty rows), and

- ``sigma=None``: ``s**2`` is estimated as ``sum u_i**2 / (M - N)`` (M data with a
  non-zero weight), i.e. ``factor s**2 = 2 F_data / (M - N)`` in the loss's own units;
  ``cov = s**2 (J_u^T J_u)^-1`` without regularization, exactly
  ``scipy.optimize.curve_fit(absolute_sigma=False)``;
- ``sigma`` given (absolute standard deviations of the data): the data rows are
  ``J_sel / sigma_i``, as ``curve_fit(absolute_sigma=True)``; the prior keeps its
  weight relative to the data term, with ``s**2`` the mean of
  ``sigma_i**2 w_i / sigma_loss_i**2`` (a constant when the loss weights the data by
  ``1 / sigma**2``, as it must for the fit to be the maximum likelihood one).

Any other outer loss must be a negative log-likelihood ``f(theta, phi) = -log p(data |
phi) (- log prior)``: not a mean misfit, whose scale carries no information on the
noise. Its Laplace covariance is the inverse of the generalized Gauss–Newton Hessian
``[J; T'] ^T (Hessian of f in (theta, phi)) [J; T']`` (Hessian-vector products of the
torch loss, :func:`~fg2u_zo.outer.steppers.subspace_model.outer_model`).

The spectrum. The rank is decided on the precision with its columns equilibrated
(unit norm), so that it compares each column's size with its own finite-difference
accuracy: a singular value below ``rcond`` times the largest means the columns are
dependent within that accuracy, and the variance along that combination is infinite.
Such combinations are the ``unconstrained`` directions; every parameter taking part in
one (a component above :data:`INVOLVED`) gets an infinite standard error and NaN
covariances, the others the pseudo-inverse on the constrained directions. The singular
values reported are those of the whitened Jacobian in ``z`` (``1 / s_k`` is the
standard deviation along the direction ``v_k``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..errors import FG2UValueError, FG2UWarning
from ..noise.advice import user_stacklevel

__all__ = ["LeastSquaresModel", "least_squares_model", "laplace_precision", "Spectrum",
           "spectrum_from_jacobian", "spectrum_from_precision", "quantile", "INVOLVED"]

#: A parameter whose component in an unconstrained direction (unit length) exceeds
#: this takes part in it: its standard error is infinite.
INVOLVED = 1e-3


@dataclass(frozen=True)
class LeastSquaresModel:
    """The whitened residual Jacobian of a least-squares fit and what goes with it.

    Attributes
    ----------
    jacobian : ndarray, shape (R, N)
        Whitened rows (data rows, then penalty rows): ``jacobian.T @ jacobian`` is the
        precision in ``z``.
    unit : float
        ``factor s**2``: the change of the loss that is one unit of ``chi**2``
        (twice the change of the negative log-likelihood).
    dof : int or None
        ``M - N`` when ``s`` is estimated, else None (normal quantiles).
    noise_sd : float
        ``s``: the estimated standard deviation of a datum of unit weight (``sigma=None``),
        or the mean ratio of the given ``sigma`` to the loss's ``sigma_i / sqrt(w_i)``.
    num_data : int
        ``M``, the data with a non-zero weight.
    """

    jacobian: np.ndarray
    unit: float
    dof: int | None
    noise_sd: float
    num_data: int


def _broadcast(value, k):
    if value is None:
        return np.ones(k)
    return np.broadcast_to(np.asarray(value, dtype=np.float64), (k,)).copy()


def least_squares_model(loss, jacobian_z, theta, phi, dphi, sigma) -> LeastSquaresModel:
    """Whiten the residual Jacobian of ``loss`` (see the module docstring).

    Parameters
    ----------
    loss : LeastSquares
    jacobian_z : ndarray, shape (theta.size, N)
        ``d S / dz`` at the fit.
    theta, phi : ndarray
        The inner output and the parameters at the fit.
    dphi : ndarray, shape (N,)
        ``T'(z)`` at the fit.
    sigma : None, float or ndarray of shape (K,)
        Absolute standard deviations of the data, or None to estimate the noise level.
    """
    n = jacobian_z.shape[1]
    k = loss.data.size
    factor = 0.5 / k if loss.scale == "mean" else 0.5
    w = _broadcast(loss.weights, k)
    sigma_loss = _broadcast(loss.sigma, k)
    rows = jacobian_z if loss.selection is None else jacobian_z[loss.selection]
    used = w > 0
    m = int(used.sum())
    # d r_data / dz: the loss's residual vector is linear in theta.
    data_rows = (np.sqrt(factor * w) / sigma_loss)[:, None] * rows
    penalty_rows = np.zeros((0, n))
    if loss.regularization:
        D = np.eye(n) if loss.penalty is None else loss.penalty
        penalty_rows = math.sqrt(0.5 * loss.regularization) * D * dphi[None, :]
    if sigma is None:
        if m <= n:
            raise FG2UValueError(
                f"`sigma` is None, so the noise level is estimated from the residuals, which "
                f"needs more data than parameters; there are M = {m} data with a non-zero "
                f"weight for N = {n} parameters. Pass the data's standard deviation as "
                "sigma=, or add data")
        r = loss.residuals(theta, phi)[:k]
        unit = float(r @ r) / (m - n)
        noise_sd = math.sqrt(unit / factor)
        if unit == 0.0:
            # A perfect fit: the covariance is zero, and no direction can be judged.
            unit = np.finfo(np.float64).tiny
        scale = np.full(k, 1.0 / math.sqrt(unit))
        dof = m - n
    else:
        sigma = _broadcast(sigma, k)
        ratio2 = sigma[used] ** 2 * w[used] / sigma_loss[used] ** 2
        s2 = float(np.mean(ratio2)) if m else 1.0
        if m and np.ptp(ratio2) > 1e-6 * s2:
            warnings.warn(
                "the given `sigma` is not proportional to the loss's sigma / sqrt(weights): "
                "the fit did not weight the data by 1 / sigma**2, so it is not the maximum "
                "likelihood fit for this noise; the covariance uses the given sigma for "
                "the data (pass the same sigma to fz.LeastSquares to fit consistently)",
                FG2UWarning, stacklevel=user_stacklevel())
        unit = factor * s2
        noise_sd = math.sqrt(s2)
        # Row i becomes J_sel_i / sigma_i; weightless rows drop out.
        scale = np.divide(sigma_loss, np.sqrt(factor * w) * sigma,
                          out=np.zeros(k), where=used)
        dof = None
    whitened = np.vstack([scale[:, None] * data_rows, penalty_rows / math.sqrt(unit)])
    return LeastSquaresModel(jacobian=whitened, unit=float(unit), dof=dof,
                             noise_sd=noise_sd, num_data=m)


def laplace_precision(problem, theta, phi, jacobian_z, dphi) -> np.ndarray:
    """The generalized Gauss–Newton Hessian of the outer loss in ``z`` at the fit."""
    from ..outer.steppers.subspace_model import outer_model

    P = np.diag(np.asarray(dphi, dtype=np.float64))
    _, _, H, _, _ = outer_model(problem, np.asarray(theta, dtype=np.float64), phi,
                                np.asarray(jacobian_z, dtype=np.float64), P)
    return H


@dataclass(frozen=True)
class Spectrum:
    """The covariance in ``z`` and the spectrum of the precision.

    Attributes
    ----------
    cov : ndarray, shape (N, N)
        Covariance in ``z`` (NaN off the diagonal and ``inf`` on it for parameters in
        an unconstrained direction).
    stderr : ndarray, shape (N,)
    singular_values : ndarray, shape (N,)
        Of the whitened Jacobian in ``z``, largest first (square roots of the
        precision's eigenvalues; 0 for a negative eigenvalue).
    directions : ndarray, shape (N, N)
        The matching right singular vectors (columns, unit length).
    unconstrained : ndarray, shape (N, k)
        Directions in ``z`` (columns, unit length) the data do not constrain.
    condition_number : float
        ``singular_values[0] / singular_values[-1]`` (inf when the last is 0).
    min_eigenvalue : float
        Smallest eigenvalue of the equilibrated precision relative to its largest:
        negative when the fit is not a minimum of the loss.
    precision : ndarray, shape (N, N)
        The precision in ``z`` (finite even where the covariance is not).
    """

    cov: np.ndarray
    stderr: np.ndarray
    singular_values: np.ndarray
    directions: np.ndarray
    unconstrained: np.ndarray
    condition_number: float
    min_eigenvalue: float
    precision: np.ndarray


def _equilibrated_eigen(precision):
    """Eigen-decomposition of ``C^-1 P C^-1`` with ``C = sqrt(diag P)``."""
    d = np.sqrt(np.clip(np.diag(precision), 0.0, None))
    c = np.where(d > 0, d, 1.0)
    A = precision / np.outer(c, c)
    lam, V = np.linalg.eigh(0.5 * (A + A.T))
    return c, lam[::-1], V[:, ::-1]


def _assemble(c, lam, V, rcond, singular_values, directions, precision):
    n = c.size
    top = float(lam[0]) if lam.size and lam[0] > 0 else 0.0
    cut = (rcond ** 2) * top
    keep = lam > cut
    if top == 0.0:
        keep[:] = False
    inv_c = 1.0 / c
    Vk = V[:, keep] * inv_c[:, None]
    cov = (Vk / lam[keep]) @ Vk.T
    null = V[:, ~keep] * inv_c[:, None]
    if null.size:
        null = null / np.linalg.norm(null, axis=0, keepdims=True)
    involved = (np.abs(null) > INVOLVED).any(axis=1) if null.size else np.zeros(n, bool)
    cov[involved, :] = np.nan
    cov[:, involved] = np.nan
    diag = np.diag(cov).copy()
    diag[involved] = np.inf
    np.fill_diagonal(cov, diag)
    stderr = np.sqrt(np.clip(diag, 0.0, None))
    smin = singular_values[-1] if singular_values.size else 0.0
    cond = float(singular_values[0] / smin) if smin > 0 else np.inf
    return Spectrum(cov=cov, stderr=stderr, singular_values=singular_values,
                    directions=directions, unconstrained=null.reshape(n, -1),
                    condition_number=cond,
                    min_eigenvalue=float(lam[-1] / top) if top > 0 else 0.0,
                    precision=precision)


def spectrum_from_jacobian(jacobian, rcond) -> Spectrum:
    """The spectrum of ``jacobian.T @ jacobian`` from an SVD of the (whitened) Jacobian."""
    jacobian = np.asarray(jacobian, dtype=np.float64)
    n = jacobian.shape[1]
    norms = np.linalg.norm(jacobian, axis=0)
    c = np.where(norms > 0, norms, 1.0)
    # The SVD of the equilibrated Jacobian is as accurate as its columns; forming
    # J^T J first would square the condition number. With fewer rows than columns the
    # full V is needed (its last rows span the null space); otherwise it is N x N anyway.
    full = jacobian.shape[0] < n
    s, Vt = np.linalg.svd(jacobian / c, full_matrices=full)[1:]
    lam = np.zeros(n)
    lam[:s.size] = s ** 2
    sz, Vz = np.linalg.svd(jacobian, full_matrices=full)[1:]
    singular_values = np.zeros(n)
    singular_values[:sz.size] = sz
    return _assemble(c, lam, Vt.T, rcond, singular_values, Vz.T, jacobian.T @ jacobian)


def spectrum_from_precision(precision, rcond) -> Spectrum:
    """The spectrum of a symmetric precision (the Laplace Hessian)."""
    precision = 0.5 * (precision + precision.T)
    c, lam, V = _equilibrated_eigen(precision)
    mu, W = np.linalg.eigh(precision)
    order = np.argsort(mu)[::-1]
    singular_values = np.sqrt(np.clip(mu[order], 0.0, None))
    return _assemble(c, lam, V, rcond, singular_values, W[:, order], precision)


def quantile(confidence, dof) -> float:
    """The two-sided quantile: Student's t with ``dof`` degrees of freedom, or the
    normal one when ``dof`` is None."""
    p = 0.5 * (1.0 + confidence)
    return float(stats.norm.ppf(p) if dof is None else stats.t.ppf(p, dof))
