"""Discover PDE coefficients from sparse observations (the FG²U paper's PDE task).

The inner solver is a black box: a Fourier pseudo-spectral simulator
(``solvers.Burgers`` / ``KdV`` / ``AllenCahn``) run with numpy, no autodiff. The
meta-parameters are the logarithms of the unknown coefficients; FG2U-ZO estimates the
meta-gradient with central finite differences through the simulator, and the outer
loss — the mean squared misfit at the observation points, bilinearly interpolated from
the simulated field in torch — is differentiated exactly. Gauss–Newton trust-region
steps are built from the perturbed solves (``--optimizer Rprop`` for the paper's
first-order path).

Over a long horizon the misfit of a dispersive equation is rugged (KdV's solitons
drift out of phase for a wrong coefficient, and the misfit has a local minimum wherever
they line up with the wrong crests), so by default the search is globalized twice:

- continuation in the horizon (``fz.horizon_phases``): fit the observations up to
  ``T_1`` first, with the simulator run only that far, then ``T_2 = 2 T_1``, ... up to
  the last observation, each phase warm-started from the previous one and ended when
  its steps fall below 1e-2 (``fz.horizon_schedule``, ``fz.Converged``);
- parallel multi-start (``fz.multistart``): a Sobol' design in a box of a factor
  ``--bound-factor`` around the initial guess, screened on the first horizon in one
  parallel group, then continuation runs from the best few in lockstep (their solves
  gathered into one parallel group per step), halved after each phase.

``--no-continuation`` and ``--no-multistart`` turn them off (one run from the initial
guess over the whole horizon: the example before globalization).

    python examples/pde_discovery.py --quick
    python examples/pde_discovery.py --equation burgers --data examples/data/burgers.mat \\
        --points 100 --truth nu=0.0031830988618379067,lam=1 --learn nu
    python examples/pde_discovery.py --equation kdv --write-data kdv.mat   # Raissi's grid
    python examples/pde_discovery.py --equation kdv --data kdv.mat --points 100 \\
        --truth l1=1,l2=0.0025 --learn l2

The data file uses Raissi's layout (``x``, ``tt`` or ``t``, ``uu`` or ``u``); the
initial condition is the data's first snapshot; ``--write-data`` makes such a file
with the simulator itself. Prints a result table, the cost (solver calls, parallel
groups and rounds at the worker count used), then one JSON line with ``equation``,
``estimates``, ``rel_err`` (with ``--truth``), ``max_rel_err``, ``nfev``, ``wall_s``,
``points``, ``noise``, ``steps``, ``final_misfit``, and the cost: ``groups``,
``workers``, ``rounds`` (at that worker count), ``rounds_W8``, ``rounds_W64``,
``horizons``, ``starts``, ``at_bound`` (coefficients that ended on the edge of the
search box), and ``intervals``: the 95 % confidence interval of each coefficient at the
fit (``fz.uncertainty`` on the observations, linear in log-coefficients, the noise level
estimated from the residuals; ``--no-uncertainty`` skips it) with ``uncertainty_nfev``,
the solves it took.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np
import torch

import fg2u_zo as fz
import solvers

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "data" / "burgers.mat"
EQUATIONS = {"burgers": solvers.Burgers, "kdv": solvers.KdV, "allen_cahn": solvers.AllenCahn}
# Burgers' data set has a known truth; others are given with --truth.
KNOWN_TRUTH = {"burgers.mat": {"nu": 0.01 / math.pi, "lam": 1.0}}


class LogCoefficients:
    """Inner solver over log-coefficients: ``phi = log(c)``, so a finite-difference step
    is a *relative* change of every coefficient, whatever its magnitude (nu ~ 3e-3 and
    lam ~ 1 get the same relative resolution)."""

    def __init__(self, simulator):
        self.simulator = simulator

    def __call__(self, phi, *, warm_start=None, seed=None):
        return self.simulator(np.exp(phi))


class ObservationMisfit:
    """Mean squared misfit at scattered (t, x) points, bilinear interpolation in torch.

    The interpolation weights are fixed (they depend on the points, not on phi), so the
    outer loss is a quadratic function of the simulated field: its gradient is exact.
    """

    def __init__(self, t_grid, x_grid, t_obs, x_obs, u_obs):
        it, wt = self._bracket(t_grid, t_obs)
        ix, wx = self._bracket(x_grid, x_obs)
        nx = len(x_grid)
        self.index = torch.as_tensor(np.stack([it * nx + ix, it * nx + ix + 1,
                                               (it + 1) * nx + ix, (it + 1) * nx + ix + 1]))
        self.weight = torch.as_tensor(np.stack([(1 - wt) * (1 - wx), (1 - wt) * wx,
                                                wt * (1 - wx), wt * wx]))
        self.u_obs = torch.as_tensor(u_obs)

    @staticmethod
    def _bracket(grid, values):
        i = np.clip(np.searchsorted(grid, values, side="right") - 1, 0, len(grid) - 2)
        w = (values - grid[i]) / (grid[i + 1] - grid[i])
        return i, w

    def predict(self, theta):
        flat = theta.reshape(-1)
        return (flat[self.index] * self.weight).sum(dim=0)

    def __call__(self, theta, phi):
        return ((self.predict(theta) - self.u_obs) ** 2).mean()


class ObservedField:
    """The simulated field at the observation points (numpy): the inner solver of the
    calibration's uncertainty, whose outer loss is then a plain ``fz.LeastSquares``."""

    def __init__(self, inner, misfit):
        self.inner = inner
        self.index = misfit.index.numpy()
        self.weight = misfit.weight.numpy()

    def __call__(self, phi, *, warm_start=None, seed=None):
        flat = np.ravel(self.inner(phi))
        return (flat[self.index] * self.weight).sum(axis=0)


