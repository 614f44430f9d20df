"""Two-phase outer optimization (FG²U paper, Sec. on the two-phase paradigm) on a
black-box PDE inverse problem: same final loss, less solver time.

Inverse problem: recover a piecewise-constant conductivity ``k(x) = exp(phi_j)`` on
``N = 4`` blocks of ``(0, 1)`` from noisy observations of the solution of
``-(k u')' = 1 + x``, ``u(0) = u(1) = 0`` at 15 points. The inner solver is a
finite-difference discretization on ``grid`` interior nodes solved with a banded LU
(:class:`Diffusion1D`): its cost grows linearly with the grid, its discretization error
as ``grid**-2``. The high-fidelity solver has 20000 nodes; the low-fidelity one 200
(about 100 times fewer unknowns, and a visibly biased optimum).

Compared, with the same estimator (FG2UZO, 8 gaussian directions, central differences,
step 1e-5) and optimizer (SGD, lr 3, the paper's linear decay):

- single phase: ``steps`` steps on the high-fidelity solver;
- two phase: ``0.75 * steps`` steps on the low-fidelity solver, then ``0.25 * steps``
  on the high-fidelity one.

Both final losses are evaluated with the high-fidelity solver and compared with the
optimum found by scipy's L-BFGS-B on finite differences of the same solver. The table
gives the summed ``solver_time`` (seconds inside the inner solver, as the Evaluator
measures it), ``nfev`` (all solves) and ``high`` (solves on the high-fidelity grid).

    python -m benchmarks.two_phase [--quick]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from scipy.linalg import solve_banded

import fg2u_zo as fz

HIGH_GRID = 20000
LOW_GRID = 200
PHI_TRUE = np.log([1.0, 3.0, 0.5, 2.0])
X_OBS = np.linspace(0.05, 0.95, 15)
ALPHA = 1e-2


class Diffusion1D:
    """``theta = u(X_OBS)`` for ``-(k u')' = 1 + x`` on (0, 1), ``k = exp(phi_j)`` on
    ``len(phi)`` equal blocks, by second-order finite differences on ``grid`` interior
    nodes (flux form, ``k`` at cell midpoints) and a banded LU solve.

    A module-level class, so that process pools can pickle it.
    """

    def __init__(self, grid, x_obs=X_OBS):
        self.grid = int(grid)
        self.x_obs = np.asarray(x_obs, dtype=np.float64)

    def __repr__(self):
        return f"Diffusion1D(grid={self.grid})"

    def __call__(self, phi, *, warm_start=None, seed=None):
        phi = np.asarray(phi, dtype=np.float64)
        n = self.grid
        h = 1.0 / (n + 1)
        x = np.linspace(0.0, 1.0, n + 2)
        mid = 0.5 * (x[:-1] + x[1:])
        block = np.minimum((mid * phi.size).astype(int), phi.size - 1)
        k = np.exp(phi)[block] / h ** 2
        ab = np.zeros((3, n))
        ab[0, 1:] = -k[1:-1]
        ab[1] = k[:-1] + k[1:]
        ab[2, :-1] = -k[1:-1]
        u = solve_banded((1, 1), ab, 1.0 + x[1:-1])
        return np.interp(self.x_obs, x, np.concatenate(([0.0], u, [0.0])))


class Misfit:
    """``0.5 * mean(((theta - y) / y_scale)^2) + 0.5 * alpha * ||phi||^2``: a relative
    least-squares misfit with Tikhonov regularization, as a torch outer loss (picklable).

    The regularization is what makes the inverse problem well posed: observations of u
    constrain only integrals of 1/k, and without it the Hessian's condition number is
    about 400.
    """

    def __init__(self, y, alpha=ALPHA):
        self.y = torch.as_tensor(np.asarray(y, dtype=np.float64))
        self.scale = float(np.sqrt(np.mean(np.asarray(y) ** 2)))
        self.alpha = float(alpha)

    def __call__(self, theta, phi):
        misfit = 0.5 * (((theta - self.y) / self.scale) ** 2).mean()
        return misfit + 0.5 * self.alpha * (phi ** 2).sum()


def make_problem(noise=0.01, rng=0, high_grid=HIGH_GRID):
    """The high-fidelity problem, with data from the high-fidelity solver plus noise."""
    rng = np.random.default_rng(rng)
    high = Diffusion1D(high_grid)
    clean = high(PHI_TRUE)
    y = clean * (1.0 + noise * rng.standard_normal(clean.size))
    return fz.BilevelProblem(inner=high, outer=Misfit(y), num_params=PHI_TRUE.size,
                             name="diffusion1d")


def reference_optimum(problem, phi0=None):
    """F* by L-BFGS-B with finite differences of the high-fidelity solver, from ``phi0``
    (default zeros; a run's result makes it much faster)."""
    from scipy.optimize import minimize as sp_minimize

    def F(phi):
        return problem.outer_value(problem.inner(phi), phi)

    phi0 = np.zeros(PHI_TRUE.size) if phi0 is None else np.asarray(phi0, dtype=np.float64)
    res = sp_minimize(F, phi0, method="L-BFGS-B",
                      options={"ftol": 1e-13, "gtol": 1e-10, "maxiter": 500, "eps": 1e-7})
    return float(res.fun), res.x


def run(steps=40, num_directions=8, lr=3.0, rng=0, low_grid=LOW_GRID, high_grid=HIGH_GRID):
    """Single-phase and two-phase runs on the same problem; returns a dict of figures."""
    problem = make_problem(high_grid=high_grid)
    est = fz.FG2UZO(num_directions=num_directions, scheme="central", step=1e-5)
    phi0 = np.zeros(PHI_TRUE.size)
    common = dict(optimizer="sgd", lr=lr, schedule="linear", rng=rng, progress=False)
    single = fz.minimize(problem, phi0, est, steps=steps, **common)
    low_steps = int(round(0.75 * steps))
    two = fz.minimize(problem, phi0, phases=[
        fz.Phase(steps=low_steps, estimator=est, solver=Diffusion1D(low_grid)),
        fz.Phase(steps=steps - low_steps, estimator=est),
    ], **common)
    return {"single": single, "two_phase": two, "steps": steps, "low_steps": low_steps,
            "problem": problem}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps = 40 if args.quick else 80
    out = run(steps=steps)
    f_star, _ = reference_optimum(out["problem"], out["single"].phi)
    rows = []
    for label, res in (("single phase", out["single"]), ("two phase", out["two_phase"])):
        # Solves on the high-fidelity grid: the last phase's, plus the final evaluation.
        high = sum(r.nfev for r in res.history if r.phase == res.phase) + 1
        rows.append({"run": label, "final_loss": res.value, "gap": res.value / f_star - 1.0,
                     "solver_time": res.solver_time, "nfev": res.nfev, "high_nfev": high,
                     "wall_time": res.wall_time})
    print(f"optimum F* = {f_star:.6e} (L-BFGS-B, high fidelity, grid {HIGH_GRID})")
    print(f"{'run':14s} {'final loss':>12s} {'F/F*-1':>9s} {'solver s':>9s} {'nfev':>6s} "
          f"{'high':>6s} {'wall s':>7s}")
    for r in rows:
        print(f"{r['run']:14s} {r['final_loss']:12.6e} {r['gap']:9.2e} "
              f"{r['solver_time']:9.3f} {r['nfev']:6d} {r['high_nfev']:6d} "
              f"{r['wall_time']:7.3f}")
    summary = {"benchmark": "two_phase", "steps": steps, "low_steps": out["low_steps"],
               "f_star": f_star, "high_grid": HIGH_GRID, "low_grid": LOW_GRID}
    for r in rows:
        key = "single" if r["run"] == "single phase" else "two_phase"
        for k in ("final_loss", "gap", "solver_time", "nfev", "high_nfev"):
            summary[f"{key}_{k}"] = r[k]
    summary["solver_time_ratio"] = rows[1]["solver_time"] / rows[0]["solver_time"]
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
