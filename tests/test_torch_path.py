"""The exact torch path: solvers.TorchUnrolled and the phase-1 estimators TRGU, Neumann.

References are closed forms on strongly convex quadratic inner losses
``g(theta, phi) = theta^T A theta / 2 + s sum_j exp(phi_j) theta_j^2 / 2 - theta^T (B phi + c)``
(``s`` in {0, 1}), whose minimiser and implicit hypergradient are known exactly.
"""

import pickle
import re

import numpy as np
import pytest
import torch

import fg2u_zo as fz
from fg2u_zo.testing import RidgeHyperproblem
from solvers import TorchUnrolled

N = 4


class QuadraticLoss:
    """Picklable inner loss (module level) with closed-form argmin and hypergradient."""

    def __init__(self, n=N, *, curvature=True, shift_only=False, seed=0):
        rng = np.random.default_rng(seed)
        Q = rng.standard_normal((n, n))
        self.A = Q @ Q.T / n + np.eye(n)  # eigenvalues in [1, ~3.5]
        self.B = np.eye(n) if shift_only else rng.standard_normal((n, n))
        self.c = rng.standard_normal(n)
        self.s = 1.0 if curvature else 0.0
        self._A, self._B, self._c = map(torch.from_numpy, (self.A, self.B, self.c))

    def __call__(self, theta, phi):
        return (0.5 * theta @ (self._A @ theta) + 0.5 * self.s * (phi.exp() * theta ** 2).sum()
                - theta @ (self._B @ phi + self._c))

    def hessian(self, phi):
        return self.A + self.s * np.diag(np.exp(phi))

    def argmin(self, phi):
        return np.linalg.solve(self.hessian(phi), self.B @ phi + self.c)


class Outer:
    """``f = |theta - target|^2 / 2 + 0.005 |phi|^2``."""

    def __init__(self, n=N, seed=1):
        self.target = np.random.default_rng(seed).standard_normal(n)

    def __call__(self, theta, phi):
        return 0.5 * ((theta - torch.as_tensor(self.target)) ** 2).sum() + 0.005 * (phi ** 2).sum()


def implicit_hypergradient(loss, outer, phi):
    """``d_phi f + (d theta*/d phi)^T grad_theta f`` with ``theta*`` the exact argmin."""
    theta = loss.argmin(phi)
    # d(grad_theta g)/d phi = -B + s diag(exp(phi) theta); theta*' = -H^{-1} of that.
    mixed = -loss.B + loss.s * np.diag(np.exp(phi) * theta)
    jac = -np.linalg.solve(loss.hessian(phi), mixed)
    return jac.T @ (theta - outer.target) + 0.01 * phi


PHI = np.array([0.3, -0.2, 0.1, 0.5])
OPTIMIZERS = {"sgd": dict(lr=0.2), "momentum": dict(lr=0.05, momentum=0.9),
              "adam": dict(lr=0.05)}


def _problem(solver, outer=None):
    return fz.BilevelProblem(inner=solver, outer=outer or Outer(), num_params=N)


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


# -- TorchUnrolled ------------------------------------------------------------------------------
# Adam's eps for the convergence test; see the derivation in the test.
ADAM_CONVERGENT = dict(lr=0.05, eps=1e-2)


@pytest.mark.parametrize("optimizer, steps, tol", [
    ("sgd", 300, 1e-12), ("momentum", 600, 1e-10), ("adam", 3000, 1e-12)])
