"""User entry points of the outer loop: :func:`minimize` and :func:`resume`.

They check the arguments and build the run (:mod:`fg2u_zo.outer.setup`), then answer
its requests with one :class:`~fg2u_zo.Evaluator` until it is done
(:mod:`fg2u_zo.outer.driver`). Checkpoints (see :mod:`fg2u_zo.persist.checkpoint`) are
written every ``checkpoint_every`` steps, at the end, on SIGINT/SIGTERM and before a
failure is re-raised; :func:`resume` continues a run bit for bit, a multi-start and a
continuation included.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

import numpy as np

from ..errors import CheckpointError, FG2UTypeError, FG2UValueError, NonFiniteStepError
from ..evaluation.evaluator import Evaluator
from ..persist.checkpoint import read_checkpoint
from .driver import drive_search
from .phases import Phase, estimator_from_config
from .result import STATUSES, OptimizeResult, RunSummary
from .schedules import schedule_from_config
from .setup import MAX_ABS_PHI, prepare
from .steppers import stepper_from_config
from .steppers.base import Stepper
from ..validation import check_positive_int

__all__ = ["minimize", "resume", "Phase", "OptimizeResult", "NonFiniteStepError",
           "MAX_ABS_PHI", "register_strategy"]

logger = logging.getLogger(__name__)

#: Multi-start strategies a checkpoint may name, as "module:attr" (imported when asked).
_STRATEGIES = {"multistart": "fg2u_zo.globalize.multistart:MultiStart"}


def register_strategy(name, target):
    """Let checkpoints name a strategy (``"module:attr"`` of a class with
    ``from_config``); used by :mod:`fg2u_zo.globalize`."""
    _STRATEGIES[name] = target


def minimize(problem, phi0=None, estimator=None, *, optimizer=None, optimizer_options=None,
             lr=1e-2, steps=None, schedule="constant", bounds=None, transform=None,
             phases=None, multistart=None, callback=None, target=None, gtol=None,
             max_nfev=None, max_time=None, checkpoint=None, checkpoint_every=1,
             history=None, resume=False, rng=None, backend=None, n_jobs=None,
             evaluator=None, workers=None, progress=None, metadata=None) -> OptimizeResult:
    """Minimize ``F(phi) = f(S(phi), phi)``.

    By default (``optimizer`` left out) a torch outer loss gets the Gauss–Newton trust
    region, built from forward differences of the inner solver, which stops by itself
    (status ``"converged"``); an outer loss that is not differentiable gets Adam on
    ``BlackBoxES`` estimates (see :mod:`fg2u_zo.outer.defaults`; the result's
    ``optimizer`` says which). With a first-order stepper each step is ``phi = T(z)``,
    ``g = estimator.estimate(problem, phi)``, the stepper moves ``z`` (a torch
    optimizer with ``dF/dz = g * T'(z)``); ``phi`` is projected into ``bounds``.

    Parameters
    ----------
    problem : BilevelProblem
    phi0 : array_like, shape (N,)
        Starting point, real and finite with ``|phi0| <= 1e150`` (see
        :data:`MAX_ABS_PHI`), inside ``bounds`` (strictly, for ``'logit'`` entries). May
        be omitted when resuming.
    estimator : Estimator, optional
        The meta-gradient estimator (FG2UZO, FG2U, BlackBoxES, ...); the default of
        every phase. Default: ``FG2UZO(scheme="forward")`` for the Gauss–Newton
        stepper, ``FG2UZO()`` for a first-order one, ``FG2U()`` when the problem has
        only a torch inner solver, ``BlackBoxES()`` for an outer loss that is not
        differentiable.
    optimizer : str, torch.optim.Optimizer class or Stepper, optional
        The stepper (one for the whole run; see :mod:`fg2u_zo.outer.steppers`).
        Default: ``"gauss-newton"`` for a torch outer loss (keeping the newest 1000
        directions above N = 1000), ``"adam"`` otherwise. Or
        ``"adam"``, ``"sgd"``, ``"gauss-newton"``, any ``torch.optim`` class name
        (case-insensitive, e.g. ``"rprop"``), a name added with
        :func:`fg2u_zo.register_stepper`, a ``torch.optim.Optimizer`` class (built on
        one float64 leaf tensor as ``optimizer([z], lr=lr, **optimizer_options)``), or
        a :class:`fg2u_zo.Stepper` instance.
    optimizer_options : dict, optional
        Options of a stepper given by name or class, e.g. ``{"momentum": 0.9}`` for
        SGD, ``{"betas": (0.9, 0.99)}`` for Adam.
    lr : float
        Base learning rate (first-order steppers).
    steps : int, optional
        Most outer steps (ignored when ``phases`` is given: their steps add up).
        Default: ``100 (N + 1)`` for the Gauss–Newton stepper, which stops by itself
        long before; 100 for a first-order stepper.
    schedule : {"constant", "cosine", "linear"} or callable
        Learning-rate factor ``schedule(step, num_steps)`` over each phase's steps (see
        :mod:`fg2u_zo.outer.schedules`); ``"linear"`` is the decay of the FG²U paper's PDE runs.
    bounds : (lo, hi) or scipy.optimize.Bounds, optional
        Numbers or per-parameter sequences; None means unbounded. Enforced by projection
        after every step (and by the transform for ``'logit'`` entries).
    transform : None, "log", "logit", a sequence of N names, or [(indices, name), ...]
        Reparametrization ``phi = T(z)`` per parameter (see :mod:`fg2u_zo.outer.transforms`);
        the optimizer moves ``z``.
    phases : list of Phase, optional
        Successive segments with their own estimator, steps, inner solver, lr and schedule
        (the two-phase paradigm), and optionally their own outer loss and a rule that
        ends them early (continuation in the horizon: :func:`fg2u_zo.horizon_phases`).
        The stepper and its state carry over between phases unless a phase restarts it.
    multistart : MultiStart, optional
        Run from the best points of a space-filling design inside the (finite)
        ``bounds``, the local runs in lockstep, with successive halving (see
        :class:`fg2u_zo.MultiStart`); ``phi0`` (optional then) is screened with the
        design. One run: one checkpoint, one journal, one history (``record.run``
        says which local run a step belongs to); the result's ``runs`` has every local
        run, its ``phi`` the best end.
    callback : callable or list of callables, optional
        ``callback(record: StepRecord)`` after each step; returning True stops the run.
    target : float, optional
        Stop once the value at the start of a step is <= target.
    gtol : float, optional
        Stop once ``||g||`` (in phi space) is <= gtol.
    max_nfev : int, optional
        Do not start a step once this many inner solves were spent (replayed ones
        included, see ``checkpoint``).
    max_time : float, optional
        Do not start a step after this many seconds of wall-clock time.
    checkpoint : path-like, optional
        Checkpoint file (see :mod:`fg2u_zo.persist.checkpoint`), written every
        ``checkpoint_every`` steps, at the end, on SIGINT/SIGTERM, and before an
        inner-solver failure is re-raised, and once at the start of a new run; held
        by one process at a time (a second run on it is refused). Every solve that
        finishes is journaled as it arrives in ``<checkpoint>.journal`` (see
        :mod:`fg2u_zo.persist.journal`): a run killed in the middle of a step (SIGKILL
        included) and resumed takes the solves of that step that had finished from
        there, bit for bit, instead of solving them again (``nfev_replayed`` of the
        result and the history counts them, ``nfev`` does not). At each checkpoint the
        journal keeps only the solves of steps not yet committed; it is removed when
        the run finishes, and not replayed when the solver's fingerprint changed.
        Without a checkpoint, a failure or a signal still writes one, to a temporary
        file named in the message (not for an error before the first step is done:
        there is nothing to save then), and nothing is journaled.
    checkpoint_every : int
        Steps between checkpoints (default 1: each step is saved).
    history : path-like, optional
        JSONL file, one line per step (see :mod:`fg2u_zo.persist.history`); the
        checkpoint records it relative to its own folder (a resumption continues it
        only when it lies in that folder, or when the resumed call names it).
    resume : bool or "auto"
        False: start fresh, and refuse to overwrite an existing ``checkpoint`` file
        (unless it holds no completed step: a run that failed at its start is simply
        replaced).
        True: continue from ``checkpoint`` (which must exist) exactly where it stopped;
        its configuration must match this call (:class:`CheckpointError` names what
        differs); ``rng`` and ``phi0`` are then taken from the checkpoint. ``"auto"``:
        continue when the file exists, else start fresh.
    rng : None, int or numpy.random.Generator
        Draws the directions, always in this process.
    backend, n_jobs : optional
        Options of the one :class:`Evaluator` made for the whole run and closed at its
        end. Or pass ``evaluator=`` (kept open).
    evaluator : Evaluator, optional
    workers : int, optional
        The run's width: how many solves one parallel round holds (what the
        Gauss–Newton stepper fills). Default: the Evaluator's simultaneous evaluations
        at the start. Stored in the checkpoint: a resumption keeps it whatever its
        number of workers, so the trajectory does not depend on them.
    progress : bool, optional
        tqdm progress bar with the value and nfev; None: only when stderr is a terminal.
        Needs the ``progress`` extra; without tqdm there is no bar and no error. Each
        step is also logged at INFO (logger ``fg2u_zo.outer.progress``).
    metadata : dict, optional
        JSON-able data stored in the checkpoint (the CLI stores its config path).

    Returns
    -------
    OptimizeResult

    Raises
    ------
    InnerSolverError
        When an estimate fails past the evaluator's threshold; a checkpoint of the state
        at the start of the failed step is written first and its path is in the message
        (and in ``exc.checkpoint``).
    KeyboardInterrupt
        On SIGINT, after the steps in progress and a checkpoint. SIGTERM abandons the
        steps in progress, writes a checkpoint and returns with ``status="sigterm"``.
    NonFiniteStepError
        (a ``FG2UValueError``) when a step's value, meta-gradient or next point is NaN
        or infinite: the step is not taken and nothing is committed; the state saved
        in the checkpoint is the last good one.
    CheckpointError
        When another process holds the checkpoint, or when resuming from a checkpoint
        that is malformed (the field is named) or
        does not match this run.

    Examples
    --------
    >>> import numpy as np, fg2u_zo as fz
    >>> from fg2u_zo.testing import RidgeHyperproblem
    >>> ridge = RidgeHyperproblem(num_features=3)
    >>> res = fz.minimize(ridge.problem(), np.zeros(3), fz.FG2UZO(num_directions=4),
    ...                   lr=0.1, steps=30, bounds=(-3, 3), rng=0, progress=False)
    >>> bool(res.value < ridge.problem().outer_value(ridge.inner(np.zeros(3)), np.zeros(3)))
    True
    """
    if evaluator is not None:
        if backend is not None or n_jobs is not None:
            raise FG2UValueError("pass either `evaluator=` or `backend=`/`n_jobs=`, not both")
        if not isinstance(evaluator, Evaluator):
            raise FG2UTypeError(
                f"`evaluator` must be a fg2u_zo.Evaluator, got {type(evaluator).__name__}")
    own = evaluator is None
    # Built before the run touches any file: a bad backend fails with nothing written.
    ev = Evaluator(backend=backend, n_jobs=n_jobs) if own else evaluator
    try:
        prepared = prepare(
            problem, phi0, estimator, optimizer=optimizer,
            optimizer_options=optimizer_options, lr=lr, steps=steps, schedule=schedule,
            bounds=bounds, transform=transform, phases=phases, multistart=multistart,
            callback=callback, target=target, gtol=gtol, max_nfev=max_nfev,
            max_time=max_time, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
            history=history, resume=resume, rng=rng, workers=workers, progress=progress,
            metadata=metadata, workers_of=lambda stepper: ev.workers)
        try:
            status = drive_search(prepared.search, ev, prepared.store,
                                  checkpoint_every=prepared.checkpoint_every,
                                  fresh=prepared.fresh)
            result = finish(prepared, status)
        finally:
            prepared.release()
    finally:
        if own:
            ev.close()
    logger.info("minimize: %s (value %.6g, nfev %d)", result.message, result.value,
                result.nfev)
    return result


def finish(prepared, status) -> OptimizeResult:
    """Write the last checkpoint and build the result of a run that stopped."""
    search, store = prepared.search, prepared.store
    if status == "done":
        failed = [run for run in search.runs if run.state.status == "failed"]
        if search.runs and len(failed) == len(search.runs):
            # Every local run raised: that is the run's error, not a result.
            if store.path is not None:
                store.save(search, search.phis(), "failed", search.message())
            first = failed[0].error
            if first is not None:
                if hasattr(first, "add_note"):
                    first.add_note(f"fg2u-zo: every one of the {len(failed)} local runs "
                                   "raised; this is the first run's error")
                raise first
        if search.strategy is not None:
            search.strategy.finish(search)
        if store.path is not None:
            store.save(search, search.phis(), "finished", search.message())
    return build_result(prepared, status)


def build_result(prepared, status) -> OptimizeResult:
    """The :class:`OptimizeResult` of a run in its present state."""
    search = prepared.search
    totals = search.totals()
    runs = [_summary(run) for run in search.runs]
    best = search.best()
    run = search.runs[best] if search.runs else None
    if status == "sigterm":
        run_status, message, value = "sigterm", search.signal_message, math.nan
    else:
        run_status = run.state.status if run is not None else "failed"
        value = run.state.final_value if run is not None and \
            run.state.final_value is not None else math.nan
        message = search.message()
    success = (STATUSES.get(run_status, False) if search.strategy is None
               else any(STATUSES.get(r.status, False) for r in runs) and status == "done")
    return OptimizeResult(
        phi=run.phi() if run is not None else np.full(prepared.transform.num_params, np.nan),
        value=float(value), nit=sum(r.nit for r in runs), nfev=totals.nfev,
        solver_time=totals.solver_time, wall_time=search.wall_time(),
        history=list(search.records), message=message, success=bool(success),
        status=run_status, meta_gradient=run.meta_gradient if run is not None else None,
        z=run.state.z.copy() if run is not None else None,
        phase=run.state.phase if run is not None else 0, checkpoint=prepared.store.last,
        failures=dict(totals.failures), nfev_replayed=totals.nfev_replayed,
        lost=dict(totals.lost),
        groups=list(search.state.groups), workers=prepared.workers,
        optimizer=str(prepared.stepper.config().get("name", "")),
        transform=prepared.transform, phases=runs[best].phases if runs else [],
        runs=runs, design=np.asarray(search.state.design),
        design_values=np.asarray(search.state.design_values))


def _summary(run) -> RunSummary:
    s = run.state
    value = s.final_value if s.final_value is not None else math.inf
    return RunSummary(index=run.index, start=run.start.copy() if run.start is not None
                      else run.phi(), phi=run.phi(), value=float(value),
                      status=s.status or "stopped", nit=s.step, nfev=s.totals.nfev,
                      phase=s.phase, stopped_at=s.stopped_at, error=s.error,
                      phases=run.phase_summaries())


def resume(checkpoint, problem, estimator=None, *, phases=None, optimizer=None,
           schedule=None, steps=None, multistart=None, **options) -> OptimizeResult:
    """Continue a run from its checkpoint, exactly where it stopped.

    The estimators, stepper, learning rates, schedules, transforms and bounds are
    rebuilt from the checkpoint (the stepper only through the stepper registry: a
    checkpoint names data, never code); pass only what it cannot hold (a custom
    estimator class, a phase's inner solver or outer loss, a schedule callable, a stepper
    that is not registered). What you pass must match what the checkpoint recorded.

    Parameters
    ----------
    checkpoint : path-like
    problem : BilevelProblem
        The same problem (its num_params is checked).
    estimator, phases, optimizer, schedule : optional
        Needed only when the checkpoint cannot rebuild them (the error says which).
    steps : int, optional
        New total number of steps; the last phase is lengthened (or shortened) to match.
        Default: the run's original length.
    **options
        Other :func:`minimize` keywords: ``callback``, ``target``, ``gtol``,
        ``max_nfev``, ``max_time``, ``checkpoint_every``, ``history`` (default: the
        checkpoint's, when it lies in the checkpoint's folder), ``backend``,
        ``n_jobs``, ``evaluator``, ``progress``, ``metadata``.

    A finished run resumed with no more steps is answered from its checkpoint, with
    no solve.

    Returns
    -------
    OptimizeResult

    Examples
    --------
    >>> import os, tempfile, numpy as np, fg2u_zo as fz
    >>> from fg2u_zo.testing import RidgeHyperproblem
    >>> problem = RidgeHyperproblem(num_features=3).problem()
    >>> path = os.path.join(tempfile.mkdtemp(), "run.ckpt")
    >>> first = fz.minimize(problem, np.zeros(3), fz.FG2UZO(num_directions=4), lr=0.1,
    ...                     steps=5, rng=0, checkpoint=path, progress=False)
    >>> more = fz.resume(path, problem, steps=8, progress=False)
    >>> more.nit
    8
    """
    for key in ("resume", "phi0", "rng", "lr", "transform", "bounds", "optimizer_options",
                "workers"):
        if key in options:
            raise FG2UValueError(
                f"resume() takes `{key}` from the checkpoint; to change it start a new run "
                "with fz.minimize")
    path = os.path.abspath(os.fspath(checkpoint))
    ck = read_checkpoint(path)
    cfg = ck.config
    saved_phases = cfg["phases"]
    saved_steps = list(cfg["phase_steps"])
    if steps is not None:
        steps = check_positive_int(steps, "steps")
        done = max((run.step for run in ck.search.runs), default=0)
        extra = steps - sum(saved_steps)
        if saved_steps[-1] + extra < 1 or steps < done:
            raise FG2UValueError(
                f"`steps` must be >= {max(done, sum(saved_steps[:-1]) + 1)} (steps already "
                f"done / length of the earlier phases), got {steps}")
        saved_steps[-1] += extra
    if phases is None:
        phases = [_saved_phase(i, pc, n, estimator, schedule)
                  for i, (pc, n) in enumerate(zip(saved_phases, saved_steps))]
    elif steps is not None:
        phases = list(phases)
        phases[-1] = dataclasses.replace(phases[-1], steps=saved_steps[-1])
    if optimizer is None:
        optimizer = stepper_from_config(cfg["optimizer"])
        options_ = None
    elif isinstance(optimizer, Stepper):
        options_ = None
    else:
        options_ = cfg["optimizer"].get("options")
    if multistart is None and cfg.get("multistart") is not None:
        multistart = strategy_from_config(cfg["multistart"])
    if "history" not in options and ck.history_path is not None:
        options["history"] = ck.history_path
    options.setdefault("metadata", ck.metadata)
    bounds = (ck.lower, ck.upper)
    return minimize(problem, None, None, optimizer=optimizer, optimizer_options=options_,
                    lr=saved_phases[0]["lr"], phases=phases, bounds=bounds,
                    transform=list(cfg["transform"]), checkpoint=path, resume=True,
                    multistart=multistart, **options)


def strategy_from_config(config):
    """Rebuild a checkpoint's multi-start strategy through :data:`_STRATEGIES` only."""
    import importlib

    name = config.get("name") if isinstance(config, dict) else None
    target = _STRATEGIES.get(name)
    if target is None:
        raise CheckpointError(f"checkpoint field `config.multistart.name` must be one of "
                              f"{sorted(_STRATEGIES)}, got {name!r:.80}")
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    try:
        return cls.from_config(config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint field `config.multistart` does not build: "
                              f"{exc}") from None


