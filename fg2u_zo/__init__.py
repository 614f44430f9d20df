"""fg2u-zo: meta-gradients of bilevel problems whose inner solver is a black box."""

from ._version import __version__
from .errors import (CheckpointError, ConfigError, FG2UError, FG2UTypeError, FG2UValueError,
                     FG2UWarning, InnerSolverError, NoiseWarning)

__all__ = [
    "__version__",
    "FG2UError", "FG2UValueError", "FG2UTypeError", "InnerSolverError", "ConfigError",
    "CheckpointError", "FG2UWarning", "NoiseWarning",
]
