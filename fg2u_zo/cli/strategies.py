"""The ``[continuation]`` and ``[multistart]`` tables of a TOML run configuration.

``[continuation]`` makes the run's phases those of growing horizons
(:func:`fg2u_zo.horizon_phases`); ``[multistart]`` runs it from the best points of a
space-filling design (:class:`fg2u_zo.MultiStart`); with both, each local run of the
multi-start is the whole continuation. Either way it stays one
:func:`fg2u_zo.minimize` run, with its checkpoint, journal and history, that
``fg2u-zo resume`` continues.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, FG2UError
from .build import build_solver, least_squares_kwargs
from .schema import CONTINUATION_KEYS, CONVERGED_KEYS, MULTISTART_KEYS

__all__ = ["build_converged", "build_continuation", "build_multistart"]


def build_converged(c, value, where):
    """A table of :class:`fg2u_zo.Converged` keys (``{ xtol = 1e-3, patience = 3 }``)."""
    from ..outer.convergence import Converged

    table = c.table(value, where)
    c.unknown_keys(table, CONVERGED_KEYS, where)
    kwargs = {}
    for key in ("xtol", "snr"):
        if key in table:
            kwargs[key] = c.number(table[key], f"{where}.{key}", minimum=0.0)
    for key in ("patience", "min_steps"):
        if key in table:
            kwargs[key] = c.integer(table[key], f"{where}.{key}")
    try:
        return Converged(**kwargs)
    except FG2UError as exc:
        raise c.from_constructor(exc, where, tuple(kwargs)) from None


def _times(c, value, size):
    where = "[continuation] times"
    times = (c.array(value, where) if isinstance(value, str)
             else np.array(c.number_list(value, where)))
    if times.size != size:
        raise c.error(where, f"has {times.size} times for the {size} entries of [outer] data "
                             "(one observation time per entry)")
    if np.any(times < 0):
        raise c.error(where, "must be >= 0 (measured from the simulator's initial time)")
    return times


def _horizons(c, t, times):
    from ..globalize.horizons import horizon_schedule

    auto_keys = ("growth", "min_points", "num_phases", "spacing")
    value = t.get("horizons", "auto")
    if value != "auto":
        horizons = c.number_list(value, "[continuation] horizons") if isinstance(
            value, list) else c.string(value, "[continuation] horizons", ("auto",))
        for key in auto_keys:
            if key in t:
                raise c.error(f"[continuation] {key}", "applies only to horizons = 'auto'")
        if horizons and horizons[0] < times.min():
            raise c.error("[continuation] horizons", f"starts at {horizons[0]:g}, before the "
                                                     f"first observation time {times.min():g}")
        return horizons
    kwargs = {}
    if "growth" in t:
        kwargs["growth"] = c.number(t["growth"], "[continuation] growth")
    if "min_points" in t:
        kwargs["min_points"] = c.integer(t["min_points"], "[continuation] min_points")
    if "num_phases" in t:
        kwargs["num_phases"] = c.integer(t["num_phases"], "[continuation] num_phases")
    if "spacing" in t:
        kwargs["spacing"] = c.string(t["spacing"], "[continuation] spacing",
                                     ("time", "points"))
    try:
        return horizon_schedule(times, **kwargs)
    except FG2UError as exc:
        raise c.from_constructor(exc, "[continuation]", tuple(kwargs)) from None


def build_continuation(c, t, raw, names, num_params, name):
    """``[continuation]`` -> ``(phases, problem)``: :func:`fg2u_zo.horizon_phases` and
    the problem over the whole horizon.

    Phase k's problem is the ``[solver]`` given the horizon ``T_k`` (``horizon=`` or
    ``{horizon}``) and the ``[outer]`` least squares restricted to the data entries
    with ``times <= T_k`` (their weights and selection likewise): the solver run to
    ``T_k`` must return the outputs of those entries.
    """
    from ..globalize.horizons import horizon_phases
    from ..losses import LeastSquares
    from ..problem import BilevelProblem

    c.unknown_keys(t, CONTINUATION_KEYS, "[continuation]")
    if raw["outer"].get("kind", "least_squares") != "least_squares":
        raise c.error("[continuation]", "needs [outer] kind = 'least_squares' (it keeps the "
                                        "data entries with times <= each horizon)")
    if "phases" in raw.get("optimizer", {}):
        raise c.error("[continuation]", "cannot be combined with [[optimizer.phases]]: its "
                                        "horizons are the phases")
    if "steps" in raw.get("optimizer", {}):
        raise c.error("[optimizer] steps", "cannot be given with [continuation]: set "
                                           "[continuation] steps (most steps per phase)")
    if "times" not in t:
        raise c.error("[continuation] times", "is missing: one observation time per entry of "
                                              "[outer] data (a file or a list)")
    ls = least_squares_kwargs(c, raw["outer"])
    times = _times(c, t["times"], ls["data"].size)
    horizons = _horizons(c, t, times)
    steps = t.get("steps", 100)
    if isinstance(steps, list):
        steps = [c.integer(s, "[continuation] steps") for s in steps]
    else:
        steps = c.integer(steps, "[continuation] steps")
    move_on = t.get("move_on", {})
    if move_on is False:
        until = None    # always take `steps`
    else:
        until = build_converged(c, move_on, "[continuation] move_on")
    stop = build_converged(c, t["stop"], "[continuation] stop") if "stop" in t else None

    def per_datum(value, keep):
        arr = np.asarray(value)
        return arr[keep] if arr.ndim == 1 and arr.size == keep.size else value

    def build(horizon):
        keep = times <= horizon
        kwargs = dict(ls, data=ls["data"][keep])
        for key in ("weights", "selection"):
            if key in kwargs:
                kwargs[key] = per_datum(kwargs[key], keep)
        try:
            outer = LeastSquares(**kwargs)
        except FG2UError as exc:
            raise c.from_constructor(exc, "[outer]", tuple(kwargs)) from None
        solver = build_solver(c, raw["solver"], names, "[solver]", horizon=horizon)
        try:
            return BilevelProblem(inner=solver, outer=outer, num_params=num_params,
                                  name=f"{name}@{horizon:g}")
        except FG2UError as exc:
            raise c.error("[solver]", str(exc)) from None

    try:
        phases = horizon_phases(build, horizons, steps=steps, until=until, stop=stop)
    except ConfigError:
        raise
    except FG2UError as exc:
        raise c.from_constructor(exc, "[continuation]", ("steps", "horizons")) from None
    return phases, build(float(horizons[-1]))


def build_multistart(c, t, raw_optimizer, bounds, num_params, with_continuation):
    """``[multistart]`` -> ``(MultiStart, stop)``: the strategy, and the rule that ends
    a local run early (None)."""
    from ..globalize.multistart import DESIGNS, MultiStart

    c.unknown_keys(t, MULTISTART_KEYS, "[multistart]")
    if "phases" in raw_optimizer:
        raise c.error("[multistart]", "cannot be combined with [[optimizer.phases]]")
    if bounds is None:
        raise c.error("[multistart]", "needs finite [parameters] bounds: the design fills "
                                      "the box")
    for side, value in zip(("lo", "hi"), bounds):
        if not np.all(np.isfinite(np.broadcast_to(np.asarray(value, float), (num_params,)))):
            raise c.error(f"[parameters] bounds ({side})", "must be finite for [multistart]: "
                                                           "the design fills the box")
    if np.any(np.broadcast_to(np.asarray(bounds[1], float), (num_params,))
              <= np.broadcast_to(np.asarray(bounds[0], float), (num_params,))):
        raise c.error("[parameters] bounds", "must have lo < hi in every coordinate for "
                                             "[multistart]")
    out = {}
    if "num_starts" in t:
        out["num_starts"] = c.integer(t["num_starts"], "[multistart] num_starts", minimum=0)
    if "num_local" in t:
        out["num_local"] = c.integer(t["num_local"], "[multistart] num_local")
    if "design" in t:
        out["design"] = c.string(t["design"], "[multistart] design", DESIGNS)
    if "halving" in t:
        out["halving"] = c.number(t["halving"], "[multistart] halving", minimum=1.0)
    if "rungs" in t:
        out["rungs"] = [c.integer(r, "[multistart] rungs") for r in (
            t["rungs"] if isinstance(t["rungs"], list) else [t["rungs"]])]
    for key in ("tie_rtol", "tie_xtol"):
        if key in t:
            out[key] = c.number(t[key], f"[multistart] {key}", minimum=0.0)
    stop = None
    if "stop" in t:
        if with_continuation:
            raise c.error("[multistart] stop", "does not apply with [continuation]: set "
                                               "[continuation] stop")
        stop = build_converged(c, t["stop"], "[multistart] stop")
    try:
        return MultiStart(**out), stop
    except FG2UError as exc:
        raise c.from_constructor(exc, "[multistart]", tuple(out)) from None
