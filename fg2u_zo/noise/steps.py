"""Finite-difference step sizes.

The step is the Euclidean length ``h`` of the perturbation in phi-space: a direction
``v`` is evaluated at ``phi + h * v / ||v||`` and the directional derivative is
recovered as ``||v|| * (S(phi + h u) - S(phi)) / h``. This equals the textbook
``(S(phi + mu v) - S(phi)) / mu`` with ``mu = h / ||v||``, but keeps the meaning of the
step independent of the direction family and of N.

Two ways to pick ``h``:

* :func:`default_step`, for outputs known to full double precision: the classical
  ``sqrt(eps)`` (forward) and ``eps**(1/3)`` (central) relative steps.
* :func:`noise_optimal_step`, for noisy outputs (``step="auto"``): the step that
  balances the truncation error against the noise error, given the noise level and
  the magnitude of the second (forward) or third (central) derivative along the
  direction, both measured by :func:`fg2u_zo.estimate_noise`.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..errors import FG2UTypeError, FG2UValueError

__all__ = ["default_step", "check_step", "step_scale", "max_step", "min_step",
           "noise_optimal_step", "predicted_fd_error"]

_EPS = np.finfo(np.float64).eps

#: Relative step that balances truncation and rounding error for a function known
#: to full double precision: sqrt(eps) forward (error O(h)), eps^(1/3) central (O(h^2)).
RELATIVE_STEP = {"forward": _EPS ** 0.5, "central": _EPS ** (1.0 / 3.0)}

#: Largest step ``step="auto"`` takes, relative to :func:`step_scale`: where the
#: measured curvature is ~0 the noise-optimal step would be unbounded, but a step
#: of a tenth of the parameters' scale is already a non-local probe.
MAX_RELATIVE_STEP = 0.1


def step_scale(phi: np.ndarray) -> float:
    """The scale steps are measured against: ``max(1, rms(phi))``.

    The root mean square (rather than the norm) keeps the per-coordinate size of
    a perturbation independent of N; the floor at 1 keeps ``phi ~ 0`` from
    asking for vanishing steps.
    """
    return max(1.0, float(np.linalg.norm(phi)) / np.sqrt(phi.size))


def default_step(phi: np.ndarray, scheme: str) -> float:
    """Scale-aware default step: ``RELATIVE_STEP[scheme] * max(1, rms(phi))``."""
    return RELATIVE_STEP[scheme] * step_scale(phi)


def max_step(phi: np.ndarray) -> float:
    """Largest automatic step: ``MAX_RELATIVE_STEP * max(1, rms(phi))``."""
    return MAX_RELATIVE_STEP * step_scale(phi)


def min_step(phi: np.ndarray) -> float:
    """Smallest automatic step: about a thousand units in the last place of ``phi``.

    Below it ``phi + h u`` rounds to a point whose actual displacement differs from
    ``h u`` by more than 0.1%, and the quotient divides by the wrong length.
    """
    return 1024.0 * _EPS * max(1.0, float(np.max(np.abs(phi))))


def noise_optimal_step(noise: float, derivative: float, scheme: str) -> float:
    """The step that minimises the RMS error of a noisy finite difference.

    With independent noise of standard deviation ``noise`` on each evaluation:

    * forward, ``(f(h) - f(0)) / h``: error ``|f''| h / 2`` (truncation) plus noise
      of RMS ``sqrt(2) noise / h``; the sum of squares is smallest at
      ``h = 8**(1/4) sqrt(noise / |f''|)`` (Moré and Wild's forward step);
    * central, ``(f(h) - f(-h)) / (2h)``: truncation ``|f'''| h**2 / 6``, noise
      ``noise / (sqrt(2) h)``; smallest at ``h = (3 noise / |f'''|)**(1/3)``.

    Parameters
    ----------
    noise : float
        Standard deviation of the noise of one evaluation (>= 0).
    derivative : float
        ``|f''|`` (forward) or ``|f'''|`` (central) along the unit direction.
    scheme : {"forward", "central"}

    Returns
    -------
    float
        The step; ``inf`` when ``derivative`` is 0 (clip it, e.g. with
        :func:`max_step`), 0 when ``noise`` is 0.

    Examples
    --------
    >>> round(noise_optimal_step(1e-8, 1.0, "forward"), 6)
    0.000168
    >>> round(noise_optimal_step(1e-9, 2.0, "central"), 6)
    0.001145
    """
    if derivative == 0.0:
        return np.inf
    if scheme == "forward":
        return float(8.0 ** 0.25 * math.sqrt(noise / derivative))
    return float((3.0 * noise / derivative) ** (1.0 / 3.0))


def predicted_fd_error(step: float, noise: float, derivative: float, scheme: str) -> float:
    """RMS error of a finite-difference directional derivative taken with ``step``.

    ``sqrt(truncation**2 + noise_error**2)`` with the terms of
    :func:`noise_optimal_step`; at the optimal step it is about
    ``1.19 sqrt(noise |f''|)`` (forward) and ``0.60 noise**(2/3) |f'''|**(1/3)``
    (central).

    Examples
    --------
    >>> h = noise_optimal_step(1e-8, 1.0, "forward")
    >>> round(predicted_fd_error(h, 1e-8, 1.0, "forward") / 1e-4, 3)
    1.189
    """
    if scheme == "forward":
        truncation, rounding = derivative * step / 2.0, np.sqrt(2.0) * noise / step
    else:
        truncation, rounding = derivative * step ** 2 / 6.0, noise / (np.sqrt(2.0) * step)
    return float(np.hypot(truncation, rounding))


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
