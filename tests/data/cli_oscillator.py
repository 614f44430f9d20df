"""A damped oscillator observed up to a horizon: the inner solver of the CLI's
continuation test (``[solver] kind = "python"`` with a ``horizon=`` keyword)."""

import numpy as np

#: The observation times (the [continuation] times of the test).
TIMES = np.linspace(0.2, 20.0, 100)


def oscillator(phi, *, horizon=20.0, damping=0.05):
    """``exp(-damping t) cos(phi[0] t)`` at the observation times ``t <= horizon``: the
    frequency is the unknown (over the whole record the misfit has a local minimum
    wherever some crests line up)."""
    t = TIMES[TIMES <= horizon]
    return np.exp(-damping * t) * np.cos(phi[0] * t)


def rastrigin(phi, *, shift=(0.7, -1.3)):
    """Residuals whose half sum of squares is half the Rastrigin function of
    ``phi - shift``: ``x_i`` and ``sqrt(20) sin(pi x_i)`` (``x^2 - 10 cos(2 pi x) + 10
    = x^2 + 20 sin(pi x)^2``); the global minimum is at ``shift``, a local one near
    every point of the shifted integer grid."""
    x = np.asarray(phi, dtype=np.float64) - np.asarray(shift)
    return np.concatenate([x, np.sqrt(20.0) * np.sin(np.pi * x)])
