"""Turn the checked tables of a TOML run configuration into library objects.

Each ``build_*`` function reads one table (its keys are listed in
:mod:`fg2u_zo.cli.schema`), checks what only the config knows (TOML types, files,
executables, keys that exclude each other), and passes the values to the constructor
they configure: :class:`solvers.Subprocess`, :class:`fg2u_zo.LeastSquares`, an
estimator, :class:`fg2u_zo.Phase`. What the constructor validates is not checked twice:
its error is re-worded to name the TOML key (:meth:`TableChecker.from_constructor`).
"""

from __future__ import annotations

import functools
import os
import shutil

import numpy as np

from ..errors import ConfigError, FG2UError
from .schema import (FREEFEM_MODELS, OUTER_KEYS, OUTPUT_KEYS, PARALLEL_KEYS, PARAMETER_KEYS,
                     PHASE_KEYS, SOLVER_KEYS, show)

__all__ = ["build_parameters", "build_bounds_and_transform", "build_solver", "build_outer",
           "least_squares_kwargs",
           "build_estimator", "build_optimizer_options", "build_phases",
           "build_evaluator_options", "build_output_options"]

# Keys of [solver] kind = "subprocess" passed to solvers.Subprocess as they are; it
# validates them.
_SUBPROCESS_PASSED = ("input_name", "output", "skiprows", "usecols", "comments", "timeout",
                      "kill_grace", "env", "n_outputs")


# -- [parameters] ----------------------------------------------------------------------------
def build_parameters(c, p):
    """``[parameters]`` -> ``(phi0, names)``."""
    c.unknown_keys(p, PARAMETER_KEYS, "[parameters]")
    size = None if "size" not in p else c.integer(p["size"], "[parameters] size")
    init = p.get("init", 0.0)
    if isinstance(init, str):
        phi0 = c.array(init, "[parameters] init")
    elif isinstance(init, list):
        phi0 = np.array(c.number_list(init, "[parameters] init"))
    else:
        value = c.number(init, "[parameters] init")
        if size is None:
            raise c.error("[parameters] size", "is required when init is a single number")
        phi0 = np.full(size, value)
    if size is not None and phi0.size != size:
        raise c.error("[parameters] init", f"has {phi0.size} values but size = {size}")
    if phi0.size == 0:
        raise c.error("[parameters] init", "is empty")
    if not np.all(np.isfinite(phi0)):
        raise c.error("[parameters] init", "must be finite")
    names = None
    if "names" in p:
        names = c.string_list(p["names"], "[parameters] names")
        if len(names) != phi0.size:
            raise c.error("[parameters] names", f"has {len(names)} names for {phi0.size} "
                                                "parameters")
    return phi0, names


def build_bounds_and_transform(c, p, phi0):
    """``[parameters] bounds, transform`` -> the ``bounds`` and ``transform`` arguments of
    :func:`fg2u_zo.minimize`, checked against ``phi0``."""
    from ..outer.transforms import ParameterTransform, as_bounds

    n = phi0.size
    bounds = None
    if "bounds" in p:
        b = p["bounds"]
        if not isinstance(b, list) or len(b) != 2:
            raise c.error("[parameters] bounds", f"must be [lo, hi], got {show(b)}")
        sides = []
        for side, value in zip(("lo", "hi"), b):
            where = f"[parameters] bounds ({side})"
            if isinstance(value, list):
                value = c.number_list(value, where)
                if len(value) != n:
                    raise c.error(where, f"has {len(value)} values for {n} parameters")
            else:
                value = c.number(value, where)  # TOML's inf / -inf are welcome
            sides.append(value)
        bounds = tuple(sides)
    transform = p.get("transform")
    if transform is not None:
        if isinstance(transform, str):
            if transform == "none":
                transform = None
        elif isinstance(transform, list):
            c.string_list(transform, "[parameters] transform")
            transform = [None if t == "none" else t for t in transform]
        else:
            raise c.error("[parameters] transform", f"must be a name or a list of names, got "
                                                    f"{show(transform)}")
    try:
        b = as_bounds(bounds, n)
        T = ParameterTransform.from_spec(transform, n, b)
        bad = b.violations(phi0)
        if bad.size:
            raise c.error("[parameters] init", f"lies outside bounds at indices "
                                               f"{bad[:10].tolist()}")
        T.inverse(phi0)
    except ConfigError:
        raise
    except FG2UError as exc:
        raise c.from_constructor(exc, "[parameters]", ("bounds", "transform")) from None
    return bounds, transform


