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
                     FG2UWarning, IdentifiabilityWarning, InnerSolverError,
                     InvalidSolverOutputError, NonFiniteStepError, NoiseWarning,
                     SolverOutputTypeError,
                     ZeroDifferenceWarning)

_EXPORTS = {
    # problem and estimators
    "BilevelProblem": "problem",
    "Estimator": "estimators.base",
    "FG2UZO": "estimators.zeroth_order", "BlackBoxES": "estimators.zeroth_order",
    "CoordinateFD": "estimators.zeroth_order",
    "FG2U": "estimators.exact", "RGU": "estimators.exact",
    "TRGU": "estimators.truncated",
    "Neumann": "estimators.implicit",
    # evaluation
    "Evaluator": "evaluation",
    "Backend": "evaluation.backends", "register_backend": "evaluation.backends",
    "available_backends": "evaluation.backends",
    "Request": "evaluation.requests", "Reply": "evaluation.requests",
    # outer optimization
    "minimize": "outer.minimize", "resume": "outer.minimize", "Phase": "outer.phases",
    "OptimizeResult": "outer.result", "RunSummary": "outer.result",
    "PhaseSummary": "outer.result", "Converged": "outer.convergence",
    "AskTell": "outer.asktell", "Evaluation": "outer.asktell",
    "Stepper": "outer.steppers.base", "StepperState": "outer.steppers.base",
    "StepUpdate": "outer.steppers.base", "register_stepper": "outer.steppers",
    "solve_points": "outer.steppers.base",
    # persistence
    "StepRecord": "persist.history", "read_history": "persist.history",
    "read_checkpoint": "persist.checkpoint",
    # globalization: continuation in the horizon, parallel multi-start
    "horizon_schedule": "globalize.horizons", "horizon_phases": "globalize.horizons",
    "MultiStart": "globalize.multistart", "multistart": "globalize.multistart",
    # results and checks
    "MetaGradient": "result", "Failure": "result", "GradientCheck": "result",
    "Sketch": "result",
    "check_meta_gradient": "checks",
    # outer losses
    "LeastSquares": "losses",
    # uncertainty of a calibration (a package not named "uncertainty": importing it
    # would bind the submodule over the function fz.uncertainty)
    "uncertainty": "confidence", "Uncertainty": "confidence",
    "PredictionBand": "confidence", "Profile": "confidence",
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
    "CheckpointError", "NonFiniteStepError", "FG2UWarning", "NoiseWarning",
    "ZeroDifferenceWarning", "IdentifiabilityWarning",
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
