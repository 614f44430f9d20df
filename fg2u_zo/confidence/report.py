"""The text table of an :class:`~fg2u_zo.Uncertainty` (its ``str``, and the CLI summary)."""

from __future__ import annotations

import numpy as np

__all__ = ["report"]


def _num(x) -> str:
    if np.isnan(x):
        return "nan"
    if np.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.6g}"


def report(unc, *, corr_threshold=0.9) -> str:
    """Names, values, standard errors and intervals, the strong correlations and the
    identifiability findings, as lines of text."""
    conf = f"{100 * unc.confidence:g}%"
    how = (f"Student's t, {unc.dof} dof" if unc.dof is not None else "normal quantile")
    head = f"uncertainty ({unc.method}, {unc.loss.replace('_', ' ')}, {conf}, {how}"
    if unc.noise_sd is not None:
        head += f", noise sd {unc.noise_sd:.4g}"
    head += f"; {unc.nfev} solves)"
    names = [n + ("" if k == "identity" else f" ({k})")
             for n, k in zip(unc.names, unc.transform.kinds)]
    width = max(9, *(len(n) for n in names))
    lines = [head, f"  {'parameter':<{width}} {'value':>13} {'stderr':>12}  {conf} interval"]
    for i, name in enumerate(names):
        lo, hi = unc.interval[i]
        ends = (f"[{_num(lo)}, {_num(hi)}]"
                + (" open" if unc.open[i].any() else ""))
        lines.append(f"  {name:<{width}} {_num(unc.phi[i]):>13} {_num(unc.stderr[i]):>12}  "
                     f"{ends}")
    n = unc.phi.size
    strong = [(i, j, unc.corr[i, j]) for i in range(n) for j in range(i + 1, n)
              if np.isfinite(unc.corr[i, j]) and abs(unc.corr[i, j]) > corr_threshold]
    if strong:
        lines.append(f"  correlations above {corr_threshold:g}: " + ", ".join(
            f"{unc.names[i]}–{unc.names[j]} {c:+.3f}" for i, j, c in strong))
    if any(k != "identity" for k in unc.transform.kinds):
        lines.append("  intervals of transformed parameters are computed in z and mapped "
                     "back (asymmetric in phi)")
    lines.append("  singular values (whitened, in z): "
                 + ", ".join(f"{s:.3g}" for s in unc.singular_values)
                 + f"; condition number {unc.condition_number:.3g}")
    for finding in unc.identifiability:
        lines.append(f"  ! {finding}")
    return "\n".join(lines)
