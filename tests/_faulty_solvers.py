"""Inner solvers that fail on purpose, for the Evaluator's tests and benchmark.

They live at module level so that loky, dask and ray can pickle them; the module is
also registered with cloudpickle to travel by value, so workers that cannot import
``tests/`` (ray, a dask worker elsewhere) still get it.

Which points fail is decided by a hash of the point's bytes: deterministic (a retry
fails again, every backend sees the same failures) and unrelated to the value of the
direction, so dropping the failed directions keeps the estimator unbiased.
"""

import hashlib
import os
import signal
import sys
import threading
import time
import uuid

import cloudpickle
import numpy as np

from fg2u_zo.errors import FG2UValueError, InnerSolverError

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def point_hash(phi) -> float:
    """A uniform number in [0, 1) determined by the bytes of ``phi``."""
    digest = hashlib.blake2b(np.ascontiguousarray(phi, dtype=np.float64).tobytes(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _key(phi):
    return np.ascontiguousarray(phi, dtype=np.float64).tobytes()


def _claim(marker):
    """True once across all processes: whoever creates ``marker`` first."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def hang(mode, seconds=1000.0):
    """Never return (in practice): sleep, spin, or sleep with SIGALRM blocked."""
    if mode == "blocked":
        # Like C code that never returns to the interpreter: SIGALRM cannot get in.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    if mode == "busy":
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass
    time.sleep(seconds)


def crash(mode):
    if mode == "exit":
        os._exit(3)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(10)
    raise RuntimeError("simulated crash (the in-process stand-in for os._exit)")


class Faulty:
    """The ridge inner solver with failures injected at chosen points.

    Parameters
    ----------
    ridge : RidgeHyperproblem
    base : ndarray, optional
        Never fails here (the base point of the estimate).
    raise_below, nan_below, short_below, reject_below : float
        Bands of ``point_hash``: below ``raise_below`` the solver raises RuntimeError;
        up to ``nan_below`` it returns NaN; up to ``short_below`` an output one entry
        short (wrong shape); up to ``reject_below`` it raises FG2UValueError (its own
        argument check: deterministic, not retried).
    hang_at, crash_at : list of ndarray
        Points where the solver hangs (``hang_mode``, for ``hang_seconds``) or crashes
        (``crash_mode``).
    crash_once : str, optional
        Marker file: the first perturbed point evaluated anywhere crashes (once).
    """

    def __init__(self, ridge, *, base=None, raise_below=0.0, nan_below=0.0, short_below=0.0,
                 reject_below=0.0, hang_at=(), hang_mode="sleep", hang_seconds=1000.0,
                 crash_at=(), crash_mode="exit", crash_once=None):
        self.ridge = ridge
        self.base = None if base is None else _key(base)
        self.raise_below = raise_below
        self.nan_below = max(nan_below, raise_below)
        self.short_below = max(short_below, self.nan_below)
        self.reject_below = max(reject_below, self.short_below)
        self.hang_at = {_key(p) for p in hang_at}
        self.hang_mode = hang_mode
        self.hang_seconds = hang_seconds
        self.crash_at = {_key(p) for p in crash_at}
        self.crash_mode = crash_mode
        self.crash_once = crash_once

    def __call__(self, phi, *, warm_start=None, seed=None):
        key = _key(phi)
        if key != self.base:
            u = point_hash(phi)
            if u < self.raise_below:
                raise RuntimeError(f"injected failure at a point with hash {u:.4f}")
            if u < self.nan_below:
                return np.full(self.ridge.num_params, np.nan)
            if u < self.short_below:
                return self.ridge.inner(phi)[:-1]
            if u < self.reject_below:
                raise FG2UValueError(f"`phi` rejected by the solver's own check (hash {u:.4f})")
            if key in self.hang_at:
                hang(self.hang_mode, self.hang_seconds)
            if key in self.crash_at:
                crash(self.crash_mode)
            if self.crash_once is not None and _claim(self.crash_once):
                crash(self.crash_mode)
        return self.ridge.inner(phi)


class Slow:
    """The ridge solver, taking ``delay`` seconds per call (a simulator's run time)."""

    def __init__(self, ridge, delay):
        self.ridge = ridge
        self.delay = delay

    def __call__(self, phi, *, warm_start=None, seed=None):
        time.sleep(self.delay)
        return self.ridge.inner(phi)


class Recorder:
    """The ridge solver, recording every point it sees (in-process backends only)."""

    def __init__(self, ridge):
        self.ridge = ridge
        self.points = []

    def __call__(self, phi, *, warm_start=None, seed=None):
        self.points.append(np.array(phi, copy=True))
        return self.ridge.inner(phi)


class WhereLogger:
    """The ridge solver, leaving a file named after the process and thread it ran in."""

    def __init__(self, ridge, directory):
        self.ridge = ridge
        self.directory = str(directory)

    def __call__(self, phi, *, warm_start=None, seed=None):
        name = f"{os.getpid()}-{threading.current_thread().name}"
        open(os.path.join(self.directory, name), "a").close()
        return self.ridge.inner(phi)


class KeywordLogger:
    """The ridge solver, leaving a file per call that records its keywords."""

    def __init__(self, ridge, directory):
        self.ridge = ridge
        self.directory = str(directory)

    def __call__(self, phi, *, warm_start=None, seed=None):
        warm = "cold" if warm_start is None else f"warm{warm_start.size}"
        name = f"{seed}-{warm}-{uuid.uuid4().hex}"
        open(os.path.join(self.directory, name), "a").close()
        return self.ridge.inner(phi)


class BigOutput:
    """A cheap solver with a large output: ``theta = sum(phi)`` everywhere, plus
    ``phi_0`` in the first entry, as a fresh length-``size`` array."""

    def __init__(self, size):
        self.size = size

    def __call__(self, phi):
        theta = np.full(self.size, phi.sum())
        theta[0] += phi[0]
        return theta


class ShortOnce:
    """The ridge solver, returning an output one entry short the first time it is
    called at ``at`` (anywhere: a marker file decides)."""

    def __init__(self, ridge, at, marker):
        self.ridge = ridge
        self.at = _key(at)
        self.marker = str(marker)

    def __call__(self, phi, *, warm_start=None, seed=None):
        theta = self.ridge.inner(phi)
        if _key(phi) == self.at and _claim(self.marker):
            return theta[:-1]
        return theta


class ReportsNonFinite:
    """The ridge solver standing in for an external program that printed a warning on
    stderr and wrote NaN: it raises the InnerSolverError an adapter raises, with the
    program's stderr tail as ``detail`` and a long message (the output tails)."""

    def __init__(self, ridge, calls_dir, ok_at=None):
        self.ridge = ridge
        self.calls_dir = str(calls_dir)
        self.ok_at = None if ok_at is None else _key(ok_at)

    def __call__(self, phi, *, warm_start=None, seed=None):
        if _key(phi) == self.ok_at:
            return self.ridge.inner(phi)
        open(os.path.join(self.calls_dir, uuid.uuid4().hex), "a").close()
        stdout = "\n".join(f"step {k}: residual {10.0 ** -k:.3e}" for k in range(30))
        raise InnerSolverError(
            "command ['./sim'] returned 5 non-finite value(s) out of 5 (first at index 0)\n"
            f"--- stderr (last 20 lines) ---\nWARNING unstable: dt too large\n"
            f"--- stdout (last 30 lines) ---\n{stdout}",
            kind="nonfinite", detail="WARNING unstable: dt too large")
