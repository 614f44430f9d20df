"""Implicit differentiation with a truncated Neumann series for the inverse Hessian.

At an inner minimiser ``theta*`` of ``g(theta, phi)`` the implicit function theorem gives

    grad F = d_phi f - (d^2 g / d phi d theta) H^{-1} d_theta f,   H = d^2 g / d theta^2,

and ``H^{-1} v ~ alpha sum_{k<K} (I - alpha H)^k v`` needs only Hessian-vector
products. Cheap in memory (nothing is unrolled) and biased twice: ``theta_T`` is not
exactly ``theta*`` and the series is cut after K terms. A phase-1 estimator of the
two-phase paradigm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch.func import grad as func_grad
from torch.func import jvp, vjp

from ..validation import as_generator, check_phi, check_positive_float, check_positive_int
from ..errors import FG2UTypeError, FG2UValueError
from .base import Estimator
from ..evaluation.requests import Request, new_seed
from ..result import MetaGradient

__all__ = ["Neumann"]


def _solver_objects(problem):
    """The inner solver and, when ``inner_torch`` is a bound method, its owner."""
    objects = [problem.inner]
    owner = getattr(problem.inner_torch, "__self__", None)
    if owner is not None:
        objects.append(owner)
    return objects


@dataclass(frozen=True)
class Neumann(Estimator):
    """Implicit hypergradient with a ``terms``-term Neumann series for ``H^{-1}``.

    ``g_hat = d_phi f - (d^2 g / d phi d theta) u`` with
    ``u = alpha sum_{k=0}^{K-1} (I - alpha H)^k d_theta f``, ``H`` the inner Hessian at
    the solver's output ``theta_T``; Hessian-vector products are forward-over-reverse
    (``torch.func.jvp`` of the inner gradient), the mixed term one vector-Jacobian
    product. The series converges when ``0 < alpha < 2 / lambda_max(H)`` and ``H`` is
    positive definite; the error after K terms then decays like
    ``(1 - alpha lambda_min)^K``.

    Parameters
    ----------
    terms : int
        Number K of series terms (K - 1 Hessian-vector products), >= 1.
    alpha : float, optional
        Series step. Default: the inner solver's ``lr`` (the choice of Lorraine et al.,
        2020, for an SGD inner loop; it satisfies the bound whenever plain gradient
        descent with that ``lr`` converges). Pass it explicitly for Adam inner loops
        or solvers without ``lr``.
    inner_loss : callable, optional
        ``inner_loss(theta, phi) -> 0-d tensor`` in torch. Default: the inner solver's
        ``inner_loss`` attribute (:class:`solvers.TorchUnrolled` has one). Giving it
        here lets any black-box solver that minimises a known loss (a scipy or
        scikit-learn fit) be differentiated implicitly.

    Notes
    -----
    ``theta_T`` comes from the numpy inner solver through the :class:`Evaluator`
    (``nfev`` counts that one solve); when the solver object has a method
    ``inner_gradient(theta, phi)`` it is used for ``d g / d theta`` (so a hand-written
    inner gradient is honoured), else ``torch.func.grad(inner_loss)``. ``stderr`` is
    zero: the error is a bias, not noise. The estimate equals the exact
    hypergradient of ``F`` only as ``theta_T -> theta*`` and ``terms -> inf``.

    Examples
    --------
    >>> import numpy as np
    >>> import fg2u_zo as fz
    >>> from solvers import TorchUnrolled
    >>> def loss(theta, phi):                  # theta* = phi / 2
    ...     return ((theta - phi) ** 2).sum() / 2 + (theta ** 2).sum() / 2
    >>> problem = fz.BilevelProblem(
    ...     inner=TorchUnrolled(loss, theta0=np.zeros(2), steps=200, lr=0.25),
    ...     outer=lambda theta, phi: (theta ** 2).sum())
    >>> g = fz.Neumann(terms=100).estimate(problem, np.array([1.0, 2.0]))
    >>> np.round(g.grad, 6)                    # F = |phi|^2 / 4, grad = phi / 2
    array([0.5, 1. ])
    """

    terms: int = 20
    alpha: float | None = None
    inner_loss: Any = None

    name: ClassVar[str] = "Neumann"

    def __post_init__(self):
        check_positive_int(self.terms, "terms")
        check_positive_float(self.alpha, "alpha", allow_none=True)
        if self.inner_loss is not None and not callable(self.inner_loss):
            raise FG2UTypeError(
                "`inner_loss` must be a callable inner_loss(theta, phi) -> 0-d tensor, got "
                f"{type(self.inner_loss).__name__}")

    def check_problem(self, problem) -> None:
        problem.require_differentiable_outer("Neumann")
        self._inner_parts(problem)

    def _inner_parts(self, problem):
        """``(inner_gradient, alpha)`` for ``problem``, or a clear error."""
        objects = _solver_objects(problem)
        if self.inner_loss is not None:
            gradient = func_grad(self.inner_loss, argnums=0)
        else:
            owner = next((o for o in objects if callable(getattr(o, "inner_loss", None))), None)
            if owner is None:
                raise FG2UValueError(
                    "Neumann needs the inner loss g(theta, phi) for its Hessian-vector "
                    f"products, and the inner solver {type(problem.inner).__name__} has no "
                    "`inner_loss`; use inner=solvers.TorchUnrolled(...) or pass "
                    "Neumann(inner_loss=...) written in torch")
            method = getattr(owner, "inner_gradient", None)
            gradient = method if callable(method) else func_grad(owner.inner_loss, argnums=0)
        alpha = self.alpha
        if alpha is None:
            lr = next((getattr(o, "lr") for o in objects if hasattr(o, "lr")), None)
            if lr is None:
                raise FG2UValueError(
                    "`alpha` is required: the inner solver has no `lr` to default to; pass "
                    "Neumann(alpha=a) with 0 < a < 2 / (largest eigenvalue of the inner "
                    "Hessian)")
            alpha = check_positive_float(lr, "alpha (the inner solver's lr)")
        return gradient, float(alpha)

    def plan(self, problem, phi, *, rng=None):
        """Plan the implicit meta-gradient at ``phi``: one solve, then the series.

        Parameters
        ----------
        problem : BilevelProblem
            With a differentiable outer loss and a known inner loss (see ``inner_loss``).
        phi : array_like, shape (N,)
        rng : None, int or Generator
            Draws the seed handed to a stochastic inner solver (as in FG2UZO).

        Returns
        -------
        generator
            A plan that asks for the one solve and returns the MetaGradient
            (``stderr`` zeros, ``nfev`` the solves spent, 1 without retries).

        Raises
        ------
        FG2UValueError
            No inner loss, no ``alpha``, a non-differentiable outer loss, or a series
            that diverged (``alpha`` too large or a Hessian that is not positive
            definite).
        """
        self.check_problem(problem)
        gradient, alpha = self._inner_parts(problem)
        phi = check_phi(phi, problem.num_params)
        seed = new_seed(as_generator(rng))
        return self._plan(problem, phi, seed, gradient, alpha)

    def _plan(self, problem, phi, seed, gradient, alpha):
        wall_start = time.perf_counter()
        stats = yield Request(problem.inner, [phi], seed=seed, base=True, label="base")
        theta = stats.thetas[0]
        value, g_theta, direct = problem.outer_parts(theta, phi)

        theta_t = torch.as_tensor(np.asarray(theta, dtype=np.float64))
        phi_t = torch.as_tensor(phi)
        shape = theta_t.shape

        def grad_in_theta(th):
            return gradient(th, phi_t)

        def hvp(v):
            # Forward-over-reverse: one jvp of the inner gradient, no graph kept.
            return jvp(grad_in_theta, (theta_t,), (v,))[1]

        v = torch.as_tensor(g_theta, dtype=torch.float64).reshape(shape)
        term, total = v, v
        for _ in range(self.terms - 1):
            term = term - alpha * hvp(term)
            total = total + term
        # For positive definite H and 0 < alpha < 2 / lambda_max every eigenvalue of
        # I - alpha H lies in (-1, 1), so the terms cannot grow in norm: growth means
        # the series diverges and the sum is meaningless.
        diverged = not bool(torch.isfinite(total).all()) or (
            float(torch.linalg.vector_norm(term)) > float(torch.linalg.vector_norm(v)))
        u = alpha * total
        _, pullback = vjp(lambda p: gradient(theta_t, p), phi_t)
        (mixed,) = pullback(u)
        mixed = mixed.detach().numpy()
        if diverged or not np.all(np.isfinite(mixed)):
            raise FG2UValueError(
                f"the Neumann series diverged (alpha={alpha}, terms={self.terms}): `alpha` "
                "must be below 2 / (largest eigenvalue of the inner Hessian) and the Hessian "
                "positive definite at theta_T; lower `alpha`")
        grad = direct - mixed
        return MetaGradient(
            grad=grad, value=value, stderr=np.zeros_like(phi), nfev=stats.nfev,
            num_directions=0, failures=[], theta=np.asarray(theta, dtype=np.float64),
            estimator=self.name,
            solver_time=stats.solver_time,
            wall_time=time.perf_counter() - wall_start)
