"""Finite differences through a simulator whose outputs are rounded: the step.

A smooth inner solver (RidgeHyperproblem, UnrolledQuadratic) wrapped so that its
outputs carry a relative precision of 1e-4 ... 1e-12, two ways: ``printed`` (what a
code writing ``%.{d-1}e`` hands back: the doubles nearest to d-digit decimals) and
``rounded`` (``round(x / q) * q``: the same rounding without a short decimal form,
so only the difference table can see it). For each level and scheme, the relative
error of FG2UZO's gradient with

* ``auto``: ``step="auto"`` (noise probe, then the noise-optimal step);
* ``default``: the scale-aware default ``fg2u_zo.noise.steps.default_step``, tuned for
  outputs exact to double precision;
* ``best``: the best of a log-spaced sweep of fixed steps, in hindsight.

Directions are the full coordinate basis (b = N), so the error is the
finite-difference error alone and the directions are the same for every step.
Errors are averaged over a few base points (each with its own probe), so "best" is
the best fixed step in expectation rather than the luckiest draw of a deterministic
rounding pattern.

    python -m benchmarks.noise [--quick]

Prints a table, then one JSON line with ``auto_vs_best_ratio`` (worst case over
problems, levels, kinds and schemes of mean auto error / best error; target <= 3) and
``default_vs_best_ratio`` (likewise for the default step), plus the worst cases per
kind.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch

import fg2u_zo as fz
from fg2u_zo.noise.steps import default_step
from fg2u_zo.testing import RidgeHyperproblem, UnrolledQuadratic

DIGITS = (4, 6, 8, 10, 12)


def printed(x, digits):
    return np.array([float(f"{v:.{digits - 1}e}") for v in np.ravel(x)]).reshape(np.shape(x))


def rounded(x, digits):
    x = np.asarray(x, dtype=np.float64)
    q = 10.0 ** (np.floor(np.log10(np.abs(x))) - digits + 1)
    return np.round(x / q) * q


class Rounding:
    """``inner`` with its outputs rounded to ``digits`` significant digits (picklable)."""

    def __init__(self, inner, digits, kind):
        self.inner, self.digits, self.kind = inner, digits, kind

    def __call__(self, phi):
        fn = printed if self.kind == "printed" else rounded
        return fn(self.inner(phi), self.digits)


def problems():
    """(name, inner, outer, phi0, exact gradient function)."""
    ridge = RidgeHyperproblem(num_features=5, rng=3)
    uq = UnrolledQuadratic(num_params=5, steps=30, rng=0)
    uq_exact = fz.BilevelProblem(inner=uq, outer=uq.outer, inner_torch=uq.torch)
    return [
        ("ridge", ridge.inner, ridge.outer, np.array([0.5, -0.3, 1.0, 0.0, 2.0]),
         ridge.hypergradient),
        ("unrolled", uq, uq.outer, 0.1 * np.ones(5),
         lambda phi: fz.RGU().estimate(uq_exact, phi).grad),
    ]


def run(num_bases, num_steps, kinds):
    rows = []
    steps = np.logspace(-8, np.log10(0.3), num_steps)
    for name, inner, outer, phi0, exact in problems():
        bases = [phi0 + 0.01 * k for k in range(num_bases)]
        truths = [exact(phi) for phi in bases]
        for kind in kinds:
            for digits in DIGITS:
                problem = fz.BilevelProblem(inner=Rounding(inner, digits, kind), outer=outer)

                def mean_err(est, **kw):
                    errs = []
                    for k, (phi, truth) in enumerate(zip(bases, truths)):
                        g = est.estimate(problem, phi, rng=k, **kw)
                        errs.append(np.linalg.norm(g.grad - truth) / np.linalg.norm(truth))
                    return float(np.mean(errs)), g

                for scheme in ("forward", "central"):
                    def fixed(h):
                        return fz.FG2UZO(num_directions=phi0.size, directions="coordinate",
                                         scheme=scheme, step=h)
                    sweep = np.array([mean_err(fixed(h))[0] for h in steps])
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", fz.NoiseWarning)
                        auto, g = mean_err(fz.FG2UZO(num_directions=phi0.size,
                                                     directions="coordinate", scheme=scheme))
                    default = mean_err(fixed(default_step(phi0, scheme)))[0]
                    best = float(sweep.min())
                    rows.append({
                        "problem": name, "kind": kind, "digits": digits, "scheme": scheme,
                        "best": best, "best_step": float(steps[sweep.argmin()]),
                        "auto": auto, "auto_step": float(g.step), "auto_nfev": int(g.nfev),
                        "method": g.noise.method, "default": default,
                        "predicted": float(g.noise.relative_error(scheme)),
                    })
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 base points, 20 sweep steps, printed outputs only "
                             "(full: 4 base points, 40 steps, printed and rounded)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    if args.quick:
        rows = run(num_bases=2, num_steps=20, kinds=("printed",))
    else:
        rows = run(num_bases=4, num_steps=40, kinds=("printed", "rounded"))
    print("relative gradient error (mean over base points); FG2UZO, coordinate basis b = N")
    print(f"{'problem':>8} {'kind':>7} {'rel.prec':>8} {'scheme':>7} {'best':>8} {'@ step':>8} "
          f"{'auto':>8} {'@ step':>8} {'solves':>6} {'method':>6} {'predict':>8} "
          f"{'default':>8} {'auto/best':>9} {'dflt/best':>9}")
    for r in rows:
        print(f"{r['problem']:>8} {r['kind']:>7} {10.0 ** -r['digits']:>8.0e} {r['scheme']:>7} "
              f"{r['best']:>8.1e} {r['best_step']:>8.1e} {r['auto']:>8.1e} "
              f"{r['auto_step']:>8.1e} {r['auto_nfev']:>6d} {r['method']:>6} "
              f"{r['predicted']:>8.1e} {r['default']:>8.1e} {r['auto'] / r['best']:>9.2f} "
              f"{r['default'] / r['best']:>9.1f}")
    summary = {
        "benchmark": "noise",
        "quick": bool(args.quick),
        "auto_vs_best_ratio": max(r["auto"] / r["best"] for r in rows),
        "default_vs_best_ratio": max(r["default"] / r["best"] for r in rows),
    }
    for kind in sorted({r["kind"] for r in rows}):
        summary[f"auto_vs_best_ratio_{kind}"] = max(
            r["auto"] / r["best"] for r in rows if r["kind"] == kind)
    summary["wall_s"] = round(time.perf_counter() - start, 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
