"""Argument checks shared by the public entry points.

Each check raises a library error that is also the matching builtin and names
the argument and the fix, as scipy and jaxopt do.
"""

from __future__ import annotations

import numbers

import numpy as np

from .errors import FG2UTypeError, FG2UValueError


def as_generator(rng) -> np.random.Generator:
    """Return a ``numpy.random.Generator`` from ``rng`` (None, an int seed or a Generator)."""
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


def check_phi(phi, num_params: int | None = None, name: str = "phi") -> np.ndarray:
    """Return ``phi`` as a fresh 1-D float64 array after checking shape and finiteness."""
    try:
        import torch
        if isinstance(phi, torch.Tensor):
            phi = phi.detach().cpu().numpy()
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    if isinstance(phi, (str, bytes)) or phi is None:
        raise FG2UTypeError(f"`{name}` must be a 1-D array of floats, got {type(phi).__name__}")
    try:
        arr = np.array(phi, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FG2UTypeError(
            f"`{name}` must be a 1-D array of floats, got {type(phi).__name__}: {exc}") from None
    if arr.ndim != 1:
        raise FG2UValueError(
            f"`{name}` must be 1-D with shape (N,), got shape {arr.shape}; "
            f"flatten it with np.ravel({name}) and reshape inside the solver")
    if arr.size == 0:
        raise FG2UValueError(f"`{name}` must hold at least one meta-parameter, got an empty array")
    if num_params is not None and arr.size != num_params:
        raise FG2UValueError(
            f"`{name}` must have length {num_params} (the problem's num_params), got {arr.size}")
    bad = ~np.isfinite(arr)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise FG2UValueError(
            f"`{name}` must be finite; entries {idx[:10].tolist()} are {arr[idx[:3]].tolist()}")
    return arr


def check_positive_int(value, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise FG2UTypeError(f"`{name}` must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise FG2UValueError(f"`{name}` must be >= {minimum}, got {value}")
    return int(value)


def check_positive_float(value, name: str, *, allow_zero: bool = False, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FG2UTypeError(f"`{name}` must be a positive number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise FG2UValueError(f"`{name}` must be {'>= 0' if allow_zero else '> 0'}, got {value}")
    return value


def check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise FG2UValueError(
            f"`{name}` must be one of {', '.join(repr(c) for c in choices)}; got {value!r}")
    return value
