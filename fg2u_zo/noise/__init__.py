"""Noise in the solver's outputs and the finite-difference step it calls for.

``estimate`` measures the noise (Moré & Wild's difference tables) and chooses the
step; ``steps`` holds the step formulas. The public names are re-exported here.
"""

from .estimate import (NoiseEstimate, auto_step, check_noise_estimate, difference_ratio,
                       estimate_noise, noise_needs_refresh, probe_lines, probe_noise)

__all__ = ["NoiseEstimate", "estimate_noise", "noise_needs_refresh", "auto_step",
           "check_noise_estimate", "difference_ratio", "probe_lines", "probe_noise"]
