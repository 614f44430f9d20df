"""Run configurations in TOML: validated completely before anything runs.

:func:`load_config` reads a TOML file, checks every key (unknown keys get the closest
valid one suggested), every type, every file and executable it names, builds the
problem, starting point, estimator, phases and evaluator options, and returns a
:class:`RunConfig`. Any problem raises :class:`~fg2u_zo.ConfigError` with one message
naming the file, the section and the key; nothing has been written or run by then.
Relative paths resolve against the directory of the config file.

The schema, with every key::

    [solver]                       # the inner solver S(phi) -> theta
    kind = "subprocess"            # "subprocess" | "freefem" | "python"
    # kind = "subprocess": an external command (solvers.Subprocess)
    argv = ["python3", "sim.py"]   # no shell; existing relative paths -> absolute
    template = "input.tmpl"        # file with {phi[0]}, {phi}, {n}, {name}, {seed}
    input_name = "input.txt"       # where the rendered template is written
    output = "out.txt"             # file read back (text or .npy) ...
    # reader = "mod:read"          # ... or a function reader(workdir) -> array
    files = ["mesh.msh"]           # copied into each working directory
    timeout = 60.0                 # seconds; the process group is killed after
    env = { OMP_NUM_THREADS = "1" }
    n_outputs = 144                # checked on every call
    keep_workdir = false
    # kind = "freefem": model = "diffusion" (shipped; K, mesh, log_k, precision,
    #   source) or model = "model.edp" (args, output, param_file, files); timeout,
    #   executable, n_outputs
    # kind = "python": entry = "module:function" or "file.py:function", kwargs = {...}
    #   (a class is instantiated with kwargs; a function gets them as keywords)

    [outer]                        # the outer loss f(theta, phi)
    kind = "least_squares"         # or "python"
    data = "obs.npy"               # .npy, or text (.txt/.dat/.csv)
    weights = 1.0                  # number, list, or file
    selection = [0, 2, 4]          # or "0:100:2": compare theta[selection] to data
    scale = "mean"                 # "mean" | "sum" of the weighted squares
    regularization = 0.0           # + regularization / 2 * ||phi||^2
    # kind = "python": entry = "module:loss", kwargs = {...}, differentiable = true

    [parameters]                   # phi
    size = 4
    init = 0.5                     # number, list, or file
    bounds = [0.0, 10.0]           # [lo, hi], each a number or a list; inf allowed
    transform = "log"              # "identity" | "log" | "logit", or one per parameter
    names = ["k1", "k2", "k3", "k4"]   # template placeholders {k1} ...

    [estimator]
    name = "FG2UZO"                # FG2UZO, BlackBoxES, CoordinateFD, FG2U, RGU, TRGU,
                                   # Neumann
    num_directions = 8             # + the estimator's own keys: scheme, step,
    scheme = "central"             #   directions, antithetic, backprop_steps, ...
    step = "auto"
    directions = "gaussian"

    [optimizer]
    name = "adam"                  # "adam" | "sgd" | any torch.optim class name
    lr = 0.05
    steps = 100
    schedule = "constant"          # "constant" | "cosine" | "linear"
    options = { betas = [0.9, 0.99] }
    target = 1e-6                  # optional stopping rules
    gtol = 1e-8
    max_nfev = 10000
    max_time = 3600.0
    [[optimizer.phases]]           # optional; replaces `steps`
    steps = 30
    estimator = { num_directions = 2 }      # merged over [estimator]
    solver = { kwargs = { grid = 200 } }    # merged over [solver]: low fidelity
    [[optimizer.phases]]
    steps = 10
    lr = 0.01

    [parallel]
    backend = "loky"               # sequential | loky | threading | dask | ray
    n_jobs = 4
    timeout = 120.0                # per evaluation
    max_retries = 1
    max_failure_fraction = 0.5
    scheduler_address = "tcp://..."   # dask

    [output]
    checkpoint = "run.ckpt"
    checkpoint_every = 1
    history = "run.jsonl"
    seed = 0
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import importlib.util
import math
import numbers
import os
import shutil
import sys
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, FG2UError

__all__ = ["RunConfig", "load_config", "LeastSquares"]

# -- the schema ---------------------------------------------------------------------------
SECTIONS = ("solver", "outer", "parameters", "estimator", "optimizer", "parallel", "output")
SOLVER_KEYS = {
    "subprocess": ("kind", "argv", "template", "input_name", "output", "reader", "files",
                   "timeout", "env", "n_outputs", "keep_workdir", "link", "kill_grace"),
    "freefem": ("kind", "model", "K", "mesh", "log_k", "precision", "source", "args",
                "output", "param_file", "files", "timeout", "executable", "n_outputs"),
    "python": ("kind", "entry", "kwargs"),
}
OUTER_KEYS = {
    "least_squares": ("kind", "data", "weights", "selection", "scale", "regularization"),
    "python": ("kind", "entry", "kwargs", "differentiable"),
}
PARAMETER_KEYS = ("size", "init", "bounds", "transform", "names")
OPTIMIZER_KEYS = ("name", "lr", "steps", "schedule", "options", "phases", "target", "gtol",
                  "max_nfev", "max_time")
PHASE_KEYS = ("steps", "lr", "schedule", "estimator", "solver", "name")
PARALLEL_KEYS = ("backend", "n_jobs", "timeout", "max_retries", "max_failure_fraction",
                 "scheduler_address", "batch_size")
OUTPUT_KEYS = ("checkpoint", "checkpoint_every", "history", "seed")
FREEFEM_MODELS = ("diffusion",)


class _Checker:
    """Type checks that raise ConfigError naming file, section and key."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.base = os.path.dirname(os.path.abspath(self.path))

    def error(self, where, message):
        return ConfigError(f"{self.path}: {where} {message}", key=where)

    def unknown_keys(self, table, allowed, where):
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = (f"did you mean {close[0]!r}?" if close
                        else f"valid keys: {', '.join(allowed)}")
                raise self.error(where, f"has an unknown key {key!r}; {hint}")

    def table(self, value, where):
        if not isinstance(value, dict):
            raise self.error(where, f"must be a table, got {_show(value)}")
        return value

    def string(self, value, where, choices=None):
        if not isinstance(value, str):
            raise self.error(where, f"must be a string, got {_show(value)}")
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise self.error(where, f"must be one of {', '.join(map(repr, choices))}, got "
                                    f"{value!r}{hint}")
        return value

    def integer(self, value, where, minimum=1):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(where, f"must be an integer >= {minimum}, got {_show(value)}")
        return value

    def number(self, value, where, *, positive=False, minimum=None):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
            raise self.error(where, f"must be a number, got {_show(value)}")
        if positive and not value > 0:
            raise self.error(where, f"must be a number > 0, got {_show(value)}")
        if minimum is not None and value < minimum:
            raise self.error(where, f"must be a number >= {minimum}, got {_show(value)}")
        return float(value)

    def boolean(self, value, where):
        if not isinstance(value, bool):
            raise self.error(where, f"must be true or false, got {_show(value)}")
        return value

    def string_list(self, value, where):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(where, f"must be a list of strings, got {_show(value)}")
        return value

    def number_list(self, value, where):
        if not isinstance(value, list) or not all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
            raise self.error(where, f"must be a list of numbers, got {_show(value)}")
        return [float(v) for v in value]

    def file(self, value, where):
        """An existing file, relative to the config's directory; returns the absolute path."""
        self.string(value, where)
        path = value if os.path.isabs(value) else os.path.join(self.base, value)
        if not os.path.exists(path):
            raise self.error(where, f"names a file that does not exist: {value!r} (looked "
                                    f"for {path})")
        return os.path.abspath(path)

    def output_path(self, value, where):
        """A path to write later; its directory must exist or be creatable."""
        self.string(value, where)
        path = os.path.abspath(value if os.path.isabs(value) else os.path.join(self.base,
                                                                                 value))
        parent = os.path.dirname(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK):
            raise self.error(where, f"cannot be written: {parent} is not writable")
        if os.path.isdir(path):
            raise self.error(where, f"names a directory ({path}); give a file name")
        return path

    def entry(self, value, where):
        """``"module:attr"`` or ``"path/to/file.py:attr"`` -> the object."""
        self.string(value, where)
        module_part, sep, attr = value.rpartition(":")
        if not sep or not module_part or not attr:
            raise self.error(where, f"must be 'module:function' or 'file.py:function', got "
                                    f"{value!r}")
        if module_part.endswith(".py"):
            path = self.file(module_part, where)
            name = "_fg2u_config_" + hashlib.sha1(path.encode()).hexdigest()[:12]
            module = sys.modules.get(name)
            if module is None:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except Exception as exc:
                    del sys.modules[name]
                    raise self.error(where, f"{path} failed to import: "
                                            f"{type(exc).__name__}: {exc}") from None
                _pickle_by_value(module)
        else:
            try:
                module = importlib.import_module(module_part)
            except ImportError as exc:
                raise self.error(where, f"cannot import module {module_part!r}: {exc}") from None
        obj = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise self.error(where, f"module {module_part!r} has no attribute "
                                        f"{attr!r}") from None
        if not callable(obj):
            raise self.error(where, f"{value!r} is not callable")
        return obj


