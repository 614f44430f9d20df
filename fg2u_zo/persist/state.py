"""The state of a run as data, and its encoders: what a checkpoint holds.

:class:`RunState` is one local run between two steps (its ``z``, stepper state, random
generator, position in the phases, noise estimate, totals ...); :class:`SearchState`
is the whole run: its stage, its local runs, a multi-start's design and screening,
the final values, the solves of each parallel group. Both are plain data, written by
:func:`encode_search` as JSON (the codec's tags, :mod:`.codec`) plus named numpy
arrays, and read back by :func:`decode_search`, which checks every field and names
the first malformed one in a :class:`~fg2u_zo.CheckpointError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import CheckpointError
from .codec import (FieldReader, decode_noise, encode_noise, from_json, generator_from_state,
                    generator_state, to_json)

__all__ = ["StepperState", "Totals", "RunState", "SearchState", "STAGES", "RUN_STATUSES",
           "encode_search", "decode_search"]

#: The stages of a run, in order: screening a multi-start's design, the local runs,
#: the final values at their ends, done.
STAGES = ("screen", "local", "final", "done")
#: Why a local run stopped (None while it runs).
RUN_STATUSES = ("steps", "converged", "target", "gtol", "callback", "max_nfev", "max_time",
                "degenerate", "halved", "failed", "sigterm")


@dataclass(frozen=True)
class StepperState:
    """A stepper's state: numpy arrays and JSON-able data (no objects, no pickles).

    Attributes
    ----------
    arrays : dict of str -> ndarray
        Stored bit for bit in the checkpoint's npz (``allow_pickle=False``).
    data : dict
        JSON-able scalars, lists and dicts (floats survive as ``repr``).
    """

    arrays: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)


def _summed(a: dict, b: dict) -> dict:
    out = dict(a)
    for kind, n in b.items():
        out[kind] = out.get(kind, 0) + int(n)
    return out


@dataclass
class Totals:
    """Counts since the run began (resumed runs included): solves, seconds, failures
    for good by kind, solves answered from the journal, and solves lost through no
    fault of their own (a worker that died or left, a lost scheduler) and run again, by
    kind."""

    nfev: int = 0
    solver_time: float = 0.0
    wall_time: float = 0.0
    failures: dict = field(default_factory=dict)
    nfev_replayed: int = 0
    lost: dict = field(default_factory=dict)

    def add(self, nfev=0, solver_time=0.0, failures=(), replayed=0, lost=None) -> "Totals":
        counts = dict(self.failures)
        for f in failures:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        return Totals(self.nfev + int(nfev), self.solver_time + float(solver_time),
                      self.wall_time, counts, self.nfev_replayed + int(replayed),
                      _summed(self.lost, lost or {}))

    def add_reply(self, reply) -> "Totals":
        """These totals plus a :class:`~fg2u_zo.evaluation.requests.Reply`'s solves."""
        return self.add(reply.nfev, reply.solver_time, reply.failures, reply.nfev_replayed,
                        reply.lost_counts)

    def merged(self, other: "Totals") -> "Totals":
        return Totals(self.nfev + other.nfev, self.solver_time + other.solver_time,
                      self.wall_time, _summed(self.failures, other.failures),
                      self.nfev_replayed + other.nfev_replayed,
                      _summed(self.lost, other.lost))

    def to_dict(self) -> dict:
        return {"nfev": self.nfev, "solver_time": self.solver_time,
                "wall_time": self.wall_time, "failures": dict(self.failures),
                "nfev_replayed": self.nfev_replayed, "lost": dict(self.lost)}


@dataclass
class RunState:
    """The committed state of a local run between two steps.

    ``window`` holds ``(phi, snr, trial)`` of the current phase's last steps (as many
    as its ``until`` rule reads); ``lr_factor`` scales the phase's learning rate
    (``carry_lr``); ``status`` is None while the run goes on, else why it stopped
    (one of :data:`RUN_STATUSES`); ``value`` is the value of the last step;
    ``parked`` the rung of a multi-start the run waits at, ``stopped_at`` the rung at
    which successive halving stopped it; ``final_value`` is F at the run's end on the
    run's problem, once solved; ``error`` the message of the error that ended it;
    ``phase_log`` holds ``(steps, value)`` of each phase it finished; ``converged``
    the stepper's verdict that the current phase has converged (why), if it gave one.
    """

    z: np.ndarray
    stepper_state: StepperState
    rng: np.random.Generator
    step: int = 0
    phase: int = 0
    step_in_phase: int = 0
    noise: object = None
    noise_age: int = 0
    totals: Totals = field(default_factory=Totals)
    window: list = field(default_factory=list)
    lr_factor: float = 1.0
    status: str | None = None
    message: str = ""
    value: float = math.nan
    parked: int | None = None
    stopped_at: int | None = None
    final_value: float | None = None
    error: str | None = None
    phase_log: list = field(default_factory=list)
    converged: str | None = None


