"""FG2U-ZO side by side with the optimizers users would pick instead.

The question: why not CMA-ES, Optuna, nevergrad, DFO-LS, L-BFGS-B with finite differences
or SPSA? Every method gets the same objective ``F(phi)`` (one inner solve per call), the
same box, start and budget of solver calls, on four problem families (see
:mod:`benchmarks._peer_problems`): field calibration through a 2-D diffusion solver
(N = 16, 64, 256 patch conductivities), the same with 5 % outlier sensors and a Cauchy
misfit (``robust``, N = 64: not a sum of squares; DFO-LS gets residuals whose squares
sum to it), per-sample weights of a ridge fit (N = 10, 100, 1000), and Burgers' two
coefficients from the shipped data (N = 2).

Ours: the Gauss–Newton trust-region stepper on FG2U-ZO's forward differences
(``optimizer="gauss-newton"``): "GN (defaults)", the library with nothing tuned
(``fz.minimize(problem, phi0)``, ``n_jobs = 64`` its only argument), and "GN lean" and
"GN refresh", tuned per case
(below); and the first-order FG2UZO variants of the paper (Adam/Rprop on
random-direction estimates).

Measured per problem and method, over several seeds (medians):

- the best loss so far against solver calls (``results/peers_full_<case>.png``);
- solver calls to the target ``F <= F* + tau (F0 - F*)``, ``F*`` a reference optimum
  computed with exact gradients (adjoint / implicit function; Burgers: F at the known
  coefficients), ``tau`` = 1e-2 (diffusion, robust, reweight) or 1e-4 (Burgers: about
  1 % error in the coefficients);
- parallel rounds to the target with W = 1, 8, 64 workers. A round is up to W concurrent
  solver calls. Every call is logged in the group of calls that can run concurrently,
  and a group of ``g`` calls costs ``ceil(g / W)`` rounds:

  =====================  =========================================================
  GN (defaults)          the run's own groups (``OptimizeResult.groups``), as the
                         library sizes them from its 64 workers
  GN lean / refresh      one group per iteration: the trial point(s) and the b new
                         (or re-measured) directions around the trial
  FG2UZO                 one group per step: the ``b + 1`` solves of a forward-
                         difference estimate (base point and b directions)
  CMA-ES                 one generation (``lambda = 4 + 3 ln N``, or 64)
  nevergrad              ``num_workers = 8`` asks, told together
  Optuna TPE             batches of 8 asked together (constant liar)
  SPSA                   the 2 evaluations of an iteration
  L-BFGS-B (FD)          one evaluation: value and N forward differences (N + 1);
                         evaluations, line-search trials included, are sequential
  DFO-LS                 the N + 1 initial points (x0 and x0 + rhobeg e_i) together,
                         then one call per iteration
  DFBGN                  x0 and its first direction together, then one call per
                         group (its adaptive subspace grows a point at a time,
                         each after a test on the values); it runs without bounds
  =====================  =========================================================

  A result counts once its whole group has finished (for calls to the target too), so
  at W = 1 rounds equal calls.
- the wall time of each method's own work (``own s/run``: outside the solver calls; for
  the GN rows the stepper's model, subproblem and Broyden updates).

Settings: each method but "GN (defaults)" has a small grid (``GRIDS``: b, mode and
initial trust radius for GN; learning rate, directions b, schedule and optimizer for FG2UZO; sigma0 and diagonal
covariance for CMA-ES; the optimizer for nevergrad; rhobeg for DFO-LS and DFBGN; the FD step for
L-BFGS-B; sigma0 for SPSA). ``--tune`` runs every setting once on a tuning seed (1000,
not a measured seed) with the full budgets and records the best (fewest calls to the
target; rounds at W = 64 for the variants sized for 64 workers) in
``results/peers_tuning.json`` and ``.md``; the measured runs read their settings from
there (a case without an entry, such as the quick-only ``robust-16``, takes the middle
of each grid). FG2UZO and GN use a fixed forward-difference step of 1e-6 (float64
solvers: no noise probe, so no extra solves).

A run stops when its budget is spent, a decade past the target (gap 1e-3 / 1e-5), or
at a wall-clock cap per run (90 s full, 8 s quick; DFO-LS 10 times that, so that its
calls rather than its own linear algebra decide).

    python -m benchmarks.peers [--quick] [--seeds 3] [--only CASE ...] [--methods M ...]
    python -m benchmarks.peers --tune [--only CASE ...] [--methods M ...]

Writes ``results/peers_full.md`` (or ``peers_quick.md``) and the plots, prints the
table, then one JSON line. Ratios are best peer / best of ours (the best of our rows on
each figure), each the worst case over the problems with N >= 16:
``rounds_ratio_W64`` (target >= 1.3), ``calls_ratio`` (>= 0.95), ``calls_ratio_general``
(>= 1.5: against the peers that do not need a least-squares objective, i.e. all but
DFO-LS and DFBGN), ``defaults_rounds_ratio_W64`` and ``defaults_calls_ratio`` (the
first two with "GN (defaults)" alone as ours: >= 1.3 and >= 0.95), and on the problems whose loss is not a sum of squares ``nonls_calls_ratio``
(>= 3) and ``nonls_rounds_ratio_W64`` (>= 5), against every peer; ``met`` says which
targets hold, ``own_linear_algebra_s`` gives the GN rows' and DFO-LS's own seconds per
run, ``problems`` the per-problem details. A peer that missed the target counts with its
whole budget, and the ratio is then a lower bound (``lower_bound: true``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import platform
import signal
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from benchmarks._peer_problems import FAMILIES, LEAST_SQUARES_FAMILIES, build_case

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
WORKERS = (1, 8, 64)
FD_STEP = 1e-6
LARGE_N = 16           # the JSON ratios are taken over problems with N >= LARGE_N
#: Targets of the JSON line's ratios (best peer / ours; see ``main``).
TARGETS = {"rounds_ratio_W64": 1.3, "calls_ratio": 0.95, "calls_ratio_general": 1.5,
           "nonls_calls_ratio": 3.0, "nonls_rounds_ratio_W64": 5.0,
           # the same two as the first, for the library with nothing tuned
           "defaults_rounds_ratio_W64": 1.3, "defaults_calls_ratio": 0.95}
#: The row of the library's defaults (the ``defaults_*`` ratios are about it alone).
DEFAULTS_ROW = "GN (defaults)"


# -- the record of one run -------------------------------------------------------------------
@dataclass
class Trace:
    """Every solver call of one run, as consecutive groups of concurrent calls.

    ``groups[k]`` calls ran together; ``group_best[k]`` is the lowest F observed in that
    group (NaN when the group observed none, e.g. FG2UZO's final solve is a group too).
    """

    method: str
    setting: str
    seed: int
    groups: np.ndarray
    group_best: np.ndarray
    wall_time: float
    status: str = "budget"
    #: Seconds of the method's own work: wall time outside the solver calls.
    own_time: float = math.nan

    @property
    def nfev(self) -> int:
        return int(self.groups.sum())

    def best_so_far(self):
        """Cumulative calls at the end of each group, and the best F so far there."""
        best = np.fmin.accumulate(np.where(np.isnan(self.group_best), np.inf,
                                           self.group_best))
        return np.cumsum(self.groups), best

    def first_group_at(self, level):
        """Index of the first group after which the best F is <= level, or None."""
        _, best = self.best_so_far()
        hit = np.flatnonzero(best <= level)
        return int(hit[0]) if hit.size else None

    def calls_to(self, level):
        k = self.first_group_at(level)
        return math.inf if k is None else int(np.cumsum(self.groups)[k])

    def rounds_to(self, level, workers):
        k = self.first_group_at(level)
        return math.inf if k is None else rounds(self.groups[:k + 1], workers)

    def final_best(self):
        return float(self.best_so_far()[1][-1]) if self.groups.size else math.inf


def rounds(groups, workers):
    """Parallel rounds for these groups with ``workers`` concurrent solver calls:
    ``sum(ceil(g / workers))``."""
    groups = np.asarray(groups, dtype=np.int64)
    return int(np.sum(-(-groups // int(workers))))


class _Stop(BaseException):
    """The wall-clock cap: a BaseException, so that no library's ``except Exception``
    swallows it."""


class CallLog:
    """The objective as each peer sees it, counting and grouping every solver call.

    ``f(x)`` is one sequential call, ``batch(xs)`` one group of concurrent calls,
    ``residuals(x)`` one sequential call returning least-squares residuals (DFO-LS).
    After each group, once the best value is <= ``stop_at``, the next call raises the
    peers' ``BudgetExhausted`` (the run has shown what it can do: a decade past the
    target). A solver failure gives ``+inf`` (residuals: ``inf``), counted as a call.
    """

    def __init__(self, case, budget, stop_at=-math.inf):
        from examples._peers import BudgetExhausted

        self.case, self.budget, self.stop_at = case, int(budget), float(stop_at)
        self.groups, self.group_best = [], []
        self.nfev, self.best = 0, math.inf   # running totals, not recomputed per call
        self.solve_time = 0.0                 # seconds inside the objective's solves
        self._exhausted = BudgetExhausted
        self._num_residuals = None

    def _check(self, count):
        if self.best <= self.stop_at or self.nfev + count > self.budget:
            raise self._exhausted

    def _value(self, x):
        start = time.perf_counter()
        try:
            v = self.case.value(x)
        except Exception:  # a failed solve: the peer sees the worst value
            return math.inf
        finally:
            self.solve_time += time.perf_counter() - start
        return v if math.isfinite(v) else math.inf

    def _log(self, values):
        self.groups.append(len(values))
        self.nfev += len(values)
        finite = [v for v in values if math.isfinite(v)]
        self.group_best.append(min(finite) if finite else math.nan)
        self.best = min([self.best] + finite)

    def f(self, x):
        self._check(1)
        v = self._value(x)
        self._log([v])
        return v

    def batch(self, xs):
        self._check(len(xs))
        values = [self._value(x) for x in xs]
        self._log(values)
        return values

    def residuals(self, x):
        self._check(1)
        start = time.perf_counter()
        try:
            r = self.case.residual_vector(x)
            self._num_residuals = r.size
        except Exception:
            r = np.full(self._num_residuals or 1, np.inf)
        finally:
            self.solve_time += time.perf_counter() - start
        v = float(r @ r) if np.all(np.isfinite(r)) else math.inf
        self._log([v])
        return r

    def trace(self, method, setting, seed, wall_time, status, merge_first=0):
        groups, best = list(self.groups), list(self.group_best)
        if merge_first > 1 and len(groups) >= merge_first and all(
                g == 1 for g in groups[:merge_first]):
            # DFO-LS's initial points do not depend on each other's values.
            head = [v for v in best[:merge_first] if not math.isnan(v)]
            groups = [merge_first] + groups[merge_first:]
            best = [min(head) if head else math.nan] + best[merge_first:]
        return Trace(method, setting, seed, np.asarray(groups, dtype=np.int64),
                     np.asarray(best, dtype=np.float64), wall_time, status,
                     own_time=wall_time - self.solve_time)


@contextlib.contextmanager
def wall_clock_cap(seconds):
    """Raise :class:`_Stop` in the main thread after ``seconds`` (no cap if None)."""
    if not seconds or not hasattr(signal, "setitimer"):
        yield
        return

    def handler(signum, frame):
        raise _Stop("wall-clock cap")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, float(seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGALRM, previous)


# -- methods ---------------------------------------------------------------------------------
def _describe(setting):
    return ", ".join(f"{k}={v}" for k, v in setting.items()) or "defaults"


def run_fg2uzo(case, setting, seed, budget, stop_at):
    """FG2UZO driven by ``fz.minimize``; ``setting`` holds ``num_directions``, ``lr``,
    and optionally ``optimizer`` (default Adam), ``scheme``, ``directions``,
    ``schedule``, and ``phase1`` = ``(steps, num_directions)`` for the two-phase variant
    (few directions first)."""
    import fg2u_zo as fz

    scheme = setting.get("scheme", "forward")
    directions = setting.get("directions", "sphere")

    def estimator(b):
        return fz.FG2UZO(num_directions=b, scheme=scheme, step=FD_STEP, directions=directions)

    def per_step(b):
        return (2 * b + 1) if scheme == "central" else (b + 1)

    b = int(setting["num_directions"])
    phase1 = setting.get("phase1")
    # Never start a step that could overrun the budget (the final value solve included).
    max_nfev = budget - per_step(b)
    # The learning-rate schedule spans the steps the budget allows.
    steps = max(1, (budget - 1) // per_step(b))
    phases = None
    if phase1 is not None:
        s1, b1 = int(phase1[0]), int(phase1[1])
        steps = max(1, (budget - 1 - s1 * per_step(b1)) // per_step(b))
        phases = [fz.Phase(steps=s1, estimator=estimator(b1), name="few directions"),
                  fz.Phase(steps=steps, estimator=estimator(b), name="more directions")]
    log = []

    def callback(record):
        log.append((record.nfev, record.value))
        return record.value <= stop_at

    start = time.perf_counter()
    try:
        res = fz.minimize(case.problem, case.phi0, None if phases else estimator(b),
                          optimizer=setting.get("optimizer", "adam"),
                          lr=float(setting["lr"]), steps=steps,
                          schedule=setting.get("schedule", "constant"), bounds=case.bounds,
                          phases=phases, callback=callback, max_nfev=max_nfev, rng=seed,
                          backend="sequential", progress=False)
    except _Stop:
        groups, best, status = [n for n, _ in log], [v for _, v in log], "wall-clock cap"
        own = math.nan
    else:
        # The final F(phi) is one more solve, a group of its own.
        groups = [n for n, _ in log] + [res.nfev - sum(n for n, _ in log)]
        best, status = [v for _, v in log] + [res.value], res.status
        own = res.wall_time - res.solver_time
    wall = time.perf_counter() - start
    return Trace("", _describe(setting), seed, np.asarray(groups, dtype=np.int64),
                 np.asarray(best, dtype=np.float64), wall, status, own_time=own)


def run_gauss_newton(case, setting, seed, budget, stop_at):
    """The subspace Gauss–Newton stepper on FG2U-ZO's forward differences, driven by
    ``fz.minimize``; ``setting`` holds ``num_directions`` (b), ``mode`` ("lean" or
    "refresh") and ``radius`` (the initial trust radius). One group per iteration: the
    trial point and the new (or re-measured) directions around it. ``own_time`` is the
    stepper's own linear algebra (model, subproblem, Broyden: the history's
    ``model_time``)."""
    import fg2u_zo as fz

    b = min(int(setting["num_directions"]), case.size)
    options = {"num_directions": b, "mode": setting.get("mode", "lean"),
               "radius": float(setting.get("radius", 0.5)),
               "radius_factors": tuple(setting.get("radius_factors", (1.0,)))}
    # Never start an iteration that could overrun the budget (final solve included).
    return _gauss_newton_trace(
        case, _describe(setting), seed, stop_at,
        estimator=fz.FG2UZO(step=FD_STEP, scheme="forward"), optimizer="gauss-newton",
        optimizer_options=options, steps=budget, max_nfev=budget - (b + 1) - 1,
        backend="sequential")


def _gauss_newton_trace(case, setting_text, seed, stop_at, **options):
    """Run ``fz.minimize(case.problem, case.phi0, **options)`` (a Gauss–Newton run) on
    the case and log its parallel groups as the run made them (``OptimizeResult.groups``:
    one per request of a step, and the final value solve), each step's value on the
    last group of that step. ``own_time``: the stepper's own linear algebra (the
    history's ``model_time``)."""
    import fg2u_zo as fz

    log, own = [], [0.0]

    def callback(record):
        log.append((record.nfev, record.value))
        own[0] += float((record.info or {}).get("model_time", 0.0))
        return record.value <= stop_at

    start = time.perf_counter()
    try:
        res = fz.minimize(case.problem, case.phi0, bounds=case.bounds, callback=callback,
                          rng=seed, progress=False, **options)
    except _Stop:
        groups, best, status = [n for n, _ in log], [v for _, v in log], "wall-clock cap"
    else:
        groups, best = _step_groups(res.groups, log)
        groups, best = groups + [res.nfev - sum(groups)], best + [res.value]
        status = res.status
    wall = time.perf_counter() - start
    return Trace("", setting_text, seed, np.asarray(groups, dtype=np.int64),
                 np.asarray(best, dtype=np.float64), wall, status, own_time=own[0])


