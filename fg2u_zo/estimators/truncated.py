"""Truncated reverse-mode unrolling (TRGU): backpropagate through the last K inner steps.

The cheap, biased phase-1 estimator of the two-phase paradigm on the torch path:
memory grows with ``K`` instead of the full unroll depth ``T``, and the bias is the
part of ``d theta_T / d phi`` carried by the first ``T - K`` steps, which a contractive
inner optimizer shrinks geometrically in ``K``.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import ClassVar


from ..validation import check_positive_int
from ..errors import FG2UValueError
from .base import Estimator
from ..evaluation.requests import done
from .exact import reverse_mode_gradient

__all__ = ["TRGU"]


def _accepts_truncation(fn) -> bool:
    try:
        return "backprop_steps" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False


def truncatable_inner(problem, who: str):
    """The torch inner solver of ``problem`` that takes ``backprop_steps=K``.

    Raises
    ------
    FG2UValueError
        When neither ``problem.inner_torch`` nor ``problem.inner.torch`` accepts it.
    """
    for fn in (problem.inner_torch, getattr(problem.inner, "torch", None)):
        if fn is not None and callable(fn) and _accepts_truncation(fn):
            return fn
    raise FG2UValueError(
        f"{who} needs an inner solver that can truncate its unrolled graph, i.e. a torch "
        "method `torch(phi, *, backprop_steps=K)`; build the problem with "
        "inner=solvers.TorchUnrolled(...) (the given inner solver "
        f"{type(problem.inner).__name__} has none), or use RGU / FG2U instead")


@dataclass(frozen=True)
class TRGU(Estimator):
    """Truncated reverse-mode gradient unrolling over the last ``backprop_steps`` steps.

    The first ``T - K`` inner steps run without an autograd graph and their result is
    treated as a constant; reverse mode differentiates the outer loss through the last
    ``K`` steps only. Memory ``O(K)`` rather than ``O(T)``; biased for ``K < T`` (the
    bias decays like ``rho^K`` for an inner optimizer contracting at rate ``rho``),
    exact (equal to :class:`RGU`) for ``K >= T``.

    Parameters
    ----------
    backprop_steps : int
        Number K of final inner steps differentiated through (>= 1).

    Notes
    -----
    Needs an inner solver whose ``torch`` method takes ``backprop_steps=`` such as
    :class:`solvers.TorchUnrolled`. ``nfev`` is 1 (one solve), ``stderr`` is zero (the
    estimate is deterministic, its error is a bias). ``rng`` and the backend options
    are accepted for interface symmetry and ignored: the torch path runs in the
    calling process.

    Examples
    --------
    >>> import numpy as np, torch
    >>> import fg2u_zo as fz
    >>> from solvers import TorchUnrolled
    >>> def loss(theta, phi):
    ...     return 0.5 * ((theta - phi) ** 2).sum()
    >>> problem = fz.BilevelProblem(
    ...     inner=TorchUnrolled(loss, theta0=np.zeros(3), steps=50, lr=0.5),
    ...     outer=lambda theta, phi: (theta ** 2).sum())
    >>> g = fz.TRGU(backprop_steps=10).estimate(problem, np.ones(3))
    >>> g.estimator, g.nfev
    ('TRGU', 1)
    >>> np.round(g.grad, 6)   # exact: 2; the steps left out carry 2 * 0.5**10
    array([1.998047, 1.998047, 1.998047])
    >>> np.round(fz.TRGU(backprop_steps=50).estimate(problem, np.ones(3)).grad, 6)
    array([2., 2., 2.])
    """

    backprop_steps: int = 10

    name: ClassVar[str] = "TRGU"

    def __post_init__(self):
        check_positive_int(self.backprop_steps, "backprop_steps")

    def check_problem(self, problem) -> None:
        truncatable_inner(problem, "TRGU")
        problem.require_differentiable_outer("TRGU")

    def plan(self, problem, phi, *, rng=None):
        """Truncated meta-gradient at ``phi``, computed in this process at once (the plan
        asks for no solve).

        Parameters
        ----------
        problem : BilevelProblem
            With a truncatable torch inner solver and a differentiable outer loss.
        phi : array_like, shape (N,)
        rng
            Ignored (interface symmetry with the other estimators).

        Returns
        -------
        generator
            A plan returning the MetaGradient (``stderr`` zeros, ``nfev == 1``).

        Raises
        ------
        FG2UValueError
            When the inner solver cannot truncate, or the outer loss is not a torch
            function.
        """
        wall_start = time.perf_counter()
        self.check_problem(problem)
        inner = truncatable_inner(problem, "TRGU")
        return done(reverse_mode_gradient(
            problem, lambda phi_t: inner(phi_t, backprop_steps=self.backprop_steps), phi,
            self.name, wall_start))