def coefficient_intervals(problem, phi, learn, evaluator, seed):
    """95 % intervals of the coefficients at the fit (``fz.uncertainty``): linear in
    ``log c`` (the meta-parameters), so asymmetric in ``c``; the noise level is estimated
    from the residuals (Student's t with M - N degrees of freedom)."""
    misfit = problem.outer
    observed = fz.BilevelProblem(inner=ObservedField(problem.inner, misfit),
                                 outer=fz.LeastSquares(misfit.u_obs.numpy()),
                                 num_params=len(learn), name=problem.name)
    # The simulators are smooth to ~1e-14: central differences at the step of the fit.
    return fz.uncertainty(phi, observed, names=[f"log {n}" for n in learn],
                          scheme="central", step=1e-5, rng=seed, evaluator=evaluator)


def parse_assignments(text, what):
    out = {}
    if not text:
        return out
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--{what}: expected name=value pairs separated by commas, got {item!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"--{what}: {name.strip()} must be a number, got {value!r}") from None
    return out


def sample_points(t, x, num, sampling, rng):
    """Indices (i_t, i_x) of ``num`` observation points with t > t0."""
    nt, nx = len(t), len(x)
    if sampling == "random":
        flat = rng.choice((nt - 1) * nx, size=num, replace=False)
        return 1 + flat // nx, flat % nx
    rows = max(1, int(round(math.sqrt(num * (nt - 1) / nx))))
    rows = min(rows, num)
    cols = math.ceil(num / rows)
    it = np.linspace(1, nt - 1, rows).round().astype(int)
    ix = np.linspace(0, nx - 1, cols + 2)[1:-1].round().astype(int)  # interior in x
    grid_t, grid_x = np.meshgrid(it, ix, indexing="ij")
    return grid_t.ravel()[:num], grid_x.ravel()[:num]


#: Raissi's grids and initial conditions, for --write-data.
RAISSI_SETUPS = {
    "burgers": {"x": np.linspace(-1.0, 1.0, 256), "t": np.linspace(0.0, 0.99, 100),
                "u0": lambda x: -np.sin(np.pi * x)},
    "kdv": {"x": -1.0 + 2.0 * np.arange(512) / 512, "t": np.linspace(0.0, 1.0, 201),
            "u0": lambda x: np.cos(np.pi * x)},
    "allen_cahn": {"x": -1.0 + 2.0 * np.arange(512) / 512, "t": np.linspace(0.0, 1.0, 201),
                   "u0": lambda x: x ** 2 * np.cos(np.pi * x)},
}


