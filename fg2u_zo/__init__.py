"""fg2u-zo: meta-gradients of bilevel problems whose inner solver is a black box.

The public API, and nothing else::

    import fg2u_zo as fz
    problem = fz.BilevelProblem(inner=solver, outer=outer_loss)
    g = fz.FG2UZO(num_directions=16).estimate(problem, phi, rng=0)
"""

from ._version import __version__
from .checks import check_meta_gradient
from .directions import DIRECTION_FAMILIES, sample_directions
from .errors import (CheckpointError, ConfigError, FG2UError, FG2UTypeError, FG2UValueError,
                     FG2UWarning, InnerSolverError, InvalidSolverOutputError, NoiseWarning,
                     SolverOutputTypeError)
from .estimator import Estimator
from .evaluation import Evaluator
from .exact import FG2U, RGU
from .checkpoint import read_checkpoint
from .history import StepRecord, read_history
from .optimize import OptimizeResult, Phase, minimize, resume
from .noise import NoiseEstimate, estimate_noise, noise_needs_refresh
from .implicit import Neumann
from .problem import BilevelProblem
from .result import Failure, GradientCheck, MetaGradient
from .truncated import TRGU
from .zeroth_order import FG2UZO, BlackBoxES, CoordinateFD

__all__ = [
    "__version__",
    # problem and estimators
    "BilevelProblem", "Estimator", "FG2UZO", "FG2U", "BlackBoxES", "RGU", "CoordinateFD",
    "TRGU", "Neumann",
    # evaluation
    "Evaluator",
    # outer optimization
    "minimize", "resume", "Phase", "OptimizeResult", "StepRecord", "read_history",
    "read_checkpoint",
    # results and checks
    "MetaGradient", "Failure", "GradientCheck", "check_meta_gradient",
    # noise and step selection
    "NoiseEstimate", "estimate_noise", "noise_needs_refresh",
    # directions
    "sample_directions", "DIRECTION_FAMILIES",
    # errors and warnings
    "FG2UError", "FG2UValueError", "FG2UTypeError", "InnerSolverError",
    "InvalidSolverOutputError", "SolverOutputTypeError", "ConfigError",
    "CheckpointError", "FG2UWarning", "NoiseWarning",
]