def _step_groups(run_groups, steps):
    """The run's groups matched to its steps ``[(nfev, value), ...]``: each step's
    solves are the next groups that add up to its nfev; the step's value goes to the
    last of them (NaN to the others: nothing is known before the step ends). A step
    with no solve (a stop decided from the model alone) adds no group."""
    groups, best, k = [], [], 0
    for nfev, value in steps:
        spent = 0
        while spent < nfev and k < len(run_groups):
            spent += int(run_groups[k])
            groups.append(int(run_groups[k]))
            best.append(math.nan)
            k += 1
        if best and spent:
            best[-1] = value
    return groups, best


#: Workers the "GN (defaults)" row is given (``n_jobs``; its only setting): the W of
#: the rounds the JSON ratios are about.
DEFAULTS_WORKERS = 64


def run_gauss_newton_defaults(case, setting, seed, budget, stop_at):
    """``fz.minimize(problem, phi0)`` as a new user calls it, with nothing tuned: no
    estimator, no optimizer (the library's defaults: Gauss–Newton on forward
    differences, which stops by itself), ``n_jobs=DEFAULTS_WORKERS`` threads (the width
    its groups are sized for). ``max_nfev`` is the budget less one group, so that the
    run never overruns it; the groups are the run's own."""
    if setting:
        raise ValueError(f"GN (defaults) takes no settings, got {setting!r}")
    return _gauss_newton_trace(case, "defaults", seed, stop_at,
                               max_nfev=budget - DEFAULTS_WORKERS - 1,
                               backend="threading", n_jobs=DEFAULTS_WORKERS)


