"""From the arguments of :func:`fg2u_zo.minimize` (or :class:`fg2u_zo.AskTell`) to a
ready :class:`~fg2u_zo.outer.search.Search` and the files it writes.

Every argument is checked here, before anything is solved or written; a checkpoint to
resume is read, locked against a second run and matched against the call (every
difference that would change the trajectory is named). Both entry points share this
module, so a run driven by an Evaluator and one driven by the user's scheduler are the
same run, bit for bit.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass

import numpy as np

from ..errors import CheckpointError, FG2UTypeError, FG2UValueError
from ..evaluation.fingerprint import solver_fingerprint
from ..problem import BilevelProblem
from ..persist.checkpoint import CheckpointLock, RunStore, read_checkpoint
from ..persist.match import check_matches
from ..persist.codec import to_json
from ..validation import as_generator, check_phi, check_positive_float, check_positive_int
from .phases import build_plans, check_stepper_fits
from .run import LocalRun
from .search import Search
from .steppers import make_stepper
from .transforms import ParameterTransform, as_bounds

__all__ = ["prepare", "Prepared", "check_start", "as_callbacks", "default_steps",
           "MAX_ABS_PHI", "RUN_DEFAULTS"]

logger = logging.getLogger(__name__)

#: Largest ``|phi0|`` accepted: perturbations of phi, and its square, stay finite.
MAX_ABS_PHI = 1e150

#: The run's keywords and their defaults, as :func:`fg2u_zo.minimize` has them (but
#: ``workers`` and ``progress``, which each entry point sets itself).
RUN_DEFAULTS = dict(optimizer=None, optimizer_options=None, lr=1e-2, steps=None,
                    schedule="constant", bounds=None, transform=None, phases=None,
                    multistart=None, callback=None, target=None, gtol=None, max_nfev=None,
                    max_time=None, checkpoint=None, checkpoint_every=1, history=None,
                    resume=False, rng=None, metadata=None)

#: Statuses of local runs that a resumption may continue (with more steps, a larger
#: budget): the run re-checks them before its next step.
_REOPEN = ("steps", "converged", "max_nfev", "max_time")


@dataclass
class Prepared:
    """A run ready to go: its search, its files, and what it was built from."""

    search: Search
    store: RunStore
    lock: CheckpointLock | None
    fresh: bool
    checkpoint_every: int
    transform: ParameterTransform
    stepper: object
    workers: int
    resumed: object = None

    def release(self):
        self.store.close()
        if self.lock is not None:
            self.lock.release()


def prepare(problem, phi0, estimator, *, optimizer, optimizer_options, lr, steps, schedule,
            bounds, transform, phases, multistart, callback, target, gtol, max_nfev,
            max_time, checkpoint, checkpoint_every, history, resume, rng, workers,
            progress, metadata, workers_of=None) -> Prepared:
    """Check everything and build the run (see :func:`fg2u_zo.minimize` for the
    arguments). ``workers_of(stepper)`` gives the width when ``workers`` is None."""
    if not isinstance(problem, BilevelProblem):
        raise FG2UTypeError(
            f"`problem` must be a fz.BilevelProblem, got {type(problem).__name__}")
    if resume not in (False, True, "auto"):
        raise FG2UValueError(f"`resume` must be False, True or 'auto', got {resume!r}")
    if checkpoint is None and resume is True:
        raise FG2UValueError("resume=True needs `checkpoint=` the file to continue from")
    lock = None
    if checkpoint is not None:
        checkpoint = os.path.abspath(os.fspath(checkpoint))
        lock = CheckpointLock(checkpoint).acquire()
    try:
        return _prepare(problem, phi0, estimator, lock=lock, optimizer=optimizer,
                        optimizer_options=optimizer_options, lr=lr, steps=steps,
                        schedule=schedule, bounds=bounds, transform=transform, phases=phases,
                        multistart=multistart, callback=callback, target=target, gtol=gtol,
                        max_nfev=max_nfev, max_time=max_time, checkpoint=checkpoint,
                        checkpoint_every=checkpoint_every, history=history, resume=resume,
                        rng=rng, workers=workers, progress=progress, metadata=metadata,
                        workers_of=workers_of)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _prepare(problem, phi0, estimator, *, lock, optimizer, optimizer_options, lr, steps,
             schedule, bounds, transform, phases, multistart, callback, target, gtol,
             max_nfev, max_time, checkpoint, checkpoint_every, history, resume, rng, workers,
             progress, metadata, workers_of):
    ck = None
    if checkpoint is not None:
        if os.path.exists(checkpoint):
            candidate = read_checkpoint(checkpoint)
            if resume is False and not blocks_a_new_run(candidate):
                candidate = None  # nothing done yet: a new run replaces it
            elif resume is False:
                raise CheckpointError(
                    f"checkpoint {checkpoint!r} already exists; pass resume=True to continue "
                    "that run (or use fz.resume), or delete the file / choose another path to "
                    "start over")
            ck = candidate
        elif resume is True:
            raise CheckpointError(
                f"resume=True but checkpoint {checkpoint!r} does not exist; pass "
                "resume='auto' to start fresh when it is missing")

    if ck is not None:
        num_params = ck.num_params
        if phi0 is not None:
            check_start(phi0, num_params)  # same length, or CheckpointError below
        if problem.num_params is not None and problem.num_params != num_params:
            raise CheckpointError(
                f"checkpoint {checkpoint!r} does not match this problem: num_params: "
                f"checkpoint has {num_params}, the problem has {problem.num_params}")
    elif phi0 is not None:
        phi0 = check_start(phi0, problem.num_params)
        num_params = phi0.size
    elif multistart is not None:
        num_params = _size_from_bounds(problem, bounds)
    else:
        raise FG2UValueError("pass the starting point `phi0`")
    bounds_ = as_bounds(bounds, num_params)
    T = ParameterTransform.from_spec(transform, num_params, bounds_)
    optimizer, optimizer_options, estimator, steps = _with_defaults(
        problem, num_params, optimizer, optimizer_options, estimator, steps, phases)
    plans = build_plans(problem, estimator, phases, steps, lr, schedule)
    stepper = make_stepper(optimizer, optimizer_options)
    check_stepper_fits(stepper, plans)
    callbacks = as_callbacks(callback)
    limits = {"target": _check_target(target),
              "gtol": _check_optional_positive(gtol, "gtol"),
              "max_nfev": _check_optional_positive(max_nfev, "max_nfev", integer=True),
              "max_time": _check_optional_positive(max_time, "max_time")}
    checkpoint_every = check_positive_int(checkpoint_every, "checkpoint_every")
    history = None if history is None else os.path.abspath(os.fspath(history))
    strategy = None
    if multistart is not None:
        if not callable(getattr(multistart, "bind", None)):
            raise FG2UTypeError(f"`multistart` must be a fz.MultiStart(...), got "
                                f"{type(multistart).__name__}")
        strategy = multistart.bind(problem=problem, plans=plans, bounds=bounds_, phi0=phi0,
                                   num_params=num_params)
    if ck is not None:
        workers = _checkpoint_workers(ck, workers)
    elif workers is not None:
        workers = check_positive_int(workers, "workers")
    else:
        workers = int(workers_of(stepper)) if workers_of is not None else 1
    config = {
        "num_params": num_params,
        "optimizer": _jsonable(stepper.config()),
        "transform": T.config(),
        "phases": [p.config() for p in plans],
        "phase_steps": [p.steps for p in plans],
        "multistart": None if multistart is None else _jsonable(multistart.config()),
        "workers": workers,
    }
    if ck is not None:
        check_matches(checkpoint, ck, config, bounds_)
        for i, run in enumerate(ck.search.runs):
            try:
                stepper.check_state(run.stepper_state, num_params)
            except (TypeError, ValueError, KeyError) as exc:
                raise CheckpointError(
                    f"checkpoint {checkpoint!r}: the stepper state of run {i} does not fit "
                    f"{stepper.config().get('name')!r}: {exc}") from None
    elif phi0 is not None:
        _check_inside(phi0, bounds_)
    metadata = _jsonable(metadata or {})
    fingerprint = {"problem": solver_fingerprint(problem.inner),
                   "phases": [solver_fingerprint(p.problem.inner) for p in plans]}

    def make_run(index):
        return LocalRun(index, problem, plans, T, stepper, limits=limits,
                        callbacks=callbacks, workers=workers,
                        rung_steps=() if strategy is None else strategy.rung_steps,
                        rung_phases=strategy is not None and strategy.rung_phases)

    search = Search(problem, make_run, strategy=strategy,
                    isolate_failures=strategy is not None, progress=progress, total_steps=sum(p.steps for p in plans) * (
                        1 if strategy is None else strategy.num_local))
    store = RunStore(checkpoint, config=config, metadata=metadata, lower=bounds_.lower,
                     upper=bounds_.upper, history=history, fingerprint=fingerprint)
    search.store = store
    if ck is not None:
        search.start_from(ck.search)
        _reopen(search)
        store.open_resumed(ck, search.records)
        logger.info("resuming %s (%d steps done)", checkpoint, ck.step)
    else:
        search.start_fresh(phi0, as_generator(rng))
        store.open_fresh()
    return Prepared(search=search, store=store, lock=lock, fresh=ck is None,
                    checkpoint_every=checkpoint_every, transform=T, stepper=stepper,
                    workers=workers, resumed=ck)


def _with_defaults(problem, num_params, optimizer, optimizer_options, estimator, steps,
                   phases):
    """The call's ``optimizer``, ``estimator`` and ``steps``, with what it left out
    (None) taken from :func:`~fg2u_zo.outer.defaults.default_method`."""
    from .defaults import default_estimator, default_method

    if optimizer is None:
        method = default_method(problem, num_params)
        optimizer = method.optimizer
        optimizer_options = {**method.optimizer_options, **(optimizer_options or {})}
    if steps is None:
        steps = default_steps(problem, num_params, optimizer)
    needs_estimator = phases is None or any(
        getattr(p, "estimator", None) is None for p in
        (phases if isinstance(phases, (list, tuple)) else [phases]))
    if estimator is None and needs_estimator:
        estimator = default_estimator(
            problem, "gauss-newton" if _is_gauss_newton(optimizer) else "first-order")
    return optimizer, optimizer_options, estimator, steps


def default_steps(problem, num_params, optimizer=None) -> int:
    """Steps of a run that gives none: the Gauss–Newton stepper stops by itself, and
    gets ``100 (N + 1)`` as a guard; a first-order stepper 100."""
    from .defaults import FIRST_ORDER_STEPS, default_method

    if optimizer is None:
        return default_method(problem, num_params).steps
    if _is_gauss_newton(optimizer):
        return 100 * (int(num_params) + 1)
    return FIRST_ORDER_STEPS


def _is_gauss_newton(optimizer) -> bool:
    if isinstance(optimizer, str):
        return optimizer.strip().lower() == "gauss-newton"
    return getattr(optimizer, "name", None) == "gauss-newton"


def blocks_a_new_run(ck) -> bool:
    """Whether an existing checkpoint holds work a new run must not overwrite (a run
    that failed before its first step holds none: the rerun after a config mistake
    just replaces it)."""
    return ck.step > 0 or ck.search.stage not in ("screen", "local") or any(
        run.totals.nfev for run in ck.search.runs) or ck.search.totals.nfev > 0


def _reopen(search):
    """Runs that stopped for a reason a resumed call may lift (more steps, a larger
    budget) re-check it before their next step; the final stage follows again."""
    reopened = False
    for run in search.runs:
        if run.state.status in _REOPEN:
            run.state.status = None
            run.state.message = ""
            reopened = True
    if reopened and search.state.stage in ("final", "done"):
        search.state.stage = "local"


def _size_from_bounds(problem, bounds):
    if problem.num_params is not None:
        return problem.num_params
    sizes = []
    try:
        lo, hi = (bounds.lb, bounds.ub) if hasattr(bounds, "lb") else bounds
        sizes = [np.size(lo), np.size(hi)]
    except (TypeError, ValueError):
        pass
    if not sizes or max(sizes) == 1 and all(np.ndim(b) == 0 for b in (lo, hi)):
        raise FG2UValueError(
            "the number of parameters is unknown: give `bounds` per coordinate, `phi0`, "
            "or BilevelProblem(num_params=...)")
    return max(sizes)


def _checkpoint_workers(ck, workers):
    saved = ck.config.get("workers")
    if not isinstance(saved, int) or isinstance(saved, bool) or saved < 1:
        raise CheckpointError("checkpoint field `config.workers` must be an integer >= 1")
    if workers is not None and check_positive_int(workers, "workers") != saved:
        raise CheckpointError(
            f"`workers` = {workers}, but the run was started with {saved} (its width is "
            "fixed when it starts, so that a resumption on another number of workers "
            "follows the same trajectory); leave `workers` out")
    return saved


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
    if math.isnan(value):
        raise FG2UValueError("`target` must be a number, got nan; pass None for no target")
    return value


def as_callbacks(callback, name="callback"):
    """``callback`` (None, a callable or a sequence of callables) as a list."""
    if callback is None:
        return []
    if callable(callback):
        return [callback]
    try:
        callbacks = list(callback)
    except TypeError:
        raise FG2UTypeError(
            f"`{name}` must be a callable or a list of callables, got "
            f"{type(callback).__name__}") from None
    for cb in callbacks:
        if not callable(cb):
            raise FG2UTypeError(f"`{name}` entries must be callable, got {type(cb).__name__}")
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