# -- [solver] --------------------------------------------------------------------------------
def build_solver(c, s, names, where, horizon=None):
    """A ``[solver]`` table (or a phase's merged copy, at ``where``) -> the inner solver.

    With ``horizon`` (a continuation phase's), a python solver gets it as the keyword
    ``horizon=`` and a subprocess solver as the placeholder ``{horizon}`` of its
    ``argv`` and ``template``.
    """
    kind = c.string(s.get("kind"), f"{where} kind", tuple(SOLVER_KEYS)) if "kind" in s else None
    if kind is None:
        raise c.error(f"{where} kind", "is missing; set it to "
                                       + ", ".join(map(repr, SOLVER_KEYS)))
    c.unknown_keys(s, SOLVER_KEYS[kind], where)
    if horizon is not None and kind == "freefem":
        raise c.error(f"{where} kind", "'freefem' cannot take a horizon: [continuation] "
                                       "needs kind = 'python' or 'subprocess'")
    try:
        if kind == "python":
            return _python_solver(c, s, where, horizon)
        if kind == "subprocess":
            return _subprocess_solver(c, s, names, where, horizon)
        return _freefem_solver(c, s, where)
    except ConfigError:
        raise
    except FG2UError as exc:
        raise c.from_constructor(exc, where, tuple(s)) from None
    except (TypeError, ValueError) as exc:
        raise c.error(where, f"cannot build the solver: {str(exc).replace('`', '')}") from None


def _kwargs(c, s, where):
    kwargs = s.get("kwargs", {})
    return dict(c.table(kwargs, f"{where} kwargs"))


def _python_solver(c, s, where, horizon=None):
    if "entry" not in s:
        raise c.error(f"{where} entry", "is missing: 'module:function' or 'file.py:function'")
    obj = c.entry(s["entry"], f"{where} entry")
    kwargs = _kwargs(c, s, where)
    if horizon is not None:
        if not _takes_keyword(obj, "horizon"):
            raise c.error(f"{where} entry", f"{s['entry']} takes no horizon= keyword, which "
                                            "[continuation] passes to each phase's solver")
        kwargs["horizon"] = horizon
    if isinstance(obj, type):
        try:
            return obj(**kwargs)
        except Exception as exc:
            raise c.error(f"{where} kwargs", f"{s['entry']}(**kwargs) failed: "
                                             f"{type(exc).__name__}: {exc}") from None
    return functools.partial(obj, **kwargs) if kwargs else obj


def _takes_keyword(obj, name):
    """Whether ``obj(..., name=...)`` is accepted (True when the signature is unknown)."""
    import inspect

    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return True
    return any((p.name == name and p.kind != p.POSITIONAL_ONLY) or p.kind == p.VAR_KEYWORD
               for p in params)


def _resolve_arg(c, arg):
    """An argv entry naming an existing file relative to the config dir -> absolute (the
    command runs in a fresh working directory)."""
    if os.path.isabs(arg) or arg.startswith("-"):
        return arg
    candidate = os.path.join(c.base, arg)
    return os.path.abspath(candidate) if os.path.exists(candidate) else arg