def _peer_runner(name):
    from examples import _peers

    return getattr(_peers, name)


def run_peer(runner, case, setting, seed, budget, stop_at, *, least_squares=False,
             merge_init=False, init_points=0, bounded=True):
    """One peer run through :class:`CallLog`; ``setting`` holds ``sigma0`` (default:
    the case's) and the runner's own options. ``merge_init``: the first N + 1 calls are
    one group; else the first ``init_points`` (when > 1). ``bounded=False``: the peer
    runs without the case's box (it takes none)."""
    opts = dict(setting)
    sigma0 = float(opts.pop("sigma0", case.sigma0))
    log = CallLog(case, budget, stop_at)
    fn = log.residuals if least_squares else log.f
    batch = None if least_squares else log.batch
    status = "budget"
    start = time.perf_counter()
    try:
        _peer_runner(runner)(fn, case.phi0, sigma0, budget, seed,
                             bounds=case.bounds if bounded else None, batch=batch, **opts)
    except _Stop:
        status = "wall-clock cap"
    except Exception as exc:  # a peer crashing is a result too; keep what it did
        status = f"error: {type(exc).__name__}: {exc}"[:200]
    wall = time.perf_counter() - start
    if status == "budget" and log.best <= stop_at:
        status = "stopped past target"
    return log.trace("", _describe(setting), seed, wall, status,
                     merge_first=case.size + 1 if merge_init else init_points)


