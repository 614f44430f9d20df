"""Ask/tell: the run's solves handed to your own scheduler.

:func:`fg2u_zo.minimize` answers the run's requests with an Evaluator. When the solves
run elsewhere (SLURM array jobs, Kubernetes jobs, a workflow manager, a queue of
licensed simulator seats), drive the same run by hand::

    opt = fz.AskTell(problem, phi0, workers=32, checkpoint="run.ckpt")
    while not opt.done:
        batch = opt.ask()              # the points of one parallel round
        ...                            # solve them anywhere, in any order
        for e in batch:
            opt.tell(e.id, output)     # or opt.tell(e.id, failure="what went wrong")
    res = opt.result()

It is the same run, bit for bit: same seeds, same steps, same result as ``minimize``
with the same arguments (the Evaluator's retries aside: a failure you tell is final).
Every estimator and stepper works, and so do phases, continuation and multi-start; with
a ``checkpoint`` the state is saved after each round like a run's, every output you
tell is journaled at once, and a driver that crashed and is started again
(``resume="auto"``) asks again only for the points it was not told.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from ..errors import FG2UTypeError, FG2UValueError
from ..evaluation.map_run import policy_error
from ..evaluation.requests import Reply
from ..evaluation.solver_memory import accepted_keywords
from ..evaluation.worker import check_output, describe_error
from ..result import Failure
from .driver import _checkpoint_round
from .minimize import finish
from .setup import prepare

__all__ = ["AskTell", "Evaluation"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Evaluation:
    """One solve to run: ``solver(phi, **kwargs)``.

    Attributes
    ----------
    id : str
        What :meth:`AskTell.tell` takes back (``"<round>.<index>"``: the same after a
        resumption, so a late answer to a crashed driver's question still fits).
    phi : ndarray
        The point.
    kwargs : dict
        ``seed=`` / ``warm_start=`` as the solver's signature accepts them (what an
        Evaluator would pass).
    seed : int or None
    warm_start : ndarray or None
    solver : callable
        The inner solver of the request (a phase may have its own, e.g. a horizon).
    label : str
        What the solve is for: ``"base"``, ``"directions"``, ``"probe"``, ``"trial"``,
        ``"screen"``, ``"final value"`` ...
    run, phase : int or None
        The local run and its phase the solve belongs to (None for a multi-start's
        screening and the final values).
    """

    id: str
    phi: np.ndarray
    kwargs: dict
    seed: int | None
    warm_start: np.ndarray | None
    solver: object
    label: str
    run: int | None
    phase: int | None

    def solve(self):
        """Run the solve here: ``solver(phi, **kwargs)``."""
        return self.solver(self.phi.copy(), **self.kwargs)


class _Slot:
    """The answer to one point, as told."""

    __slots__ = ("theta", "failure", "replayed")

    def __init__(self, theta=None, failure=None, replayed=False):
        self.theta, self.failure, self.replayed = theta, failure, replayed


class AskTell:
    """A run of :func:`fg2u_zo.minimize` whose solves you run yourself (see the module
    docstring).

    Parameters
    ----------
    problem, phi0, estimator
        As for :func:`~fg2u_zo.minimize`.
    workers : int
        The run's width: how many solves one round should hold (what the Gauss–Newton
        stepper fills); your scheduler's parallel slots. Default 1.
    max_failure_fraction : float in [0, 1)
        A request with more failed points than this fraction fails (as the Evaluator's
        policy; 0.5 by default).
    **options
        The other keywords of :func:`~fg2u_zo.minimize` (``optimizer``, ``phases``,
        ``multistart``, ``bounds``, ``rng``, ``checkpoint``, ``resume``, ``history``,
        ``max_nfev``, ...), but ``evaluator``, ``backend`` and ``n_jobs``.

    Examples
    --------
    >>> import numpy as np, fg2u_zo as fz
    >>> A = np.array([[2.0, 0.0], [1.0, 3.0], [0.0, 1.0]])
    >>> problem = fz.BilevelProblem(inner=lambda phi: A @ phi,
    ...     outer=lambda theta, phi: 0.5 * ((theta - 1.0) ** 2).sum())
    >>> opt = fz.AskTell(problem, np.zeros(2), fz.FG2UZO(step=1e-3), workers=3,
    ...                  optimizer="gauss-newton", steps=2, rng=0,
    ...                  optimizer_options={"radius": 10.0})
    >>> while not opt.done:
    ...     for e in opt.ask():
    ...         opt.tell(e.id, A @ e.phi)
    >>> res = opt.result()
    >>> bool(np.allclose(res.phi, np.linalg.lstsq(A, np.ones(3), rcond=None)[0]))
    True
    """

    def __init__(self, problem, phi0=None, estimator=None, *, workers=1,
                 max_failure_fraction=0.5, **options):
        for key in ("evaluator", "backend", "n_jobs"):
            if key in options:
                raise FG2UValueError(f"AskTell takes no `{key}`: you run the solves; give "
                                     "`workers=` the number of solves a round should hold")
        if isinstance(max_failure_fraction, bool) or not isinstance(
                max_failure_fraction, (int, float)) or not 0 <= max_failure_fraction < 1:
            raise FG2UValueError(f"`max_failure_fraction` must be in [0, 1), got "
                                 f"{max_failure_fraction!r}")
        self.max_failure_fraction = float(max_failure_fraction)
        kwargs = dict(optimizer=None, optimizer_options=None, lr=1e-2, steps=None,
                      schedule="constant", bounds=None, transform=None, phases=None,
                      multistart=None, callback=None, target=None, gtol=None, max_nfev=None,
                      max_time=None, checkpoint=None, checkpoint_every=1, history=None,
                      resume=False, rng=None, progress=False, metadata=None)
        unknown = sorted(set(options) - set(kwargs))
        if unknown:
            raise FG2UTypeError(f"AskTell got unexpected keyword(s) {unknown}; it takes "
                                f"those of fz.minimize but evaluator/backend/n_jobs")
        kwargs.update(options)
        self._prepared = prepare(problem, phi0, estimator, workers=workers, **kwargs)
        self._requests = None      # the group asked
        self._slots = None         # per request, per point: _Slot or None
        self._ids = {}             # id -> (request index, point index)
        self._round = len(self._prepared.search.state.groups)
        self._shapes = {}          # id(solver) -> output shape of its first base solve
        self._status = None
        self._result = None
        p = self._prepared
        if p.fresh and p.store.path is not None:
            p.store.save(p.search, p.search.phis(), "running", "started")

    # -- the protocol ---------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """Whether the run is over (then :meth:`result`)."""
        return self._status is not None

    def ask(self) -> list:
        """The solves of the current round that were not told yet (the same list until
        they are); an empty list once the run is :attr:`done`."""
        if self.done:
            return []
        while self._requests is None:
            search = self._prepared.search
            group = search.next_group()
            if group is None:
                self._finish("done")
                return []
            self._open(group)
        return [self._evaluation(q, j) for q, slots in enumerate(self._slots)
                for j, slot in enumerate(slots) if slot is None]

    def tell(self, id, output=None, *, failure=None):
        """The outcome of the solve ``id``: its output, or a failure (an exception or a
        message); or a dict ``{id: output-or-exception}`` of several at once.

        Raises
        ------
        FG2UValueError
            For an id that was not asked in this round, or that was already told.
        """
        if isinstance(id, dict):
            if output is not None or failure is not None:
                raise FG2UTypeError("pass either tell(id, output) or tell({id: output, ...})")
            for key, value in id.items():
                if isinstance(value, BaseException):
                    self.tell(key, failure=value)
                else:
                    self.tell(key, value)
            return
        if (output is None) == (failure is None):
            raise FG2UTypeError(f"tell({id!r}, ...) needs either the output or failure=")
        where = self._ids.get(id) if self._requests is not None else None
        if where is None:
            raise FG2UValueError(
                f"`id` {id!r} is not a solve of the current round (asked: "
                f"{len(self._ids)} ids such as {next(iter(self._ids), None)!r}); an "
                "answer for an earlier round, or a mistyped id?")
        q, j = where
        if self._slots[q][j] is not None:
            raise FG2UValueError(f"solve {id!r} was already told; each id is told once")
        request = self._requests[q]
        if failure is not None:
            kind, message = (describe_error(failure)[:2] if isinstance(failure, BaseException)
                             else ("exception", str(failure)))
            self._slots[q][j] = _Slot(failure=Failure(j, None, kind, message, 1))
        else:
            theta, bad = check_output(output, self._expected_shape(request))
            if bad is not None:
                self._slots[q][j] = _Slot(failure=Failure(j, None, bad[0], bad[1], 1))
            else:
                self._slots[q][j] = _Slot(theta=theta)
                self._learn_shape(request, theta)
                journal = self._prepared.store.journal
                if journal is not None:
                    journal.record(request.context(accepted_keywords(request.solver)),
                                   request.points[j], theta, solver_time=0.0, attempts=1,
                                   tag=request.tag)
        if all(slot is not None for slots in self._slots for slot in slots):
            self._answer()

    def result(self):
        """The :class:`~fg2u_zo.OptimizeResult` (once :attr:`done`)."""
        if not self.done:
            raise FG2UValueError("the run is not over: ask and tell until `done`")
        return self._result

    def close(self):
        """Release the checkpoint (a run left before it is done can be resumed)."""
        self._prepared.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- rounds -----------------------------------------------------------------------------
    def _open(self, group):
        self._round += 1
        self._requests = group
        self._slots = [[None] * len(r) for r in group]
        self._ids = {f"{self._round}.{k}": (q, j) for k, (q, j) in enumerate(
            (q, j) for q, r in enumerate(group) for j in range(len(r)))}
        journal = self._prepared.store.journal
        if journal is not None and journal.replayable:
            for q, request in enumerate(group):
                context = request.context(accepted_keywords(request.solver))
                for j in range(len(request)):
                    hit = journal.lookup(context, request.points[j])
                    shape = self._expected_shape(request)
                    if hit is not None and (shape is None or hit.theta.shape == shape):
                        self._slots[q][j] = _Slot(theta=hit.theta, replayed=True)
            if all(slot is not None for slots in self._slots for slot in slots):
                self._answer()

    def _evaluation(self, q, j):
        request = self._requests[q]
        tag = request.tag
        run = tag[1] if len(tag) >= 2 and tag[0] == "run" else None
        phase = (self._prepared.search.runs[run].state.phase if run is not None
                 else None)
        index = sum(len(r) for r in self._requests[:q]) + j
        point = np.array(request.points[j], dtype=np.float64)
        return Evaluation(id=f"{self._round}.{index}", phi=point,
                          kwargs=request.kwargs(accepted_keywords(request.solver)),
                          seed=request.seed, warm_start=request.warm_start,
                          solver=request.solver, label=request.label, run=run,
                          phase=phase)

    def _expected_shape(self, request):
        if request.expected_shape is not None:
            return tuple(request.expected_shape)
        return self._shapes.get(id(request.solver))

    def _learn_shape(self, request, theta):
        if request.base:
            self._shapes.setdefault(id(request.solver), theta.shape)

    def _answer(self):
        """Every point of the round is told: build the replies, as an Evaluator would,
        and let the run go on."""
        replies = []
        for request, slots in zip(self._requests, self._slots):
            reply = Reply(thetas=[None] * len(request))
            for j, slot in enumerate(slots):
                if slot.replayed:
                    reply.nfev_replayed += 1
                    self._deliver(request, reply, j, slot.theta)
                elif slot.failure is not None:
                    reply.nfev += 1
                    reply.add_failure(slot.failure)
                else:
                    reply.nfev += 1
                    self._deliver(request, reply, j, slot.theta)
            fraction = (self.max_failure_fraction if request.max_failure_fraction is None
                        else request.max_failure_fraction)
            reply.error = policy_error(reply.failures, len(request), base=request.base,
                                       max_failure_fraction=fraction)
            replies.append(reply)
        self._requests = self._slots = None
        self._ids = {}
        p = self._prepared
        try:
            p.search.tell(replies)
            _checkpoint_round(p.search, p.store, p.checkpoint_every)
        except Exception as exc:
            from .driver import _save_on_error

            p.search.abandon()
            _save_on_error(p.search, p.store, exc)
            p.release()
            raise

    @staticmethod
    def _deliver(request, reply, j, theta):
        if request.on_result is not None:
            request.on_result(j, theta)
        else:
            reply.thetas[j] = theta

    def _finish(self, status):
        p = self._prepared
        try:
            self._result = finish(p, status)
        finally:
            p.release()
        self._status = status
        logger.info("ask/tell run: %s (value %.6g, nfev %d)", self._result.message,
                    self._result.value if math.isfinite(self._result.value) else math.nan,
                    self._result.nfev)
