"""Evaluation: the only code that calls an inner solver.

``evaluator`` (the Evaluator: counting, retries, failure policy, the backend chosen
by name), ``map_run`` (the scheduling loop of one call and its statistics),
``backends`` (where solves run: a registry of engines behind one protocol),
``worker`` (what runs next to the solver), ``solver_memory`` (what is learned about a
solver), ``joblib_config`` (joblib's ``n_jobs`` and ``parallel_config`` conventions),
``journal`` (finished evaluations kept on disk, so that a resumed run solves none twice).
"""

from .backends import Backend, available_backends, register_backend
from .evaluator import BACKENDS, Evaluator, MapStats

__all__ = ["Evaluator", "MapStats", "BACKENDS", "Backend", "register_backend",
           "available_backends"]
