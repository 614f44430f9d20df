"""The Gauss–Newton stepper: its trust-region subproblem, model, Broyden update, and
runs through fz.minimize (exact one-step solutions, a noisy subprocess calibration
against DFO-LS, injected failures, SIGKILL and resume)."""

import hashlib
import math
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import scipy.optimize
import torch

import fg2u_zo as fz
from _process_checks import load_child
from fg2u_zo.persist.checkpoint import read_checkpoint
from fg2u_zo.evaluation.requests import drive
from fg2u_zo.outer.steppers.base import StepperState
from fg2u_zo.outer.steppers.gauss_newton import GaussNewton
from fg2u_zo.outer.steppers.subspace_model import (ModelHessian, add_difference_columns,
                                                   broyden_update, new_directions,
                                                   outer_model)
from fg2u_zo.outer.steppers.trust_region import (KrylovSubproblem, model_decrease,
                                                 solve_trust_region)

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


@pytest.mark.parametrize("kind", ["low-rank", "positive", "indefinite"])
@pytest.mark.parametrize("delta", [0.1, 1.0, 10.0])
def test_krylov_subproblem_matches_the_exact_solution(kind, delta):
    rng = np.random.default_rng(7)
    d = 200
    if kind == "low-rank":   # a least-squares model with 5 residuals: 6 products suffice
        B = rng.standard_normal((d, 5))
        H = B @ B.T
    elif kind == "positive":
        A = rng.standard_normal((d, d))
        H = A @ A.T / d + 0.1 * np.eye(d)
    else:
        A = rng.standard_normal((d, d))
        H = (A + A.T) / np.sqrt(d)
    g = rng.standard_normal(d)
    exact = solve_trust_region(g, H, delta)
    krylov = KrylovSubproblem(g, lambda v: H @ v)
    step = krylov.solve(delta)
    assert krylov.products < d
    if kind == "low-rank":
        assert krylov.products <= 6
    # The Lanczos residual test stops at 1e-10 ||g||: the steps agree to about that.
    np.testing.assert_allclose(step.step, exact.step, rtol=0,
                               atol=1e-8 * max(1.0, np.linalg.norm(exact.step)))
    assert step.decrease == pytest.approx(exact.decrease, rel=1e-9)
    assert krylov.decrease(step.step) == pytest.approx(step.decrease, rel=1e-9)


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


def test_model_hessian_products_match_the_dense_model():
    rng = np.random.default_rng(8)
    M, N, d = 6, 4, 3
    W = torch.tensor(rng.standard_normal((M, M)))

    def outer(theta, phi):
        return torch.log1p(((W @ theta) ** 2).sum()) + (phi ** 4).sum() + (theta[:N] * phi).sum()

    problem = fz.BilevelProblem(inner=lambda phi: phi, outer=outer)
    theta, phi = rng.standard_normal(M), rng.standard_normal(N)
    Y, P = rng.standard_normal((M, d)), rng.standard_normal((N, d))
    _, g, H, _, _ = outer_model(problem, theta, phi, Y, P)
    hess = ModelHessian(problem, theta, phi, Y, P)
    np.testing.assert_allclose(hess.g, g, rtol=1e-13, atol=1e-14)
    for v in np.eye(d):
        np.testing.assert_allclose(hess(v), H @ v, rtol=1e-12, atol=1e-12)


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


# -- the stepper, driven through its protocol ------------------------------------------------
def _update(stepper, state, z, **kwargs):
    """One update of the stepper, its requests answered by a sequential Evaluator."""
    with fz.Evaluator() as ev:
        return drive(stepper.update(state, z=z, **kwargs), ev)


