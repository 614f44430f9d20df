"""Plots of a run's JSONL history (optional extra ``plot``: matplotlib).

The figure has four panels: the outer loss against the step, against the cumulative
number of inner solves and against wall-clock time, and the gradient's signal-to-noise
ratio ``||g|| / ||stderr||`` against the step. Phase changes are marked by dotted
vertical lines. Size: ``FIGSIZE`` inches at ``DPI`` dots per inch, i.e. 1200 x 800
pixels. Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas,
without pyplot, so nothing depends on (or changes) the user's matplotlib backend.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..errors import FG2UValueError
from ..persist.history import StepRecord, read_history

__all__ = ["history_figure", "plot_history", "FIGSIZE", "DPI", "AXIS_LABELS"]

#: Figure size in inches and resolution: 12 x 8 in at 100 dpi = 1200 x 800 px.
FIGSIZE = (12.0, 8.0)
DPI = 100

#: (x label, y label) of the four panels, in reading order.
AXIS_LABELS = (
    ("outer step", "outer loss F(phi)"),
    ("inner solves (nfev, cumulative)", "outer loss F(phi)"),
    ("wall-clock time [s]", "outer loss F(phi)"),
    ("outer step", "gradient SNR ||g|| / ||stderr||"),
)


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "plotting needs matplotlib: pip install 'fg2u-zo[plot]'") from None
    return Figure, FigureCanvasAgg


def _as_records(history):
    if isinstance(history, (str, os.PathLike)):
        records = read_history(history)
        source = os.fspath(history)
    else:
        records = list(history)
        source = None
    if not records:
        where = f" {source}" if source else ""
        raise FG2UValueError(f"the history{where} has no steps to plot")
    for r in records:
        if not isinstance(r, StepRecord):
            raise FG2UValueError(
                f"`history` must be a JSONL path or a list of StepRecord, got "
                f"{type(r).__name__} in it")
    return records, source


def history_figure(history, *, title=None):
    """Build the four-panel figure of a run.

    Parameters
    ----------
    history : path-like or list of StepRecord
        A JSONL history file or ``OptimizeResult.history``.
    title : str, optional
        Default: the file name, when a path is given.

    Returns
    -------
    matplotlib.figure.Figure
        ``FIGSIZE`` inches at ``DPI`` (1200 x 800 px), with an Agg canvas attached.

    Examples
    --------
    >>> from fg2u_zo.persist.history import StepRecord
    >>> recs = [StepRecord(k, 0, "FG2UZO", 1.0 / (k + 1), 1.0, 0.5, 2.0, 9, 9 * (k + 1),
    ...                    0.01, 0.01 * (k + 1), 0.1 * (k + 1), 0, 1e-5, 0.1)
    ...         for k in range(5)]
    >>> fig = history_figure(recs)
    >>> [ax.get_xlabel() for ax in fig.axes][:2]
    ['outer step', 'inner solves (nfev, cumulative)']
    """
    Figure, FigureCanvasAgg = _matplotlib()
    records, source = _as_records(history)
    step = np.array([r.step for r in records], dtype=float)
    value = np.array([r.value for r in records], dtype=float)
    nfev = np.array([r.nfev_total for r in records], dtype=float)
    wall = np.array([r.wall_time for r in records], dtype=float)
    snr = np.array([r.snr for r in records], dtype=float)
    phase = np.array([r.phase for r in records])

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2).ravel()
    log_value = bool(np.all(value[np.isfinite(value)] > 0))
    for ax, x in zip(axes[:3], (step, nfev, wall)):
        ax.plot(x, value, marker=".", markersize=3, linewidth=1)
        if log_value:
            ax.set_yscale("log")
    finite = np.isfinite(snr)
    if finite.any():
        axes[3].plot(step[finite], snr[finite], marker=".", markersize=3, linewidth=1)
        if np.all(snr[finite] > 0):
            axes[3].set_yscale("log")
        axes[3].axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    else:
        axes[3].text(0.5, 0.5, "exact estimator: no Monte-Carlo noise", ha="center",
                     va="center", transform=axes[3].transAxes)
    changes = np.flatnonzero(np.diff(phase)) + 1
    for ax, x in zip(axes, (step, nfev, wall, step)):
        for i in changes:
            ax.axvline(x[i], color="grey", linewidth=0.8, linestyle=":")
    for ax, (xlabel, ylabel) in zip(axes, AXIS_LABELS):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    if title is None and source is not None:
        title = os.path.basename(source)
    if title:
        last = records[-1]
        # The history holds F at the start of each step and the solves spent by its end;
        # the CLI summary's "value" is F after the last step (one more solve), so the
        # title says which F it shows instead of calling it final.
        fig.suptitle(f"{title}: {len(records)} steps; F at the last step = "
                     f"{last.value:.4g}; nfev after it = {last.nfev_total}"
                     if math.isfinite(last.value) else title)
    return fig


def plot_history(history, output=None, *, title=None) -> str:
    """Write the figure of :func:`history_figure` to a PNG file; returns its path.

    Parameters
    ----------
    history : path-like or list of StepRecord
    output : path-like, optional
        Default: the history path with the suffix ``.png``.
    """
    if output is None:
        if not isinstance(history, (str, os.PathLike)):
            raise FG2UValueError("pass `output=` the PNG path when plotting records")
        output = os.path.splitext(os.fspath(history))[0] + ".png"
    fig = history_figure(history, title=title)
    output = os.fspath(output)
    fig.savefig(output, dpi=DPI, format="png")
    return output
