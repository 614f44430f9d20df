"""Evaluation: the only code that calls an inner solver.

``evaluator`` (the Evaluator: counting, batching, retries, failure policy),
``backends`` (where solves run), ``pool`` (the process pool of the loky backend),
``worker`` (what runs next to the solver in a worker).
"""

from .evaluator import BACKENDS, Evaluator, MapStats

__all__ = ["Evaluator", "MapStats", "BACKENDS"]
