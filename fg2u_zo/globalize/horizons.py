"""Continuation in the horizon: fit the early observations first, then extend.

A long horizon makes the misfit of an oscillatory, dispersive or chaotic simulator
rugged: a small error in a coefficient becomes a phase error that grows with time, and
past some time the misfit has a local minimum wherever a wave lines up with the wrong
crest. Over a short horizon the same misfit has one minimum. Continuation runs a
sequence of phases with growing horizons ``T_1 < T_2 < ... <= T``: phase k fits the
observations with ``t <= T_k`` with the simulator run only to ``T_k`` (cheaper too),
warm-started from the end of phase k - 1, and moves on once the phase has converged.

- :func:`horizon_schedule` chooses the horizons from the observation times;
- :func:`horizon_phases` turns them into :class:`~fg2u_zo.Phase` objects (one
  :class:`~fg2u_zo.BilevelProblem` per horizon, built by the user's ``build(horizon)``,
  each phase ending by its :class:`~fg2u_zo.Converged` rule) for one
  :func:`~fg2u_zo.minimize` run: one checkpoint, one journal, resumable at any moment,
  and the local run of a :func:`~fg2u_zo.multistart`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..errors import FG2UTypeError, FG2UValueError
from ..outer.convergence import Converged
from ..problem import BilevelProblem
from ..validation import check_choice, check_positive_float, check_positive_int

__all__ = ["horizon_schedule", "horizon_phases", "per_phase"]


def horizon_schedule(times, *, growth=2.0, min_points=10, num_phases=None, spacing="time",
                     horizon=None) -> np.ndarray:
    """Growing horizons ``T_1 < ... < T_K`` for continuation, from the observation times.

    The last horizon is the whole record (``horizon``, default ``max(times)``). Going
    backwards, each horizon is the previous one divided by ``growth``
    (``spacing="time"``), or holds ``1 / growth`` as many observations
    (``spacing="points"``: horizons at quantiles of the times), until the first phase
    would see fewer than ``min_points`` observations. Each horizon is then moved down
    to the latest observation time it covers (the simulator need not run further), and
    horizons that coincide are merged.

    Parameters
    ----------
    times : array_like
        Times of the observations, measured from the simulator's initial time (one
        entry per observation: repeated times weigh as the observations they carry).
    growth : float
        Ratio of successive horizons (or of their numbers of observations), > 1.
        2 (the default) doubles the horizon from phase to phase: a fit over ``T_k``
        predicts the first ``2 T_k`` well enough to start phase ``k + 1`` in the basin
        of its minimum when the phase error of a wrong coefficient grows about linearly
        in time.
    min_points : int
        Observations the first phase sees at least (a few times the number of
        unknowns).
    num_phases : int, optional
        Number of phases; default: as many as ``growth`` and ``min_points`` allow. A
        larger value is capped there.
    spacing : {"time", "points"}
        Geometric growth of the horizon itself, or of the number of observations.
    horizon : float, optional
        The last horizon (default: the last observation time).

    Returns
    -------
    ndarray
        The horizons, strictly increasing, the last equal to ``horizon``.

    Raises
    ------
    FG2UValueError
        For empty, negative or non-finite ``times``, ``growth <= 1``, or a ``horizon``
        before the first observation.

    Examples
    --------
    >>> import numpy as np, fg2u_zo as fz
    >>> times = np.linspace(0.01, 1.0, 100)
    >>> fz.horizon_schedule(times).round(2).tolist()
    [0.12, 0.25, 0.5, 1.0]
    >>> fz.horizon_schedule(times, spacing="points", min_points=20).round(2).tolist()
    [0.25, 0.5, 1.0]
    """
    t = np.sort(np.asarray(times, dtype=np.float64).ravel())
    if t.size == 0 or not np.all(np.isfinite(t)) or t[0] < 0:
        raise FG2UValueError(
            "`times` must be a non-empty array of finite observation times >= 0 (measured "
            "from the simulator's initial time)")
    growth = check_positive_float(growth, "growth")
    if growth <= 1:
        raise FG2UValueError(f"`growth` must be > 1 (the ratio of successive horizons), "
                             f"got {growth}")
    min_points = check_positive_int(min_points, "min_points")
    spacing = check_choice(spacing, "spacing", ("time", "points"))
    if num_phases is not None:
        num_phases = check_positive_int(num_phases, "num_phases")
    last = t[-1] if horizon is None else check_positive_float(horizon, "horizon")
    t = t[t <= last]
    if t.size == 0:
        raise FG2UValueError(f"`horizon` = {last} lies before the first observation")
    first = t[min(min_points, t.size) - 1]   # the first phase sees >= min_points points
    if spacing == "time":
        room = math.log(last / first) / math.log(growth) if first > 0 else math.inf
        count = 1 + int(math.floor(min(room, 64) + 1e-9))
        if num_phases is not None:
            count = min(count, num_phases)
        raw = last / growth ** np.arange(count - 1, -1, -1, dtype=np.float64)
    else:
        room = math.log(t.size / min(min_points, t.size)) / math.log(growth)
        count = 1 + int(math.floor(room + 1e-9))
        if num_phases is not None:
            count = min(count, num_phases)
        fractions = growth ** np.arange(count - 1, -1, -1, dtype=np.float64)
        raw = np.array([t[max(int(math.ceil(t.size / f)), 1) - 1] for f in fractions])
        raw[-1] = last
    raw = np.maximum(raw, first)
    # Move each horizon down to the latest observation it covers (the last stays).
    snapped = [t[np.searchsorted(t, h, side="right") - 1] for h in raw[:-1]] + [last]
    return np.unique(np.asarray(snapped, dtype=np.float64))


def horizon_phases(build, horizons, steps=100, *, until=Converged(), stop=None,
                   estimator=None, lr=None, restart=True, carry_lr=None):
    """Phases with growing horizons, for one :func:`~fg2u_zo.minimize` run.

    Parameters
    ----------
    build : callable
        ``build(horizon) -> BilevelProblem``: the problem restricted to the observations
        with ``t <= horizon``, its inner solver run only to ``horizon``. Called once per
        horizon, now.
    horizons : sequence of float
        Strictly increasing (see :func:`horizon_schedule`).
    steps : int or sequence of int
        Most steps of each phase (one number for all, or one per phase).
    until : Converged, sequence of (Converged or None), or None
        When a phase before the last moves on before its ``steps`` (default
        ``Converged()``: the steps stayed below 1e-3 for 3 steps). One rule for all,
        or one per phase before the last. None: always take ``steps``.
    stop : Converged, optional
        When the last phase (and the run) stops before its ``steps`` (default: never;
        the result's status is then ``"converged"``).
    estimator : Estimator, optional
        Every phase's estimator (default: ``minimize``'s).
    lr : float or sequence of float, optional
        Learning rate of each phase (default ``minimize``'s ``lr``).
    restart : bool
        Each phase starts the stepper afresh at its start point (default: a new
        objective calls for it: Adam's moments, Rprop's step sizes, the Gauss–Newton
        model are those of the shorter horizon).
    carry_lr : float, optional
        Warm-start the step size of first-order steppers: each phase after the first
        starts with this factor times the largest move of any coordinate of phi over
        the previous phase's last steps, capped at its own learning rate (the previous
        phase ended near the new minimum, so the new one need not first overshoot by a
        full learning rate). None: every phase starts at its learning rate.

    Returns
    -------
    list of Phase
        Named ``"horizon <T>"``; pass them as ``minimize(..., phases=...)`` with
        ``problem=build(horizons[-1])`` (whose solver gives the final value).

    Examples
    --------
    Fitting a frequency: over ``t <= 10`` the misfit has a local minimum near every
    frequency that lines up some crests, and a local method started at 2 stops at one
    of them; over ``t <= 1.2`` it has one minimum.

    >>> import numpy as np, torch, fg2u_zo as fz
    >>> t = np.linspace(0.0, 10.0, 101)
    >>> data = torch.as_tensor(np.sin(1.3 * t))
    >>> def build(horizon):
    ...     keep = t <= horizon
    ...     return fz.BilevelProblem(
    ...         inner=lambda phi: np.sin(phi[0] * t[keep]),
    ...         outer=lambda theta, phi: ((theta - data[keep]) ** 2).mean())
    >>> fz.horizon_schedule(t[1:]).round(2).tolist()
    [1.2, 2.5, 5.0, 10.0]
    >>> phases = fz.horizon_phases(build, fz.horizon_schedule(t[1:]), steps=100,
    ...                            stop=fz.Converged(xtol=1e-5))
    >>> est = fz.FG2UZO(num_directions=1, step=1e-6)
    >>> res = fz.minimize(build(10.0), np.array([2.0]), est, optimizer="Rprop", lr=0.05,
    ...                   phases=phases, rng=0, progress=False)
    >>> round(float(res.phi[0]), 4), res.status, len(res.phases)
    (1.3, 'converged', 4)
    >>> alone = fz.minimize(build(10.0), np.array([2.0]), est, optimizer="Rprop",
    ...                     lr=0.05, steps=100, rng=0, progress=False)
    >>> round(float(alone.phi[0]), 1)
    2.1
    """
    from ..outer.phases import Phase

    if not callable(build):
        raise FG2UTypeError(
            f"`build` must be a callable build(horizon) -> BilevelProblem, got "
            f"{type(build).__name__}")
    h = np.asarray(horizons, dtype=np.float64).ravel()
    if h.size == 0 or not np.all(np.isfinite(h)) or np.any(np.diff(h) <= 0):
        raise FG2UValueError(
            "`horizons` must be a non-empty, strictly increasing sequence of finite times "
            f"(see fz.horizon_schedule), got {horizons!r}")
    k = h.size
    steps = per_phase(steps, k, "steps", int)
    lrs = per_phase(lr, k, "lr", float) if lr is not None else (None,) * k
    if until is None or isinstance(until, Converged):
        untils = (until,) * (k - 1)
    else:
        untils = tuple(until)
        if len(untils) != k - 1 or not all(u is None or isinstance(u, Converged)
                                           for u in untils):
            raise FG2UValueError(
                f"`until` must be a Converged, None, or one of them for each of the {k - 1} "
                "phases before the last")
    if stop is not None and not isinstance(stop, Converged):
        raise FG2UTypeError(f"`stop` must be a fz.Converged or None, got "
                            f"{type(stop).__name__}")
    phases = []
    for i, (horizon, n, rate) in enumerate(zip(h.tolist(), steps, lrs)):
        problem = build(horizon)
        if not isinstance(problem, BilevelProblem):
            raise FG2UTypeError(f"`build({horizon!r})` must return a fz.BilevelProblem, got "
                                f"{type(problem).__name__}")
        phases.append(Phase(steps=n, estimator=estimator, solver=problem.inner,
                            outer=problem.outer, lr=rate, name=f"horizon {horizon:g}",
                            until=stop if i == k - 1 else untils[i],
                            restart=bool(restart) and i > 0,
                            carry_lr=carry_lr if i > 0 else None))
    return phases


def per_phase(value, count, name, kind):
    """``value`` repeated ``count`` times, or checked to have one entry per phase."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        values = (value,) * count
    else:
        try:
            values = tuple(value)
        except TypeError:
            raise FG2UTypeError(f"`{name}` must be a number or one per phase, got "
                                f"{type(value).__name__}") from None
        if len(values) != count:
            raise FG2UValueError(f"`{name}` must have one entry per phase ({count}), got "
                                 f"{len(values)}")
    if kind is int:
        return tuple(check_positive_int(v, name) for v in values)
    return tuple(check_positive_float(v, name) for v in values)