def _linear_quadratic(seed=0, N=4, M=7):
    """``S(phi) = A phi + c``, ``f = 0.5 (theta - y)^T W (theta - y) + 0.5 lam ||phi - p||^2``
    and the closed-form minimizer of ``F``."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((M, N))
    c, y, p = rng.standard_normal(M), rng.standard_normal(M), rng.standard_normal(N)
    W = np.diag(rng.uniform(0.5, 2.0, M))
    lam = 0.3
    Wt, yt, pt = torch.tensor(W), torch.tensor(y), torch.tensor(p)
    At, ct = torch.tensor(A), torch.tensor(c)

    def outer(theta, phi):
        r = theta - yt
        return 0.5 * r @ (Wt @ r) + 0.5 * lam * ((phi - pt) ** 2).sum()

    phi_star = np.linalg.solve(A.T @ W @ A + lam * np.eye(N), A.T @ W @ (y - c) + lam * p)
    numpy_inner = lambda phi: A @ phi + c  # noqa: E731
    torch_inner = lambda phi: At @ phi + ct  # noqa: E731
    return numpy_inner, torch_inner, outer, phi_star, A


@pytest.mark.parametrize("path", ["differences", "exact"])
def test_one_full_subspace_step_lands_on_the_exact_minimizer(path):
    inner, inner_torch, outer, phi_star, _ = _linear_quadratic()
    N = phi_star.size
    if path == "exact":
        problem = fz.BilevelProblem(inner_torch=inner_torch, outer=outer, num_params=N)
        estimator = fz.FG2U(num_directions=N)
    else:
        problem = fz.BilevelProblem(inner=inner, outer=outer, num_params=N)
        # Forward differences of a linear map are exact whatever the step; a unit step
        # keeps the round-off of the differences at eps * |theta|.
        estimator = fz.FG2UZO(step=1.0, scheme="forward")
    res = fz.minimize(problem, np.zeros(N), estimator, optimizer="gauss-newton",
                      optimizer_options={"num_directions": N, "radius": 1e3}, steps=2,
                      rng=0, progress=False)
    first, second = res.history
    assert first.info["directions"] == N and second.info["accepted"]
    # One model (N + 1 solves or jvps), one step: the minimizer, to round-off.
    err = np.linalg.norm(res.phi - phi_star) / np.linalg.norm(phi_star)
    assert err < 1e3 * EPS
    assert second.info["rho"] == pytest.approx(1.0, abs=1e-8)
    if path == "exact":
        assert first.info["jvp"] == N
        # The forward-mode passes count as solves, one per direction, as FG2U counts
        # them: the first step is the base solve plus N jvps.
        assert first.nfev == 1 + N


def test_broyden_keeps_the_stored_columns_exact_on_a_linear_solver():
    inner, _, outer, _, A = _linear_quadratic(seed=3)
    N = A.shape[1]
    problem = fz.BilevelProblem(inner=inner, outer=outer, num_params=N)
    stepper = GaussNewton(num_directions=N, mode="lean", radius=0.05)
    rng = np.random.default_rng(0)
    kwargs = dict(problem=problem, rng=rng, estimator=fz.FG2UZO(step=1.0, scheme="forward"))
    state = stepper.init(np.zeros(N))
    up = _update(stepper, state, np.zeros(N), **kwargs)
    for _ in range(3):  # lean steps on the full subspace: only the Broyden update acts
        up = _update(stepper, up.state, up.z, **kwargs)
        assert up.info["accepted"] and up.info["directions"] == N
        Q, Y = up.state.arrays["Q"], up.state.arrays["Y"]
        np.testing.assert_allclose(Y, A @ Q, rtol=0, atol=1e2 * EPS * np.abs(A).sum())


def test_broyden_satisfies_the_secant_condition_through_the_stepper():
    def inner(phi):
        return np.array([np.sin(phi[0]) * phi[1], np.exp(0.5 * phi[1]), phi[0] * phi[2],
                         phi[2] ** 3 + phi[0]])

    y = torch.tensor([0.3, 1.5, -0.2, 0.4])
    problem = fz.BilevelProblem(inner=inner, outer=lambda t, p: 0.5 * ((t - y) ** 2).sum())
    stepper = GaussNewton(num_directions=3, mode="lean", radius=0.3)
    kwargs = dict(problem=problem, rng=np.random.default_rng(1),
                  estimator=fz.FG2UZO(step=1e-6))
    z0 = np.array([0.5, 0.2, -0.4])
    up = _update(stepper, stepper.init(z0), z0, **kwargs)
    before = up.state.arrays
    up = _update(stepper, up.state, up.z, **kwargs)
    after = up.state.arrays
    assert up.info["accepted"]  # the base moved to the trial: z and theta are the trial's
    s = after["z"] - before["z"]
    c = before["Q"].T @ s
    np.testing.assert_allclose(before["Q"] @ c, s, atol=1e-15)  # the step lies in span Q
    np.testing.assert_allclose(after["Q"], before["Q"], rtol=0, atol=0)
    dtheta = after["theta"] - before["theta"]
    np.testing.assert_allclose(after["Y"] @ c, dtheta, rtol=1e-12, atol=1e-14)
    # ... which the differences alone did not satisfy (the solver is not linear).
    assert np.linalg.norm(before["Y"] @ c - dtheta) > 1e-6 * np.linalg.norm(dtheta)


def test_stepper_state_is_checked_on_resume():
    stepper = GaussNewton()
    good = StepperState(
        arrays={"z": np.zeros(3), "theta": np.zeros(4), "Q": np.zeros((3, 2)),
                "Y": np.zeros((4, 2))}, data={"delta": 0.1})
    stepper.check_state(good, 3)
    with pytest.raises(ValueError, match="N = 4"):
        stepper.check_state(good, 4)
    with pytest.raises(ValueError, match="lacks"):
        stepper.check_state(StepperState(
            arrays={"z": np.zeros(3)}, data={"delta": 0.1}), 3)


def test_options_are_validated():
    with pytest.raises(ValueError, match="mode"):
        GaussNewton(mode="fast")
    with pytest.raises(ValueError, match="num_directions"):
        GaussNewton(num_directions=0)
    with pytest.raises(ValueError, match="radius"):
        GaussNewton(radius=-1.0)


# -- a noisy legacy code through a subprocess, against DFO-LS -------------------------------
ROD = textwrap.dedent('''
    """Heat rod u_t = k u_xx - h u + q s(x), u(0) = 0, u_x(1) = 0, backward Euler;
    reads log(k, h, q), prints 10 temperatures with 6 significant digits."""
    import math
    import sys

    N, STEPS, T_END, SENSORS, TIMES = 20, 40, 2.0, (4, 8, 12, 16, 19), (30, 40)

    def simulate(k, h, q):
        dx, dt = 1.0 / N, T_END / STEPS
        src = [q * math.exp(-(((i + 1) * dx - 0.5) / 0.15) ** 2) for i in range(N)]
        r = k * dt / dx ** 2
        a, b, c = [-r] * N, [1.0 + 2.0 * r + h * dt] * N, [-r] * N
        a[-1] = -2.0 * r
        u, out = [0.0] * N, []
        for step in range(1, STEPS + 1):
            d = [u[i] + dt * src[i] for i in range(N)]
            cp, dp = [c[0] / b[0]] + [0.0] * (N - 1), [d[0] / b[0]] + [0.0] * (N - 1)
            for i in range(1, N):
                m = b[i] - a[i] * cp[i - 1]
                cp[i], dp[i] = c[i] / m, (d[i] - a[i] * dp[i - 1]) / m
            u[-1] = dp[-1]
            for i in range(N - 2, -1, -1):
                u[i] = dp[i] - cp[i] * u[i + 1]
            if step in TIMES:
                out += [u[j] for j in SENSORS]
        return out

    with open(sys.argv[1]) as fh:
        k, h, q = (math.exp(float(v)) for v in fh.read().split())
    print("\\n".join(f"{v:.6g}" for v in simulate(k, h, q)), file=open("out.txt", "w"))
''')
ROD_TRUTH = np.array([0.3, 1.5, 2.0])   # k, h, q; the start is (1, 1, 1)


@pytest.fixture(scope="module")
def rod(tmp_path_factory):
    """The rod as a solvers.Subprocess, the data (its output at the truth: exact to the
    printed digits) and the outer loss."""
    from solvers import Subprocess

    script = tmp_path_factory.mktemp("rod") / "rod.py"
    script.write_text(ROD)
    solver = Subprocess([sys.executable, script.name, "input.txt"], template="{phi}",
                        files=[script], output="out.txt", timeout=60, n_outputs=10)
    y = solver(np.log(ROD_TRUTH))
    scale = float(np.sqrt(np.mean(y ** 2)))
    yt = torch.tensor(y)

    def outer(theta, phi):
        return 0.5 * (((theta - yt) / scale) ** 2).mean()

    def residuals(theta):
        return (theta - y) / scale / math.sqrt(2.0 * y.size)

    return solver, outer, residuals


def _rod_error(phi):
    return float(np.max(np.abs(np.exp(phi) - ROD_TRUTH) / ROD_TRUTH))


@pytest.mark.timeout(300)
def test_noisy_subprocess_calibration_needs_fewer_calls_than_dfols(rod):
    # Singular values of the scaled Jacobian in log-parameters: about 3.8, 0.61, 0.07.
    # Six printed digits: a forward-difference step of sqrt(1e-6) = 1e-3 in log k.
    dfols = pytest.importorskip("dfols")
    solver, outer, residuals = rod
    problem = fz.BilevelProblem(inner=solver, outer=outer, num_params=3)
    reached = []

    def callback(record):  # the best point so far is the base point of each step
        if _rod_error(record.phi) <= 1e-3:
            reached.append(record.nfev_total)
            return True
        return False

    res = fz.minimize(problem, np.zeros(3), fz.FG2UZO(step=1e-3, scheme="forward"),
                      optimizer="gauss-newton",
                      optimizer_options={"num_directions": 3, "radius": 1.0}, steps=60,
                      callback=callback, rng=0, backend="sequential", progress=False)
    assert res.status == "callback", res
    ours = reached[0]

    # DFO-LS on the same residuals, at its default radius and at ours: calls until its
    # best point (lowest F evaluated) is within 1e-3.
    theirs = []
    for rhobeg in (0.1, 1.0):
        calls, best = [0], [np.inf, None]
        hit = []

        def objfun(x):
            calls[0] += 1
            r = residuals(solver(x))
            if r @ r < best[0]:
                best[:] = [float(r @ r), x.copy()]
            if not hit and _rod_error(best[1]) <= 1e-3:
                hit.append(calls[0])
            return r

        np.random.seed(0)
        dfols.solve(objfun, np.zeros(3), rhobeg=rhobeg, maxfun=200, do_logging=False,
                    print_progress=False)
        assert hit, f"DFO-LS (rhobeg={rhobeg}) did not reach 1e-3"
        theirs.append(hit[0])
    assert ours < min(theirs), (ours, theirs)


# -- failures ---------------------------------------------------------------------------------
T_DECAY = np.linspace(0.0, 3.0, 12)
DECAY_TRUTH = np.log([2.0, 1.5, 0.5, 0.3])


def _decay(phi):
    a1, b1, a2, b2 = np.exp(phi)
    return a1 * np.exp(-b1 * T_DECAY) + a2 * np.exp(-b2 * T_DECAY)


def _point_hash(phi):
    digest = hashlib.blake2b(np.ascontiguousarray(phi, dtype=np.float64).tobytes(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


class FailingDecay:
    """A two-exponential decay that raises at a ``rate`` of the points, chosen by a hash
    of the point (a retry fails again), everywhere but at ``start``."""

    def __init__(self, rate, start):
        self.rate, self.start = rate, np.asarray(start, dtype=np.float64)

    def __call__(self, phi):
        if _point_hash(phi) < self.rate and not np.array_equal(phi, self.start):
            raise RuntimeError("simulated solver failure")
        return _decay(phi)


def _decay_problem(rate, start):
    y = torch.tensor(_decay(DECAY_TRUTH))
    return fz.BilevelProblem(inner=FailingDecay(rate, start),
                             outer=lambda theta, phi: 0.5 * ((theta - y) ** 2).sum(),
                             num_params=4)


@pytest.mark.parametrize("mode", ["refresh", "lean"])
def test_reaches_the_target_with_a_fifth_of_the_solves_failing(mode):
    phi0 = np.zeros(4)
    problem = _decay_problem(0.2, phi0)
    F0 = problem.outer_value(_decay(phi0), phi0)
    res = fz.minimize(problem, phi0, fz.FG2UZO(step=1e-6, scheme="forward"),
                      optimizer="gauss-newton",
                      optimizer_options={"num_directions": 4, "mode": mode, "radius": 0.5},
                      steps=300, target=1e-10 * F0, rng=0, backend="sequential",
                      progress=False)
    assert res.status == "target", res
    assert sum(r.failures for r in res.history) > 0
    # A failed trial is never accepted; the run went on from the last good point.
    failed_trials = [r for r in res.history[1:] if r.info["trial_value"] is None]
    assert failed_trials and all(r.info["accepted"] in (False, None) for r in failed_trials)


def test_a_failed_lone_trial_is_counted_in_the_step_and_the_totals():
    """Lean mode evaluates the trial alone once the subspace is full; its failure must
    reach the step's failures, nfev and the run's totals (not vanish in an error)."""
    phi0 = np.zeros(4)
    problem = _decay_problem(0.2, phi0)
    res = fz.minimize(problem, phi0, fz.FG2UZO(step=1e-6, scheme="forward"),
                      optimizer="gauss-newton",
                      optimizer_options={"num_directions": 4, "mode": "lean", "radius": 0.5},
                      steps=60, rng=0, backend="sequential", progress=False)
    failed_trials = [r for r in res.history[1:]
                     if r.info.get("trials") and r.info["trial_value"] is None]
    assert failed_trials
    assert all(r.failures >= 1 and r.nfev >= 1 for r in failed_trials)
    assert res.failures.get("exception", 0) == sum(r.failures for r in res.history)


def test_a_failed_first_solve_is_an_error():
    phi0 = np.zeros(4)
    problem = _decay_problem(1.0, np.ones(4))  # fails everywhere but at ones(4)
    with pytest.raises(fz.InnerSolverError, match="starting point"):
        fz.minimize(problem, phi0, fz.FG2UZO(step=1e-6, scheme="forward"),
                    optimizer="gauss-newton", steps=3, rng=0, backend="sequential",
                    progress=False)


# -- checkpoint and resume --------------------------------------------------------------------
CHILD = DATA / "gn_ckpt_child.py"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.timeout(180)
def test_sigkill_then_resume_gives_the_same_final_phi_bit_for_bit(tmp_path):
    child = load_child(CHILD)
    reference = fz.minimize(child.make_problem(), np.zeros(5), child.estimator(),
                            **child.KWARGS)
    ckpt, history = tmp_path / "run.ckpt", tmp_path / "run.jsonl"
    with open(tmp_path / "child.log", "w") as log:
        proc = subprocess.Popen([sys.executable, str(CHILD), str(ckpt), str(history), "0.05"],
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if read_checkpoint(ckpt).step >= 3:
                    break
            except fz.CheckpointError:  # not written yet
                pass
            time.sleep(0.01)
        else:
            proc.kill()
            raise AssertionError((tmp_path / "child.log").read_text())
        proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: a real crash
        assert proc.wait(30) == -signal.SIGKILL
    killed_at = read_checkpoint(ckpt)
    # The reference stops by itself (status "converged") before its STEPS.
    assert 3 <= killed_at.step < reference.nit <= child.STEPS
    res = fz.resume(ckpt, child.make_problem(), progress=False)
    assert res.phi.tobytes() == reference.phi.tobytes()
    assert res.status == reference.status
    # Solves of the killed step that had finished are taken from the journal, not redone.
    assert res.nit == reference.nit and res.nfev + res.nfev_replayed == reference.nfev
    assert [r.value for r in res.history] == [r.value for r in reference.history]


# -- transforms and phases --------------------------------------------------------------------
def test_log_transform_and_bounds():
    # The same decay in its natural parameters (positive), moved in z = log(phi): the
    # direct term and the clipping act in z, the model's phi-term through T'(z).
    y, truth = torch.tensor(_decay(DECAY_TRUTH)), torch.tensor(DECAY_TRUTH)
    problem = fz.BilevelProblem(inner=lambda p: _decay(np.log(p)), num_params=4,
                                outer=lambda t, p: 0.5 * ((t - y) ** 2).sum()
                                + 0.05 * ((torch.log(p) - truth) ** 2).sum())
    phi0 = np.ones(4)
    F0 = problem.outer_value(_decay(np.zeros(4)), phi0)
    res = fz.minimize(problem, phi0, fz.FG2UZO(step=1e-6, scheme="forward"),
                      optimizer="gauss-newton", optimizer_options={"num_directions": 4},
                      transform="log", bounds=(1e-3, 10.0), steps=200, target=1e-12 * F0,
                      rng=0, progress=False)
    assert res.status == "target", res
    assert np.all(res.phi > 1e-3) and np.all(res.phi <= 10.0)


def test_a_new_phase_restarts_the_model():
    y = torch.tensor(_decay(DECAY_TRUTH))
    outer = lambda t, p: 0.5 * ((t - y) ** 2).sum()  # noqa: E731
    problem = fz.BilevelProblem(inner=_decay, outer=outer, num_params=4)
    rough = lambda phi: np.round(_decay(phi), 2)  # noqa: E731  a low-fidelity solver
    phases = [fz.Phase(steps=4, solver=rough), fz.Phase(steps=40)]
    F0 = problem.outer_value(_decay(np.zeros(4)), np.zeros(4))
    res = fz.minimize(problem, np.zeros(4), fz.FG2UZO(step=1e-6, scheme="forward"),
                      optimizer="gauss-newton",
                      optimizer_options={"num_directions": 4, "radius": 0.5},
                      phases=phases, target=1e-10 * F0, rng=0, progress=False)
    assert res.status == "target", res
    # The first phase may stop early (its own stopping rule on the rounded outputs).
    start = next(r for r in res.history if r.phase == 1)
    assert start.info["rho"] is None and start.info["new"] == 4  # a fresh model
    assert start.nfev == 5


def test_trials_at_several_radii_share_the_group():
    # Refresh mode with radius_factors: once the subspace is complete, each group holds
    # the trials at the given multiples of the radius in places of re-measured
    # directions (its size stays b + 1), and the run still reaches the target.
    phi0 = np.zeros(4)
    problem = _decay_problem(0.0, phi0)
    F0 = problem.outer_value(_decay(phi0), phi0)
    res = fz.minimize(problem, phi0, fz.FG2UZO(step=1e-6, scheme="forward"),
                      optimizer="gauss-newton",
                      optimizer_options={"num_directions": 4, "mode": "refresh",
                                         "radius": 0.5, "radius_factors": (0.25, 1, 4)},
                      steps=100, target=1e-10 * F0, rng=0, progress=False)
    assert res.status == "target", res
    later = res.history[1:]
    assert max(r.info["trials"] for r in later) == 3
    assert all(r.nfev <= 5 for r in later)
    with pytest.raises(ValueError, match="radius_factors"):
        GaussNewton(radius_factors=(1.0, -2.0))


# -- the defaults: stopping rule, first model, every group useful, scale ----------------------
def _linear_least_squares(N=5, M=9, seed=4):
    """``S(phi) = A phi + c`` and a LeastSquares outer loss whose minimizer is
    ``phi_star`` (a zero-residual fit: the data are S(phi_star))."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((M, N))
    c = rng.standard_normal(M)
    phi_star = 3.0 * rng.standard_normal(N)
    return (lambda phi: A @ phi + c), A, c, phi_star


