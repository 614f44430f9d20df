"""What a backend reports back to the Evaluator: one event per happening.

A backend's :meth:`~fg2u_zo.evaluation.backends.Backend.poll` returns a list of these.
Every event names the task it belongs to; the Evaluator ignores events of tasks it
has given up on (cancelled, or already reported lost).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ItemDone", "TaskDone", "TaskLost", "outcome_events"]


@dataclass(frozen=True)
class ItemDone:
    """One point of a task was evaluated (successfully or not).

    Attributes
    ----------
    task_id : int
    outcome : fg2u_zo.evaluation.worker.Outcome
        Its index in the map, the validated output or the failure, the solver time.
    """

    task_id: int
    outcome: object


@dataclass(frozen=True)
class TaskDone:
    """A task ended; its points each got an :class:`ItemDone` before.

    A point of the task that got none is resubmitted (a backend that loses outcomes
    costs time, never results).

    Attributes
    ----------
    task_id : int
    wall : float
        Seconds from submission to the end, as seen by the backend.
    rerun : int
        Evaluations of this task the engine itself ran again after losing the worker
        that ran them (dask reschedules the tasks of a worker that left): counted as
        lost and run again, charged to nobody.
    """

    task_id: int
    wall: float
    rerun: int = 0


@dataclass(frozen=True)
class TaskLost:
    """The worker running a task died, or was killed for overrunning the timeout, or
    the task was lost with the engine's connection.

    Attributes
    ----------
    task_id : int
    indices : tuple of int
        Points of the task still without an outcome.
    culprit : int or None
        The point known to be responsible (the one the worker was running), or None
        when the backend cannot tell (the Evaluator then reruns each point alone).
    kind : str
        ``"crash"`` or ``"timeout"`` (or ``"exception"`` for a task that failed
        outside the solver; ``"scheduler"`` for a task lost with the connection to the
        engine's scheduler).
    message : str
        What happened, for the failure record.
    seconds : float
        Time the culprit had been running, charged to it.
    blameless : bool
        The task was lost for a reason none of its points can have caused (the
        connection to the scheduler dropped, the engine cancelled it): its points are
        run again, uncharged and unsuspected.
    attempts : int
        Attempts of the culprit this loss stands for: more than 1 when the engine had
        already rerun it on other workers that died too (dask's ``allowed-failures``).
    rerun : int
        Evaluations of this task the engine itself ran again before it was lost
        (counted as lost and run again).
    """

    task_id: int
    indices: tuple
    culprit: int | None
    kind: str
    message: str
    seconds: float = 0.0
    blameless: bool = False
    attempts: int = 1
    rerun: int = 0


def outcome_events(task_id, outcomes, wall, rerun=0) -> list:
    """An :class:`ItemDone` per outcome of a finished task, then its :class:`TaskDone`."""
    return ([ItemDone(task_id, outcome) for outcome in outcomes]
            + [TaskDone(task_id, wall, rerun)])
