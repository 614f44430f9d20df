"""The model of cli_sim.py as a Python inner solver, for the ``kind = "python"`` config."""

import numpy as np


def decay(phi, *, t_max=3.0):
    """``amplitude * exp(-rate * t) + offset`` at 12 times in [0, t_max]."""
    t = np.linspace(0.0, t_max, 12)
    return phi[0] * np.exp(-phi[1] * t) + phi[2]


_CALLS = [0]


def flaky_decay(phi, *, t_max=3.0):
    """``decay``, failing on the third call of every four: with forward differences along
    three directions, no retries and a sequential backend, that is one perturbed point
    per step and never a base point (the CLI summary must report the dropped ones)."""
    _CALLS[0] += 1
    if _CALLS[0] % 4 == 3:
        raise RuntimeError("simulated crash of the model")
    return decay(phi, t_max=t_max)
