"""The figure of an :class:`~fg2u_zo.Uncertainty` (optional extra ``plot``: matplotlib).

Top row: the correlation matrix, then the joint confidence regions of the most
correlated pairs (the ellipse of the Gaussian approximation in ``z``, at the
chi-square(2) quantile of the confidence level, mapped to ``phi``: curved for a
transformed parameter). Bottom row: each parameter's statistic against its value:
the quadratic of the linear approximation, ``((z - z_hat) / se)**2``, the profile's
points (``method="profile"``), the threshold and the interval's ends. Built on
:class:`matplotlib.figure.Figure` with the Agg canvas, without pyplot.
"""

from __future__ import annotations

import os

import numpy as np
from scipy import stats

__all__ = ["uncertainty_figure", "plot_uncertainty", "MAX_PAIRS", "MAX_PROFILES"]

#: Most pairs drawn as confidence regions (the most correlated ones).
MAX_PAIRS = 3
#: Most parameters whose profiles are drawn (the first ones).
MAX_PROFILES = 4


def _figure_classes():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'fg2u-zo[plot]'") from None
    return Figure, FigureCanvasAgg


def _pairs(unc):
    n = unc.phi.size
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)
             if np.isfinite(unc.corr[i, j])]
    pairs.sort(key=lambda p: -abs(unc.corr[p]))
    return pairs[:MAX_PAIRS]


def _ellipse(unc, i, j, points=181):
    """The boundary of the joint confidence region of ``(phi_i, phi_j)``."""
    C = unc.cov_z[np.ix_([i, j], [i, j])]
    radius = np.sqrt(stats.chi2.ppf(unc.confidence, 2))
    lam, V = np.linalg.eigh(C)
    t = np.linspace(0.0, 2.0 * np.pi, points)
    circle = np.vstack([np.cos(t), np.sin(t)]) * radius
    offsets = (V * np.sqrt(np.clip(lam, 0.0, None))) @ circle
    z = np.repeat(unc.z[:, None], points, axis=1)
    z[i] += offsets[0]
    z[j] += offsets[1]
    phi = np.array([unc.transform.forward(col) for col in z.T])
    return phi[:, i], phi[:, j]


def _quadratic(unc, k):
    """The linear approximation's statistic ``((z - z_hat) / se)**2`` of parameter ``k``
    over 1.5 times its interval, against ``phi_k``; None when ``se`` is infinite."""
    se = np.sqrt(unc.cov_z[k, k])
    if not np.isfinite(se) or se == 0:
        return None
    dz = np.linspace(-1.5, 1.5, 61) * unc.quantile * se
    z = np.repeat(unc.z[None, :], dz.size, axis=0)
    z[:, k] += dz
    values = np.array([unc.transform.forward(row)[k] for row in z])
    return values, (dz / se) ** 2


def uncertainty_figure(unc, *, title=None):
    """Build the figure of an :class:`~fg2u_zo.Uncertainty`.

    Parameters
    ----------
    unc : Uncertainty
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        With an Agg canvas attached.

    Examples
    --------
    >>> import numpy as np, fg2u_zo as fz
    >>> A = np.column_stack([np.ones(10), np.linspace(0, 1, 10)])
    >>> y = A @ np.array([1.0, 2.0]) + 0.1 * np.random.default_rng(0).standard_normal(10)
    >>> problem = fz.BilevelProblem(inner=lambda phi: A @ phi, outer=fz.LeastSquares(y))
    >>> unc = fz.uncertainty(np.linalg.lstsq(A, y, rcond=None)[0], problem, rng=0)
    >>> fig = uncertainty_figure(unc)
    >>> [ax.get_title() for ax in fig.axes if ax.get_title()]
    ['correlation', 'phi[0] and phi[1]']
    """
    Figure, FigureCanvasAgg = _figure_classes()
    n = unc.phi.size
    pairs = _pairs(unc)
    shown = list(range(min(n, MAX_PROFILES)))
    cols = max(1 + len(pairs), len(shown))
    fig = Figure(figsize=(4.0 * cols, 7.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, cols)

    ax = fig.add_subplot(grid[0, 0])
    image = ax.imshow(np.nan_to_num(unc.corr, nan=0.0), vmin=-1.0, vmax=1.0, cmap="RdBu_r")
    ax.set_xticks(range(n), unc.names, rotation=45, ha="right")
    ax.set_yticks(range(n), unc.names)
    if n <= 8:
        for a in range(n):
            for b in range(n):
                text = "nan" if np.isnan(unc.corr[a, b]) else f"{unc.corr[a, b]:.2f}"
                ax.text(b, a, text, ha="center", va="center", fontsize=8)
    ax.set_title("correlation")
    fig.colorbar(image, ax=ax, shrink=0.8)

    conf = f"{100 * unc.confidence:g}%"
    for col, (i, j) in enumerate(pairs, start=1):
        ax = fig.add_subplot(grid[0, col])
        x, y = _ellipse(unc, i, j)
        ax.plot(x, y, linewidth=1.2, label=f"{conf} region")
        ax.plot(unc.phi[i], unc.phi[j], "k+", markersize=10, label="fit")
        ax.set_xlabel(unc.names[i])
        ax.set_ylabel(unc.names[j])
        ax.set_title(f"{unc.names[i]} and {unc.names[j]}")
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)

    q = unc.quantile ** 2
    for col, k in enumerate(shown):
        ax = fig.add_subplot(grid[1, col])
        top = 2.0 * q
        quad = _quadratic(unc, k)
        if quad is not None:
            ax.plot(*quad, linewidth=1, color="tab:blue", label="linear approximation")
        if unc.profiles is not None:
            p = unc.profiles[k]
            ax.plot(p.values, p.statistic, "o", markersize=4, color="tab:orange",
                    label="profile")
            finite = p.statistic[np.isfinite(p.statistic)]
            top = max(top, min(float(finite.max(initial=0.0)), 4.0 * q))
        ax.axhline(q, color="grey", linestyle="--", linewidth=0.8, label=f"{conf} threshold")
        for end, is_open in zip(unc.interval[k], unc.open[k]):
            if np.isfinite(end) and not is_open:
                ax.axvline(end, color="tab:red", linewidth=0.8, linestyle=":")
        ax.set_xlabel(unc.names[k])
        ax.set_ylabel("profile statistic")
        ax.set_ylim(0.0, 1.05 * top)
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def plot_uncertainty(unc, output, *, title=None) -> str:
    """Write :func:`uncertainty_figure` to a PNG file; returns its path."""
    fig = uncertainty_figure(unc, title=title)
    output = os.fspath(output)
    fig.savefig(output, format="png")
    return output