def _pickle_by_value(module):
    """A module loaded from a file path cannot be imported by worker processes: ask
    cloudpickle (joblib's copy and dask's) to ship its functions by value."""
    for name in ("joblib.externals.cloudpickle", "cloudpickle"):
        try:
            cp = importlib.import_module(name)
            cp.register_pickle_by_value(module)
        except (ImportError, ValueError, AttributeError):
            pass


def _show(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _load_array(checker, value, where):
    path = checker.file(value, where)
    try:
        if path.endswith(".npy"):
            arr = np.load(path, allow_pickle=False)
        else:
            delimiter = "," if path.endswith(".csv") else None
            arr = np.loadtxt(path, delimiter=delimiter, ndmin=1)
    except (ValueError, OSError) as exc:
        raise checker.error(where, f"file {value!r} is not an array of numbers: {exc}") from None
    arr = np.asarray(arr, dtype=np.float64).ravel()
    if not np.all(np.isfinite(arr)):
        raise checker.error(where, f"file {value!r} contains NaN or inf")
    return arr


# -- the built-in outer loss ----------------------------------------------------------------
class LeastSquares:
    """``0.5 * sum_i w_i (theta[sel_i] - y_i)^2 / n`` (``scale="mean"``, or without the
    ``/ n`` for ``"sum"``) ``+ regularization / 2 * ||phi||^2``: the outer loss of the
    ``kind = "least_squares"`` config, a torch function (picklable).

    Examples
    --------
    >>> import torch
    >>> f = LeastSquares(np.array([1.0, 2.0]))
    >>> float(f(torch.tensor([1.0, 4.0], dtype=torch.float64), torch.zeros(1)))
    1.0
    """

    def __init__(self, data, weights=None, selection=None, scale="mean", regularization=0.0):
        self.data = np.asarray(data, dtype=np.float64)
        self.weights = None if weights is None else np.broadcast_to(
            np.asarray(weights, dtype=np.float64), self.data.shape).copy()
        self.selection = None if selection is None else np.asarray(selection, dtype=np.int64)
        self.scale = scale
        self.regularization = float(regularization)

    def __call__(self, theta, phi):
        import torch

        from ..errors import FG2UValueError

        sel = theta.reshape(-1)
        if self.selection is not None:
            if self.selection.size and self.selection.max() >= sel.shape[0]:
                raise FG2UValueError(
                    f"[outer] selection indexes up to {int(self.selection.max())} but the "
                    f"solver returned {sel.shape[0]} outputs")
            sel = sel[torch.as_tensor(self.selection)]
        if sel.shape[0] != self.data.size:
            raise FG2UValueError(
                f"[outer] data has {self.data.size} values but the solver returned "
                f"{sel.shape[0]} outputs{' after selection' if self.selection is not None else ''}"
                "; fix `data` or `selection`")
        r = sel - torch.as_tensor(self.data)
        sq = r ** 2 if self.weights is None else torch.as_tensor(self.weights) * r ** 2
        loss = 0.5 * (sq.mean() if self.scale == "mean" else sq.sum())
        if self.regularization:
            loss = loss + 0.5 * self.regularization * (phi ** 2).sum()
        return loss


# -- the result -----------------------------------------------------------------------------
@dataclass
class RunConfig:
    """A validated run configuration, ready for :func:`fg2u_zo.minimize`.

    Attributes
    ----------
    path : str
        Absolute path of the config file.
    sha256 : str
        Hash of its bytes (stored in checkpoints, checked by ``fg2u-zo resume``).
    raw : dict
        The parsed TOML.
    problem : BilevelProblem
    phi0 : ndarray
    estimator : Estimator
    phases : list of Phase or None
    minimize_options : dict
        Keyword arguments of :func:`fg2u_zo.minimize` (optimizer, lr, steps, schedule,
        bounds, transform, stopping rules, checkpoint, history, rng ...).
    evaluator_options : dict
        Keyword arguments of :class:`fg2u_zo.Evaluator`.
    """

    path: str
    sha256: str
    raw: dict
    problem: object
    phi0: np.ndarray
    estimator: object
    phases: list | None
    minimize_options: dict = field(default_factory=dict)
    evaluator_options: dict = field(default_factory=dict)

    @property
    def checkpoint(self):
        return self.minimize_options.get("checkpoint")

    @property
    def history(self):
        return self.minimize_options.get("history")

    @property
    def metadata(self) -> dict:
        return {"config_path": self.path, "config_sha256": self.sha256}

    def make_evaluator(self):
        from ..evaluation.evaluator import Evaluator
        return Evaluator(**self.evaluator_options)


def file_sha256(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def load_config(path) -> RunConfig:
    """Read and validate a TOML run configuration (see the module docstring).

    Parameters
    ----------
    path : path-like
        The ``.toml`` file; relative paths inside resolve against its directory.

    Returns
    -------
    RunConfig

    Raises
    ------
    ConfigError
        ``"<path>: [section] key <what is wrong>"``, for the first problem found.
    """
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigError("reading TOML on Python 3.10 needs tomli: pip install tomli") \
                from None
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: config file not found")
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    c = _Checker(path)
    c.unknown_keys(raw, SECTIONS, "the top level")
    for name in ("solver", "outer", "parameters", "estimator", "optimizer"):
        if name not in raw:
            raise c.error(f"[{name}]", "section is missing")
    for name in SECTIONS:
        if name in raw:
            c.table(raw[name], f"[{name}]")

    phi0, names = _parameters(c, raw["parameters"])
    n = phi0.size
    bounds, transform = _bounds_and_transform(c, raw["parameters"], phi0)
    solver = _solver(c, raw["solver"], names, "[solver]")
    outer, differentiable = _outer(c, raw["outer"])
    from ..problem import BilevelProblem
    try:
        problem = BilevelProblem(inner=solver, outer=outer, num_params=n,
                                 differentiable_outer=differentiable,
                                 name=os.path.splitext(os.path.basename(path))[0])
    except FG2UError as exc:
        raise c.error("[solver]", str(exc)) from None
    estimator = _estimator(c, raw["estimator"], "[estimator]")
    opt = raw["optimizer"]
    c.unknown_keys(opt, OPTIMIZER_KEYS, "[optimizer]")
    options = _optimizer_options(c, opt)
    phases = None
    if "phases" in opt:
        phases = _phases(c, opt["phases"], raw, names, estimator)
        if "steps" in opt:
            raise c.error("[optimizer] steps", "cannot be given together with "
                          "[[optimizer.phases]]: each phase has its own steps")
    options.update(bounds=bounds, transform=transform)
    options.update(_output(c, raw.get("output", {})))
    evaluator_options = _parallel(c, raw.get("parallel", {}))
    return RunConfig(path=os.path.abspath(path), sha256=file_sha256(path), raw=raw,
                     problem=problem, phi0=phi0, estimator=estimator, phases=phases,
                     minimize_options=options, evaluator_options=evaluator_options)


# -- sections -------------------------------------------------------------------------------
def _parameters(c, p):
    c.unknown_keys(p, PARAMETER_KEYS, "[parameters]")
    size = None if "size" not in p else c.integer(p["size"], "[parameters] size")
    init = p.get("init", 0.0)
    if isinstance(init, str):
        phi0 = _load_array(c, init, "[parameters] init")
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


def _bounds_and_transform(c, p, phi0):
    from ..outer.transforms import ParameterTransform, as_bounds

    n = phi0.size
    bounds = None
    if "bounds" in p:
        b = p["bounds"]
        if not isinstance(b, list) or len(b) != 2:
            raise c.error("[parameters] bounds", f"must be [lo, hi], got {_show(b)}")
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
                                                    f"{_show(transform)}")
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
        where = "[parameters] transform" if "transform" in str(exc) else "[parameters] bounds"
        raise c.error(where, str(exc).replace("`", "")) from None
    return bounds, transform


def _solver(c, s, names, where):
    kind = c.string(s.get("kind"), f"{where} kind", tuple(SOLVER_KEYS)) if "kind" in s else None
    if kind is None:
        raise c.error(f"{where} kind", "is missing; set it to "
                                       + ", ".join(map(repr, SOLVER_KEYS)))
    c.unknown_keys(s, SOLVER_KEYS[kind], where)
    try:
        if kind == "python":
            return _python_solver(c, s, where)
        if kind == "subprocess":
            return _subprocess_solver(c, s, names, where)
        return _freefem_solver(c, s, where)
    except ConfigError:
        raise
    except (FG2UError, TypeError, ValueError) as exc:
        raise c.error(where, f"cannot build the solver: {str(exc).replace('`', '')}") from None


def _kwargs(c, s, where):
    kwargs = s.get("kwargs", {})
    return dict(c.table(kwargs, f"{where} kwargs"))


def _python_solver(c, s, where):
    if "entry" not in s:
        raise c.error(f"{where} entry", "is missing: 'module:function' or 'file.py:function'")
    obj = c.entry(s["entry"], f"{where} entry")
    kwargs = _kwargs(c, s, where)
    if isinstance(obj, type):
        try:
            return obj(**kwargs)
        except Exception as exc:
            raise c.error(f"{where} kwargs", f"{s['entry']}(**kwargs) failed: "
                                             f"{type(exc).__name__}: {exc}") from None
    return functools.partial(obj, **kwargs) if kwargs else obj


def _resolve_arg(c, arg):
    """An argv entry naming an existing file relative to the config dir -> absolute (the
    command runs in a fresh working directory)."""
    if os.path.isabs(arg) or arg.startswith("-"):
        return arg
    candidate = os.path.join(c.base, arg)
    return os.path.abspath(candidate) if os.path.exists(candidate) else arg


def _subprocess_solver(c, s, names, where):
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
    kwargs = {}
    if "template" in s:
        from pathlib import Path
        kwargs["template"] = Path(c.file(s["template"], f"{where} template"))
    if "input_name" in s:
        kwargs["input_name"] = c.string(s["input_name"], f"{where} input_name")
    if "output" in s and "reader" in s:
        raise c.error(f"{where} reader", "cannot be given together with output")
    if "output" in s:
        kwargs["output"] = c.string(s["output"], f"{where} output")
    elif "reader" in s:
        kwargs["reader"] = c.entry(s["reader"], f"{where} reader")
    else:
        raise c.error(f"{where} output", "is missing: the file the command writes (or "
                                         "reader = 'module:function')")
    if "files" in s:
        kwargs["files"] = [c.file(f, f"{where} files") for f in
                           c.string_list(s["files"], f"{where} files")]
    if "timeout" in s:
        kwargs["timeout"] = c.number(s["timeout"], f"{where} timeout", positive=True)
    if "kill_grace" in s:
        kwargs["kill_grace"] = c.number(s["kill_grace"], f"{where} kill_grace", positive=True)
    if "env" in s:
        env = c.table(s["env"], f"{where} env")
        for k, v in env.items():
            c.string(v, f"{where} env.{k}")
        kwargs["env"] = env
    if "n_outputs" in s:
        kwargs["n_outputs"] = c.integer(s["n_outputs"], f"{where} n_outputs")
    for key in ("keep_workdir", "link"):
        if key in s:
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
    common = {"executable": executable}
    if "timeout" in s:
        common["timeout"] = c.number(s["timeout"], f"{where} timeout", positive=True)
    if "n_outputs" in s:
        common["n_outputs"] = c.integer(s["n_outputs"], f"{where} n_outputs")
    if model in FREEFEM_MODELS:
        for key in ("args", "output", "param_file", "files"):
            if key in s:
                raise c.error(f"{where} {key}", f"does not apply to the shipped {model!r} "
                                                "model")
        kwargs = dict(common)
        for key in ("K", "mesh", "precision"):
            if key in s:
                kwargs[key] = c.integer(s[key], f"{where} {key}")
        if "log_k" in s:
            kwargs["log_k"] = c.boolean(s["log_k"], f"{where} log_k")
        if "source" in s:
            kwargs["source"] = c.number(s["source"], f"{where} source")
        return diffusion_model(**kwargs)
    for key in ("K", "mesh", "precision", "log_k", "source"):
        if key in s:
            raise c.error(f"{where} {key}", "applies only to model = 'diffusion'")
    script = c.file(model, f"{where} model")
    kwargs = dict(common)
    if "args" in s:
        kwargs["args"] = c.string_list(s["args"], f"{where} args")
    for key in ("output", "param_file"):
        if key in s:
            kwargs[key] = c.string(s[key], f"{where} {key}")
    if "files" in s:
        kwargs["files"] = [c.file(f, f"{where} files") for f in
                           c.string_list(s["files"], f"{where} files")]
    return FreeFem(script, **kwargs)


def _outer(c, o):
    kind = c.string(o.get("kind", "least_squares"), "[outer] kind", tuple(OUTER_KEYS))
    c.unknown_keys(o, OUTER_KEYS[kind], "[outer]")
    if kind == "python":
        if "entry" not in o:
            raise c.error("[outer] entry", "is missing: 'module:loss' or 'file.py:loss'")
        fn = c.entry(o["entry"], "[outer] entry")
        kwargs = _kwargs(c, o, "[outer]")
        differentiable = c.boolean(o.get("differentiable", True), "[outer] differentiable")
        return (functools.partial(fn, **kwargs) if kwargs else fn), differentiable
    if "data" not in o:
        raise c.error("[outer] data", "is missing: the observations file (.npy, .txt, .csv)")
    data = _load_array(c, o["data"], "[outer] data")
    weights = None
    if "weights" in o:
        w = o["weights"]
        if isinstance(w, str):
            weights = _load_array(c, w, "[outer] weights")
        elif isinstance(w, list):
            weights = np.array(c.number_list(w, "[outer] weights"))
        else:
            weights = np.array(c.number(w, "[outer] weights", minimum=0.0))
        if weights.ndim and weights.size != data.size:
            raise c.error("[outer] weights", f"has {weights.size} values for {data.size} data")
        if np.any(weights < 0):
            raise c.error("[outer] weights", "must be >= 0")
    selection = None
    if "selection" in o:
        selection = _selection(c, o["selection"], data.size)
    scale = c.string(o.get("scale", "mean"), "[outer] scale", ("mean", "sum"))
    reg = c.number(o.get("regularization", 0.0), "[outer] regularization", minimum=0.0)
    return LeastSquares(data, weights, selection, scale, reg), True


def _selection(c, value, size):
    where = "[outer] selection"
    if isinstance(value, str):
        try:
            parts = [int(p) if p.strip() else None for p in value.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            sl = slice(*parts)
        except ValueError:
            raise c.error(where, f"must be a list of indices or 'start:stop[:step]', got "
                                 f"{value!r}") from None
        if sl.stop is None:
            raise c.error(where, "needs an explicit stop, e.g. '0:100'")
        idx = np.arange(sl.stop)[sl]
    elif isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                         and v >= 0 for v in value):
        idx = np.array(value, dtype=np.int64)
    else:
        raise c.error(where, f"must be a list of integers >= 0 or 'start:stop[:step]', got "
                             f"{_show(value)}")
    if idx.size != size:
        raise c.error(where, f"selects {idx.size} outputs but data has {size} values")
    return idx


def _estimator_classes():
    import fg2u_zo
    from ..estimators.base import Estimator

    return {name: obj for name in fg2u_zo.__all__
            if isinstance(obj := getattr(fg2u_zo, name), type)
            and issubclass(obj, Estimator) and obj is not Estimator}


def _estimator(c, e, where, base=None):
    import dataclasses

    classes = _estimator_classes()
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
    for key, value in e.items():
        if key == "name":
            continue
        if key == "num_directions" or key == "backprop_steps" or key == "terms":
            c.integer(value, f"{where} {key}")
        elif key == "step" and not (value == "auto" or (
                isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0)):
            raise c.error(f"{where} step", f"must be 'auto' or a number > 0, got {_show(value)}")
        params[key] = value
    try:
        return cls(**params)
    except (FG2UError, TypeError, ValueError) as exc:
        text = str(exc).replace("`", "")
        key = next((k for k in params if text.startswith(k)), None)
        raise c.error(f"{where} {key}" if key else where, text[len(key) + 1:] if key
                      else text) from None


def _optimizer_options(c, opt):
    from ..outer.schedules import SCHEDULES

    out = {}
    if "name" in opt:
        name = c.string(opt["name"], "[optimizer] name")
        try:
            from ..outer.minimize import _optimizer_class
            _optimizer_class(name)
        except FG2UError as exc:
            raise c.error("[optimizer] name", str(exc).replace("`optimizer` ", "")) from None
        out["optimizer"] = name
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


def _merged(base, override):
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _phases(c, phases, raw, names, estimator):
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
            kwargs["estimator"] = _estimator(
                c, c.table(ph["estimator"], f"{where} estimator"), f"{where} estimator",
                base=estimator)
        if "solver" in ph:
            override = c.table(ph["solver"], f"{where} solver")
            kwargs["solver"] = _solver(c, _merged(raw["solver"], override), names,
                                       f"{where} solver")
        out.append(Phase(**kwargs))
    return out


def _parallel(c, p):
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


def _output(c, o):
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