@dataclass(frozen=True)
class Method:
    """A method of the comparison: its label, how to run it, its parallel structure."""

    name: str
    kind: str                     # "fg2uzo", "gauss-newton" or an examples._peers runner
    deterministic: bool = False   # one run stands for every seed
    least_squares: bool = False
    merge_init: bool = False
    init_points: int = 0          # the first calls that run together (without merge_init)
    bounded: bool = True          # False: the peer takes no bounds and runs without them
    peer: bool = True
    structure: str = ""
    tune_metric: str = "calls"    # what --tune minimizes: "calls" or "rounds_W64"
    cap_scale: float = 1.0        # multiplies the wall-clock cap per run

    def run(self, case, setting, seed, budget, stop_at, cap=None):
        with wall_clock_cap(None if cap is None else cap * self.cap_scale):
            if self.kind == "fg2uzo":
                trace = run_fg2uzo(case, setting, seed, budget, stop_at)
            elif self.kind == "gauss-newton":
                trace = run_gauss_newton(case, setting, seed, budget, stop_at)
            elif self.kind == "gauss-newton-defaults":
                trace = run_gauss_newton_defaults(case, setting, seed, budget, stop_at)
            else:
                trace = run_peer(self.kind, case, setting, seed, budget, stop_at,
                                 least_squares=self.least_squares, merge_init=self.merge_init,
                                 init_points=self.init_points, bounded=self.bounded)
        trace.method = self.name
        return trace


METHODS = [
    # The library with nothing tuned (the rows below it are tuned per case by --tune).
    Method("GN (defaults)", "gauss-newton-defaults", peer=False,
           structure="one group per iteration, sized by the library from n_jobs = 64"),
    Method("GN lean", "gauss-newton", peer=False,
           structure="one group per iteration: the trial and b new directions around it; "
                     "once they span all N, the trial alone"),
    Method("GN refresh", "gauss-newton", peer=False, tune_metric="rounds_W64",
           structure="one group per iteration: the trial and b = min(63, N) new or "
                     "re-measured directions, one round at W = 64"),
    Method("FG2UZO", "fg2uzo", peer=False,
           structure="one group of b + 1 per step (forward differences, all concurrent)"),
    Method("FG2UZO b<=63", "fg2uzo", peer=False, tune_metric="rounds_W64",
           structure="b = min(63, N): one group of <= 64 per step, one round at W = 64"),
    Method("FG2UZO two-phase", "fg2uzo", peer=False,
           structure="few directions for the first steps, then b = min(63, N)"),
    Method("CMA-ES", "run_cma", structure="one generation (lambda = 4 + 3 ln N) per group"),
    Method("CMA-ES lambda=64", "run_cma", tune_metric="rounds_W64",
           structure="one generation of 64 per group"),
    Method("Optuna TPE", "run_optuna_tpe", structure="groups of 8 (constant liar)"),
    Method("nevergrad", "run_nevergrad", structure="groups of 8 asks"),
    # DFO-LS starts from x0 + rhobeg e_i (no random directions when npt = N + 1), so its
    # runs do not depend on the seed (checked: identical traces for seeds 0 and 1). Its
    # own linear algebra takes ~0.4 s per iteration at N = 1000 here: it gets 10 times
    # the cap, so that its calls, not its overhead, decide.
    Method("DFO-LS", "run_dfols", least_squares=True, merge_init=True, deterministic=True,
           cap_scale=10.0, structure="N + 1 initial points together, then 1 per iteration"),
    # DFBGN's default grows its subspace from one direction, one point at a time, each
    # after a test on the values so far: x0 and its first direction run together, then
    # one call per group. It takes no bounds (every case is defined on all of R^N).
    Method("DFBGN", "run_dfbgn", least_squares=True, init_points=2, bounded=False,
           cap_scale=10.0, structure="x0 and its first direction together, then 1 per "
                                     "call (adaptive subspace; no bounds)"),
    Method("L-BFGS-B (FD)", "run_lbfgsb_fd", deterministic=True,
           structure="N + 1 per evaluation (value + forward differences), sequential"),
    Method("SPSA", "run_spsa", structure="2 per iteration"),
]
METHODS_BY_NAME = {m.name: m for m in METHODS}

_LRS = {"diffusion": (0.1, 0.3, 1.0), "reweight": (0.1, 0.3, 1.0), "burgers": (0.03, 0.1, 0.3),
        "robust": (0.1, 0.3, 1.0)}
