"""Zeroth-order estimators: directional finite differences through a black box.

FG2UZO differentiates the outer loss exactly and replaces each Jacobian-vector
product of the inner solver by a finite difference; BlackBoxES differences the whole
outer objective; CoordinateFD is the deterministic N-direction reference.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..directions import DIRECTION_FAMILIES, sample_directions
from ..errors import FG2UValueError, InnerSolverError
from ..evaluation.requests import Request, new_seed
from ..validation import as_generator, check_choice, check_phi, check_positive_int
from .base import Estimator, combine_projections, frame_block_size
from .reductions import InnerProjection, KeepOutputs, ValueDifference, check_keep_sketch
from ..noise import auto_step, check_noise_estimate, difference_ratio, probe_lines, probe_noise
from ..noise.advice import check_warned, warn_zero_differences
from ..noise.resolution import OutputResolution
from ..result import Failure, MetaGradient
from ..noise.steps import check_step

__all__ = ["FG2UZO", "BlackBoxES", "CoordinateFD"]

SCHEMES = ("forward", "central")


class _PerturbedPoints:
    """The plan's points ``phi + sign * h * u_i``, built on demand (no b x N copy).

    Central scheme: point ``2i`` is ``+h u_i`` and ``2i + 1`` is ``-h u_i``;
    forward scheme: point ``i`` is ``+h u_i``.
    """

    def __init__(self, phi, U, h, scheme):
        self.phi, self.U, self.h = phi, U, h
        self.per_direction = 2 if scheme == "central" else 1

    def __len__(self):
        return self.U.shape[0] * self.per_direction

    def __getitem__(self, k):
        i, side = divmod(k, self.per_direction)
        sign = -1.0 if side else 1.0
        # Adding the displacement first and differencing against phi would re-round it;
        # the solver sees exactly phi + (sign * h) * u_i.
        return self.phi + (sign * self.h) * self.U[i]

    def direction(self, k):
        return k // self.per_direction


def _finite_difference_plan(estimator, problem, phi, V, *, step, scheme, project, seed,
                            pairs, directions, exact_basis=False, noise=None,
                            probe_lines=None, keep_sketch=False, warned=None):
    """Shared plan of the finite-difference estimators.

    ``project="inner"``: reduce each perturbed theta with :class:`InnerProjection`
    (FG2U-ZO); ``project="value"``: with :class:`ValueDifference` (black box).
    Each output is reduced to one number as it arrives and then dropped, so memory
    stays O(N + M) whatever the number of directions; ``keep_sketch=True`` wraps the
    reduction in :class:`KeepOutputs`, which also keeps the outputs (O(M b)) for the
    estimate's :class:`~fg2u_zo.result.Sketch`.

    ``step="auto"`` takes the noise-optimal step of ``noise`` (a NoiseEstimate to
    reuse) or, when it is None, probes the noise along ``probe_lines`` first,
    sharing the base solve; the probe's solves are counted in ``nfev``.

    Each perturbed output is also compared with the base output
    (:class:`~fg2u_zo.noise.resolution.OutputResolution`): a direction whose outputs
    did not move beyond the output resolution counts in ``zero_differences``, and an
    estimate with no other direction warns (once per ``warned`` set).
    """
    wall_start = time.perf_counter()
    base = yield Request(problem.inner, [phi], seed=seed, base=True, label="base")
    theta0 = base.thetas[0]
    if project == "inner":
        value, g_theta, direct = problem.outer_parts(theta0, phi)
        reduction = InnerProjection(g_theta, theta0)
    else:
        value = problem.outer_value(theta0, phi)
        direct = np.zeros_like(phi)
        reduction = ValueDifference(problem, value)

    probe_nfev, probe_time = 0, 0.0
    if step == "auto" and noise is None:
        noise = yield from probe_noise(problem, phi, probe_lines, theta0=theta0,
                                       g_theta=g_theta if project == "inner" else None,
                                       quantity=project, seed=seed, scheme=scheme,
                                       warned=warned)
        probe_nfev, probe_time = noise.nfev, noise.solver_time
    h = auto_step(noise, phi, scheme) if step == "auto" else step
    norms = np.linalg.norm(V, axis=1)
    U = V / norms[:, None]
    points = _PerturbedPoints(phi, U, h, scheme)
    diffs = np.full(len(points), np.nan)
    if keep_sketch:
        reduction = KeepOutputs(reduction, theta0, len(points))
    resolution = OutputResolution(theta0, len(points), noise)

    def on_result(k, theta):
        diffs[k] = reduction(k, points[k], theta)
        resolution.observe(k, theta)

    stats = yield Request(problem.inner, points, seed=seed, warm_start=theta0,
                          expected_shape=theta0.shape, on_result=on_result,
                          label="directions")

    b = V.shape[0]
    failed_dirs = {points.direction(f.index) for f in stats.failures}
    if pairs:  # an antithetic pair enters whole or not at all
        failed_dirs |= {i ^ 1 for i in failed_dirs}
    if exact_basis and failed_dirs:
        # Dropping a coordinate would silently zero that component: refuse instead.
        first = stats.failures[0]
        raise InnerSolverError(
            f"{len(stats.failures)} coordinate evaluation(s) failed; CoordinateFD needs all "
            f"of them (first failure, {first.kind}):\n{first.message}",
            kind=first.kind, detail=first.message)
    ok = np.array([i not in failed_dirs for i in range(b)])
    if not ok.any():
        # Unreachable with max_failure_fraction < 1, kept as a guard against a NaN result.
        raise FG2UValueError("every direction failed; no estimate can be formed")
    if scheme == "central":
        c = norms * (diffs[0::2] - diffs[1::2]) / (2.0 * h)
    else:
        c = norms * diffs / h
    if noise is not None:
        # How far the differences rose above the noise: the refresh diagnostic.
        noise = difference_ratio(noise, diffs[0::2] - diffs[1::2] if scheme == "central"
                                 else diffs, g_theta if project == "inner" else None)
    block = None if pairs else frame_block_size(directions, phi.size, b - int(ok.sum()))
    grad, stderr = combine_projections(direct, V[ok], c[ok], pairs=pairs, block_size=block)
    failures = [Failure(f.index, points.direction(f.index), f.kind, f.message, f.attempts)
                for f in stats.failures]
    below = resolution.below()
    flat = below.reshape(b, points.per_direction).all(axis=1) & ok
    zero_differences = int(flat.sum())
    if zero_differences == int(ok.sum()):
        warn_zero_differences(h, scheme, zero_differences, resolution.describe(below),
                              resolution.suggested_step(phi, scheme), warned)
    return MetaGradient(
        grad=grad, value=value, stderr=stderr,
        nfev=base.nfev + probe_nfev + stats.nfev,
        num_directions=int(ok.sum()), failures=failures, theta=theta0,
        estimator=estimator.name, step=h, scheme=scheme,
        solver_time=base.solver_time + probe_time + stats.solver_time,
        wall_time=time.perf_counter() - wall_start, noise=noise,
        sketch=reduction.sketch(U, h, scheme, ok) if keep_sketch else None,
        zero_differences=zero_differences)


@dataclass(frozen=True)
class _RandomFD(Estimator):
    num_directions: int = 16
    scheme: str = "central"
    step: object = "auto"
    directions: str = "gaussian"
    antithetic: bool = False

    _project: ClassVar[str] = "inner"

    def __post_init__(self):
        check_positive_int(self.num_directions, "num_directions")
        check_choice(self.scheme, "scheme", SCHEMES)
        check_step(self.step)
        check_choice(self.directions, "directions", DIRECTION_FAMILIES)
        if self.antithetic and self.num_directions % 2:
            raise FG2UValueError(
                f"`num_directions` must be even with antithetic=True, got {self.num_directions}")

    def check_problem(self, problem) -> None:
        if self._project == "inner":
            problem.require_differentiable_outer(type(self).__name__)

    def plan(self, problem, phi, *, rng=None, noise=None, keep_sketch=False, warned=None):
        """Plan the estimate of the meta-gradient of ``problem`` at ``phi``.

        ``estimate(problem, phi, rng=..., evaluator=..., **options)`` answers the plan
        with an Evaluator; ``evaluator``, ``backend``, ``n_jobs`` and the remaining
        keywords (``timeout``, ...) configure it.

        Parameters
        ----------
        problem : BilevelProblem
        phi : array_like, shape (N,)
        rng : None, int or numpy.random.Generator
            Draws the directions (and the common seed handed to stochastic solvers),
            always in this process.
        noise : NoiseEstimate, optional
            A previous noise estimate (``estimate_noise(...)`` or an earlier
            ``MetaGradient.noise``) whose step ``step="auto"`` reuses, with no extra
            solves. ``None`` with ``step="auto"``: probe the noise first (its solves
            are counted in ``nfev``). With a fixed ``step`` it is only reported.
        keep_sketch : bool
            Also keep the perturbed outputs and return them as ``MetaGradient.sketch``
            (unit directions ``U``, ``Y ~ J_S U^T``, the base output, the step and the
            mask of directions that succeeded; for :class:`BlackBoxES` too, from the
            inner outputs). Memory O(M b) instead of O(N + M); the gradient is the same.
        warned : set, optional
            Keys of the warnings already shown in this run (see
            :mod:`fg2u_zo.noise.advice`): a warning whose key is in it is skipped, a
            shown one adds its key. An outer loop passes one set to every estimate so
            that each warning appears once per run.

        Returns
        -------
        generator
            Yields the solves as Requests (the base point, the noise probe's lines, the
            perturbed points) and returns the MetaGradient: ``step`` is the step used; ``noise`` the NoiseEstimate behind it (with
            ``difference_to_noise`` of this estimate), or None for a fixed step;
            ``sketch`` a :class:`~fg2u_zo.result.Sketch` or None;
            ``zero_differences`` / ``degenerate`` say whether the differences rose above
            the resolution of the outputs.

        Warns
        -----
        NoiseWarning
            When the probe finds that output precision limits the accuracy (predicted
            relative error of one difference above 1e-2), at the caller's line.
        ZeroDifferenceWarning
            When every finite difference was zero or below the output resolution
            (a fixed step too small for the solver's precision).
        """
        phi = check_phi(phi, problem.num_params)
        self.check_problem(problem)
        keep_sketch = check_keep_sketch(keep_sketch)
        check_warned(warned)
        rng = as_generator(rng)
        # The seed is drawn first, always, so the directions do not depend on whether
        # the solver takes a seed.
        seed = new_seed(rng)
        V = sample_directions(self.directions, phi.size, self.num_directions, rng,
                              antithetic=self.antithetic)
        noise = check_noise_estimate(noise, phi.size, self._project)
        # Drawn after the directions, so a seed gives the same directions whatever the step.
        U = (probe_lines(rng, phi.size, self.directions)
             if self.step == "auto" and noise is None else None)
        return _finite_difference_plan(
            self, problem, phi, V, step=self.step, scheme=self.scheme,
            project=self._project, seed=seed, pairs=self.antithetic,
            directions=self.directions, noise=noise, probe_lines=U,
            keep_sketch=keep_sketch, warned=warned)


@dataclass(frozen=True)
class FG2UZO(_RandomFD):
    """FG²U-ZO: forward gradient unrolling with finite-difference JVPs through a black box.

    ``g = d_phi f + (1/b) sum_i <grad_theta f, J_S v_i> v_i``, where the outer partials
    come from torch autograd and ``J_S v_i`` from a finite difference of the inner
    solver along ``v_i``. Unbiased up to the O(h) (forward) or O(h^2) (central) bias of
    the differences.

    Parameters
    ----------
    num_directions : int
        Number b of random directions.
    scheme : {"central", "forward"}
        ``"central"``: 2b perturbed solves, O(h^2) bias. ``"forward"``: b perturbed
        solves, O(h) bias. Both add one solve at phi (value, theta and the outer
        gradient).
    step : "auto" or float
        Length of the perturbation in phi-space (see :mod:`fg2u_zo.noise.steps`). ``"auto"``:
        measure the solver's noise and curvature along a few random lines drawn
        like the directions (:func:`fg2u_zo.estimate_noise`: 8 extra solves when the
        outputs are exact to double precision, about 15-40 when they are noisy, none
        when a previous estimate is passed as ``noise=``) and take the step that
        balances truncation against noise; where the noise is at double-precision
        rounding, ``sqrt(eps)`` (forward) or ``eps**(1/3)`` (central) times
        ``max(1, rms(phi))``. A float is used as is, with no probe.
    directions : {"gaussian", "rademacher", "sphere", "orthogonal", "coordinate"}
        Direction family; all have E[v v^T] = I.
    antithetic : bool
        Use pairs ``v, -v`` (``num_directions`` even).

    Examples
    --------
    >>> import numpy as np, torch, fg2u_zo as fz
    >>> A = np.array([[2.0, 0.0], [1.0, 3.0]])
    >>> problem = fz.BilevelProblem(inner=lambda phi: A @ phi,
    ...                             outer=lambda theta, phi: 0.5 * (theta ** 2).sum())
    >>> g = fz.FG2UZO(num_directions=2, directions="coordinate").estimate(
    ...     problem, np.array([1.0, 1.0]), rng=0)
    >>> np.allclose(g.grad, A.T @ A @ np.ones(2), rtol=1e-6)
    True
    """

    name: ClassVar[str] = "FG2UZO"
    options: ClassVar[frozenset] = frozenset({"noise", "keep_sketch", "warned"})


@dataclass(frozen=True)
class BlackBoxES(_RandomFD):
    """Gaussian-smoothing (evolution strategies) gradient of the whole objective.

    ``g = (1/b) sum_i (F(phi + mu v_i) - F(phi)) / mu * v_i`` (or central), for outer
    losses that are not differentiable. Same parameters as :class:`FG2UZO`.
    """

    name: ClassVar[str] = "BlackBoxES"
    options: ClassVar[frozenset] = frozenset({"noise", "keep_sketch", "warned"})
    _project: ClassVar[str] = "value"


@dataclass(frozen=True)
class CoordinateFD(Estimator):
    """Finite differences along every coordinate: the deterministic reference.

    N + 1 (forward) or 2N + 1 (central) solves. With a differentiable outer loss the
    outer partials are exact and only the inner solver is differenced
    (``through="inner"``); ``through="value"`` differences the whole objective.

    Parameters
    ----------
    scheme : {"central", "forward"}
    step : "auto" or float
        As for :class:`FG2UZO` (``"auto"`` probes the noise first).
    through : {"auto", "inner", "value"}
        ``"auto"``: ``"inner"`` when the outer loss is differentiable.
    """

    scheme: str = "central"
    step: object = "auto"
    through: str = "auto"

    name: ClassVar[str] = "CoordinateFD"
    options: ClassVar[frozenset] = frozenset({"noise", "keep_sketch", "warned"})

    def __post_init__(self):
        check_choice(self.scheme, "scheme", SCHEMES)
        check_step(self.step)
        check_choice(self.through, "through", ("auto", "inner", "value"))

    def _through(self, problem) -> str:
        if self.through == "auto":
            return "inner" if problem.differentiable_outer else "value"
        return self.through

    def check_problem(self, problem) -> None:
        if self._through(problem) == "inner":
            problem.require_differentiable_outer("CoordinateFD(through='inner')")

    def plan(self, problem, phi, *, rng=None, noise=None, keep_sketch=False, warned=None):
        """Plan the differences along each coordinate.

        ``rng`` seeds stochastic solvers and draws the noise-probe direction
        (``step="auto"`` without ``noise=``); the other arguments are those of
        :meth:`FG2UZO.plan`. With ``keep_sketch=True`` the sketch's directions are
        the coordinate axes and ``Y`` is the finite-difference Jacobian ``J_S``.
        """
        phi = check_phi(phi, problem.num_params)
        self.check_problem(problem)
        keep_sketch = check_keep_sketch(keep_sketch)
        check_warned(warned)
        through = self._through(problem)
        rng = as_generator(rng)
        seed = new_seed(rng)
        # sqrt(N) e_j has identity second moment; with b = N rows the projection
        # (1/N) sum_j c_j v_j is exactly the coordinate finite-difference gradient.
        V = np.sqrt(phi.size) * np.eye(phi.size)
        noise = check_noise_estimate(noise, phi.size, through)
        U = (probe_lines(rng, phi.size, "coordinate")
             if self.step == "auto" and noise is None else None)
        return _finite_difference_plan(
            self, problem, phi, V, step=self.step, scheme=self.scheme, project=through,
            seed=seed, pairs=False, directions="coordinate", exact_basis=True, noise=noise,
            probe_lines=U, keep_sketch=keep_sketch, warned=warned)