def test_each_optimizer_reaches_the_closed_form_argmin(optimizer, steps, tol):
    # The inner loss is quadratic in theta with Hessian H (eigenvalues lambda in
    # [2.28, 4.85] at PHI), so each method is a linear iteration on the error
    # e = theta - theta* whose only fixed point is e = 0; after T steps the error is
    # rho^T e_0 plus rounding, and T makes rho^T < 1e-15, so the bound is rounding:
    # |e| ~ eps_mach * cond(H) * |theta*| ~ 1e-15, checked at 1e-12 or 1e-10.
    # - SGD: rho = max |1 - 0.2 lambda| = 0.54.
    # - Heavy ball (lr 0.05, momentum 0.9): complex roots for every lambda here, so
    #   rho = sqrt(0.9) = 0.949 (0.949^600 = 2e-14).
    # - Adam: near theta* it is heavy ball on m = beta1 m + (1 - beta1) g with the
    #   per-coordinate step d = lr / (sqrt(v_hat) + eps). With a fixed d the iteration
    #   on (e, m) has characteristic polynomial z^2 - (1 + beta1 - a) z + beta1,
    #   a = d (1 - beta1) lambda, stable iff 0 < a < 2 (1 + beta1), i.e.
    #   d lambda < 2 (1 + beta1) / (1 - beta1) = 38; then |z| <= sqrt(beta1) when the
    #   roots are complex. v decays (time constant 1 / (1 - beta2) = 1000 steps) as
    #   the gradient vanishes, so d grows to lr / eps: with the default eps = 1e-8 it
    #   crosses the stability limit (around step 1750 here) and constant-step Adam
    #   oscillates around theta* with an amplitude set by rounding (measured 1e-17 to
    #   9e-3 between steps 1500 and 6000; 6e-7 or 2.4e-5 at step 3000 on two CPUs).
    #   eps = 1e-2 bounds d by lr / eps = 5, so d lambda <= 5 * 4.85 = 24 < 38 for
    #   every v (once the bias correction 1 / (1 - beta1^t) of m is below 1.5, from
    #   step 11 on): the iteration stays a contraction and converges to theta* like
    #   the heavy ball (at d = 5, a = 0.5 lambda in [1.14, 2.42]: complex roots,
    #   rho = sqrt(0.9)).
    loss = QuadraticLoss()
    lam = np.linalg.eigvalsh(loss.hessian(PHI))
    options = ADAM_CONVERGENT if optimizer == "adam" else OPTIMIZERS[optimizer]
    if optimizer == "adam":  # the premise of the derivation above
        beta1 = 0.9
        assert options["lr"] / options["eps"] * lam.max() < 2 * (1 + beta1) / (1 - beta1)
    solver = TorchUnrolled(loss, np.zeros(N), steps, optimizer=optimizer, **options)
    err = np.max(np.abs(solver(PHI) - loss.argmin(PHI)))
    assert err < tol, err
    # ... and not by accident: few steps leave it far from the argmin.
    short = TorchUnrolled(loss, np.zeros(N), 3, optimizer=optimizer, **options)
    assert np.max(np.abs(short(PHI) - loss.argmin(PHI))) > 1e3 * tol


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_torch_and_numpy_views_agree_and_pickle(optimizer):
    solver = TorchUnrolled(QuadraticLoss(), np.zeros(N), 25, optimizer=optimizer,
                           **OPTIMIZERS[optimizer])
    phi_t = torch.tensor(PHI, requires_grad=True)
    theta_t = solver.torch(phi_t)
    assert theta_t.requires_grad and theta_t.dtype == torch.float64
    out = solver(PHI)
    assert out.dtype == np.float64 and out.shape == (N,)
    np.testing.assert_array_equal(theta_t.detach().numpy(), out)
    # warm_start / seed are ignored: theta_T stays one deterministic function of phi.
    np.testing.assert_array_equal(solver(PHI, warm_start=out + 1.0, seed=3), out)
    clone = pickle.loads(pickle.dumps(solver))
    np.testing.assert_array_equal(clone(PHI), out)
    assert clone.optimizer == optimizer and clone.steps == 25


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_fg2u_full_basis_equals_rgu_through_torch_unrolled(optimizer):
    loss = QuadraticLoss()
    solver = TorchUnrolled(loss, np.zeros(N), 40, optimizer=optimizer, **OPTIMIZERS[optimizer])
    problem = _problem(solver)
    exact = fz.RGU().estimate(problem, PHI).grad
    full = fz.FG2U(num_directions=N, directions="coordinate").estimate(problem, PHI, rng=0)
    np.testing.assert_allclose(full.grad, exact, rtol=1e-10, atol=1e-14)
    assert np.linalg.norm(exact) > 0.1


def test_theta0_depending_on_phi_is_differentiated_through():
    loss = QuadraticLoss()
    solver = TorchUnrolled(loss, _start_from_phi, 5, optimizer="momentum", lr=0.05)
    problem = _problem(solver)
    exact = fz.RGU().estimate(problem, PHI).grad
    full = fz.FG2U(num_directions=N, directions="coordinate").estimate(problem, PHI, rng=0)
    np.testing.assert_allclose(full.grad, exact, rtol=1e-10)
    fixed = _problem(TorchUnrolled(loss, 0.5 * PHI, 5, optimizer="momentum", lr=0.05))
    assert _rel(fz.RGU().estimate(fixed, PHI).grad, exact) > 1e-2  # the start mattered


def _start_from_phi(phi):
    return 0.5 * phi


class QuadraticGradient:
    """Hand-written ``d g / d theta`` of :class:`QuadraticLoss`."""

    def __init__(self, loss):
        self.loss = loss

    def __call__(self, theta, phi):
        q = self.loss
        return q._A @ theta + q.s * phi.exp() * theta - (q._B @ phi + q._c)


