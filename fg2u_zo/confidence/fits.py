"""The fits of a profile: one parameter held fixed, the others re-optimized.

Each fit is an independent :func:`fg2u_zo.minimize` run with ``optimizer="gauss-newton"``
on a reduced :class:`~fg2u_zo.BilevelProblem` over the free parameters (the fixed one
inserted into ``phi`` before the solver and the loss see it), warm-started by the
caller. :func:`run_fits` is the one loop over fits: it runs a round of fits side by
side (:func:`fg2u_zo.outer.together.minimize_together`), so that the solves of every
fit's step go to the Evaluator as one parallel group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..evaluation.solver_memory import accepted_keywords
from ..noise.steps import step_scale

__all__ = ["Fit", "FitOutcome", "FitSettings", "FixedInner", "FixedOuter", "run_fits",
           "MAX_FIT_STEPS"]

#: Gauss–Newton iterations a profile fit takes at most.
MAX_FIT_STEPS = 60


class FixedInner:
    """The inner solver with parameter ``index`` fixed at ``value`` (picklable)."""

    def __init__(self, inner, index, value):
        self.inner, self.index, self.value = inner, int(index), float(value)
        self.accepted = accepted_keywords(inner)

    def __call__(self, phi_free, *, warm_start=None, seed=None):
        phi = np.insert(np.asarray(phi_free, dtype=np.float64), self.index, self.value)
        kwargs = {}
        if warm_start is not None and "warm_start" in self.accepted:
            kwargs["warm_start"] = warm_start
        if seed is not None and "seed" in self.accepted:
            kwargs["seed"] = seed
        return self.inner(phi, **kwargs)


class FixedOuter:
    """The torch outer loss with parameter ``index`` fixed at ``value``."""

    def __init__(self, outer, index, value):
        self.outer, self.index, self.value = outer, int(index), float(value)

    def __call__(self, theta, phi_free):
        import torch
        fixed = torch.full((1,), self.value, dtype=phi_free.dtype)
        phi = torch.cat([phi_free[:self.index], fixed, phi_free[self.index:]])
        return self.outer(theta, phi)


@dataclass(frozen=True)
class Fit:
    """Fit the others with ``z[index]`` fixed at ``z_fixed``, starting from ``start``
    (a point in ``z`` of all N parameters; its entry ``index`` is ignored)."""

    index: int
    z_fixed: float
    start: np.ndarray


@dataclass(frozen=True)
class FitOutcome:
    """The profile's value at ``z[index] = z_fixed``: the loss minimized over the other
    parameters (NaN when the fit failed, with ``error`` set), at the point ``z``."""

    value: float
    z: np.ndarray
    error: BaseException | None = None


@dataclass(frozen=True)
class FitSettings:
    """What every fit of one profile shares.

    Attributes
    ----------
    problem : BilevelProblem
    transform : ParameterTransform
    step : float
        The relative forward-difference step of the Gauss–Newton models.
    value_tol : float
        A fit stops once an accepted step lowered the loss by less than this.
    step_tol : ndarray, shape (N,)
        ... or once a step (or a rejected trial) was shorter than this, in ``z``; entry
        ``j`` applies to the fits with parameter ``j`` fixed.
    radius : ndarray, shape (N,)
        Initial trust radius of those fits (NaN: the stepper's default).
    """

    problem: object
    transform: object
    step: float
    value_tol: float
    step_tol: np.ndarray
    radius: np.ndarray


def _stop_rule(value_tol, step_tol):
    """A ``minimize`` callback: converged once a step changed little.

    A Gauss–Newton record carries the value after its step; the decrease is measured
    against the previous record's.
    """
    previous = []

    def converged(record):
        info = record.info or {}
        before = previous[-1] if previous else None
        previous.append(record.value)
        if record.step == 0:
            return False
        accepted = info.get("accepted")
        if accepted is None:
            # No trial: the model's minimum is the current point.
            return True
        if accepted and before is not None and before - record.value <= value_tol:
            return True
        return float(info.get("step_norm") or 0.0) <= step_tol

    return converged


def _call(fit, settings, seed):
    """The fit as the arguments of its :func:`~fg2u_zo.minimize` run, or as the one point
    to solve when nothing is free (N = 1): ``(call, z)`` or ``(phi, z)``."""
    from ..estimators.zeroth_order import FG2UZO
    from ..problem import BilevelProblem

    problem, T = settings.problem, settings.transform
    j, n = fit.index, fit.start.size
    z = np.array(fit.start, dtype=np.float64)
    z[j] = fit.z_fixed
    phi = T.forward(z)
    if n == 1:
        return None, phi, z
    free = np.arange(n) != j
    kinds = [k for i, k in enumerate(T.kinds) if i != j]
    lower, upper = T.bounds.lower[free], T.bounds.upper[free]
    reduced = BilevelProblem(inner=FixedInner(problem.inner, j, phi[j]),
                             outer=FixedOuter(problem.outer, j, phi[j]),
                             num_params=n - 1, name=problem.name)
    start = np.clip(phi[free], lower, upper)
    radius = settings.radius[j]
    options = {"num_directions": n - 1}
    if np.isfinite(radius):
        options["radius"] = float(radius)
    h = settings.step * step_scale(z[free])
    # The trust radius never falls below the difference step h (the model resolves
    # nothing shorter): steps of that length are converged, whatever step_tol says.
    step_tol = max(float(settings.step_tol[j]), 1.5 * h)
    call = dict(problem=reduced, phi0=start, estimator=FG2UZO(step=h, scheme="forward"),
                optimizer="gauss-newton", optimizer_options=options, steps=MAX_FIT_STEPS,
                transform=kinds, bounds=(lower, upper),
                callback=_stop_rule(settings.value_tol, step_tol), rng=seed)
    return call, phi, z


def run_fits(fits, settings, evaluator, rng):
    """Run ``fits`` side by side; their solves go to ``evaluator`` in shared groups.

    Parameters
    ----------
    fits : list of Fit
    settings : FitSettings
    evaluator : Evaluator
    rng : numpy.random.Generator
        Seeds each fit's directions (one draw per fit, in order).

    Returns
    -------
    outcomes : list of FitOutcome
    nfev : int
        Solves of all the fits.
    """
    from ..evaluation.requests import Request
    from ..outer.together import minimize_together

    seeds = [int(s) for s in rng.integers(2**31 - 1, size=len(fits))]
    made = [_call(f, settings, s) for f, s in zip(fits, seeds)]
    outcomes = [None] * len(fits)
    nfev = 0
    # Nothing free (N = 1): the profile's value is one solve at the fixed point.
    lone = [k for k, (call, _, _) in enumerate(made) if call is None]
    if lone:
        problem = settings.problem
        replies = evaluator.evaluate([Request(problem.inner, [made[k][1]], seed=seeds[k],
                                              base=True, label="profile")
                                      for k in lone])
        for k, reply in zip(lone, replies):
            nfev += reply.nfev
            _, phi, z = made[k]
            outcomes[k] = (FitOutcome(np.nan, z, reply.error) if reply.error is not None
                           else FitOutcome(float(problem.outer_value(reply.thetas[0], phi)),
                                           z))
    fitted = [k for k, (call, _, _) in enumerate(made) if call is not None]
    if fitted:
        results, _ = minimize_together([made[k][0] for k in fitted], evaluator)
        for k, res in zip(fitted, results):
            fit, z = fits[k], made[k][2]
            if isinstance(res, BaseException) or res is None:
                outcomes[k] = FitOutcome(np.nan, np.array(fit.start, dtype=np.float64), res)
                continue
            nfev += res.nfev
            out = z.copy()
            out[np.arange(z.size) != fit.index] = res.z
            outcomes[k] = FitOutcome(float(res.value), out)
    return outcomes, nfev