def write_data(equation, path, coefficients=None, *, n_modes=None, dt=None, x=None, t=None):
    """Simulate ``equation`` on Raissi's grid and save it in Raissi's layout.

    Keys ``x`` (nx x 1), ``tt`` (nt x 1) and ``uu`` (nx x nt), as in Raissi's ``.mat``
    files; ``coefficients`` default to the solver's (Raissi's) values. ``x``/``t``
    replace Raissi's grids (a coarser grid for quick tests). Returns ``(x, t, u)``.
    """
    import scipy.io

    setup = RAISSI_SETUPS[equation]
    x = setup["x"] if x is None else np.asarray(x, dtype=np.float64)
    t = setup["t"] if t is None else np.asarray(t, dtype=np.float64)
    cls = EQUATIONS[equation]
    values = dict(cls.default_coefficients, **(coefficients or {}))
    options = {k: v for k, v in (("n_modes", n_modes), ("dt", dt)) if v is not None}
    simulator = cls(setup["u0"], t, x_out=x, **options)
    u = simulator(np.array([values[name] for name in cls.coefficient_names]))
    scipy.io.savemat(path, {"x": x[:, None], "tt": t[:, None], "uu": u.T})
    return x, t, u


def build(args):
    """The discovery problem: observations, ``build(horizon)`` and the start.

    Returns ``(at_horizon, obs_times, t0, phi0, learn, init, rms)``: ``at_horizon(T)``
    is the BilevelProblem over the observations with ``t <= T``, its simulator run to
    the last of them; ``rms`` is the field's root mean square (the noise's unit).
    """
    x, t, u = solvers.load_raissi_mat(args.data)
    rms = float(np.sqrt(np.mean(u ** 2)))
    rng = np.random.default_rng(args.seed)
    it, ix = sample_points(t, x, args.points, args.sampling, rng)
    u_obs = u[it, ix]
    if args.noise > 0:
        u_obs = u_obs + args.noise * rms * rng.standard_normal(u_obs.shape)
    cls = EQUATIONS[args.equation]
    learn = tuple(args.learn)
    unknown = set(learn) - set(cls.coefficient_names)
    if unknown:
        raise SystemExit(f"--learn: {sorted(unknown)} not coefficients of {args.equation}; "
                         f"choose from {cls.coefficient_names}")
    fixed = {k: v for k, v in args.truth.items() if k not in learn and k in cls.coefficient_names}
    options = {k: v for k, v in (("n_modes", args.modes), ("dt", args.dt)) if v is not None}
    t_obs = t[it]

    def at_horizon(horizon):
        keep = t_obs <= horizon
        t_out = t[: it[keep].max() + 1]   # simulate only as long as observed
        simulator = cls(u[0], t_out, x0=x, x_out=x, learn=learn, fixed=fixed, **options)
        misfit = ObservationMisfit(t_out, x, t_obs[keep], x[ix[keep]], u_obs[keep])
        return fz.BilevelProblem(inner=LogCoefficients(simulator), outer=misfit,
                                 num_params=len(learn),
                                 name=f"{args.equation}-discovery[t<={horizon:g}]")

    init = {name: args.init.get(name, 2.0 * cls.default_coefficients[name]) for name in learn}
    phi0 = np.log([init[name] for name in learn])
    return at_horizon, t_obs - t[0], float(t[0]), phi0, learn, init, rms


def observation_noise(args, rms):
    """The standard deviation of the observations' noise: the one added (``--noise``
    times the field's RMS ``rms``), at least the resolution a fit is judged at, 1e-5 of
    the RMS (the simulators are accurate to ~1e-14, data from elsewhere to their
    digits)."""
    return max(args.noise, 1e-5) * rms