def test_a_hand_written_inner_gradient_gives_the_same_solver():
    loss = QuadraticLoss()
    auto = TorchUnrolled(loss, np.zeros(N), 40, optimizer="momentum", lr=0.05)
    hand = TorchUnrolled(loss, np.zeros(N), 40, optimizer="momentum", lr=0.05,
                         inner_grad=QuadraticGradient(loss))
    np.testing.assert_allclose(hand(PHI), auto(PHI), rtol=1e-12, atol=1e-14)
    exact = fz.RGU().estimate(_problem(auto), PHI).grad
    for est in (fz.RGU(), fz.FG2U(num_directions=N, directions="coordinate")):
        np.testing.assert_allclose(est.estimate(_problem(hand), PHI, rng=0).grad, exact,
                                   rtol=1e-10)
    assert _rel(fz.Neumann(terms=60).estimate(_problem(hand), PHI).grad,
                fz.Neumann(terms=60).estimate(_problem(auto), PHI).grad) < 1e-12


def test_fg2uzo_through_the_numpy_view_matches_fg2u():
    solver = TorchUnrolled(QuadraticLoss(), np.zeros(N), 40, optimizer="adam", lr=0.05)
    problem = _problem(solver)
    zo = fz.FG2UZO(num_directions=4, scheme="central").estimate(problem, PHI, rng=7)
    fg = fz.FG2U(num_directions=4).estimate(problem, PHI, rng=7)  # same directions
    assert _rel(zo.grad, fg.grad) <= 1e-6, _rel(zo.grad, fg.grad)


def test_torch_unrolled_validates_its_arguments():
    loss = QuadraticLoss()
    cases = [
        (dict(optimizer="rmsprop"), "optimizer"), (dict(lr=-1.0), "lr"),
        (dict(momentum=1.0), "momentum"), (dict(betas=(0.9, 1.0)), "betas[1]"),
        (dict(eps=0.0), "eps"), (dict(betas=0.9), "betas")]
    for kwargs, name in cases:
        with pytest.raises(fz.FG2UValueError, match=re.escape(f"`{name}`")):
            TorchUnrolled(loss, np.zeros(N), 10, **kwargs)
    with pytest.raises(fz.FG2UValueError, match="`steps`"):
        TorchUnrolled(loss, np.zeros(N), 0)
    with pytest.raises(fz.FG2UValueError, match="`theta0`"):
        TorchUnrolled(loss, np.zeros((2, 2)), 10)
    with pytest.raises(fz.FG2UTypeError, match="`inner_loss`"):
        TorchUnrolled("loss", np.zeros(N), 10)
    with pytest.raises(fz.InnerSolverError, match="diverged"):
        TorchUnrolled(loss, np.zeros(N), 1000, lr=5.0)(PHI)


# -- TRGU ------------------------------------------------------------------------------------
def test_trgu_is_rgu_at_full_depth_and_its_bias_shrinks_with_k():
    # Contractive problem: SGD on a quadratic whose phi only shifts the linear term, so
    # d theta_T / d phi = lr sum_{s<T} (I - lr H)^s and truncation to the last K steps
    # leaves out sum_{s>=K}; with every eigenvalue of I - lr H in (0, 1), each
    # eigencomponent of the error (rho^K - rho^T) / (1 - rho) shrinks strictly with K.
    loss = QuadraticLoss(curvature=False, shift_only=True)
    T = 30
    problem = _problem(TorchUnrolled(loss, np.zeros(N), T, lr=0.2))
    exact = fz.RGU().estimate(problem, PHI)
    full = fz.TRGU(backprop_steps=T).estimate(problem, PHI)
    np.testing.assert_array_equal(full.grad, exact.grad)
    np.testing.assert_array_equal(fz.TRGU(backprop_steps=10 * T).estimate(problem, PHI).grad,
                                  exact.grad)
    errors = [_rel(fz.TRGU(backprop_steps=k).estimate(problem, PHI).grad, exact.grad)
              for k in range(1, T)]
    assert errors[0] > 0.1  # K = 1 is clearly biased
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    g = fz.TRGU(backprop_steps=5).estimate(problem, PHI)
    assert (g.estimator, g.nfev, g.num_directions) == ("TRGU", 1, 0)
    assert np.all(g.stderr == 0) and g.value == pytest.approx(exact.value)


def test_trgu_backward_drives_a_torch_optimizer():
    loss = QuadraticLoss()
    problem = _problem(TorchUnrolled(loss, np.zeros(N), 50, lr=0.2))
    phi = torch.tensor(PHI, requires_grad=True)
    opt = torch.optim.SGD([phi], lr=0.2)
    values = []
    for _ in range(25):
        opt.zero_grad()
        res = fz.TRGU(backprop_steps=10).backward(problem, phi)
        np.testing.assert_array_equal(phi.grad.numpy(), res.grad)
        values.append(res.value)
        opt.step()
    # Small steps on a smooth F: every step descends, 25 of them cut F by > 20 %
    # (measured: 24 %).
    assert all(b < a for a, b in zip(values, values[1:])), values
    assert values[-1] < 0.8 * values[0], (values[0], values[-1])


