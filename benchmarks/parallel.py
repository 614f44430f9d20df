"""Overhead and speed-up of the Evaluator's backends on a solver of known cost.

Solver: sleeps ``t`` (1 ms, 10 ms, 100 ms) then does a little numpy work (an
8 x 200 ``tanh`` of an outer product), N = 8 meta-parameters, M = 200 outputs. One
estimate is FG2U-ZO with b = 16 central differences: 1 base solve + 32 perturbed
solves = 33 evaluations. A fixed step is used, so no noise probe adds solves.

Measured, per t (median over repetitions):

* ``sequential``: the Evaluator in the calling process; ``overhead`` = wall time of the
  Evaluator's own work (``solve`` of the base point + ``map`` of the 32 points) /
  (33 t): what batching, checking and counting cost on top of the solver itself;
* ``loky``, ``threading``, ``dask``: 2 workers each (a dask ``LocalCluster`` with 2
  single-threaded worker processes on 127.0.0.1), speed-up = sequential wall / 2-worker
  wall of the whole estimate. Workers and clusters are started, and warmed with one
  untimed estimate, before timing; their start-up time is reported apart.

    python -m benchmarks.parallel [--quick]

``--quick`` takes fewer repetitions (under a minute). The last line is JSON with
``overhead_10ms`` (target <= 1.05), ``speedup_loky_100ms`` and ``speedup_dask_100ms``
(targets >= 1.8), ``speedup_loky_1ms`` (target >= 1.0), the start-up times, and the
machine's load average (speed-ups on a machine shared with other jobs are lower).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

import fg2u_zo as fz

SLEEPS = (0.001, 0.010, 0.100)
NUM_PARAMS, NUM_OUTPUTS, NUM_DIRECTIONS = 8, 200, 16
EVALS = 2 * NUM_DIRECTIONS + 1
TARGETS = {"overhead_10ms": ("<=", 1.05), "speedup_loky_100ms": (">=", 1.8),
           "speedup_dask_100ms": (">=", 1.8), "speedup_loky_1ms": (">=", 1.0)}


class Sleeper:
    """The inner solver: ``time.sleep(seconds)`` plus a little numpy work."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.x = np.linspace(0.0, 1.0, NUM_OUTPUTS)

    def __call__(self, phi, *, warm_start=None, seed=None):
        time.sleep(self.seconds)
        return np.tanh(np.outer(phi, self.x)).sum(axis=0)


def outer(theta, phi):
    return 0.5 * (theta ** 2).sum() + 0.01 * (phi ** 2).sum()


PHI = np.linspace(-0.5, 0.5, NUM_PARAMS)
ESTIMATOR = fz.FG2UZO(num_directions=NUM_DIRECTIONS, scheme="central", step=1e-3)


def _estimate(ev, t, rng):
    problem = fz.BilevelProblem(inner=Sleeper(t), outer=outer)
    start = time.perf_counter()
    g = ESTIMATOR.estimate(problem, PHI, rng=rng, evaluator=ev)
    return time.perf_counter() - start, g


def _evaluator_wall(ev, t, rng):
    """Wall time of the Evaluator alone on the estimate's 33 points."""
    solver = Sleeper(t)
    gen = np.random.default_rng(rng)
    V = gen.standard_normal((NUM_DIRECTIONS, NUM_PARAMS))
    points = [PHI + s * 1e-3 * v for v in V for s in (1.0, -1.0)]
    sink = []
    start = time.perf_counter()
    theta0, _ = ev.solve(solver, PHI, seed=1)
    ev.map(solver, points, lambda k, theta: sink.append(float(theta[0])), seed=1,
           warm_start=theta0, expected_shape=theta0.shape)
    return time.perf_counter() - start


