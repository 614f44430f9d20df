"""Golden trajectories: fixed-seed estimates and runs whose exact bytes must not change.

``python -m tests._golden`` (from the repository root) records them into
``tests/data/golden/golden.npz``; ``tests/test_golden.py`` recomputes every case and
compares bit for bit. They were recorded before the package was split into
subpackages, so a restructure that changes a single rounding shows up here.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "golden", "golden.npz")
BACKENDS = ("sequential", "threading", "loky")


def estimate_cases():
    """name -> callable(backend) -> MetaGradient."""
    import fg2u_zo as fz
    from fg2u_zo.testing import RidgeHyperproblem, UnrolledQuadratic

    ridge = RidgeHyperproblem(num_features=4)
    problem = ridge.problem()
    phi = np.array([0.1, -0.3, 0.5, 0.2])
    quad = UnrolledQuadratic(num_params=3, steps=10)
    qphi = np.array([0.3, -0.2, 0.1])
    cases = {
        "fg2uzo_central_auto": lambda be: fz.FG2UZO(num_directions=6).estimate(
            problem, phi, rng=11, backend=be, n_jobs=2),
        "fg2uzo_forward_rademacher_antithetic": lambda be: fz.FG2UZO(
            num_directions=6, scheme="forward", step=1e-6, directions="rademacher",
            antithetic=True).estimate(problem, phi, rng=12, backend=be, n_jobs=2),
        "fg2uzo_orthogonal": lambda be: fz.FG2UZO(
            num_directions=5, step=1e-5, directions="orthogonal").estimate(
            problem, phi, rng=13, backend=be, n_jobs=2),
        "blackbox_es": lambda be: fz.BlackBoxES(num_directions=6, step=1e-4).estimate(
            problem, phi, rng=14, backend=be, n_jobs=2),
        "coordinate_fd": lambda be: fz.CoordinateFD(step=1e-5).estimate(
            problem, phi, rng=15, backend=be, n_jobs=2),
    }
    exact = {
        "fg2u_exact": lambda: fz.FG2U(num_directions=4).estimate(quad.problem(), qphi, rng=16),
    }
    return cases, exact


def run_cases(workdir):
    """name -> phi trajectory (steps x N) of a minimize, with a checkpoint and a resume."""
    import fg2u_zo as fz
    from fg2u_zo.testing import RidgeHyperproblem

    problem = RidgeHyperproblem(num_features=3).problem()
    out = {}
    for opt, lr in (("adam", 0.05), ("rprop", 0.05)):
        ck = os.path.join(workdir, f"{opt}.ckpt")
        first = fz.minimize(problem, np.zeros(3), fz.FG2UZO(num_directions=4), optimizer=opt,
                            lr=lr, steps=6, rng=3, checkpoint=ck, progress=False,
                            bounds=(-2, 2))
        more = fz.resume(ck, problem, steps=10, progress=False)
        out[f"run_{opt}_first"] = np.array([r.phi for r in first.history] + [first.phi])
        out[f"run_{opt}_resumed"] = np.array([r.phi for r in more.history] + [more.phi])
        out[f"run_{opt}_values"] = np.array([r.value for r in more.history])
    return out


def compute():
    cases, exact = estimate_cases()
    arrays = {}
    for name, fn in cases.items():
        for be in BACKENDS:
            g = fn(be)
            arrays[f"{name}__{be}__grad"] = g.grad
            arrays[f"{name}__{be}__stderr"] = g.stderr
            arrays[f"{name}__{be}__value"] = np.array([g.value])
    for name, fn in exact.items():
        g = fn()
        arrays[f"{name}__grad"] = g.grad
        arrays[f"{name}__value"] = np.array([g.value])
    with tempfile.TemporaryDirectory() as tmp:
        arrays.update(run_cases(tmp))
    return arrays


if __name__ == "__main__":
    arrays = compute()
    np.savez(GOLDEN, **arrays)
    print(f"recorded {len(arrays)} arrays into {GOLDEN}")
