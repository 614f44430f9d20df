"""The Evaluator: the only code that calls an inner solver.

Counting (nfev), timing, parallelism, validation of the solver's output and the
failure policy live here, in the parent process, and nowhere else.
"""

from __future__ import annotations

import inspect
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

from ._validation import check_choice, check_positive_float, check_positive_int
from .errors import FG2UTypeError, FG2UValueError, InnerSolverError, inner_solver_error
from .result import Failure

__all__ = ["Evaluator", "MapStats"]

BACKENDS = ("sequential", "loky", "threading", "dask", "ray")


def _accepted_keywords(solver) -> frozenset:
    """Which of ``warm_start`` / ``seed`` the solver's signature accepts."""
    try:
        sig = inspect.signature(solver)
    except (TypeError, ValueError):
        return frozenset()
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return frozenset({"warm_start", "seed"})
    return frozenset(name for name in ("warm_start", "seed") if name in sig.parameters)


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(str(text).rstrip().splitlines()[-lines:])


def _check_output(out, expected_shape):
    """Validate a solver's output; return (theta, None) or (None, (kind, message))."""
    if out is None or isinstance(out, (str, bytes, dict)):
        return None, ("type", f"solver returned {type(out).__name__}, which is not an array "
                              "of floats; return the inner solution as a numpy array")
    try:
        theta = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return None, ("type", f"solver returned {type(out).__name__}, which is not an array "
                              f"of floats ({exc})")
    if expected_shape is not None and theta.shape != tuple(expected_shape):
        return None, ("shape", f"solver returned shape {theta.shape}, expected "
                               f"{tuple(expected_shape)} (the shape at the base point)")
    if not np.all(np.isfinite(theta)):
        nbad = int(np.size(theta) - np.count_nonzero(np.isfinite(theta)))
        return None, ("nonfinite", f"solver returned {nbad} non-finite value(s) (NaN/inf)")
    return theta, None


def _evaluate(solver, point, kwargs, expected_shape):
    """Run one evaluation; never raises. Returns (ok, theta_or_(kind, msg), seconds)."""
    start = time.perf_counter()
    try:
        out = solver(point, **kwargs)
    except InnerSolverError as exc:
        detail = f"{exc}\n{exc.detail}" if exc.detail else str(exc)
        return False, (exc.kind, _tail(detail)), time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 - any solver error becomes a recorded failure
        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        return False, ("exception", _tail("".join(tb))), time.perf_counter() - start
    seconds = time.perf_counter() - start
    theta, err = _check_output(out, expected_shape)
    if err is not None:
        return False, err, seconds
    return True, theta, seconds


def _evaluate_batch(solver, items, kwargs, expected_shape):
    return [(index, *_evaluate(solver, point, kwargs, expected_shape)) for index, point in items]


@dataclass
class MapStats:
    """Bookkeeping of one :meth:`Evaluator.map` call."""

    nfev: int = 0
    solver_time: float = 0.0
    failures: list = field(default_factory=list)

    @property
    def failed(self) -> set:
        return {f.index for f in self.failures}


