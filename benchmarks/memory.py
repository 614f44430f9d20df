"""Peak memory of the exact torch estimators against the unroll depth T.

The claim under test (FG²U paper, Sec. 3): forward gradient unrolling keeps a constant
amount of state however many inner steps are unrolled, while reverse-mode unrolling
(RGU) stores every step's activations and grows linearly in T; truncated unrolling
(TRGU, last K steps) is flat too, at the price of a bias.

Problem: ridge regression with per-feature log-penalties, the inner solver
:class:`solvers.TorchUnrolled` (plain SGD, float64) on
``g(theta, phi) = ||X theta - y||^2 / (2 n) + sum_j exp(phi_j) theta_j^2 / 2`` with
``M = N = --size`` parameters (default 10^4, ``n = 32`` samples), outer loss the
validation mean squared error. At this size the per-step state (a few vectors of M
float64) dominates everything else a case allocates.

Measurement: every (estimator, T) case runs in a fresh ``python`` subprocess, which
first runs the same estimator once with T = 2 (so torch's lazily loaded code and
caches are resident), then returns freed heap pages to the OS (``malloc_trim``),
resets the kernel's peak-RSS counter (``/proc/self/clear_refs``, value 5) and reads
the resident set ``VmRSS``; after the measured estimate it reads the peak ``VmHWM``.
Reported: ``VmHWM - VmRSS`` in MB, the resident memory the estimate added at its
peak. CPU tensors live in ``malloc``'d memory, so the RSS sees them (tracemalloc would
not); the child runs with glibc's ``MALLOC_MMAP_THRESHOLD_=131072`` so that every
tensor above 128 KiB is its own mapping, returned to the OS when freed, and the RSS
follows the live tensors instead of the heap's fragmentation (with glibc's default
adaptive threshold, freed blocks are recycled through the heap and FG2U's flat
~11 MB reads as 21-26 MB, drifting with T). Where ``clear_refs`` is not writable the
child falls back to ``ru_maxrss`` after minus before (warm-up transients can then
hide a small peak).

    python -m benchmarks.memory [--quick] [--size M] [--directions b] [--backprop-steps K]

Full: T in {10, 100, 1000, 5000} for FG2U (b = 16 directions, vmapped at once), RGU
and TRGU (K = 10); RGU at T = 5000 needs about 2 GB. ``--quick``: T in {10, 500},
same estimators and sizes (under 2 minutes), ``rgu_over_fg2u`` then taken at T = 500.
Prints a table, then one JSON line with ``fg2u_growth`` (FG2U peak at the largest T /
peak at T = 10; target <= 1.2) and ``rgu_over_fg2u`` (RGU peak / FG2U peak at the
largest T; target >= 10).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from fg2u_zo.testing import can_reset_peak, peak_memory_mb

FULL_T = (10, 100, 1000, 5000)
QUICK_T = (10, 500)
ESTIMATORS = ("FG2U", "RGU", "TRGU")
TARGET_FG2U_GROWTH = 1.2
TARGET_RGU_OVER_FG2U = 10.0
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
#: glibc setting for the children (see the module docstring).
MMAP_THRESHOLD = 128 * 1024


# -- the problem (module level: the children rebuild it from a seed) ---------------------
class RidgeLoss:
    """``g(theta, phi) = ||X theta - y||^2 / (2 n) + sum_j exp(phi_j) theta_j^2 / 2``."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __call__(self, theta, phi):
        r = self.X @ theta - self.y
        return 0.5 * (r * r).mean() + 0.5 * (phi.exp() * theta * theta).sum()


class ValidationMSE:
    """Outer loss ``||X_val theta - y_val||^2 / (2 n_val)``."""

    def __init__(self, X, y):
        self.X, self.y = X, y

    def __call__(self, theta, phi):
        r = self.X @ theta - self.y
        return 0.5 * (r * r).mean()


def build_problem(size, steps, *, samples=32, seed=0):
    """The benchmark's :class:`fg2u_zo.BilevelProblem` with ``M = N = size``."""
    import torch

    import fg2u_zo as fz
    from solvers import TorchUnrolled

    rng = np.random.default_rng(seed)
    w = rng.standard_normal(size)
    # Rows of unit expected norm keep the Hessian's spectrum in (exp(phi), exp(phi) + 2)
    # whatever the size, so lr = 0.5 contracts.
    X = rng.standard_normal((2 * samples, size)) / np.sqrt(size)
    y = X @ w + 0.1 * rng.standard_normal(2 * samples)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    inner = TorchUnrolled(RidgeLoss(Xt[:samples], yt[:samples]), theta0=np.zeros(size),
                          steps=steps, optimizer="sgd", lr=0.5)
    return fz.BilevelProblem(inner=inner, outer=ValidationMSE(Xt[samples:], yt[samples:]),
                             num_params=size, name="ridge-unrolled")


def make_estimator(name, *, directions=16, backprop_steps=10):
    import fg2u_zo as fz

    if name == "FG2U":
        return fz.FG2U(num_directions=directions)
    if name == "RGU":
        return fz.RGU()
    if name == "TRGU":
        return fz.TRGU(backprop_steps=backprop_steps)
    raise ValueError(f"unknown estimator {name!r}; choose from {', '.join(ESTIMATORS)}")


