"""Argument checks shared by the adapters in :mod:`solvers`.

Kept private: every adapter validates its constructor arguments once and its ``phi``
on every call with these helpers, so the messages read the same everywhere.
"""

from __future__ import annotations

import numbers
import traceback

import numpy as np

from fg2u_zo.errors import FG2UTypeError, FG2UValueError, InnerSolverError

__all__ = ["as_phi", "as_theta", "positive_number", "optional_positive_number",
           "positive_int", "choice", "exception_detail"]


def as_phi(phi, *, n_params=None):
    """``phi`` as a 1-D float64 array of finite numbers, or FG2UValueError."""
    try:
        arr = np.asarray(phi, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FG2UTypeError(f"`phi` must be a 1-D array of floats, got {type(phi).__name__}: "
                            f"{exc}") from None
    if arr.ndim != 1:
        raise FG2UValueError(f"`phi` must be 1-D with shape (N,), got shape {arr.shape}; "
                             "flatten it with np.ravel(phi)")
    if n_params is not None and arr.shape[0] != n_params:
        raise FG2UValueError(f"`phi` must have {n_params} entries for this solver, "
                             f"got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr))[:5].tolist()
        raise FG2UValueError(f"`phi` must be finite, got non-finite entries at indices {bad}")
    return arr


def as_theta(value, *, where, n_outputs=None, workdir=None):
    """The solver output as a 1-D float64 array of finite numbers, or InnerSolverError."""
    try:
        theta = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InnerSolverError(f"{where} returned a value that is not an array of numbers "
                               f"({type(value).__name__}): {exc}", kind="type",
                               workdir=workdir) from None
    theta = theta.reshape(-1)
    if n_outputs is not None and theta.shape[0] != n_outputs:
        raise InnerSolverError(f"{where} returned {theta.shape[0]} numbers, expected "
                               f"`n_outputs`={n_outputs}", kind="shape", workdir=workdir)
    if not np.all(np.isfinite(theta)):
        bad = np.flatnonzero(~np.isfinite(theta))
        raise InnerSolverError(f"{where} returned {bad.size} non-finite value(s) out of "
                               f"{theta.size} (first at index {int(bad[0])})",
                               kind="nonfinite", workdir=workdir)
    return theta


def finite_vector(value, name):
    """``value`` as a non-empty finite 1-D float64 array, or an error naming ``name``."""
    x = np.asarray(value, dtype=np.float64)
    if x.ndim != 1 or x.size == 0 or not np.all(np.isfinite(x)):
        raise FG2UValueError(f"`{name}` must be a non-empty finite 1-D array, got shape "
                             f"{x.shape}")
    return x


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_number(value, name):
    if not _is_real(value):
        raise FG2UTypeError(f"`{name}` must be a number, got {type(value).__name__}")
    if not (np.isfinite(value) and value > 0):
        raise FG2UValueError(f"`{name}` must be > 0, got {value!r}")
    return float(value)


def optional_positive_number(value, name):
    return None if value is None else positive_number(value, name)


def positive_int(value, name, *, minimum=1):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise FG2UTypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if value < minimum:
        raise FG2UValueError(f"`{name}` must be >= {minimum}, got {value!r}")
    return int(value)


def choice(value, name, allowed):
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise FG2UValueError(f"`{name}` must be one of {options}, got {value!r}")
    return value


def exception_detail(exc, limit=20):
    """The last ``limit`` lines of an exception's traceback, for ``InnerSolverError.detail``."""
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()
    return "\n".join(lines[-limit:])
