"""Peer optimizers behind one call signature, for side-by-side comparisons.

Every runner is called as::

    run_X(f, x0, sigma0, budget, seed=0, *, bounds=None, batch=None, **options) -> PeerResult

``f(x) -> float`` is the objective (``run_dfols`` and ``run_dfbgn`` take
``residuals(x) -> array`` and minimize their sum of squares). Each call of ``f`` is one solver call: a counting
wrapper counts them in this process, records the best value so far after every call and
stops the peer when ``budget`` calls are spent (a peer never gets call ``budget + 1``).
``batch(list_of_x) -> list_of_values``, when given, evaluates several points at once
(in parallel: the examples pass an :class:`fg2u_zo.Evaluator` map); the population
methods (CMA-ES, TPE asked in batches, nevergrad, SPSA's pairs, the finite-difference
gradient of L-BFGS-B) use it, DFO-LS and DFBGN are sequential by nature. ``sigma0`` is the
initial spread in x: CMA-ES's and nevergrad's step size, DFO-LS's trust-region radius,
TPE's search box ``x0 +- 3 sigma0`` when there are no bounds, SPSA's first step; it is
unused by L-BFGS-B. ``seed`` (an int) seeds the peer; the same seed gives the same run.
The peers' own logging is silenced.

Used by the examples and by ``python -m benchmarks.peers`` (``from examples._peers
import run_cma, ...``).

Examples
--------
>>> import numpy as np
>>> from examples._peers import run_cma
>>> res = run_cma(lambda x: float(((x - 1.0) ** 2).sum()), np.zeros(3), 0.5, 200, seed=0)
>>> res.nfev, bool(res.f_best < 1e-3), len(res.history_f)
(200, True, 200)
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PeerResult", "CountingObjective", "BudgetExhausted", "quiet", "run_cma",
           "run_optuna_tpe", "run_dfols", "run_dfbgn", "run_nevergrad", "run_lbfgsb_fd",
           "run_spsa"]


@dataclass(frozen=True, repr=False)
class PeerResult:
    """What a peer found with its budget.

    Attributes
    ----------
    name : str
    x_best : ndarray
        The best point *evaluated* (not, e.g., CMA-ES's mean).
    f_best : float
        Its value (``sum(r**2)`` for DFO-LS).
    history_f : ndarray, shape (nfev,)
        Best value so far after each call.
    nfev : int
        Calls of the objective, counted in this process.
    wall_time : float
        Seconds of wall-clock time.
    message : str
        Why it stopped.
    """

    name: str
    x_best: np.ndarray
    f_best: float
    history_f: np.ndarray
    nfev: int
    wall_time: float
    message: str = ""
    extra: dict = field(default_factory=dict)

    def __repr__(self):
        return (f"PeerResult(name={self.name!r}, f_best={self.f_best:.6g}, nfev={self.nfev}, "
                f"wall_time={self.wall_time:.3g}, message={self.message!r})")


class BudgetExhausted(Exception):
    """Raised inside a peer when it asks for a call beyond the budget."""


class CountingObjective:
    """Counts calls of ``f`` (or points sent to ``batch``) and stops at ``budget``.

    Non-finite values count as ``+inf`` for the best-so-far record; what the peer sees is
    decided by the runner.
    """

    def __init__(self, f, budget, batch=None):
        if isinstance(budget, bool) or int(budget) != budget or budget < 1:
            raise ValueError(f"`budget` must be a positive int, got {budget!r}")
        self.f, self.batch, self.budget = f, batch, int(budget)
        self.nfev = 0
        self.history = []
        self.best_x, self.best_f = None, math.inf

    @property
    def remaining(self) -> int:
        return self.budget - self.nfev

    def _record(self, x, value):
        self.nfev += 1
        key = value if math.isfinite(value) else math.inf
        if key < self.best_f or self.best_x is None:
            self.best_f, self.best_x = key, np.array(x, dtype=np.float64, copy=True)
        self.history.append(self.best_f)

    def __call__(self, x):
        if self.remaining <= 0:
            raise BudgetExhausted
        value = _as_value(self.f(np.asarray(x, dtype=np.float64)))
        self._record(x, value)
        return value

    def many(self, xs):
        """Evaluate up to ``remaining`` of ``xs`` (all of them at once with ``batch``)."""
        xs = [np.asarray(x, dtype=np.float64) for x in xs][:max(self.remaining, 0)]
        if not xs:
            raise BudgetExhausted
        if self.batch is None or len(xs) == 1:
            return [self(x) for x in xs]
        values = [_as_value(v) for v in self.batch(xs)]
        if len(values) != len(xs):
            raise ValueError(f"`batch` returned {len(values)} values for {len(xs)} points")
        for x, v in zip(xs, values):
            self._record(x, v)
        return values

    def result(self, name, start, message, **extra):
        return PeerResult(name=name, x_best=self.best_x, f_best=float(self.best_f),
                          history_f=np.asarray(self.history, dtype=np.float64),
                          nfev=self.nfev, wall_time=time.perf_counter() - start,
                          message=message, extra=extra)


def _as_value(v):
    v = float(np.asarray(v, dtype=np.float64).reshape(()))
    return v


def _bounds_arrays(bounds, n):
    if bounds is None:
        return None, None
    lo, hi = bounds
    lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (n,)).copy()
    hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (n,)).copy()
    if np.any(lo >= hi):
        raise ValueError("`bounds`: every lower bound must be < its upper bound")
    return lo, hi


def _start(x0, sigma0, budget):
    x0 = np.array(x0, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(x0)):
        raise ValueError("`x0` must be finite")
    if not (isinstance(sigma0, (int, float)) and sigma0 > 0):
        raise ValueError(f"`sigma0` must be > 0, got {sigma0!r}")
    return x0, float(sigma0), time.perf_counter()


@contextlib.contextmanager
def quiet(*loggers):
    """Silence these loggers (below ERROR) and all warnings for the duration of a run."""
    saved = []
    for name in loggers:
        lg = logging.getLogger(name)
        saved.append((lg, lg.level))
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for lg, level in saved:
                lg.setLevel(level)


# -- CMA-ES (pycma) ------------------------------------------------------------------------
def run_cma(f, x0, sigma0, budget, seed=0, *, bounds=None, batch=None, **options):
    """CMA-ES (pycma's ``cma.CMAEvolutionStrategy``), one generation per ``batch``.

    ``options`` go to pycma (e.g. ``popsize=``, ``CMA_diagonal=True``). A generation cut
    short by the budget is evaluated but not told. Non-finite values are passed as
    ``+inf`` (worst).
    """
    import cma

    x0, sigma0, start = _start(x0, sigma0, budget)
    obj = CountingObjective(f, budget, batch)
    lo, hi = _bounds_arrays(bounds, x0.size)
    opts = {"seed": int(seed) + 1,  # pycma treats seed 0 as "time-based"
            "verbose": -9, "verb_log": 0, "verb_disp": 0, "maxfevals": budget,
            "tolfun": 0.0, "tolfunhist": 0.0, "tolx": 0.0, "tolstagnation": 10**9,
            "tolflatfitness": 10**9}
    if lo is not None:
        opts["bounds"] = [lo.tolist(), hi.tolist()]
    opts.update(options)
    message = "budget spent"
    with quiet("cma"):
        es = cma.CMAEvolutionStrategy(x0, sigma0, opts)
        try:
            while True:
                xs = es.ask()
                values = obj.many(xs)
                if len(values) < len(xs):
                    break
                es.tell(xs, [v if math.isfinite(v) else math.inf for v in values])
                if obj.remaining <= 0:
                    break
                stop = {k: v for k, v in es.stop().items() if k != "maxfevals"}
                if stop:
                    message = f"stopped: {stop}"
                    break
        except BudgetExhausted:
            pass
    return obj.result("CMA-ES", start, message, popsize=es.popsize)


# -- Optuna TPE ----------------------------------------------------------------------------
def run_optuna_tpe(f, x0, sigma0, budget, seed=0, *, bounds=None, batch=None, batch_size=None,
                   multivariate=True, **options):
    """Optuna's TPE sampler over the box ``bounds`` (default ``x0 +- 3 sigma0``).

    The first trial is ``x0`` (enqueued). Trials are asked ``batch_size`` at a time
    (default: 8 with ``batch``, else 1) and told together; with batches the sampler uses
    ``constant_liar``. ``multivariate=True`` samples all coordinates jointly (much faster
    than one suggest per coordinate beyond a few dozen dimensions). ``options`` go to
    ``optuna.samplers.TPESampler``.
    """
    import optuna
    from optuna.distributions import FloatDistribution

    x0, sigma0, start = _start(x0, sigma0, budget)
    obj = CountingObjective(f, budget, batch)
    lo, hi = _bounds_arrays(bounds, x0.size)
    if lo is None:
        lo, hi = x0 - 3 * sigma0, x0 + 3 * sigma0
    if batch_size is None:
        batch_size = 8 if batch is not None else 1
    names = [f"x{i}" for i in range(x0.size)]
    space = {n: FloatDistribution(float(a), float(b)) for n, a, b in zip(names, lo, hi)}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler_opts = {"seed": int(seed), "multivariate": multivariate,
                    "constant_liar": batch_size > 1}
    sampler_opts.update(options)
    with quiet("optuna"):
        sampler = optuna.samplers.TPESampler(**sampler_opts)
        study = optuna.create_study(sampler=sampler, direction="minimize")
        study.enqueue_trial({n: float(np.clip(v, a, b))
                             for n, v, a, b in zip(names, x0, lo, hi)})
        try:
            while obj.remaining > 0:
                trials = [study.ask(space) for _ in range(min(batch_size, obj.remaining))]
                # Trial.params copies its dict on every access: read it once per trial.
                xs = [np.array([p[n] for n in names]) for p in (t.params for t in trials)]
                values = obj.many(xs)
                for trial, v in zip(trials, values):
                    if math.isfinite(v):
                        study.tell(trial, v)
                    else:
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        except BudgetExhausted:
            pass
    return obj.result("Optuna TPE", start, "budget spent")


# -- DFO-LS --------------------------------------------------------------------------------
def run_dfols(residuals, x0, sigma0, budget, seed=0, *, bounds=None, batch=None, **options):
    """DFO-LS (Cartis et al.): derivative-free Gauss-Newton on ``sum(residuals(x)**2)``.

    ``sigma0`` is the initial trust-region radius ``rhobeg``; ``options`` go to
    ``dfols.solve`` (``rhoend``, ``npt``, ``user_params``...). DFO-LS is sequential:
    ``batch`` is ignored. Its initial directions are random (numpy's global generator,
    seeded here and restored afterwards).
    """
    import dfols

    x0, sigma0, start = _start(x0, sigma0, budget)
    lo, hi = _bounds_arrays(bounds, x0.size)
    obj, objfun = _sumsq_objective(residuals, budget)
    kwargs = {"rhobeg": sigma0, "maxfun": budget, "do_logging": False,
              "print_progress": False}
    if lo is not None:
        kwargs["bounds"] = (lo, hi)
    kwargs.update(options)
    message = "budget spent"
    try:
        with quiet("dfols"), _numpy_global_seed(seed):
            out = dfols.solve(objfun, x0, **kwargs)
        message = str(getattr(out, "msg", "")) or message
    except BudgetExhausted:
        pass
    return obj.result("DFO-LS", start, message)


def _sumsq_objective(residuals, budget):
    """The residuals as the least-squares peers see them, counted: a non-finite vector
    is passed as ``1e150`` everywhere (a huge but finite sum of squares)."""
    last = {}

    def sumsq(x):
        r = np.asarray(residuals(x), dtype=np.float64).reshape(-1)
        last["r"] = r
        return float(r @ r) if np.all(np.isfinite(r)) else math.nan

    obj = CountingObjective(sumsq, budget)

    def objfun(x):
        value = obj(x)
        return last["r"] if math.isfinite(value) else np.full_like(last["r"], 1e150)

    return obj, objfun


@contextlib.contextmanager
def _numpy_global_seed(seed):
    """Seed numpy's global generator (the one DFO-LS and DFBGN draw their directions
    from) for a run, and give the caller's state back afterwards."""
    state = np.random.get_state()
    np.random.seed(int(seed))
    try:
        yield
    finally:
        np.random.set_state(state)


# -- DFBGN ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _numpy_aliases():
    """DFBGN 0.1 spells dtypes ``np.int`` and ``np.float``, aliases numpy 1.24 removed:
    lend them (the builtins they always meant) for the run only."""
    added = [name for name, alias in (("int", int), ("float", float))
             if name not in np.__dict__]
    for name in added:
        setattr(np, name, {"int": int, "float": float}[name])
    try:
        yield
    finally:
        for name in added:
            delattr(np, name)


def run_dfbgn(residuals, x0, sigma0, budget, seed=0, *, bounds=None, batch=None, **options):
    """DFBGN (Cartis and Roberts): derivative-free Gauss-Newton in random subspaces, on
    ``sum(residuals(x)**2)``.

    ``sigma0`` is the initial trust-region radius ``rhobeg``; ``options`` go to
    ``dfbgn.solve`` (``fixed_block``, ``rhoend``, ``user_params``...; without
    ``fixed_block`` the subspace grows adaptively, DFBGN's default). DFBGN has no bounds
    (``bounds`` must be None) and is sequential (``batch`` is ignored). Its directions
    are random (numpy's global generator, seeded here and restored afterwards).
    """
    if bounds is not None:
        raise ValueError("DFBGN does not take bounds; pass bounds=None")
    import dfbgn

    x0, sigma0, start = _start(x0, sigma0, budget)
    obj, objfun = _sumsq_objective(residuals, budget)
    kwargs = {"rhobeg": sigma0, "maxfun": budget}
    kwargs.update(options)
    message = "budget spent"
    try:
        with quiet("dfbgn"), _numpy_aliases(), _numpy_global_seed(seed):
            out = dfbgn.solve(objfun, x0, **kwargs)
        message = str(getattr(out, "msg", "")) or message
    except BudgetExhausted:
        pass
    return obj.result("DFBGN", start, message)


# -- nevergrad -----------------------------------------------------------------------------
_NGOPT_MESSAGE = ("nevergrad's NGOpt* meta-optimizers crash with numpy >= 2.4 and then hang "
                  "the process at exit; name a concrete optimizer such as 'CMA', "
                  "'DiagonalCMA', 'TBPSA', 'OnePlusOne', 'TwoPointsDE' or 'PSO'")


def run_nevergrad(f, x0, sigma0, budget, seed=0, *, bounds=None, batch=None,
                  optimizer="CMA", num_workers=None, **options):
    """A nevergrad optimizer by name (never NGOpt, see the error), asked/told in batches.

    ``num_workers`` (default: 8 with ``batch``, else 1) is how many points are asked
    before telling; ``options`` are unused (kept for the common signature).
    """
    if "ngopt" in str(optimizer).lower():
        raise ValueError(_NGOPT_MESSAGE)
    import nevergrad as ng

    x0, sigma0, start = _start(x0, sigma0, budget)
    obj = CountingObjective(f, budget, batch)
    lo, hi = _bounds_arrays(bounds, x0.size)
    if num_workers is None:
        num_workers = 8 if batch is not None else 1
    param = ng.p.Array(init=x0).set_mutation(sigma=sigma0)
    if lo is not None:
        param.set_bounds(lo, hi)
    param.random_state = np.random.RandomState(int(seed))
    try:
        cls = ng.optimizers.registry[optimizer]
    except KeyError:
        raise ValueError(f"unknown nevergrad optimizer {optimizer!r}; "
                         f"{_NGOPT_MESSAGE}") from None
    with quiet("nevergrad"):
        opt = cls(parametrization=param, budget=budget, num_workers=num_workers)
        try:
            while obj.remaining > 0:
                cands = [opt.ask() for _ in range(min(num_workers, obj.remaining))]
                values = obj.many([c.value for c in cands])
                for c, v in zip(cands, values):
                    opt.tell(c, v if math.isfinite(v) else 1e300)
        except BudgetExhausted:
            pass
    return obj.result(f"nevergrad {optimizer}", start, "budget spent")


# -- L-BFGS-B with finite-difference gradients ---------------------------------------------
def run_lbfgsb_fd(f, x0, sigma0, budget, seed=0, *, bounds=None, batch=None, step=1e-6,
                  **options):
    """scipy's L-BFGS-B with forward-difference gradients computed here.

    Each gradient costs ``N`` calls besides the value (``N + 1`` per L-BFGS-B
    evaluation), all in one ``batch``; the relative ``step`` is
    ``step * max(1, |x_i|)``, taken backwards at an upper bound. ``sigma0`` and ``seed``
    are unused (deterministic method); ``options`` go to ``scipy.optimize.minimize``'s
    ``options`` (``maxcor``, ``ftol``...).
    """
    from scipy.optimize import minimize

    x0, sigma0, start = _start(x0, sigma0, budget)
    obj = CountingObjective(f, budget, batch)
    lo, hi = _bounds_arrays(bounds, x0.size)
    n = x0.size

    def fun_and_grad(x):
        h = step * np.maximum(1.0, np.abs(x))
        if hi is not None:
            h = np.where(x + h > hi, -h, h)
        points = [x] + [x + h[i] * np.eye(1, n, i).ravel() for i in range(n)]
        values = obj.many(points)
        if len(values) < n + 1:
            raise BudgetExhausted
        f0 = values[0]
        grad = (np.asarray(values[1:]) - f0) / h
        if not (math.isfinite(f0) and np.all(np.isfinite(grad))):
            return 1e300, np.zeros(n)
        return f0, grad

    opts = {"maxiter": 10**6, "maxfun": 10**6}
    opts.update(options)
    scipy_bounds = None if lo is None else list(zip(lo, hi))
    message = "budget spent"
    try:
        out = minimize(fun_and_grad, x0, jac=True, method="L-BFGS-B", bounds=scipy_bounds,
                       options=opts)
        message = str(out.message)
    except BudgetExhausted:
        pass
    return obj.result("L-BFGS-B (FD)", start, message)


# -- SPSA ----------------------------------------------------------------------------------
def run_spsa(f, x0, sigma0, budget, seed=0, *, bounds=None, batch=None, a=None, c=None,
             A=None, alpha=0.602, gamma=0.101, **options):
    """Simultaneous-perturbation stochastic approximation (Spall 1998), 2 calls a step.

    Gains ``a_k = a / (k + 1 + A)**alpha``, ``c_k = c / (k + 1)**gamma``, Rademacher
    perturbations; Spall's defaults ``A = 10 %`` of the iterations and ``c = 0.1 sigma0``.
    Without ``a``, it is set from the first gradient estimate so that the first step
    moves each coordinate by about ``sigma0``. The iterate is projected onto ``bounds``.
    The best point evaluated (one of the ``x +- c_k delta``) is returned.
    """
    x0, sigma0, start = _start(x0, sigma0, budget)
    obj = CountingObjective(f, budget, batch)
    lo, hi = _bounds_arrays(bounds, x0.size)
    rng = np.random.default_rng(seed)
    iterations = max(1, budget // 2)
    A = 0.1 * iterations if A is None else float(A)
    c = 0.1 * sigma0 if c is None else float(c)
    x = x0.copy()
    try:
        for k in range(iterations):
            ck = c / (k + 1) ** gamma
            delta = rng.choice((-1.0, 1.0), size=x.size)
            plus, minus = x + ck * delta, x - ck * delta
            if lo is not None:
                plus, minus = np.clip(plus, lo, hi), np.clip(minus, lo, hi)
            fp, fm = obj.many([plus, minus])
            if not (math.isfinite(fp) and math.isfinite(fm)):
                continue
            ghat = (fp - fm) / (2.0 * ck) * delta
            if a is None:
                a = sigma0 * (A + 1) ** alpha / max(np.mean(np.abs(ghat)), 1e-300)
            x = x - a / (k + 1 + A) ** alpha * ghat
            if lo is not None:
                x = np.clip(x, lo, hi)
    except BudgetExhausted:
        pass
    return obj.result("SPSA", start, "budget spent")
