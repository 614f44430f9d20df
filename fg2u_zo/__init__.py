"""fg2u-zo: meta-gradients of bilevel problems whose inner solver is a black box.

The public API, and nothing else::

    import fg2u_zo as fz
    problem = fz.BilevelProblem(inner=solver, outer=outer_loss)
    g = fz.FG2UZO(num_directions=16).estimate(problem, phi, rng=0)

Submodules load on first use: a parallel worker that only runs a numpy solver never
pays for importing torch (seconds per worker process).
"""

import importlib

from ._version import __version__
from .errors import (CheckpointError, ConfigError, FG2UError, FG2UTypeError, FG2UValueError,
                     FG2UWarning, InnerSolverError, InvalidSolverOutputError, NoiseWarning,
                     SolverOutputTypeError)

_EXPORTS = {
    # problem and estimators
    "BilevelProblem": "problem",
    "Estimator": "estimator",
    "FG2UZO": "zeroth_order", "BlackBoxES": "zeroth_order", "CoordinateFD": "zeroth_order",
    "FG2U": "exact", "RGU": "exact",
    "TRGU": "truncated",
    "Neumann": "implicit",
    # evaluation
    "Evaluator": "evaluation",
    # outer optimization
    "minimize": "optimize", "resume": "optimize", "Phase": "optimize",
    "OptimizeResult": "optimize",
    "StepRecord": "history", "read_history": "history",
    "read_checkpoint": "checkpoint",
    # results and checks
    "MetaGradient": "result", "Failure": "result", "GradientCheck": "result",
    "check_meta_gradient": "checks",
    # noise and step selection
    "NoiseEstimate": "noise", "estimate_noise": "noise", "noise_needs_refresh": "noise",
    # directions
    "sample_directions": "directions", "DIRECTION_FAMILIES": "directions",
}

__all__ = [
    "__version__", *_EXPORTS,
    # errors and warnings
    "FG2UError", "FG2UValueError", "FG2UTypeError", "InnerSolverError",
    "InvalidSolverOutputError", "SolverOutputTypeError", "ConfigError",
    "CheckpointError", "FG2UWarning", "NoiseWarning",
]


def __getattr__(name):
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'fg2u_zo' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
