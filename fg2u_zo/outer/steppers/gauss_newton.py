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
(robust losses, cross-entropy) gives a generalized Gauss–Newton model. A
:class:`~fg2u_zo.LeastSquares` loss is modelled in numpy from its residuals.

**One parallel group per iteration** (see :mod:`.measurements`), the trial point
``z_k + Q a`` first, then directions measured by forward differences around it:

- while ``Q`` does not span all N dimensions, ``b`` new directions orthogonal to it
  (``b`` = the run's width W less the trial); the first group holds ``z_0`` and a
  complete model up to 16 directions (N + 1 solves, as DFO-LS's first model);
- afterwards, re-measured columns where the model needs them: the *stale* ones
  (measured farther from ``z_k`` than twice the proposed step) when a trial from them
  failed (a model check), and in the default ``mode="auto"`` the stalest columns, in
  the idle places of the group, after a step whose ratio was off by more than
  ``POOR`` (a fresh Jacobian each round, as Levenberg–Marquardt takes one, at no cost
  in rounds); after a very successful step that reached the trust region's boundary,
  the trust-region steps at 8 and 64 times the radius (``LADDER``) in those places
  instead: a minimizer orders of magnitude away is reached in a few rounds.

After every trial the stored columns get the rank-one Broyden update
``Y += (dtheta - Y a) a^T / ||a||^2`` (not from a trial that left the region where the
linear model means anything: its output misses the prediction by ``LINEAR_MISS``
times the predicted change).

**Two radii**, as DFO-LS: the step radius ``delta`` and a lower bound ``rho`` that
shrinks only when the model is known to be good. Ratio ``r = (F_k - F_t) / predicted``:
the trial is accepted when ``r > ACCEPT``; ``delta`` becomes ``min(delta/2, |s|)`` below
``ETA1``, ``max(delta/2, |s|)`` up to ``ETA2``, and above it doubles, or grows to four
times the step while very successful steps keep reaching the boundary
(:func:`radius_update`); never below ``rho``. A failed trial from a stale model
triggers a model check instead of a smaller lower radius; a failed trial from a fresh
model at ``delta = rho`` divides ``rho`` by 10. A failed or overflowing trial is a
rejected trial: ``delta`` halves, below ``rho`` if need be.

**Stopping** (``StepUpdate.converged``, the run's status ``"converged"``): ``rho`` fell
below ``xtol * max(1, |z|_inf)`` (DFO-LS's ``rhoend``); or the complete model, measured
near ``z_k`` (or confirmed by its last trials' ratios, its columns measured within
twice the path those trials covered), predicts within at least the
initial radius a decrease below what ``F`` resolves: the noise of ``F`` when it was
measured, ``ftol * |F|``, or the round-off of ``F`` (of the residuals, for least
squares); a vanishing model gradient predicts none.

**Difference steps and noise.** With ``step="auto"`` the step balances the truncation
error of a forward difference, from the outputs' curvature that the trials measure,
against the rounding of the outputs (see :mod:`.measurements`): no noise probe on
exact outputs. The probe runs once when the outputs look quantized (printed with few
significant digits), or when two failed trials from a fresh model miss by far more
than the measured curvature allows and the miss does not shrink with the step; its
solves are reused as model columns, and its noise sets the step and the stopping
level.

Failures: a failed or non-finite perturbed solve drops its column (measured again
later); a failed first solve raises :class:`~fg2u_zo.InnerSolverError`. Bounds: a
parameter the step brings to its bound stays there while the model is minimized over
the others (see :func:`_trust_step`). A new phase (another inner solver or estimator)
restarts the model at the current point, keeping the trust radius.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.linalg

from ...errors import FG2UTypeError, FG2UValueError, InnerSolverError
from ...losses import LeastSquares
from ...noise.resolution import OutputResolution
from ...validation import check_choice, check_positive_float, check_positive_int
from .base import Stepper, StepperState, StepUpdate
from .measurements import Measurements
from .subspace_model import (add_difference_columns, broyden_update, new_directions,
                             subspace_subproblem)

__all__ = ["GaussNewton", "radius_update"]

MODES = ("auto", "lean", "refresh")
#: Accept a trial when the actual decrease is at least this fraction of the predicted.
ACCEPT = 1e-4
#: A trial below ETA1 failed (the radius shrinks); above ETA2 it was very successful.
ETA1, ETA2 = 0.1, 0.7
#: A column measured farther than STALE times the proposed step from ``z_k`` is stale.
STALE = 2.0
#: A trial whose output misses the linear model's prediction by more than this many
#: times the predicted change corrects neither the columns (Broyden) nor the curvature.
LINEAR_MISS = 10.0
#: A model whose last ratio is farther than this from 1 predicted poorly: idle workers
#: then measure its stalest columns again.
POOR = 0.15
#: ... when the idle workers can re-measure at least this share of the columns.
REFRESH_SHARE = 2.0 / 3.0
#: A model whose last trial's ratio is within this of 1 may stop the run without being
#: measured again.
VERIFIED = 0.1
#: ... and whose columns were all measured within this many times the path of the
#: trials that did so in a row.
VERIFIED_REACH = 2.0
#: ``rho`` is divided by this when a fresh model fails at ``delta = rho``.
RHO_FACTOR = 10.0
#: Extra trials (multiples of the radius) after a very successful boundary step: the
#: range of the first ones' growth in one group, in few solves.
LADDER = (8.0, 64.0)
#: Largest subspace whose model Hessian is formed and eigendecomposed; above it the
#: subproblem is solved in a Krylov subspace of Hessian-vector products (O(d^2) work per
#: product instead of O(d^3) per iteration).
DENSE_MAX = 100
#: The first group measures this many directions at least (all N when N is smaller),
#: whatever the width: N + 1 solves for a complete first model, as DFO-LS's. Beyond,
#: the subspace grows by the width, a trial in every group: for large N a step from a
#: partial model gains more than the rest of a full first model would cost.
FIRST_MODEL = 16
_EPS = np.finfo(np.float64).eps
#: A fresh model's failed trial that misses the actual change of F by more than this many
#: times what the outputs' curvature allows (twice, at shrinking steps) contradicts
#: smooth outputs: the noise is probed.
CONTRADICTION = 100.0
#: Units in the last place an output of a black-box computation is taken to carry.
OUTPUT_ULPS = 64.0
#: The age of a column that must be measured again (finite: states are checked finite).
_FAR = 1e300


@dataclass(frozen=True)
class GaussNewton(Stepper):
    """Subspace generalized Gauss–Newton trust region (see the module docstring).

    Parameters
    ----------
    num_directions : int, optional
        Directions ``b`` measured per group. Default: the run's width W less the
        trial's solve (at least 1); the first group measures ``min(N, 16)`` at least.
    mode : {"auto", "lean", "refresh"}
        Once the directions span all N dimensions: ``"auto"`` fills the group with
        the stalest columns after a step the model predicted poorly, and with trials
        at larger radii after a very successful boundary step; ``"lean"`` re-measures
        only stale columns after a failed trial (fewest solves); ``"refresh"``
        re-measures the ``b`` stalest columns every iteration.
    memory : int, optional
        Directions kept (default: all N). With fewer, the oldest are dropped as new
        ones arrive (a DFBGN-style subspace method for large N).
    radius : float, optional
        Initial trust radius in ``z`` (default ``0.1 * max(1, max|z0|)``, as DFO-LS).
    radius_factors : sequence of float, optional
        Once the directions span all N dimensions, also try the trust-region steps at
        these multiples of the radius in the same group (e.g. ``(0.25, 1, 4)``); the
        best trial is the candidate and each one corrects the model by Broyden. In
        ``"refresh"`` mode they take places of re-measured directions (the group keeps
        its size); otherwise they add solves. Default: the automatic ladder of
        ``mode="auto"``.
    xtol : float
        Stop once the lower trust radius ``rho`` falls below ``xtol * max(1,
        max|z|)`` (default 1e-8, DFO-LS's ``rhoend`` for a unit scale).
    ftol : float
        Stop once the complete model, measured near ``z_k``, predicts a decrease below
        ``ftol * |F|`` (or below the measured noise of ``F``, or its round-off);
        default 1e-14.

    Notes
    -----
    The difference step ``h`` (a length in ``z``) is the phase estimator's ``step`` when
    it is a number; with ``step="auto"`` the step that balances truncation (from the
    outputs' curvature the trials measure) against rounding, at most the ``sqrt(eps)``
    relative step, or the noise-optimal step once the noise was probed (only when the
    outputs call for it); on the exact torch path (an estimator without a step, e.g.
    :class:`~fg2u_zo.FG2U`) the columns come from ``torch.func.jvp`` instead.

    The history's ``info`` per iteration: ``rho`` (the ratio), ``accepted``,
    ``trial_value``, ``step_norm``, ``delta`` and ``radius_floor`` (the two radii),
    ``trials``, ``new`` and ``remeasured`` (the group's solves), ``probe`` (the noise
    probe's solves, when it ran), ``directions``, ``step`` (``h``), ``jvp`` and
    ``model_time`` (the stepper's own seconds, solves left out).

    Examples
    --------
    >>> import numpy as np, torch, fg2u_zo as fz
    >>> A = np.array([[2.0, 0.0], [1.0, 3.0], [0.0, 1.0]])
    >>> problem = fz.BilevelProblem(inner=lambda phi: A @ phi,
    ...     outer=lambda theta, phi: 0.5 * ((theta - 1.0) ** 2).sum())
    >>> res = fz.minimize(problem, np.zeros(2), fz.FG2UZO(step=1e-3),
    ...                   optimizer="gauss-newton", steps=5, rng=0, progress=False,
    ...                   optimizer_options={"radius": 10.0})
    >>> bool(np.allclose(res.phi, np.linalg.lstsq(A, np.ones(3), rcond=None)[0]))
    True
    >>> res.status, [r.nfev for r in res.history]  # 1 + N solves, the step, the stop
    ('converged', [3, 1, 0])
    >>> res.nfev   # and the final value's solve
    5
    """

    num_directions: int | None = None
    mode: str = "auto"
    memory: int | None = None
    radius: float | None = None
    radius_factors: tuple | None = None
    xtol: float = 1e-8
    ftol: float = 1e-14

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
        check_positive_float(self.xtol, "xtol")
        check_positive_float(self.ftol, "ftol")
        if self.radius_factors is not None:
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
                "radius_factors": (None if self.radius_factors is None
                                   else list(self.radius_factors)),
                "xtol": self.xtol, "ftol": self.ftol}

    def check_state(self, state, num_params):
        """Check a state read from a checkpoint: array names and shapes."""
        A, data = state.arrays, state.data
        for key in ("delta", "rho"):
            if key in data and not (isinstance(data[key], (int, float))
                                    and data[key] > 0):
                raise FG2UValueError(f"the gauss-newton state needs a positive `{key}`")
        if "delta" not in data:
            raise FG2UValueError("the gauss-newton state needs a positive `delta`")
        if not A:
            return
        missing = {"z", "theta", "Q", "Y"} - set(A)
        if missing:
            raise FG2UValueError(f"the gauss-newton state lacks the arrays {sorted(missing)}")
        z, theta, Q, Y = A["z"], A["theta"], A["Q"], A["Y"]
        d = Q.shape[1] if Q.ndim == 2 else -1
        if (z.shape != (num_params,) or Q.shape != (num_params, d) or theta.ndim != 1
                or Y.shape != (theta.size, d) or d > num_params
                or any(k in A and A[k].shape != (d,) for k in ("age", "hcol"))):
            raise FG2UValueError(
                f"the gauss-newton state's arrays do not fit N = {num_params}: z "
                f"{z.shape}, theta {theta.shape}, Q {Q.shape}, Y {Y.shape}")

    # -- protocol ------------------------------------------------------------------------
    def init(self, z0, **extra) -> StepperState:
        """Empty model: the first :meth:`update` solves at ``z0`` and around it."""
        z0 = np.asarray(z0, dtype=np.float64)
        radius = (self.radius if self.radius is not None
                  else 0.1 * max(1.0, float(np.max(np.abs(z0))) if z0.size else 1.0))
        return StepperState(arrays={}, data={"delta": float(radius), "rho": float(radius),
                                             "radius0": float(radius), "iteration": 0})

    def update(self, state, *, z, lr=None, problem=None, estimator=None, transform=None,
               rng=None, workers=None, noise=None, **extra):
        """One iteration: one trust-region trial and the directions the model needs, in
        one request (a plan returning the StepUpdate)."""
        if problem is None or rng is None:
            raise FG2UValueError(
                "the gauss-newton stepper needs the run's `problem` and `rng` extras; drive "
                "it with fz.minimize(..., optimizer='gauss-newton')")
        problem.require_differentiable_outer("optimizer='gauss-newton'")
        z = np.asarray(z, dtype=np.float64)
        m = Measurements(problem=problem, estimator=estimator, transform=transform,
                         rng=rng, workers=workers, noise=noise, num_params=z.size)
        data = dict(state.data)
        data.setdefault("rho", data["delta"])
        if not state.arrays or data.get("key") != m.key:
            if data.get("key") != m.key:
                # Another solver: its noise is measured anew, the radii start again.
                for key in ("noise", "probed", "probe_due", "miss", "ratio", "check",
                            "curvature", "streak", "verified_path"):
                    data.pop(key, None)
                data["rho"] = data["delta"] = max(float(data["delta"]), float(data["rho"]))
            return self._start(m, z, data)
        return self._iterate(m, state, data)

    def _memory(self, n):
        return n if self.memory is None else min(self.memory, n)

    def _width_directions(self, m):
        """Directions per group: ``num_directions``, else the width less the trial."""
        return self.num_directions if self.num_directions is not None else max(
            m.workers - 1, 1)

    # -- the first iteration -------------------------------------------------------------
    def _start(self, m, z0, data):
        """Solve at ``z0`` and along directions around it (one request); the noise
        probe after it when the outputs look quantized. A plan."""
        clock = _Clock()
        n = z0.size
        b = self._width_directions(m)
        if self.num_directions is None:
            b = max(b, min(n, FIRST_MODEL))
        U = new_directions(np.zeros((n, 0)), min(b, self._memory(n)), m.rng)
        h = m.step(z0)
        # The start is solved with the directions around it, as a trial is.
        info = {"rho": None, "accepted": None, "trial_value": None, "step_norm": 0.0,
                "trials": 1, "remeasured": 0}
        with clock.paused():
            out = yield from m.group([z0], z0, U, h, None)
        theta0 = out.theta_trials[0]
        _check_start(theta0, out.failures)
        theta0 = np.asarray(theta0, dtype=np.float64)
        spent = out.nfev
        Q, Y, kept = _columns(np.zeros((n, 0)), np.zeros((theta0.size, 0)), out)
        hcol = np.full(len(kept), h)
        if self._quantized(m, data, theta0, out):
            with clock.paused():
                noise, seen = yield from m.probe(z0, theta0)
            data.update(noise=noise.to_dict(), probed=True)
            info["probe"] = int(noise.nfev)
            spent += int(noise.nfev)
            h_noise = m.step(z0, noise_data=data["noise"])
            if h_noise > 2.0 * h:
                # The differences were taken below the noise-optimal step: measure the
                # model again, the probe's own points first (they are columns too).
                Q, Y, _ = add_difference_columns(
                    np.zeros((n, 0)), np.zeros((theta0.size, 0)), z0, theta0,
                    *_nearest(seen, z0, h_noise))
                U = new_directions(Q, min(b, self._memory(n)) - Q.shape[1], m.rng)
                h = h_noise
                with clock.paused():
                    again = yield from m.group([], z0, U, h, theta0, theta_center=theta0)
                spent += again.nfev
                Q, Y, kept = _columns(Q, Y, again)
                hcol = np.full(Q.shape[1], h)
        phi0 = m.phi(z0)
        value = float(m.problem.outer_value(theta0, phi0))
        data.update(key=m.key, value=value, theta_shape=list(theta0.shape),
                    iteration=data.get("iteration", 0) + 1, check=False)
        arrays = {"z": z0.copy(), "theta": theta0.reshape(-1).copy(), "Q": Q, "Y": Y,
                  "age": np.zeros(Q.shape[1]), "hcol": hcol}
        info.update(delta=float(data["delta"]), radius_floor=float(data["rho"]),
                    directions=int(Q.shape[1]), new=int(U.shape[1]), step=h, jvp=out.jvp,
                    model_time=clock.seconds)
        return StepUpdate(z=z0.copy(), state=StepperState(arrays, data), phi=phi0,
                          value=value, grad=None, info=info, nfev=int(out.jvp))

    @staticmethod
    def _quantized(m, data, theta0, out) -> bool:
        """Whether the outputs look printed with few significant digits, and the noise
        is still unknown: the probe then measures it (once per solver)."""
        if not m.auto or m.noise is not None or data.get("probed"):
            return False
        thetas = [t for t in list(out.theta_trials) + list(out.thetas) if t is not None]
        res = OutputResolution(theta0, len(thetas))
        for k, theta in enumerate(thetas):
            if res.printed_digits is None:
                break
            res.observe(k, theta)
        return res.printed_digits is not None

    # -- one iteration -------------------------------------------------------------------
    def _iterate(self, m, state, data):
        clock = _Clock()
        A = state.arrays
        z_k, theta_k, Q, Y = (np.array(A[k], dtype=np.float64) for k in ("z", "theta", "Q", "Y"))
        d0 = Q.shape[1]
        age = np.array(A["age"], dtype=np.float64) if "age" in A else np.zeros(d0)
        hcol = np.array(A["hcol"], dtype=np.float64) if "hcol" in A else np.zeros(d0)
        shape = tuple(data["theta_shape"])
        F_k, delta, rho = float(data["value"]), float(data["delta"]), float(data["rho"])
        n = Q.shape[0]
        info = {"rho": None, "accepted": None, "trial_value": None, "step_norm": 0.0,
                "trials": 0, "remeasured": 0, "new": 0}

        probe_due = (data.pop("probe_due", False) and m.auto
                     and not data.get("probed"))
        phi_k = m.phi(z_k)
        while True:
            # The model, with columns whose products overflow left out (measured again).
            sub, bad = _subproblem(m.problem, theta_k.reshape(shape), phi_k, Y,
                                   m.dphi(z_k)[:, None] * Q)
            if bad.any():
                Q, Y, age, hcol = Q[:, ~bad], Y[:, ~bad], age[~bad], hcol[~bad]
            n_cols = Q.shape[1]
            complete = n_cols >= n
            z_t, c, on_boundary = _trust_step(sub, delta, z_k, Q, m)
            predicted = sub.decrease(c)
            step_norm = float(np.linalg.norm(z_t - z_k))
            trial = step_norm > 0 and predicted > 0
            grad_z = Q @ sub.g
            # A column measured farther from z_k than the step the model proposes is
            # stale: its error (the curvature times that distance) is not small
            # against the step.
            stale = age > STALE * step_norm
            fresh = not stale.any()
            # A model whose last trials landed where it predicted is trusted as it is,
            # when its columns were measured within reach of the path those trials
            # covered (a trial checks the model along its own direction only: columns
            # measured many steps back, kept by Broyden updates, are measured again).
            ratio = data.get("ratio")
            confirmed = VERIFIED_REACH * float(data.get("verified_path") or 0.0)
            verified = (ratio is not None and abs(ratio - 1.0) <= VERIFIED
                        and not (age > confirmed).any())

            # Stop before spending a solve: the complete model, measured about where it
            # is used, sees nothing to gain; a stale one is measured again first.
            level = -np.inf
            if complete:
                level, what = self._resolved_decrease(m, sub, theta_k.reshape(shape),
                                                      phi_k, F_k, data)
                # What the model sees within the initial radius at least: a radius that
                # collapsed while the model was poor must not hide the gains beyond it.
                reach = max(delta, float(data.get("radius0", delta)))
                if reach > delta and predicted <= level:
                    predicted = max(predicted, sub.decrease(
                        _trust_step(sub, reach, z_k, Q, m)[1]))
                if (not trial or predicted <= level) and (fresh or verified):
                    reason = (f"the model predicts a decrease of {max(predicted, 0.0):.3g}, "
                              f"below {what} ({level:.3g})" if trial else
                              "the model gradient vanishes (no step within the bounds "
                              "decreases the model)")
                    data.update(iteration=data["iteration"] + 1)
                    info.update(step_norm=0.0)
                    return self._result(m, z_k, theta_k, Q, Y, age, hcol, data, F_k,
                                        grad_z, clock, h=0.0, info=info, jvp=0,
                                        converged=reason)
            if not probe_due:
                break
            # The last trials contradicted a fresh model (and the run did not stop at
            # round-off): measure the noise here, let the columns measured below the
            # noise-optimal step count as stale, and build the model again.
            probe_due = False
            with clock.paused():
                noise, seen = yield from m.probe(z_k, theta_k)
            data.update(noise=noise.to_dict(), probed=True)
            info["probe"] = int(noise.nfev)
            h_noise = m.step(z_k, noise_data=data["noise"])
            age[hcol < 0.5 * h_noise] = _FAR  # stale: measured again
            if noise.status == "ok":
                # The radii shrank under a model the noise had spoilt: start them again.
                rho = max(rho, float(data.get("radius0", rho)))
                delta = max(delta, rho)
                data.update(rho=rho, delta=delta, miss=None)
            if Q.shape[1] < n:
                Q, Y, kept = add_difference_columns(Q, Y, z_k, theta_k,
                                                    *_nearest(seen, z_k, h_noise))
                age = np.concatenate([age, np.zeros(len(kept))])
                hcol = np.concatenate([hcol, np.full(len(kept), h_noise)])
        if trial and predicted <= level:
            trial = False  # nothing to try before the model is checked

        # What to measure around the trial (or around z_k when there is none).
        W = m.workers
        b = self._width_directions(m)
        slots = max(W - 1, 0)
        grow = min(b, n - n_cols)
        order = [int(j) for j in np.argsort(-age, kind="stable")]
        stale_cols = [j for j in order if stale[j]]
        check = bool(data.get("check")) and bool(stale_cols)
        # At most b directions per group, new ones first; the model check takes the
        # stalest of the rest (the others wait for the next groups).
        room = max(b - grow, 0)
        required = (stale_cols if (check or not trial) else [])[:room]
        remeasure = list(required)
        if self.mode == "refresh":
            remeasure = order[:room]
        elif self.mode == "auto" and complete and trial:
            # Idle workers measure the stale columns, and after a step the model
            # predicted poorly the stalest others: a fresh model each round.
            idle = max(min(b, slots) - grow - len(remeasure), 0)
            poor = ratio is not None and abs(ratio - 1.0) > POOR
            more = [j for j in order if j not in remeasure and age[j] > 0]
            # A refresh of a small part of a large model leaves it mostly stale: the
            # idle workers refresh when they can take most of it.
            if poor and idle >= REFRESH_SHARE * n_cols:
                remeasure += more[:idle]
        # A check needs the re-measured model before the next trial when the group
        # cannot hold both (one worker): then the group has no trial.
        with_trial = trial and not (check and slots < len(required))
        extras = []
        if with_trial:
            factors = self._extra_factors(on_boundary, data, complete,
                                          room=max(slots - len(remeasure) - grow, 0))
            extras = self._extra_trials(sub, delta, factors, z_k, z_t, Q, m)
            if self.mode == "refresh" and self.radius_factors is not None and extras:
                # Trials take places of re-measured directions: the group keeps its size.
                keep = max(len(remeasure) - len(extras), len(required))
                remeasure = remeasure[:keep]
        center = z_t if with_trial else z_k
        if with_trial and grow == 0 and not remeasure:
            U = np.zeros((n, 0))
        else:
            # The re-measured directions stay in the model: the new ones are drawn
            # orthogonal to all of them (else most of a new point's displacement lies
            # in the span and its column is lost).
            U = np.column_stack([Q[:, remeasure], new_directions(Q, grow, m.rng)])
        h = m.step(center, theta_k, data.get("curvature"), data.get("noise"))
        trials = ([z_t] + [e[0] for e in extras]) if with_trial else []
        with clock.paused():
            out = yield from m.group(trials, center, U, h, theta_k.reshape(shape),
                                     theta_center=None if with_trial else theta_k)
        info.update(trials=len(trials), remeasured=len(remeasure), new=U.shape[1]
                    - len(remeasure), jvp=out.jvp, step_norm=step_norm)

        # The trials: each finite one corrects the model along its step (Broyden).
        accepted, z_new, theta_new, F_new = False, z_k, theta_k, F_k
        converged = None
        if with_trial:
            results, curv_at, curvature = [], None, None
            for k, ((z_e, c_e, pred_e, radius_e, _), theta_e) in enumerate(zip(
                    [(z_t, c, predicted, delta, on_boundary)] + extras,
                    out.theta_trials)):
                if theta_e is None:
                    continue
                F_e = _outer_value(m.problem, theta_e.reshape(shape), m.phi(z_e))
                if not np.isfinite(F_e):
                    continue  # an overflowing trial is a rejected trial
                # How far the output landed from the linear model: its curvature along
                # the step, which sets the next difference step.
                s2 = float(c_e @ c_e)
                change = Y @ c_e
                miss = float(np.linalg.norm(theta_e - theta_k - change))
                if not miss <= LINEAR_MISS * float(np.linalg.norm(change)):
                    # The output left the region where the linear model means anything
                    # (an exponential overflowing far out): its secant would wreck the
                    # columns, and says nothing about the curvature near z_k.
                    pass
                else:
                    # The curvature is read only where the model is nearly linear (a
                    # miss within a tenth of the change): far out, an exponential's
                    # curvature says nothing about the scale of a difference step.
                    if (s2 > 0 and miss <= 0.1 * float(np.linalg.norm(change))
                            and (curv_at is None or s2 < curv_at)):
                        curv_at, curvature = s2, 2.0 * miss / s2
                    Y_e = broyden_update(Y, c_e, theta_e - theta_k)
                    if np.all(np.isfinite(Y_e)):
                        Y = Y_e
                results.append((F_e, (F_k - F_e) / pred_e, z_e, theta_e,
                                float(np.linalg.norm(z_e - z_k)), radius_e, k == 0))
            if curvature is not None:
                data["curvature"] = curvature
            if not results:
                # Every trial failed or overflowed: a smaller step from the same model,
                # half the one that failed (an interior step would otherwise come back
                # to the same point), below the lower radius if need be: the solver
                # failed there, the model may well be right.
                delta = 0.5 * min(delta, step_norm)
                rho = min(rho, delta)
                info["accepted"] = False
                data.update(ratio=0.0, check=False, rho=rho, verified_path=0.0)
            else:
                F_t, ratio, z_b, theta_b, norm_b, delta_used, main = min(
                    results, key=lambda r: r[0])
                accepted = bool(ratio > ACCEPT)
                info.update(rho=float(ratio), accepted=accepted, trial_value=F_t,
                            step_norm=norm_b)
                if accepted:
                    z_new, theta_new, F_new = z_b, theta_b, F_t
                boundary = norm_b >= (1.0 - 1e-9) * delta_used
                streak = (int(data.get("streak", 0)) + 1
                          if ratio > ETA2 and boundary else 0)
                delta = radius_update(ratio, delta_used, norm_b, rho, streak)
                # The path of the trials that kept landing where the model predicted.
                path = (float(data.get("verified_path") or 0.0) + norm_b
                        if abs(ratio - 1.0) <= VERIFIED else 0.0)
                data.update(ratio=float(ratio), check=False, streak=streak,
                            verified_path=path)
                if ratio < ETA1:
                    converged = self._failed(m, data, fresh, delta_used, rho, F_k, F_t,
                                             predicted if main else None, norm_b, z_k,
                                             theta_k.reshape(shape), level)
                    rho = float(data["rho"])
                    delta = max(delta, rho)
                    # A stale model failed: check it (re-measure) before trusting a
                    # smaller radius.
                    data["check"] = not fresh
        else:
            data["check"] = False  # this group re-measured what was stale
        # The columns: re-measured ones replace their old values, new ones are added.
        Q, Y, age, hcol = _merge(Q, Y, age, hcol, remeasure, out, z_new, z_k, h,
                                 self._memory(n))
        if self._quantized(m, data, theta_k, out):
            data["probe_due"] = True
        data.update(delta=float(delta), value=float(F_new), iteration=data["iteration"] + 1)
        return self._result(m, z_new, theta_new, Q, Y, age, hcol, data, F_new, grad_z,
                            clock, h, info, out.jvp, converged=converged)

    def _failed(self, m, data, fresh, delta_used, rho, F_k, F_t, predicted, norm, z,
                theta, level):
        """A trial below ETA1. From a fresh model at the lower radius: ``rho`` shrinks
        (the run converged once it is below ``xtol``). Returns the reason to stop, or
        None.

        Such a failure also tells whether the outputs are smooth: a fresh model misses
        the actual change of F along a step s by about what the outputs' curvature
        makes of it (``|grad_theta f| kappa s^2``, with ``kappa`` read off the trials)
        plus the round-off of F, and less as the steps shrink. Two failures in a row
        that miss by ``CONTRADICTION`` times more, the second at most half the step of
        the first without a proportionally smaller miss, contradict smooth outputs: the
        noise is probed."""
        if not fresh or delta_used > 1.5 * rho:
            return None
        curvature = data.get("curvature")
        if (predicted is not None and m.auto and not data.get("probed") and curvature
                and np.isfinite(level)):
            if isinstance(m.problem.outer, LeastSquares):
                g_theta = m.problem.outer.grad_theta(theta)
            else:
                _, g_theta, _ = m.problem.outer_parts(theta, m.phi(z))
            allowed = float(np.linalg.norm(g_theta)) * curvature * norm ** 2 + level
            error = abs((F_k - F_t) - predicted)
            last = data.get("miss")
            contradicts = error > CONTRADICTION * allowed
            if (contradicts and last is not None and norm <= 0.5 * last[0]
                    and error > last[1] * norm / last[0]):
                data["probe_due"] = True
            data["miss"] = [float(norm), float(error)] if contradicts else None
        rho_end = self.xtol * max(1.0, float(np.max(np.abs(z))))
        if rho <= rho_end:
            return (f"the trust radius fell below xtol * max(1, |z|) = {rho_end:.3g} "
                    "(steps from a fresh model keep failing)")
        data["rho"] = max(rho / RHO_FACTOR, rho_end)
        return None

    def _resolved_decrease(self, m, sub, theta, phi, F, data):
        """The smallest decrease of ``F`` that can be told from nothing, and its name:
        ``ftol * |F|``, the measured noise of ``F``, and the round-off of ``F`` (for least
        squares, of its residuals)."""
        level, what = self.ftol * abs(F), "ftol * |F|"
        noise = m.noise_estimate(data.get("noise"))
        if noise is not None and noise.status == "ok":
            noise_F = _noise_of_F(m.problem, noise, theta, phi)
            if noise_F > level:
                level, what = noise_F, "the noise of F"
        if isinstance(m.problem.outer, LeastSquares) and hasattr(sub, "r"):
            # r = w (theta - y): each entry carries a rounding error ~ eps |w y|, so F
            # resolves changes down to about 2 eps sum |r_i| |w_i y_i|.
            r0 = m.problem.outer.residuals(np.zeros(theta.size), phi)
            roundoff = 4.0 * _EPS * float(np.abs(sub.r) @ (np.abs(r0) + np.abs(sub.r)))
            what_r = "the round-off of the residuals"
        else:
            # The outputs come out of a computation that rounds at every operation
            # (OUTPUT_ULPS units in the last place, a solver's time steps and sums),
            # phi and F to a few: F resolves nothing below those roundings weighted
            # by the outer gradient.
            _, g_theta, g_phi = m.problem.outer_parts(theta, phi)
            roundoff = _EPS * (
                OUTPUT_ULPS * float(np.abs(np.ravel(g_theta)) @ np.abs(np.ravel(theta)))
                + 4.0 * (float(np.abs(g_phi) @ np.abs(phi)) + abs(F)))
            what_r = "the round-off of F"
        if roundoff > level:
            level, what = roundoff, what_r
        return level, what

    def _extra_factors(self, on_boundary, data, complete, room):
        if self.radius_factors is not None:
            return [f for f in self.radius_factors if f != 1.0] if complete else []
        if self.mode != "auto" or not on_boundary or room <= 0:
            return []
        ratio = data.get("ratio")
        if ratio is not None and ratio <= ETA2:
            return []
        return list(LADDER[:room])

    @staticmethod
    def _extra_trials(sub, delta, factors, z_k, z_t, Q, m):
        """Trust-region steps at ``factors`` times the radius, each distinct from the
        main trial and from each other: ``(z, c, predicted, radius, on_boundary)``."""
        out, seen = [], [z_t]
        for f in factors:
            z_e, c_e, bound_e = _trust_step(sub, f * delta, z_k, Q, m)
            if any(np.array_equal(z_e, s) for s in seen):
                continue
            pred = sub.decrease(c_e)
            if pred > 0:
                seen.append(z_e)
                out.append((z_e, c_e, pred, f * delta, bound_e))
        return out

    @staticmethod
    def _result(m, z, theta, Q, Y, age, hcol, data, value, grad_z, clock, h, info, jvp,
                converged=None):
        arrays = {"z": z.copy(), "theta": np.asarray(theta, dtype=np.float64).copy(),
                  "Q": np.ascontiguousarray(Q), "Y": np.ascontiguousarray(Y),
                  "age": np.asarray(age, dtype=np.float64),
                  "hcol": np.asarray(hcol, dtype=np.float64)}
        # The model gradient the step used, from z to phi (the history reports its norm).
        dphi = m.dphi(z)
        grad = np.divide(grad_z, dphi, out=np.zeros_like(grad_z), where=dphi != 0)
        info = dict(info, delta=float(data["delta"]), radius_floor=float(data["rho"]),
                    directions=int(Q.shape[1]), step=float(h), jvp=int(jvp),
                    model_time=clock.seconds)
        return StepUpdate(z=z.copy(), state=StepperState(arrays, data), phi=m.phi(z),
                          value=float(value), grad=grad, info=info, nfev=int(jvp),
                          converged=converged)


def _trust_step(sub, delta, z_k, Q, m):
    """The trust-region step within the bounds: ``(z_t, c, on_boundary)`` with
    ``z_t = z_k + Q c``. As DFO-LS's ``trsbox`` does, the step follows the
    subproblem's minimizer until a parameter reaches its bound, fixes that parameter
    there, and minimizes the model over the rest of the subspace in the ball that
    remains; a step that pushes one parameter against its bound still moves the others
    (clipping alone may leave nothing of it). Where the subspace cannot hold a
    parameter at its bound (it lacks the coordinate), the rest is clipped."""
    lower, upper = m.transform.z_bounds()
    restrict = getattr(sub, "restricted", None)
    fixed = np.zeros(z_k.size, dtype=bool)
    value = z_k.copy()
    tr = sub.solve(delta)
    c, on_boundary = tr.step, tr.on_boundary
    for _ in range(z_k.size):
        s = Q @ c
        with np.errstate(divide="ignore", invalid="ignore"):
            reach = np.where(s > 0, (upper - z_k) / s, np.where(s < 0, (lower - z_k) / s,
                                                               np.inf))
        reach[fixed | ~np.isfinite(reach)] = np.inf
        reach = np.maximum(reach, 0.0)
        first = float(np.min(reach)) if reach.size else np.inf
        if first >= 1.0 or restrict is None:
            break
        # Fix every parameter the path reaches first (those at their bound at once).
        hit = reach <= first * (1.0 + 1e-12)
        fixed |= hit
        value[hit] = np.where(s[hit] > 0, upper[hit], lower[hit])
        target = value[fixed] - z_k[fixed]
        QA = Q[fixed]
        c0 = np.linalg.lstsq(QA, target, rcond=None)[0]
        room = delta ** 2 - float(c0 @ c0)
        if room <= 0 or not np.allclose(QA @ c0, target, rtol=1e-10,
                                        atol=1e-12 * max(1.0, float(np.max(np.abs(target))))):
            break
        N = scipy.linalg.null_space(QA)
        if N.shape[1] == 0:
            c = c0
            break
        inner = restrict(c0, N).solve(math.sqrt(room))
        c, on_boundary = c0 + N @ inner.step, inner.on_boundary
    z_t = z_k + Q @ c
    z_t[fixed] = value[fixed]  # exactly on the bounds, not a rounding past them
    z_t = m.project(z_t)
    return z_t, Q.T @ (z_t - z_k), on_boundary


def radius_update(ratio, delta, step_norm, rho, streak=1):
    """The next trust radius after a trial with ratio ``ratio`` and step length
    ``step_norm`` taken at radius ``delta``: ``min(delta/2, |s|)`` below ``ETA1``,
    ``max(delta/2, |s|)`` up to ``ETA2``, and above it twice the radius, or four times
    the step once ``streak`` very successful steps in a row reached the boundary (a
    minimizer far away is approached geometrically, without an early overshoot on a
    curved valley); never below the lower radius ``rho``, and ``rho`` itself once within
    1.5 times it (DFO-LS's rule, with its fourfold growth kept for runs of boundary
    steps).

    Examples
    --------
    >>> radius_update(0.9, 1.0, 1.0, 0.1), radius_update(0.9, 1.0, 1.0, 0.1, streak=2)
    (2.0, 4.0)
    >>> radius_update(0.0, 1.0, 0.3, 0.1)
    0.3
    """
    if ratio < ETA1:
        delta = min(0.5 * delta, step_norm)
    elif ratio <= ETA2:
        delta = max(0.5 * delta, step_norm)
    else:
        delta = max(2.0 * delta, (4.0 if streak >= 2 else 2.0) * step_norm)
    return rho if delta <= 1.5 * rho else float(delta)


def _subproblem(problem, theta, phi, Y, P):
    """The trust-region subproblem, and the columns left out because their products
    overflow (a trial far out can leave an output of 1e300 in a Broyden update)."""
    bad = ~(np.all(np.isfinite(Y), axis=0) & np.all(np.abs(Y) < 1e150, axis=0))
    while True:
        try:
            return subspace_subproblem(problem, theta, phi, Y[:, ~bad], P[:, ~bad],
                                       dense_max=DENSE_MAX), bad
        except FG2UValueError as exc:
            if "finite" not in str(exc) or bad.all():
                raise
            # Leave out the column of largest norm, until the model is finite.
            norms = np.where(bad, -np.inf, np.linalg.norm(Y, axis=0))
            bad[int(np.argmax(norms))] = True


def _columns(Q, Y, out):
    """``Q, Y`` grown by the columns a group measured; the indices of the points kept."""
    if out.theta_center is None:
        return Q, Y, []
    if out.JU is not None:
        return (np.column_stack([Q, out.U]), np.column_stack([Y, out.JU]),
                list(range(out.U.shape[1])))
    return add_difference_columns(Q, Y, out.center, out.theta_center, out.points,
                                  out.thetas)


def _merge(Q, Y, age, hcol, remeasure, out, z_new, z_k, h, memory):
    """The columns after a group: the old ones aged by the move, those re-measured
    replaced (when their new measurement came back), the new ones added; the oldest
    dropped beyond ``memory``."""
    move = float(np.linalg.norm(z_new - z_k))
    age = age + move
    if out.theta_center is not None and remeasure:
        measured = ([out.JU is not None] * len(remeasure) if out.JU is not None
                    else [out.thetas[i] is not None for i in range(len(remeasure))])
        drop = [j for j, ok in zip(remeasure, measured) if ok]
        if drop:
            Q, Y = np.delete(Q, drop, axis=1), np.delete(Y, drop, axis=1)
            age, hcol = np.delete(age, drop), np.delete(hcol, drop)
    d = Q.shape[1]
    Q, Y, kept = _columns(Q, Y, out)
    added = Q.shape[1] - d
    age = np.concatenate([age, np.full(added, float(np.linalg.norm(out.center - z_new)))])
    hcol = np.concatenate([hcol, np.full(added, float(h))])
    if Q.shape[1] > memory:
        keep = np.sort(np.argsort(age, kind="stable")[:memory])
        Q, Y, age, hcol = Q[:, keep], Y[:, keep], age[keep], hcol[keep]
    return Q, Y, age, hcol


def _nearest(seen, z0, h):
    """The probe's points ordered by how close their distance from ``z0`` is to ``h``
    (in ratio), as ``(points, outputs)``."""
    seen = [(p, t) for p, t in seen if np.linalg.norm(p - z0) > 0]
    seen.sort(key=lambda pt: abs(math.log(np.linalg.norm(pt[0] - z0) / h)))
    return [p for p, _ in seen], [t for _, t in seen]


def _outer_value(problem, theta, phi):
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            return float(problem.outer_value(theta, phi))
    except (OverflowError, FloatingPointError):
        return math.inf


def _noise_of_F(problem, noise, theta, phi):
    """The noise of ``F`` at ``(theta, phi)`` from a probe of the inner projection:
    ``sqrt(sum_j (g_j sigma_j)^2)`` with the per-output noise ``sigma`` and the outer
    gradient ``g`` here, else the probe's relative noise times ``sum |g_j theta_j|``."""
    _, g, _ = problem.outer_parts(theta, phi)
    g = np.ravel(g)
    out = noise.output_noise
    if out is not None and out.size == g.size and np.all(np.isfinite(out)):
        return float(np.sqrt(np.sum((g * out) ** 2)))
    rel = noise.relative_noise
    return float(rel * np.sum(np.abs(g * np.ravel(theta)))) if np.isfinite(rel) else 0.0


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
