"""What the adapters in :mod:`solvers` share: their argument checks and the checks of
what an external code returned.

The argument checks are those of :mod:`fg2u_zo.validation`, under the short names the
adapters use, so a message reads the same whether ``fg2u_zo`` or an adapter raised it.
Only what is particular to adapters lives here: the output check (:func:`as_theta`,
which raises :class:`~fg2u_zo.InnerSolverError` with the failure's kind) and the
traceback tail of a failed call.
"""

from __future__ import annotations

import functools
import traceback

import numpy as np

from fg2u_zo.errors import InnerSolverError
from fg2u_zo.validation import (check_choice, check_finite_vector, check_phi,
                                check_positive_float, check_positive_int)

__all__ = ["as_phi", "as_theta", "finite_vector", "positive_number",
           "optional_positive_number", "positive_int", "choice", "exception_detail"]

#: ``finite_vector(value, name)``: a non-empty finite 1-D float64 array.
finite_vector = check_finite_vector
#: ``positive_number(value, name)``: a finite float > 0.
positive_number = check_positive_float
#: ``optional_positive_number(value, name)``: None, or a finite float > 0.
optional_positive_number = functools.partial(check_positive_float, allow_none=True)
#: ``positive_int(value, name, minimum=1)``.
positive_int = check_positive_int
#: ``choice(value, name, allowed)``.
choice = check_choice


def as_phi(phi, *, n_params=None):
    """``phi`` as a fresh 1-D float64 array of finite numbers (``n_params`` of them when
    given), or :class:`~fg2u_zo.FG2UValueError` / :class:`~fg2u_zo.FG2UTypeError`."""
    return check_phi(phi, n_params, source="for this solver")


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


def exception_detail(exc, limit=20):
    """The last ``limit`` lines of an exception's traceback, for ``InnerSolverError.detail``."""
    lines = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()
    return "\n".join(lines[-limit:])