@pytest.mark.parametrize("outer_kind", ["least-squares", "torch"])
def test_the_run_stops_within_one_iteration_of_reaching_a_quadratic_minimizer(outer_kind):
    # A linear inner solver makes F a quadratic and the model exact (forward differences
    # of a linear map, Broyden keeping exact columns exact): the first step the trust
    # region allows to reach the minimizer lands on it, its ratio is 1, and the next
    # iteration's predicted decrease is round-off: the run stops there, with no solve.
    inner, A, c, phi_star = _linear_least_squares()
    y = A @ phi_star + c
    if outer_kind == "least-squares":
        outer = fz.LeastSquares(y, scale="sum")
    else:
        yt = torch.tensor(y)
        outer = lambda theta, phi: 0.5 * ((theta - yt) ** 2).sum()  # noqa: E731
    problem = fz.BilevelProblem(inner=inner, outer=outer, num_params=5)
    res = fz.minimize(problem, np.zeros(5), rng=0, progress=False)
    assert res.optimizer == "gauss-newton" and res.status == "converged", res
    errors = [np.linalg.norm(r.phi - phi_star) / np.linalg.norm(phi_star)
              for r in res.history]
    reached = next(k for k, e in enumerate(errors) if e < 1e-10)
    assert len(res.history) - 1 - reached <= 1
    assert res.history[-1].nfev == 0  # the verdict comes from the model alone


