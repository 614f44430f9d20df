"""Adapters that turn external codes into inner solvers, and reference simulators.

Every object exported here is an *inner solver*: a picklable callable

    solver(phi: np.ndarray, *, warm_start=None, seed=None) -> np.ndarray

that maps meta-parameters ``phi`` (shape ``(N,)``) to the inner solution ``theta``.
Failures raise :class:`fg2u_zo.InnerSolverError`. Each also has ``fingerprint() ->
dict``: JSON data that identifies what it computes (the adapter, the command or the
wrapped callables' names and source digests, digests of the files and arrays it uses,
its settings, a user-given ``version``), equal for two solvers that compute the same
thing and different after a change of the solver, so that a resumed run can tell
whether outputs it journaled came from the same solver (:mod:`solvers._fingerprint`).

Submodules are imported on first use, so an optional dependency (scikit-learn,
FreeFem++) is only needed by the adapter that uses it.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Subprocess": "._subprocess",
    "FreeFem": "._freefem",
    "diffusion_model": "._freefem",
    "SolveIVP": "._scipy",
    "ScipyMinimize": "._scipy",
    "SparseLinear": "._scipy",
    "SklearnFit": "._sklearn",
    "TorchUnrolled": "._torch",
    "Burgers": ".spectral",
    "KdV": ".spectral",
    "AllenCahn": ".spectral",
    "load_raissi_mat": "._mat",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'solvers' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