def _subprocess_solver(c, s, names, where, horizon=None):
    from pathlib import Path

    from solvers import Subprocess

    if "argv" not in s:
        raise c.error(f"{where} argv", "is missing: the command as a list, e.g. "
                                       "['./sim', 'input.txt']")
    argv = c.string_list(s["argv"], f"{where} argv")
    if not argv:
        raise c.error(f"{where} argv", "is empty")
    exe = argv[0]
    resolved = _resolve_arg(c, exe)
    if os.path.isabs(resolved):
        if not (os.path.isfile(resolved) and os.access(resolved, os.X_OK)):
            raise c.error(f"{where} argv[0]", f"{exe!r} is not an executable file")
    elif shutil.which(exe) is None:
        raise c.error(f"{where} argv[0]", f"executable {exe!r} not found on PATH nor in "
                                          f"{c.base}")
    argv = [resolved] + [_resolve_arg(c, a) for a in argv[1:]]
    kwargs = {key: s[key] for key in _SUBPROCESS_PASSED if key in s}
    if "template" in s:
        kwargs["template"] = Path(c.file(s["template"], f"{where} template"))
    if horizon is not None:
        # {horizon} is the same in every call of the phase: filled in here, once.
        value = repr(float(horizon))
        argv = [a.replace("{horizon}", value) for a in argv]
        if "template" in kwargs:
            with open(kwargs["template"], encoding="utf-8") as fh:
                kwargs["template"] = fh.read().replace("{horizon}", value)
    if "output" in s and "reader" in s:
        raise c.error(f"{where} reader", "cannot be given together with output")
    if "reader" in s:
        kwargs["reader"] = c.entry(s["reader"], f"{where} reader")
    elif "output" not in s:
        raise c.error(f"{where} output", "is missing: the file the command writes (or "
                                         "reader = 'module:function')")
    if "files" in s:
        kwargs["files"] = [c.file(f, f"{where} files") for f in
                           c.string_list(s["files"], f"{where} files")]
    if "env" in s:
        for k, v in c.table(s["env"], f"{where} env").items():
            c.string(v, f"{where} env.{k}")
    for key in ("keep_workdir", "link"):
        if key in s:  # Subprocess reads any truthy value; TOML says true or false
            kwargs[key] = c.boolean(s[key], f"{where} {key}")
    return Subprocess(argv, names=names, **kwargs)


def _freefem_solver(c, s, where):
    from solvers import FreeFem, diffusion_model

    if "model" not in s:
        raise c.error(f"{where} model", "is missing: 'diffusion' (shipped) or a .edp path")
    model = c.string(s["model"], f"{where} model")
    executable = c.string(s.get("executable", "FreeFem++"), f"{where} executable")
    if shutil.which(executable) is None:
        raise c.error(f"{where} executable", f"{executable!r} not found on PATH; install "
                                             "FreeFem++ or set executable = '/path/FreeFem++'")
    kwargs = {"executable": executable}
    kwargs.update({key: s[key] for key in ("timeout", "n_outputs") if key in s})
    if model in FREEFEM_MODELS:
        for key in ("args", "output", "param_file", "files"):
            if key in s:
                raise c.error(f"{where} {key}", f"does not apply to the shipped {model!r} "
                                                "model")
        kwargs.update({key: s[key] for key in ("K", "mesh", "precision") if key in s})
        if "log_k" in s:
            kwargs["log_k"] = c.boolean(s["log_k"], f"{where} log_k")
        if "source" in s:  # diffusion_model reads it with float(): "1" would pass
            kwargs["source"] = c.number(s["source"], f"{where} source")
        return diffusion_model(**kwargs)
    for key in ("K", "mesh", "precision", "log_k", "source"):
        if key in s:
            raise c.error(f"{where} {key}", "applies only to model = 'diffusion'")
    script = c.file(model, f"{where} model")
    if "args" in s:
        kwargs["args"] = c.string_list(s["args"], f"{where} args")
    kwargs.update({key: s[key] for key in ("output", "param_file") if key in s})
    if "files" in s:
        kwargs["files"] = [c.file(f, f"{where} files") for f in
                           c.string_list(s["files"], f"{where} files")]
    return FreeFem(script, **kwargs)


# -- [outer] ---------------------------------------------------------------------------------
def build_outer(c, o):
    """``[outer]`` -> ``(outer, differentiable)``."""
    from ..losses import LeastSquares

    kind = c.string(o.get("kind", "least_squares"), "[outer] kind", tuple(OUTER_KEYS))
    c.unknown_keys(o, OUTER_KEYS[kind], "[outer]")
    if kind == "python":
        if "entry" not in o:
            raise c.error("[outer] entry", "is missing: 'module:loss' or 'file.py:loss'")
        fn = c.entry(o["entry"], "[outer] entry")
        kwargs = _kwargs(c, o, "[outer]")
        differentiable = c.boolean(o.get("differentiable", True), "[outer] differentiable")
        return (functools.partial(fn, **kwargs) if kwargs else fn), differentiable
    kwargs = least_squares_kwargs(c, o)
    try:
        return LeastSquares(**kwargs), True
    except FG2UError as exc:
        raise c.from_constructor(exc, "[outer]", tuple(kwargs)) from None