def test_a_noisy_quadratic_stops_at_the_noise_floor():
    # The outputs of the linear solver printed with 6 significant digits: the outputs
    # look quantized, the noise probe measures them (once), and the run stops once the
    # model predicts less than the noise of F. It then sits within the noise floor: the
    # exact misfit's excess over its minimum is at most a hundred times M q^2 / 2
    # (q the largest unit of the last printed digit), and it did not spend its budget.
    inner, A, c, phi_star = _linear_least_squares()
    y = A @ phi_star + c

    def printed(phi):
        return np.array([float(f"{v:.5e}") for v in inner(phi)])

    problem = fz.BilevelProblem(inner=printed, outer=fz.LeastSquares(y, scale="sum"),
                                num_params=5)
    res = fz.minimize(problem, np.zeros(5), rng=0, progress=False)
    assert res.status == "converged" and "noise" in res.message, res
    assert sum(1 for r in res.history if r.info.get("probe")) == 1
    q = 10.0 ** (np.floor(np.log10(np.abs(y).max())) - 5)
    excess = 0.5 * np.sum((A @ (res.phi - phi_star)) ** 2)
    assert excess <= 100 * y.size * q ** 2 / 2, (excess, q)
    assert res.nit < 40


@pytest.mark.parametrize("start", [0, 1])
def test_one_worker_does_not_stop_on_a_model_its_broyden_updates_kept(start):
    # NIST's ENSO (9 parameters, a large residual): with one worker no idle solve
    # refreshes the model, and its columns are Broyden-updated from points many steps
    # back. A last trial that landed where the model predicted checks it along its own
    # direction only; stopping there left 3-4 digits (LRE 3.9 and 3.0). The stale
    # columns are measured again before the run may stop: at least the 4 digits the
    # benchmark counts as solved (DFO-LS: 6.1 and 6.5).
    from benchmarks._profiles import lre
    from benchmarks._strd_problems import load

    p = load("ENSO")
    problem = fz.BilevelProblem(inner=p.predict, num_params=p.num_params,
                                outer=fz.LeastSquares(p.y, scale="sum"))
    res = fz.minimize(problem, p.starts[start], rng=0, workers=1, progress=False)
    assert res.status == "converged", res
    assert lre(res.phi, p.certified) >= 4.0