#: The GN stepper's initial trust radius (in phi, as DFO-LS's rhobeg; larger values than
#: DFO-LS's grid because the first GN step comes from a complete model when b >= N).
_RADII = (0.5, 1.0, 2.0, 4.0)
#: Trials per iteration in "refresh" mode, as multiples of the radius.
_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _gn_lean_grid(family, size):
    bs = sorted({min(b, size) for b in (7, 15, 63)})
    return [{"num_directions": b, "mode": "lean", "radius": r} for b in bs for r in _RADII]


def _gn_refresh_grid(family, size):
    return [{"num_directions": min(63, size), "mode": "refresh", "radius": r,
             "radius_factors": _FACTORS} for r in _RADII]


def _directions(size):
    # Orthogonal blocks have less variance than independent directions when b is a
    # sizeable fraction of N; for N > 64 the two hardly differ, and fz's orthogonal
    # sampler draws a full N x N Haar matrix per step (seconds at N = 1000).
    return "orthogonal" if size <= 64 else "sphere"


def _rprop(size, b, family):
    # With b = N orthogonal directions the estimate is the full finite-difference
    # gradient, which suits Rprop (the optimizer examples/pde_discovery.py uses); with
    # fewer directions its sign-based steps would follow the estimator's noise.
    if b != size:
        return []
    return [{"num_directions": b, "lr": lr, "optimizer": "Rprop",
             "directions": _directions(size)} for lr in _LRS[family][:2]]


def _fg2uzo_grid(family, size):
    bs = (1, 2) if size <= 2 else sorted({min(b, size) for b in (7, 15, 63)})
    return [{"num_directions": b, "lr": lr, "schedule": sched, "directions": _directions(size)}
            for b in bs for sched in ("constant", "linear") for lr in _LRS[family]
            ] + _rprop(size, max(bs), family)


def _one_round_grid(family, size, rprop=True):
    b = min(63, size)
    return [{"num_directions": b, "lr": lr, "schedule": sched, "directions": _directions(size)}
            for sched in ("constant", "linear") for lr in _LRS[family]
            ] + (_rprop(size, b, family) if rprop else [])


def _two_phase_grid(family, size):
    few = 1 if size <= 2 else 7
    lengths = (5, 20) if size <= 2 else (25, 100)
    return [dict(s, phase1=(k, few)) for k in lengths
            for s in _one_round_grid(family, size, rprop=False)]


#: Settings tried by ``--tune`` for each method, per family and size.
GRIDS = {
    "GN (defaults)": lambda family, size: [{}],   # nothing to tune: that is the point
    "GN lean": _gn_lean_grid,
    "GN refresh": _gn_refresh_grid,
    "FG2UZO": _fg2uzo_grid,
    "FG2UZO b<=63": _one_round_grid,
    "FG2UZO two-phase": _two_phase_grid,
    "CMA-ES": lambda family, size: (
        [{"sigma0": s} for s in (0.1, 0.3, 1.0)] if size < 256 else
        # separable CMA (pycma's recommendation in high dimension) besides the full one
        [{"sigma0": s, "CMA_diagonal": d} for d in (False, True) for s in (0.3, 1.0)]),
    "CMA-ES lambda=64": lambda family, size: [{"sigma0": s, "popsize": 64}
                                              for s in (0.3, 1.0)],
    "Optuna TPE": lambda family, size: [{}],
    "nevergrad": lambda family, size: [{"optimizer": o, "sigma0": 0.3}
                                       for o in ("CMA", "TwoPointsDE", "TBPSA")],
    "DFO-LS": lambda family, size: [{"sigma0": s} for s in (0.1, 0.5, 1.0)],
    "DFBGN": lambda family, size: [{"sigma0": s} for s in (0.1, 0.5, 1.0)],
    "L-BFGS-B (FD)": lambda family, size: [{"step": 1e-6}, {"step": 1e-8}],
    "SPSA": lambda family, size: [{"sigma0": s} for s in (0.1, 0.3, 1.0)],
}

#: What ``--tune`` tried and chose (case -> method -> {"chosen", "metric", "tried"}),
#: merged across runs; the measured runs take their settings from it, and fall back to
#: the middle of the method's grid where it has no entry.
TUNING_FILE = RESULTS / "peers_tuning.json"


