"""What the subprocess adapters cost on top of running the command by hand.

Two measurements, each with the adapter (A) and a bare ``subprocess.run`` loop (B) run
interleaved A B A B ... on the same machine, medians reported:

1. The shipped FreeFem++ diffusion model (K = 8, 64 parameters, 144 sensors), 20
   evaluations each way. A: ``solvers.diffusion_model`` (fresh working directory per
   call, parameter file written, output parsed, directory removed). B: the same
   FreeFem++ command line, with the same environment, in one fixed directory holding
   the same script: write ``phi.txt``, ``subprocess.run``, ``np.loadtxt("u.txt")``.
   ``freefem_overhead_ratio`` = median A / median B (target <= 1.10).
2. A trivial executable, ``/bin/true`` (so the difference is all overhead): A is
   ``solvers.Subprocess`` with a one-line template input and a constant reader; B is
   ``subprocess.run(["/bin/true"])``. ``subprocess_overhead_ms`` = median A - median B,
   per call.

    python -m benchmarks.adapter_overhead [--quick]

File-system costs differ between the two loops and can dominate: the adapter creates
and removes a directory per call, the bare loop rewrites ``phi.txt`` / ``u.txt`` in
place. On ext4, truncating and rewriting a file flushes its data (``auto_da_alloc``),
so the bare loop can be the slower one (ratio < 1); on tmpfs both costs vanish.

``--quick`` uses a 32 x 32 mesh instead of 64 x 64 (a shorter FreeFem++ run, so the
same absolute overhead is a *larger* fraction of it) and fewer trivial calls; the
number of FreeFem++ evaluations stays 20. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from solvers import Subprocess, diffusion_model
from solvers._freefem import format_param_file
from solvers._subprocess import THREAD_LIMIT_VARS

TARGET_RATIO = 1.10
TRIVIAL = "/bin/true"


def _constant_reader(workdir):
    return np.zeros(1)


def _child_env():
    env = dict(os.environ)
    for name in THREAD_LIMIT_VARS:
        env.setdefault(name, "1")
    return env


def _interleaved(run_a, run_b, n, warmup=2):
    for _ in range(warmup):
        run_a()
        run_b()
    ta, tb = [], []
    for _ in range(n):
        t = time.perf_counter()
        run_a()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_b()
        tb.append(time.perf_counter() - t)
    return np.array(ta), np.array(tb)


def bench_freefem(K, mesh, n, rng):
    model = diffusion_model(K=K, mesh=mesh)
    points = [rng.uniform(0.5, 2.0, K * K) for _ in range(n + 2)]
    argv = model.argv
    env = _child_env()
    bare_dir = tempfile.mkdtemp(prefix="fg2u-bench-")
    shutil.copy(model.script, bare_dir)
    outputs = {"A": [], "B": []}
    it = {"A": 0, "B": 0}

    def run_a():
        outputs["A"].append(model(points[it["A"] % len(points)]))
        it["A"] += 1

    def run_b():
        phi = points[it["B"] % len(points)]
        it["B"] += 1
        with open(os.path.join(bare_dir, "phi.txt"), "w") as fh:
            fh.write(format_param_file(phi))
        subprocess.run(argv, cwd=bare_dir, env=env, check=True, stdout=subprocess.DEVNULL)
        outputs["B"].append(np.loadtxt(os.path.join(bare_dir, "u.txt")))

    try:
        ta, tb = _interleaved(run_a, run_b, n)
    finally:
        shutil.rmtree(bare_dir, ignore_errors=True)
    # Same command, same inputs: the results must agree exactly, or we timed different work.
    for a, b in zip(outputs["A"], outputs["B"]):
        np.testing.assert_array_equal(a, b)
    return ta, tb


def bench_trivial(n):
    solver = Subprocess([TRIVIAL], template="{phi}\n", reader=_constant_reader)
    phi = np.linspace(0.0, 1.0, 64)
    return _interleaved(lambda: solver(phi), lambda: subprocess.run([TRIVIAL]), n, warmup=5)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="32 x 32 mesh and fewer trivial calls (under a minute)")
    parser.add_argument("--evals", type=int, default=20,
                        help="FreeFem++ evaluations per side (default 20, at least 20)")
    args = parser.parse_args(argv)
    n = max(20, args.evals)
    K, mesh = 8, (32 if args.quick else 64)
    n_trivial = 60 if args.quick else 200
    rng = np.random.default_rng(0)

    start = time.perf_counter()
    fa, fb = bench_freefem(K, mesh, n, rng)
    sa, sb = bench_trivial(n_trivial)
    wall = time.perf_counter() - start

    ratio = float(np.median(fa) / np.median(fb))
    overhead_ms = float((np.median(sa) - np.median(sb)) * 1e3)
    rows = [
        (f"FreeFem++ diffusion K={K} mesh={mesh} (x{n})", fa, fb),
        (f"{TRIVIAL} (x{n_trivial})", sa, sb),
    ]
    print(f"{'case':<40} {'adapter ms':>11} {'bare ms':>9} {'ratio':>7} {'diff ms':>8}")
    for name, a, b in rows:
        ma, mb = np.median(a) * 1e3, np.median(b) * 1e3
        print(f"{name:<40} {ma:>11.2f} {mb:>9.2f} {ma / mb:>7.3f} {ma - mb:>8.2f}")
    print(f"(medians of interleaved runs; total {wall:.1f} s; target ratio <= {TARGET_RATIO})")
    print(json.dumps({
        "benchmark": "adapter_overhead",
        "quick": bool(args.quick),
        "freefem_overhead_ratio": round(ratio, 4),
        "subprocess_overhead_ms": round(overhead_ms, 3),
        "freefem_adapter_ms": round(float(np.median(fa)) * 1e3, 3),
        "freefem_bare_ms": round(float(np.median(fb)) * 1e3, 3),
        "freefem_evals": n,
        "K": K,
        "mesh": mesh,
        "trivial_executable": TRIVIAL,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
