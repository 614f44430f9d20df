"""The trust-region subproblem, solved exactly in a small subspace.

``min_a  g^T a + a^T H a / 2  subject to  ||a|| <= delta``, with ``H`` symmetric and
possibly indefinite. The dimension is that of the subspace a model-based stepper keeps
(tens to a few hundred), so one dense eigendecomposition ``H = V diag(lam) V^T`` makes
everything explicit (Moré and Sorensen, "Computing a trust region step", 1983; Conn,
Gould and Toint, "Trust-Region Methods", ch. 7):

- the global minimizer is ``a(sigma) = -(H + sigma I)^{-1} g`` for the unique
  ``sigma >= max(0, -lam_min)`` with ``H + sigma I`` positive semidefinite and
  ``sigma (delta - ||a||) = 0``;
- ``sigma = 0`` when ``H`` is positive definite and the Newton step lies inside;
- otherwise ``||a(sigma)|| = delta``: the secular equation
  ``1/||a(sigma)|| = 1/delta``, nearly linear in ``sigma``, solved by bracketing root
  finding (``scipy.optimize.brentq``) on ``(max(0, -lam_min), -lam_min + ||g||/delta]``;
- the *hard case*: ``g`` has no component along the eigenvectors of ``lam_min < 0`` and
  ``||a(-lam_min)|| < delta``; then ``a = a(-lam_min) + tau v_min`` with ``tau`` chosen
  so that ``||a|| = delta``.

For large ``d`` (or a Hessian known only through products), :class:`KrylovSubproblem`
solves the same problem in a Lanczos subspace; :class:`DenseSubproblem` wraps the exact
solver with the same interface, and :class:`LeastSquaresSubproblem` solves the
Gauss–Newton model of a sum of squares from the singular values of its residual
Jacobian (the eigenpairs of ``2 J^T J`` without forming it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.optimize

from ...errors import FG2UValueError

__all__ = ["TrustRegionStep", "solve_trust_region", "model_decrease", "DenseSubproblem",
           "LeastSquaresSubproblem", "KrylovSubproblem"]

#: Eigenvalues within this fraction of ``max |lam|`` of ``lam_min`` count as equal to it.
_EIG_TOL = 1e-10
#: A gradient component below this fraction of ``||g||`` counts as zero (hard case).
_ZERO_TOL = 1e-10


@dataclass(frozen=True)
class TrustRegionStep:
    """Solution of the trust-region subproblem.

    Attributes
    ----------
    step : ndarray, shape (d,)
        The minimizer ``a``.
    decrease : float
        The model's predicted decrease ``-(g^T a + a^T H a / 2)`` (>= 0).
    multiplier : float
        The Lagrange multiplier ``sigma`` (0 for an interior solution).
    on_boundary : bool
        Whether ``||a|| = delta`` (to round-off).
    hard_case : bool
        Whether the step came from the hard case.
    """

    step: np.ndarray
    decrease: float
    multiplier: float
    on_boundary: bool
    hard_case: bool = False


def model_decrease(g, H, a) -> float:
    """``-(g^T a + a^T H a / 2)``: what the quadratic model predicts the step gains."""
    a = np.asarray(a, dtype=np.float64)
    return float(-(g @ a + 0.5 * a @ (H @ a)))


def solve_trust_region(g, H, delta) -> TrustRegionStep:
    """Global minimizer of ``g^T a + a^T H a / 2`` over ``||a|| <= delta``.

    Parameters
    ----------
    g : array_like, shape (d,)
        Model gradient.
    H : array_like, shape (d, d)
        Model Hessian; symmetrized as ``(H + H^T) / 2``; may be indefinite or singular.
    delta : float
        Trust radius (> 0).

    Returns
    -------
    TrustRegionStep

    Raises
    ------
    FG2UValueError
        When the shapes disagree, an entry is not finite, or ``delta <= 0``.

    Examples
    --------
    >>> import numpy as np
    >>> r = solve_trust_region(np.array([1.0, 0.0]), np.diag([2.0, 1.0]), 10.0)
    >>> r.step.tolist(), r.on_boundary
    ([-0.5, 0.0], False)
    >>> r = solve_trust_region(np.zeros(2), np.diag([1.0, -1.0]), 2.0)   # hard case
    >>> np.abs(r.step).tolist(), r.hard_case
    ([0.0, 2.0], True)
    """
    g = np.asarray(g, dtype=np.float64).reshape(-1)
    H = np.asarray(H, dtype=np.float64)
    d = g.size
    if H.shape != (d, d):
        raise FG2UValueError(
            f"the model Hessian must have shape ({d}, {d}) to match the gradient, got "
            f"{H.shape}")
    if not (np.all(np.isfinite(g)) and np.all(np.isfinite(H))):
        raise FG2UValueError("the model gradient and Hessian must be finite")
    delta = _check_radius(delta)
    if d == 0:
        return TrustRegionStep(np.zeros(0), 0.0, 0.0, False)
    H = 0.5 * (H + H.T)
    lam, V = scipy.linalg.eigh(H)
    return _solve_eig(lam, V, V.T @ g, delta, lambda a: model_decrease(g, H, a))


def _check_radius(delta):
    delta = float(delta)
    if not (np.isfinite(delta) and delta > 0):
        raise FG2UValueError(f"the trust radius `delta` must be > 0, got {delta}")
    return delta


def _solve_eig(lam, V, gt, delta, decrease):
    """The Moré–Sorensen solution from an eigendecomposition ``H = V diag(lam) V^T``
    (``lam`` ascending) and the gradient's coordinates ``gt = V^T g``; ``decrease(a)``
    is the model's decrease along ``a``."""
    d = gt.size
    gnorm = float(np.linalg.norm(gt))
    scale = max(float(np.max(np.abs(lam))), np.finfo(np.float64).tiny)
    lam_min = float(lam[0])
    lower = max(0.0, -lam_min)
    # The eigenspace of lam_min, and whether g has (numerically) no part in it.
    low = lam - lam_min <= _EIG_TOL * scale
    flat = float(np.linalg.norm(gt[low])) <= _ZERO_TOL * max(gnorm, np.finfo(np.float64).tiny)

    def step_at(sigma):
        with np.errstate(divide="ignore", invalid="ignore"):
            return -gt / (lam + sigma)

    def finish(at, sigma, boundary, hard=False):
        a = V @ at
        norm = float(np.linalg.norm(a))
        if norm > delta:  # round-off past the boundary: pull it back
            a *= delta / norm
        return TrustRegionStep(a, max(decrease(a), 0.0), float(sigma), boundary, hard)

    if lam_min > _EIG_TOL * scale:
        newton = step_at(0.0)
        if np.linalg.norm(newton) <= delta:
            return finish(newton, 0.0, False)
    if flat:
        # Step at sigma = lower from the other eigen-components only (a pseudo-inverse).
        at = np.zeros(d)
        at[~low] = -gt[~low] / (lam[~low] + lower)
        norm = float(np.linalg.norm(at))
        if norm <= delta:
            if lam_min >= -_EIG_TOL * scale:
                # Positive semidefinite, g orthogonal to the null space: an interior
                # minimizer (not unique; the minimum-norm one).
                return finish(at, 0.0, False)
            # The hard case: add the leftmost eigenvector up to the boundary.
            tau = np.sqrt(max(delta ** 2 - norm ** 2, 0.0))
            at[int(np.flatnonzero(low)[0])] += tau
            return finish(at, lower, True, hard=True)

    def secular(sigma):
        # 1/delta - 1/||a(sigma)||: decreasing in sigma, nearly linear (Moré-Sorensen).
        norm = float(np.linalg.norm(step_at(sigma)))
        return 1.0 / delta - (0.0 if not np.isfinite(norm) else 1.0 / norm)

    if not secular(lower) > 0:
        # Only with lam_min a hair above 0 and a short step: an interior solution.
        at = step_at(lower)
        return finish(np.where(np.isfinite(at), at, 0.0), lower, False)
    upper = lower + gnorm / delta
    while secular(upper) > 0:  # only by round-off: ||a(upper)|| <= delta exactly
        upper = lower + 2.0 * (upper - lower) + np.finfo(np.float64).tiny
    sigma = scipy.optimize.brentq(secular, lower, upper, xtol=1e-15 * upper,
                                  rtol=4 * np.finfo(np.float64).eps, maxiter=200)
    at = step_at(sigma)
    at = np.where(np.isfinite(at), at, 0.0)
    norm = float(np.linalg.norm(at))
    if norm > 0:
        at *= delta / norm  # the root is on the boundary; remove the root finder's slack
    return finish(at, sigma, True)


