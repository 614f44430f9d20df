"""What a finite-difference estimate keeps of each perturbed solve.

A perturbed solve ``theta_k = S(phi + s h u_i)`` is reduced to one number as it
arrives, so the estimate's memory stays O(N + M) whatever the number of directions:

* :class:`InnerProjection` (FG2U-ZO): ``<grad_theta f, theta_k - theta_0>``, the outer
  gradient projected on the output difference;
* :class:`ValueDifference` (black-box ES): ``F(point_k) - F(phi)``, the difference of the
  whole objective.

:class:`KeepOutputs` wraps either one: it returns the same number (so the gradient is
bitwise the same) and also keeps every perturbed output, from which it builds the
:class:`~fg2u_zo.result.Sketch` ``Y ~ J_S U^T`` that model-based steppers need. Its
memory is O(M b), paid only when a caller asks for the sketch.
"""

from __future__ import annotations

import numpy as np

from ..errors import FG2UTypeError
from ..result import Sketch

__all__ = ["InnerProjection", "ValueDifference", "KeepOutputs", "check_keep_sketch"]


class InnerProjection:
    """``c_k = <grad_theta f, theta_k - theta_0>``: FG2U-ZO's reduction.

    Parameters
    ----------
    g_theta : ndarray
        The outer gradient ``grad_theta f`` at the base point (any shape; flattened).
    theta0 : ndarray
        The base output ``S(phi)``, same size as ``g_theta``.
    """

    def __init__(self, g_theta, theta0):
        self.g_theta = np.asarray(g_theta).ravel()
        self.theta0 = np.asarray(theta0).ravel()

    def __call__(self, k, point, theta) -> float:
        return float(np.dot(self.g_theta, theta.ravel() - self.theta0))


class ValueDifference:
    """``c_k = F(point_k) - F(phi)``: black-box ES's reduction (no outer gradient).

    Parameters
    ----------
    problem : BilevelProblem
        Its ``outer_value(theta, phi)`` is evaluated at each perturbed point.
    value : float
        ``F(phi)`` at the base point.
    """

    def __init__(self, problem, value):
        self.problem = problem
        self.value = value

    def __call__(self, k, point, theta) -> float:
        return self.problem.outer_value(theta, point) - self.value


class KeepOutputs:
    """Another reduction, plus every perturbed output kept for the sketch.

    Parameters
    ----------
    reduction : callable
        The reduction whose number is returned unchanged (:class:`InnerProjection` or
        :class:`ValueDifference`).
    theta0 : ndarray
        The base output ``S(phi)``.
    num_points : int
        Perturbed points of the plan (``b`` forward, ``2b`` central).
    """

    def __init__(self, reduction, theta0, num_points):
        self.reduction = reduction
        self.theta0 = np.asarray(theta0, dtype=np.float64).ravel().copy()
        # Rows of points that never report (failed for good) stay NaN.
        self.outputs = np.full((num_points, self.theta0.size), np.nan)

    def __call__(self, k, point, theta) -> float:
        self.outputs[k] = np.asarray(theta, dtype=np.float64).ravel()
        return self.reduction(k, point, theta)

    def sketch(self, U, step, scheme, mask) -> Sketch:
        """The :class:`~fg2u_zo.result.Sketch` of the kept outputs.

        Parameters
        ----------
        U : ndarray, shape (b, N)
            Unit directions; point ``k`` of the plan is ``phi + s h U[k // p]``.
        step : float
            The step ``h``.
        scheme : {"forward", "central"}
            Central plans hold ``+h u_i`` at ``2i`` and ``-h u_i`` at ``2i + 1``.
        mask : ndarray of bool, shape (b,)
            Directions that entered the estimate; the other columns of ``Y`` are NaN.
        """
        if scheme == "central":
            Y = (self.outputs[0::2] - self.outputs[1::2]).T / (2.0 * step)
        else:
            Y = (self.outputs - self.theta0).T / step
        mask = np.asarray(mask, dtype=bool).copy()
        # A masked column is NaN whatever its outputs were (the partner of a failed
        # antithetic point succeeded, but the pair left the estimate as a whole).
        Y[:, ~mask] = np.nan
        return Sketch(directions=np.array(U, dtype=np.float64), step=float(step),
                      scheme=scheme, theta0=self.theta0, Y=Y, mask=mask)


def check_keep_sketch(keep_sketch) -> bool:
    """Validate the ``keep_sketch`` keyword of the estimators' ``estimate``."""
    if not isinstance(keep_sketch, (bool, np.bool_)):
        raise FG2UTypeError(
            f"`keep_sketch` must be True or False, got {keep_sketch!r}")
    return bool(keep_sketch)