def load_tuning(path=TUNING_FILE):
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def settings_for(method, case, tuning):
    entry = tuning.get(case.name, {}).get(method.name)
    if entry is not None:
        return entry["chosen"]
    grid = GRIDS[method.name](case.family, case.size)
    return grid[len(grid) // 2] if len(grid) > 2 else grid[0]


# -- the plan -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    cases: tuple          # (family, size) pairs
    seeds: int
    budgets: dict         # case name -> calls per run
    caps: dict            # case name -> wall-clock seconds per run
    case_options: dict = field(default_factory=dict)


FULL_BUDGETS = {"diffusion-16": 3000, "diffusion-64": 6000, "diffusion-256": 10000,
                "reweight-10": 2000, "reweight-100": 3000, "reweight-1000": 10000,
                "burgers-2": 150, "robust-64": 6000}
FULL_CAP = 90.0
QUICK_BUDGETS = {"diffusion-16": 800, "reweight-10": 600, "reweight-100": 1000,
                 "burgers-2": 90, "robust-16": 800}
QUICK_CAP = 8.0


def make_plan(quick, seeds=None, sklearn=False):
    """Cases, budgets (calls per run), wall-clock caps (seconds per run) and seeds."""
    if quick:
        cases = (("diffusion", 16), ("reweight", 10), ("reweight", 100), ("burgers", 2),
                 ("robust", 16))
        budgets, cap, default_seeds = QUICK_BUDGETS, QUICK_CAP, 1
        # Burgers: observations up to t = 0.25 only, a 4 times shorter simulation.
        options = {"burgers": {"t_max": 0.25, "points": 60}}
    else:
        cases = tuple((f, n) for f, sizes in FAMILIES.items() for n in sizes)
        budgets, cap, default_seeds = FULL_BUDGETS, FULL_CAP, 3
        options = {}
    if sklearn:
        options["reweight"] = {"sklearn": True}
    names = [f"{f}-{n}" for f, n in cases]
    return Plan(cases=cases, seeds=seeds or default_seeds,
                budgets={n: budgets[n] for n in names}, caps={n: cap for n in names},
                case_options=options)


# -- measuring -------------------------------------------------------------------------------
def _score(trace, case, metric):
    level = case.target
    reach = (trace.calls_to(level) if metric == "calls"
             else trace.rounds_to(level, int(metric.rsplit("W", 1)[1])))
    return (reach, trace.final_best())


def tune(method, case, budget, cap, stop_at, seed=1000, log=print):
    """Run every setting of the method's grid on the tuning seed (not one of the measured
    seeds); return the one with the least ``method.tune_metric`` to the target (misses
    and ties: the lowest final loss), and what was tried."""
    best, best_score, tried = None, None, []
    for setting in GRIDS[method.name](case.family, case.size):
        trace = method.run(case, setting, seed, budget, stop_at, cap)
        score = _score(trace, case, method.tune_metric)
        tried.append({"setting": setting, "to_target": _finite(score[0]),
                      "final_gap": float(f"{_gap(score[1], case):.3g}"), "status": trace.status,
                      "nfev": trace.nfev, "wall_s": round(trace.wall_time, 2)})
        log(f"  tune {case.name:14s} {method.name:18s} {_describe(setting):50s} "
            f"{method.tune_metric} {score[0]!s:>7s} gap {_gap(score[1], case):.2e} "
            f"({trace.wall_time:.1f}s, {trace.status})")
        if best_score is None or score < best_score:
            best, best_score = setting, score
    return {"chosen": best, "metric": method.tune_metric, "tried": tried}


def _gap(value, case):
    return (value - case.f_star) / (case.f0 - case.f_star)


def _median(values):
    values = np.asarray(values, dtype=np.float64)
    return float(np.median(values)) if values.size else math.inf


def summarize(method, case, traces):
    """Medians over seeds of calls and rounds to the target, and the final gap."""
    out = {"method": method.name, "setting": traces[0].setting, "peer": method.peer,
           "runs": len(traces),
           "reached": sum(math.isfinite(t.calls_to(case.target)) for t in traces),
           "calls": _median([t.calls_to(case.target) for t in traces]),
           "nfev": _median([t.nfev for t in traces]),
           "final_gap": _median([_gap(t.final_best(), case) for t in traces]),
           "wall_s": _median([t.wall_time for t in traces]),
           "own_s": _median([t.own_time for t in traces]),
           "status": sorted({t.status for t in traces})}
    for w in WORKERS:
        out[f"rounds_W{w}"] = _median([t.rounds_to(case.target, w) for t in traces])
        out[f"rounds_budget_W{w}"] = _median([rounds(t.groups, w) for t in traces])
    return out


def stop_level(case):
    """Runs stop once a decade past the target: they have shown what they do there."""
    return case.f_star + 0.1 * case.tau * (case.f0 - case.f_star)


def run_case(case, plan, methods, tuning, log=print):
    """The measured runs: every method with its tuned setting, on every seed."""
    budget, cap, stop_at = plan.budgets[case.name], plan.caps[case.name], stop_level(case)
    rows, traces = [], {}
    for method in methods:
        setting = settings_for(method, case, tuning)
        seeds = [0] if method.deterministic else list(range(plan.seeds))
        runs = [method.run(case, setting, s, budget, stop_at, cap) for s in seeds]
        traces[method.name] = runs
        row = summarize(method, case, runs)
        rows.append(row)
        log(f"  {case.name:14s} {method.name:18s} calls {row['calls']!s:>8s} "
            f"W64 {row['rounds_W64']!s:>7s} gap {row['final_gap']:.2e} "
            f"({row['wall_s']:.1f}s/run, {row['status']})")
    return rows, traces


def _versus(ours, peers, key):
    """Best FG2UZO variant against the best peer on one metric (calls or rounds)."""
    budget_key = "nfev" if key == "calls" else key.replace("rounds_", "rounds_budget_")
    o = min(ours, key=lambda r: (r[key], r["final_gap"]))
    p = min(peers, key=lambda r: (r[key], r["final_gap"]))
    lower = not math.isfinite(p[key])
    if lower:  # no peer reached the target: each needs more than its whole budget
        p = min(peers, key=lambda r: r[budget_key])
    peer_value = p[budget_key] if lower else p[key]
    ratio = peer_value / o[key] if math.isfinite(o[key]) else 0.0
    return {"fg2uzo": _finite(o[key]), "fg2uzo_method": o["method"],
            "best_peer": peer_value, "best_peer_method": p["method"],
            "ratio": round(ratio, 3), "lower_bound": lower}


def compare(case, rows, ours_names=None):
    """FG2UZO (best variant; only the rows ``ours_names`` when given) against the best
    peer, per metric; ``general``: peers that do not need a least-squares objective
    (all but DFO-LS and DFBGN)."""
    ours = [r for r in rows if not r["peer"]
            and (ours_names is None or r["method"] in ours_names)]
    peers = [r for r in rows if r["peer"]]
    general = [r for r in peers if not METHODS_BY_NAME[r["method"]].least_squares]
    out = {"N": case.size, "target": case.target, "f0": case.f0, "f_star": case.f_star,
           "target_text": case.target_text}
    if not ours or not peers:
        return out
    for key in ["calls"] + [f"rounds_W{w}" for w in WORKERS]:
        out[key] = _versus(ours, peers, key)
        if general and len(general) < len(peers):
            out[key]["general"] = _versus(ours, general, key)
    return out


def _finite(x):
    return x if math.isfinite(x) else None


# -- reporting -------------------------------------------------------------------------------
def _fmt(x, digits=0):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}" if digits else f"{int(round(x))}"