class DenseSubproblem:
    """The subproblem with an explicit Hessian: :func:`solve_trust_region` at any radius
    (one eigendecomposition, shared by every radius asked for)."""

    def __init__(self, g, H):
        self.g, self.H = np.asarray(g, dtype=np.float64), np.asarray(H, dtype=np.float64)
        d = self.g.size
        if self.H.shape != (d, d):
            raise FG2UValueError(
                f"the model Hessian must have shape ({d}, {d}) to match the gradient, got "
                f"{self.H.shape}")
        if not (np.all(np.isfinite(self.g)) and np.all(np.isfinite(self.H))):
            raise FG2UValueError("the model gradient and Hessian must be finite")
        self.H = 0.5 * (self.H + self.H.T)
        self._eig = scipy.linalg.eigh(self.H) if d else None

    def solve(self, delta) -> TrustRegionStep:
        delta = _check_radius(delta)
        if self._eig is None:
            return TrustRegionStep(np.zeros(0), 0.0, 0.0, False)
        lam, V = self._eig
        return _solve_eig(lam, V, V.T @ self.g, delta, self.decrease)

    def decrease(self, a) -> float:
        return model_decrease(self.g, self.H, a)

    def restricted(self, c0, N) -> "DenseSubproblem":
        """The model along ``a = c0 + N t`` as a subproblem in ``t`` (its constant
        dropped): gradient ``N^T (g + H c0)``, Hessian ``N^T H N``."""
        return DenseSubproblem(N.T @ (self.g + self.H @ c0), N.T @ self.H @ N)


