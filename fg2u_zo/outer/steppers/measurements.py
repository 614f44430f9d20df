"""How the Gauss–Newton stepper measures the black box in one iteration.

:class:`Measurements` turns the run's extras into the solves of one parallel group (one
request): the trial point and the directional derivatives along new directions, in the
run's unconstrained ``z`` (``phi = T(z)``), either

- by forward differences (FG2U-ZO's black-box path): the trial and the perturbed points
  ``clip(center + h u_i)`` in one request; or
- exactly, on the torch path (an estimator without a finite-difference step, such as
  :class:`~fg2u_zo.FG2U`, and a problem with ``inner_torch``): the trial as a request
  (one counted solve) and ``J_S(phi) diag(T'(z)) u_i`` from ``torch.func.jvp`` through
  ``problem.inner_torch``, vmapped, in this process. These forward-mode passes are not
  requests; the step's history ``info`` reports how many there were (``"jvp"``).

It also chooses the difference step ``h`` and, with ``step="auto"`` and no noise
estimate, runs the noise probe (:func:`fg2u_zo.noise.probe_noise`), whose points are
requests like the others. The methods that solve are plans (``yield from``).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from ...errors import InnerSolverError
from ...estimators.exact import forward_tangents
from ...noise import NoiseEstimate, auto_step, probe_lines, probe_noise
from ...noise.steps import default_step
from ...result import Failure
from ..transforms import ParameterTransform, as_bounds
from .base import solve_points

__all__ = ["Measurements", "GroupResult", "Solved"]


@dataclass
class Solved:
    """The outcome of one request of the stepper: outputs (None where failed), the
    failures, and the solves spent."""

    thetas: list
    failures: list = field(default_factory=list)
    nfev: int = 0
    solver_time: float = 0.0


@dataclass
class GroupResult:
    """The outcome of one group: the trial's output and the new columns' data.

    ``points``/``thetas`` (finite differences) or ``U``/``JU`` (exact) describe the new
    directions around ``center``.
    """

    theta_trial: np.ndarray | None
    center: np.ndarray
    theta_center: np.ndarray | None
    points: list = field(default_factory=list)
    thetas: list = field(default_factory=list)
    U: np.ndarray | None = None
    JU: np.ndarray | None = None
    theta_extra: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    jvp: int = 0


class Measurements:
    """The solves of one Gauss–Newton iteration (see the module docstring)."""

    def __init__(self, *, problem, estimator, transform, rng, workers, noise,
                 num_directions, num_params):
        self.problem, self.estimator, self.rng = problem, estimator, rng
        if transform is None:
            transform = ParameterTransform.from_spec(None, num_params,
                                                     as_bounds(None, num_params))
        self.transform = transform
        self.b = (int(num_directions) if num_directions is not None
                  else max(1, int(workers or 1) - 1))
        step = getattr(estimator, "step", None)
        self.fixed_step = (float(step) if isinstance(step, numbers.Real)
                           and not isinstance(step, bool) else None)
        self.exact = step is None and problem.inner_torch is not None
        self.noise = noise if isinstance(noise, NoiseEstimate) else None
        self.needs_probe = step == "auto" and self.noise is None
        self.key = f"{problem.name}|{getattr(estimator, 'name', type(estimator).__name__)}"

    # -- the transform -------------------------------------------------------------------
    def phi(self, z):
        return self.transform.forward(z)

    def dphi(self, z):
        """``T'(z)``, elementwise."""
        return self.transform.chain(z, np.ones_like(z))

    def project(self, z):
        return self.transform.project(z)[0]

    # -- the step ------------------------------------------------------------------------
    def step(self, z, noise_data=None) -> float:
        """The forward-difference step (a length in ``z``)."""
        if self.fixed_step is not None:
            return self.fixed_step
        noise = self.noise
        if noise is None and noise_data is not None:
            noise = NoiseEstimate.from_dict(noise_data)
        if noise is not None:
            return auto_step(noise, z, "forward")
        return default_step(z, "forward")

    def perturb(self, base, U, h):
        """``base + h u`` per column of ``U``, projected onto the bounds; where a bound
        cuts the step, ``base - h u`` when that one stays inside."""
        points = []
        for u in U.T:
            p = base + h * u
            if np.array_equal(self.project(p), p):
                points.append(p)
                continue
            m = base - h * u
            points.append(m if np.array_equal(self.project(m), m) else self.project(p))
        return points

    # -- solving -------------------------------------------------------------------------
    def evaluate(self, zs, warm_start=None, label=""):
        """Solve at ``T(z)`` for each ``z`` in one request (a plan returning
        :class:`Solved`); a request the run gives up on (too many failures) comes back
        as all failed."""
        if not zs:
            return Solved(thetas=[])
        request = solve_points(self.problem.inner, [self.phi(z) for z in zs], self.rng,
                               warm_start=warm_start, label=label)
        try:
            reply = yield request
        except InnerSolverError as exc:
            failure = Failure(0, None, getattr(exc, "kind", "exception"), str(exc))
            return Solved(thetas=[None] * len(zs), failures=[failure])
        return Solved(thetas=list(reply.thetas), failures=list(reply.failures),
                      nfev=reply.nfev, solver_time=reply.solver_time)

    def group(self, trial, center, U, h, warm_start, theta_center=None,
              extra=()) -> GroupResult:
        """Solve the trial (or nothing, when ``trial`` is None) and the ``extra`` trial
        points, and measure the columns ``U`` around ``center`` (the trial, or the
        current point whose output ``theta_center`` is known), all in one request (a
        plan returning a :class:`GroupResult`)."""
        trials = ([trial] if trial is not None else []) + list(extra)
        if self.exact:
            ev = yield from self.evaluate(trials, warm_start, label="trial")
            thetas = [_flat(t) for t in ev.thetas]
        else:
            points = self.perturb(center, U, h)
            ev = yield from self.evaluate(trials + points, warm_start,
                                          label="trial and directions")
            thetas = [_flat(t) for t in ev.thetas]
        theta_t = thetas[0] if trial is not None else None
        first_extra = 1 if trial is not None else 0
        out = GroupResult(theta_t, center, theta_t if trial is not None else theta_center,
                          failures=list(ev.failures),
                          theta_extra=thetas[first_extra:len(trials)])
        if self.exact:
            if out.theta_center is not None and U.shape[1]:
                out.U, out.JU = U, self.jacobian_products(center, U)
                out.jvp = U.shape[1]
        else:
            out.points, out.thetas = points, thetas[len(trials):]
        return out

    def jacobian_products(self, z, U):
        """``J_S(T(z)) diag(T'(z)) U`` by forward mode through ``problem.inner_torch``."""
        V = np.ascontiguousarray((self.dphi(z)[:, None] * U).T)
        T = forward_tangents(self.problem.inner_torch, self.phi(z), V,
                             chunk_size=getattr(self.estimator, "chunk_size", None),
                             vectorize=getattr(self.estimator, "vectorize", True))
        return T.T

    # -- the noise probe -----------------------------------------------------------------
    def probe(self, z0, theta0):
        """Noise and curvature along random lines in ``z`` (a plan returning a
        :class:`NoiseEstimate`): each group of points of a line is one request of the
        points ``T(z)``, with a seed of its own."""
        _, g_theta, _ = self.problem.outer_parts(theta0, self.phi(z0))
        lines = probe_lines(self.rng, z0.size, "gaussian")

        def request(points, on_result, warm_start, expected_shape):
            request = solve_points(self.problem.inner, [self.phi(z) for z in points],
                                   self.rng, warm_start=warm_start, label="probe")
            request.on_result = on_result
            return request

        return (yield from probe_noise(self.problem, z0, lines, theta0=theta0,
                                       g_theta=g_theta, quantity="inner", request=request,
                                       scheme="forward"))


def _flat(theta):
    return None if theta is None else np.asarray(theta, dtype=np.float64).reshape(-1)
