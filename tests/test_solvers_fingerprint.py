"""Every adapter's ``fingerprint()``: JSON data, equal for the same configuration (in
another process too, and after pickling), different when what it computes may differ.

A resumed run compares the fingerprint of its solver with the one its journal was
written with, and replays journaled outputs only when they are equal: a fingerprint
that stays equal across a change of the solver replays wrong outputs; one that
differs between two identical solvers (a memory address, a random tag) never replays.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

DATA = pathlib.Path(__file__).resolve().parent / "data"
SIM = str(DATA / "sim.py")
TESTS = str(pathlib.Path(__file__).resolve().parent)
REPO = str(pathlib.Path(__file__).resolve().parents[1])


# -- the callables the adapters wrap (module level: named, with a source) ----------------

def decay(t, y, p):
    return -p[0] * y


def growth(t, y, p):
    return p[0] * y


def quadratic(theta, phi):
    return 0.5 * np.sum((theta - phi) ** 2) + 0.5 * np.sum(theta ** 2)


def quartic(theta, phi):
    return 0.25 * np.sum((theta - phi) ** 4) + 0.5 * np.sum(theta ** 2)


def diagonal(phi):
    import scipy.sparse as sp
    return sp.diags([phi[0] * np.ones(3)], [0])


def torch_ridge(theta, phi):
    return 0.5 * ((theta - phi) ** 2).sum() + 0.5 * (theta ** 2).sum()


def torch_lasso_like(theta, phi):
    return 0.5 * ((theta - phi) ** 2).sum() + 0.5 * (theta ** 4).sum()


def write_deck(phi, workdir):
    with open(os.path.join(workdir, "input.txt"), "w") as fh:
        fh.write(" ".join(map(repr, phi.tolist())))


def write_deck_rounded(phi, workdir):
    with open(os.path.join(workdir, "input.txt"), "w") as fh:
        fh.write(" ".join(f"{v:.6e}" for v in phi.tolist()))


# -- builders: base configuration, then the variants that must change the fingerprint --

def build_subprocess(root, **changes):
    from solvers import Subprocess
    mesh = pathlib.Path(root) / "mesh.txt"
    if not mesh.exists():
        mesh.write_text("0 1 2\n")
    kwargs = dict(template="{phi}", output="out.txt", files=[mesh], timeout=60)
    argv = [sys.executable, SIM, "ok"]
    if "argv" in changes:
        argv = changes.pop("argv")
    kwargs.update(changes)
    return Subprocess(argv, **kwargs)


def subprocess_variants(root):
    def edit_staged():
        solver = build_subprocess(root)
        (pathlib.Path(root) / "mesh.txt").write_text("0 1 3\n")  # after construction
        return solver

    return {
        "argv": lambda: build_subprocess(root, argv=[sys.executable, SIM, "digits6"]),
        "template": lambda: build_subprocess(root, template="{phi} 1"),
        "writer": lambda: build_subprocess(root, template=None, writer=write_deck),
        "output": lambda: build_subprocess(root, output="out.npy"),
        "env": lambda: build_subprocess(root, env={"SIM_MODE": "fast"}),
        "version": lambda: build_subprocess(root, version="2"),
        "staged file edited": edit_staged,
    }


def build_ivp(**changes):
    from solvers import SolveIVP
    kwargs = dict(rhs=decay, y0=[1.0], t_span=(0.0, 1.0), t_eval=[0.5, 1.0])
    kwargs.update(changes)
    return SolveIVP(**kwargs)


def build_minimize(**changes):
    from solvers import ScipyMinimize
    kwargs = dict(objective=quadratic, x0=np.zeros(2))
    kwargs.update(changes)
    return ScipyMinimize(**kwargs)


def build_linear(**changes):
    from solvers import SparseLinear
    kwargs = dict(assemble=diagonal, b=np.ones(3))
    kwargs.update(changes)
    return SparseLinear(**kwargs)


def build_torch(**changes):
    from solvers import TorchUnrolled
    kwargs = dict(inner_loss=torch_ridge, theta0=np.zeros(2), steps=50, lr=0.2)
    kwargs.update(changes)
    return TorchUnrolled(**kwargs)


def build_burgers(**changes):
    from solvers import Burgers
    kwargs = dict(u0=lambda x: -np.sin(np.pi * x), t_out=np.linspace(0.0, 0.2, 5),
                  n_modes=64, learn=("nu",))
    kwargs.update(changes)
    return Burgers(**kwargs)


def build_sklearn(**changes):
    from sklearn.linear_model import Ridge
    from solvers import SklearnFit
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), rng.normal(size=20)
    kwargs = dict(estimator=Ridge(fit_intercept=False, solver="cholesky"), X=X, y=y,
                  params={"alpha": ("exp", 0)})
    kwargs.update(changes)
    return SklearnFit(**kwargs)


CASES = {
    "SolveIVP": (build_ivp, {
        "rhs": lambda: build_ivp(rhs=growth),
        "y0": lambda: build_ivp(y0=[2.0]),
        "t_eval": lambda: build_ivp(t_eval=[0.5, 0.75]),
        "rtol": lambda: build_ivp(rtol=1e-8),
        "method": lambda: build_ivp(method="LSODA"),
        "options": lambda: build_ivp(max_step=0.1),
        "version": lambda: build_ivp(version="fixed sign"),
    }),
    "ScipyMinimize": (build_minimize, {
        "objective": lambda: build_minimize(objective=quartic),
        "x0": lambda: build_minimize(x0=np.ones(2)),
        "tol": lambda: build_minimize(tol=1e-8),
        "bounds": lambda: build_minimize(bounds=[(0, 1), (0, 1)]),
        "version": lambda: build_minimize(version="2"),
    }),
    "SparseLinear": (build_linear, {
        "b": lambda: build_linear(b=2 * np.ones(3)),
        "method": lambda: build_linear(method="cg"),
        "observe": lambda: build_linear(observe=[0, 2]),
        "version": lambda: build_linear(version="2"),
    }),
    "TorchUnrolled": (build_torch, {
        "inner_loss": lambda: build_torch(inner_loss=torch_lasso_like),
        "theta0": lambda: build_torch(theta0=np.ones(2)),
        "steps": lambda: build_torch(steps=51),
        "optimizer": lambda: build_torch(optimizer="adam"),
        "version": lambda: build_torch(version="2"),
    }),
    "Burgers": (build_burgers, {
        "dt": lambda: build_burgers(dt=1e-3),
        "fixed": lambda: build_burgers(fixed={"lam": 2.0}),
        "t_out": lambda: build_burgers(t_out=np.linspace(0.0, 0.3, 5)),
        "u0": lambda: build_burgers(u0=lambda x: np.sin(np.pi * x)),
        "x_out": lambda: build_burgers(x_out=np.linspace(-1, 1, 7)),
    }),
}


def as_json(solver):
    return json.loads(json.dumps(solver.fingerprint(), allow_nan=False))


def check(build, variants):
    base = as_json(build())
    assert base["adapter"].startswith("solvers.")
    assert as_json(build()) == base  # a second, identical solver
    assert as_json(pickle.loads(pickle.dumps(build()))) == base  # sent to a worker
    for name, make in variants.items():
        assert as_json(make()) != base, f"changing {name} left the fingerprint unchanged"
    return base


@pytest.mark.parametrize("name", sorted(CASES))
def test_fingerprint_equal_for_equal_solvers_and_changes_with_each_setting(name):
    build, variants = CASES[name]
    check(build, variants)


def test_subprocess_fingerprint(tmp_path):
    base = check(lambda: build_subprocess(tmp_path), subprocess_variants(tmp_path))
    assert base["argv"] == [sys.executable, SIM, "ok"] and base["template"] == "{phi}"
    assert len(base["executable_sha256"]) == 64 and base["files"][0]["name"] == "mesh.txt"
    # A writer or reader is named by module and qualified name, with its source digest:
    # fixing its code changes the fingerprint, renaming nothing.
    a = as_json(build_subprocess(tmp_path, template=None, writer=write_deck))
    b = as_json(build_subprocess(tmp_path, template=None, writer=write_deck_rounded))
    assert a["writer"]["callable"] == f"{__name__}:write_deck"
    assert a["writer"]["source_sha256"] != b["writer"]["source_sha256"]
    # A staged folder: the digest covers every file in it.
    folder = tmp_path / "tables"
    folder.mkdir()
    (folder / "a.txt").write_text("1\n")
    before = as_json(build_subprocess(tmp_path, files=[folder]))
    (folder / "b.txt").write_text("2\n")
    assert as_json(build_subprocess(tmp_path, files=[folder])) != before


def test_freefem_fingerprint_has_the_script_digest(tmp_path):
    from solvers import FreeFem
    if shutil.which("FreeFem++") is None:
        pytest.skip("FreeFem++ is not installed")
    script = tmp_path / "model.edp"
    script.write_text("// version 1\n")
    one = as_json(FreeFem(script))
    assert one["adapter"] == "solvers.FreeFem" and one["script"] == "model.edp"
    assert one == as_json(FreeFem(script))
    script.write_text("// version 2\n")
    two = as_json(FreeFem(script))
    assert two["script_sha256"] != one["script_sha256"] and two != one
    assert as_json(FreeFem(script, args=["-mesh", "8"])) != two


def test_sklearn_fingerprint():
    pytest.importorskip("sklearn")
    from sklearn.linear_model import Ridge
    rng = np.random.default_rng(1)
    check(build_sklearn, {
        "estimator params": lambda: build_sklearn(estimator=Ridge(fit_intercept=True,
                                                                  solver="cholesky")),
        "X": lambda: build_sklearn(X=rng.normal(size=(20, 3))),
        "params": lambda: build_sklearn(params={"alpha": ("exp10", 0)}),
        "sample_weight": lambda: build_sklearn(sample_weight=("sigmoid", slice(1, None))),
        "version": lambda: build_sklearn(version="2"),
    })


BUILD_IN_CHILD = """
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import test_solvers_fingerprint as t
out = {name: build().fingerprint() for name, (build, _) in sorted(t.CASES.items())}
out["Subprocess"] = t.build_subprocess(sys.argv[3]).fingerprint()
print(json.dumps(out))
"""


def test_fingerprints_are_the_same_in_another_process(tmp_path):
    # What a resumed run computes in a new process must equal what the interrupted
    # run wrote: no memory address, no random tag, no set order in it.
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", BUILD_IN_CHILD, TESTS, REPO, str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=300, check=True)
    theirs = json.loads(out.stdout)
    mine = {name: as_json(build()) for name, (build, _) in sorted(CASES.items())}
    mine["Subprocess"] = as_json(build_subprocess(tmp_path))
    assert theirs == mine


def test_version_must_be_a_string():
    from fg2u_zo.errors import FG2UTypeError
    with pytest.raises(FG2UTypeError, match="`version` must be a str"):
        build_ivp(version=2)
    assert math.isfinite(build_ivp().fingerprint()["rtol"])