class LeastSquaresSubproblem:
    """The Gauss–Newton subproblem of a sum of squares, ``m(a) = ||r + J a||^2``, from
    the residuals ``r`` (K,) and their Jacobian ``J`` (K x d) in the subspace.

    ``g = 2 J^T r`` and ``H = 2 J^T J`` are never formed: the singular value
    decomposition ``J = U diag(s) V^T`` gives ``H``'s eigenpairs ``(2 s^2, V)`` and
    ``V^T g = 2 s (U^T r)`` with the accuracy of ``J`` itself, where an eigensolver on
    ``J^T J`` would lose the small singular values to its squared condition number
    (parameters six orders of magnitude apart). The decrease is computed as
    ``-(2 r^T J a + ||J a||^2)``, not as a difference of two sums of squares.

    Examples
    --------
    >>> import numpy as np
    >>> sub = LeastSquaresSubproblem(np.array([1.0, -2.0, 0.5]), np.eye(3)[:, :2])
    >>> r = sub.solve(10.0)
    >>> r.step.tolist(), round(r.decrease, 12)
    ([-1.0, 2.0], 5.0)
    """

    def __init__(self, r, J):
        self.r = np.asarray(r, dtype=np.float64).reshape(-1)
        self.J = np.asarray(J, dtype=np.float64)
        if self.J.ndim != 2 or self.J.shape[0] != self.r.size:
            raise FG2UValueError(
                f"the residual Jacobian must have shape ({self.r.size}, d), got "
                f"{self.J.shape}")
        if not (np.all(np.isfinite(self.r)) and np.all(np.isfinite(self.J))):
            raise FG2UValueError("the model gradient and Hessian must be finite")
        self.Jr = self.J.T @ self.r
        self.g = 2.0 * self.Jr
        d = self.J.shape[1]
        if d:
            U, s, Vt = scipy.linalg.svd(self.J, full_matrices=False,
                                        lapack_driver="gesvd")
            # Ascending eigenvalues of H = 2 J^T J; a tall J has d singular values,
            # a wide one fewer (the rest of H's spectrum is 0).
            lam = np.zeros(d)
            lam[:s.size] = 2.0 * s ** 2
            V = np.zeros((d, d))
            V[:, :s.size] = Vt.T
            gt = np.zeros(d)
            gt[:s.size] = 2.0 * s * (U.T @ self.r)
            if s.size < d:  # complete V with the null space of J
                V[:, s.size:] = scipy.linalg.null_space(Vt)
            order = np.argsort(lam, kind="stable")
            self._eig = (lam[order], V[:, order], gt[order])
        else:
            self._eig = None

    def solve(self, delta) -> TrustRegionStep:
        delta = _check_radius(delta)
        if self._eig is None:
            return TrustRegionStep(np.zeros(0), 0.0, 0.0, False)
        lam, V, gt = self._eig
        return _solve_eig(lam, V, gt, delta, self.decrease)

    def decrease(self, a) -> float:
        Ja = self.J @ np.asarray(a, dtype=np.float64)
        return float(-(2.0 * (self.r @ Ja) + Ja @ Ja))

    def restricted(self, c0, N) -> "LeastSquaresSubproblem":
        """The model along ``a = c0 + N t`` as a subproblem in ``t``: residuals
        ``r + J c0``, Jacobian ``J N``."""
        return LeastSquaresSubproblem(self.r + self.J @ c0, self.J @ N)


