"""How close the estimators get to the exact meta-gradient, against theory.

For N in {10, 100, 1000} meta-parameters and b in {1, 4, 16, 64} directions, over
many seeds: the mean cosine between the estimate and the exact gradient for FG2UZO
(central differences through the numpy black box), FG2U (exact jvp) and BlackBoxES,
beside the theoretical expectation (exact for b = 1, first order
``sqrt(b / (b + N + 1))`` otherwise); the finite-difference
error of FG2UZO against FG2U with the same directions; and the measured mean squared
error of gaussian FG2U against ``(N + 1) ||g||^2 / b``.

    python -m benchmarks.gradient_quality [--quick]

Prints a table, then one JSON line with ``cos_zo_over_exact`` (min over cases of the
ratio of mean cosines ZO / exact), ``fd_rel_err`` (max over cases) and
``mse_theory_ratio`` (the measured / theoretical MSE farthest from 1).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from scipy.special import gammaln

import fg2u_zo as fz


class TanhLayer:
    """Smooth inner solver ``theta = tanh(A phi / sqrt(N)) + 0.1 (B phi / sqrt(N))^2``.

    The outer loss ``||theta - y||^2 / 2`` has no direct phi term, so the whole
    meta-gradient is the projected term the theory speaks of.
    """

    def __init__(self, n, m=64, rng=0):
        rng = np.random.default_rng(rng)
        self.A = rng.standard_normal((m, n)) / np.sqrt(n)
        self.B = rng.standard_normal((m, n)) / np.sqrt(n)
        self.y = rng.standard_normal(m)
        self.At, self.Bt, self.yt = map(torch.as_tensor, (self.A, self.B, self.y))

    def torch(self, phi):
        return torch.tanh(self.At @ phi) + 0.1 * (self.Bt @ phi) ** 2

    def __call__(self, phi):
        return np.tanh(self.A @ phi) + 0.1 * (self.B @ phi) ** 2

    def outer(self, theta, phi):
        return 0.5 * ((theta - self.yt) ** 2).sum()


def cosine_theory(n, b):
    """Expected cosine of the gaussian estimator with the gradient.

    b = 1: exact, ``E|u_1|`` for u uniform on the unit sphere of R^N,
    ``Gamma(N/2) / (sqrt(pi) Gamma((N+1)/2))``. b > 1: the first-order approximation
    ``E[g.g_hat] / sqrt(E|g_hat|^2 |g|^2) = sqrt(b / (b + N + 1))``.
    """
    if b == 1:
        return float(np.exp(gammaln(n / 2) - gammaln((n + 1) / 2)) / np.sqrt(np.pi))
    return float(np.sqrt(b / (b + n + 1)))


def cosine(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def run(sizes, budgets, seeds, mse_seeds):
    rows = []
    for n in sizes:
        layer = TanhLayer(n, rng=n)
        problem = fz.BilevelProblem(inner=layer, outer=layer.outer, num_params=n)
        phi = np.random.default_rng(1).standard_normal(n)
        exact = fz.RGU().estimate(problem, phi).grad
        for b in budgets:
            cos = {"FG2UZO": [], "FG2U": [], "BlackBoxES": []}
            fd_err = 0.0
            for seed in range(seeds):
                zo = fz.FG2UZO(num_directions=b, scheme="central").estimate(problem, phi, rng=seed)
                ex = fz.FG2U(num_directions=b).estimate(problem, phi, rng=seed)
                bb = fz.BlackBoxES(num_directions=b, scheme="central").estimate(
                    problem, phi, rng=seed)
                cos["FG2UZO"].append(cosine(zo.grad, exact))
                cos["FG2U"].append(cosine(ex.grad, exact))
                cos["BlackBoxES"].append(cosine(bb.grad, exact))
                fd_err = max(fd_err, np.linalg.norm(zo.grad - ex.grad) / np.linalg.norm(ex.grad))
            # The MSE needs thousands of estimates: push all their directions through
            # FG2U's forward-mode pass at once, then form each estimate as FG2U does.
            est = fz.FG2U(num_directions=b, chunk_size=4096)
            V = fz.sample_directions("gaussian", n, b * mse_seeds, rng=10_000 + b)
            _, g_theta, direct = problem.outer_parts(layer(phi), phi)
            c = est.directional_derivatives(problem, phi, V, g_theta)
            g_hat = direct + (c[:, None] * V).reshape(mse_seeds, b, n).mean(axis=1)
            sq = np.sum((g_hat - exact) ** 2, axis=1)
            theory = (n + 1) * np.dot(exact, exact) / b
            rows.append({
                "N": n, "b": b,
                "cos_theory": cosine_theory(n, b),
                **{f"cos_{k}": float(np.mean(v)) for k, v in cos.items()},
                "fd_rel_err": float(fd_err),
                "mse_ratio": float(sq.mean() / theory),
                "mse_ratio_se": float(sq.std(ddof=1) / np.sqrt(mse_seeds) / theory),
            })
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 seeds for the cosines, 2000 for the MSE (full: 50 and 10000)")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--mse-seeds", type=int, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = args.seeds or (20 if args.quick else 50)
    mse_seeds = args.mse_seeds or (2000 if args.quick else 10000)
    start = time.perf_counter()
    rows = run([10, 100, 1000], [1, 4, 16, 64], seeds, mse_seeds)
    header = (f"{'N':>5} {'b':>3} {'cos theory':>10} {'FG2UZO':>8} {'FG2U':>8} {'BlackBox':>8} "
              f"{'FD rel err':>10} {'MSE/theory':>14}")
    print(f"mean cosine to the exact gradient over {seeds} seeds; MSE over {mse_seeds} seeds")
    print(header)
    for r in rows:
        print(f"{r['N']:>5} {r['b']:>3} {r['cos_theory']:>10.3f} {r['cos_FG2UZO']:>8.3f} "
              f"{r['cos_FG2U']:>8.3f} {r['cos_BlackBoxES']:>8.3f} {r['fd_rel_err']:>10.2e} "
              f"{r['mse_ratio']:>7.3f}±{r['mse_ratio_se']:.3f}")
    worst_mse = max((r["mse_ratio"] for r in rows), key=lambda x: abs(np.log(x)))
    summary = {
        "benchmark": "gradient_quality",
        "quick": bool(args.quick),
        "seeds": seeds,
        "mse_seeds": mse_seeds,
        "cos_zo_over_exact": min(r["cos_FG2UZO"] / r["cos_FG2U"] for r in rows),
        "fd_rel_err": max(r["fd_rel_err"] for r in rows),
        "mse_theory_ratio": worst_mse,
        "wall_s": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
