"""The model of cli_sim.py as a Python inner solver, for the ``kind = "python"`` config."""

import numpy as np


def decay(phi, *, t_max=3.0):
    """``amplitude * exp(-rate * t) + offset`` at 12 times in [0, t_max]."""
    t = np.linspace(0.0, t_max, 12)
    return phi[0] * np.exp(-phi[1] * t) + phi[2]