@dataclass
class SearchState:
    """The whole run: its stage, its local runs and what the stages found.

    ``design`` / ``design_values``: a multi-start's screened points and F there
    (empty for a plain run); ``starts``: the local runs' starting points; ``groups``:
    solves of each parallel group so far; ``totals``: the solves of the stages
    themselves (screening, final values), the runs' are in each run's totals;
    ``wall_time``: seconds of wall time before this process took over; ``rng``: the
    run's generator while a multi-start's screening still has to spawn the local runs'
    generators from it (None afterwards).
    """

    stage: str
    runs: list
    design: np.ndarray
    design_values: np.ndarray
    starts: np.ndarray
    groups: list = field(default_factory=list)
    totals: Totals = field(default_factory=Totals)
    wall_time: float = 0.0
    rng: np.random.Generator | None = None


# -- encoding ----------------------------------------------------------------------------
def _encode_run(i, run: RunState, arrays: dict) -> dict:
    p = f"runs/{i}/"
    arrays[p + "z"] = np.asarray(run.z, dtype=np.float64)
    for name, value in run.stepper_state.arrays.items():
        arrays[p + "stepper/" + name] = np.asarray(value)
    if run.window:
        n = np.size(run.z)
        # A step record holds no phi above PHI_MAX_SIZE parameters: a row of NaN.
        arrays[p + "window/phi"] = np.asarray(
            [np.full(n, np.nan) if w[0] is None else w[0] for w in run.window],
            dtype=np.float64)
    return {
        "rng": generator_state(run.rng), "step": int(run.step), "phase": int(run.phase),
        "step_in_phase": int(run.step_in_phase),
        "noise": encode_noise(run.noise, run.noise_age),
        "totals": to_json(run.totals.to_dict()),
        "stepper": to_json(run.stepper_state.data, tuples=True, where="stepper"),
        "window": [[float_json(w[1]), float_json(w[2])] for w in run.window],
        "lr_factor": float_json(run.lr_factor), "status": run.status,
        "message": run.message, "value": float_json(run.value), "parked": run.parked,
        "stopped_at": run.stopped_at,
        "final_value": None if run.final_value is None else float_json(run.final_value),
        "error": run.error,
        "phase_log": [[int(n), float_json(v)] for n, v in run.phase_log],
        "converged": run.converged,
    }


def float_json(x):
    """A float as the codec writes it (non-finite ones tagged)."""
    return to_json(float(x))


def encode_search(state: SearchState) -> tuple:
    """``(json, arrays)`` of a :class:`SearchState`."""
    arrays = {"design": np.asarray(state.design, dtype=np.float64),
              "design_values": np.asarray(state.design_values, dtype=np.float64),
              "starts": np.asarray(state.starts, dtype=np.float64)}
    runs = [_encode_run(i, run, arrays) for i, run in enumerate(state.runs)]
    data = {"stage": state.stage, "runs": runs, "groups": [int(g) for g in state.groups],
            "totals": to_json(state.totals.to_dict()), "wall_time": float(state.wall_time),
            "rng": None if state.rng is None else generator_state(state.rng)}
    return data, arrays


# -- decoding ----------------------------------------------------------------------------
def _totals(t: FieldReader) -> Totals:
    counts = {}
    for name in ("failures", "lost"):
        table = t.obj(name, optional=True) or {}
        for kind, count in table.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise t.error(f"{name}.{kind}", f"must be a count >= 0, got {count!r:.80}")
        counts[name] = dict(table)
    return Totals(nfev=t.integer("nfev", minimum=0),
                  solver_time=t.number("solver_time", minimum=0.0),
                  wall_time=t.number("wall_time", minimum=0.0),
                  failures=counts["failures"],
                  nfev_replayed=t.integer("nfev_replayed", minimum=0, default=0),
                  lost=counts["lost"])


def _optional_int(r: FieldReader, key, minimum=0):
    if r.data.get(key) is None:
        return None
    return r.integer(key, minimum=minimum)


