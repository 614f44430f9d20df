"""What an Evaluator knows about a solver: the keywords it takes, its time, its shapes.

Learned from the solver's signature and its base solves, and used to call it right
(``seed=`` / ``warm_start=`` only where accepted), to size the first batches, and to
validate a later base solve's output like the perturbed ones.
"""

from __future__ import annotations

import inspect
import weakref

__all__ = ["accepted_keywords", "SolverMemory"]

# Solvers whose base-solve time and output shapes an Evaluator remembers.
_SOLVER_MEMORY = 8


def accepted_keywords(solver) -> frozenset:
    """Which of ``warm_start`` / ``seed`` the solver's signature accepts."""
    try:
        sig = inspect.signature(solver)
    except (TypeError, ValueError):
        return frozenset()
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return frozenset({"warm_start", "seed"})
    return frozenset(name for name in ("warm_start", "seed") if name in sig.parameters)


class SolverMemory:
    """What the Evaluator learned about a few solvers from their base solves.

    Per solver object: the seconds of its last base solve (a batching prior) and the
    output shape for each input shape, so that a later base solve is validated like
    the perturbed ones. Solvers are held by weak reference where they allow it.
    """

    def __init__(self):
        self._entries = {}  # id(solver) -> [ref, seconds, {input shape: output shape}]

    def _entry(self, solver):
        entry = self._entries.get(id(solver))
        if entry is not None and entry[0]() is solver:
            return entry
        return None

    def seconds(self, solver):
        """Seconds of the solver's last base solve, or None."""
        entry = self._entry(solver)
        return None if entry is None else entry[1]

    def shape(self, solver, input_shape):
        """The output shape of the solver's base solves at inputs of ``input_shape``."""
        entry = self._entry(solver)
        return None if entry is None else entry[2].get(input_shape)

    def note(self, solver, seconds, input_shape, output_shape):
        """Remember a base solve (``output_shape=None``: keep the known shape)."""
        entry = self._entry(solver)
        if entry is None:
            try:
                ref = weakref.ref(solver)
            except TypeError:  # not weak-referenceable (numpy functions): hold it
                ref = _StrongRef(solver)
            while len(self._entries) >= _SOLVER_MEMORY:
                self._entries.pop(next(iter(self._entries)))
            entry = self._entries[id(solver)] = [ref, None, {}]
        entry[1] = seconds
        if output_shape is not None:
            entry[2][input_shape] = output_shape


class _StrongRef:
    """A reference with the call interface of ``weakref.ref`` that keeps its object."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __call__(self):
        return self.obj