class KrylovSubproblem:
    """The subproblem with a Hessian known through products ``hess_vec(v)``, solved in
    a Lanczos (Krylov) subspace ``K_k(H, g)`` (the GLTR method of Gould, Lucidi, Roma
    and Toint, 1999).

    The Lanczos basis ``V`` (fully reorthogonalized) grows one product at a time; the
    projected problem ``min s^T V^T g + s^T (V^T H V) s / 2, ||s|| <= delta`` is solved
    exactly by :func:`solve_trust_region`, and ``a = V s``. Its residual in the full
    space is ``|beta_k s_k|`` (the Lanczos relation), so the basis stops growing once
    that is below ``rtol * ||g||``, once it spans an invariant subspace, or at
    ``max_dim``. The first basis vector is ``g``: every step decreases the model at
    least as much as the Cauchy step. The hard case (``g`` orthogonal to the leftmost
    eigenvector) is not resolved in the Krylov space; an inexact step is what
    trust-region methods allow.
    """

    def __init__(self, g, hess_vec, *, max_dim=None, rtol=1e-10):
        self.g = np.asarray(g, dtype=np.float64)
        self.hess_vec = hess_vec
        self.max_dim = self.g.size if max_dim is None else min(int(max_dim), self.g.size)
        self.rtol = float(rtol)
        self.gnorm = float(np.linalg.norm(self.g))
        self.V, self.HV = [], []
        self.beta = 0.0       # norm of the next (unnormalized) Lanczos vector
        self.products = 0     # Hessian-vector products spent

    def _grow(self):
        if not self.V:
            v = self.g / self.gnorm
        else:
            w = self.HV[-1].copy()
            for _ in range(2):  # full reorthogonalization, twice for stability
                w -= np.column_stack(self.V) @ (np.column_stack(self.V).T @ w)
            self.beta = float(np.linalg.norm(w))
            if self.beta <= 1e-14 * max(1.0, float(np.linalg.norm(self.HV[-1]))):
                self.beta = 0.0
                return False   # invariant subspace: the projected solution is exact
            v = w / self.beta
        self.V.append(v)
        self.HV.append(np.asarray(self.hess_vec(v), dtype=np.float64))
        self.products += 1
        return True

    def solve(self, delta) -> TrustRegionStep:
        if self.gnorm == 0.0:
            return TrustRegionStep(np.zeros_like(self.g), 0.0, 0.0, False)
        while True:
            if not self.V:
                self._grow()
            V = np.column_stack(self.V)
            T = V.T @ np.column_stack(self.HV)
            small = solve_trust_region(V.T @ self.g, 0.5 * (T + T.T), delta)
            # The next Lanczos vector's weight in H V s: beta_k |s_k| (after growing once
            # more, beta is known; before, estimate it from the last product).
            w = self.HV[-1] - V @ (V.T @ self.HV[-1])
            residual = float(np.linalg.norm(w)) * abs(small.step[-1])
            if (residual <= self.rtol * self.gnorm or len(self.V) >= self.max_dim
                    or not self._grow()):
                a = V @ small.step
                return TrustRegionStep(a, small.decrease, small.multiplier,
                                       small.on_boundary, small.hard_case)

    def decrease(self, a) -> float:
        a = np.asarray(a, dtype=np.float64)
        self.products += 1
        return float(-(self.g @ a + 0.5 * a @ np.asarray(self.hess_vec(a))))