class Evaluator:
    """Evaluates an inner solver at many points, serially or in parallel.

    Parameters
    ----------
    backend : {"sequential", "loky", "threading", "dask", "ray"}, optional
        Default: ``"loky"`` when ``n_jobs > 1``, else ``"sequential"``.
    n_jobs : int, optional
        Number of parallel workers (default 1).
    timeout : float, optional
        Seconds allowed for one evaluation.
    max_retries : int
        Further attempts at a failed evaluation before it is dropped.
    max_failure_fraction : float
        Fraction of dropped evaluations above which the estimate stops with
        :class:`InnerSolverError`.
    """

    def __init__(self, backend=None, n_jobs=None, *, timeout=None, max_retries=1,
                 max_failure_fraction=0.5, batch_size="auto", scheduler_address=None,
                 client=None):
        n_jobs = 1 if n_jobs is None else check_positive_int(n_jobs, "n_jobs")
        if backend is None:
            backend = "loky" if n_jobs > 1 else "sequential"
        self.backend = check_choice(backend, "backend", BACKENDS)
        self.n_jobs = n_jobs
        self.timeout = check_positive_float(timeout, "timeout", allow_none=True)
        self.max_retries = check_positive_int(max_retries, "max_retries", minimum=0)
        if not 0.0 <= float(max_failure_fraction) < 1.0:
            raise FG2UValueError(
                f"`max_failure_fraction` must be in [0, 1), got {max_failure_fraction}")
        self.max_failure_fraction = float(max_failure_fraction)
        self.batch_size = batch_size

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Release workers and clusters started by this evaluator."""

    def _kwargs(self, solver, seed, warm_start):
        accepted = _accepted_keywords(solver)
        kwargs = {}
        if seed is not None and "seed" in accepted:
            kwargs["seed"] = seed
        if warm_start is not None and "warm_start" in accepted:
            kwargs["warm_start"] = warm_start
        return kwargs

    def solve(self, solver, phi, *, seed=None, warm_start=None, expected_shape=None):
        """Evaluate the solver at one point (in the calling process), with retries.

        Returns
        -------
        theta : ndarray
        stats : MapStats

        Raises
        ------
        InnerSolverError
            When every attempt failed; the message carries the last error's tail.
        """
        if not callable(solver):
            raise FG2UTypeError(f"the inner solver must be callable, got {type(solver).__name__}")
        stats = MapStats()
        kwargs = self._kwargs(solver, seed, None if warm_start is None else warm_start)
        for attempt in range(1, self.max_retries + 2):
            ok, payload, seconds = _evaluate(solver, phi, kwargs, expected_shape)
            stats.nfev += 1
            stats.solver_time += seconds
            if ok:
                return payload, stats
            kind, message = payload
        raise inner_solver_error(
            f"the inner solver failed at the base point phi after {attempt} attempt(s) "
            f"({kind}):\n{message}", kind=kind, detail=message)

    def map(self, solver, points, on_result, *, seed=None, warm_start=None,
            expected_shape=None) -> MapStats:
        """Evaluate the solver at every point and hand each result to ``on_result``.

        ``on_result(index, theta)`` runs in the calling process as results arrive, so
        the caller can reduce each output and drop it: memory does not grow with the
        number of points.
        """
        kwargs = self._kwargs(solver, seed, warm_start)
        stats = MapStats()
        pending = {k: 0 for k in range(len(points))}
        while pending:
            items = [(k, points[k]) for k in pending]
            results = self._run(solver, items, kwargs, expected_shape)
            retry = {}
            for index, ok, payload, seconds in results:
                stats.nfev += 1
                stats.solver_time += seconds
                attempts = pending[index] + 1
                if ok:
                    on_result(index, payload)
                elif attempts <= self.max_retries:
                    retry[index] = attempts
                else:
                    kind, message = payload
                    stats.failures.append(Failure(index, None, kind, message, attempts))
            pending = retry
        self._check_failures(stats, len(points))
        return stats

    def _check_failures(self, stats, total):
        if total and len(stats.failures) > self.max_failure_fraction * total:
            last = stats.failures[-1]
            raise inner_solver_error(
                f"{len(stats.failures)} of {total} evaluations failed (more than "
                f"max_failure_fraction={self.max_failure_fraction}); last failure "
                f"({last.kind}):\n{last.message}", kind=last.kind, detail=last.message)

    def _run(self, solver, items, kwargs, expected_shape):
        if self.backend == "sequential" or self.n_jobs == 1:
            return _evaluate_batch(solver, items, kwargs, expected_shape)
        from joblib import Parallel, delayed
        out = Parallel(n_jobs=self.n_jobs, backend=self.backend,
                       return_as="generator_unordered")(
            delayed(_evaluate_batch)(solver, [item], kwargs, expected_shape) for item in items)
        return [r for batch in out for r in batch]
