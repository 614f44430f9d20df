"""Calibrate a legacy simulator: a FreeFem++ conductivity field from noisy sensor data.

The inner solver is FreeFem++ itself (``solvers.diffusion_model``): steady diffusion
``-div(k grad u) = 1`` on the unit square, ``u = 0`` on the boundary, with the
conductivity ``k`` constant on each of ``K x K`` patches, observed at 144 interior
sensors. Every solve is a FreeFem++ process; nothing differentiates through it.

Unknowns: ``phi = log k`` per patch (``K = 8``: 64 of them), so any ``phi`` is a valid
field and a finite-difference step is a *relative* change of ``k``. Data: the sensor
readings of a known field (``--field smooth``: three Gaussian bumps; ``blocky``: two
rectangular inclusions; seeded), simulated on a mesh twice as fine as the one inverted
with (no "inverse crime"), plus Gaussian noise of ``--noise`` (1 %) of their RMS.

Outer loss (torch, differentiated exactly; ``sigma`` = noise standard deviation)::

    F(phi) = 0.5 * mean(((u(phi) - u_obs) / sigma)**2) + 0.5 * alpha * sum_{i~j} (phi_i - phi_j)**2

The first term is half the normalized data misfit J (J ~ 1 at the noise level); the
second a smoothness (Tikhonov) penalty on neighbouring patches, ``alpha = 0.1``: 64
unknowns from 144 noisy readings is ill-posed (patches next to the boundary, where
``u`` is small, are barely seen), and the penalty is what makes the recovered field
close to the truth rather than to the noise. Its gradient is exact (``d_phi f``).

Method: the Gauss–Newton trust-region stepper (``optimizer="gauss-newton"``) on FG²U-ZO's
forward differences, step ``h = 1e-3`` in log k. The model writes 17 significant digits
and solves directly, so its output is smooth to ~1e-15 and the O(h) error of forward
differences (~1e-3 relative) is harmless. The first group of solves is the start and
``b`` directions around it (``--directions``, default N: the whole Jacobian, in
parallel); each iteration then solves one trial point (``"lean"`` mode) and the model
keeps itself current with Broyden updates; the outer loss (misfit and penalty) enters
exactly. ``log k`` is kept in ``[-2, 2]``. ``--optimizer adam`` runs the first-order
FG²U-ZO path instead (Adam, ``b`` random directions per step, as in the paper).

Peers, at the same budget of FreeFem++ solves (each sees the same ``F``, bounds and
start): CMA-ES (pycma), Optuna TPE (multivariate), and DFO-LS on the residual vector
whose sum of squares is ``F`` (it exploits the least-squares structure, which the
others cannot). Their batches go through the same Evaluator (parallel workers).

    python examples/freefem_calibration.py --quick              # K = 4, mesh 16, 150 solves
    python examples/freefem_calibration.py --plot field.png     # K = 8, mesh 64, 400 solves
    python examples/freefem_calibration.py --scheduler tcp://10.0.0.5:8786

Prints a table (data misfit ratio final / initial, relative error of log k against the
truth, solves, solves to the target, seconds) and then one JSON line: ``field_rel_err``,
``misfit_ratio``, ``nfev``, ``calls_to_target``, ``peer_field_rel_err``,
``peer_misfit_ratio``, ``peer_calls_to_target`` (dicts by peer), and settings. The
target is ``F <= F_best + 0.01 (F0 - F_best)``, ``F_best`` the lowest final ``F`` of all
methods (the peers' benchmark's measure: 1 % of the initial gap left).
The relative field error is ``||log k - log k_true|| / ||log k_true||``: 1 at the
start (k = 1, the truth's geometric mean). Solves made only to report results are not
counted in the budgets. Then FG2U-ZO's fit gets its 95 % intervals of log k
(``fz.uncertainty``, the known noise level, the smoothness penalty as a Gaussian prior):
the JSON line adds ``interval_coverage`` (the fraction of patches whose true value lies
inside), ``interval_half_width_median`` and ``uncertainty_nfev``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make `examples._peers` importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import fg2u_zo as fz  # noqa: E402
import solvers  # noqa: E402
from examples import _peers  # noqa: E402

PEERS = ("cma", "tpe", "dfols")
PEER_NAMES = {"cma": "CMA-ES", "tpe": "Optuna TPE", "dfols": "DFO-LS"}
BOUNDS = (-2.0, 2.0)     # log k: k within a factor e^2 ~ 7.4 of the background
PEER_SIGMA0 = 0.5        # initial spread of the peers, in log k (the truth's is ~0.4)


# -- the truth and the data ----------------------------------------------------------------
def true_field(K, kind, rng):
    """log k on the K x K patches (index ``i + K*j``, x fastest), mean zero."""
    c = (np.arange(K) + 0.5) / K
    x, y = np.meshgrid(c, c, indexing="xy")  # x[j, i] = c[i]: ravel() gives i + K*j
    if kind == "smooth":
        f = np.zeros_like(x)
        for sign in (1.0, -1.0, 1.0):
            x0, y0 = rng.uniform(0.2, 0.8, size=2)
            r = rng.uniform(0.15, 0.3)
            f += sign * 0.8 * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * r * r))
    elif kind == "blocky":
        f = np.zeros_like(x)
        a, b = rng.uniform(0.1, 0.35, size=2)
        f[(x > a) & (x < a + 0.4) & (y > b) & (y < b + 0.45)] = 0.7
        a, b = rng.uniform(0.55, 0.65), rng.uniform(0.1, 0.5)
        f[(x > a) & (x < a + 0.3) & (y > b) & (y < b + 0.35)] = -0.6
    else:
        raise ValueError(f"unknown field {kind!r}")
    f = f.ravel()
    return f - f.mean()


def neighbour_pairs(K):
    """Index pairs (p, q) of patches sharing an edge."""
    horizontal = [(i + K * j, i + 1 + K * j) for j in range(K) for i in range(K - 1)]
    vertical = [(i + K * j, i + K * (j + 1)) for j in range(K - 1) for i in range(K)]
    return np.array(horizontal + vertical, dtype=np.int64)


class CalibrationLoss:
    """``0.5 J(u) + 0.5 alpha sum (phi_p - phi_q)^2`` in torch (see the module docstring)."""

    def __init__(self, u_obs, sigma, pairs, alpha):
        self.u_obs = torch.as_tensor(u_obs, dtype=torch.float64)
        self.sigma = float(sigma)
        self.p = torch.as_tensor(pairs[:, 0])
        self.q = torch.as_tensor(pairs[:, 1])
        self.alpha = float(alpha)

    def misfit(self, theta):
        """J: mean squared misfit in units of the noise variance (~1 at the noise level)."""
        return (((theta - self.u_obs) / self.sigma) ** 2).mean()

    def penalty(self, phi):
        return ((phi[self.p] - phi[self.q]) ** 2).sum()

    def __call__(self, theta, phi):
        return 0.5 * self.misfit(theta) + 0.5 * self.alpha * self.penalty(phi)

    # numpy views, for the peers and the report
    def value(self, theta, phi):
        with torch.no_grad():
            return float(self(torch.as_tensor(theta), torch.as_tensor(phi)))

    def residuals(self, theta, phi):
        """The vector whose sum of squares is the loss (for DFO-LS)."""
        r = (np.asarray(theta) - self.u_obs.numpy()) / self.sigma / np.sqrt(2.0 * theta.size)
        d = np.sqrt(0.5 * self.alpha) * (phi[self.p.numpy()] - phi[self.q.numpy()])
        return np.concatenate([r, d])

    def J(self, theta):
        with torch.no_grad():
            return float(self.misfit(torch.as_tensor(theta)))


@dataclass
class Setup:
    problem: fz.BilevelProblem
    solver: object
    loss: CalibrationLoss
    phi_true: np.ndarray
    phi0: np.ndarray
    K: int
    mesh: int


def build(K=8, mesh=None, field="smooth", noise=0.01, alpha=0.1, seed=0):
    """The calibration problem: truth, data (from a mesh twice finer), solver, loss."""
    mesh = 8 * K if mesh is None else mesh
    rng = np.random.default_rng(seed)
    phi_true = true_field(K, field, rng)
    fine = solvers.diffusion_model(K=K, mesh=2 * mesh, log_k=True)
    u_true = fine(phi_true)
    sigma = noise * float(np.sqrt(np.mean(u_true ** 2)))
    u_obs = u_true + sigma * rng.standard_normal(u_true.shape)
    solver = solvers.diffusion_model(K=K, mesh=mesh, log_k=True)
    loss = CalibrationLoss(u_obs, sigma, neighbour_pairs(K), alpha)
    problem = fz.BilevelProblem(inner=solver, outer=loss, num_params=K * K,
                                name=f"freefem-diffusion-K{K}")
    return Setup(problem, solver, loss, phi_true, np.zeros(K * K), K, mesh)


def least_squares_loss(setup):
    """``setup.loss`` as a ``fz.LeastSquares``: the same value, with its residual
    structure and its absolute noise level known to ``fz.uncertainty``."""
    loss = setup.loss
    pairs = np.column_stack([loss.p.numpy(), loss.q.numpy()])
    D = np.zeros((len(pairs), setup.phi0.size))
    D[np.arange(len(pairs)), pairs[:, 0]] = 1.0
    D[np.arange(len(pairs)), pairs[:, 1]] = -1.0
    return fz.LeastSquares(loss.u_obs.numpy(), sigma=loss.sigma, regularization=loss.alpha,
                           penalty=D)


def field_intervals(setup, result, *, step, evaluator, seed):
    """95 % intervals of log k per patch at the fit (``fz.uncertainty``): the noise level
    is the known sigma, the smoothness penalty a Gaussian prior (it constrains the
    patches the sensors barely see); one group of N + 1 forward differences."""
    problem = fz.BilevelProblem(inner=setup.solver, outer=least_squares_loss(setup),
                                num_params=setup.phi0.size, name=setup.problem.name)
    return fz.uncertainty(result, problem, sigma=setup.loss.sigma, step=step, rng=seed,
                          evaluator=evaluator, warn=False)


def field_rel_err(phi, phi_true):
    return float(np.linalg.norm(phi - phi_true) / np.linalg.norm(phi_true))


# -- FG2U-ZO and the peers -----------------------------------------------------------------
def calibrate_gauss_newton(setup, *, budget, num_directions=None, mode="lean", radius=1.0,
                           step=1e-3, rng=0, evaluator=None, backend=None, n_jobs=None,
                           callback=None):
    """The Gauss-Newton stepper with at most ``budget`` solves; returns the OptimizeResult.

    ``num_directions`` directions per group (default N: the whole Jacobian in the first
    group), ``mode`` once they span all N, initial trust radius ``radius`` in log k.
    """
    N = setup.phi0.size
    b = min(num_directions or N, N)
    options = {"num_directions": b, "mode": mode, "radius": radius}
    # Never start an iteration that could overrun the budget (the final value included).
    return fz.minimize(setup.problem, setup.phi0,
                       fz.FG2UZO(num_directions=b, scheme="forward", step=step),
                       optimizer="gauss-newton", optimizer_options=options, steps=budget,
                       max_nfev=budget - (b + 1) - 1, bounds=BOUNDS, rng=rng,
                       evaluator=evaluator, backend=backend, n_jobs=n_jobs,
                       callback=callback, progress=False)


def calibrate(setup, *, steps, num_directions=4, lr=0.05, step=1e-3, rng=0, evaluator=None,
              backend=None, n_jobs=None, callback=None):
    """First-order FG2U-ZO (Adam on ``num_directions`` orthogonal directions per step, a
    linearly decaying learning rate); returns the OptimizeResult."""
    estimator = fz.FG2UZO(num_directions=num_directions, scheme="forward", step=step,
                          directions="orthogonal")
    return fz.minimize(setup.problem, setup.phi0, estimator, optimizer="adam",
                       optimizer_options={"betas": (0.5, 0.9)}, lr=lr, steps=steps,
                       schedule="linear", bounds=BOUNDS, rng=rng, evaluator=evaluator,
                       backend=backend, n_jobs=n_jobs, callback=callback, progress=False)


def _history_per_solve(res):
    """Best F so far after each solve of a run: every solve of a step's group gets the
    value known once the group has finished (the final value solve included)."""
    out, best = [], np.inf
    for record in res.history:
        out += [best] * (record.nfev - 1)
        best = min(best, record.value)
        out.append(best)
    extra = res.nfev - len(out)
    out += [best] * max(extra - 1, 0) + ([min(best, res.value)] if extra > 0 else [])
    return np.asarray(out)


def calls_to(history_f, level):
    """Solves until the best F so far is <= level (None: never)."""
    hit = np.flatnonzero(np.asarray(history_f) <= level)
    return int(hit[0]) + 1 if hit.size else None


def objective_functions(setup, evaluator):
    """``f(x)``, ``batch(xs)`` and ``residuals(x)`` of the peers, solving on ``evaluator``."""
    solver, loss = setup.solver, setup.loss

    def batch(xs):
        out = [np.nan] * len(xs)

        def keep(k, theta):
            out[k] = loss.value(theta, xs[k])

        evaluator.map(solver, list(xs), keep, expected_shape=(144,))
        return out

    def f(x):
        theta, _ = evaluator.solve(solver, x)
        return loss.value(theta, x)

    def residuals(x):
        theta, _ = evaluator.solve(solver, x)
        return loss.residuals(theta, x)

    return f, batch, residuals


def run_peers(setup, names, budget, evaluator, seed=0):
    """Each named peer at ``budget`` solves; returns {name: PeerResult}."""
    f, batch, residuals = objective_functions(setup, evaluator)
    out = {}
    for name in names:
        if name == "cma":
            out[name] = _peers.run_cma(f, setup.phi0, PEER_SIGMA0, budget, seed,
                                       bounds=BOUNDS, batch=batch)
        elif name == "tpe":
            out[name] = _peers.run_optuna_tpe(f, setup.phi0, PEER_SIGMA0, budget, seed,
                                              bounds=BOUNDS, batch=batch)
        elif name == "dfols":
            out[name] = _peers.run_dfols(residuals, setup.phi0, PEER_SIGMA0, budget, seed,
                                         bounds=BOUNDS)
        else:
            raise ValueError(f"unknown peer {name!r}; choose from {PEERS}")
    return out


def plot_fields(path, setup, fields):
    """True vs recovered log k, one panel each, on a common colour scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("truth", setup.phi_true)] + list(fields.items())
    vmax = max(float(np.abs(p).max()) for _, p in panels)
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels) + 0.8, 2.9),
                             squeeze=False)
    for ax, (title, phi) in zip(axes[0], panels):
        im = ax.imshow(phi.reshape(setup.K, setup.K), origin="lower", extent=(0, 1, 0, 1),
                       cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        err = "" if title == "truth" else f"\nerr {field_rel_err(phi, setup.phi_true):.2f}"
        ax.set_title(f"{title}{err}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="log k")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# -- the command ---------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="K = 4, mesh 16, a budget of 150 solves per method")
    p.add_argument("--K", type=int, default=None, help="patches per side (default 8; quick 4)")
    p.add_argument("--mesh", type=int, default=None, help="cells per side (default 8 K; quick 16)")
    p.add_argument("--field", choices=("smooth", "blocky"), default="smooth")
    p.add_argument("--noise", type=float, default=0.01, help="relative noise (default 0.01)")
    p.add_argument("--alpha", type=float, default=0.1, help="smoothness weight (default 0.1)")
    p.add_argument("--budget", type=int, default=None,
                   help="solves per method (default 400; quick 150)")
    p.add_argument("--optimizer", choices=("gauss-newton", "adam"), default="gauss-newton")
    p.add_argument("--directions", type=int, default=None,
                   help="directions per group b (default: N with gauss-newton, 4 with adam)")
    p.add_argument("--mode", choices=("lean", "refresh"), default="lean",
                   help="gauss-newton once the directions span all N (default lean)")
    p.add_argument("--radius", type=float, default=1.0,
                   help="initial trust radius in log k (gauss-newton)")
    p.add_argument("--lr", type=float, default=0.05, help="Adam learning rate in log k")
    p.add_argument("--step", type=float, default=1e-3, help="finite-difference step in log k")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma-separated subset of {','.join(PEERS)}, or 'none'")
    p.add_argument("--backend", choices=("loky", "dask", "sequential", "threading"),
                   default=None, help="default loky (dask with --scheduler)")
    p.add_argument("--n-jobs", type=int, default=2)
    p.add_argument("--scheduler", default=None, help="tcp://host:port of a dask scheduler")
    p.add_argument("--plot", type=pathlib.Path, default=None, help="PNG of true vs recovered")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.K = args.K or (4 if args.quick else 8)
    args.mesh = args.mesh or (16 if args.quick else 8 * args.K)
    args.budget = args.budget or (150 if args.quick else 400)
    if args.mesh % args.K:
        p.error(f"--mesh must be a multiple of --K={args.K}, got {args.mesh}")
    peers = [] if args.peers.strip().lower() == "none" else [
        s.strip().lower() for s in args.peers.split(",") if s.strip()]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:
        p.error(f"--peers: unknown {unknown}; choose from {','.join(PEERS)}")
    args.peers = peers
    if args.scheduler and args.backend not in (None, "dask"):
        p.error("--scheduler needs --backend dask (or no --backend)")
    args.backend = args.backend or ("dask" if args.scheduler else "loky")
    if shutil.which("FreeFem++") is None:
        p.error("FreeFem++ is not on PATH: apt-get install freefem++")
    return args


def make_evaluator(args):
    if args.backend == "dask":
        return fz.Evaluator("dask", None if args.scheduler else args.n_jobs,
                            scheduler_address=args.scheduler)
    return fz.Evaluator(args.backend, args.n_jobs)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    setup = build(K=args.K, mesh=args.mesh, field=args.field, noise=args.noise,
                  alpha=args.alpha, seed=args.seed)
    loss, solver = setup.loss, setup.solver
    J0 = loss.J(solver(setup.phi0))
    J_truth = loss.J(solver(setup.phi_true))  # the floor: model error + noise

    rows = {}
    with make_evaluator(args) as ev:
        ev.start()
        t = time.perf_counter()
        if args.optimizer == "gauss-newton":
            res = calibrate_gauss_newton(setup, budget=args.budget,
                                         num_directions=args.directions, mode=args.mode,
                                         radius=args.radius, step=args.step, rng=args.seed,
                                         evaluator=ev)
        else:
            b = args.directions or 4
            res = calibrate(setup, steps=max(1, (args.budget - 1) // (b + 1)),
                            num_directions=b, lr=args.lr, step=args.step, rng=args.seed,
                            evaluator=ev)
        rows["FG2U-ZO"] = (res.phi, res.value, res.nfev, time.perf_counter() - t)
        peer_results = run_peers(setup, args.peers, res.nfev, ev, seed=args.seed)
        # The budgets above do not include these solves (they only report the result).
        unc = field_intervals(setup, res, step=args.step, evaluator=ev, seed=args.seed)
    # Best F so far after each solve (a group's values count once it has finished).
    histories = {"FG2U-ZO": _history_per_solve(res)}
    for name, pr in peer_results.items():
        rows[PEER_NAMES[name]] = (pr.x_best, pr.f_best, pr.nfev, pr.wall_time)
        histories[PEER_NAMES[name]] = np.asarray(pr.history_f)
    F0 = loss.value(solver(setup.phi0), setup.phi0)
    F_best = min(min(h) for h in histories.values() if len(h))
    level = F_best + 0.01 * (F0 - F_best)
    table = {}
    for name, (phi, F, nfev, seconds) in rows.items():
        table[name] = {"F": float(F), "misfit_ratio": loss.J(solver(phi)) / J0,
                       "field_rel_err": field_rel_err(phi, setup.phi_true), "nfev": int(nfev),
                       "calls_to_target": calls_to(histories[name], level),
                       "seconds": seconds}
    wall = time.perf_counter() - start

    # For an existing dask cluster the Evaluator's n_jobs is not the cluster's size.
    where = f"scheduler {args.scheduler}" if args.scheduler else f"n_jobs {ev.n_jobs}"
    method = (f"gauss-newton ({args.mode}, b = {args.directions or args.K ** 2})"
              if args.optimizer == "gauss-newton" else f"adam (b = {args.directions or 4})")
    print(f"FreeFem++ diffusion, K = {args.K} ({args.K ** 2} unknowns), mesh {args.mesh}, "
          f"{args.field} field, noise {args.noise:g}, alpha {args.alpha:g}; FG2U-ZO "
          f"{method}, budget {args.budget} solves; backend {ev.backend} ({where}); "
          f"{wall:.1f} s")
    print(f"start: J = {J0:.4g}; truth: J = {J_truth:.4g} (misfit ratio "
          f"{J_truth / J0:.2e}), field error 1 at the start; target F <= {level:.5g}")
    print(f"{'method':<12} {'F final':>10} {'misfit ratio':>13} {'field rel err':>14} "
          f"{'solves':>7} {'to target':>10} {'seconds':>8}")
    for name, r in table.items():
        to = "-" if r["calls_to_target"] is None else str(r["calls_to_target"])
        print(f"{name:<12} {r['F']:>10.4g} {r['misfit_ratio']:>13.3e} "
              f"{r['field_rel_err']:>14.3f} {r['nfev']:>7d} {to:>10} {r['seconds']:>8.1f}")
    inside = (unc.interval[:, 0] <= setup.phi_true) & (setup.phi_true <= unc.interval[:, 1])
    half = 0.5 * (unc.interval[:, 1] - unc.interval[:, 0])
    worst = int(np.argmax(half))
    print(f"FG2U-ZO's {100 * unc.confidence:g}% intervals of log k (known noise, smoothness "
          f"prior; {unc.nfev} more solves): the true value inside for {int(inside.sum())} of "
          f"{inside.size} patches; half-width median {np.median(half):.3f}, largest "
          f"{half[worst]:.3f} (patch {worst}); condition number {unc.condition_number:.3g}")
    if args.plot is not None:
        plot_fields(args.plot, setup, {name: rows[name][0] for name in rows})
        print(f"wrote {args.plot}")
    fg = table["FG2U-ZO"]
    peers = {PEER_NAMES[n]: table[PEER_NAMES[n]] for n in args.peers}
    summary = {
        "mode": "quick" if args.quick else "full",
        "optimizer": args.optimizer,
        "field_rel_err": round(fg["field_rel_err"], 4),
        "misfit_ratio": float(f"{fg['misfit_ratio']:.4g}"),
        "nfev": fg["nfev"],
        "calls_to_target": fg["calls_to_target"],
        "final_value": float(f"{fg['F']:.6g}"),
        "peer_field_rel_err": {k: round(v["field_rel_err"], 4) for k, v in peers.items()},
        "peer_misfit_ratio": {k: float(f"{v['misfit_ratio']:.4g}") for k, v in peers.items()},
        "peer_nfev": {k: v["nfev"] for k, v in peers.items()},
        "peer_calls_to_target": {k: v["calls_to_target"] for k, v in peers.items()},
        "target_value": float(f"{level:.6g}"),
        "truth_misfit_ratio": float(f"{J_truth / J0:.4g}"),
        "K": args.K, "mesh": args.mesh, "field": args.field, "noise": args.noise,
        "alpha": args.alpha, "budget": args.budget, "directions": args.directions,
        "backend": ev.backend, "n_jobs": None if args.scheduler else ev.n_jobs,
        "scheduler": args.scheduler, "wall_s": round(wall, 1),
        "interval_coverage": round(float(inside.mean()), 4),
        "interval_half_width_median": round(float(np.median(half)), 4),
        "uncertainty_nfev": unc.nfev,
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
    sys.exit(0)
