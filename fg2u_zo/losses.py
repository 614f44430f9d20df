"""Outer losses that are data misfits: what a calibration compares the solver's output with.

:class:`LeastSquares` is the outer loss of the TOML config's ``[outer] kind =
"least_squares"`` and of the benchmarks' calibration problems. Beside the torch loss
that the estimators differentiate, it gives the same value as a sum of squared
residuals (``residuals``), for residual-based methods such as DFO-LS or
``scipy.optimize.least_squares``, and its gradients in numpy (``grad_theta``,
``grad_phi``), for adjoint-method references.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import FG2UTypeError, FG2UValueError
from .validation import check_choice, check_finite_vector, check_positive_float

__all__ = ["LeastSquares", "check_per_datum"]

SCALES = ("mean", "sum")


class LeastSquares:
    """Weighted least squares between the solver's output and data, plus a penalty on phi.

    ::

        f(theta, phi) = 0.5 * reduce_i(w_i * ((theta[sel_i] - y_i) / sigma_i)^2)
                        + regularization / 2 * ||D phi||^2

    where ``reduce`` is the mean (``scale="mean"``) or the sum (``scale="sum"``) over
    the data, and ``D`` is ``penalty`` (the identity when None).

    Parameters
    ----------
    data : array_like, shape (K,)
        The observations ``y``; finite.
    weights : float or array_like of shape (K,), optional
        ``w >= 0``, finite (default: 1).
    selection : array_like of int, shape (K,), optional
        The outputs ``theta[selection]`` compared with the data, in order (default:
        all of ``theta``, which must then have K entries).
    scale : {"mean", "sum"}
        How the squares are reduced.
    regularization : float
        ``>= 0``: the weight of the penalty.
    sigma : float or array_like of shape (K,), optional
        Standard deviations (``> 0``, finite): residuals are divided by them before
        squaring, as ``scipy.optimize.curve_fit``'s ``sigma``.
    penalty : array_like, shape (P, N), optional
        The matrix ``D`` of the penalty (differences between neighbouring parameters,
        say); default: the identity, a ridge penalty on ``phi``.

    Raises
    ------
    FG2UValueError, FG2UTypeError
        For a bad argument, naming it (the message starts with its name in backquotes).

    Examples
    --------
    >>> import numpy as np, torch
    >>> f = LeastSquares(np.array([1.0, 2.0]))
    >>> float(f(torch.tensor([1.0, 4.0], dtype=torch.float64), torch.zeros(1)))
    1.0
    >>> r = f.residuals(np.array([1.0, 4.0]), np.zeros(1))
    >>> float(r @ r)
    1.0
    """

    def __init__(self, data, weights=None, selection=None, scale="mean", regularization=0.0,
                 *, sigma=None, penalty=None):
        self.data = check_finite_vector(data, "data")
        n = self.data.size
        self.weights = None if weights is None else check_per_datum(weights, "weights", n,
                                                               positive=False)
        self.sigma = None if sigma is None else check_per_datum(sigma, "sigma", n, positive=True)
        self.selection = None if selection is None else _selection(selection, n)
        self.scale = check_choice(scale, "scale", SCALES)
        self.regularization = check_positive_float(regularization, "regularization",
                                                   allow_zero=True)
        self.penalty = None
        if penalty is not None:
            D = np.array(penalty, dtype=np.float64)
            if D.ndim != 2 or not np.all(np.isfinite(D)):
                raise FG2UValueError(f"`penalty` must be a finite 2-D matrix (P, N), got "
                                     f"shape {D.shape}")
            self.penalty = D

    def __repr__(self):
        return (f"LeastSquares({self.data.size} data, scale={self.scale!r}, "
                f"regularization={self.regularization:g})")

    # -- the torch loss -------------------------------------------------------------------
    def __call__(self, theta, phi):
        """The loss as a 0-d torch tensor, differentiable in ``theta`` and ``phi``."""
        import torch

        sel = theta.reshape(-1)
        self._check_outputs(sel.shape[0])
        if self.selection is not None:
            sel = sel[torch.as_tensor(self.selection)]
        r = sel - torch.as_tensor(self.data)
        if self.sigma is not None:
            r = r / _scalar_or_tensor(self.sigma)
        sq = r ** 2 if self.weights is None else torch.as_tensor(self.weights) * r ** 2
        loss = 0.5 * (sq.mean() if self.scale == "mean" else sq.sum())
        if self.regularization:
            penalized = phi if self.penalty is None else self._penalty_matrix(phi) @ phi
            loss = loss + 0.5 * self.regularization * (penalized ** 2).sum()
        return loss

    # -- the same in numpy ----------------------------------------------------------------
    def residuals(self, theta, phi) -> np.ndarray:
        """Residuals ``r`` with ``sum(r**2)`` equal to the loss (to rounding): the data
        misfit's, then the penalty's (when ``regularization > 0``)."""
        theta = self._selected(theta)
        factor = 0.5 / self.data.size if self.scale == "mean" else 0.5
        if self.weights is None:
            r = (theta - self.data) * math.sqrt(factor)
        else:
            r = (theta - self.data) * np.sqrt(factor * self.weights)
        if self.sigma is not None:
            r = r / self.sigma
        if self.regularization:
            phi = np.asarray(phi, dtype=np.float64)
            penalized = phi if self.penalty is None else self._penalty_matrix(phi) @ phi
            r = np.concatenate([r, math.sqrt(0.5 * self.regularization) * penalized])
        return r

    def residual_jacobian(self, dtheta, dphi) -> np.ndarray:
        """The residuals' change along columns of displacements: ``r`` is affine in
        ``(theta, phi)``, so ``r(theta + dtheta a, phi + dphi a) = r(theta, phi) + R a``
        exactly, with ``R`` returned here. What a Gauss–Newton model of this loss needs
        (``2 R^T R`` is its Hessian in the columns' coordinates), in numpy.

        Parameters
        ----------
        dtheta : array_like, shape (M, d)
            Changes of the (flattened) solver output, one column each.
        dphi : array_like, shape (N, d)
            The same columns' changes of phi (used by the penalty).

        Returns
        -------
        ndarray, shape (K, d) or (K + P, d)
            Rows in the order of :meth:`residuals`.

        Examples
        --------
        >>> import numpy as np
        >>> f = LeastSquares(np.zeros(2), scale="sum", regularization=2.0)
        >>> f.residual_jacobian(np.eye(2), np.ones((1, 2))).tolist()
        [[0.7071067811865476, 0.0], [0.0, 0.7071067811865476], [1.0, 1.0]]
        """
        dtheta = np.asarray(dtheta, dtype=np.float64)
        dtheta = dtheta.reshape(dtheta.shape[0], -1)
        self._check_outputs(dtheta.shape[0])
        rows = dtheta if self.selection is None else dtheta[self.selection]
        factor = 0.5 / self.data.size if self.scale == "mean" else 0.5
        weight = (np.full(self.data.size, math.sqrt(factor)) if self.weights is None
                  else np.sqrt(factor * np.broadcast_to(self.weights, self.data.shape)))
        if self.sigma is not None:
            weight = weight / self.sigma
        R = weight[:, None] * rows
        if self.regularization:
            dphi = np.asarray(dphi, dtype=np.float64).reshape(-1, dtheta.shape[1])
            D = dphi if self.penalty is None else self._penalty_matrix(dphi[:, 0]) @ dphi
            R = np.vstack([R, math.sqrt(0.5 * self.regularization) * D])
        return R

    def grad_theta(self, theta) -> np.ndarray:
        """``d f / d theta`` (shape of ``theta``, zero outside the selection)."""
        theta = np.asarray(theta, dtype=np.float64).reshape(-1)
        diff = self._selected(theta) - self.data
        denom = float(self.data.size) if self.scale == "mean" else 1.0
        if self.sigma is not None:
            denom = denom * self.sigma ** 2
        g = diff / denom if self.weights is None else self.weights * diff / denom
        if self.selection is None:
            return g
        out = np.zeros_like(theta)
        np.add.at(out, self.selection, g)
        return out

    def grad_phi(self, phi) -> np.ndarray:
        """``d f / d phi``: the penalty's gradient."""
        phi = np.asarray(phi, dtype=np.float64)
        if not self.regularization:
            return np.zeros_like(phi)
        if self.penalty is None:
            return self.regularization * phi
        D = self._penalty_matrix(phi)
        return self.regularization * D.T @ (D @ phi)

    # -- checks ---------------------------------------------------------------------------
    def _selected(self, theta):
        theta = np.asarray(theta, dtype=np.float64).reshape(-1)
        self._check_outputs(theta.shape[0])
        return theta if self.selection is None else theta[self.selection]

    def _check_outputs(self, m):
        if self.selection is not None:
            if self.selection.size and self.selection.max() >= m:
                raise FG2UValueError(
                    f"`selection` indexes up to {int(self.selection.max())} but the "
                    f"solver returned {m} outputs")
        elif m != self.data.size:
            raise FG2UValueError(
                f"`data` has {self.data.size} values but the solver returned {m} outputs; "
                "fix `data` or `selection`")

    def _penalty_matrix(self, phi):
        if self.penalty.shape[1] != phi.shape[0]:
            raise FG2UValueError(
                f"`penalty` has {self.penalty.shape[1]} columns but phi has "
                f"{phi.shape[0]} entries")
        if isinstance(phi, np.ndarray):
            return self.penalty
        import torch
        return torch.as_tensor(self.penalty)


def check_per_datum(value, name, n, *, positive):
    """A scalar (kept a float) or an array of ``n`` finite values, ``> 0`` or ``>= 0``:
    the per-datum ``weights`` and ``sigma`` of :class:`LeastSquares` (and the ``sigma``
    of :func:`fg2u_zo.uncertainty`)."""
    if isinstance(value, numbers.Real):  # bool too: refused there with a clear message
        return check_positive_float(value, name, allow_zero=not positive)
    arr = check_finite_vector(value, name)
    if arr.size != n:
        raise FG2UValueError(f"`{name}` has {arr.size} values for {n} data")
    bad = arr <= 0 if positive else arr < 0
    if bad.any():
        raise FG2UValueError(f"`{name}` must be {'> 0' if positive else '>= 0'}; entries "
                             f"{np.flatnonzero(bad)[:10].tolist()} are not")
    return arr


def _selection(value, n):
    arr = np.asarray(value)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
        raise FG2UTypeError(f"`selection` must be a 1-D array of integer indices, got "
                            f"{value!r}")
    if arr.size and arr.min() < 0:
        raise FG2UValueError("`selection` must hold indices >= 0")
    if arr.size != n:
        raise FG2UValueError(f"`selection` selects {arr.size} outputs but data has {n} "
                             "values")
    return arr.astype(np.int64)


def _scalar_or_tensor(value):
    if isinstance(value, float):
        return value
    import torch
    return torch.as_tensor(value)
