"""The problem families of ``python -m benchmarks.peers``.

Each family builds a :class:`Case`: a :class:`fg2u_zo.BilevelProblem` (numpy black-box
inner solver, torch outer loss), the same objective as a plain function of ``phi`` and
as least-squares residuals (for DFO-LS), a start, bounds, a reference optimum ``F*``
computed with an exact gradient, and the target.

- ``diffusion``: field calibration through a PDE solver. ``-div(k grad u) = 1`` on the
  unit square, ``u = 0`` on the boundary, cell-centred finite volumes on a 32 x 32 grid
  (harmonic-mean face conductivities), ``k = exp(phi)`` piecewise constant on a
  ``sqrt(N) x sqrt(N)`` patch grid; the SPD matrix is assembled from its faces and
  solved with a banded Cholesky factorization (``scipy.linalg.solveh_banded``;
  ``method="spsolve"`` gives the same answer through :class:`solvers.SparseLinear`).
  Observed: ``u`` in all 1024 cells, synthetic data from a smooth true field plus 1 %
  noise. Outer loss: relative least squares plus a smoothness penalty
  ``alpha/2 sum_{neighbour patches} (phi_p - phi_q)^2`` (``alpha = 1e-4``).
- ``reweight``: per-sample weights of a ridge regression (scikit-learn's
  ``Ridge(alpha=1e-2, fit_intercept=False, solver="cholesky")``, or the same closed form
  in numpy, the default for speed), ``N`` training samples with 5 features, 30 % of the
  labels sign-flipped; weights ``exp(phi)``; outer loss: mean squared error on 200 clean
  validation samples.
- ``robust``: the ``diffusion`` field from data with 5 % outlier sensors (errors of 20
  to 60 % of the RMS of ``u`` on top of the 1 % noise), fitted with a Cauchy (Lorentzian)
  misfit ``mean(c^2/2 log(1 + (r_i/c)^2))``, ``r_i = (u_i - y_i)/scale``, ``c = 0.02``,
  plus the same smoothness penalty: a loss that is not a sum of squares. Least-squares
  methods (DFO-LS) get the residuals ``sign(r_i) sqrt(term_i)``, whose sum of squares
  is the same ``F`` (the sign keeps them smooth where a term vanishes).
- ``burgers``: Burgers' ``nu`` and ``lam`` from 100 observations of the shipped
  ``burgers.mat`` (Raissi's data) through :class:`solvers.Burgers`, with the pieces of
  ``examples/pde_discovery.py`` (log-coefficients, bilinear observation misfit).

The objective every method sees is the same ``F(phi)``; one call of it is one inner
solve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse
import torch
from scipy.linalg import solveh_banded

import fg2u_zo as fz

__all__ = ["Case", "Diffusion2D", "WeightedRidge", "CauchyMisfit", "diffusion_case",
           "robust_case", "reweight_case", "burgers_case", "build_case", "FAMILIES",
           "LEAST_SQUARES_FAMILIES"]

#: Sizes each family is measured at.
FAMILIES = {"diffusion": (16, 64, 256), "reweight": (10, 100, 1000), "burgers": (2,),
            "robust": (64,)}
#: Families whose outer loss is a sum of squares (the others are fitted by least-squares
#: methods through residuals whose squares sum to the loss).
LEAST_SQUARES_FAMILIES = ("diffusion", "reweight", "burgers")


@dataclass(frozen=True, repr=False)
class Case:
    """One benchmark problem at one size.

    Attributes
    ----------
    name : str
        ``family-N``.
    family : str
    size : int
        Number N of meta-parameters.
    problem : fz.BilevelProblem
    phi0 : ndarray
    bounds : (ndarray, ndarray)
        Box every method is held to (projection for FG2UZO, native bounds for peers).
    f0, f_star : float
        ``F(phi0)`` and the reference optimum (exact-gradient L-BFGS-B, or ``F`` at the
        known truth for Burgers).
    tau : float
        Target: ``F <= f_star + tau * (f0 - f_star)``.
    target_text : str
        What the target means, for the report.
    residuals : callable
        ``residuals(theta, phi) -> r`` with ``sum(r**2) == outer(theta, phi)``.
    sigma0 : float
        Natural scale of a first move in phi (peers' default spread).
    """

    name: str
    family: str
    size: int
    problem: fz.BilevelProblem
    phi0: np.ndarray
    bounds: tuple
    f0: float
    f_star: float
    tau: float
    target_text: str
    residuals: object
    sigma0: float
    info: dict = field(default_factory=dict)

    @property
    def target(self) -> float:
        return self.f_star + self.tau * (self.f0 - self.f_star)

    def value(self, phi) -> float:
        """``F(phi)``: one inner solve plus the outer loss, evaluated in numpy as
        ``sum(residuals**2)`` (equal to the torch outer loss to rounding, without
        torch's per-call overhead; the tests check it)."""
        r = self.residual_vector(phi)
        return float(r @ r)

    def residual_vector(self, phi) -> np.ndarray:
        """Residuals at ``phi`` (one inner solve), ``sum(r**2) = F(phi)``."""
        phi = np.asarray(phi, dtype=np.float64)
        return self.residuals(self.problem.inner(phi), phi)

    def __repr__(self):
        return (f"Case({self.name!r}, f0={self.f0:.4g}, f_star={self.f_star:.4g}, "
                f"target={self.target:.4g})")


# -- (a) diffusion -------------------------------------------------------------------------
class Diffusion2D:
    """``u`` in every cell for ``-div(exp(phi) grad u) = 1`` on the unit square, ``u = 0``
    on the boundary: cell-centred finite volumes on ``cells x cells`` cells, ``k``
    constant on ``patches x patches`` patches (``N = patches**2``).

    Face transmissibilities are harmonic means of the two cells' ``k`` (``2 k`` at the
    boundary); the matrix is symmetric positive definite with bandwidth ``cells``, so a
    banded Cholesky solve is exact and about 3 times faster than SuperLU here.
    ``method="spsolve"`` assembles a ``scipy.sparse`` matrix and solves it through
    :class:`solvers.SparseLinear` instead (the cross-check). Picklable.
    """

    def __init__(self, cells=32, patches=4, method="banded"):
        if cells % patches:
            raise ValueError(f"`cells` ({cells}) must be a multiple of `patches` ({patches})")
        if method not in ("banded", "spsolve"):
            raise ValueError(f"`method` must be 'banded' or 'spsolve', got {method!r}")
        self.cells, self.patches, self.method = int(cells), int(patches), method
        n = self.cells
        idx = np.arange(n * n).reshape(n, n)
        # Interior faces: first the x-neighbours (offset n), then the y-neighbours (1).
        self.fi = np.concatenate([idx[:-1, :].ravel(), idx[:, :-1].ravel()])
        self.fj = np.concatenate([idx[1:, :].ravel(), idx[:, 1:].ravel()])
        nb = np.zeros((n, n))
        nb[0, :] += 1
        nb[-1, :] += 1
        nb[:, 0] += 1
        nb[:, -1] += 1
        self.nb = nb.ravel()
        patch = np.arange(n) * self.patches // n
        self.pmap = (patch[:, None] * self.patches + patch[None, :]).ravel()
        self.rhs = np.full(n * n, 1.0 / n ** 2)

    def __repr__(self):
        return f"Diffusion2D(cells={self.cells}, patches={self.patches}, method={self.method!r})"

    @property
    def num_params(self):
        return self.patches ** 2

    def _coefficients(self, phi):
        k = np.exp(np.asarray(phi, dtype=np.float64))[self.pmap]
        T = 2.0 * k[self.fi] * k[self.fj] / (k[self.fi] + k[self.fj])
        m = self.cells ** 2
        diag = (np.bincount(self.fi, T, m) + np.bincount(self.fj, T, m)
                + 2.0 * k * self.nb)
        return k, T, diag

    def matrix(self, phi):
        """The stiffness matrix as a ``scipy.sparse`` CSR matrix."""
        import scipy.sparse as sp

        _, T, diag = self._coefficients(phi)
        m = self.cells ** 2
        rows = np.concatenate([self.fi, self.fj, np.arange(m)])
        cols = np.concatenate([self.fj, self.fi, np.arange(m)])
        return sp.csr_matrix((np.concatenate([-T, -T, diag]), (rows, cols)), shape=(m, m))

    def _banded(self, phi):
        _, T, diag = self._coefficients(phi)
        ab = np.zeros((self.cells + 1, self.cells ** 2))
        ab[0] = diag
        ab[self.fj - self.fi, self.fi] = -T   # lower form: ab[i - j, j] = A[i, j]
        return ab

    def solve(self, phi, rhs=None):
        rhs = self.rhs if rhs is None else rhs
        if self.method == "spsolve":
            from solvers import SparseLinear

            return SparseLinear(self.matrix, rhs)(np.asarray(phi, dtype=np.float64))
        return solveh_banded(self._banded(phi), rhs, lower=True, check_finite=False)

    def __call__(self, phi, *, warm_start=None, seed=None):
        return self.solve(phi)

    def misfit_gradient(self, phi, outer: fz.LeastSquares):
        """``F(phi)`` and its exact gradient by the adjoint method (for ``F*``)."""
        phi = np.asarray(phi, dtype=np.float64)
        u = self.solve(phi)
        value = float(np.sum(outer.residuals(u, phi) ** 2))
        lam = self.solve(phi, outer.grad_theta(u))  # A is symmetric: A lam = dF/du
        k, _, _ = self._coefficients(phi)
        fi, fj = self.fi, self.fj
        s = (lam[fi] - lam[fj]) * (u[fi] - u[fj])
        den = (k[fi] + k[fj]) ** 2
        m = self.cells ** 2
        # d(lam^T A u)/dk_c through the harmonic means and the boundary terms.
        dk = (np.bincount(fi, s * 2.0 * k[fj] ** 2 / den, m)
              + np.bincount(fj, s * 2.0 * k[fi] ** 2 / den, m) + 2.0 * self.nb * lam * u)
        grad = -np.bincount(self.pmap, dk * k, self.num_params) + outer.grad_phi(phi)
        return value, grad


def _neighbour_differences(p):
    """Rows ``e_a - e_b`` for horizontally and vertically adjacent patches."""
    idx = np.arange(p * p).reshape(p, p)
    pairs = [(a, b) for a, b in zip(idx[:-1, :].ravel(), idx[1:, :].ravel())]
    pairs += [(a, b) for a, b in zip(idx[:, :-1].ravel(), idx[:, 1:].ravel())]
    D = np.zeros((len(pairs), p * p))
    for r, (a, b) in enumerate(pairs):
        D[r, a], D[r, b] = 1.0, -1.0
    return D


def true_log_conductivity(p):
    """A smooth log-conductivity field sampled at the centres of ``p x p`` patches."""
    c = (np.arange(p) + 0.5) / p
    x, y = np.meshgrid(c, c, indexing="ij")
    field_ = (0.8 * np.sin(2 * np.pi * x) * np.cos(np.pi * y) + 0.6 * np.cos(3 * np.pi * x * y)
              - 0.5 * (x - 0.5) + 0.3)
    return field_.ravel()


def _reference(fun_grad, phi0, bounds):
    """Minimize with exact gradients (L-BFGS-B, tight tolerances); returns F*."""
    lo, hi = bounds
    res = scipy.optimize.minimize(fun_grad, phi0, jac=True, method="L-BFGS-B",
                                  bounds=list(zip(lo, hi)),
                                  options={"maxiter": 20000, "maxfun": 40000, "ftol": 1e-15,
                                           "gtol": 1e-12, "maxcor": 30})
    return float(res.fun), res.x


def diffusion_case(size, *, cells=32, alpha=1e-4, noise=0.01, tau=1e-2, rng=0,
                   method="banded"):
    p = int(round(math.sqrt(size)))
    if p * p != size:
        raise ValueError(f"diffusion: N must be a perfect square, got {size}")
    solver = Diffusion2D(cells, p, method=method)
    clean = solver(true_log_conductivity(p))
    gen = np.random.default_rng(rng)
    scale = float(np.sqrt(np.mean(clean ** 2)))
    y = clean + noise * scale * gen.standard_normal(clean.size)
    # 0.5 * mean(((u - y) / scale)^2) + alpha / 2 * ||D phi||^2
    outer = fz.LeastSquares(y, sigma=scale, penalty=_neighbour_differences(p),
                            regularization=alpha)
    problem = fz.BilevelProblem(inner=solver, outer=outer, num_params=size,
                                name=f"diffusion-{size}")
    phi0 = np.zeros(size)
    bounds = (np.full(size, -3.0), np.full(size, 3.0))
    f0 = float(np.sum(outer.residuals(solver(phi0), phi0) ** 2))
    f_star, phi_star = _reference(lambda z: solver.misfit_gradient(z, outer), phi0, bounds)
    return Case(name=f"diffusion-{size}", family="diffusion", size=size, problem=problem,
                phi0=phi0, bounds=bounds, f0=f0, f_star=f_star, tau=tau,
                target_text=f"{tau:g} of the initial gap F0 - F*",
                residuals=outer.residuals, sigma0=0.5,
                info={"cells": cells, "sensors": cells * cells, "alpha": alpha,
                      "noise": noise, "phi_star": phi_star})


# -- (a') diffusion with outliers and a robust misfit -----------------------------------------
class CauchyMisfit:
    """``mean(c^2/2 log(1 + (r/c)^2)) + alpha/2 ||D phi||^2``, ``r = (theta - y)/scale``
    (torch): the Cauchy (Lorentzian) loss, which gives outliers a bounded pull.

    ``residuals`` is a vector whose sum of squares is the same value (for least-squares
    methods): ``sign(r_i) sqrt(term_i)`` and the penalty's residuals.
    """

    def __init__(self, y, scale, c, D=None, alpha=0.0):
        self.y = np.asarray(y, dtype=np.float64)
        self.scale, self.c, self.alpha = float(scale), float(c), float(alpha)
        self.D = None if D is None else np.asarray(D, dtype=np.float64)
        self._y = torch.as_tensor(self.y)
        self._D = None if D is None else torch.as_tensor(self.D)
        self._D_sparse = None if D is None else scipy.sparse.csr_matrix(self.D)

    def __call__(self, theta, phi):
        r = (theta - self._y) / self.scale
        value = (0.5 * self.c ** 2 * torch.log1p((r / self.c) ** 2)).mean()
        if self._D is not None and self.alpha > 0:
            value = value + 0.5 * self.alpha * ((self._D @ phi) ** 2).sum()
        return value

    def terms(self, theta):
        r = (np.asarray(theta) - self.y) / self.scale
        return r, 0.5 * self.c ** 2 * np.log1p((r / self.c) ** 2) / self.y.size

    def residuals(self, theta, phi):
        r, terms = self.terms(theta)
        out = np.sign(r) * np.sqrt(terms)
        if self.D is not None and self.alpha > 0:
            out = np.concatenate([out, math.sqrt(0.5 * self.alpha) * (self._D_sparse @ phi)])
        return out

    def grad_theta(self, theta):
        r = (np.asarray(theta) - self.y) / self.scale
        return r / (1.0 + (r / self.c) ** 2) / (self.y.size * self.scale)

    def grad_phi(self, phi):
        if self.D is None or self.alpha == 0:
            return np.zeros_like(phi)
        return self.alpha * self.D.T @ (self.D @ phi)


def robust_case(size, *, cells=32, alpha=1e-4, noise=0.01, outliers=0.05, c=0.02,
                tau=1e-2, rng=0):
    """``diffusion`` at ``size`` patches, with ``outliers`` of the sensors corrupted and a
    Cauchy misfit (see the module docstring); ``F*`` by L-BFGS-B with the adjoint
    gradient."""
    p = int(round(math.sqrt(size)))
    if p * p != size:
        raise ValueError(f"robust: N must be a perfect square, got {size}")
    solver = Diffusion2D(cells, p)
    clean = solver(true_log_conductivity(p))
    gen = np.random.default_rng(rng)
    scale = float(np.sqrt(np.mean(clean ** 2)))
    y = clean + noise * scale * gen.standard_normal(clean.size)
    bad = gen.permutation(clean.size)[:int(round(outliers * clean.size))]
    y[bad] += scale * gen.uniform(0.2, 0.6, bad.size) * gen.choice([-1.0, 1.0], bad.size)
    outer = CauchyMisfit(y, scale, c, D=_neighbour_differences(p), alpha=alpha)
    problem = fz.BilevelProblem(inner=solver, outer=outer, num_params=size,
                                name=f"robust-{size}")
    phi0 = np.zeros(size)
    bounds = (np.full(size, -3.0), np.full(size, 3.0))
    f0 = float(np.sum(outer.residuals(solver(phi0), phi0) ** 2))
    f_star, phi_star = _reference(lambda z: solver.misfit_gradient(z, outer), phi0, bounds)
    return Case(name=f"robust-{size}", family="robust", size=size, problem=problem,
                phi0=phi0, bounds=bounds, f0=f0, f_star=f_star, tau=tau,
                target_text=f"{tau:g} of the initial gap F0 - F* (Cauchy misfit)",
                residuals=outer.residuals, sigma0=0.5,
                info={"cells": cells, "sensors": cells * cells, "alpha": alpha,
                      "noise": noise, "outliers": int(bad.size), "c": c,
                      "phi_star": phi_star})


# -- (b) per-sample weights of a ridge fit ---------------------------------------------------
class WeightedRidge:
    """``coef = argmin sum_i exp(phi_i) (y_i - x_i.coef)^2 + alpha ||coef||^2``.

    The closed form ``(X^T W X + alpha I)^{-1} X^T W y`` (Cholesky), the same as
    scikit-learn's ``Ridge(alpha, fit_intercept=False, solver="cholesky")`` fitted with
    ``sample_weight=exp(phi)``; ``sklearn=True`` runs that fit through
    :class:`solvers.SklearnFit` (about 1 ms per call of scikit-learn overhead) and
    returns the same coefficients. Picklable.
    """

    def __init__(self, X, y, alpha=1e-2, sklearn=False):
        self.X = np.asarray(X, dtype=np.float64)
        self.y = np.asarray(y, dtype=np.float64)
        self.alpha = float(alpha)
        self.sklearn = bool(sklearn)
        self._fit = None

    def __repr__(self):
        return f"WeightedRidge(n={len(self.y)}, d={self.X.shape[1]}, sklearn={self.sklearn})"

    def _sklearn_fit(self):
        if self._fit is None:
            from sklearn.linear_model import Ridge

            from solvers import SklearnFit

            self._fit = SklearnFit(Ridge(alpha=self.alpha, fit_intercept=False,
                                         solver="cholesky"), self.X, self.y,
                                   sample_weight="exp")
        return self._fit

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_fit"] = None
        return state

    def __call__(self, phi, *, warm_start=None, seed=None):
        phi = np.asarray(phi, dtype=np.float64)
        if self.sklearn:
            return self._sklearn_fit()(phi)[:-1]   # drop the (zero) intercept
        w = np.exp(phi)
        H = (self.X.T * w) @ self.X + self.alpha * np.eye(self.X.shape[1])
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(H), self.X.T @ (w * self.y))

    def hypergradient(self, phi, grad_theta):
        """``dF/dphi`` for ``F = f(coef(phi))`` given ``df/dcoef`` (implicit function)."""
        w = np.exp(np.asarray(phi, dtype=np.float64))
        coef = self(phi)
        H = (self.X.T * w) @ self.X + self.alpha * np.eye(self.X.shape[1])
        v = np.linalg.solve(H, grad_theta)
        return w * (self.y - self.X @ coef) * (self.X @ v)


def reweight_case(size, *, features=5, num_val=200, flip=0.3, alpha=1e-2, tau=1e-2, rng=0,
                  sklearn=False):
    gen = np.random.default_rng(rng)
    w_true = gen.standard_normal(features)
    X = gen.standard_normal((size, features))
    y = X @ w_true + 0.1 * gen.standard_normal(size)
    flipped = gen.permutation(size)[:int(round(flip * size))]
    y[flipped] = -y[flipped]
    X_val = gen.standard_normal((num_val, features))
    y_val = X_val @ w_true + 0.1 * gen.standard_normal(num_val)
    solver = WeightedRidge(X, y, alpha=alpha, sklearn=sklearn)
    outer = ValidationMSE(X_val, y_val)
    problem = fz.BilevelProblem(inner=solver, outer=outer, num_params=size,
                                name=f"reweight-{size}")
    phi0 = np.zeros(size)
    bounds = (np.full(size, -6.0), np.full(size, 2.0))

    def fun_grad(phi):
        coef = solver(phi)
        return (float(np.sum(outer.residuals(coef, phi) ** 2)),
                solver.hypergradient(phi, outer.grad_theta(coef)))

    f0 = fun_grad(phi0)[0]
    f_star, phi_star = _reference(fun_grad, phi0, bounds)
    return Case(name=f"reweight-{size}", family="reweight", size=size, problem=problem,
                phi0=phi0, bounds=bounds, f0=f0, f_star=f_star, tau=tau,
                target_text=f"{tau:g} of the initial gap F0 - F*",
                residuals=outer.residuals, sigma0=1.0,
                info={"features": features, "flipped": len(flipped), "num_val": num_val,
                      "alpha": alpha, "phi_star": phi_star})


class ValidationMSE:
    """``mean((X_val coef - y_val)^2)`` (torch); ``residuals`` as a sum of squares."""

    def __init__(self, X_val, y_val):
        self.X_val = np.asarray(X_val, dtype=np.float64)
        self.y_val = np.asarray(y_val, dtype=np.float64)
        self._X, self._y = torch.as_tensor(self.X_val), torch.as_tensor(self.y_val)

    def __call__(self, theta, phi):
        return ((self._X @ theta - self._y) ** 2).mean()

    def residuals(self, theta, phi):
        return (self.X_val @ np.asarray(theta) - self.y_val) / math.sqrt(self.y_val.size)

    def grad_theta(self, theta):
        return 2.0 * self.X_val.T @ (self.X_val @ theta - self.y_val) / self.y_val.size


# -- (c) Burgers ---------------------------------------------------------------------------
class _BurgersResiduals:
    """Residuals of ``examples.pde_discovery.ObservationMisfit`` (mean of squares)."""

    def __init__(self, misfit):
        self.misfit = misfit

    def __call__(self, theta, phi):
        pred = self.misfit.predict(torch.as_tensor(np.asarray(theta))).numpy()
        u_obs = self.misfit.u_obs.numpy()
        return (pred - u_obs) / math.sqrt(u_obs.size)


def burgers_case(size=2, *, points=100, t_max=None, tau=1e-4, rng=0, dt=5e-3):
    """Learn ``(lam, nu)`` from ``points`` random observations of ``burgers.mat``.

    ``t_max`` keeps only observation times up to it (a shorter, cheaper simulation);
    ``dt = 5e-3`` (twice the solver's default step) still reproduces the data to 2.6e-6
    relative, at about 0.6 times the cost.
    """
    import solvers
    from examples import pde_discovery as pd

    if size != 2:
        raise ValueError(f"burgers: N is 2 (lam, nu), got {size}")
    x, t, u = solvers.load_raissi_mat(pd.DEFAULT_DATA)
    if t_max is not None:
        keep = int(np.searchsorted(t, t_max, side="right"))
        t, u = t[:keep], u[:keep]
    gen = np.random.default_rng(rng)
    it, ix = pd.sample_points(t, x, points, "random", gen)
    t_out = t[: it.max() + 1]
    learn = ("lam", "nu")
    simulator = solvers.Burgers(u[0], t_out, x0=x, x_out=x, learn=learn, dt=dt)
    misfit = pd.ObservationMisfit(t_out, x, t[it], x[ix], u[it, ix])
    inner = pd.LogCoefficients(simulator)
    problem = fz.BilevelProblem(inner=inner, outer=misfit, num_params=2,
                                name="burgers-2")
    truth = pd.KNOWN_TRUTH["burgers.mat"]
    phi_true = np.log([truth[name] for name in learn])
    phi0 = np.log([2.0 * solvers.Burgers.default_coefficients[name] for name in learn])
    # A factor 4 either way of the initial guess (the truth is a factor 2 below it).
    bounds = (phi0 - math.log(4.0), phi0 + math.log(4.0))
    f0 = problem.outer_value(inner(phi0), phi0)
    f_star = problem.outer_value(inner(phi_true), phi_true)
    return Case(name="burgers-2", family="burgers", size=2, problem=problem, phi0=phi0,
                bounds=bounds, f0=f0, f_star=f_star, tau=tau,
                target_text=(f"{tau:g} of the initial gap (the misfit is quadratic in the "
                             "coefficients' error: about 1 % relative error in nu and lam)"),
                residuals=_BurgersResiduals(misfit), sigma0=0.3,
                info={"points": points, "t_max": float(t_out[-1]), "phi_true": phi_true,
                      "f_star_is": "F at the known truth"})


_BUILDERS = {"diffusion": diffusion_case, "reweight": reweight_case, "burgers": burgers_case,
             "robust": robust_case}


def build_case(family, size, **options):
    """The :class:`Case` of ``family`` at ``size`` (options go to the family's builder)."""
    try:
        builder = _BUILDERS[family]
    except KeyError:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(_BUILDERS)}") from None
    return builder(size, **options)
