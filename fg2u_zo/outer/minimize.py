"""User entry points of the outer loop: :func:`minimize` and :func:`resume`.

They check the arguments, resolve phases and the stepper, match a checkpoint against
the call, and hand over to the run loop (:mod:`fg2u_zo.outer.run`). One
:class:`~fg2u_zo.Evaluator` serves the whole run. Checkpoints (see
:mod:`fg2u_zo.outer.checkpoint`) are written every ``checkpoint_every`` steps, at the
end, on SIGINT/SIGTERM and before a failure is re-raised; :func:`resume` continues a
run bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np

from ..errors import CheckpointError, FG2UTypeError, FG2UValueError
from ..evaluation.evaluator import Evaluator
from ..problem import BilevelProblem
from ..validation import as_generator, check_phi, check_positive_float, check_positive_int
from .checkpoint import config_differences, read_checkpoint
from .phases import Phase, build_plans, check_stepper_fits, estimator_from_config
from .result import STATUSES, OptimizeResult
from .run import NonFiniteStepError, Run
from .schedules import schedule_from_config
from .serialization import to_json
from .steppers import make_stepper, stepper_from_config
from .steppers.base import Stepper
from .transforms import ParameterTransform, as_bounds

__all__ = ["minimize", "resume", "Phase", "OptimizeResult", "NonFiniteStepError",
           "MAX_ABS_PHI"]

logger = logging.getLogger(__name__)

#: Largest ``|phi0|`` accepted: perturbations of phi, and its square, stay finite.
MAX_ABS_PHI = 1e150


def minimize(problem, phi0=None, estimator=None, *, optimizer="adam", optimizer_options=None,
             lr=1e-2, steps=100, schedule="constant", bounds=None, transform=None,
             phases=None, callback=None, target=None, gtol=None, max_nfev=None,
             max_time=None, checkpoint=None, checkpoint_every=1, history=None,
             resume=False, rng=None, backend=None, n_jobs=None, evaluator=None,
             progress=None, metadata=None) -> OptimizeResult:
    """Minimize ``F(phi) = f(S(phi), phi)`` with a stepper fed by meta-gradient estimates.

    Each step: ``phi = T(z)``; ``g = estimator.estimate(problem, phi)``; the stepper
    moves ``z`` (a torch optimizer with ``dF/dz = g * T'(z)`` by default); ``phi`` is
    projected into ``bounds``.

    Parameters
    ----------
    problem : BilevelProblem
    phi0 : array_like, shape (N,)
        Starting point, real and finite with ``|phi0| <= 1e150`` (see
        :data:`MAX_ABS_PHI`), inside ``bounds`` (strictly, for ``'logit'`` entries). May
        be omitted when resuming.
    estimator : Estimator, optional
        The meta-gradient estimator (FG2UZO, FG2U, BlackBoxES, ...); the default of
        every phase.
    optimizer : str, torch.optim.Optimizer class or Stepper
        The stepper (one for the whole run; see :mod:`fg2u_zo.outer.steppers`):
        ``"adam"``, ``"sgd"``, ``"gauss-newton"``, any ``torch.optim`` class name
        (case-insensitive, e.g. ``"rprop"``), a name added with
        :func:`fg2u_zo.register_stepper`, a ``torch.optim.Optimizer`` class (built on
        one float64 leaf tensor as ``optimizer([z], lr=lr, **optimizer_options)``), or
        a :class:`fg2u_zo.Stepper` instance.
    optimizer_options : dict, optional
        Options of a stepper given by name or class, e.g. ``{"momentum": 0.9}`` for
        SGD, ``{"betas": (0.9, 0.99)}`` for Adam.
    lr : float
        Base learning rate.
    steps : int
        Number of outer steps (ignored when ``phases`` is given: their steps add up).
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
        (the two-phase paradigm), and optionally their own outer loss (continuation in
        the horizon). The stepper and its state carry over between phases.
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
        Checkpoint file (see :mod:`fg2u_zo.outer.checkpoint`), written every
        ``checkpoint_every`` steps, at the end, on SIGINT/SIGTERM, and before an
        inner-solver failure is re-raised, and once at the start of a new run. Every
        evaluation that finishes is journaled as it arrives in
        ``<checkpoint>.journal`` (see :mod:`fg2u_zo.evaluation.journal`): a run killed
        in the middle of a step (SIGKILL included) and resumed takes the evaluations
        of that step that had finished from there, bit for bit, instead of solving
        them again (``nfev_replayed`` of the result and the history counts them,
        ``nfev`` does not). The journal is emptied at each checkpoint (but for the
        records a resumed run has not reached yet) and removed when the run
        finishes; delete it to solve everything again (after changing the inner
        solver, say). Without a checkpoint, a failure or a signal still
        writes one, to a temporary file named in the message (not for an error
        before the first step is done: there is nothing to save then), and nothing
        is journaled.
    checkpoint_every : int
        Steps between checkpoints (default 1: each step is saved).
    history : path-like, optional
        JSONL file, one line per step (see :mod:`fg2u_zo.outer.history`); the
        checkpoint records it relative to its own directory.
    resume : bool or "auto"
        False: start fresh, and refuse to overwrite an existing ``checkpoint`` file.
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
    progress : bool, optional
        tqdm progress bar with the value and nfev; None: only when stderr is a terminal.
        Needs the ``progress`` extra; without tqdm there is no bar and no error.
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
        On SIGINT, after the current step and a checkpoint. SIGTERM abandons the step in
        progress, writes a checkpoint and returns with ``status="sigterm"``.
    NonFiniteStepError
        (a ``FG2UValueError``) when a step's value, meta-gradient or next point is NaN
        or infinite: the step is not taken and nothing is committed; the state saved
        in the checkpoint is the last good one.
    CheckpointError
        When resuming from a checkpoint that is malformed (the field is named) or
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
    if not isinstance(problem, BilevelProblem):
        raise FG2UTypeError(
            f"`problem` must be a fz.BilevelProblem, got {type(problem).__name__}")
    if resume not in (False, True, "auto"):
        raise FG2UValueError(f"`resume` must be False, True or 'auto', got {resume!r}")
    ck = None
    if checkpoint is not None:
        checkpoint = os.path.abspath(os.fspath(checkpoint))
        if os.path.exists(checkpoint):
            if resume is False:
                raise CheckpointError(
                    f"checkpoint {checkpoint!r} already exists; pass resume=True to continue "
                    "that run (or use fz.resume), or delete the file / choose another path to "
                    "start over")
            ck = read_checkpoint(checkpoint)
        elif resume is True:
            raise CheckpointError(
                f"resume=True but checkpoint {checkpoint!r} does not exist; pass "
                "resume='auto' to start fresh when it is missing")
    elif resume is True:
        raise FG2UValueError("resume=True needs `checkpoint=` the file to continue from")

    if ck is not None:
        num_params = ck.num_params
        if phi0 is not None:
            check_start(phi0, num_params)  # same length, or CheckpointError below
        if problem.num_params is not None and problem.num_params != num_params:
            raise CheckpointError(
                f"checkpoint {checkpoint!r} does not match this problem: num_params: "
                f"checkpoint has {num_params}, the problem has {problem.num_params}")
    else:
        if phi0 is None:
            raise FG2UValueError("pass the starting point `phi0`")
        phi0 = check_start(phi0, problem.num_params)
        num_params = phi0.size
    bounds_ = as_bounds(bounds, num_params)
    T = ParameterTransform.from_spec(transform, num_params, bounds_)
    plans = build_plans(problem, estimator, phases, steps, lr, schedule)
    stepper = make_stepper(optimizer, optimizer_options)
    check_stepper_fits(stepper, plans)
    callbacks = _as_callbacks(callback)
    target = _check_target(target)
    gtol = _check_optional_positive(gtol, "gtol")
    max_nfev = _check_optional_positive(max_nfev, "max_nfev", integer=True)
    max_time = _check_optional_positive(max_time, "max_time")
    checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    history = None if history is None else os.path.abspath(os.fspath(history))
    config = {
        "num_params": num_params,
        "optimizer": _jsonable(stepper.config()),
        "transform": T.config(),
        "phases": [p.config() for p in plans],
        "phase_steps": [p.steps for p in plans],
    }
    if ck is not None:
        _check_matches(checkpoint, ck, config, bounds_)
    else:
        _check_inside(phi0, bounds_)
    if evaluator is not None:
        if backend is not None or n_jobs is not None:
            raise FG2UValueError("pass either `evaluator=` or `backend=`/`n_jobs=`, not both")
        if not isinstance(evaluator, Evaluator):
            raise FG2UTypeError(
                f"`evaluator` must be a fg2u_zo.Evaluator, got {type(evaluator).__name__}")
    metadata = _jsonable(metadata or {})

    run = Run(problem, plans, T, stepper, config, checkpoint=checkpoint,
              checkpoint_every=checkpoint_every, history=history, metadata=metadata)
    own = evaluator is None
    # Built before the run touches any file: a bad backend fails with nothing written.
    ev = Evaluator(backend=backend, n_jobs=n_jobs) if own else evaluator
    try:
        if ck is not None:
            run.start_from(ck)
            logger.info("resuming %s at step %d (phase %d)", checkpoint, ck.step, ck.phase)
        else:
            run.start_fresh(phi0, as_generator(rng))
        status, value = run.run(evaluator=ev, callbacks=callbacks, target=target, gtol=gtol,
                                max_nfev=max_nfev, max_time=max_time, progress=progress)
    finally:
        if own:
            ev.close()
    message = run.signal_message if status == "sigterm" else run.message
    totals = run.state.totals
    logger.info("minimize: %s (value %.6g, nfev %d)", message, value, totals.nfev)
    return OptimizeResult(
        phi=run.phi(), value=float(value), nit=run.state.step, nfev=totals.nfev,
        solver_time=totals.solver_time, wall_time=run.wall_time(),
        history=run.records, message=message, success=STATUSES[status], status=status,
        meta_gradient=run.meta_gradient, z=run.state.z.copy(), phase=run.state.phase,
        checkpoint=run.last_checkpoint, failures=dict(totals.failures),
        nfev_replayed=totals.nfev_replayed, transform=T)


def check_start(phi0, num_params):
    """``phi0`` as a float64 vector: real, finite, not so large that steps overflow."""
    if np.iscomplexobj(phi0) or (isinstance(phi0, (list, tuple)) and any(
            isinstance(v, complex) for v in phi0)):
        raise FG2UTypeError(
            "`phi0` must be real; got complex values (pass phi0.real, or split real and "
            "imaginary parts into separate parameters)")
    phi0 = check_phi(phi0, num_params, "phi0")
    big = np.flatnonzero(np.abs(phi0) > MAX_ABS_PHI)
    if big.size:
        i = int(big[0])
        raise FG2UValueError(
            f"`phi0[{i}]` = {phi0[i]:g} is beyond |phi| <= {MAX_ABS_PHI:g}: finite-difference "
            "points around it (and squares of it) would overflow to inf; rescale the "
            "parameter (e.g. work with log10 of it, or transform='log')")
    return phi0


def _check_inside(phi0, bounds):
    bad = bounds.violations(phi0)
    if not bad.size:
        return
    lines = []
    for i in bad[:5].tolist():
        if phi0[i] < bounds.lower[i]:
            lines.append(f"phi0[{i}] = {phi0[i]:g} is below the lower bound "
                         f"{bounds.lower[i]:g}")
        else:
            lines.append(f"phi0[{i}] = {phi0[i]:g} is above the upper bound "
                         f"{bounds.upper[i]:g}")
    more = f" (and {bad.size - 5} more)" if bad.size > 5 else ""
    raise FG2UValueError("`phi0` must lie inside `bounds`: " + "; ".join(lines) + more)


def _check_target(target):
    if target is None:
        return None
    if isinstance(target, bool) or np.iscomplexobj(target):
        raise FG2UTypeError(f"`target` must be a real number, got {target!r}")
    try:
        value = float(target)
    except (TypeError, ValueError):
        raise FG2UTypeError(f"`target` must be a real number, got {target!r}") from None
    if np.isnan(value):
        raise FG2UValueError("`target` must be a number, got nan; pass None for no target")
    return value


def _as_callbacks(callback):
    if callback is None:
        return []
    if callable(callback):
        return [callback]
    try:
        callbacks = list(callback)
    except TypeError:
        raise FG2UTypeError(
            f"`callback` must be a callable or a list of callables, got "
            f"{type(callback).__name__}") from None
    for cb in callbacks:
        if not callable(cb):
            raise FG2UTypeError(f"`callback` entries must be callable, got {type(cb).__name__}")
    return callbacks


def _check_optional_positive(value, name, integer=False):
    if value is None:
        return None
    if integer:
        return check_positive_int(value, name)
    return check_positive_float(value, name)


def _jsonable(value):
    """``value`` as JSON for the checkpoint, or a TypeError naming what cannot be stored."""
    try:
        encoded = to_json(value)
        json.dumps(encoded, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise FG2UTypeError(f"cannot store {value!r} in a checkpoint (JSON): {exc}") from None
    return encoded


def _check_matches(path, ck, config, bounds):
    """Raise CheckpointError naming every difference that would change the trajectory."""
    saved = dict(ck.config)
    diffs = []
    saved_steps = saved.pop("phase_steps", None)
    current = dict(config)
    current_steps = current.pop("phase_steps")
    diffs += config_differences(saved, current)
    if saved_steps is not None:
        if len(saved_steps) != len(current_steps):
            diffs.append(f"number of phases: checkpoint has {len(saved_steps)}, this run has "
                         f"{len(current_steps)}")
        else:
            # Phases already finished must keep their length; the current and later ones
            # may be lengthened (to continue a run) or shortened down to where it is.
            for i in range(min(ck.phase, len(saved_steps))):
                if saved_steps[i] != current_steps[i]:
                    diffs.append(f"phases[{i}].steps: checkpoint has {saved_steps[i]} (a "
                                 f"finished phase), this run has {current_steps[i]}")
            if ck.phase < len(current_steps) and current_steps[ck.phase] < ck.step_in_phase:
                diffs.append(f"phases[{ck.phase}].steps: the checkpoint is {ck.step_in_phase} "
                             f"steps into it, this run allows only {current_steps[ck.phase]}")
    for name, saved_b, cur_b in (("lower", ck.lower, bounds.lower),
                                 ("upper", ck.upper, bounds.upper)):
        if saved_b.shape != cur_b.shape or not np.array_equal(saved_b, cur_b):
            diffs.append(f"bounds ({name}): checkpoint has {saved_b.tolist()}, this run has "
                         f"{cur_b.tolist()}")
    if diffs:
        raise CheckpointError(
            f"checkpoint {path!r} does not match this run:\n  " + "\n  ".join(diffs)
            + "\nresume with the configuration it was written with (fz.resume rebuilds it), "
              "or start a new run with another checkpoint path")


def resume(checkpoint, problem, estimator=None, *, phases=None, optimizer=None,
           schedule=None, steps=None, **options) -> OptimizeResult:
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
        checkpoint's, resolved against the checkpoint's directory), ``backend``,
        ``n_jobs``, ``evaluator``, ``progress``, ``metadata``.

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
    for key in ("resume", "phi0", "rng", "lr", "transform", "bounds", "optimizer_options"):
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
        extra = steps - sum(saved_steps)
        if saved_steps[-1] + extra < 1 or steps < ck.step:
            raise FG2UValueError(
                f"`steps` must be >= {max(ck.step, sum(saved_steps[:-1]) + 1)} (steps already "
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
    options.setdefault("history", ck.history_path)
    options.setdefault("metadata", ck.metadata)
    bounds = (ck.lower, ck.upper)
    return minimize(problem, None, None, optimizer=optimizer, optimizer_options=options_,
                    lr=saved_phases[0]["lr"], phases=phases, bounds=bounds,
                    transform=list(cfg["transform"]), checkpoint=path, resume=True,
                    **options)


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
    return Phase(steps=steps, estimator=est, lr=pc["lr"], schedule=sched)