def table(case_rows):
    lines = ["| problem | N | method | setting | calls to target | rounds W=1 | W=8 | W=64 "
             "| reached | final gap | s/run | own s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for case, rows in case_rows:
        for r in rows:
            own = r.get("own_s", math.nan)
            lines.append(
                f"| {case.name} | {case.size} | {r['method']} | {r['setting']} | "
                f"{_fmt(r['calls'])} | {_fmt(r['rounds_W1'])} | {_fmt(r['rounds_W8'])} | "
                f"{_fmt(r['rounds_W64'])} | {r['reached']}/{r['runs']} | "
                f"{r['final_gap']:.1e} | {r['wall_s']:.1f} | "
                f"{'—' if not math.isfinite(own) else f'{own:.2f}'} |")
    return "\n".join(lines)


def plot(case_traces, case_rows, outdir, prefix="peers"):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for case, traces in case_traces:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for name, runs in traces.items():
            calls, best = runs[0].best_so_far()
            gap = np.maximum((best - case.f_star) / (case.f0 - case.f_star), 1e-8)
            style = "-" if not METHODS_BY_NAME[name].peer else "--"
            ax.step(np.concatenate([[0], calls]), np.concatenate([[1.0], gap]), where="post",
                    ls=style, lw=1.6 if style == "-" else 1.1, label=name)
        ax.axhline(case.tau, color="k", lw=0.8, ls=":", label="target")
        ax.set(xscale="log", yscale="log", xlabel="solver calls",
               ylabel="(F - F*) / (F0 - F*), best so far", title=f"{case.name} (seed 0)")
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = outdir / f"{prefix}_{case.name}.png"
        fig.savefig(path, dpi=72)
        plt.close(fig)
        written.append(path)
    # Rounds to the target: one panel per W, cases along x, one bar per method (a
    # hollow bar at the budget's rounds where the method missed the target).
    names = [m.name for m in METHODS if any(m.name == r["method"]
                                             for _, rows in case_rows for r in rows)]
    colors = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(len(WORKERS), 1, figsize=(max(7.0, 1.4 * len(case_rows) + 3),
                                                      3.0 * len(WORKERS)), sharex=True)
    width = 0.8 / max(len(names), 1)
    for ax, w in zip(np.atleast_1d(axes), WORKERS):
        for i, name in enumerate(names):
            for j, (case, rows) in enumerate(case_rows):
                r = next((r for r in rows if r["method"] == name), None)
                if r is None:
                    continue
                v = r[f"rounds_W{w}"]
                reached = math.isfinite(v)
                ax.bar(j - 0.4 + (i + 0.5) * width, v if reached else r[f"rounds_budget_W{w}"],
                       width, color=colors[i % 10] if reached else "none",
                       edgecolor=colors[i % 10], label=name if j == 0 else None)
        ax.set(yscale="log", ylabel=f"rounds, W = {w}")
    axes[-1].set_xticks(range(len(case_rows)), [c.name for c, _ in case_rows], fontsize=8)
    axes[0].legend(fontsize=7, ncol=5, loc="lower left", bbox_to_anchor=(0.0, 1.02))
    axes[0].set_title("parallel rounds to the target (hollow: missed, at the budget)",
                      fontsize=9, pad=48)
    fig.tight_layout()
    path = outdir / f"{prefix}_rounds.png"
    fig.savefig(path, dpi=72)
    plt.close(fig)
    written.append(path)
    return written


def machine():
    import numpy
    import torch

    cpu = "unknown"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "numpy": numpy.__version__, "torch": torch.__version__}


def write_tuning(tuning, path=TUNING_FILE):
    """One line per case and method: small, and diffs read well."""
    lines = []
    for cname in sorted(tuning):
        per = tuning[cname]
        items = [f"  {json.dumps(m)}: {json.dumps(per[m], sort_keys=True, default=_json_default)}"
                 for m in sorted(per)]
        lines.append(f" {json.dumps(cname)}: {{\n" + ",\n".join(items) + "\n }")
    with open(path, "w") as fh:
        fh.write("{\n" + ",\n".join(lines) + "\n}\n")