# -- Neumann --------------------------------------------------------------------------------
def test_neumann_converges_to_the_implicit_hypergradient():
    # T = 120 SGD steps put theta_T within 1e-25 of theta* (contraction ~0.55 per
    # step); the series with alpha = lr = 0.2 contracts at max |1 - 0.2 lambda| ~ 0.55
    # per term, with alpha = 0.1 at ~0.77.
    loss, outer = QuadraticLoss(), Outer()
    problem = _problem(TorchUnrolled(loss, np.zeros(N), 120, lr=0.2), outer)
    truth = implicit_hypergradient(loss, outer, PHI)
    errors = [_rel(fz.Neumann(terms=k).estimate(problem, PHI).grad, truth)
              for k in (1, 2, 5, 10, 20, 40)]
    assert errors[0] > 0.1
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    g = fz.Neumann(terms=80).estimate(problem, PHI)
    assert _rel(g.grad, truth) < 1e-10, _rel(g.grad, truth)
    assert (g.estimator, g.nfev, g.num_directions) == ("Neumann", 1, 0)
    assert np.all(g.stderr == 0)
    # An explicit alpha, and the inner loss handed over directly (any black box).
    g2 = fz.Neumann(terms=150, alpha=0.1, inner_loss=loss).estimate(problem, PHI)
    assert _rel(g2.grad, truth) < 1e-10


def test_neumann_rejects_a_diverging_series():
    problem = _problem(TorchUnrolled(QuadraticLoss(), np.zeros(N), 100, lr=0.2))
    with pytest.raises(fz.FG2UValueError, match="alpha"):
        fz.Neumann(terms=30, alpha=2.0).estimate(problem, PHI)


def test_phase_one_estimators_explain_what_they_need():
    ridge = RidgeHyperproblem(num_features=N, rng=0)
    numpy_only = ridge.problem()
    torch_no_truncation = ridge.problem(torch_inner=True)
    for problem in (numpy_only, torch_no_truncation):
        with pytest.raises(fz.FG2UValueError, match="backprop_steps"):
            fz.TRGU(backprop_steps=3).estimate(problem, PHI)
        with pytest.raises(fz.FG2UValueError, match="inner_loss"):
            fz.Neumann(terms=3).estimate(problem, PHI)
    with pytest.raises(fz.FG2UValueError, match="alpha"):
        fz.Neumann(terms=3, inner_loss=QuadraticLoss()).estimate(numpy_only, PHI)
    with pytest.raises(fz.FG2UValueError, match="`backprop_steps`"):
        fz.TRGU(backprop_steps=0)
    with pytest.raises(fz.FG2UValueError, match="`terms`"):
        fz.Neumann(terms=0)
    with pytest.raises(fz.FG2UValueError, match="`alpha`"):
        fz.Neumann(alpha=-1.0)


# -- memory ---------------------------------------------------------------------------------
def test_fg2u_memory_is_flat_in_depth_while_rgu_grows():
    # Measured, not timed: resident memory a fresh process adds during one estimate
    # (peak RSS reset through /proc/self/clear_refs, heap trimmed first, glibc told to
    # map every tensor above 128 KiB separately so the RSS follows live tensors); see
    # benchmarks/memory.py. Problem: M = N = 4000 ridge, SGD, float64, FG2U b = 2.
    from benchmarks.memory import can_reset_peak, run_case, run_cases

    size, lo, hi = 4000, 30, 300
    cases = [("FG2U", lo), ("FG2U", hi), ("RGU", lo), ("RGU", hi)]
    opts = dict(size=size, directions=2, timeout=300)
    if can_reset_peak():
        records = run_cases(cases, **opts)
    else:
        records = [run_case(name, T, **opts) for name, T in cases]
    peak = {(r["estimator"], r["T"]): r["peak_mb"] for r in records}
    vector_mb = size * 8 / 2**20
    # RGU keeps at least theta_t (one M-vector) for every extra step ...
    assert peak["RGU", hi] - peak["RGU", lo] >= (hi - lo) * vector_mb, peak
    # ... while FG2U's peak does not move with T (10 % + 0.25 MB slack for the allocator).
    assert abs(peak["FG2U", hi] - peak["FG2U", lo]) <= 0.1 * peak["FG2U", lo] + 0.25, peak
    assert peak["RGU", hi] >= 10 * peak["FG2U", hi], peak