def _decode_run(i, data, arrays, num_params) -> RunState:
    r = FieldReader(data, f"runs[{i}]")
    p = f"runs/{i}/"
    z = arrays.get(p + "z")
    if z is None or z.shape != (num_params,) or z.dtype != np.float64 or not np.all(
            np.isfinite(z)):
        raise r.error("z", f"must be a finite float64 array of {num_params} entries")
    step = r.integer("step", minimum=0)
    phase = r.integer("phase", minimum=0)
    step_in_phase = r.integer("step_in_phase", minimum=0)
    if step_in_phase > step or phase > step:
        raise r.error("step_in_phase", f"and phase must be <= step ({step})")
    noise, age = decode_noise(data.get("noise"))
    if noise is not None and noise.num_params != num_params:
        raise r.error("noise.data.num_params", f"must be num_params ({num_params})")
    window_data = data.get("window", [])
    phis = arrays.get(p + "window/phi")
    if not isinstance(window_data, list) or (window_data and (
            phis is None or phis.shape != (len(window_data), num_params))):
        raise r.error("window", "does not fit its array of phis")
    window = []
    for k, entry in enumerate(window_data):
        w = FieldReader({"snr": entry[0], "trial": entry[1]} if isinstance(entry, list)
                        and len(entry) == 2 else {}, f"runs[{i}].window[{k}]")
        phi = None if np.all(np.isnan(phis[k])) else phis[k].copy()
        window.append((phi, w.number("snr", finite=False), w.number("trial", minimum=0.0)))
    status = data.get("status")
    if status is not None and status not in RUN_STATUSES:
        raise r.error("status", f"must be null or one of {', '.join(RUN_STATUSES)}, got "
                                f"{status!r:.80}")
    try:
        stepper_data = from_json(r.obj("stepper"))
    except (TypeError, ValueError) as exc:
        raise r.error("stepper", f"is malformed: {exc}") from None
    stepper_arrays = {k[len(p + "stepper/"):]: v for k, v in arrays.items()
                      if k.startswith(p + "stepper/")}
    final = data.get("final_value")
    error = data.get("error")
    if error is not None and not isinstance(error, str):
        raise r.error("error", "must be null or a string")
    log = data.get("phase_log", [])
    if not isinstance(log, list) or not all(
            isinstance(e, list) and len(e) == 2 and isinstance(e[0], int) for e in log):
        raise r.error("phase_log", "must be a list of [steps, value]")
    phase_log = [(e[0], FieldReader({"v": e[1]}, f"runs[{i}].phase_log").number(
        "v", finite=False)) for e in log]
    return RunState(
        z=z.copy(), stepper_state=StepperState(arrays=stepper_arrays, data=stepper_data),
        rng=generator_from_state(r.obj("rng")), step=step, phase=phase,
        step_in_phase=step_in_phase, noise=noise, noise_age=age,
        totals=_totals(FieldReader(r.obj("totals"), f"runs[{i}].totals")), window=window,
        lr_factor=r.number("lr_factor", minimum=0.0), status=status,
        message=r.string("message"), value=r.number("value", finite=False),
        parked=_optional_int(r, "parked"), stopped_at=_optional_int(r, "stopped_at"),
        final_value=None if final is None else r.number("final_value", finite=False),
        error=error, phase_log=phase_log,
        converged=r.string("converged", optional=True))


def decode_search(data, arrays, num_params) -> SearchState:
    """Inverse of :func:`encode_search`; every field checked."""
    s = FieldReader(data, "search")
    stage = s.string("stage", choices=STAGES)
    runs_data = data.get("runs")
    if not isinstance(runs_data, list):
        raise s.error("runs", "must be a list")
    runs = [_decode_run(i, run, arrays, num_params) for i, run in enumerate(runs_data)]
    groups = data.get("groups", [])
    if not isinstance(groups, list) or not all(
            isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in groups):
        raise s.error("groups", "must be a list of counts")
    out = {}
    for name in ("design", "design_values", "starts"):
        arr = arrays.get(name)
        if arr is None or arr.dtype != np.float64:
            raise CheckpointError(f"checkpoint array `{name}` is missing or not float64")
        out[name] = arr.copy()
    if out["design"].size and (out["design"].ndim != 2
                               or out["design"].shape[1] != num_params
                               or out["design_values"].shape != (out["design"].shape[0],)):
        raise CheckpointError("checkpoint arrays `design` / `design_values` do not fit")
    if out["starts"].size and (out["starts"].ndim != 2
                               or out["starts"].shape != (len(runs), num_params)):
        raise CheckpointError("checkpoint array `starts` must hold one start per run")
    return SearchState(stage=stage, runs=runs, design=out["design"],
                       design_values=out["design_values"], starts=out["starts"],
                       groups=list(groups),
                       totals=_totals(FieldReader(s.obj("totals"), "search.totals")),
                       wall_time=s.number("wall_time", minimum=0.0),
                       rng=None if data.get("rng") is None
                       else generator_from_state(s.obj("rng")))
