"""Noise in the solver's outputs and the finite-difference step it calls for.

One idea a module: ``noise_estimate`` (the :class:`NoiseEstimate` result type),
``table`` (the difference table and the printed precision of the outputs), ``line``
(evaluations and derivatives along a probe line), ``estimate`` (the probe:
:func:`estimate_noise`), ``advice`` (the warnings, once per run), ``reuse`` (the step
from a kept estimate, and when to refresh it), ``resolution`` (whether an estimate's
differences rose above the output resolution), ``steps`` (the step formulas). The
public names are re-exported here.
"""

from .estimate import estimate_noise, probe_lines, probe_noise
from .noise_estimate import NoiseEstimate
from .reuse import auto_step, check_noise_estimate, difference_ratio, noise_needs_refresh

__all__ = ["NoiseEstimate", "estimate_noise", "noise_needs_refresh", "auto_step",
           "check_noise_estimate", "difference_ratio", "probe_lines", "probe_noise"]
