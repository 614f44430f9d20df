"""How the Gauss–Newton stepper measures the black box in one iteration.

:class:`Measurements` turns the run's extras into the solves of one parallel group (one
request): the trial points and the directional derivatives along directions, in the
run's unconstrained ``z`` (``phi = T(z)``), either

- by forward differences (FG2U-ZO's black-box path): the trials and the perturbed
  points ``clip(center + h u_i)`` in one request; or
- exactly, on the torch path (an estimator without a finite-difference step, such as
  :class:`~fg2u_zo.FG2U`, and a problem with ``inner_torch``): the trials as a request
  and ``J_S(phi) diag(T'(z)) u_i`` from ``torch.func.jvp`` through
  ``problem.inner_torch``, in this process. These forward-mode passes are not requests;
  the step's history ``info`` reports how many there were (``"jvp"``).

The difference step ``h`` (:meth:`Measurements.step`): the estimator's ``step`` when it
is a number; with ``step="auto"``, the step that balances the truncation error of a
forward difference, ``h kappa / 2``, against the rounding of the outputs,
``2 eps |theta| / h``, with ``kappa`` the curvature of the outputs measured for free by
the last trials (how far each landed from the model's linear prediction). Near a
solution of a badly scaled fit that curvature is large and the step shrinks below the
classical ``sqrt(eps)`` relative step, which stays its upper bound; a large-residual fit
needs that accuracy, its gradient ``J^T r`` being a difference of large terms. When the
noise of the outputs was measured (:meth:`Measurements.probe`) the noise-optimal step is
taken instead. The methods that solve are plans (``yield from``).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np

from ...errors import InnerSolverError
from ...estimators.exact import forward_tangents
from ...noise import NoiseEstimate, auto_step, probe_lines, probe_noise
from ...noise.steps import default_step, min_step
from ...result import Failure
from ..transforms import ParameterTransform, as_bounds
from .base import solve_points

__all__ = ["Measurements", "GroupResult", "Solved"]

_EPS = np.finfo(np.float64).eps


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
    """The outcome of one group: the trials' outputs and the new columns' data.

    ``points``/``thetas`` (finite differences) or ``U``/``JU`` (exact) describe the
    directions measured around ``center``, whose output is ``theta_center`` (None when
    it failed: the columns are lost).
    """

    theta_trials: list
    center: np.ndarray
    theta_center: np.ndarray | None
    points: list = field(default_factory=list)
    thetas: list = field(default_factory=list)
    U: np.ndarray | None = None
    JU: np.ndarray | None = None
    failures: list = field(default_factory=list)
    jvp: int = 0
    nfev: int = 0


class Measurements:
    """The solves of one Gauss–Newton iteration (see the module docstring)."""

    def __init__(self, *, problem, estimator, transform, rng, workers, noise, num_params):
        self.problem, self.estimator, self.rng = problem, estimator, rng
        if transform is None:
            transform = ParameterTransform.from_spec(None, num_params,
                                                     as_bounds(None, num_params))
        self.transform = transform
        self.workers = max(1, int(workers or 1))
        step = getattr(estimator, "step", None)
        self.fixed_step = (float(step) if isinstance(step, numbers.Real)
                           and not isinstance(step, bool) else None)
        self.exact = step is None and problem.inner_torch is not None
        self.noise = noise if isinstance(noise, NoiseEstimate) else None
        #: Whether the step is chosen here (``step="auto"``): only then does a
        #: noise estimate (a probe) change anything.
        self.auto = self.fixed_step is None and not self.exact
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
    def noise_estimate(self, noise_data=None):
        """The noise estimate in use: the run's, else the stepper's own probe's."""
        if self.noise is not None:
            return self.noise
        return None if noise_data is None else NoiseEstimate.from_dict(noise_data)

    def step(self, z, theta=None, curvature=None, noise_data=None) -> float:
        """The forward-difference step (a length in ``z``) at ``z``, whose output is
        ``theta``, given the outputs' curvature (``||d2 S / ds2||`` along recent steps;
        None: not measured yet)."""
        if self.fixed_step is not None:
            return self.fixed_step
        noise = self.noise_estimate(noise_data)
        if noise is not None and noise.status == "ok":
            return auto_step(noise, z, "forward")
        h = default_step(z, "forward")
        if curvature and theta is not None and np.isfinite(curvature):
            rounding = _EPS * float(np.linalg.norm(theta))
            if rounding > 0:
                h = min(h, 2.0 * float(np.sqrt(rounding / curvature)))
        return float(max(h, min_step(z)))

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
            return Solved(thetas=[None] * len(zs), failures=[failure], nfev=len(zs))
        return Solved(thetas=list(reply.thetas), failures=list(reply.failures),
                      nfev=reply.nfev, solver_time=reply.solver_time)

    def group(self, trials, center, U, h, warm_start, theta_center=None) -> GroupResult:
        """Solve the ``trials`` and measure the columns ``U`` around ``center`` (the
        first trial, or a point whose output ``theta_center`` is known), all in one
        request (a plan returning a :class:`GroupResult`). The trials come first in the
        request: a scheduler that reports results in order sees them first."""
        trials = list(trials)
        centered_on_trial = theta_center is None
        if self.exact:
            ev = yield from self.evaluate(trials, warm_start, label="trial")
            points = []
        else:
            points = self.perturb(center, U, h) if U.shape[1] else []
            ev = yield from self.evaluate(trials + points, warm_start,
                                          label="trial and directions" if trials
                                          else "directions")
        thetas = [_flat(t) for t in ev.thetas]
        theta_trials = thetas[:len(trials)]
        base = theta_trials[0] if centered_on_trial and trials else theta_center
        out = GroupResult(theta_trials, center, base, failures=list(ev.failures),
                          nfev=ev.nfev)
        if self.exact:
            if base is not None and U.shape[1]:
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
        """Noise and curvature along random lines in ``z`` (a plan returning the
        :class:`NoiseEstimate` and the probe's ``(points, outputs)``, which the stepper
        reuses as difference columns): each group of points of a line is one request of
        the points ``T(z)``, with a seed of its own."""
        _, g_theta, _ = self.problem.outer_parts(theta0, self.phi(z0))
        lines = probe_lines(self.rng, z0.size, "gaussian")
        seen = []

        def request(points, on_result, warm_start, expected_shape):
            request = solve_points(self.problem.inner, [self.phi(z) for z in points],
                                   self.rng, warm_start=warm_start, label="probe")

            def keep(index, theta, points=points, reduce=on_result):
                if theta is not None:
                    seen.append((np.asarray(points[index], dtype=np.float64),
                                 _flat(theta)))
                if reduce is not None:
                    reduce(index, theta)

            request.on_result = keep
            return request

        noise = yield from probe_noise(self.problem, z0, lines, theta0=theta0,
                                       g_theta=g_theta, quantity="inner", request=request,
                                       scheme="forward")
        return noise, seen


def _flat(theta):
    return None if theta is None else np.asarray(theta, dtype=np.float64).reshape(-1)
