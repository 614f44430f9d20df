"""Run configurations in TOML: validated completely before anything runs.

:func:`load_config` reads a TOML file, checks every key (unknown keys get the closest
valid one suggested), every type, every file and executable it names, builds the
problem, starting point, estimator, phases and evaluator options, and returns a
:class:`RunConfig`. Any problem raises :class:`~fg2u_zo.ConfigError` with one message
naming the file, the section and the key; nothing has been written or run by then.
Relative paths resolve against the directory of the config file.

The keys and the checks of TOML values are in :mod:`fg2u_zo.cli.schema`; turning the
checked tables into a solver, a loss, an estimator, phases and evaluator options is
:mod:`fg2u_zo.cli.build`. This module reads the file and puts the pieces together.

The schema, with every key::

    [solver]                       # the inner solver S(phi) -> theta
    kind = "subprocess"            # "subprocess" | "freefem" | "python"
    # kind = "subprocess": an external command (solvers.Subprocess)
    argv = ["python3", "sim.py"]   # no shell; existing relative paths -> absolute
    template = "input.tmpl"        # file with {phi[0]}, {phi}, {n}, {name}, {seed}
    input_name = "input.txt"       # where the rendered template is written
    output = "out.txt"             # file read back (text or .npy) ...
    # reader = "read_out.py:read"  # ... or a function reader(workdir) -> array, given
                                   #   as "file.py:function" or "module:function"
    skiprows = 1                   # text output: header lines to skip,
    usecols = [1, 2]               #   columns to keep (0-based),
    comments = "#"                 #   comment markers ([] for none); as numpy.loadtxt
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
                                   # (fg2u_zo.LeastSquares)
    # kind = "python": entry = "module:loss", kwargs = {...}, differentiable = true

    [parameters]                   # phi
    size = 4
    init = 0.5                     # number, list, or file
    bounds = [0.0, 10.0]           # [lo, hi], each a number or a list; inf allowed
    transform = "log"              # "identity" | "log" | "logit", or one per parameter
    names = ["k1", "k2", "k3", "k4"]   # template placeholders {k1} ...

    [estimator]                    # optional (default: fz.minimize's, FG2UZO forward
                                   # differences for Gauss-Newton)
    name = "FG2UZO"                # FG2UZO, BlackBoxES, CoordinateFD, FG2U, RGU, TRGU,
                                   # Neumann
    num_directions = 8             # + the estimator's own keys: scheme, step,
    scheme = "central"             #   directions, antithetic, backprop_steps, ...
    step = "auto"
    directions = "gaussian"

    [optimizer]                    # optional; without a name, fz.minimize's default:
                                   # Gauss-Newton for a differentiable loss (it stops
                                   # by itself), Adam on BlackBoxES otherwise
    name = "adam"                  # "gauss-newton" | "adam" | "sgd" | any torch.optim
                                   # class name | a name added with fz.register_stepper
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

    [continuation]                 # optional: fz.horizon_phases, phases of growing
                                   # horizon; [outer] must be least squares
    times = "obs_times.npy"        # one observation time per entry of [outer] data
                                   # (file or list); phase k keeps the entries with
                                   # times <= its horizon (their weights, selection too)
    horizons = "auto"              # fz.horizon_schedule(times, ...) or [0.25, 0.5, 1.0]
    growth = 2.0                   # horizons = "auto" only: ratio of successive horizons,
    spacing = "time"               #   "time" | "points",
    min_points = 10                #   observations of the first phase at least,
    num_phases = 4                 #   most phases
    steps = 200                    # most steps per phase, or one number per phase
                                   # (replaces [optimizer] steps)
    move_on = { xtol = 1e-3, patience = 3 }   # fz.Converged (xtol, snr, patience,
                                   # min_steps): when a phase moves on; false: never early
    stop = { xtol = 1e-6 }         # fz.Converged: when the last phase stops early
    # the solver gets the phase's horizon: kind = "python" as a horizon= keyword,
    # kind = "subprocess" as {horizon} in argv and the template. The history's lines
    # carry "phase".

    [multistart]                   # optional: fz.MultiStart; needs finite [parameters]
                                   # bounds
    num_starts = 16                # points of the design, screened in one round (with init)
    num_local = 4                  # local runs from the best of them, in lockstep
    design = "sobol"               # "sobol" | "lhs" | "halton"
    halving = 2                    # successive halving (1: off)
    rungs = [10, 20]               # steps at which runs are halved (default: from steps)
    stop = { xtol = 1e-6 }         # fz.Converged: ends a local run early (not with
                                   # [continuation], which has its own stop)
    # Both tables keep one run: [output] checkpoint and history work, and
    # `fg2u-zo resume` continues it.
    # [optimizer] steps: most steps of a local run; with [continuation] each local run
    # is the whole continuation.

    [uncertainty]                  # optional; on by default when [outer] is least squares
    confidence = 0.95              # (see fg2u_zo.cli.uncertainty): after the run, the
    method = "linear"              # parameters' standard errors, intervals, strong
    sigma = 0.01                   # correlations and what the data leave unconstrained
    output = "run.uncertainty.json"   # default: next to [output] history
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError, FG2UError
from .build import (build_bounds_and_transform, build_estimator, build_evaluator_options,
                    build_optimizer_options, build_outer, build_output_options,
                    build_parameters, build_phases, build_solver)
from .schema import OPTIMIZER_KEYS, REQUIRED_SECTIONS, SECTIONS, TableChecker
from .strategies import build_continuation, build_multistart
from .uncertainty import build_uncertainty

__all__ = ["RunConfig", "load_config", "file_sha256"]


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
        From ``[[optimizer.phases]]``, or the horizons of ``[continuation]``.
    multistart : MultiStart or None
        From ``[multistart]``.
    names : list of str or None
        The parameters' names (``[parameters] names``).
    uncertainty : dict or None
        From ``[uncertainty]`` (None when off): keyword arguments of
        :func:`fg2u_zo.uncertainty` and the ``output`` path.
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
    multistart: object = None
    names: list | None = None
    continuation: bool = False
    uncertainty: dict | None = None

    @property
    def checkpoint(self):
        """The checkpoint path, or None."""
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
    """The SHA-256 of a file's bytes, as hex (what a checkpoint records of its config)."""
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
    c = TableChecker(path)
    c.unknown_keys(raw, SECTIONS, "the top level")
    for name in REQUIRED_SECTIONS:
        if name not in raw:
            raise c.error(f"[{name}]", "section is missing")
    for name in SECTIONS:
        if name in raw:
            c.table(raw[name], f"[{name}]")

    phi0, names = build_parameters(c, raw["parameters"])
    n = phi0.size
    bounds, transform = build_bounds_and_transform(c, raw["parameters"], phi0)
    name = os.path.splitext(os.path.basename(path))[0]
    horizon_phases = multistart = None
    if "continuation" in raw:
        c.table(raw["continuation"], "[continuation]")
        horizon_phases, problem = build_continuation(c, raw["continuation"], raw, names, n,
                                                     name)
    else:
        solver = build_solver(c, raw["solver"], names, "[solver]")
        outer, differentiable = build_outer(c, raw["outer"])
        from ..problem import BilevelProblem
        try:
            problem = BilevelProblem(inner=solver, outer=outer, num_params=n,
                                     differentiable_outer=differentiable, name=name)
        except FG2UError as exc:
            raise c.error("[solver]", str(exc)) from None
    # Without [estimator] / [optimizer] (or its name) the run takes fz.minimize's
    # defaults: Gauss-Newton on forward differences for a differentiable loss.
    estimator = (build_estimator(c, raw["estimator"], "[estimator]") if "estimator" in raw
                 else None)
    opt = raw.get("optimizer", {})
    c.unknown_keys(opt, OPTIMIZER_KEYS, "[optimizer]")
    options = build_optimizer_options(c, opt)
    phases = None
    if "phases" in opt:
        phases = build_phases(c, opt["phases"], raw["solver"], names, estimator)
        if "steps" in opt:
            raise c.error("[optimizer] steps", "cannot be given together with "
                          "[[optimizer.phases]]: each phase has its own steps")
    options.update(bounds=bounds, transform=transform)
    options.update(build_output_options(c, raw.get("output", {})))
    evaluator_options = build_evaluator_options(c, raw.get("parallel", {}))
    if horizon_phases is not None:
        phases = horizon_phases
    if "multistart" in raw:
        multistart, stop = build_multistart(c, raw["multistart"], opt, bounds, n,
                                            horizon_phases is not None)
        if stop is not None:
            from ..outer.phases import Phase
            from ..outer.setup import default_steps
            steps = options.pop("steps", None)
            if steps is None:
                steps = default_steps(problem, n, options.get("optimizer"))
            phases = [Phase(steps=steps, estimator=estimator, until=stop)]
    from ..losses import LeastSquares
    uncertainty = build_uncertainty(c, raw.get("uncertainty"),
                                    isinstance(problem.outer, LeastSquares),
                                    options.get("history"))
    return RunConfig(path=os.path.abspath(path), sha256=file_sha256(path), raw=raw,
                     problem=problem, phi0=phi0, estimator=estimator, phases=phases,
                     minimize_options=options, evaluator_options=evaluator_options,
                     multistart=multistart, names=names,
                     continuation=horizon_phases is not None, uncertainty=uncertainty)
