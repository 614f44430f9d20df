"""Learning-rate schedules for the outer loop.

A schedule is a callable ``schedule(step, num_steps) -> factor`` that returns the factor
multiplying the base learning rate at 0-based ``step`` of a phase that has ``num_steps``
steps. Each phase of :func:`fg2u_zo.minimize` runs its schedule over its own steps.
The named schedules are small frozen dataclasses, so a checkpoint can record them by
name and a resumed run rebuilds the same one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import MappingProxyType

from ..errors import FG2UTypeError, FG2UValueError

__all__ = ["Constant", "Cosine", "Linear", "SCHEDULES", "as_schedule", "schedule_config"]


@dataclass(frozen=True)
class Constant:
    """Factor 1 at every step.

    Examples
    --------
    >>> Constant()(7, 10)
    1.0
    """

    name = "constant"

    def __call__(self, step: int, num_steps: int) -> float:
        return 1.0


@dataclass(frozen=True)
class Cosine:
    """Cosine decay from 1 to ``final`` over the phase: ``final + (1 - final)(1 + cos(pi t)) / 2``.

    ``t = step / num_steps``, so the last step still has a non-zero factor.

    Examples
    --------
    >>> Cosine()(0, 10), round(Cosine()(5, 10), 12)
    (1.0, 0.5)
    """

    final: float = 0.0
    name = "cosine"

    def __call__(self, step: int, num_steps: int) -> float:
        t = step / max(num_steps, 1)
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * t))


@dataclass(frozen=True)
class Linear:
    """Linear decay from 1 towards ``final``: ``1 - (1 - final) step / num_steps``.

    The decay used for the PDE experiments of the FG²U paper. ``step / num_steps``
    never reaches 1 inside the phase, so the last step is not wasted on a zero rate.

    Examples
    --------
    >>> Linear()(0, 4), Linear()(3, 4)
    (1.0, 0.25)
    """

    final: float = 0.0
    name = "linear"

    def __call__(self, step: int, num_steps: int) -> float:
        t = step / max(num_steps, 1)
        return 1.0 - (1.0 - self.final) * t


#: The schedules known by name (read-only).
SCHEDULES = MappingProxyType({"constant": Constant, "cosine": Cosine, "linear": Linear})


def as_schedule(schedule):
    """A schedule object from a name, a named schedule or a callable.

    Parameters
    ----------
    schedule : {"constant", "cosine", "linear"}, schedule object or callable
        A callable must take ``(step, num_steps)`` and return the learning-rate factor.

    Examples
    --------
    >>> as_schedule("linear")(2, 4)
    0.5
    """
    if schedule is None:
        return Constant()
    if isinstance(schedule, str):
        try:
            return SCHEDULES[schedule]()
        except KeyError:
            raise FG2UValueError(
                f"`schedule` must be one of {', '.join(map(repr, SCHEDULES))} or a callable "
                f"schedule(step, num_steps) -> factor; got {schedule!r}") from None
    if not callable(schedule):
        raise FG2UTypeError(
            "`schedule` must be a name or a callable schedule(step, num_steps) -> factor, "
            f"got {type(schedule).__name__}")
    return schedule


def schedule_config(schedule) -> dict:
    """JSON description of a schedule, for checkpoints.

    Named schedules give ``{"name": ..., "final": ...}``; a user callable gives its
    qualified name only, which is enough to check that a resumed run passes the same one.
    """
    for name, cls in SCHEDULES.items():
        if type(schedule) is cls:
            out = {"name": name}
            if hasattr(schedule, "final"):
                out["final"] = schedule.final
            return out
    qualname = getattr(schedule, "__qualname__", type(schedule).__qualname__)
    module = getattr(schedule, "__module__", type(schedule).__module__)
    return {"name": "callable", "callable": f"{module}:{qualname}"}


def schedule_from_config(config: dict):
    """Rebuild a named schedule from :func:`schedule_config`; ``None`` for a callable."""
    name = config.get("name")
    if name not in SCHEDULES:
        return None
    cls = SCHEDULES[name]
    return cls(final=config["final"]) if "final" in config else cls()
