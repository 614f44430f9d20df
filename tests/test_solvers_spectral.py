"""Tests of the Fourier pseudo-spectral simulators (solvers/spectral.py) and of the
loader of Raissi-layout .mat files (solvers/_mat.py).

Each accuracy bound is about 2x the value measured when the test was written (stated next
to it), so a regression of the scheme, the dealiasing or the interpolation makes it fail.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from fg2u_zo.errors import FG2UError, FG2UValueError, InnerSolverError
from solvers._mat import load_raissi_mat
from solvers.spectral import AllenCahn, Burgers, KdV

ROOT = Path(__file__).resolve().parents[1]
# Raissi's Burgers data, as shipped with the examples.
BURGERS_MAT = ROOT / "examples" / "data" / "burgers.mat"
NU = 0.01 / math.pi


@pytest.fixture(scope="module")
def burgers_data():
    return load_raissi_mat(BURGERS_MAT)


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def _noise(solver, phi, index, rel=1e-9, points=9):
    """Moré & Wild (2011) noise estimate from 4th differences of ``points`` values
    spaced ``rel * phi[index]``, relative to the RMS of the output."""
    h = rel * abs(phi[index])
    values = []
    for j in range(points):
        p = np.array(phi, dtype=float)
        p[index] += j * h
        values.append(solver(p))
    values = np.array(values)
    d4 = np.diff(values, n=4, axis=0)
    gamma = math.factorial(4) ** 2 / math.factorial(8)
    return math.sqrt(gamma * np.mean(d4**2)) / math.sqrt(np.mean(values[0] ** 2))


# --------------------------------------------------------------------------- _mat

def test_load_burgers_mat_orientation(burgers_data):
    x, t, u = burgers_data
    assert x.shape == (256,) and t.shape == (100,) and u.shape == (100, 256)
    assert x[0] == -1.0 and x[-1] == 1.0          # both ends of the period are stored
    assert t[0] == 0.0 and abs(t[-1] - 0.99) < 1e-12
    # row 0 is the initial condition -sin(pi x) (measured: 1.1e-16)
    assert np.max(np.abs(u[0] + np.sin(np.pi * x))) < 1e-14


@pytest.mark.parametrize("t_key,u_key", [("t", "u"), ("tt", "uu"), ("t", "usol")])
@pytest.mark.parametrize("stored", ["(nx, nt)", "(nt, nx)"])
def test_load_synthetic_mat(tmp_path, t_key, u_key, stored):
    x = np.linspace(0, 1, 7)
    t = np.linspace(0, 2, 5)
    u = np.add.outer(10 * t, x)                  # (nt, nx), u[i, j] = 10 t_i + x_j
    path = tmp_path / "d.mat"
    scipy.io.savemat(path, {"x": x[:, None], t_key: t[None, :],
                            u_key: u.T if stored == "(nx, nt)" else u})
    x2, t2, u2 = load_raissi_mat(path)
    np.testing.assert_array_equal(x2, x)
    np.testing.assert_array_equal(t2, t)
    np.testing.assert_array_equal(u2, u)


def test_load_square_mat_is_taken_as_nx_nt(tmp_path):
    x = t = np.arange(4.0)
    u = np.add.outer(10 * t, x)                  # (nt, nx)
    scipy.io.savemat(tmp_path / "s.mat", {"x": x, "t": t, "u": u.T})
    _, _, u2 = load_raissi_mat(tmp_path / "s.mat")
    np.testing.assert_array_equal(u2, u)


def test_load_mat_errors(tmp_path):
    scipy.io.savemat(tmp_path / "a.mat", {"x": np.arange(3.0), "time": np.arange(4.0),
                                          "uu": np.zeros((3, 4))})
    with pytest.raises(FG2UValueError, match=r"time grid.*'tt', 't'.*\['time', 'uu', 'x'\]"):
        load_raissi_mat(tmp_path / "a.mat")
    scipy.io.savemat(tmp_path / "b.mat", {"x": np.arange(3.0), "t": np.arange(4.0),
                                          "u": np.zeros((3, 5))})
    with pytest.raises(FG2UValueError, match=r"\(3, 5\).*neither"):
        load_raissi_mat(tmp_path / "b.mat")
    scipy.io.savemat(tmp_path / "c.mat", {"x": np.array([0.0, 2.0, 1.0]),
                                          "t": np.arange(4.0), "u": np.zeros((3, 4))})
    with pytest.raises(FG2UValueError, match="increasing"):
        load_raissi_mat(tmp_path / "c.mat")
    with pytest.raises(FG2UValueError, match="no such file"):
        load_raissi_mat(tmp_path / "missing.mat")


# --------------------------------------------------------------------------- Burgers

def test_burgers_reproduces_raissi_data(burgers_data):
    x, t, u = burgers_data
    solver = Burgers(u[0], t, x0=x, x_out=x, learn=("nu",))
    out = solver(np.array([NU]))
    assert out.shape == u.shape and out.dtype == np.float64
    # measured 1.62e-6 (n_modes=1024, dt=2.5e-3); 256 modes would give 8.7e-3
    assert _rel(out, u) < 3.5e-6
    # the same problem from the closed-form initial condition
    closed = Burgers(lambda s: -np.sin(np.pi * s), t, x_out=x, learn=("nu",))
    assert np.max(np.abs(closed(np.array([NU])) - out)) < 1e-12


def test_burgers_agrees_with_adaptive_integrator():
    # an independent time integrator (adaptive DOP853, method of lines) on a smooth run
    t = np.linspace(0.0, 0.5, 11)
    kw = dict(n_modes=256)
    etd = Burgers(lambda x: -np.sin(np.pi * x), t, **kw)([1.0, 0.05])
    ivp = Burgers(lambda x: -np.sin(np.pi * x), t, method="DOP853", **kw)([1.0, 0.05])
    assert np.max(np.abs(etd - ivp)) < 5e-9          # measured 6.6e-10


def test_burgers_learn_order_and_fixed():
    t = np.linspace(0.0, 0.2, 5)
    u0 = lambda x: -np.sin(np.pi * x)   # noqa: E731
    both = Burgers(u0, t, n_modes=128)
    swapped = Burgers(u0, t, n_modes=128, learn=("nu", "lam"))
    only_nu = Burgers(u0, t, n_modes=128, learn="nu", fixed={"lam": 0.7})
    assert both.param_names == ("lam", "nu") and swapped.param_names == ("nu", "lam")
    ref = both([0.7, 0.02])
    np.testing.assert_array_equal(swapped([0.02, 0.7]), ref)
    np.testing.assert_array_equal(only_nu([0.02]), ref)
    assert only_nu.coefficients([0.02]) == {"lam": 0.7, "nu": 0.02}
    # deterministic: warm_start and seed do not change anything
    np.testing.assert_array_equal(both([0.7, 0.02], warm_start=ref, seed=3), ref)


# --------------------------------------------------------------------------- smoothness in phi

def test_central_differences_agree_across_steps(burgers_data):
    x, t, u = burgers_data
    solver = Burgers(u[0], t, x0=x, x_out=x, learn=("nu",))

    def central(rel):
        h = rel * NU
        return (solver([NU + h]) - solver([NU - h])) / (2 * h)

    d4, d5 = central(1e-4), central(1e-5)
    # measured agreement 1.4e-8 (7.8 significant digits); a step-size controller or a
    # loose iterative tolerance would make these differ at the 1e-3 level or worse
    assert _rel(d5, d4) < 1e-7
    assert np.linalg.norm(d4) > 0.1 * np.linalg.norm(u) / NU * 1e-3   # not trivially 0


@pytest.mark.parametrize("make,phi,index", [
    (lambda: Burgers(lambda x: -np.sin(np.pi * x), np.linspace(0, 0.99, 100)),
     [1.0, NU], 1),
    (lambda: KdV(lambda x: np.cos(np.pi * x), np.linspace(0, 0.5, 101)), [1.0, 0.0025], 1),
    (lambda: AllenCahn(lambda x: x**2 * np.cos(np.pi * x), np.linspace(0, 1, 201)),
     [1e-4, 5.0], 0),
], ids=["burgers-nu", "kdv-l2", "allen_cahn-eps"])
def test_output_noise_is_round_off(make, phi, index):
    # measured 5.5e-15 (Burgers), 4.0e-15 (KdV; 1.3e-14 over [0, 1]), 2.2e-14 (Allen-Cahn)
    assert _noise(make(), phi, index) < 1e-13


# --------------------------------------------------------------------------- KdV

def _soliton(x, t, l1, l2, kappa, x0=0.0):
    """u = A sech^2(kappa (x - c t - x0)), A = 12 l2 kappa^2 / l1, c = 4 l2 kappa^2,
    wrapped to [-1, 1) (the tails at distance 1 are below 1e-12 for kappa = 15)."""
    c = 4 * l2 * kappa**2
    xi = np.mod(x - c * t - x0 + 1.0, 2.0) - 1.0
    return 12 * l2 * kappa**2 / l1 / np.cosh(kappa * xi) ** 2


def test_kdv_soliton_travels_at_known_speed():
    l1, l2, kappa = 3.0, 0.0025, 15.0
    speed = 4 * l2 * kappa**2                    # 2.25: one period in 2 / speed
    t = np.linspace(0.0, 2.0 / speed, 9)
    x_out = np.linspace(-1.0, 1.0, 301)          # any points: Fourier interpolation
    exact = np.array([_soliton(x_out, s, l1, l2, kappa) for s in t])
    amp = exact.max()

    def error(dt):
        solver = KdV(lambda x: _soliton(x, 0.0, l1, l2, kappa), t, x_out=x_out, dt=dt)
        return np.max(np.abs(solver([l1, l2]) - exact)) / amp

    e_fine, e_coarse = error(2.5e-4), error(5e-4)
    assert e_fine < 3e-6                         # measured 1.2e-6
    assert e_coarse / e_fine > 12                # 4th order: measured ratio 25


def test_kdv_conserves_mass_and_momentum():
    solver = KdV(lambda x: np.cos(np.pi * x), np.linspace(0.0, 1.0, 201))
    u = solver([1.0, 0.0025])                    # Raissi's KdV problem
    dx = 2.0 / solver.n_modes
    mass = u.sum(axis=1) * dx
    momentum = (u**2).sum(axis=1) * dx
    assert np.max(np.abs(mass - mass[0])) < 1e-13               # measured 1.4e-16
    assert np.max(np.abs(momentum / momentum[0] - 1)) < 1.5e-8  # measured 6.2e-9
    assert np.abs(u).max() > 2.0                 # solitons did form (max |u| = 2.31)


# --------------------------------------------------------------------------- Allen-Cahn

def test_allen_cahn_without_reaction_is_the_heat_equation():
    eps = 0.01
    modes = [(1, 1.0, "sin"), (3, 0.5, "cos"), (7, 0.25, "sin")]

    def exact(x, t):
        out = 0.0
        for m, amp, kind in modes:
            f = np.sin if kind == "sin" else np.cos
            out = out + amp * np.exp(-eps * (m * np.pi) ** 2 * t) * f(m * np.pi * x)
        return out

    t = np.linspace(0.0, 2.0, 21)
    x_out = np.random.default_rng(0).uniform(-3.0, 3.0, 50)   # off-grid, several periods
    solver = AllenCahn(lambda x: exact(x, 0.0), t, x_out=x_out, n_modes=64)
    u = solver([eps, 0.0])
    expected = np.array([exact(x_out, s) for s in t])
    assert np.max(np.abs(u - expected)) < 1e-13   # linear part integrated exactly


@pytest.mark.parametrize("value", [1.0, -1.0, 0.0])
def test_allen_cahn_fixed_points(value):
    solver = AllenCahn(np.full(128, value), np.linspace(0.0, 1.0, 11), n_modes=128)
    assert np.max(np.abs(solver([1e-4, 5.0]) - value)) < 1e-13


def test_allen_cahn_energy_decreases():
    eps, a = 1e-4, 5.0
    solver = AllenCahn(lambda x: x**2 * np.cos(np.pi * x), np.linspace(0.0, 1.0, 201))
    u = solver([eps, a])
    k = np.pi * np.arange(solver.n_modes // 2 + 1)
    ux = np.fft.irfft(1j * k * np.fft.rfft(u, axis=1), solver.n_modes, axis=1)
    energy = (eps / 2 * ux**2 + a / 4 * (u**2 - 1) ** 2).sum(axis=1) * 2.0 / solver.n_modes
    assert np.all(np.diff(energy) < 0)           # Lyapunov functional
    assert energy[-1] < 0.15 * energy[0]         # measured 2.00 -> 0.224


# --------------------------------------------------------------------------- interface

def test_pickle_round_trip_and_flatten():
    t = np.linspace(0.0, 0.3, 4)
    x_out = np.linspace(-1.0, 1.0, 33)
    solver = KdV(lambda x: np.cos(np.pi * x), t, n_modes=128, x_out=x_out, flatten=True)
    out = solver([1.0, 0.0025])
    assert out.shape == (4 * 33,) == solver.output_shape
    clone = pickle.loads(pickle.dumps(solver))
    np.testing.assert_array_equal(clone([1.0, 0.0025]), out)
    assert clone.param_names == ("l1", "l2")
    grid = KdV(lambda x: np.cos(np.pi * x), t, n_modes=128, x_out=x_out)([1.0, 0.0025])
    np.testing.assert_array_equal(grid.ravel(), out)   # time-major rows


def test_u0_on_other_grids():
    f = lambda x: np.exp(np.sin(np.pi * x))   # noqa: E731  (smooth, periodic, not odd)
    t = [0.0, 0.1]
    ref = AllenCahn(f, t, n_modes=64)
    x_full = np.linspace(-1.0, 1.0, 41)          # both ends, like Raissi's grids: exact
    on_full = AllenCahn(f(x_full), t, x0=x_full, n_modes=64)
    assert np.max(np.abs(on_full([1e-3, 1.0]) - ref([1e-3, 1.0]))) < 1e-12
    x_rand = np.sort(np.random.default_rng(1).uniform(-1.0, 1.0, 400))   # spline
    on_rand = AllenCahn(f(x_rand), t, x0=x_rand, n_modes=64)
    assert np.max(np.abs(on_rand([1e-3, 1.0]) - ref([1e-3, 1.0]))) < 1e-5
    with pytest.raises(FG2UValueError, match="not periodic"):
        AllenCahn(x_full, t, x0=x_full)
    with pytest.raises(FG2UValueError, match="x0="):
        AllenCahn(np.zeros(100), t, n_modes=64)


T = np.linspace(0.0, 0.1, 3)
U0 = lambda x: -np.sin(np.pi * x)   # noqa: E731


@pytest.mark.parametrize("kwargs,name", [
    (dict(n_modes=63), "n_modes"),
    (dict(n_modes=8), "n_modes"),
    (dict(t_out=[0.0, 0.2, 0.1]), "t_out"),
    (dict(t_out=[0.0, np.nan]), "t_out"),
    (dict(domain=(1.0, -1.0)), "domain"),
    (dict(learn=("mu",)), "learn"),
    (dict(learn=()), "learn"),
    (dict(learn=("nu",), fixed={"nu": 0.1}), "fixed"),
    (dict(fixed={"lam": float("inf")}, learn=("nu",)), "fixed"),
    (dict(method="euler"), "method"),
    (dict(rtol=1e-8), "rtol"),
    (dict(method="RK45", atol=-1.0), "atol"),
    (dict(dt=0.0), "dt"),
    (dict(dealias=1.5), "dealias"),
    (dict(blowup_factor=0.5), "blowup_factor"),
    (dict(u0=np.zeros(10)), "u0"),
    (dict(x_out=[0.0, np.inf]), "x_out"),
])
def test_bad_constructor_arguments(kwargs, name):
    kwargs = {"u0": U0, "t_out": T, **kwargs}
    with pytest.raises(FG2UValueError, match=f"`{name}"):
        Burgers(kwargs.pop("u0"), kwargs.pop("t_out"), **kwargs)


def test_bad_phi():
    solver = Burgers(U0, T, n_modes=64)
    with pytest.raises(FG2UValueError, match=r"shape \(2,\).*\('lam', 'nu'\)"):
        solver([0.01])
    with pytest.raises(FG2UValueError, match="finite"):
        solver([1.0, np.nan])


# --------------------------------------------------------------------------- failures

def test_negative_viscosity_raises_not_nan(burgers_data):
    x, t, u = burgers_data
    solver = Burgers(u[0], t, x0=x, x_out=x, learn=("nu",))
    with pytest.raises(InnerSolverError) as info:
        solver([-0.1])                           # backward heat equation: ill-posed
    assert info.value.kind == "nonfinite" and "nu" in str(info.value)
    assert isinstance(info.value, FG2UError)


def test_unstable_step_raises():
    solver = KdV(lambda x: np.cos(np.pi * x), np.linspace(0.0, 0.1, 21))
    with pytest.raises(InnerSolverError, match="blew up") as info:
        solver([100.0, 0.0025])                  # nonlinear term far beyond dt's stability
    assert info.value.kind == "nonfinite"


def test_adaptive_failure_is_not_converged(monkeypatch):
    import scipy.integrate

    class Failed:
        success = False
        message = "Required step size is less than spacing between numbers."

    monkeypatch.setattr(scipy.integrate, "solve_ivp", lambda *a, **k: Failed())
    solver = Burgers(U0, T, n_modes=64, method="RK45")
    with pytest.raises(InnerSolverError) as info:
        solver([1.0, 0.01])
    assert info.value.kind == "not_converged" and "step size" in info.value.detail
    # the error survives a process boundary with its kind
    assert pickle.loads(pickle.dumps(info.value)).kind == "not_converged"