@pytest.mark.parametrize("workers", [1, 3, 8])
def test_on_an_exact_linear_solver_the_first_model_costs_n_plus_one_solves(workers):
    # The start and N directions (N + 1 solves, as DFO-LS's first model), whatever the
    # width, and no noise probe: the outputs are exact to double precision.
    inner, A, c, phi_star = _linear_least_squares()
    problem = fz.BilevelProblem(inner=inner, num_params=5,
                                outer=fz.LeastSquares(A @ phi_star + c, scale="sum"))
    res = fz.minimize(problem, np.zeros(5), rng=0, workers=workers, progress=False)
    first = res.history[0]
    assert first.nfev == 5 + 1 and first.info["directions"] == 5
    assert not any(r.info.get("probe") for r in res.history)


@pytest.mark.parametrize("mode", ["auto", "lean", "refresh"])
@pytest.mark.parametrize("workers", [1, 4])
def test_no_iteration_spends_solves_without_a_trial_or_new_information(mode, workers):
    # The nonlinear decay fit, every mode and width: each iteration's solves are its
    # trials, its new and re-measured directions and its probe, exactly; no iteration
    # spends a solve on anything else, none is empty but the final verdict, and the run
    # stops by itself (no mode stalls into the step budget).
    y = torch.tensor(_decay(DECAY_TRUTH))
    problem = fz.BilevelProblem(inner=_decay, num_params=4,
                                outer=lambda t, p: 0.5 * ((t - y) ** 2).sum())
    res = fz.minimize(problem, np.zeros(4), optimizer="gauss-newton",
                      optimizer_options={"mode": mode}, workers=workers, rng=0,
                      progress=False)
    assert res.status == "converged", res
    for r in res.history:
        i = r.info
        spent = i["trials"] + i["remeasured"] + i["new"] + i.get("probe", 0)
        assert r.nfev == spent, (r.step, r.nfev, i)
    assert all(r.nfev > 0 for r in res.history[:-1])
    assert res.history[-1].nfev == 0
    # Once the first model is built, at most the trial and b directions per group (b
    # = W - 1, at least 1; the noise probe, when it runs, has requests of its own).
    assert max(r.nfev - r.info.get("probe", 0) for r in res.history[1:]) <= max(workers, 2)


