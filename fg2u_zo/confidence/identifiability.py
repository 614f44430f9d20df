"""What the data leave unconstrained, in words: the :class:`~fg2u_zo.IdentifiabilityWarning`.

Two findings, each naming the parameters and the combination (a direction of the
run's variable ``z``, as ``0.71·log kappa − 0.70·log hloss``):

* a combination is *unconstrained*: the precision is singular within the accuracy of
  the finite differences (see :mod:`.covariance`), so its variance is infinite;
* a parameter is *poorly constrained*: its interval is open (the profile never
  reached the threshold), or, for a ``"log"`` parameter (a positive scale, where a
  decade means something whatever the units), its ends differ by more than a factor
  10; the combination named is the least constrained direction of the spectrum.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..errors import IdentifiabilityWarning
from ..noise.advice import user_stacklevel
from .covariance import INVOLVED

__all__ = ["combination", "label", "findings", "warn_findings", "DECADE", "SHOWN"]

#: An interval spans more than a decade when its ends (of one sign) differ by this factor.
DECADE = 10.0
#: Components of a direction smaller than this are left out of its description.
SHOWN = 0.05


def label(name, kind) -> str:
    """The name of a coordinate of ``z``: ``"log k"``, ``"logit p"`` or ``"k"``."""
    return name if kind == "identity" else f"{kind} {name}"


def combination(direction, names, kinds) -> str:
    """``0.71·log a − 0.70·log b``: the direction's components above :data:`SHOWN`,
    largest first, the largest positive.

    Examples
    --------
    >>> combination([0.6, -0.8, 0.01], ["a", "b", "c"], ["log", "log", "identity"])
    '0.80·log b − 0.60·log a'
    """
    v = np.asarray(direction, dtype=np.float64)
    order = np.argsort(-np.abs(v), kind="stable")
    if v[order[0]] < 0:
        v = -v
    terms = []
    for i in order:
        if abs(v[i]) < SHOWN and terms:
            break
        coef = f"{abs(v[i]):.2f}·{label(names[i], kinds[i])}"
        if not terms:
            terms.append(coef if v[i] >= 0 else f"−{coef}")
        else:
            terms.append(("+ " if v[i] >= 0 else "− ") + coef)
    return " ".join(terms)


def _spans_decade(lo, hi) -> bool:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return not (np.isnan(lo) or np.isnan(hi))
    if lo > 0:
        return hi > DECADE * lo
    if hi < 0:
        return lo < DECADE * hi
    return False


def findings(spectrum, interval, is_open, names, kinds, confidence, rcond) -> list:
    """The messages (one per finding); empty when the data constrain everything.

    Parameters
    ----------
    spectrum : Spectrum
    interval : ndarray, shape (N, 2)
        The intervals in ``phi``.
    is_open : ndarray of bool, shape (N, 2)
    names, kinds : sequence of str
    confidence : float
    rcond : float
        The relative singular value below which a direction is unconstrained.
    """
    out = []
    involved = np.zeros(len(names), dtype=bool)
    s = spectrum.singular_values
    for w in spectrum.unconstrained.T:
        who = np.flatnonzero(np.abs(w) > INVOLVED)
        involved[who] = True
        out.append(
            f"the data do not constrain {combination(w, names, kinds)}: the precision is "
            f"singular along it within the finite-difference accuracy (rcond {rcond:.1e}), "
            f"so {_and(names[i] for i in who)} "
            f"{'has' if who.size == 1 else 'have'} infinite standard errors; fix one of "
            "them, reparametrize, or add data that tell them apart")
    loose = [i for i in range(len(names)) if not involved[i]
             and (is_open[i].any() or (kinds[i] == "log" and _spans_decade(*interval[i])))]
    if loose:
        weakest = spectrum.directions[:, -1]
        cond = spectrum.condition_number
        ends = "; ".join(
            f"{names[i]} in [{interval[i, 0]:.3g}, {interval[i, 1]:.3g}]"
            + (" (open: the data do not bound it)" if is_open[i].any()
               else " (more than a decade)") for i in loose)
        out.append(
            f"the data barely constrain {_and(names[i] for i in loose)}: {ends} "
            f"({100 * confidence:g}% intervals); the least constrained combination is "
            f"{combination(weakest, names, kinds)} (singular value {s[-1]:.3g} against "
            f"{s[0]:.3g}, condition number {cond:.3g})")
    return out


def _and(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def warn_findings(messages) -> None:
    """One :class:`~fg2u_zo.IdentifiabilityWarning` with every finding, at the user's line."""
    if messages:
        warnings.warn("identifiability: " + "; ".join(messages), IdentifiabilityWarning,
                      stacklevel=user_stacklevel())
