"""What a run does when the call does not say: the method a problem gets by default.

:func:`default_method` is consulted by :func:`fg2u_zo.minimize` (and
:class:`~fg2u_zo.AskTell`, :func:`fg2u_zo.multistart`, the CLI) when ``optimizer``,
``estimator`` or ``steps`` are left out:

- an outer loss written in torch (``differentiable_outer=True``): the Gauss–Newton
  trust region (``optimizer="gauss-newton"``), which stops by itself, on forward
  differences of the black box (``FG2UZO(scheme="forward")``, its step sized from the
  outputs, or ``FG2U`` columns when only a torch inner solver was given); up to
  :data:`FULL_MEMORY` parameters it keeps every direction, above it the newest
  :data:`FULL_MEMORY` (a subspace method);
- an outer loss that is not differentiable: the first-order path, Adam on
  ``BlackBoxES`` estimates of the whole objective.

The result says which was used (``OptimizeResult.optimizer``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["default_method", "default_estimator", "DefaultMethod", "FULL_MEMORY",
           "FIRST_ORDER_STEPS"]

#: Directions the default Gauss–Newton stepper keeps: all N up to this many, the newest
#: this many above (the model then lives in a subspace, as DFBGN's).
FULL_MEMORY = 1000
#: Steps of a first-order run when ``steps`` is left out (the historical default).
FIRST_ORDER_STEPS = 100


@dataclass(frozen=True)
class DefaultMethod:
    """The stepper (by name and options), the estimator and the steps of a default run."""

    optimizer: str
    optimizer_options: dict
    estimator: object
    steps: int


def default_method(problem, num_params) -> DefaultMethod:
    """The default method for ``problem`` with ``num_params`` parameters.

    Examples
    --------
    >>> import numpy as np, fg2u_zo as fz
    >>> problem = fz.BilevelProblem(inner=lambda phi: 2 * phi,
    ...                             outer=lambda theta, phi: (theta ** 2).sum())
    >>> default_method(problem, 3).optimizer
    'gauss-newton'
    >>> blind = fz.BilevelProblem(inner=lambda phi: 2 * phi, differentiable_outer=False,
    ...                           outer=lambda theta, phi: float(np.abs(theta).sum()))
    >>> m = default_method(blind, 3)
    >>> m.optimizer, type(m.estimator).__name__
    ('adam', 'BlackBoxES')
    """
    if not problem.differentiable_outer:
        return DefaultMethod("adam", {}, default_estimator(problem, "adam"),
                             FIRST_ORDER_STEPS)
    options = {} if num_params <= FULL_MEMORY else {"memory": FULL_MEMORY}
    # The stepper stops by itself; the cap on iterations only guards against a run
    # that never converges (DFO-LS's default budget is 100 (N + 1) evaluations).
    return DefaultMethod("gauss-newton", options,
                         default_estimator(problem, "gauss-newton"), 100 * (num_params + 1))


def default_estimator(problem, stepper_name):
    """The estimator a run gets when it names none: for the Gauss–Newton stepper
    ``FG2UZO(scheme="forward")`` (it keeps the perturbed outputs as model columns), for
    a first-order stepper ``FG2UZO()``; ``FG2U()`` when only a torch inner solver was
    given, ``BlackBoxES()`` when the outer loss is not differentiable."""
    from ..estimators.exact import FG2U
    from ..estimators.zeroth_order import FG2UZO, BlackBoxES
    from ..problem import TorchAsNumpy

    if not problem.differentiable_outer:
        return BlackBoxES()
    if isinstance(problem.inner, TorchAsNumpy):
        return FG2U()  # columns and estimates exactly, by forward mode
    return FG2UZO(scheme="forward") if stepper_name == "gauss-newton" else FG2UZO()