def _saved_phase(i, pc, steps, estimator, schedule):
    """Phase ``i`` rebuilt from its checkpoint record."""
    if pc.get("solver") is not None or pc.get("outer") is not None:
        raise CheckpointError(
            f"phase {i} of the checkpoint ran on its own inner solver or outer loss, which "
            "a checkpoint cannot hold; pass phases=[fz.Phase(...), ...] as in the "
            "original run")
    est = estimator
    if est is None:
        est = estimator_from_config(pc["estimator"])
        if est is None:
            raise CheckpointError(
                f"cannot rebuild phase {i}'s estimator {pc['estimator'].get('name')!r} "
                "from the checkpoint; pass estimator= (or phases=) as in the original run")
    sched = schedule_from_config(pc["schedule"])
    if sched is None:
        if schedule is None:
            raise CheckpointError(
                f"phase {i} used the schedule {pc['schedule'].get('callable')}, a callable "
                "a checkpoint cannot hold; pass schedule= as in the original run")
        sched = schedule
    until = pc.get("until")
    if until is not None:
        from .convergence import Converged

        try:
            until = Converged(**until)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"phase {i}'s `until` rule does not build: {exc}") from None
    return Phase(steps=steps, estimator=est, lr=pc["lr"], schedule=sched, until=until,
                 restart=bool(pc.get("restart", False)), carry_lr=pc.get("carry_lr"))
