"""Finite-difference step sizes.

The step is the Euclidean length ``h`` of the perturbation in phi-space: a direction
``v`` is evaluated at ``phi + h * v / ||v||`` and the directional derivative is
recovered as ``||v|| * (S(phi + h u) - S(phi)) / h``. This equals the textbook
``(S(phi + mu v) - S(phi)) / mu`` with ``mu = h / ||v||``, but keeps the meaning of the
step independent of the direction family and of N.
"""

from __future__ import annotations

import numbers

import numpy as np

from .errors import FG2UTypeError, FG2UValueError

__all__ = ["default_step", "check_step"]

_EPS = np.finfo(np.float64).eps

#: Relative step that balances truncation and rounding error for a function known
#: to full double precision: sqrt(eps) forward (error O(h)), eps^(1/3) central (O(h^2)).
RELATIVE_STEP = {"forward": _EPS ** 0.5, "central": _EPS ** (1.0 / 3.0)}


def default_step(phi: np.ndarray, scheme: str) -> float:
    """Scale-aware default step: ``RELATIVE_STEP[scheme] * max(1, rms(phi))``."""
    scale = max(1.0, float(np.linalg.norm(phi)) / np.sqrt(phi.size))
    return RELATIVE_STEP[scheme] * scale


def check_step(step):
    """Validate a ``step=`` argument: ``"auto"`` or a positive finite float."""
    if isinstance(step, str):
        if step != "auto":
            raise FG2UValueError(f"`step` must be 'auto' or a positive number, got {step!r}")
        return step
    if isinstance(step, bool) or not isinstance(step, numbers.Real):
        raise FG2UTypeError(f"`step` must be 'auto' or a positive number, got {step!r}")
    if not np.isfinite(step) or step <= 0:
        raise FG2UValueError(f"`step` must be > 0, got {step}")
    return float(step)
