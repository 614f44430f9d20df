"""Evaluations along one probe line, and the derivatives measured from them.

Moré and Wild, *Estimating derivatives of noisy simulations* (2012): with the noise
level known, a derivative is measured by a difference whose span is just large
enough to rise well above the noise; the span is widened a few points at a time
until it does.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InnerSolverError
from .steps import max_step, predicted_fd_error
from .table import MAX_RELATIVE_CHANGE

__all__ = ["ProbeLine", "measured_derivative", "measured_slope", "refine_derivatives"]

#: A difference accepted for a derivative estimate must exceed its own noise (the
#: noise level times the stencil's noise amplification) by this factor, so that
#: noise moves the estimate by 5% at most (Moré and Wild's acceptance test).
_SIGNAL_TO_NOISE = 20.0

#: When no difference passes, the derivative is bounded by a difference of this
#: many standard deviations of the stencil's noise: a 3-sigma upper bound.
_BOUND_SIGMAS = 3.0


class ProbeLine:
    """Solver outputs and the examined scalar along ``phi + t u``, keyed by ``t``.

    ``request(points, on_result, warm_start, expected_shape)`` makes the
    :class:`~fg2u_zo.evaluation.requests.Request` that solves points of the line;
    ``seed`` (the solves' seed, if any) also seeds the Monte Carlo propagation of
    output noise through a black-box outer loss.
    """

    def __init__(self, problem, phi, u, theta0, quantity, g_theta, request, seed=None):
        self.problem, self.phi, self.u = problem, phi, u
        self.quantity, self.request, self.seed = quantity, request, seed
        self.theta0 = theta0
        self.shape = theta0.shape
        if quantity == "inner":
            self.g = np.asarray(g_theta, dtype=np.float64).ravel()
            self.weights = self.g ** 2
        else:
            self.g = None
            self.weights = np.ones(theta0.size)
        self.thetas, self.values, self.mags = {}, {}, {}
        self.nfev, self.solver_time = 0, 0.0
        self._store(0.0, theta0)

    def point(self, t):
        # Built as phi + t u exactly like the estimate's perturbed points, so the
        # solver sees the same kind of point the finite differences will.
        return self.phi + t * self.u

    def _store(self, t, theta):
        flat = np.asarray(theta, dtype=np.float64).ravel()
        self.thetas[t] = flat
        if self.quantity == "inner":
            terms = self.g * flat
            self.values[t] = float(np.sum(terms))
            self.mags[t] = float(np.sum(np.abs(terms)))
        else:
            value = self.problem.outer_value(theta, self.point(t))
            self.values[t] = value
            self.mags[t] = abs(value)

    def evaluate(self, ts):
        """Solve at the points ``t`` not seen yet (a plan: it yields one request);
        returns the set of those that failed."""
        todo = [t for t in ts if t not in self.thetas]
        if not todo:
            return set()
        points = [self.point(t) for t in todo]

        def on_result(k, theta):
            self._store(todo[k], theta)

        try:
            reply = yield self.request(points, on_result, self.theta0, self.shape)
        except InnerSolverError:
            # Too many points failed (the line left the solver's domain, say): for the
            # probe that only means "not this far". The error carries no count; each
            # point was tried at least once.
            self.nfev += len(todo)
            for t in todo:
                self.thetas.pop(t, None)
                self.values.pop(t, None)
                self.mags.pop(t, None)
            return set(todo)
        self.nfev += reply.nfev
        self.solver_time += reply.solver_time
        return {todo[f.index] for f in reply.failures}

    def noise_from_outputs(self, output_noise, draws=64):
        """Noise of the examined scalar caused by independent noise on each output."""
        if self.quantity == "inner":
            return float(np.sqrt(np.sum((self.g * output_noise) ** 2)))
        # The outer loss is a black box here: propagate by Monte Carlo, with uniform
        # errors of the same standard deviation (rounding's distribution), drawn
        # from a fixed generator so the estimate is reproducible.
        rng = np.random.default_rng(0 if self.seed is None else self.seed)
        half = math.sqrt(3.0) * output_noise
        base = self.theta0.ravel()
        values = [self.problem.outer_value(
            (base + rng.uniform(-half, half)).reshape(self.shape), self.phi)
            for _ in range(draws)]
        return float(np.std(values, ddof=1))

    def has(self, *ts):
        return all(t in self.values for t in ts)

    def f(self, t):
        return self.values[t]



def _difference(line, p, h):
    """Centred difference of order ``p`` (1, 2, 3) at span ``h``, or None if not at hand.

    Returns ``(D, c, nsd, change)``: ``D ~ c h**p f^(p)``, the noise standard
    deviation of ``D`` in units of the noise, and the largest change of ``f`` from
    ``f(0)`` over the stencil.
    """
    f0 = line.f(0.0)
    if p == 1:
        if not line.has(h, -h):
            return None
        a, b = line.f(h), line.f(-h)
        return a - b, 2.0, math.sqrt(2.0), max(abs(a - f0), abs(b - f0))
    if p == 2:
        if not line.has(h, -h):
            return None
        a, b = line.f(h), line.f(-h)
        return a - 2.0 * f0 + b, 1.0, math.sqrt(6.0), max(abs(a - f0), abs(b - f0))
    if not line.has(h, -h, 2 * h, -2 * h):
        return None
    a1, b1, a2, b2 = line.f(h), line.f(-h), line.f(2 * h), line.f(-2 * h)
    change = max(abs(x - f0) for x in (a1, b1, a2, b2))
    return a2 - 2.0 * a1 + 2.0 * b1 - b2, 2.0, math.sqrt(10.0), change


def _spans(line):
    return sorted({abs(t) for t in line.values if t > 0 and -t in line.values})


def measured_derivative(line, p, noise, scale):
    """``(|f^(p)|, accepted, largest span)`` from the spans at hand.

    The smallest span whose difference rises ``_SIGNAL_TO_NOISE`` times above its
    noise is used (least truncation error among the trustworthy ones). When none
    does, the largest span gives an upper bound ``max(|D|, 100 sigma) / (c h**p)``:
    the function is flatter than that, so a step computed from it errs on the
    small, safe side.
    """
    largest = None
    for h in _spans(line):
        diff = _difference(line, p, h)
        if diff is None:
            continue
        D, c, nsd, change = diff
        if change > MAX_RELATIVE_CHANGE * scale:
            break  # spans only grow from here: no longer local
        if abs(D) >= _SIGNAL_TO_NOISE * nsd * noise:
            return abs(D) / (c * h ** p), True, h
        largest = (h, D, c, nsd)
    if largest is None:
        return np.nan, False, 0.0
    h, D, c, nsd = largest
    return max(abs(D), _BOUND_SIGMAS * nsd * noise) / (c * h ** p), False, h


def measured_slope(line, noise, third):
    """``|f'|`` from the central difference with the smallest predicted error."""
    best = (np.inf, np.nan)
    for h in _spans(line):
        diff = _difference(line, 1, h)
        if diff is None:
            continue
        D = diff[0]
        err = predicted_fd_error(h, noise, third, "central") if np.isfinite(third) else 0.0
        if err < best[0] or not np.isfinite(best[0]):
            best = (err, abs(D) / (2.0 * h))
    return best[1]


def refine_derivatives(line, noise, scale, p, phi, max_rounds=3):
    """Moré and Wild's derivative step: widen the span until the ``p``-th difference
    stands out of the noise, a few points at a time along the same line (a plan)."""
    h_cap = max_step(phi)
    for _ in range(max_rounds):
        mu, accepted, largest = measured_derivative(line, p, noise, scale)
        if accepted or largest <= 0 or largest >= h_cap or not np.isfinite(mu):
            return
        c, nsd = (1.0, math.sqrt(6.0)) if p == 2 else (2.0, math.sqrt(10.0))
        D = _difference(line, p, largest)[0]
        if abs(D) > _BOUND_SIGMAS * nsd * noise:
            # The difference is seen: aim at twice the acceptance threshold.
            need = 2.0 * _SIGNAL_TO_NOISE * nsd * noise
            growth = (need / abs(D)) ** (1.0 / p)
        else:
            growth = 10.0  # lost in the noise: no clue how far, widen by a decade
        h = float(min(h_cap, largest * min(100.0, max(2.0, growth))))
        ts = [h, -h] if p == 2 else [h, -h, 2 * h, -2 * h]
        if (yield from line.evaluate(ts)):
            return  # a failed point: keep what we have