@pytest.mark.parametrize("mode", ["refresh", "auto"])
def test_new_directions_measured_beside_re_measured_ones_all_enter_the_model(mode):
    # b = 5 directions per group on N = 6: the first group measures 5, the next one
    # re-measures 4 of them and adds the 6th, which must be orthogonal to all 5 (a
    # direction drawn orthogonal to the unmeasured one only lies mostly in their span
    # and its solve is lost): the subspace is complete after the second group, and
    # every group's new directions add as many columns.
    rng = np.random.default_rng(3)
    A = rng.standard_normal((12, 6))
    y = A @ np.linspace(-1.0, 1.0, 6) + 0.1 * np.tanh(A @ np.ones(6))

    def inner(x):
        return A @ x + 0.1 * np.tanh(A @ np.ones(6) + 0.0 * x.sum())

    problem = fz.BilevelProblem(inner=inner, outer=fz.LeastSquares(y, scale="sum"),
                                num_params=6)
    res = fz.minimize(problem, np.zeros(6), optimizer="gauss-newton",
                      optimizer_options={"mode": mode, "num_directions": 5}, workers=8,
                      rng=0, progress=False)
    assert res.status == "converged", res
    history = res.history
    assert [r.info["directions"] for r in history[:2]] == [5, 6]
    assert history[1].info["new"] == 1
    for before, after in zip(history, history[1:]):
        assert after.info["directions"] == min(6, before.info["directions"]
                                                + after.info["new"]), after.info


