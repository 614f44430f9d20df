"""Parallel multi-start: a space-filling design, one screening round, local runs in
lockstep, successive halving.

For a rugged or multimodal misfit a single local run finds the minimum of the basin it
starts in. :func:`multistart`:

1. draws ``num_starts`` points of a space-filling design inside the bounds
   (:mod:`scipy.stats.qmc`: scrambled Sobol', Latin hypercube or Halton, seeded from
   ``rng``), plus ``phi0`` when given;
2. evaluates ``F`` at all of them in **one** parallel group;
3. runs the local method from the ``num_local`` best, in lockstep on one Evaluator
   (:class:`~fg2u_zo.outer.lockstep.Lockstep`: the solves of every run's step form one
   group);
4. stops the runs that fall behind by successive halving: at each rung (a step count,
   or the end of a continuation phase) only the best ``ceil(n / halving)`` go on;
5. evaluates ``F`` on the final problem at every end point that lacks it (one group),
   and warns when two ends have nearly equal ``F`` but different ``phi``: the data do
   not identify the coefficients.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import FG2UTypeError, FG2UValueError, FG2UWarning, InnerSolverError
from ..problem import BilevelProblem
from ..validation import as_generator, check_choice, check_phi, check_positive_int
from .continuation import Continuation, as_callbacks
from .convergence import Converged
from .lockstep import Lockstep

__all__ = ["multistart", "MultiStartResult", "DESIGNS"]

#: Space-filling designs of scipy.stats.qmc by name.
DESIGNS = ("sobol", "lhs", "halton")

#: minimize() keywords multistart sets itself for each run.
_RESERVED = ("phi0", "checkpoint", "resume", "history", "progress", "evaluator", "backend",
             "n_jobs", "bounds", "steps", "rng")


@dataclass(frozen=True, repr=False)
class MultiStartResult:
    """Outcome of :func:`multistart`.

    Attributes
    ----------
    phi : ndarray, shape (N,)
        The best end point.
    value : float
        ``F`` there, on the final problem (the whole horizon for a Continuation).
    ends : ndarray, shape (k, N)
        Every local run's end point (where it stopped, halved runs included).
    end_values : ndarray, shape (k,)
        ``F`` at each end on the final problem (inf where the run or the solve failed).
    starts : ndarray, shape (k, N)
        The local runs' starting points (best first).
    stopped_at : list
        The rung at which each run was stopped by successive halving, or None.
    results : list
        Each run's own result (OptimizeResult or ContinuationResult; None if it raised).
    errors : list
        The exception each run raised, or None (when every run raised, multistart
        raises the first run's exception instead of returning).
    design, design_values : ndarray
        The screened points (``phi0`` first when given) and ``F`` at each (on the first
        phase's problem for a Continuation; inf where the solve failed).
    groups : list of int
        Solves of each parallel group, in order: the screening, then the lockstep
        rounds, then the end-point evaluation.
    nfev : int
        Inner solves of the whole search.
    solver_time, wall_time : float
    nit : int
        Outer steps over all runs.
    success : bool
        Whether at least one run ended without an error.
    message : str
    """

    phi: np.ndarray
    value: float
    ends: np.ndarray
    end_values: np.ndarray
    starts: np.ndarray
    stopped_at: list
    results: list
    errors: list
    design: np.ndarray
    design_values: np.ndarray
    groups: list
    nfev: int
    solver_time: float
    wall_time: float
    nit: int
    success: bool
    message: str

    def rounds(self, workers: int) -> int:
        """Parallel rounds with ``workers`` simultaneous solves: ``sum(ceil(g / W))``."""
        workers = check_positive_int(workers, "workers")
        return int(sum(-(-g // workers) for g in self.groups))

    def __repr__(self) -> str:
        return (f"MultiStartResult(success={self.success}, value={self.value:.6g}, "
                f"runs={len(self.ends)}, nfev={self.nfev}, groups={len(self.groups)}, "
                f"message={self.message!r})")


def design_points(kind, num, lower, upper, rng):
    """``num`` points of a scipy.stats.qmc design scaled into ``[lower, upper]``."""
    from scipy.stats import qmc

    seed = np.random.default_rng(int(rng.integers(2**63 - 1)))
    d = lower.size
    if kind == "sobol":
        engine = qmc.Sobol(d, scramble=True, seed=seed)
        # The first 2^m points of a Sobol' sequence are balanced; others are still
        # well spread, so the count need not be a power of 2.
        sample = engine.random_base2(max(0, math.ceil(math.log2(num))))[:num]
    elif kind == "lhs":
        sample = qmc.LatinHypercube(d, seed=seed).random(num)
    else:
        sample = qmc.Halton(d, scramble=True, seed=seed).random(num)
    return qmc.scale(sample, lower, upper)


def _pair(bounds):
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise FG2UValueError(
            f"`bounds` must be a pair (lower, upper), got {bounds!r}") from None
    return lo, hi


def _finite_bounds(bounds, n):
    lo, hi = _pair(bounds)
    try:
        lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (n,)).copy()
        hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (n,)).copy()
    except (TypeError, ValueError):
        raise FG2UValueError(
            f"`bounds` must be a pair (lower, upper) of numbers or length-{n} sequences, "
            f"got {bounds!r}") from None
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(hi > lo)):
        raise FG2UValueError(
            "`bounds` must be finite with lower < upper in every coordinate: the design "
            f"fills the box; got lower={lo.tolist()}, upper={hi.tolist()}")
    return lo, hi


def _halving_decision(halving):
    def decide(key, values):
        order = sorted(values, key=lambda r: (not math.isfinite(values[r]), values[r], r))
        keep = max(1, math.ceil(len(order) / halving))
        return set(order[keep:])
    return decide


def _rung_steps(steps, num_local, halving):
    """Steps after which runs are halved: ``steps / halving**j``, j = R..1, with R
    rungs to go from ``num_local`` runs to one."""
    if halving <= 1 or num_local <= 1:
        return ()
    count = math.ceil(math.log(num_local) / math.log(halving) - 1e-12)
    out = sorted({max(1, int(round(steps / halving ** j))) for j in range(count, 0, -1)})
    return tuple(s for s in out if s < steps)


def multistart(problem, bounds, estimator=None, *, phi0=None, num_starts=16, num_local=4,
               design="sobol", halving=2, steps=100, rungs=None, stop=None, rng=None,
               backend=None, n_jobs=None, evaluator=None, tie_rtol=1e-2, tie_xtol=1e-2,
               callback=None, **options) -> MultiStartResult:
    """Minimize from the best points of a space-filling design, in parallel.

    Parameters
    ----------
    problem : BilevelProblem or Continuation
        What to minimize. With a :class:`~fg2u_zo.Continuation` the design is screened
        on its first (shortest) phase, each local run is the whole continuation, and
        the rungs are the ends of its phases.
    bounds : (lower, upper)
        Finite box of the design; also the local runs' bounds.
    estimator : Estimator
        The local runs' meta-gradient estimator.
    phi0 : array_like, optional
        A start of the user's, screened with the design.
    num_starts : int
        Design points (0: run from ``phi0`` alone, through the same machinery).
    num_local : int
        Local runs, from the best screened points.
    design : {"sobol", "lhs", "halton"}
        Scrambled Sobol' (default), Latin hypercube or scrambled Halton.
    halving : float
        Successive halving: at each rung the best ``ceil(n / halving)`` runs go on.
        1 turns it off.
    steps : int
        Most steps of a local run (a BilevelProblem only; a Continuation has its own).
    rungs : sequence of int, optional
        Steps after which runs are halved (BilevelProblem only). Default: ``steps /
        halving**j`` for as many j as it takes to get down to one run.
    stop : Converged, optional
        Ends a local run once converged (BilevelProblem only; a Continuation has its
        own ``stop``).
    rng : None, int or numpy.random.Generator
        Seeds the design and each run (in this process).
    backend, n_jobs, evaluator : optional
        One Evaluator for everything (made here and closed at the end, or the one passed).
    tie_rtol, tie_xtol : float
        Two end values within ``tie_rtol`` of each other (relative to the larger, or
        to 1e-8 times the median screened value when both are below it) whose points
        differ by more than ``tie_xtol`` times the box width in some coordinate raise
        the warning.
    callback : callable or list, optional
        ``callback(record)`` of every local run (records of all runs, interleaved).
    **options
        :func:`~fg2u_zo.minimize` (or :meth:`Continuation.run`) keywords of every local
        run: ``optimizer``, ``lr``, ``schedule``, ``transform``, ...

    Returns
    -------
    MultiStartResult

    Warns
    -----
    FG2UWarning
        When two end points have nearly equal values but different ``phi``.

    Examples
    --------
    A shifted Rastrigin function has a local minimum near every point of the integer
    grid; its global one is at the shift.

    >>> import numpy as np, torch, fg2u_zo as fz
    >>> shift = np.array([0.7, -1.3])
    >>> rastrigin = fz.BilevelProblem(
    ...     inner=lambda phi: phi - shift, num_params=2,
    ...     outer=lambda x, phi: (x ** 2 - 10 * torch.cos(2 * np.pi * x) + 10).sum())
    >>> est = fz.FG2UZO(num_directions=2, directions="orthogonal", step=1e-6)
    >>> res = fz.multistart(rastrigin, (-2.0, 2.0), est, num_starts=64, num_local=16,
    ...                     steps=40, optimizer="Rprop", lr=0.05, rng=0)
    >>> np.round(res.phi, 4).tolist(), res.groups[:3], res.rounds(64)
    ([0.7, -1.3], [64, 16, 64], 82)
    >>> alone = fz.minimize(rastrigin, np.array([-1.5, 1.5]), est, optimizer="Rprop",
    ...                     lr=0.05, steps=40, bounds=(-2.0, 2.0), rng=0, progress=False)
    >>> bool(alone.value > 1.0)     # a local minimum near the start
    True
    """
    from ..evaluation.evaluator import Evaluator

    for key in _RESERVED:
        if key in options:
            raise FG2UValueError(
                f"multistart sets `{key}` of each local run itself; pass it to multistart "
                "(bounds, steps, rng, evaluator) or leave it out (checkpoints and "
                "histories are per run: not available here)")
    if isinstance(problem, Continuation):
        screen_problem, final_problem = problem.problems[0], problem.problems[-1]
    elif isinstance(problem, BilevelProblem):
        screen_problem = final_problem = problem
    else:
        raise FG2UTypeError(f"`problem` must be a fz.BilevelProblem or fz.Continuation, got "
                            f"{type(problem).__name__}")
    num_starts = check_positive_int(num_starts, "num_starts", minimum=0)
    num_local = check_positive_int(num_local, "num_local")
    design = check_choice(design, "design", DESIGNS)
    if not isinstance(halving, (int, float)) or isinstance(halving, bool) or halving < 1:
        raise FG2UValueError(f"`halving` must be a number >= 1 (1: no halving), got "
                             f"{halving!r}")
    steps = check_positive_int(steps, "steps")
    if stop is not None and not isinstance(stop, Converged):
        raise FG2UTypeError(f"`stop` must be a fz.Converged or None, got {type(stop).__name__}")
    user_callbacks = as_callbacks(callback, "callback")
    if phi0 is not None:
        phi0 = check_phi(phi0, screen_problem.num_params, "phi0")
    n = phi0.size if phi0 is not None else screen_problem.num_params
    if n is None:
        n = max(np.size(b) for b in _pair(bounds))
        if all(np.ndim(b) == 0 for b in _pair(bounds)):
            raise FG2UValueError(
                "the number of parameters is unknown: give `bounds` per coordinate, "
                "`phi0`, or BilevelProblem(num_params=...)")
    lower, upper = _finite_bounds(bounds, n)
    if phi0 is not None and (np.any(phi0 < lower) or np.any(phi0 > upper)):
        raise FG2UValueError(f"`phi0` must lie inside `bounds`, got {phi0.tolist()}")
    if num_starts == 0 and phi0 is None:
        raise FG2UValueError("num_starts=0 runs from `phi0` alone: pass phi0")
    rng = as_generator(rng)
    wall_start = time.perf_counter()

    own = evaluator is None
    if own:
        ev = Evaluator(backend=backend, n_jobs=n_jobs)
    else:
        if backend is not None or n_jobs is not None:
            raise FG2UValueError("pass either `evaluator=` or `backend=`/`n_jobs=`, not both")
        ev = evaluator
    try:
        lockstep = Lockstep(ev)
        candidates = ([phi0] if phi0 is not None else []) + (
            list(design_points(design, num_starts, lower, upper, rng)) if num_starts else [])
        candidates = np.asarray(candidates, dtype=np.float64)
        if num_starts:
            cand_values = _values(lockstep, screen_problem, candidates)
            order = sorted(range(len(candidates)),
                           key=lambda i: (not math.isfinite(cand_values[i]), cand_values[i], i))
            chosen = [i for i in order if math.isfinite(cand_values[i])][:num_local]
            if not chosen:
                raise InnerSolverError(
                    f"F could not be evaluated at any of the {len(candidates)} design "
                    "points (every solve failed); check the bounds", kind="exception")
        else:
            cand_values = np.full(1, np.nan)
            chosen = [0]
        starts = candidates[chosen]
        seeds = rng.spawn(len(starts))
        tasks = [_task(problem, estimator, start, seed, lower, upper, steps, rungs,
                       halving, len(starts), stop, user_callbacks, options)
                 for start, seed in zip(starts, seeds)]
        decide = _halving_decision(halving) if halving > 1 else None
        results, errors = lockstep.run(tasks, decide)
        ends, end_values = _ends(lockstep, final_problem, problem, starts, results)
    finally:
        if own:
            ev.close()

    if all(e is not None for e in errors):
        first = errors[0]
        if hasattr(first, "add_note"):
            first.add_note(f"fg2u-zo: every one of the {len(errors)} local runs of "
                           "multistart raised; this is the first run's error")
        raise first
    stopped_at = [getattr(r, "stopped_rung", None) if r is not None else None
                  for r in results]
    results = [getattr(r, "result", r) for r in results]
    ok = np.isfinite(end_values)
    best = int(np.argmin(np.where(ok, end_values, np.inf))) if ok.any() else 0
    _warn_ties(ends, end_values, best, lower, upper, tie_rtol, tie_xtol,
               scale=_typical(cand_values))
    nit = sum(int(getattr(r, "nit", 0)) for r in results if r is not None)
    failed = sum(e is not None for e in errors)
    message = (f"{len(starts)} local run(s) from {len(candidates)} screened point(s); best "
               f"F = {end_values[best]:.6g}" + (f"; {failed} run(s) failed" if failed else ""))
    return MultiStartResult(
        phi=ends[best].copy(), value=float(end_values[best]), ends=ends,
        end_values=end_values, starts=starts, stopped_at=stopped_at, results=results,
        errors=errors, design=candidates, design_values=np.asarray(cand_values, dtype=float),
        groups=list(lockstep.groups), nfev=lockstep.nfev,
        solver_time=lockstep.solver_time,
        wall_time=time.perf_counter() - wall_start,
        nit=nit, success=failed < len(starts), message=message)


class _Outcome:
    """A run's result and the rung that stopped it (None: it ran to its end)."""

    def __init__(self, result, stopped_rung):
        self.result, self.stopped_rung = result, stopped_rung


def _task(problem, estimator, start, seed, lower, upper, steps, rungs, halving, count,
          stop, user_callbacks, options):
    """The local run from ``start`` as a Lockstep task."""
    from .minimize import minimize

    if isinstance(problem, Continuation):
        def task(ev, rung):
            stopped = {}

            def between(k, res):
                if halving > 1 and rung(k, res.value):
                    stopped["rung"] = k
                    return True
                return False

            res = problem.run(start, estimator, rng=seed, evaluator=ev, between=between,
                              callback=user_callbacks, bounds=(lower, upper),
                              progress=False, **options)
            return _Outcome(res, stopped.get("rung"))
        return task

    rung_steps = tuple(rungs) if rungs is not None else _rung_steps(steps, count, halving)

    def task(ev, rung):
        stopped = {}
        converged = stop.callback() if stop is not None else None

        def on_step(record):
            halt = False
            for cb in user_callbacks:
                halt = bool(cb(record)) or halt
            done = record.step + 1
            if halving > 1 and done in rung_steps and rung(rung_steps.index(done),
                                                            record.value):
                stopped["rung"] = rung_steps.index(done)
                halt = True
            if converged is not None and converged(record):
                halt = True
            return halt

        res = minimize(problem, start, estimator, steps=steps, rng=seed, evaluator=ev,
                       bounds=(lower, upper), callback=on_step, progress=False, **options)
        return _Outcome(res, stopped.get("rung"))
    return task


def _values(lockstep, problem, points):
    """F at ``points`` in one group of the lockstep's evaluator (inf where it failed)."""
    values = np.full(len(points), np.inf)
    if not len(points):
        return values

    def keep(k, theta):
        values[k] = problem.outer_value(theta, points[k])

    ev = lockstep.evaluator
    policy = ev.max_failure_fraction
    ev.max_failure_fraction = max(policy, 1.0 - 0.5 / len(points))  # failures are inf
    try:
        stats = ev.map(problem.inner, list(points), keep)
    except InnerSolverError:
        lockstep.groups.append(len(points))
        return values
    finally:
        ev.max_failure_fraction = policy
    lockstep.groups.append(len(points))
    lockstep.nfev += stats.nfev
    lockstep.solver_time += stats.solver_time
    values[~np.isfinite(values)] = np.inf
    return values


def _ends(lockstep, final_problem, problem, starts, outcomes):
    """Every run's end point and F there on the final problem (one group for those
    whose own result does not hold it)."""
    ends = np.array(starts, dtype=np.float64)
    values = np.full(len(starts), np.inf)
    missing = []
    for i, out in enumerate(outcomes):
        if out is None:
            continue
        res = out.result
        ends[i] = np.asarray(res.phi, dtype=np.float64)
        on_final = (not isinstance(problem, Continuation)
                    or (res.phase == problem.num_phases - 1 and out.stopped_rung is None))
        if on_final and math.isfinite(res.value):
            values[i] = float(res.value)
        else:
            missing.append(i)
    if missing:
        values[missing] = _values(lockstep, final_problem, ends[missing])
    return ends, values


def _typical(values):
    """The median of the finite screened values (0 when there are none)."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    return float(np.median(np.abs(finite))) if finite.size else 0.0


def _warn_ties(ends, values, best, lower, upper, rtol, xtol, scale):
    """Warn when another end is as good as the best but elsewhere.

    Values are compared relative to the larger of the two, but never finer than
    ``1e-8`` of the typical screened value: two fits that both reach rounding level
    (an exact model of noise-free data) are equally good.
    """
    if not math.isfinite(values[best]):
        return
    width = upper - lower
    floor = 1e-8 * scale
    for i, (end, value) in enumerate(zip(ends, values)):
        if i == best or not math.isfinite(value):
            continue
        close = abs(value - values[best]) <= rtol * max(abs(value), abs(values[best]),
                                                         floor)
        apart = np.max(np.abs(end - ends[best]) / width) > xtol
        if close and apart:
            warnings.warn(
                f"two local runs ended with nearly equal F ({values[best]:.6g} and "
                f"{value:.6g}) at different points ({np.round(ends[best], 6).tolist()} and "
                f"{np.round(end, 6).tolist()}): the data may not identify these "
                "parameters; add observations or fix some of them", FG2UWarning,
                stacklevel=3)
            return
