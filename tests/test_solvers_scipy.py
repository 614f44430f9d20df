"""Tests of the scipy adapters: SolveIVP, ScipyMinimize, SparseLinear."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse as sp

from _parallel_checks import assert_dask_matches_serial, assert_loky_matches_serial
from fg2u_zo.errors import FG2UTypeError, FG2UValueError, FG2UWarning, InnerSolverError
from solvers import ScipyMinimize, SolveIVP, SparseLinear

T_EVAL = np.linspace(0.1, 2.0, 5)


# Module-level problem definitions: the solvers must pickle by reference.

def decay(t, y, p):
    return -p[0] * y


def oscillator(t, y, p):
    return np.array([y[1], -p[0] ** 2 * y[0]])


def blow_up(t, y, p):
    return p[0] * y ** 2


def raising_rhs(t, y, p):
    raise ZeroDivisionError("boom in rhs")


A_QUAD = np.array([[3.0, 1.0, 0.0], [1.0, 2.0, 0.5], [0.0, 0.5, 1.5]])
B_QUAD = np.array([[1.0, 0.0], [2.0, -1.0], [0.0, 3.0]])


def quadratic(theta, phi):
    return 0.5 * theta @ A_QUAD @ theta - theta @ (B_QUAD @ phi)


def quadratic_grad(theta, phi):
    return A_QUAD @ theta - B_QUAD @ phi


class CountingQuadratic:
    """The quadratic objective counting its calls (in this process only)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, theta, phi):
        self.calls += 1
        return quadratic(theta, phi)


def rosenbrock(theta, phi):
    return (phi[0] - theta[0]) ** 2 + 100.0 * (theta[1] - theta[0] ** 2) ** 2


def laplacian_1d(phi, n=50):
    """phi[0] * tridiag(-1, 2, -1) + diag(phi[1] + x): symmetric positive definite."""
    main = 2.0 * phi[0] + phi[1] + np.linspace(0.0, 1.0, n)
    off = -phi[0] * np.ones(n - 1)
    return sp.diags([off, main, off], [-1, 0, 1], format="csr")


def nonsymmetric(phi, n=50):
    return laplacian_1d(phi, n) + sp.diags([0.3 * phi[0] * np.ones(n - 1)], [1])


def singular(phi, n=5):
    return sp.csr_matrix((n, n))


B_LIN = np.sin(np.arange(50.0))


# -- SolveIVP ----------------------------------------------------------------------------

def test_solve_ivp_exponential_decay():
    solver = SolveIVP(decay, y0=[1.0], t_span=(0.0, 2.0), t_eval=T_EVAL)
    theta = solver(np.array([1.3]))
    assert theta.dtype == np.float64 and theta.shape == (5,)
    np.testing.assert_allclose(theta, np.exp(-1.3 * T_EVAL), rtol=1e-9)


