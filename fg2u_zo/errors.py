"""Exception and warning classes.

Every error raised by the library derives from :class:`FG2UError` *and* from the
builtin it specialises, so callers can write either ``except fz.FG2UError`` or
``except ValueError``.
"""

from __future__ import annotations

import inspect
import os

__all__ = [
    "FG2UError",
    "FG2UValueError",
    "FG2UTypeError",
    "NonFiniteStepError",
    "InnerSolverError",
    "InvalidSolverOutputError",
    "SolverOutputTypeError",
    "inner_solver_error",
    "ConfigError",
    "CheckpointError",
    "FG2UWarning",
    "NoiseWarning",
    "ZeroDifferenceWarning",
    "user_stacklevel",
    "IdentifiabilityWarning",
]


class FG2UError(Exception):
    """Base class of every error raised by fg2u-zo."""


class FG2UValueError(FG2UError, ValueError):
    """An argument has the right type but an invalid value (shape, sign, finiteness)."""


class FG2UTypeError(FG2UError, TypeError):
    """An argument has the wrong type."""


class NonFiniteStepError(FG2UValueError):
    """A step produced a NaN or infinite value, gradient or point; nothing was committed."""


class InnerSolverError(FG2UError, RuntimeError):
    """The inner solver failed: it raised, returned garbage, timed out or crashed.

    Attributes
    ----------
    kind : str
        Short failure category: ``"exception"``, ``"nonfinite"``, ``"shape"``,
        ``"type"``, ``"timeout"``, ``"crash"``, ``"returncode"``, ``"output"``,
        ``"not_converged"`` ...
    detail : str
        The tail of the solver's traceback or stderr, when there is one.
    workdir : str or None
        Working directory kept for inspection (external commands only).
    """

    def __init__(self, message: str, *, kind: str = "exception", detail: str = "",
                 workdir: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.detail = detail
        self.workdir = workdir

    def __reduce__(self):
        # Keep the keyword attributes when the error crosses a process boundary.
        return (_rebuild_inner_solver_error,
                (type(self), self.args[0] if self.args else "", self.kind, self.detail,
                 self.workdir))


def _rebuild_inner_solver_error(cls, message, kind, detail, workdir):
    return cls(message, kind=kind, detail=detail, workdir=workdir)


class InvalidSolverOutputError(InnerSolverError, ValueError):
    """The inner solver returned values of the wrong shape, or NaN/inf."""


class SolverOutputTypeError(InnerSolverError, TypeError):
    """The inner solver returned something that is not an array of numbers."""


_KIND_CLASSES = {"shape": InvalidSolverOutputError, "nonfinite": InvalidSolverOutputError,
                 "type": SolverOutputTypeError}


def inner_solver_error(message: str, *, kind: str, detail: str = "",
                       workdir: str | None = None) -> InnerSolverError:
    """The :class:`InnerSolverError` subclass that matches a failure ``kind``."""
    return _KIND_CLASSES.get(kind, InnerSolverError)(message, kind=kind, detail=detail,
                                                     workdir=workdir)


class ConfigError(FG2UError, ValueError):
    """A configuration file or mapping is invalid (unknown key, wrong type, missing file)."""

    def __init__(self, message: str, *, key: str | None = None):
        super().__init__(message)
        self.key = key


class CheckpointError(FG2UError, RuntimeError):
    """A checkpoint cannot be read, or does not match the run it should resume."""


class FG2UWarning(UserWarning):
    """Base class of every warning emitted by fg2u-zo."""


class NoiseWarning(FG2UWarning):
    """Noise in the inner solver's output limits the accuracy of finite differences."""


class ZeroDifferenceWarning(NoiseWarning):
    """Every finite difference of an estimate was zero or below the output resolution:
    the step is too small for the solver's precision."""


class IdentifiabilityWarning(FG2UWarning):
    """The data leave a combination of parameters unconstrained, or constrained so
    loosely that its confidence interval spans more than a decade
    (:func:`fg2u_zo.uncertainty`); the message names the parameters and the combination."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """``stacklevel`` that makes ``warnings.warn`` called by the caller of this
    function point at the first frame outside the ``fg2u_zo`` package (the user's
    call of ``estimate``, ``minimize`` ...).

    Counted from the frame that calls ``warnings.warn`` (level 1).
    """
    frame = inspect.currentframe().f_back  # the caller, which calls warnings.warn: level 1
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
            _PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level