def least_squares_kwargs(c, o):
    """``[outer]`` of kind ``"least_squares"`` -> keyword arguments of
    :class:`fg2u_zo.LeastSquares` (``data`` an array; not yet checked by it)."""
    if "data" not in o:
        raise c.error("[outer] data", "is missing: the observations file (.npy, .txt, .csv)")
    kwargs = {"data": c.array(o["data"], "[outer] data")}
    if "weights" in o:
        w = o["weights"]
        kwargs["weights"] = c.array(w, "[outer] weights") if isinstance(w, str) else w
    if "selection" in o:
        kwargs["selection"] = _selection(c, o["selection"])
    kwargs.update({key: o[key] for key in ("scale", "regularization") if key in o})
    return kwargs


def _selection(c, value):
    """``"start:stop[:step]"`` -> the indices; a list is passed on as it is."""
    if not isinstance(value, str):
        return value
    try:
        parts = [int(p) if p.strip() else None for p in value.split(":")]
        if len(parts) not in (2, 3):
            raise ValueError
        sl = slice(*parts)
    except ValueError:
        raise c.error("[outer] selection", f"must be a list of indices or "
                                           f"'start:stop[:step]', got {value!r}") from None
    if sl.stop is None:
        raise c.error("[outer] selection", "needs an explicit stop, e.g. '0:100'")
    return np.arange(sl.stop)[sl]


# -- [estimator], [optimizer], [[optimizer.phases]] -------------------------------------------
def build_estimator(c, e, where, base=None):
    """An ``[estimator]`` table -> the estimator; in a phase, keys missing from ``e`` are
    taken from ``base``."""
    import dataclasses

    from ..estimators import estimator_classes

    classes = estimator_classes()
    if "name" in e or base is None:
        if "name" not in e:
            raise c.error(f"{where} name", "is missing; one of " + ", ".join(classes))
        name = c.string(e["name"], f"{where} name", tuple(classes))
        cls, params = classes[name], {}
    else:
        cls = type(base)
        params = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    fields = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    c.unknown_keys(e, ("name", *fields), where)
    params.update((key, value) for key, value in e.items() if key != "name")
    try:
        return cls(**params)
    except (FG2UError, TypeError, ValueError) as exc:
        raise c.from_constructor(exc, where, tuple(params)) from None


def build_optimizer_options(c, opt):
    """``[optimizer]`` (but its phases) -> keyword arguments of :func:`fg2u_zo.minimize`."""
    from ..outer.schedules import SCHEDULES

    out = {}
    if "name" in opt:
        out["optimizer"] = _stepper_name(c, opt["name"])
    if "lr" in opt:
        out["lr"] = c.number(opt["lr"], "[optimizer] lr", positive=True)
    if "steps" in opt:
        out["steps"] = c.integer(opt["steps"], "[optimizer] steps")
    if "schedule" in opt:
        out["schedule"] = c.string(opt["schedule"], "[optimizer] schedule", tuple(SCHEDULES))
    if "options" in opt:
        out["optimizer_options"] = dict(c.table(opt["options"], "[optimizer] options"))
    if "target" in opt:
        out["target"] = c.number(opt["target"], "[optimizer] target")
    if "gtol" in opt:
        out["gtol"] = c.number(opt["gtol"], "[optimizer] gtol", positive=True)
    if "max_nfev" in opt:
        out["max_nfev"] = c.integer(opt["max_nfev"], "[optimizer] max_nfev")
    if "max_time" in opt:
        out["max_time"] = c.number(opt["max_time"], "[optimizer] max_time", positive=True)
    return out


def _stepper_name(c, value):
    """A name the stepper registry knows (``"adam"``, ``"Rprop"``, ``"gauss-newton"``)."""
    from ..outer.steppers import get_stepper

    name = c.string(value, "[optimizer] name")
    try:
        get_stepper(name)
    except FG2UError as exc:
        raise c.error("[optimizer] name", str(exc).replace("`optimizer` ", "")) from None
    return name


