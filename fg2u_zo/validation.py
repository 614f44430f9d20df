"""Argument checks shared by ``fg2u_zo`` and the adapters in ``solvers``.

Each check returns the value in its canonical form (a float, an int, a fresh float64
array) or raises a library error that is also the matching builtin
(:class:`~fg2u_zo.FG2UTypeError` for a wrong type, :class:`~fg2u_zo.FG2UValueError`
for a wrong value) and names the argument and the fix, as scipy and jaxopt do:
``"`step` must be > 0, got -0.1"``. Messages start with the backquoted argument name,
so a caller that knows the argument under another name (a TOML key, say) can re-word
them.
"""

from __future__ import annotations

import difflib
import numbers
import sys

import numpy as np

from .errors import FG2UTypeError, FG2UValueError

__all__ = ["as_generator", "check_phi", "check_finite_vector", "check_positive_int",
           "check_positive_float", "check_choice"]


def as_generator(rng) -> np.random.Generator:
    """Return a ``numpy.random.Generator`` from ``rng`` (None, an int seed or a Generator).

    Examples
    --------
    >>> int(as_generator(0).integers(10)) == int(as_generator(0).integers(10))
    True
    """
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, (numbers.Integral, np.random.SeedSequence)):
        if isinstance(rng, numbers.Integral) and rng < 0:
            raise FG2UValueError(f"`rng` seed must be >= 0, got {rng}")
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.RandomState):
        raise FG2UTypeError(
            "`rng` must be a numpy.random.Generator, an int seed or None; got a legacy "
            "RandomState: pass numpy.random.default_rng(seed) instead")
    raise FG2UTypeError(
        f"`rng` must be a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")


def _as_float_array(value, name, what):
    """``value`` as a fresh float64 array; complex numbers, callables and text refused."""
    # A tensor can only be passed once torch is imported: looking it up in sys.modules
    # keeps a worker that runs a numpy solver from importing torch (seconds) here.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (str, bytes)) or value is None or callable(value):
        kind = "a callable" if callable(value) else type(value).__name__
        raise FG2UTypeError(f"`{name}` must be {what}, got {kind}")
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise FG2UTypeError(f"`{name}` must be {what}, got {type(value).__name__}: "
                            f"{exc}") from None
    if np.iscomplexobj(arr):
        raise FG2UValueError(f"`{name}` must be real, got complex values")
    try:
        return np.array(arr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FG2UTypeError(f"`{name}` must be {what}, got {type(value).__name__}: "
                            f"{exc}") from None


def _check_all_finite(arr, name):
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise FG2UValueError(
            f"`{name}` must be finite; entries {idx[:10].tolist()} are "
            f"{arr.ravel()[idx[:3]].tolist()}")


def check_phi(phi, num_params: int | None = None, name: str = "phi", *,
              source: str = "the problem's num_params") -> np.ndarray:
    """Return ``phi`` as a fresh 1-D float64 array after checking shape and finiteness.

    Parameters
    ----------
    phi : array_like or torch.Tensor
        The meta-parameters.
    num_params : int, optional
        The length ``phi`` must have.
    name : str
        The argument's name in messages.
    source : str
        Where ``num_params`` comes from, for the message.

    Raises
    ------
    FG2UTypeError
        ``phi`` is not an array of real numbers.
    FG2UValueError
        Wrong shape or length, empty, complex, or non-finite entries.

    Examples
    --------
    >>> check_phi([1, 2])
    array([1., 2.])
    >>> check_phi([1.0, float("nan")])
    Traceback (most recent call last):
    ...
    fg2u_zo.errors.FG2UValueError: `phi` must be finite; entries [1] are [nan]
    """
    arr = _as_float_array(phi, name, "a 1-D array of floats")
    if arr.ndim != 1:
        raise FG2UValueError(
            f"`{name}` must be 1-D with shape (N,), got shape {arr.shape}; "
            f"flatten it with np.ravel({name}) and reshape inside the solver")
    if arr.size == 0:
        raise FG2UValueError(f"`{name}` must hold at least one meta-parameter, got an empty array")
    if num_params is not None and arr.size != num_params:
        raise FG2UValueError(
            f"`{name}` must have {num_params} entries ({source}), got {arr.size}")
    _check_all_finite(arr, name)
    return arr


def check_finite_vector(value, name: str, *, min_size: int = 1,
                        allow_scalar: bool = False) -> np.ndarray:
    """Return ``value`` as a fresh finite 1-D float64 array of at least ``min_size`` entries.

    ``allow_scalar=True`` reads a single number as a vector of one entry.

    Examples
    --------
    >>> check_finite_vector(2.0, "t_out", allow_scalar=True)
    array([2.])
    >>> check_finite_vector([[1.0]], "y0")
    Traceback (most recent call last):
    ...
    fg2u_zo.errors.FG2UValueError: `y0` must be 1-D, got shape (1, 1)
    """
    arr = _as_float_array(value, name, "an array of real numbers")
    if allow_scalar:
        arr = np.atleast_1d(arr)
    if arr.ndim != 1:
        raise FG2UValueError(f"`{name}` must be 1-D, got shape {arr.shape}")
    if arr.size < min_size:
        raise FG2UValueError(f"`{name}` must have at least {min_size} value(s), got {arr.size}")
    _check_all_finite(arr, name)
    return arr


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` after checking it is an integer ``>= minimum``.

    Examples
    --------
    >>> check_positive_int(3, "num_directions")
    3
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FG2UTypeError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise FG2UValueError(f"`{name}` must be >= {minimum}, got {value}")
    return int(value)


def check_positive_float(value, name: str, *, allow_zero: bool = False,
                         allow_none: bool = False):
    """Return ``value`` as a finite ``float`` that is ``> 0`` (or ``>= 0``).

    Parameters
    ----------
    allow_zero : bool
        Accept 0.
    allow_none : bool
        Accept and return None (an optional argument).

    Examples
    --------
    >>> check_positive_float(1, "lr")
    1.0
    >>> check_positive_float(-0.1, "step")
    Traceback (most recent call last):
    ...
    fg2u_zo.errors.FG2UValueError: `step` must be > 0, got -0.1
    """
    if value is None and allow_none:
        return None
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FG2UTypeError(f"`{name}` must be a number {bound}, got {value!r}")
    value = float(value)
    if not np.isfinite(value):
        raise FG2UValueError(f"`{name}` must be a finite number {bound}, got {value}")
    if value < 0 or (value == 0 and not allow_zero):
        raise FG2UValueError(f"`{name}` must be {bound}, got {value}")
    return value


def check_choice(value, name: str, choices) -> str:
    """Return ``value`` after checking it is one of the strings ``choices``; a near miss
    gets the closest choice suggested.

    Examples
    --------
    >>> check_choice("central", "scheme", ("forward", "central"))
    'central'
    >>> check_choice("forwards", "scheme", ("forward", "central"))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fg2u_zo.errors.FG2UValueError: `scheme` must be one of ...; did you mean 'forward'?
    """
    if not isinstance(value, str) or value not in choices:
        close = (difflib.get_close_matches(value, [str(c) for c in choices], n=1, cutoff=0.6)
                 if isinstance(value, str) else [])
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise FG2UValueError(
            f"`{name}` must be one of {', '.join(repr(c) for c in choices)}; got "
            f"{value!r}{hint}")
    return value