@pytest.mark.parametrize("workers", [1, 8])
def test_a_badly_scaled_minimizer_far_away_is_reached_in_logarithmically_many_steps(workers):
    # S(x) = (x1 / 1e6 - 1, x2 - 1): the minimizer x1 = 1e6, x2 = 1 lies 1e7 initial
    # radii (0.1) away. The model is exact and every step until the last reaches the
    # trust region's boundary with ratio 1: the radius doubles after the first such
    # step and quadruples after each further one, so after k of them the run has
    # covered 0.1 + 0.2 (4^(k-1) - 1) / 3, and 1e6 takes k = 1 + ceil(log4(1.5e7)) = 13
    # on one worker. With 8 workers each group also tries 8 and 64 times the radius and
    # the 64-fold trial is the step: radii 0.1, 12.8, 3277, 8.4e5 (x 2, then x 256)
    # reach 1e6 on the 4th step. Add the start and the final interior step.
    def inner(x):
        return np.array([x[0] / 1e6 - 1.0, x[1] - 1.0])

    problem = fz.BilevelProblem(inner=inner, outer=fz.LeastSquares(np.zeros(2),
                                                                   scale="sum"),
                                num_params=2)
    res = fz.minimize(problem, np.zeros(2), rng=0, workers=workers, progress=False)
    assert res.status == "converged", res
    np.testing.assert_allclose(res.phi, [1e6, 1.0], rtol=1e-8)
    reached = next(r.step for r in res.history
                   if np.allclose(r.phi, [1e6, 1.0], rtol=1e-8))
    boundary_steps = 1 + math.ceil(math.log(1.5e7, 4)) if workers == 1 else 4
    assert reached <= 1 + boundary_steps + 1, [r.info["step_norm"] for r in res.history]
    # ... and the run stops a few steps later (refining F down to its round-off).
    assert res.nit <= reached + 5