# -- measuring in the child -----------------------------------------------------------------
def _child(args, cases):
    import torch

    torch.set_num_threads(1)
    if len(cases) > 1 and not can_reset_peak():
        raise SystemExit("several cases in one child need /proc/self/clear_refs; "
                         "run one case per child")
    phi = np.full(args.size, -1.0)
    estimators = {}
    for name, _ in cases:
        if name not in estimators:
            estimators[name] = make_estimator(name, directions=args.directions,
                                              backprop_steps=args.backprop_steps)
            # Warm-up on the same code path with T = 2: loads torch's lazy kernels.
            estimators[name].estimate(build_problem(args.size, 2, seed=args.seed), phi, rng=0)
    for name, T in cases:
        problem = build_problem(args.size, T, seed=args.seed)
        start = time.perf_counter()
        result, peak, method = peak_memory_mb(
            lambda est=estimators[name], problem=problem: est.estimate(problem, phi, rng=0))
        seconds = time.perf_counter() - start
        del problem
        print(json.dumps({"estimator": name, "T": T, "peak_mb": peak, "seconds": seconds,
                          "method": method, "value": result.value}), flush=True)


def run_cases(cases, *, size=10_000, directions=16, backprop_steps=10, seed=0, timeout=600):
    """Measure ``cases`` (pairs ``(estimator, T)``) in order in ONE fresh subprocess.

    Needs :func:`can_reset_peak` for more than one case. Returns the child's records
    (dicts with ``estimator``, ``T``, ``peak_mb``, ``seconds``, ``method``).
    """
    env = dict(os.environ)
    for var in _THREAD_VARS:
        env[var] = "1"
    env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "benchmarks.memory", "--size", str(size),
           "--directions", str(directions), "--backprop-steps", str(backprop_steps),
           "--seed", str(seed), "--child", *[f"{name}:{T}" for name, T in cases]]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"memory cases {cases} failed (exit {proc.returncode}):\n"
                           + proc.stderr[-2000:])
    return [json.loads(line) for line in proc.stdout.strip().splitlines()[-len(cases):]]


def run_case(estimator, T, **kwargs):
    """Measure one case in a fresh subprocess; returns the child's record (a dict)."""
    return run_cases([(estimator, T)], **kwargs)[0]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"T in {QUICK_T} instead of {FULL_T}")
    parser.add_argument("--T", type=int, nargs="+", help="unroll depths (overrides the modes)")
    parser.add_argument("--size", type=int, default=10_000, help="M = N (default 10^4)")
    parser.add_argument("--directions", type=int, default=16, help="FG2U directions b")
    parser.add_argument("--backprop-steps", type=int, default=10, help="TRGU's K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", nargs="+", metavar="ESTIMATOR:T", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        cases = [(spec.split(":")[0], int(spec.split(":")[1])) for spec in args.child]
        _child(args, cases)
        return 0

    depths = tuple(args.T) if args.T else (QUICK_T if args.quick else FULL_T)
    wall = time.perf_counter()
    rows = {}
    print(f"peak memory above the pre-estimate RSS, MB (M = N = {args.size}, SGD, float64; "
          f"FG2U b = {args.directions}, TRGU K = {args.backprop_steps}); "
          "one fresh process per case")
    print(f"{'T':>6} " + " ".join(f"{name:>10} {'s':>6}" for name in ESTIMATORS))
    method = None
    for T in depths:
        cells = []
        for name in ESTIMATORS:
            rec = run_case(name, T, size=args.size, directions=args.directions,
                           backprop_steps=args.backprop_steps, seed=args.seed)
            rows[name, T] = rec
            method = rec["method"]
            cells.append(f"{rec['peak_mb']:>10.1f} {rec['seconds']:>6.2f}")
        print(f"{T:>6} " + " ".join(cells), flush=True)
    lo, hi = min(depths), max(depths)
    fg2u_growth = rows["FG2U", hi]["peak_mb"] / rows["FG2U", lo]["peak_mb"]
    rgu_over_fg2u = rows["RGU", hi]["peak_mb"] / rows["FG2U", hi]["peak_mb"]
    trgu_growth = rows["TRGU", hi]["peak_mb"] / rows["TRGU", lo]["peak_mb"]
    print(f"FG2U growth T={lo}->{hi}: {fg2u_growth:.3f} (target <= {TARGET_FG2U_GROWTH}); "
          f"RGU / FG2U at T={hi}: {rgu_over_fg2u:.1f} (target >= {TARGET_RGU_OVER_FG2U}); "
          f"measured with {method}")
    print(json.dumps({
        "benchmark": "memory", "mode": "quick" if args.quick else "full",
        "T": list(depths), "size": args.size, "directions": args.directions,
        "backprop_steps": args.backprop_steps, "method": method,
        "peak_mb": {name: [round(rows[name, T]["peak_mb"], 2) for T in depths]
                    for name in ESTIMATORS},
        "fg2u_growth": round(fg2u_growth, 4), "rgu_over_fg2u": round(rgu_over_fg2u, 2),
        "trgu_growth": round(trgu_growth, 4),
        "fg2u_growth_ok": fg2u_growth <= TARGET_FG2U_GROWTH,
        "rgu_over_fg2u_ok": rgu_over_fg2u >= TARGET_RGU_OVER_FG2U,
        "wall_s": round(time.perf_counter() - wall, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
