"""The Gauss–Newton stepper: its trust-region subproblem, model, Broyden update, and
runs through fz.minimize (exact one-step solutions, a noisy subprocess calibration
against DFO-LS, injected failures, SIGKILL and resume)."""

import math
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.optimize
import torch

import fg2u_zo as fz
from fg2u_zo.outer.steppers.gauss_newton import GaussNewton
from fg2u_zo.outer.steppers.subspace_model import (add_difference_columns, broyden_update,
                                                   new_directions, outer_model)
from fg2u_zo.outer.steppers.trust_region import model_decrease, solve_trust_region

DATA = pathlib.Path(__file__).resolve().parent / "data"
EPS = np.finfo(np.float64).eps


# -- the trust-region subproblem ------------------------------------------------------------
def _reference_minimum(g, H, delta, starts=40, seed=0):
    """The global minimum of the model over the ball, by brute force: the unconstrained
    minimizer when it is inside, and SLSQP on the sphere ||a|| = delta from many starts
    (the minimum of a quadratic over a ball is inside or on the sphere)."""
    d = g.size
    best = 0.0
    lam = np.linalg.eigvalsh(H)
    if lam[0] > 0:
        a = np.linalg.solve(H, -g)
        if np.linalg.norm(a) <= delta:
            best = min(best, -model_decrease(g, H, a))
    rng = np.random.default_rng(seed)
    for _ in range(starts):
        x0 = rng.standard_normal(d)
        x0 *= delta / np.linalg.norm(x0)
        res = scipy.optimize.minimize(
            lambda a: g @ a + 0.5 * a @ H @ a, x0, jac=lambda a: g + H @ a, method="SLSQP",
            constraints=[{"type": "eq", "fun": lambda a: a @ a - delta ** 2,
                          "jac": lambda a: 2 * a}], options={"ftol": 1e-14, "maxiter": 500})
        if res.success:
            best = min(best, float(res.fun))
    return best


def _check_optimality(g, H, delta, r):
    """Moré–Sorensen: (H + sigma I) a = -g, H + sigma I >= 0, sigma (delta - ||a||) = 0."""
    d = g.size
    scale = max(1.0, np.abs(H).max(), np.abs(g).max())
    assert np.linalg.norm(r.step) <= delta * (1 + 1e-12)
    assert r.multiplier >= 0
    residual = (H + r.multiplier * np.eye(d)) @ r.step + g
    assert np.linalg.norm(residual) <= 1e-8 * scale * max(1.0, r.multiplier)
    assert np.linalg.eigvalsh(H + r.multiplier * np.eye(d))[0] >= -1e-9 * scale
    assert r.multiplier * (delta - np.linalg.norm(r.step)) <= 1e-9 * scale * delta


