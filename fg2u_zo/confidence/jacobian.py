"""The Jacobian of a black box at the fit: one parallel group of finite differences.

The differences are taken along the coordinate axes of scaled coordinates of the
run's unconstrained variable ``z`` (``phi = T(z)``):

    z = z_hat + d * x,    d_j = max(1, |z_hat_j|),

with one step ``r`` in ``x``, so that coordinate ``j`` of ``z`` moves by
``r * max(1, |z_hat_j|)``: relative to the parameter, as
``scipy.optimize.approx_derivative`` does, and the same for a parameter of size 1e-3
and one of size 1e3. In ``x`` the noise machinery needs no change: with
``step="auto"`` the noise probe of :mod:`fg2u_zo.noise` runs along lines of ``x`` and
picks ``r`` from the measured noise and curvature (Moré and Wild), and the
:class:`~fg2u_zo.CoordinateFD` estimator forms the group (base solve, then the
``N`` or ``2N`` perturbed solves at once) and keeps the perturbed outputs in its
sketch, whose ``Y`` is the Jacobian in ``x``.

:func:`difference_jacobian` is the one place where :mod:`fg2u_zo.confidence` asks for
solves of the inner solver (and of a user's prediction function): points go in,
derivatives come out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..evaluation.solver_memory import accepted_keywords
from ..noise.noise_estimate import NoiseEstimate

__all__ = ["ScaledSolver", "Differences", "difference_jacobian", "coordinate_scale"]


def coordinate_scale(z) -> np.ndarray:
    """``d_j = max(1, |z_j|)``: the length a unit step of ``x`` makes in ``z``."""
    return np.maximum(1.0, np.abs(np.asarray(z, dtype=np.float64)))


class ScaledSolver:
    """``x -> solver(T(z0 + d * x))``: a solver seen in the scaled coordinates.

    Picklable whenever ``solver`` is, so it runs on any backend; ``seed`` and
    ``warm_start`` are passed on only where ``solver`` accepts them.
    """

    def __init__(self, solver, transform, z0, scale):
        self.solver = solver
        self.transform = transform
        self.z0 = np.asarray(z0, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.accepted = accepted_keywords(solver)

    def phi(self, x) -> np.ndarray:
        return self.transform.forward(self.z0 + self.scale * np.asarray(x, dtype=np.float64))

    def __call__(self, x, *, warm_start=None, seed=None):
        kwargs = {}
        if warm_start is not None and "warm_start" in self.accepted:
            kwargs["warm_start"] = warm_start
        if seed is not None and "seed" in self.accepted:
            kwargs["seed"] = seed
        return self.solver(self.phi(x), **kwargs)


class _HalfSquaredNorm:
    """The loss the difference group is formed under: ``0.5 ||theta||^2``.

    Its gradient ``theta`` weights every output by its size in the projection
    ``<theta_0, S(phi + t u)>`` that the noise probe examines; the calibration's own
    loss would weight them by the residuals, which vanish at a perfect fit and leave
    the probe nothing to see.
    """

    def __call__(self, theta, x):
        return 0.5 * (theta ** 2).sum()


@dataclass(frozen=True)
class Differences:
    """What one group of differences gave.

    Attributes
    ----------
    jacobian_z : ndarray, shape (M, N)
        ``d S(T(z)) / dz`` at ``z_hat`` (outputs flattened).
    theta : ndarray
        ``S(T(z_hat))`` as the solver returned it.
    step : float
        The relative step ``r`` used.
    scheme : str
    noise : NoiseEstimate or None
        The noise estimate behind ``r`` (``step="auto"``), in the scaled coordinates.
    nfev : int
        Solves spent, the noise probe's included.
    solver_time : float
    """

    jacobian_z: np.ndarray
    theta: np.ndarray
    step: float
    scheme: str
    noise: NoiseEstimate | None
    nfev: int
    solver_time: float


def difference_jacobian(solver, z0, transform, *, scheme="forward", step="auto", noise=None,
                        rng=None, evaluator, name=None) -> Differences:
    """``d solver(T(z)) / dz`` at ``z0`` by one group of coordinate differences.

    Parameters
    ----------
    solver : callable
        ``solver(phi, *, warm_start=None, seed=None) -> ndarray``.
    z0 : ndarray, shape (N,)
    transform : ParameterTransform
    scheme : {"forward", "central"}
    step : "auto" or float
        The relative step ``r`` (see the module docstring).
    noise : NoiseEstimate, optional
        A noise estimate made in the same scaled coordinates, reused instead of a probe.
    rng : numpy.random.Generator
    evaluator : Evaluator
    name : str, optional

    Returns
    -------
    Differences
    """
    from ..estimators.zeroth_order import CoordinateFD
    from ..problem import BilevelProblem

    z0 = np.asarray(z0, dtype=np.float64)
    scale = coordinate_scale(z0)
    wrapped = ScaledSolver(solver, transform, z0, scale)
    problem = BilevelProblem(inner=wrapped, outer=_HalfSquaredNorm(), num_params=z0.size,
                             name=name)
    estimate = CoordinateFD(scheme=scheme, step=step, through="inner").estimate(
        problem, np.zeros(z0.size), rng=rng, evaluator=evaluator, noise=noise,
        keep_sketch=True)
    sketch = estimate.sketch
    # The sketch's directions are the axes of x, in order: Y is the Jacobian in x.
    jacobian_z = sketch.Y / scale[None, :]
    return Differences(jacobian_z=jacobian_z, theta=np.asarray(estimate.theta),
                       step=float(estimate.step), scheme=scheme, noise=estimate.noise,
                       nfev=int(estimate.nfev), solver_time=float(estimate.solver_time))