def tuning_markdown(tuning):
    lines = ["# python -m benchmarks.peers --tune", "",
             "Every setting of each method's grid, run once on the tuning seed (1000, not "
             "one of the measured seeds) with the full-mode budget; the chosen one has the "
             "least calls (or rounds at W = 64, where the method is sized for 64 workers) "
             "to the target, then the lowest final loss.", ""]
    for cname in sorted(tuning):
        lines += [f"## {cname}", "", "| method | setting | to target | final gap | status |",
                  "|---|---|---|---|---|"]
        for mname, entry in tuning[cname].items():
            for t in entry["tried"]:
                mark = " **(chosen)**" if t["setting"] == entry["chosen"] else ""
                lines.append(f"| {mname} | {_describe(t['setting'])}{mark} | "
                             f"{_fmt(t['to_target'])} {entry['metric'].replace('_', ' ')} | "
                             f"{t['final_gap']:.1e} | {t['status']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes and budgets, one seed (< 2 min)")
    parser.add_argument("--tune", action="store_true",
                        help="only tune: run every setting of GRIDS on the tuning seed with "
                             "the full-mode budgets, and record the choices in "
                             "results/peers_tuning.json")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per method")
    parser.add_argument("--sklearn", action="store_true",
                        help="reweight: fit through solvers.SklearnFit (slower, same calls)")
    parser.add_argument("--only", nargs="+", default=None,
                        help="cases to run, e.g. reweight-100 burgers-2")
    parser.add_argument("--methods", nargs="+", default=None, help="subset of methods")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.tune and args.quick:
        parser.error("--tune uses the full-mode budgets; drop --quick")

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    start = time.perf_counter()
    _warm_up()
    plan = make_plan(args.quick, args.seeds, args.sklearn)
    methods = [m for m in METHODS if args.methods is None or m.name in args.methods]
    tuning = load_tuning()
    case_rows, case_traces, comparisons, defaults_comparisons = [], [], {}, {}
    args.out.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(1):  # BLAS threads only fight over 2 shared cores
        for family, size in plan.cases:
            name = f"{family}-{size}"
            if args.only and name not in args.only:
                continue
            case = build_case(family, size, **plan.case_options.get(family, {}))
            print(f"{case.name}: F0 = {case.f0:.4g}, F* = {case.f_star:.4g}, target "
                  f"{case.target:.4g} ({case.target_text}), budget {plan.budgets[name]} "
                  "calls", flush=True)
            if args.tune:
                for method in methods:
                    entry = tune(method, case, plan.budgets[name], plan.caps[name],
                                 stop_level(case), log=lambda s: print(s, flush=True))
                    tuning.setdefault(case.name, {})[method.name] = entry
                    write_tuning(tuning)   # after each method: an interrupted run keeps it
                continue
            rows, traces = run_case(case, plan, methods, tuning,
                                    log=lambda s: print(s, flush=True))
            case_rows.append((case, rows))
            case_traces.append((case, traces))
            comparisons[case.name] = compare(case, rows)
            defaults_comparisons[case.name] = compare(case, rows, (DEFAULTS_ROW,))
    wall = time.perf_counter() - start

    if args.tune:
        with open(RESULTS / "peers_tuning.md", "w") as fh:
            fh.write(tuning_markdown(tuning) + "\n")
        chosen = {c: {m: _describe(e["chosen"]) for m, e in per.items()}
                  for c, per in tuning.items() if not args.only or c in args.only}
        print(json.dumps({"benchmark": "peers", "mode": "tune", "chosen": chosen,
                          "wall_s": round(wall, 1)}))
        return chosen

    text = table(case_rows)
    print()
    print(text)
    large = {k: v for k, v in comparisons.items() if v["N"] >= LARGE_N}
    nonls = {k: v for k, v in comparisons.items()
             if k.split("-")[0] not in LEAST_SQUARES_FAMILIES}

    def worst(metric, general=False, cases=None):
        ratios = {}
        for cname, comp in (large if cases is None else cases).items():
            entry = comp.get(metric)
            if entry is not None:
                entry = entry.get("general", entry) if general else entry
                ratios[cname] = entry["ratio"]
        if not ratios:
            return None, None
        cname = min(ratios, key=ratios.get)
        return ratios[cname], cname

    r64, r64_case = worst("rounds_W64")
    rc, rc_case = worst("calls")
    g64, _ = worst("rounds_W64", general=True)
    gc, gc_case = worst("calls", general=True)
    n64, _ = worst("rounds_W64", cases=nonls)
    nc, _ = worst("calls", cases=nonls)
    large_defaults = {k: v for k, v in defaults_comparisons.items() if v["N"] >= LARGE_N}
    d64, d64_case = worst("rounds_W64", cases=large_defaults)
    dc, dc_case = worst("calls", cases=large_defaults)
    mode = "quick" if args.quick else "full"
    figures = {"rounds_ratio_W64": r64, "calls_ratio": rc, "calls_ratio_general": gc,
               "nonls_calls_ratio": nc, "nonls_rounds_ratio_W64": n64,
               "defaults_rounds_ratio_W64": d64, "defaults_calls_ratio": dc}
    summary = {
        "benchmark": "peers", "mode": mode, "seeds": plan.seeds,
        "rounds_ratio_W64": r64, "rounds_ratio_W64_case": r64_case,
        "calls_ratio": rc, "calls_ratio_case": rc_case,
        "calls_ratio_general": gc, "calls_ratio_general_case": gc_case,
        "rounds_ratio_W64_general_peers": g64, "calls_ratio_general_peers": gc,
        "nonls_calls_ratio": nc, "nonls_rounds_ratio_W64": n64,
        "nonls_cases": sorted(nonls),
        "defaults_rounds_ratio_W64": d64, "defaults_rounds_ratio_W64_case": d64_case,
        "defaults_calls_ratio": dc, "defaults_calls_ratio_case": dc_case,
        "targets": dict(TARGETS),
        "met": {k: v is not None and v >= TARGETS[k] for k, v in figures.items()},
        "own_linear_algebra_s": _own_times(case_rows),
        "large_n_cases": sorted(large),
        "problems": comparisons,
        "wall_s": round(wall, 1),
        "machine": machine(),
    }
    with open(args.out / f"peers_{mode}.md", "w") as fh:
        fh.write(report_markdown(args, plan, case_rows, summary, wall))
    plot(case_traces, case_rows, args.out, prefix=f"peers_{mode}")
    print(json.dumps(summary, default=_json_default))
    return summary


def _warm_up():
    """Pay the first use of torch.func (seconds of imports) before the timed runs, so
    that the first GN run's own time is not charged with it."""
    import fg2u_zo as fz
    from fg2u_zo.outer.steppers.subspace_model import outer_model

    problem = fz.BilevelProblem(inner=lambda phi: phi, outer=lambda t, p: (t ** 2).sum())
    outer_model(problem, np.ones(2), np.ones(2), np.eye(2), np.eye(2))


def _own_times(case_rows):
    """Median seconds per run of each method's own work (outside the solver calls), for
    the Gauss–Newton rows and DFO-LS, per case."""
    out = {}
    for case, rows in case_rows:
        for r in rows:
            if r["method"].startswith("GN") or r["method"] == "DFO-LS":
                own = r.get("own_s", math.nan)
                out.setdefault(case.name, {})[r["method"]] = (
                    round(own, 3) if math.isfinite(own) else None)
    return out


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def report_markdown(args, plan, case_rows, summary, wall):
    m = summary["machine"]
    out = [f"# python -m benchmarks.peers{' --quick' if args.quick else ''}", "",
           f"{plan.seeds} seed(s) per method (L-BFGS-B and DFO-LS are deterministic: one "
           f"run), medians over seeds; wall time {wall:.0f} s on {m['nproc']} shared cores "
           f"({m['cpu']}), Python {m['python']}, numpy {m['numpy']}, torch {m['torch']}.", ""]
    for case, _ in case_rows:
        out.append(f"- **{case.name}**: F0 = {case.f0:.4g}, F* = {case.f_star:.4g}; target "
                   f"F <= {case.target:.4g} ({case.target_text}); budget "
                   f"{plan.budgets[case.name]} calls, wall-clock cap "
                   f"{plan.caps[case.name]:.0f} s per run.")
    out += ["", "Calls and rounds are to the target (— : not reached within the budget); "
            "final gap = (best F - F*) / (F0 - F*) at the end of the run (runs stop a decade "
            "past the target).", "", table(case_rows), "",
            "```json", json.dumps(summary, indent=1, default=_json_default), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
    sys.exit(0)