def test_solve_ivp_time_major_order_and_learned_initial_state():
    solver = SolveIVP(oscillator, y0=[1.0, 0.0], t_span=(0.0, 2.0), t_eval=T_EVAL)
    w = 2.0
    theta = solver(np.array([w])).reshape(5, 2)  # one row per time
    np.testing.assert_allclose(theta[:, 0], np.cos(w * T_EVAL), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(theta[:, 1], -w * np.sin(w * T_EVAL), rtol=1e-8, atol=1e-10)

    learned = SolveIVP(decay, y0=[1.0], t_span=(0.0, 2.0), t_eval=T_EVAL, learn_y0=True)
    np.testing.assert_allclose(learned(np.array([0.5, 3.0])), 3.0 * np.exp(-0.5 * T_EVAL),
                               rtol=1e-9)
    with pytest.raises(FG2UValueError, match="learn_y0"):
        SolveIVP(oscillator, y0=[1.0, 0.0], t_span=(0, 1), t_eval=[1.0],
                 learn_y0=True)(np.array([1.0]))


def test_solve_ivp_tight_tolerance_makes_finite_differences_accurate():
    exact = -T_EVAL * np.exp(-1.3 * T_EVAL)  # d/dphi exp(-phi t)

    def fd_error(solver, h=1e-4):
        d = (solver(np.array([1.3 + h])) - solver(np.array([1.3 - h]))) / (2 * h)
        return np.linalg.norm(d - exact) / np.linalg.norm(exact)

    tight = fd_error(SolveIVP(decay, [1.0], (0.0, 2.0), T_EVAL))
    loose = fd_error(SolveIVP(decay, [1.0], (0.0, 2.0), T_EVAL, rtol=1e-3, atol=1e-6))
    # Measured: 2.8e-9 with the defaults (rtol=1e-10), 3.5e-3 with rtol=1e-3.
    assert tight < 1e-7
    assert loose > 100 * tight


def test_solve_ivp_failures():
    solver = SolveIVP(blow_up, y0=[1.0], t_span=(0.0, 2.0), t_eval=[0.5, 1.5])
    with pytest.raises(InnerSolverError) as info:
        solver(np.array([1.0]))  # y = 1 / (1 - t) blows up at t = 1
    assert info.value.kind == "not_converged"
    assert "step size" in str(info.value)  # scipy's own message
    with pytest.raises(InnerSolverError) as info:
        SolveIVP(raising_rhs, [1.0], (0.0, 1.0), [1.0])(np.array([1.0]))
    assert info.value.kind == "exception" and "boom in rhs" in str(info.value)
    with pytest.raises(FG2UValueError, match="t_eval"):
        SolveIVP(decay, [1.0], (0.0, 1.0), [2.0])
    with pytest.raises(FG2UValueError, match="`rtol` must be > 0, got -1"):
        SolveIVP(decay, [1.0], (0.0, 1.0), [1.0], rtol=-1)


# -- ScipyMinimize -----------------------------------------------------------------------

@pytest.mark.parametrize("method, rtol", [(None, 1e-9), ("BFGS", 1e-9), ("L-BFGS-B", 1e-7)])
def test_minimize_quadratic_closed_form(method, rtol):
    # L-BFGS-B also stops on the relative decrease of g: ~sqrt(eps) in theta (measured
    # 8e-9 absolute here), BFGS on the gradient norm: 4e-11.
    solver = ScipyMinimize(quadratic, x0=np.zeros(3), method=method, jac=quadratic_grad)
    phi = np.array([0.7, -1.2])
    exact = np.linalg.solve(A_QUAD, B_QUAD @ phi)
    np.testing.assert_allclose(solver(phi), exact, rtol=rtol, atol=rtol)


def test_minimize_finite_difference_through_argmin():
    solver = ScipyMinimize(quadratic, x0=np.zeros(3), jac=quadratic_grad)
    phi, h = np.array([0.7, -1.2]), 1e-4
    e0 = np.array([1.0, 0.0])
    d = (solver(phi + h * e0) - solver(phi - h * e0)) / (2 * h)
    exact = np.linalg.solve(A_QUAD, B_QUAD @ e0)  # the argmin is linear in phi
    np.testing.assert_allclose(d, exact, rtol=1e-5, atol=1e-6)


def test_minimize_warm_start_saves_evaluations():
    objective = CountingQuadratic()
    solver = ScipyMinimize(objective, x0=np.zeros(3), method="BFGS", jac=quadratic_grad)
    phi = np.array([0.7, -1.2])
    cold = solver(phi)
    cold_calls, objective.calls = objective.calls, 0
    warm = solver(phi, warm_start=cold)
    assert objective.calls < cold_calls / 2, (objective.calls, cold_calls)
    np.testing.assert_allclose(warm, cold, atol=1e-9)
    # A warm start of the wrong shape is ignored rather than crashing the solve.
    np.testing.assert_allclose(solver(phi, warm_start=np.ones(7)), cold, atol=1e-9)


def test_minimize_without_gradient_cannot_reach_a_tight_tolerance():
    # scipy's own finite-difference gradient is accurate to ~1e-8: BFGS cannot meet
    # gtol=1e-10 and says so, rather than returning an imprecise argmin silently.
    with pytest.raises(InnerSolverError, match="precision loss") as info:
        ScipyMinimize(quadratic, x0=np.zeros(3), method="BFGS")(np.array([0.7, -1.2]))
    assert info.value.kind == "not_converged"
    loose = ScipyMinimize(quadratic, x0=np.zeros(3), method="BFGS", tol=1e-6)
    exact = np.linalg.solve(A_QUAD, B_QUAD @ np.array([0.7, -1.2]))
    np.testing.assert_allclose(loose(np.array([0.7, -1.2])), exact, atol=1e-6)


def test_minimize_non_convergence_is_reported():
    solver = ScipyMinimize(rosenbrock, x0=np.array([-1.2, 1.0]), method="BFGS",
                           options={"maxiter": 3})
    with pytest.raises(InnerSolverError) as info:
        solver(np.array([1.0]))
    assert info.value.kind == "not_converged"
    assert "Maximum number of iterations" in str(info.value)
    warn = ScipyMinimize(rosenbrock, x0=np.array([-1.2, 1.0]), method="BFGS",
                         options={"maxiter": 3}, on_failure="warn")
    with pytest.warns(FG2UWarning, match="did not converge"):
        theta = warn(np.array([1.0]))
    assert theta.shape == (2,)
    with pytest.raises(FG2UValueError, match="on_failure"):
        ScipyMinimize(rosenbrock, x0=np.zeros(2), on_failure="ignore")


# -- SparseLinear ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["spsolve", "cg", "gmres", "bicgstab"])
def test_sparse_linear_matches_dense_solve(method):
    phi = np.array([1.5, 0.2])
    A = laplacian_1d(phi).toarray()
    exact = np.linalg.solve(A, B_LIN)
    assemble = laplacian_1d if method == "cg" else nonsymmetric
    if method != "cg":
        exact = np.linalg.solve(nonsymmetric(phi).toarray(), B_LIN)
    solver = SparseLinear(assemble, B_LIN, method=method, rtol=1e-12)
    np.testing.assert_allclose(solver(phi), exact, rtol=1e-9, atol=1e-10)


def test_sparse_linear_observe_indices_and_matrix():
    phi = np.array([1.5, 0.2])
    u = np.linalg.solve(laplacian_1d(phi).toarray(), B_LIN)
    idx = np.array([3, 10, 49])
    np.testing.assert_allclose(SparseLinear(laplacian_1d, B_LIN, observe=idx)(phi), u[idx],
                               rtol=1e-12)
    P = sp.random(4, 50, density=0.2, random_state=0, format="csr")
    np.testing.assert_allclose(SparseLinear(laplacian_1d, B_LIN, observe=P)(phi), P @ u,
                               rtol=1e-12, atol=1e-14)
    with pytest.raises(FG2UValueError, match="observe"):
        SparseLinear(laplacian_1d, B_LIN, observe=np.ones((2, 2, 2)))


def test_sparse_linear_warm_start_and_non_convergence():
    phi = np.array([1.5, 0.2])
    exact = np.linalg.solve(laplacian_1d(phi).toarray(), B_LIN)
    one_step = SparseLinear(laplacian_1d, B_LIN, method="cg", maxiter=1, rtol=1e-10)
    with pytest.raises(InnerSolverError) as info:
        one_step(phi)
    assert info.value.kind == "not_converged" and "rtol" in str(info.value)
    # From the solution, one iteration is enough: the warm start is used.
    np.testing.assert_allclose(one_step(phi, warm_start=exact), exact, rtol=1e-8)


def test_sparse_linear_singular_matrix():
    with pytest.raises(InnerSolverError) as info:
        SparseLinear(singular, np.ones(5))(np.array([1.0]))
    assert info.value.kind == "nonfinite" and "singular" in str(info.value)
    with pytest.raises(InnerSolverError) as info:
        SparseLinear(laplacian_1d, np.ones(7))(np.array([1.0, 0.0]))
    assert info.value.kind == "shape"
    with pytest.raises(FG2UValueError, match="`method` must be one of"):
        SparseLinear(laplacian_1d, B_LIN, method="lu")
    with pytest.raises(FG2UTypeError, match="assemble"):
        SparseLinear("not callable", B_LIN)


# -- common contract ---------------------------------------------------------------------

def _solvers():
    return [
        (SolveIVP(oscillator, [1.0, 0.0], (0.0, 2.0), T_EVAL), np.array([1.7])),
        (ScipyMinimize(quadratic, np.zeros(3), jac=quadratic_grad), np.array([0.3, 0.4])),
        (SparseLinear(laplacian_1d, B_LIN, method="cg"), np.array([1.5, 0.2])),
    ]


def _jobs():
    return [(solver, phi + 0.1 * i) for solver, phi in _solvers() for i in range(2)]


def test_nonfinite_phi_refused():
    for solver, phi in _solvers():
        with pytest.raises(FG2UValueError, match="finite"):
            solver(np.full_like(phi, np.nan))


def test_pickle_round_trip():
    for solver, phi in _solvers():
        clone = pickle.loads(pickle.dumps(solver))
        np.testing.assert_array_equal(clone(phi), solver(phi))


@pytest.mark.timeout(120)
def test_loky_matches_serial():
    assert_loky_matches_serial(_jobs())


@pytest.mark.dask
@pytest.mark.timeout(120)
def test_dask_matches_serial(dask_client):
    assert_dask_matches_serial(dask_client, _jobs())