def _raw_wall(t, reps):
    """The solver alone, 33 times in a plain loop: what sleeping t really costs here."""
    solver = Sleeper(t)
    walls = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(EVALS):
            solver(PHI)
        walls.append(time.perf_counter() - start)
    return statistics.median(walls)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (< 1 min)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    reps = {0.001: 8, 0.010: 3, 0.100: 1} if args.quick else {0.001: 30, 0.010: 10, 0.100: 3}
    load_before = os.getloadavg()
    started = time.perf_counter()

    evaluators = {"sequential": fz.Evaluator("sequential")}
    startup = {}
    for name in ("loky", "threading", "dask"):
        t0 = time.perf_counter()
        ev = fz.Evaluator(name, n_jobs=2).start()
        _estimate(ev, 0.001, 0)  # warm: workers import the solver's modules once
        startup[name] = {"start_s": ev.startup_time, "first_estimate_s":
                         time.perf_counter() - t0 - ev.startup_time}
        evaluators[name] = ev

    rows, walls, identical = [], {}, True
    for t in SLEEPS:
        ref = None
        for name, ev in evaluators.items():
            times = []
            for r in range(reps[t]):
                wall, g = _estimate(ev, t, rng=r)
                times.append(wall)
                if r == 0:
                    ref = g.grad if ref is None else ref
                    identical &= bool(np.array_equal(g.grad, ref)) and g.nfev == EVALS
            walls[name, t] = statistics.median(times)
        ev_wall = statistics.median(_evaluator_wall(evaluators["sequential"], t, r)
                                    for r in range(reps[t]))
        raw = _raw_wall(t, reps[t])
        seq = walls["sequential", t]
        rows.append((t, ev_wall / (EVALS * t), raw / (EVALS * t), seq / (EVALS * t),
                     *(seq / walls[name, t] for name in ("loky", "threading", "dask"))))
    for ev in evaluators.values():
        ev.close()
    load_after = os.getloadavg()

    print(f"FG2U-ZO, b = {NUM_DIRECTIONS} central ({EVALS} evaluations per estimate), "
          f"2 workers; cpus = {os.cpu_count()}, load average before {load_before[0]:.2f}, "
          f"after {load_after[0]:.2f}")
    print(f"{'t':>7} {'overhead':>9} {'raw loop':>9} {'estimate':>9} {'loky x':>7} "
          f"{'thread x':>8} {'dask x':>7}")
    for t, over, raw, est_over, loky, thr, dsk in rows:
        print(f"{1000 * t:5.0f}ms {over:9.3f} {raw:9.3f} {est_over:9.3f} {loky:7.2f} "
              f"{thr:8.2f} {dsk:7.2f}")
    print("overhead = Evaluator sequential wall / (33 t); raw loop = the solver called 33 "
          "times in a bare loop / (33 t) (the sleep's own overshoot on this machine);\n"
          "estimate = a whole sequential estimate / (33 t) (outer loss in torch included); "
          "x = sequential / 2-worker wall of the estimate")
    for name, s in startup.items():
        print(f"start-up {name:9s}: {s['start_s']:.2f} s to start, "
              f"{s['first_estimate_s']:.2f} s for the first (untimed) estimate")
    by_t = {t: row for t, *row in rows}
    result = {
        "overhead_10ms": round(by_t[0.010][0], 4),
        "speedup_loky_100ms": round(by_t[0.100][3], 3),
        "speedup_dask_100ms": round(by_t[0.100][5], 3),
        "speedup_loky_1ms": round(by_t[0.001][3], 3),
        "raw_loop_10ms": round(by_t[0.010][1], 4),
        "speedup_threading_100ms": round(by_t[0.100][4], 3),
        "startup_loky_s": round(startup["loky"]["start_s"], 2),
        "startup_dask_s": round(startup["dask"]["start_s"], 2),
        "identical_across_backends": identical,
        "loadavg_1min": [round(load_before[0], 2), round(load_after[0], 2)],
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "seconds": round(time.perf_counter() - started, 1),
    }
    failed = [k for k, (op, v) in TARGETS.items()
              if not (result[k] <= v if op == "<=" else result[k] >= v)]
    result["targets_missed"] = failed
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
