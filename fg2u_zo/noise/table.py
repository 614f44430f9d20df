"""Reading the noise off the values along a line: the difference table and the
printed precision of the outputs.

ECnoise (Moré and Wild, *Estimating computational noise*, 2011): smooth variation
shrinks with each order of differencing, independent noise does not; the first
order of a plateau of the scaled RMS levels is the noise. Outputs printed with few
significant digits (or in single precision) are recognised from the values
themselves, and their noise is the unit of the last digit over ``sqrt(12)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TableDecision", "classify_table", "difference_levels", "decimal_digits",
           "binary_bits", "rounding_units", "unit_of_last_digit", "MAX_PRINTED_DIGITS",
           "MAX_PRINTED_BITS", "PRECISION_SAMPLE", "MAX_RELATIVE_CHANGE"]

#: Outputs whose values along the probe line all have at most this many significant
#: decimal digits (or mantissa bits) are taken as printed with that precision.
MAX_PRINTED_DIGITS = 14
#: The table must see noise above this relative level (a thousand ulps) before the
#: printed precision of the outputs is read: short decimals are otherwise a
#: coincidence of round evaluation points.
_PRINTED_MIN_RELATIVE = 1e3 * np.finfo(np.float64).eps
_TINY = np.finfo(np.float64).tiny
MAX_PRINTED_BITS = 44

#: Outputs examined for their printed precision (those carrying the most variation).
PRECISION_SAMPLE = 256

#: Two successive orders of the difference table agree when within this factor, and
#: ECnoise's plateau is three orders that pairwise do.
_PLATEAU_FACTOR = 4.0

#: The function may vary by at most this fraction of its magnitude across the line:
#: beyond, differences are not local (both papers' relative-change test).
MAX_RELATIVE_CHANGE = 0.1


def difference_levels(values):
    """Scaled RMS of each order of the difference table, and whether it changes sign.

    ``values`` has shape (m + 1, ...) (points along the line first). Returns
    ``levels`` and ``sign_change`` of shape (m, ...): ``levels[k - 1] = sqrt(gamma_k *
    mean((Delta^k f)**2))`` with ``gamma_k = (k!)**2 / (2k)!``, the factor that turns
    the mean square of k-th differences of i.i.d. noise back into its variance.
    """
    d = np.asarray(values, dtype=np.float64)
    m = d.shape[0] - 1
    gamma = 1.0
    levels, signs = [], []
    for k in range(1, m + 1):
        d = np.diff(d, axis=0)
        gamma *= 0.5 * k / (2 * k - 1)
        levels.append(np.sqrt(gamma * np.mean(d * d, axis=0)))
        signs.append((d.min(axis=0) < 0) & (d.max(axis=0) > 0))
    return np.array(levels), np.array(signs)


def decimal_digits(x: float) -> int:
    """Significant decimal digits of the shortest string that reads back as ``x``."""
    mantissa = repr(float(x)).lstrip("-").split("e")[0].replace(".", "")
    return len(mantissa.strip("0")) or 1


def binary_bits(x):
    """Significant bits of the mantissa of each (non-zero) double in ``x``."""
    mantissa, _ = np.frexp(np.abs(x))
    k = (mantissa * 2.0 ** 53).astype(np.int64)  # exact: a double has 53 bits
    return 53 - np.log2(k & -k).astype(np.int64)


def rounding_units(thetas, candidates):
    """Rounding unit of each output value, when the outputs were printed short.

    A simulator that writes ``%.6g`` hands back doubles that are the nearest to
    6-digit decimals, a single-precision code doubles with 24-bit mantissas. The
    shortest decimal string (resp. the mantissa) of every value of a moving output
    along the line is then at most that long, which a full-precision double almost
    never is for nine values in a row (a chance of about 1e-15 at 14 digits). The
    unit of the last digit ``q`` of each value follows, and its rounding error is
    uniform on ``[-q/2, q/2]``.

    Parameters
    ----------
    thetas : ndarray, shape (m + 1, M)
    candidates : ndarray of int
        The outputs to examine (the largest contributions, at most
        ``PRECISION_SAMPLE``).

    Returns
    -------
    kind : {"digits", "bits"} or None
    precision : ndarray, shape (len(candidates),)
        Digits (or bits) of each candidate, ``0`` where it looks full precision.
    """
    sub = thetas[:, candidates]
    nonzero = sub != 0
    digits = np.zeros(len(candidates), dtype=np.int64)
    for j in range(len(candidates)):
        values = sub[nonzero[:, j], j]
        for v in values:  # stop at the first full-precision value: the usual case
            digits[j] = max(digits[j], decimal_digits(v))
            if digits[j] > MAX_PRINTED_DIGITS:
                break
    bits = np.where(nonzero, binary_bits(np.where(nonzero, sub, 1.0)), 0).max(axis=0)
    dec = (digits > 0) & (digits <= MAX_PRINTED_DIGITS)
    binary = (bits > 0) & (bits <= MAX_PRINTED_BITS)
    if dec.mean() >= binary.mean() and dec.any():
        return "digits", np.where(dec, digits, 0)
    if binary.any():
        return "bits", np.where(binary, bits, 0)
    return None, digits * 0


def unit_of_last_digit(values, kind, precision):
    """``q(x)``: the unit of the last of ``precision`` digits (or bits) of each value."""
    values = np.abs(values)
    precision = np.broadcast_to(precision, values.shape)
    out = np.zeros_like(values)
    nz = values > 0
    if kind == "digits":
        out[nz] = 10.0 ** (np.floor(np.log10(values[nz])) - precision[nz] + 1)
    else:
        _, e = np.frexp(values[nz])
        out[nz] = np.ldexp(1.0, e - precision[nz])
    return out


@dataclass(frozen=True)
class TableDecision:
    """The decision on one difference table."""

    status: str
    noise: float = np.nan
    order: int = 0
    method: str = "table"
    output_noise: np.ndarray | None = None
    precision: int = 0
    levels: np.ndarray | None = None


def classify_table(f, scale, thetas, line):
    """The decision on one table of the examined scalar ``f`` and the outputs.

    Two ways to read the noise:

    * *printed precision* (``"digits"`` or ``"bits"``): when the outputs that carry
      most of the examined scalar's variation were printed short (see
      :func:`rounding_units`). Rounding errors along a line on which an output is
      nearly linear follow a regular pattern (the fractional parts of an arithmetic
      progression), not independent draws, and the difference table misjudges them
      (by up to a factor 10 on a fifth of random lines in our measurements). The
      unit ``q`` of the last digit is known instead, and a finite difference between
      points many units apart sees a uniform rounding error, ``q / sqrt(12)``.
    * *table* (ECnoise): the first order whose scaled level changes sign and agrees,
      within a factor 4, with the next two.
    """
    if np.ptp(f) > MAX_RELATIVE_CHANGE * scale:
        return TableDecision("too_large")
    d = np.diff(thetas, axis=0)
    moving = np.any(d != 0, axis=0)
    if not moving.any():
        return TableDecision("too_small")  # identical outputs: the spacing is below their resolution
    table = _table_decision(f, thetas)
    # Short printed values alone prove nothing: a full-precision model evaluated at
    # round numbers along a coordinate line returns short decimals too. Read the
    # printed precision only once the table has seen noise above round-off.
    if table.status == "too_small" or (
            table.status == "ok" and table.noise > _PRINTED_MIN_RELATIVE * max(scale, _TINY)):
        printed = _printed_precision(f, thetas, line)
        if printed is not None:
            return printed
    return table


def _printed_precision(f, thetas, line):
    """The :class:`TableDecision` read from the unit of the last printed digit, or None."""
    # Each output's share of the examined scalar, to which its rounding is relative.
    w = line.weights * np.mean(thetas * thetas, axis=0)
    nonzero = np.any(thetas != 0, axis=0)
    if not w.sum() > 0:
        w = nonzero.astype(np.float64)
    candidates = np.argsort(-w)[:min(PRECISION_SAMPLE, int(nonzero.sum()))]
    kind, precision = rounding_units(thetas, candidates)
    printed = precision > 0
    if kind is None or w[candidates[printed]].sum() < 0.5 * w[candidates].sum():
        return None
    # Outputs not examined are taken to be printed like the examined ones. Outputs
    # that did not move at this spacing are rounded all the same: a finite
    # difference with a longer step will see their rounding error.
    per_output = np.full(thetas.shape[1], int(precision[printed].max()))
    per_output[candidates] = np.where(printed, precision, 0)
    q = unit_of_last_digit(thetas, kind, np.maximum(per_output, 1)[None, :])
    out = np.sqrt(np.mean(q * q, axis=0) / 12.0)
    # Examined outputs at full precision: the floor of their table bounds their noise.
    full = np.zeros(thetas.shape[1], dtype=bool)
    full[candidates[~printed]] = True
    if full.any():
        out[full] = difference_levels(thetas[:, full])[0].min(axis=0)
    return TableDecision("ok", line.noise_from_outputs(out), 0, kind, out,
                  int(precision[printed].max()))


def _table_decision(f, thetas):
    """ECnoise's reading of the difference table of ``f``."""
    m = len(f) - 1
    if np.count_nonzero(np.diff(f) == 0) >= (m + 1) / 2:
        return TableDecision("too_small")  # half the values repeat (ECnoise's test)
    levels, signs = difference_levels(f)
    for k in range(m - 2):
        window = levels[k:k + 3]
        # The plateau: three successive orders agree, and the first of them changes
        # sign (smooth variation would keep a constant sign at a small spacing).
        if signs[k] and window.max() <= _PLATEAU_FACTOR * window.min():
            out = difference_levels(thetas)[0][k]
            return TableDecision("ok", float(levels[k]), k + 1, "table", out, levels=levels)
    if np.all(levels[-3:] == 0):
        # Exactly representable low-degree polynomial: no noise at all.
        return TableDecision("exact", 0.0, 0, "table", np.zeros(thetas.shape[1]))
    # No plateau: smooth variation dominates every order. The smallest level bounds
    # the noise from above.
    return TableDecision("too_large", float(levels.min()))
