"""Generalized Gauss–Newton trust region in a growing subspace: ``optimizer="gauss-newton"``.

Every finite-difference solve ``S(phi + h u)`` carries the whole directional derivative
``J_S u``, not only its projection on ``grad_theta f``. This stepper keeps them: an
orthonormal matrix ``Q`` (N x d) of directions in the run's unconstrained ``z``
(``phi = T(z)``) and ``Y ~ J_{S o T} Q`` (M x d), and minimizes the model

    m(a) = f(theta_k + Y a, phi_k + diag(T'(z_k)) Q a)

in a trust region ``||a|| <= delta`` (see :mod:`.subspace_model` and
:mod:`.trust_region`). The outer loss stays exact: for a sum of squares this is the
Gauss–Newton model of DFO-LS (Cartis et al., ACM TOMS 2019) and, in subspaces, of DFBGN
(Cartis and Roberts, Math. Programming 2023); any other twice-differentiable misfit
(robust losses, cross-entropy) gives a generalized Gauss–Newton model.

One parallel group of solves per iteration (see :mod:`.measurements`): the trial point
``clip(z_k + Q a)`` and ``k`` new orthonormal directions orthogonal to ``Q``, perturbed
around the trial with forward differences, so trial and perturbations run together.
``k = min(b, N - d)`` until ``Q`` spans all N dimensions; afterwards 0 (``mode="lean"``:
fewest solves) or ``b`` (``"refresh"``: re-measure the oldest ``b`` directions, keeping
idle workers busy and the model fresh). After every trial the stored columns get the
rank-one Broyden update ``Y += (dtheta - Y a) a^T / ||a||^2``.

Acceptance: ``rho = (F_k - F_t) / predicted``; the trial is the new point when
``rho > 1e-4``; ``delta`` shrinks to a quarter of the step when ``rho < 0.25`` (and the
next iteration re-measures ``b`` directions, in ``"lean"`` mode too), and doubles when
``rho > 0.75`` and the step reached the boundary; it never falls below the difference
step. A failed perturbed solve drops its column (the direction is drawn again later); a
failed trial halves ``delta`` (or the failed step, when shorter) and keeps the
model; a failed first solve raises
:class:`~fg2u_zo.InnerSolverError`. Bounds are kept by clipping the trial.

A new phase (another inner solver or estimator) restarts the model at the current
point, keeping the trust radius.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ...errors import FG2UTypeError, FG2UValueError, InnerSolverError
from ...validation import check_choice, check_positive_float, check_positive_int
from .base import Stepper, StepperState, StepUpdate
from .measurements import Measurements
from .subspace_model import (ModelHessian, add_difference_columns, broyden_update,
                             new_directions, outer_model)
from .trust_region import DenseSubproblem, KrylovSubproblem

__all__ = ["GaussNewton"]

MODES = ("lean", "refresh")
#: Accept a trial when the actual decrease is at least this fraction of the predicted.
ACCEPT = 1e-4
#: Shrink below, expand above (when the step reached the boundary).
SHRINK, EXPAND = 0.25, 0.75
#: Largest subspace whose model Hessian is formed and eigendecomposed; above it the
#: subproblem is solved in a Krylov subspace of Hessian-vector products (O(d^2) work per
#: product instead of O(d^3) per iteration).
DENSE_MAX = 100


@dataclass(frozen=True)
class GaussNewton(Stepper):
    """Subspace generalized Gauss–Newton trust region (see the module docstring).

    Parameters
    ----------
    num_directions : int, optional
        Directions ``b`` added per iteration. Default: the evaluator's workers minus
        one (the trial takes a worker), at least 1.
    mode : {"lean", "refresh"}
        Once the directions span all N dimensions: ``"lean"`` solves only the trial
        point (fewest solves); ``"refresh"`` re-measures the ``b`` oldest directions
        each iteration (uses idle workers, keeps the model fresh).
    memory : int, optional
        Directions kept (default: all N). With fewer, the oldest are dropped as new
        ones arrive (a DFBGN-style subspace method for large N).
    radius : float, optional
        Initial trust radius in ``z`` (default ``0.1 * max(1, max|z0|)``, as DFO-LS).
    radius_factors : sequence of float
        Once the directions span all N dimensions, also try the trust-region steps at
        these multiples of the radius in the same group (e.g. ``(0.25, 1, 4)``); the
        best trial is the candidate and each one corrects the model by Broyden. In
        ``"refresh"`` mode they take places of re-measured directions (the group keeps
        its size); in ``"lean"`` mode they add solves. Default ``(1,)``: one trial.

    Notes
    -----
    The difference step ``h`` (a length in ``z``) is the phase estimator's ``step`` when
    it is a number; with ``step="auto"`` the noise-aware step of the run's noise
    estimate, or of a probe made at the start through the run's evaluator (its solves
    are counted); on the exact torch path (an estimator without a step, e.g.
    :class:`~fg2u_zo.FG2U`) the columns come from ``torch.func.jvp`` instead.

    Examples
    --------
    >>> import numpy as np, torch, fg2u_zo as fz
    >>> A = np.array([[2.0, 0.0], [1.0, 3.0], [0.0, 1.0]])
    >>> problem = fz.BilevelProblem(inner=lambda phi: A @ phi,
    ...     outer=lambda theta, phi: 0.5 * ((theta - 1.0) ** 2).sum())
    >>> res = fz.minimize(problem, np.zeros(2), fz.FG2UZO(step=1e-3),
    ...                   optimizer="gauss-newton", steps=2, rng=0, progress=False,
    ...                   optimizer_options={"num_directions": 2, "radius": 10.0})
    >>> bool(np.allclose(res.phi, np.linalg.lstsq(A, np.ones(3), rcond=None)[0]))
    True
    >>> res.nfev   # 3 solves for the model, 1 for the step, 1 for the final value
    5
    """

    num_directions: int | None = None
    mode: str = "lean"
    memory: int | None = None
    radius: float | None = None
    radius_factors: tuple = (1.0,)

    name: ClassVar[str] = "gauss-newton"
    extras: ClassVar[frozenset] = frozenset(
        {"problem", "estimator", "transform", "rng", "workers", "noise"})
    uses_lr: ClassVar[bool] = False

    def __post_init__(self):
        if self.num_directions is not None:
            check_positive_int(self.num_directions, "num_directions")
        check_choice(self.mode, "mode", MODES)
        if self.memory is not None:
            check_positive_int(self.memory, "memory")
        if self.radius is not None:
            check_positive_float(self.radius, "radius")
        try:
            factors = tuple(float(f) for f in self.radius_factors)
        except (TypeError, ValueError):
            raise FG2UTypeError(
                f"`radius_factors` must be a sequence of positive numbers, got "
                f"{self.radius_factors!r}") from None
        if not factors or not all(np.isfinite(f) and f > 0 for f in factors):
            raise FG2UValueError(
                f"`radius_factors` must be positive numbers (e.g. (0.5, 1, 2)), got "
                f"{self.radius_factors!r}")
        object.__setattr__(self, "radius_factors", factors)

    def config(self) -> dict:
        return {"name": self.name, "num_directions": self.num_directions,
                "mode": self.mode, "memory": self.memory, "radius": self.radius,
                "radius_factors": list(self.radius_factors)}

    def check_state(self, state, num_params):
        """Check a state read from a checkpoint: array names and shapes."""
        A, data = state.arrays, state.data
        if not isinstance(data.get("delta"), (int, float)) or not data["delta"] > 0:
            raise FG2UValueError("the gauss-newton state needs a positive `delta`")
        if not A:
            return
        missing = {"z", "theta", "Q", "Y"} - set(A)
        if missing:
            raise FG2UValueError(f"the gauss-newton state lacks the arrays {sorted(missing)}")
        z, theta, Q, Y = A["z"], A["theta"], A["Q"], A["Y"]
        d = Q.shape[1] if Q.ndim == 2 else -1
        if (z.shape != (num_params,) or Q.shape != (num_params, d) or theta.ndim != 1
                or Y.shape != (theta.size, d) or d > num_params):
            raise FG2UValueError(
                f"the gauss-newton state's arrays do not fit N = {num_params}: z "
                f"{z.shape}, theta {theta.shape}, Q {Q.shape}, Y {Y.shape}")

    # -- protocol ------------------------------------------------------------------------
    def init(self, z0, **extra) -> StepperState:
        """Empty model: the first :meth:`update` solves at ``z0`` and around it."""
        z0 = np.asarray(z0, dtype=np.float64)
        radius = (self.radius if self.radius is not None
                  else 0.1 * max(1.0, float(np.max(np.abs(z0))) if z0.size else 1.0))
        return StepperState(arrays={}, data={"delta": float(radius), "refresh": False,
                                             "iteration": 0})

    def update(self, state, *, z, lr=None, problem=None, estimator=None, transform=None,
               rng=None, workers=None, noise=None, **extra):
        """One iteration: one trust-region trial and new directions, in one request (a
        plan returning the StepUpdate)."""
        if problem is None or rng is None:
            raise FG2UValueError(
                "the gauss-newton stepper needs the run's `problem` and `rng` extras; drive "
                "it with fz.minimize(..., optimizer='gauss-newton')")
        problem.require_differentiable_outer("optimizer='gauss-newton'")
        z = np.asarray(z, dtype=np.float64)
        m = Measurements(problem=problem, estimator=estimator, transform=transform,
                         rng=rng, workers=workers, noise=noise,
                         num_directions=self.num_directions, num_params=z.size)
        data = dict(state.data)
        if not state.arrays or data.get("key") != m.key:
            if data.get("key") != m.key:
                data.pop("noise", None)  # another solver: its noise is measured anew
            return self._start(m, z, data)
        return self._iterate(m, state, data)

    def _memory(self, n):
        return n if self.memory is None else min(self.memory, n)

    # -- the first iteration -------------------------------------------------------------
    def _start(self, m, z0, data):
        """Solve at ``z0`` and along ``b`` directions around it (one request; the noise
        probe first, when the step must be measured). A plan."""
        clock = _Clock()
        n = z0.size
        U = new_directions(np.zeros((n, 0)), min(m.b, self._memory(n)), m.rng)
        if m.needs_probe or m.exact:
            # The base output is needed before the directions' solves.
            with clock.paused():
                ev = yield from m.evaluate([z0], label="base")
            theta0 = ev.thetas[0]
            _check_start(theta0, ev.failures)
            theta0 = np.asarray(theta0, dtype=np.float64)
            if m.needs_probe:
                with clock.paused():
                    data["noise"] = (yield from m.probe(z0, theta0)).to_dict()
            h = m.step(z0, data.get("noise"))
            with clock.paused():
                out = yield from m.group(None, z0, U, h, theta0,
                                         theta_center=theta0.reshape(-1))
        else:
            h = m.step(z0, data.get("noise"))
            with clock.paused():
                out = yield from m.group(z0, z0, U, h, None)
            _check_start(out.theta_trial, out.failures)
            theta0 = np.asarray(out.theta_trial, dtype=np.float64)
        Q, Y = self._add_columns(np.zeros((n, 0)), np.zeros((theta0.size, 0)), out)
        phi0 = m.phi(z0)
        value = float(m.problem.outer_value(theta0, phi0))
        data.update(key=m.key, value=value, refresh=False, theta_shape=list(theta0.shape),
                    iteration=data.get("iteration", 0) + 1)
        arrays = {"z": z0.copy(), "theta": theta0.reshape(-1).copy(), "Q": Q, "Y": Y}
        info = {"rho": None, "accepted": None, "trial_value": None, "step_norm": 0.0,
                "delta": float(data["delta"]), "directions": int(Q.shape[1]), "step": h,
                "jvp": out.jvp, "model_time": clock.seconds}
        return StepUpdate(z=z0.copy(), state=StepperState(arrays, data), phi=phi0,
                          value=value, grad=None, info=info, nfev=int(out.jvp))

    @staticmethod
    def _add_columns(Q, Y, out):
        if out.theta_center is None:
            return Q, Y
        if out.JU is not None:
            return np.column_stack([Q, out.U]), np.column_stack([Y, out.JU])
        Q, Y, _ = add_difference_columns(Q, Y, out.center, out.theta_center, out.points,
                                         out.thetas)
        return Q, Y

    # -- one iteration -------------------------------------------------------------------
    def _iterate(self, m, state, data):
        clock = _Clock()
        A = state.arrays
        z_k, theta_k, Q, Y = (np.array(A[k], dtype=np.float64) for k in ("z", "theta", "Q", "Y"))
        shape = tuple(data["theta_shape"])
        F_k, delta = float(data["value"]), float(data["delta"])
        n, d = Q.shape
        # The model and its trust-region step: exact (eigendecomposition) in a small
        # subspace, in a Krylov subspace of Hessian-vector products in a large one.
        P = m.dphi(z_k)[:, None] * Q
        if d <= DENSE_MAX:
            _, g, H, _, _ = outer_model(m.problem, theta_k.reshape(shape), m.phi(z_k), Y, P)
            sub = DenseSubproblem(g, H)
        else:
            hess = ModelHessian(m.problem, theta_k.reshape(shape), m.phi(z_k), Y, P)
            g = hess.g
            sub = KrylovSubproblem(g, hess)
        tr = sub.solve(delta)
        z_t = m.project(z_k + Q @ tr.step)
        c = Q.T @ (z_t - z_k)  # the step in the columns' coordinates (after clipping)
        predicted = sub.decrease(c)
        trial = bool(np.any(z_t != z_k)) and predicted > 0
        step_norm = float(np.linalg.norm(z_t - z_k))

        # The directions to measure: grow the subspace (new ones first), and re-measure
        # the oldest in "refresh" mode, after a poor step, or when there is no trial.
        grow = min(m.b, n - d)
        refresh = (self.mode == "refresh"
                   or (d == n and (data.get("refresh", False) or not trial)))
        k = min(m.b, n) if refresh else grow
        # Trials at other radii: in places of re-measured directions, or (lean, once
        # the subspace is complete) as extra solves; the best trial is the candidate.
        extra = []
        if trial and (refresh or d == n):
            extra = self._extra_trials(sub, delta, z_k, z_t, Q, m)
            if refresh:
                extra = extra[:k - grow]
                k -= len(extra)
        drop = max(0, d + k - self._memory(n))
        center = z_t if trial else z_k
        U = new_directions(Q[:, drop:], k, m.rng)
        h = m.step(center, data.get("noise"))
        with clock.paused():
            out = yield from m.group(z_t if trial else None, center, U, h,
                                     theta_k.reshape(shape),
                                     theta_center=None if trial else theta_k,
                                     extra=[e[0] for e in extra])
        info = {"rho": None, "accepted": None, "trial_value": None, "step_norm": step_norm,
                "jvp": out.jvp, "trials": int(trial) + len(extra)}
        if trial and out.theta_trial is None and all(t is None for t in out.theta_extra):
            # The trial failed: a smaller step (half the one that failed: an interior
            # step would otherwise come back to the same point), the same model; the
            # perturbations around it have no base to difference against.
            data.update(delta=max(0.5 * min(delta, step_norm), h), refresh=False,
                        iteration=data["iteration"] + 1)
            info["accepted"] = False
            return self._result(m, z_k, theta_k, Q, Y, data, F_k, Q @ g, out, clock, h,
                                info)
        new_refresh = False
        if trial:
            # Every trial that came back: (F, rho, z, theta, step length, radius used,
            # reached its boundary); the main one first.
            results = []
            for (z_e, c_e, pred_e, radius_e, bound_e), theta_e in (
                    [((z_t, c, predicted, delta, tr.on_boundary), out.theta_trial)]
                    + list(zip(extra, out.theta_extra))):
                if theta_e is None:
                    continue
                F_e = float(m.problem.outer_value(theta_e.reshape(shape), m.phi(z_e)))
                rho_e = (F_k - F_e) / pred_e if np.isfinite(F_e) else -np.inf
                # The secant along each step holds whether or not it is accepted.
                Y = broyden_update(Y, c_e, theta_e - theta_k)
                results.append((F_e if np.isfinite(F_e) else np.inf, rho_e, z_e, theta_e,
                                float(np.linalg.norm(z_e - z_k)), radius_e, bound_e))
            F_t, rho, z_b, theta_b, norm_b, radius_b, bound_b = min(
                results, key=lambda r: r[0])
            accepted = bool(rho > ACCEPT)
            new_refresh = bool(rho < SHRINK)
            delta = radius_update(rho, radius_b, norm_b, bound_b, h)
            info.update(rho=float(rho) if np.isfinite(rho) else None, accepted=accepted,
                        trial_value=F_t if np.isfinite(F_t) else None, step_norm=norm_b)
            if accepted:
                z_k, theta_k, F_k = z_b, theta_b, F_t
        grad_z = Q @ g
        Q, Y = self._add_columns(Q[:, drop:], Y[:, drop:], out)
        data.update(delta=float(delta), refresh=new_refresh, value=float(F_k),
                    iteration=data["iteration"] + 1)
        return self._result(m, z_k, theta_k, Q, Y, data, F_k, grad_z, out, clock, h, info)

    def _extra_trials(self, sub, delta, z_k, z_t, Q, m):
        """Trust-region steps at ``radius_factors`` times the radius (other than 1),
        each distinct from the main trial and from each other:
        ``(z, c, predicted, radius, on_boundary)``."""
        out, seen = [], [z_t]
        for f in self.radius_factors:
            if f == 1.0:
                continue
            tr = sub.solve(f * delta)
            z_e = m.project(z_k + Q @ tr.step)
            if any(np.array_equal(z_e, s) for s in seen):
                continue
            c_e = Q.T @ (z_e - z_k)
            pred = sub.decrease(c_e)
            if pred > 0:
                seen.append(z_e)
                out.append((z_e, c_e, pred, f * delta, tr.on_boundary))
        return out

    @staticmethod
    def _result(m, z, theta, Q, Y, data, value, grad_z, out, clock, h, info):
        arrays = {"z": z.copy(), "theta": np.asarray(theta, dtype=np.float64).copy(),
                  "Q": np.ascontiguousarray(Q), "Y": np.ascontiguousarray(Y)}
        # The model gradient the step used, from z to phi (the history reports its norm).
        dphi = m.dphi(z)
        grad = np.divide(grad_z, dphi, out=np.zeros_like(grad_z), where=dphi != 0)
        info = dict(info, delta=float(data["delta"]), directions=int(Q.shape[1]),
                    step=float(h), model_time=clock.seconds)
        return StepUpdate(z=z.copy(), state=StepperState(arrays, data), phi=m.phi(z),
                          value=float(value), grad=grad, info=info,
                          nfev=int(info.get("jvp") or 0))


def radius_update(rho, delta, step_norm, on_boundary, h):
    """The next trust radius after a trial with ratio ``rho`` and step length
    ``step_norm``: a quarter of the step below ``SHRINK``, twice the radius above
    ``EXPAND`` when the step reached the boundary; never below the difference step
    ``h`` (the model resolves nothing shorter)."""
    if rho < SHRINK:
        delta = 0.25 * step_norm
    elif rho > EXPAND and on_boundary:
        delta = 2.0 * delta
    return max(delta, h)


def _check_start(theta0, failures):
    if theta0 is None:
        first = failures[0] if failures else None
        detail = "" if first is None else f" ({first.kind}):\n{first.message}"
        raise InnerSolverError(
            "the inner solve at the starting point failed; the gauss-newton stepper needs "
            f"S(phi0) to build its model{detail}",
            kind=getattr(first, "kind", "exception"), detail=getattr(first, "message", ""))


class _Clock:
    """Seconds of the stepper's own work (the model, the subproblem, the updates),
    with the solves left out."""

    def __init__(self):
        self._start = time.perf_counter()
        self._paused = 0.0

    def paused(self):
        return _Pause(self)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self._start - self._paused


class _Pause:
    def __init__(self, clock):
        self.clock = clock

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        self.clock._paused += time.perf_counter() - self.t