def _merged(base, override):
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def build_phases(c, phases, solver_table, names, estimator):
    """``[[optimizer.phases]]`` -> a list of :class:`fg2u_zo.Phase`; a phase's
    ``estimator`` and ``solver`` tables are merged over ``[estimator]`` and ``[solver]``."""
    from ..outer.minimize import Phase
    from ..outer.schedules import SCHEDULES

    if not isinstance(phases, list) or not phases or not all(isinstance(p, dict)
                                                              for p in phases):
        raise c.error("[optimizer] phases", "must be one or more [[optimizer.phases]] tables")
    out = []
    for i, ph in enumerate(phases):
        where = f"[[optimizer.phases]] #{i + 1}"
        c.unknown_keys(ph, PHASE_KEYS, where)
        if "steps" not in ph:
            raise c.error(f"{where} steps", "is missing")
        kwargs = {"steps": c.integer(ph["steps"], f"{where} steps")}
        if "lr" in ph:
            kwargs["lr"] = c.number(ph["lr"], f"{where} lr", positive=True)
        if "schedule" in ph:
            kwargs["schedule"] = c.string(ph["schedule"], f"{where} schedule",
                                          tuple(SCHEDULES))
        if "name" in ph:
            kwargs["name"] = c.string(ph["name"], f"{where} name")
        if "estimator" in ph:
            kwargs["estimator"] = build_estimator(
                c, c.table(ph["estimator"], f"{where} estimator"), f"{where} estimator",
                base=estimator)
        if "solver" in ph:
            override = c.table(ph["solver"], f"{where} solver")
            kwargs["solver"] = build_solver(c, _merged(solver_table, override), names,
                                            f"{where} solver")
        out.append(Phase(**kwargs))
    return out


# -- [parallel], [output] ---------------------------------------------------------------------
def build_evaluator_options(c, p):
    """``[parallel]`` -> keyword arguments of :class:`fg2u_zo.Evaluator`."""
    from ..evaluation.evaluator import BACKENDS

    c.unknown_keys(p, PARALLEL_KEYS, "[parallel]")
    out = {}
    if "backend" in p:
        out["backend"] = c.string(p["backend"], "[parallel] backend", BACKENDS)
    if "n_jobs" in p:
        out["n_jobs"] = c.integer(p["n_jobs"], "[parallel] n_jobs")
    if "timeout" in p:
        out["timeout"] = c.number(p["timeout"], "[parallel] timeout", positive=True)
    if "max_retries" in p:
        out["max_retries"] = c.integer(p["max_retries"], "[parallel] max_retries", minimum=0)
    if "max_failure_fraction" in p:
        value = c.number(p["max_failure_fraction"], "[parallel] max_failure_fraction",
                         minimum=0.0)
        if value >= 1:
            raise c.error("[parallel] max_failure_fraction", f"must be < 1, got {value}")
        out["max_failure_fraction"] = value
    if "scheduler_address" in p:
        out["scheduler_address"] = c.string(p["scheduler_address"],
                                            "[parallel] scheduler_address")
    if "batch_size" in p:
        value = p["batch_size"]
        if value != "auto":
            c.integer(value, "[parallel] batch_size")
        out["batch_size"] = value
    return out


def build_output_options(c, o):
    """``[output]`` -> the ``checkpoint``, ``checkpoint_every``, ``history`` and ``rng``
    arguments of :func:`fg2u_zo.minimize`."""
    c.unknown_keys(o, OUTPUT_KEYS, "[output]")
    out = {}
    if "checkpoint" in o:
        out["checkpoint"] = c.output_path(o["checkpoint"], "[output] checkpoint")
    if "checkpoint_every" in o:
        out["checkpoint_every"] = c.integer(o["checkpoint_every"], "[output] checkpoint_every")
    if "history" in o:
        out["history"] = c.output_path(o["history"], "[output] history")
    if "seed" in o:
        out["rng"] = c.integer(o["seed"], "[output] seed", minimum=0)
    return out
