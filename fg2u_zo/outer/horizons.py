"""The horizons of a continuation: chosen from the observation times, or turned into
``fz.Phase`` objects for a single :func:`~fg2u_zo.minimize` run.

See :mod:`fg2u_zo.outer.continuation` for why a long horizon needs continuation.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..errors import FG2UTypeError, FG2UValueError
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


def horizon_phases(build, horizons, steps, *, estimator=None, lr=None):
    """The horizons as ``fz.Phase`` objects, for one :func:`~fg2u_zo.minimize` run.

    Each phase runs ``build(horizon)``'s inner solver and outer loss. Unlike
    :class:`Continuation`, the phases have fixed lengths (a run has one checkpoint
    and its optimizer state carries over); use it when the steps each horizon needs
    are known.

    Parameters
    ----------
    build : callable
        ``build(horizon) -> BilevelProblem``.
    horizons : sequence of float
    steps : int or sequence of int
        Steps of each phase.
    estimator : Estimator, optional
        Every phase's estimator (default: ``minimize``'s).
    lr : float or sequence of float, optional

    Returns
    -------
    list of Phase
    """
    import fg2u_zo

    horizons = [float(h) for h in np.asarray(horizons, dtype=np.float64).ravel()]
    if not horizons or any(b <= a for a, b in zip(horizons, horizons[1:])):
        raise FG2UValueError("`horizons` must be a non-empty, strictly increasing sequence")
    steps = per_phase(steps, len(horizons), "steps", int)
    lrs = per_phase(lr, len(horizons), "lr", float) if lr is not None else (None,) * len(
        horizons)
    phases = []
    for h, n, rate in zip(horizons, steps, lrs):
        problem = build(h)
        if not isinstance(problem, BilevelProblem):
            raise FG2UTypeError(f"`build({h!r})` must return a fz.BilevelProblem, got "
                                f"{type(problem).__name__}")
        phases.append(fg2u_zo.Phase(steps=n, estimator=estimator, solver=problem.inner,
                                    outer=problem.outer, lr=rate, name=f"horizon {h:g}"))
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