@pytest.mark.parametrize("kind", ["positive-inside", "positive-boundary", "indefinite",
                                  "negative", "singular"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_trust_region_solves_the_subproblem_globally(kind, seed):
    rng = np.random.default_rng(seed)
    d = 4
    V, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = {"positive-inside": [1.0, 2.0, 3.0, 5.0], "positive-boundary": [0.1, 0.2, 3.0, 5.0],
           "indefinite": [-2.0, -0.5, 1.0, 4.0], "negative": [-3.0, -2.0, -1.0, -0.5],
           "singular": [0.0, 0.0, 1.0, 2.0]}[kind]
    H = V @ np.diag(lam) @ V.T
    g = rng.standard_normal(d)
    delta = 0.5 if kind != "positive-boundary" else 1.0
    if kind == "positive-inside":
        delta = 10.0 * np.linalg.norm(np.linalg.solve(H, g))
    r = solve_trust_region(g, H, delta)
    _check_optimality(g, H, delta, r)
    ref = _reference_minimum(g, H, delta)
    assert -r.decrease <= ref + 1e-9 * max(1.0, abs(ref))
    assert r.decrease == pytest.approx(model_decrease(g, H, r.step), rel=1e-12, abs=1e-15)
    assert r.on_boundary == (kind != "positive-inside")


@pytest.mark.parametrize("delta", [0.3, 3.0])
def test_trust_region_hard_case(delta):
    # g has no component along the eigenvector of the most negative eigenvalue: the
    # secular equation has no root above -lam_min; the solution adds that eigenvector.
    rng = np.random.default_rng(5)
    d = 5
    V, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.array([-2.0, 0.5, 1.0, 3.0, 4.0])
    H = V @ np.diag(lam) @ V.T
    g = V[:, 1:] @ np.array([0.1, 0.2, -0.3, 0.1])
    r = solve_trust_region(g, H, delta)
    _check_optimality(g, H, delta, r)
    assert np.linalg.norm(r.step) == pytest.approx(delta, rel=1e-12)
    assert r.multiplier == pytest.approx(2.0, rel=1e-10)
    assert r.hard_case
    ref = _reference_minimum(g, H, delta)
    assert -r.decrease <= ref + 1e-10
    # The "easy" branch would give the minimum-norm step, which is strictly worse.
    pinv = -V[:, 1:] @ ((V[:, 1:].T @ g) / (lam[1:] + 2.0))
    assert -r.decrease < -model_decrease(g, H, pinv) - 1e-6


def test_trust_region_rejects_bad_input():
    with pytest.raises(ValueError, match="delta"):
        solve_trust_region(np.ones(2), np.eye(2), 0.0)
    with pytest.raises(ValueError, match="shape"):
        solve_trust_region(np.ones(2), np.eye(3), 1.0)
    with pytest.raises(ValueError, match="finite"):
        solve_trust_region(np.array([np.nan, 1.0]), np.eye(2), 1.0)


# -- the model and the Broyden update ---------------------------------------------------------
def test_outer_model_matches_the_hessian_of_the_outer_loss():
    rng = np.random.default_rng(0)
    M, N, d = 6, 4, 3
    W = torch.tensor(rng.standard_normal((M, M)))

    def outer(theta, phi):  # non-quadratic in both arguments
        return torch.log1p(((W @ theta) ** 2).sum()) + (phi ** 4).sum() + (theta[:N] * phi).sum()

    problem = fz.BilevelProblem(inner=lambda phi: phi, outer=outer)
    theta, phi = rng.standard_normal(M), rng.standard_normal(N)
    Y, P = rng.standard_normal((M, d)), rng.standard_normal((N, d))
    value, g, H, g_theta, g_phi = outer_model(problem, theta, phi, Y, P)
    t = torch.tensor(np.concatenate([theta, phi]))
    full = torch.autograd.functional.hessian(lambda x: outer(x[:M], x[M:]), t).numpy()
    grad = torch.autograd.functional.jacobian(lambda x: outer(x[:M], x[M:]), t).numpy()
    YP = np.vstack([Y, P])
    np.testing.assert_allclose(H, YP.T @ full @ YP, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g, YP.T @ grad, rtol=1e-12, atol=1e-13)
    assert value == pytest.approx(float(outer(torch.tensor(theta), torch.tensor(phi))))


def test_broyden_keeps_an_exact_jacobian_exact_on_a_linear_solver():
    rng = np.random.default_rng(1)
    J = rng.standard_normal((7, 4))
    Q = new_directions(np.zeros((4, 0)), 4, rng)
    Y = J @ Q
    a = rng.standard_normal(4)
    Y_new = broyden_update(Y, a, J @ (Q @ a))
    np.testing.assert_allclose(Y_new, J @ Q, rtol=0, atol=1e-14)


def test_broyden_satisfies_the_secant_condition_on_a_nonlinear_solver():
    rng = np.random.default_rng(2)

    def S(z):
        return np.array([np.sin(z[0]) * z[1], np.exp(0.3 * z[2]), z[0] * z[1] * z[2], z[1] ** 3])

    z = rng.standard_normal(3)
    Q = new_directions(np.zeros((3, 0)), 3, rng)
    h = 1e-6
    Y = np.column_stack([(S(z + h * q) - S(z)) / h for q in Q.T])
    a = 0.3 * rng.standard_normal(3)
    dtheta = S(z + Q @ a) - S(z)
    Y_new = broyden_update(Y, a, dtheta)
    np.testing.assert_allclose(Y_new @ a, dtheta, rtol=1e-13, atol=1e-14)
    # The least change: only the component along a moved.
    b = np.linalg.svd(a[None, :])[2][1:].T  # directions orthogonal to a
    np.testing.assert_allclose(Y_new @ b, Y @ b, rtol=0, atol=1e-14)


def test_new_directions_are_orthonormal_and_orthogonal_to_the_kept_ones():
    rng = np.random.default_rng(3)
    Q = new_directions(np.zeros((10, 0)), 4, rng)
    U = new_directions(Q, 5, rng)
    np.testing.assert_allclose(np.hstack([Q, U]).T @ np.hstack([Q, U]), np.eye(9),
                               atol=1e-14)
    assert new_directions(np.hstack([Q, U]), 4, rng).shape == (10, 1)


def test_difference_columns_from_a_clipped_point_reproduce_the_difference():
    # A perturbation cut by a bound is not orthogonal to Q; its column still reproduces
    # the measured difference through [Y, y] [Q, q]^T s.
    rng = np.random.default_rng(4)
    J = rng.standard_normal((5, 3))
    Q = np.eye(3)[:, :1]
    Y = J @ Q
    z = rng.standard_normal(3)
    p = z + np.array([1e-3, -2e-3, 5e-4])
    Q2, Y2, kept = add_difference_columns(Q, Y, z, J @ z, [p], [J @ p])
    assert kept == [0]
    np.testing.assert_allclose(Q2.T @ Q2, np.eye(2), atol=1e-14)
    np.testing.assert_allclose(Y2 @ (Q2.T @ (p - z)), J @ (p - z), atol=1e-13)
