"""The ``[uncertainty]`` table of a run config, the table printed after a run, and the
plot of a saved uncertainty.

::

    [uncertainty]                  # on by default when [outer] is least squares
    enabled = true                 # false: skip it; true with a python [outer]: the loss
                                   #   must be a negative log-likelihood
    confidence = 0.95
    method = "linear"              # "linear" | "profile" (a few fits per parameter)
    sigma = 0.01                   # absolute noise sd of the data: number, list or file;
                                   #   default: estimated from the residuals
    scheme = "forward"             # differences of the Jacobian: "forward" | "central"
    output = "run.uncertainty.json"   # default: next to [output] history, if any;
                                   #   `fg2u-zo plot` draws it

After ``fg2u-zo run`` (and ``resume``) the summary is followed by
:meth:`fg2u_zo.Uncertainty.report`: names (from ``[parameters] names``), values,
standard errors, intervals, correlations above 0.9 and what the data leave
unconstrained. A failure here (a solve that fails) is reported and does not change the
run's exit code: the fit itself is done.
"""

from __future__ import annotations

import os
import sys

from ..errors import FG2UError
from .schema import UNCERTAINTY_KEYS

__all__ = ["build_uncertainty", "report_uncertainty", "plot_uncertainty_file",
           "is_uncertainty_file", "UNCERTAINTY_SUFFIX"]

#: The default output, next to the history: ``run.jsonl`` -> ``run.uncertainty.json``.
UNCERTAINTY_SUFFIX = ".uncertainty.json"

METHODS = ("linear", "profile")
SCHEMES = ("forward", "central")


def build_uncertainty(c, table, least_squares, history):
    """``[uncertainty]`` -> keyword arguments of :func:`fg2u_zo.uncertainty` plus
    ``"output"``, or None when it is off.

    Parameters
    ----------
    c : TableChecker
    table : dict or None
        The table (None when absent).
    least_squares : bool
        Whether ``[outer]`` is least squares (then it is on by default).
    history : str or None
        The run's history path, next to which the result is written by default.
    """
    table = {} if table is None else c.table(table, "[uncertainty]")
    c.unknown_keys(table, UNCERTAINTY_KEYS, "[uncertainty]")
    enabled = c.boolean(table.get("enabled", least_squares), "[uncertainty] enabled")
    if not enabled:
        return None
    options = {}
    if "confidence" in table:
        confidence = c.number(table["confidence"], "[uncertainty] confidence")
        if not 0.0 < confidence < 1.0:
            raise c.error("[uncertainty] confidence", f"must be in (0, 1), e.g. 0.95; got "
                                                      f"{confidence:g}")
        options["confidence"] = confidence
    if "method" in table:
        options["method"] = c.string(table["method"], "[uncertainty] method", METHODS)
    if "scheme" in table:
        options["scheme"] = c.string(table["scheme"], "[uncertainty] scheme", SCHEMES)
    if "sigma" in table:
        if not least_squares:
            raise c.error("[uncertainty] sigma", "applies to a least-squares [outer] only")
        sigma = table["sigma"]
        if isinstance(sigma, str):
            sigma = c.array(sigma, "[uncertainty] sigma")
        elif isinstance(sigma, list):
            sigma = c.number_list(sigma, "[uncertainty] sigma")
        else:
            sigma = c.number(sigma, "[uncertainty] sigma", positive=True)
        options["sigma"] = sigma
    if "output" in table:
        options["output"] = c.output_path(table["output"], "[uncertainty] output")
    elif history is not None:
        stem = history[:-len(".jsonl")] if history.endswith(".jsonl") else history
        options["output"] = stem + UNCERTAINTY_SUFFIX
    return options


def report_uncertainty(cfg, result) -> None:
    """Compute, print and save the uncertainty of a finished run (see the module
    docstring); nothing when ``[uncertainty]`` is off or the run was interrupted."""
    import numpy as np

    import fg2u_zo as fz

    options = dict(cfg.uncertainty or {})
    if not options or getattr(result, "status", None) in ("sigint", "sigterm"):
        return
    if not np.all(np.isfinite(result.phi)):
        return
    output = options.pop("output", None)
    run = cfg.minimize_options
    try:
        with cfg.make_evaluator() as evaluator:
            unc = fz.uncertainty(result, cfg.problem, names=cfg.names,
                                 transform=run.get("transform") or "identity",
                                 bounds=run.get("bounds"), rng=run.get("rng", 0),
                                 evaluator=evaluator, warn=False, **options)
    except FG2UError as exc:
        print(f"fg2u-zo: the uncertainty was not computed: {exc}", file=sys.stderr)
        return
    print("\n".join("  " + line for line in unc.report().splitlines()))
    if output is not None:
        os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
        print(f"  uncertainty {unc.save(output)}")


def is_uncertainty_file(path) -> bool:
    """Whether ``path`` names a saved uncertainty (by its suffix)."""
    return os.fspath(path).endswith(".json")


def plot_uncertainty_file(path, output=None, *, title=None) -> str:
    """Draw a saved uncertainty (``Uncertainty.save``) to a PNG; returns its path.

    Raises ValueError for a file that is not one, ImportError without matplotlib.
    """
    import json

    from ..confidence.plotting import plot_uncertainty
    from ..confidence.result import Uncertainty

    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            unc = Uncertainty.from_dict(json.load(fh))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not an uncertainty file written by fg2u-zo: {exc}") from None
    if output is None:
        stem = path[:-len(".json")] if path.endswith(".json") else path
        output = stem + ".png"
    return plot_uncertainty(unc, output, title=title or os.path.basename(path))
