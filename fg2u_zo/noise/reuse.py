"""Reusing a noise estimate: the step it gives at a new phi, the checks on a
``noise=`` argument, the refresh rule of an outer loop."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..errors import FG2UTypeError, FG2UValueError
from .noise_estimate import NoiseEstimate
from .steps import default_step, max_step, min_step, step_scale

__all__ = ["auto_step", "check_noise_estimate", "difference_ratio", "noise_needs_refresh",
           "MIN_DIFFERENCE_TO_NOISE"]

#: A kept noise estimate is refreshed when the estimate's differences fall below this
#: many times the noise. Why 3: a difference ``r`` times its noise carries a relative
#: noise error ``sqrt(2) / r`` per direction, which adds ``2 N / ((N + 1) r**2)`` ~
#: ``2 / r**2`` to the relative variance of the Monte-Carlo gradient (whatever the
#: number of directions, since both terms average down alike): at ``r = 3`` the error
#: grows by 10% at most, and re-probing (8 to 40 solves) cannot buy more. Below it,
#: as when the curvature or the noise changed since the probe, the step is drowned.
MIN_DIFFERENCE_TO_NOISE = 3.0


def auto_step(noise: NoiseEstimate, phi: np.ndarray, scheme: str) -> float:
    """The step ``step="auto"`` takes at ``phi`` from a (possibly older) estimate.

    The noise-optimal step when the probe found noise (clipped to the current
    ``[min_step(phi), max_step(phi)]``), else the scale-aware default at ``phi``.
    """
    if noise.status == "ok":
        return float(min(max(noise.step(scheme), min_step(phi)), max_step(phi)))
    return default_step(phi, scheme)


def check_noise_estimate(noise, num_params: int, quantity: str):
    """Validate a ``noise=`` argument handed to an estimator for reuse."""
    if noise is None:
        return None
    if not isinstance(noise, NoiseEstimate):
        raise FG2UTypeError(
            f"`noise` must be a fg2u_zo.NoiseEstimate (from estimate_noise or a previous "
            f"MetaGradient.noise) or None, got {type(noise).__name__}")
    if noise.num_params != num_params:
        raise FG2UValueError(
            f"`noise` was measured with N={noise.num_params} meta-parameters, but phi has "
            f"{num_params}; pass noise=None to measure it again")
    if noise.quantity != quantity:
        what = {"inner": "the projection <grad_theta f, S> (FG2UZO)",
                "value": "the objective F (BlackBoxES)"}
        raise FG2UValueError(
            f"`noise` was measured on {what[noise.quantity]}, but this estimator "
            f"differences {what[quantity]}; estimate it with "
            f"estimate_noise(..., through={quantity!r}) or pass noise=None")
    return noise


def difference_ratio(noise: NoiseEstimate, differences, g_theta=None) -> NoiseEstimate:
    """The copy of ``noise`` an estimate reports, with its ``difference_to_noise``.

    Parameters
    ----------
    noise : NoiseEstimate
    differences : array_like
        The estimate's differences of the examined scalar, one per direction.
    g_theta : ndarray, optional
        The outer gradient ``grad_theta f`` at the estimate's base point (projection
        estimates). The noise of the projection ``<g, S>`` scales with ``g``: a probe
        made where the residual was large overstates it once the outer loop nears a
        fit, and the differences would look drowned when only ``g`` shrank. With the
        per-output noise of the probe the noise is taken at the current ``g``,
        ``sqrt(sum_j (g_j sigma_j)^2)``.
    """
    d = np.abs(np.asarray(differences, dtype=np.float64))
    d = d[np.isfinite(d)]
    if d.size == 0 or not np.isfinite(noise.noise):
        return noise
    level = noise.noise
    out = noise.output_noise
    if (g_theta is not None and noise.quantity == "inner" and noise.status == "ok"
            and out is not None and out.size == np.size(g_theta)
            and np.all(np.isfinite(out))):
        level = float(np.sqrt(np.sum((np.ravel(g_theta) * out) ** 2)))
    # The root mean square, not the median: with a few directions one of them nearly
    # orthogonal to the gradient makes the median dip and would trigger a re-probe;
    # the RMS estimates the size of a difference along a typical direction.
    rms = float(np.sqrt(np.mean(d * d)))
    ratio = rms / level if level > 0 else np.inf
    return replace(noise, difference_to_noise=ratio)


def noise_needs_refresh(previous, result=None, *, phi=None, age=None, max_age=None,
                        min_age=1, scale_change=2.0,
                        min_difference_to_noise=MIN_DIFFERENCE_TO_NOISE) -> bool:
    """Whether a kept :class:`NoiseEstimate` should be measured again.

    Meant for an outer loop that passes ``noise=`` to its estimator: measure once, reuse
    (no extra solves), and refresh when this returns True. The reasons, in order:

    1. there is no estimate yet (``previous is None``) -> True;
    2. ``age`` (outer steps since it was measured) is below ``min_age`` -> False
       (never re-probe at every step, even when the diagnostics below stay poor, e.g.
       near a stationary point where the differences are small by nature);
    3. ``age >= max_age`` -> True (a periodic refresh);
    4. phi's size changed, or its scale ``max(1, rms(phi))`` moved by more than a
       factor ``scale_change`` -> True (steps are lengths in phi-space);
    5. the last probe failed or saw no change of the outputs ("failed", "too_small")
       -> True;
    6. the latest estimate's finite differences were within ``min_difference_to_noise``
       times the noise (``result.noise.difference_to_noise``) -> True: the step is
       drowned in noise, as happens when the curvature or the noise changed since.
       Above it the estimate is stable and kept (see :data:`MIN_DIFFERENCE_TO_NOISE`).

    Parameters
    ----------
    previous : NoiseEstimate or None
        The estimate in use.
    result : MetaGradient, optional
        The latest estimate made with it (its ``noise`` carries the differences'
        size).
    phi : array_like, optional
        The current meta-parameters.
    age, max_age, min_age : int, optional
        Outer steps since ``previous`` was measured, and the bounds described above.
    scale_change : float
        Allowed factor of change of phi's scale.
    min_difference_to_noise : float
        Smallest acceptable ``difference_to_noise`` (RMS ``|difference| / noise``);
        default :data:`MIN_DIFFERENCE_TO_NOISE` (3).

    Returns
    -------
    bool

    Examples
    --------
    >>> import numpy as np, fg2u_zo as fz
    >>> def solver(phi):
    ...     return np.round(np.sin(phi) + 2.0, 8)
    >>> problem = fz.BilevelProblem(inner=solver,
    ...                             outer=lambda theta, phi: (theta ** 2).sum())
    >>> phi = np.array([0.1, 0.2])
    >>> est = fz.FG2UZO(num_directions=2)
    >>> g = est.estimate(problem, phi, rng=0)          # probes the noise
    >>> g2 = est.estimate(problem, phi, rng=1, noise=g.noise)   # reuses it
    >>> g2.nfev == 2 * 2 + 1
    True
    >>> fz.noise_needs_refresh(g.noise, g2, phi=phi, age=1)
    False
    >>> fz.noise_needs_refresh(g.noise, g2, phi=10 * phi + 5, age=1)
    True
    """
    if previous is None:
        return True
    if not isinstance(previous, NoiseEstimate):
        raise FG2UTypeError(
            f"`previous` must be a NoiseEstimate or None, got {type(previous).__name__}")
    if age is not None and age < min_age:
        return False
    if age is not None and max_age is not None and age >= max_age:
        return True
    if phi is not None:
        phi = np.asarray(phi, dtype=np.float64).ravel()
        if phi.size != previous.num_params:
            return True
        ratio = step_scale(phi) / previous.phi_scale
        if not 1.0 / scale_change <= ratio <= scale_change:
            return True
    if previous.status in ("failed", "too_small"):
        return True
    latest = getattr(result, "noise", None) if result is not None else None
    if isinstance(latest, NoiseEstimate) and latest.difference_to_noise is not None:
        if latest.difference_to_noise < min_difference_to_noise:
            return True
    return False