def at_noise_level(misfit, sigma, num_points):
    """Whether a mean squared misfit is what noise of standard deviation ``sigma`` on
    ``num_points`` observations leaves: below ``sigma^2 (1 + 4 sqrt(2 / K))``, the mean
    of K squared normal deviates four standard deviations above its expectation."""
    return misfit <= sigma ** 2 * (1.0 + 4.0 * math.sqrt(2.0 / num_points))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--equation", choices=sorted(EQUATIONS), default="burgers")
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA,
                        help="Raissi-layout .mat file (default: the shipped Burgers data)")
    parser.add_argument("--write-data", type=pathlib.Path, default=None, metavar="PATH",
                        help="simulate --equation on Raissi's grid (coefficients: --truth, "
                             "else Raissi's), write it to PATH in Raissi's layout, and exit")
    parser.add_argument("--points", type=int, default=100, help="observations, 4 to 100")
    parser.add_argument("--sampling", choices=("random", "grid"), default="random")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise", type=float, default=0.0,
                        help="relative Gaussian noise (fraction of the RMS of u)")
    parser.add_argument("--learn", default=None,
                        help="comma-separated coefficients to learn (default: nu for Burgers, "
                             "all for the others)")
    parser.add_argument("--truth", default=None,
                        help="name=value,...: fixes unlearned coefficients, reports errors")
    parser.add_argument("--init", default=None, help="name=value,... (default: 2 x default)")
    parser.add_argument("--steps", type=int, default=None,
                        help="most steps of each phase (default 200; 40 with --quick)")
    parser.add_argument("--lr", type=float, default=0.05,
                        help="(initial) step in log-coefficients")
    parser.add_argument("--optimizer", default="gauss-newton",
                        help="gauss-newton (the default), adam, or a torch.optim class name such as Rprop")
    parser.add_argument("--continuation", action=argparse.BooleanOptionalAction, default=True,
                        help="continuation in the horizon (default: on)")
    parser.add_argument("--multistart", action=argparse.BooleanOptionalAction, default=None,
                        help="parallel multi-start: always (--multistart), never "
                             "(--no-multistart), or by default only when the local "
                             "(continued) fit's misfit is above the noise level")
    parser.add_argument("--starts", type=int, default=None,
                        help="design points of the multi-start (default 8 per coefficient)")
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint file: the local run (continuation included) is "
                             "saved as it goes and continued when the file exists; a "
                             "multi-start goes to PATH.multistart")
    parser.add_argument("--local", type=int, default=4,
                        help="local runs from the best design points (default 4)")
    parser.add_argument("--bound-factor", type=float, default=10.0,
                        help="search box: each coefficient within this factor of its "
                             "initial value (default 10)")
    parser.add_argument("--xtol", type=float, default=1e-5,
                        help="the last phase stops once its steps stay below this (in "
                             "log-coefficients: a relative change; default 1e-5)")
    parser.add_argument("--modes", type=int, default=None,
                        help="simulator's Fourier modes (default: the solver's)")
    parser.add_argument("--dt", type=float, default=None,
                        help="simulator's time step (default: the solver's)")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--n-jobs", type=int, default=None)
    parser.add_argument("--uncertainty", action=argparse.BooleanOptionalAction, default=True,
                        help="95%% intervals of the coefficients at the fit (default: on)")
    parser.add_argument("--quick", action="store_true", help="short run for a smoke check")
    args = parser.parse_args(argv)
    if not 4 <= args.points <= 100:
        parser.error(f"--points must be between 4 and 100, got {args.points}")
    if args.bound_factor <= 1:
        parser.error(f"--bound-factor must be > 1, got {args.bound_factor}")
    cls = EQUATIONS[args.equation]
    args.truth = parse_assignments(args.truth, "truth")
    if args.write_data is not None:
        x, t, _ = write_data(args.equation, args.write_data,
                             {k: v for k, v in args.truth.items() if k in cls.coefficient_names},
                             n_modes=args.modes, dt=args.dt)
        print(f"wrote {args.write_data}: {args.equation} on {x.size} points x {t.size} times")
        return {"written": str(args.write_data)}
    if not args.data.exists():
        parser.error(f"--data: {args.data} does not exist")
    args.learn = (args.learn.split(",") if args.learn else
                  ["nu"] if args.equation == "burgers" else list(cls.coefficient_names))
    args.learn = [s.strip() for s in args.learn]
    if not args.truth and args.data.name in KNOWN_TRUTH and args.equation == "burgers":
        args.truth = dict(KNOWN_TRUTH[args.data.name])
    args.init = parse_assignments(args.init, "init")
    steps = args.steps or (40 if args.quick else 200)

    torch.set_num_threads(1)
    start = time.perf_counter()
    at_horizon, obs_times, t0, phi0, learn, init, rms = build(args)
    n = len(learn)
    horizons = (fz.horizon_schedule(obs_times, min_points=max(10, 4 * n)) + t0
                if args.continuation else [float(obs_times.max() + t0)])
    # Each phase but the last moves on once its steps stay below 1e-2 (1 % in the
    # coefficients: well inside the basin of the next horizon's minimum) and the next
    # starts with steps of that size (carry_lr), not --lr; the last stops at --xtol.
    # (carry_lr: first-order steppers only; Gauss-Newton sizes its steps itself.)
    first_order = args.optimizer.lower() != "gauss-newton"
    phases = fz.horizon_phases(at_horizon, horizons, steps=steps,
                               until=fz.Converged(xtol=1e-2),
                               stop=fz.Converged(xtol=args.xtol),
                               carry_lr=3.0 if first_order else None)
    # Gauss-Newton takes the library's defaults (forward differences, their step sized
    # from the outputs; the simulators are smooth to ~1e-14). The first-order path needs
    # an estimate: with N = 1 or 2 unknowns, b = N orthogonal directions give the full
    # basis, exact up to the O(h^2) error of central differences at 1e-5 (about the
    # noise-optimal eps**(1/3)). Exact gradients suit Rprop: a per-coefficient step that
    # grows while the gradient keeps its sign and halves when it flips, blind to the
    # loss's scale. Adam's second-moment memory instead shrinks its steps long before
    # the optimum on this flat valley.
    estimator = None if not first_order else fz.FG2UZO(
        num_directions=n, directions="orthogonal", scheme="central", step=1e-5)
    options = ({"optimizer": args.optimizer, "lr": args.lr, "schedule": "linear"}
               if first_order else {})
    bounds = (phi0 - math.log(args.bound_factor), phi0 + math.log(args.bound_factor))
    problem = at_horizon(horizons[-1])
    noise_level = observation_noise(args, rms)
    results = []
    with fz.Evaluator(backend=args.backend, n_jobs=args.n_jobs) as ev:
        workers = ev.workers
        # --checkpoint: the local run is saved at PATH, a multi-start at PATH.multistart
        # (each continued when its file exists).
        saved = ({"checkpoint": args.checkpoint, "resume": "auto"} if args.checkpoint
                 else {})
        if args.multistart is not True:
            # The local run (with continuation: the phases from the initial guess).
            local = fz.minimize(problem, phi0, estimator, phases=phases, bounds=bounds,
                                rng=args.seed, evaluator=ev, progress=False,
                                **saved, **options)
            results.append(local)
        if args.multistart or (args.multistart is None and not at_noise_level(
                results[0].value, noise_level, args.points)):
            # The local fit left misfit the noise does not explain: a wrong basin.
            # The design is screened on the first horizon, the best starts continued.
            num_starts = args.starts if args.starts is not None else 8 * n
            if args.checkpoint:
                saved["checkpoint"] = args.checkpoint + ".multistart"
            results.append(fz.multistart(problem, bounds, estimator, phi0=phi0,
                                         phases=phases, num_starts=num_starts,
                                         num_local=args.local, rng=args.seed,
                                         evaluator=ev, **saved, **options))
        result = min(results, key=lambda r: r.value)
        wall = time.perf_counter() - start
        unc = (coefficient_intervals(problem, result.phi, learn, ev, args.seed)
               if args.uncertainty else None)
    estimates = dict(zip(learn, np.exp(result.phi).tolist()))
    rel_err = {k: abs(v - args.truth[k]) / abs(args.truth[k])
               for k, v in estimates.items() if k in args.truth}
    best_run = result.runs[int(np.argmin([r.value for r in result.runs]))]
    nfev = sum(r.nfev for r in results)
    groups = [g for r in results for g in r.groups]
    multistarted = len(results) > 1 or args.multistart is True

    print(f"{args.equation}: {args.points} {args.sampling} points, noise {args.noise:g}, "
          f"{args.optimizer}, {wall:.1f} s")
    print(f"horizons {', '.join(f'{h:g}' for h in horizons)}; "
          + (f"{len(results[-1].design)} screened starts, {len(results[-1].runs)} local "
             "runs" + (" (halved after each phase)" if len(horizons) > 1 else "")
             + (" after a local fit above the noise level" if len(results) > 1 else "")
             if multistarted else "one run from the initial guess (its misfit is at the "
             "noise level)" if args.multistart is None else "one run from the initial guess")
          + f"; best run's steps per phase {[p.steps for p in best_run.phases]}")
    print(f"{'coefficient':>12} {'initial':>12} {'estimate':>14} {'truth':>14} {'rel. error':>11}")
    for name in learn:
        truth = args.truth.get(name)
        print(f"{name:>12} {init[name]:>12.6g} {estimates[name]:>14.8g} "
              f"{'' if truth is None else format(truth, '.8g'):>14} "
              f"{'' if name not in rel_err else format(rel_err[name], '.2e'):>11}")
    print(f"final misfit {result.value:.3e}")
    intervals = {}
    if unc is not None:
        intervals = {name: np.exp(unc.interval[i]).tolist() for i, name in enumerate(learn)}
        print(f"{100 * unc.confidence:g}% intervals (linear in log c, Student's t with "
              f"{unc.dof} dof, noise sd {unc.noise_sd:.3g}; {unc.nfev} more solves):")
        for i, name in enumerate(learn):
            lo, hi = intervals[name]
            truth = args.truth.get(name)
            inside = "" if truth is None else ("  truth inside" if lo <= truth <= hi
                                               else "  truth outside")
            print(f"{name:>12} [{lo:.8g}, {hi:.8g}]  relative half-width "
                  f"{unc.stderr[i] * unc.quantile:.2e}{inside}")
    edge = np.isclose(result.phi, bounds[0], rtol=0, atol=1e-9) | np.isclose(
        result.phi, bounds[1], rtol=0, atol=1e-9)
    at_bound = [name for name, e in zip(learn, edge) if e]
    if at_bound:
        print(f"note: {', '.join(at_bound)} ended on the edge of the search box (a factor "
              f"{args.bound_factor:g} from the initial value): the misfit is lowest there, "
              "so these data do not determine it inside the box (more observations, less "
              "noise, or a wider --bound-factor)")
    rounds = {w: sum(-(-g // w) for g in groups) for w in (workers, 8, 64)}
    print(f"cost: {nfev} solver calls in {len(groups)} parallel groups: "
          f"{rounds[workers]} rounds with the {workers} worker(s) used, {rounds[8]} with 8, "
          f"{rounds[64]} with 64")
    summary = {
        "equation": args.equation,
        "estimates": estimates,
        "rel_err": rel_err,
        "max_rel_err": max(rel_err.values()) if rel_err else None,
        "nfev": int(nfev),
        "wall_s": round(wall, 2),
        "points": args.points,
        "noise": args.noise,
        "steps": steps,
        "final_misfit": float(result.value),
        "groups": len(groups),
        "workers": workers,
        "rounds": rounds[workers],
        "rounds_W8": rounds[8],
        "rounds_W64": rounds[64],
        "horizons": [float(h) for h in horizons],
        "starts": int(len(results[-1].design)) if multistarted else 1,
        "multistart": bool(multistarted),
        "optimizer": result.optimizer,
        "at_bound": at_bound,
        "intervals": intervals,
        "uncertainty_nfev": None if unc is None else unc.nfev,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