def test_an_overflowing_trial_is_rejected_and_the_fit_goes_on():
    # NIST's BoxBOD from its first start (1, 1): trials with b2 < 0 overflow exp(-b2 x)
    # (the outputs are inf: failed solves, or 1e100-sized: rejected trials); the run
    # rejects them, shrinks the radius and fits the certified values to 4 digits.
    x = np.array([1.0, 2.0, 3.0, 5.0, 7.0, 10.0])
    y = np.array([109.0, 149.0, 149.0, 191.0, 213.0, 224.0])
    certified = np.array([213.80940889, 0.54723748542])

    def boxbod(b):
        with np.errstate(over="ignore"):
            return b[0] * (1.0 - np.exp(-b[1] * x))

    problem = fz.BilevelProblem(inner=boxbod, outer=fz.LeastSquares(y, scale="sum"),
                                num_params=2)
    res = fz.minimize(problem, np.array([1.0, 1.0]), rng=0, workers=8,
                      backend="sequential", progress=False)
    assert res.status == "converged", res
    np.testing.assert_allclose(res.phi, certified, rtol=1e-4)
    rejected = [r for r in res.history if r.info.get("accepted") is False]
    assert rejected


def test_the_model_of_a_torch_loss_needs_no_torch_compiler():
    # The model's Hessian-vector products are plain double-backward passes: the first
    # vmapped call would import torch's compiler stack (seconds of warm-up per process).
    code = textwrap.dedent("""
        import sys, numpy as np, torch, fg2u_zo as fz
        y = torch.linspace(0.0, 1.0, 6, dtype=torch.float64)
        problem = fz.BilevelProblem(inner=lambda p: np.tanh(np.outer(np.arange(6), p)).sum(1),
                                    outer=lambda t, p: torch.log1p(((t - y) ** 2).sum()))
        res = fz.minimize(problem, np.full(3, 0.1), rng=0, progress=False)
        assert res.optimizer == "gauss-newton" and res.nit > 1, res
        assert "torch._dynamo" not in sys.modules
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
