"""What the user is told about noise: the warnings, once per run, at the user's line.

Two warnings, each with the fix:

* :class:`~fg2u_zo.NoiseWarning` from the noise probe: the outputs never changed along
  the probe line, or the predicted relative error of one finite difference at the
  chosen step exceeds :data:`WARNING_THRESHOLD`;
* :class:`~fg2u_zo.ZeroDifferenceWarning` from an estimate whose every finite
  difference was zero or below the output resolution (a fixed step below the
  solver's precision).

A warning points at the first frame outside the package (the user's call of
``estimate``, ``minimize`` ...), not at a library line. A caller that estimates
repeatedly (an outer loop) passes the same set as ``warned=`` to every call: each
kind of warning is then shown once, and its key (:data:`NOISE_PRECISION`,
:data:`NOISE_NO_CHANGE`, :data:`ZERO_DIFFERENCES`) is added to the set.
"""

from __future__ import annotations

import warnings

from ..errors import FG2UTypeError, NoiseWarning, ZeroDifferenceWarning, user_stacklevel

__all__ = ["WARNING_THRESHOLD", "WARNING_DIGITS", "FLAT_FRACTION", "NOISE_PRECISION",
           "NOISE_NO_CHANGE",
           "ZERO_DIFFERENCES", "check_warned", "warn_once", "warn_about_noise",
           "warn_zero_differences", "printed_short", "user_stacklevel"]

#: NoiseWarning is raised when the predicted relative error of one finite difference
#: at the chosen step exceeds this (1%): below it the gradient's error is dominated by
#: the Monte-Carlo spread of a few random directions (relative standard error
#: ``sqrt((N + 1) / b)``, above 0.3 for any b < 10 N), and the warning would be noise.
WARNING_THRESHOLD = 1e-2

#: Outputs printed with at most this many significant digits (or in single precision)
#: are named as the cause in the warning: the default of C++ and FreeFem++ streams.
WARNING_DIGITS = 7

#: Keys of the ``warned`` set, one per kind of warning.
NOISE_PRECISION = "noise_precision"
NOISE_NO_CHANGE = "noise_no_change"
ZERO_DIFFERENCES = "zero_differences"

def check_warned(warned):
    """Validate a ``warned=`` argument: None or a set (mutated in place)."""
    if warned is not None and not isinstance(warned, set):
        raise FG2UTypeError(
            f"`warned` must be a set (shared across the calls of one run) or None, got "
            f"{type(warned).__name__}")
    return warned


def warn_once(message: str, category, key: str, warned=None) -> bool:
    """Warn at the user's line unless ``key`` is in ``warned``; record it there.

    Returns whether the warning was issued.
    """
    if warned is not None:
        if key in warned:
            return False
        warned.add(key)
    # Computed here, so the level counts this frame too: the user's frame is the first
    # outside the package whatever the depth of the library call chain.
    warnings.warn(message, category, stacklevel=user_stacklevel())
    return True


def printed_short(est) -> bool:
    """Outputs printed with single precision or fewer digits (the 6 of a C stream)."""
    return ((est.method == "digits" and est.output_precision <= WARNING_DIGITS)
            or (est.method == "bits" and est.output_precision <= 24))


#: A probe line on which at least this fraction of neighbouring points gave exactly the
#: same scalar (and the others not) is read as a piecewise-constant response: a smooth
#: response with full-precision outputs gives no exact tie at all.
FLAT_FRACTION = 0.25


def warn_about_noise(est, scheme, warned=None) -> bool:
    """The probe's NoiseWarning for ``est`` (a NoiseEstimate), if it calls for one.

    The advice follows the estimate's own predictions: another scheme is recommended
    only when it is predicted to do better; a response that is piecewise constant in phi
    (exact ties between neighbouring probe points with full-precision outputs) is named
    as such, with what works there, rather than blamed on printed digits.
    """
    if est.flat_fraction >= FLAT_FRACTION and not printed_short(est):
        return warn_once(
            f"the solver's response is not smooth at the scale of the probe "
            f"(spacing {est.spacing:.1e}): between {est.flat_fraction:.0%} of neighbouring "
            "points along the probe line its output did not change at all, and between "
            "the others it jumped (a piecewise-constant response, as of a tree model's "
            "split thresholds or an integer setting). Finite differences then see jumps, "
            "not a gradient. What works: an estimator that smooths over the jumps' scale "
            "(fz.BlackBoxES with a step of that size or larger), or, for a handful of such "
            "parameters, a Bayesian optimizer; this library's estimates pay off for many "
            "continuous parameters of a smooth response.", NoiseWarning, NOISE_PRECISION,
            warned)
    if est.status == "too_small":
        return warn_once(
            f"the inner solver's output did not change along the noise probe line even at "
            f"spacing {est.spacing:.1e} ({len(est.attempts)} tries): its printed precision "
            "is too coarse for finite differences, or it does not depend on phi. Print "
            "more digits or tighten the solver's tolerance; falling back to the default "
            f"step {est.step(scheme):.1e}.", NoiseWarning, NOISE_NO_CHANGE, warned)
    if est.status != "ok":
        return False
    rel = est.relative_error(scheme)
    if not rel > WARNING_THRESHOLD:
        return False
    short = printed_short(est)
    if short:
        what = (f"the solver's output is printed with {est.output_precision} significant "
                + ("digits" if est.method == "digits" else "bits (single precision)"))
    else:
        what = "noise in the solver's output"
    advice = ["print more significant digits in the solver's output (17 is exact)"
              if short else "print more significant digits in the solver's output",
              "tighten its convergence tolerance"]
    other = "central" if scheme == "forward" else "forward"
    if est.relative_error(other) < rel:  # only what the prediction supports
        advice.append(f"use scheme={other!r} (predicted {est.relative_error(other):.1e})")
    return warn_once(
        f"{what}, which limits the finite-difference gradient: the differenced quantity "
        f"carries ~{est.digits:.1f} significant digits (noise {est.noise:.1e}, relative "
        f"{est.relative_noise:.1e}), so {scheme} differences at the best step "
        f"h={est.step(scheme):.2e} have a predicted relative error of {rel:.1e}. To fix: "
        + "; ".join(advice) + ".", NoiseWarning, NOISE_PRECISION, warned)


def warn_zero_differences(step, scheme, num_directions, resolution, suggested_step,
                          warned=None) -> bool:
    """ZeroDifferenceWarning: no finite difference of an estimate rose above the
    output resolution, so its gradient carries no information on ``J_S``.

    Parameters
    ----------
    step : float
        The step used.
    scheme : str
    num_directions : int
        Directions that entered the estimate (all of them degenerate).
    resolution : str
        What the differences were compared with, in words.
    suggested_step : float
        A step whose differences would rise above that resolution.
    """
    return warn_once(
        f"every finite difference of the estimate ({num_directions} {scheme} "
        f"direction(s), step {step:.3g}) was {resolution}: the step is below the "
        "resolution of the solver's output, so the gradient says nothing about the "
        "inner solver (MetaGradient.degenerate is True). To fix: use step='auto' (it "
        f"measures the output's noise and picks the step), or a step of at least "
        f"~{suggested_step:.1e}.", ZeroDifferenceWarning, ZERO_DIFFERENCES, warned)
