"""Requests for solves, their replies, and the one loop that answers them.

Everything that needs the inner solver asks for it with a :class:`Request` and is told
the outcome as a :class:`Reply`: an estimator's base point and perturbed points, the
noise probe's points along a line, a Gauss–Newton trial and its new directions, the
screening of a multi-start design. Code that plans solves is written as a generator
(a *plan*)::

    def plan(...):
        reply = yield Request(problem.inner, [phi], seed=seed, base=True)
        theta0 = reply.thetas[0]
        ...
        return result

and never holds an Evaluator. Whoever runs the plan answers its requests: :func:`drive`
with an :class:`~fg2u_zo.Evaluator` (``estimate()``, ``fz.minimize``), the run's
lockstep of several local runs (multi-start merges their requests into one parallel
group), or the user's own scheduler through :class:`~fg2u_zo.AskTell`. When a request's
failure policy is broken (its base point failed, or more than ``max_failure_fraction``
of its points), the :class:`~fg2u_zo.InnerSolverError` is raised *inside* the plan, at
its ``yield``, just where a direct call would have raised it.

Seeds of stochastic solvers are drawn in the parent process with :func:`new_seed`,
the only place that draws one, so a seed gives the same result on every backend.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from .map_run import MapStats

__all__ = ["Request", "Reply", "ReplayCache", "Replayed", "new_seed", "drive", "done",
           "advance", "array_digest", "SEED_BOUND"]

#: Seeds are drawn uniformly from ``[0, SEED_BOUND)``.
SEED_BOUND = 2**31 - 1


def new_seed(rng: np.random.Generator) -> int:
    """The seed handed to a stochastic solver for one group of solves (common random
    numbers across the group), drawn from the run's generator in this process."""
    return int(rng.integers(SEED_BOUND))


def array_digest(array) -> str:
    """sha256 of an array's dtype, shape and bytes, as hex (a ``warm_start`` identity)."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


@dataclass(eq=False)
class Request:
    """Solves the inner solver at ``points``: one parallel group, or part of one.

    Parameters
    ----------
    solver : callable
        ``solver(phi, *, warm_start=None, seed=None) -> ndarray``.
    points : sequence of ndarray
        Anything with ``len`` and ``[k]``; a point is taken when it is submitted.
    seed : int, optional
        Passed as ``seed=`` to solvers that accept it (the same for every point).
    warm_start : ndarray, optional
        Passed as ``warm_start=`` to solvers that accept it.
    expected_shape : tuple, optional
        Shape every output must have (else a failure of kind ``"shape"``). Default:
        what the answering Evaluator learned from this solver's base solves.
    base : bool
        A single point whose failure is an error (the base point of an estimate).
    max_failure_fraction : float in [0, 1], optional
        More failed points than this fraction is an error; None: the Evaluator's
        policy; 1: never (the plan decides what a failed point means).
    on_result : callable, optional
        ``on_result(k, theta)`` for each output as it arrives; the output is then not
        kept in the reply (memory O(size of one output), whatever the number of points).
    label : str
        What the solves are for (``"base"``, ``"directions"``, ``"probe"``,
        ``"trial"``, ...): for logs and for ask/tell users.
    tag : tuple
        Set by the run that merges requests: whose they are (a local run and its step),
        so that the journal keeps exactly the solves a resumed run still needs.
    """

    solver: Callable
    points: Any
    seed: int | None = None
    warm_start: np.ndarray | None = None
    expected_shape: tuple | None = None
    base: bool = False
    max_failure_fraction: float | None = None
    on_result: Callable | None = None
    label: str = ""
    tag: tuple = ()

    def __len__(self) -> int:
        return len(self.points)

    def context(self, accepted) -> dict:
        """What, beside the point, makes two solves the same: the ``seed`` and
        ``warm_start`` the solver is passed (``accepted``: the keywords it takes)."""
        seed = self.seed if "seed" in accepted else None
        warm = (array_digest(self.warm_start)
                if self.warm_start is not None and "warm_start" in accepted else None)
        return {"seed": seed, "warm_start": warm}

    def kwargs(self, accepted) -> dict:
        """The keyword arguments the solver is called with."""
        out = {}
        if self.seed is not None and "seed" in accepted:
            out["seed"] = self.seed
        if self.warm_start is not None and "warm_start" in accepted:
            out["warm_start"] = self.warm_start
        return out


@dataclass
class Reply(MapStats):
    """What a :class:`Request` got: its outputs and its share of the group's bookkeeping.

    The :class:`~fg2u_zo.evaluation.map_run.MapStats` fields count this request's
    solves only (``wall_time`` is the group's).

    Attributes
    ----------
    thetas : list of (ndarray or None)
        The outputs in the order of the points, None where a point failed for good or
        where the request's ``on_result`` took the output.
    error : InnerSolverError or None
        The request's failure policy was broken; :func:`drive` raises it inside the
        plan.
    """

    thetas: list = field(default_factory=list)
    error: BaseException | None = None

    def stats(self) -> MapStats:
        """The bookkeeping alone, as a :class:`MapStats`."""
        return MapStats(nfev=self.nfev, solver_time=self.solver_time,
                        failures=list(self.failures),
                        failure_counts=dict(self.failure_counts),
                        resubmitted=self.resubmitted, tasks=self.tasks,
                        wall_time=self.wall_time, nfev_replayed=self.nfev_replayed,
                        solver_time_replayed=self.solver_time_replayed,
                        lost_counts=dict(self.lost_counts))


@dataclass(frozen=True)
class Replayed:
    """A finished solve read back from a :class:`ReplayCache`."""

    theta: np.ndarray
    solver_time: float
    attempts: int


@runtime_checkable
class ReplayCache(Protocol):
    """Finished solves kept across an interruption (a run's journal, see
    :mod:`fg2u_zo.persist.journal`): looked up before a point is submitted, written
    as each success arrives."""

    def lookup(self, context: dict, point) -> Replayed | None:
        """The output of the same solve (same ``context``, same point bytes), or None."""

    def record(self, context: dict, point, theta, *, solver_time: float, attempts: int,
               tag: tuple = ()) -> None:
        """Keep one finished solve (``tag``: whose it is, see :class:`Request`)."""

    @property
    def replayable(self) -> int:
        """How many records can still answer a solve."""


def done(value=None):
    """A plan that asks for nothing and returns ``value`` (for computations that run
    in this process, such as the exact torch path)."""
    return value
    yield  # pragma: no cover - makes this function a generator


def advance(plan, reply):
    """Send ``reply`` (None to start) into ``plan``, throwing the reply's error there.

    Returns ``(request, None)`` for the plan's next request, or ``(None, value)``
    when it returned.
    """
    try:
        if reply is None:
            request = next(plan)
        elif reply.error is not None:
            request = plan.throw(reply.error)
        else:
            request = plan.send(reply)
    except StopIteration as stop:
        return None, stop.value
    return request, None


def drive(plan, evaluator):
    """Run ``plan`` to its end, each request answered by ``evaluator``; returns what
    the plan returns. The one loop between plans and the Evaluator."""
    request, value = advance(plan, None)
    while request is not None:
        (reply,) = evaluator.evaluate([request])
        request, value = advance(plan, reply)
    return value
