"""Statistical and exactness tests of the estimators.

Tolerances of the statistical tests come from the estimator's own Monte-Carlo
standard error (fixed seeds, so each test is deterministic).
"""

import numpy as np
import pytest
import torch

import fg2u_zo as fz
from fg2u_zo.testing import RidgeHyperproblem, UnrolledQuadratic

FAMILIES = fz.DIRECTION_FAMILIES


@pytest.fixture(scope="module")
def ridge():
    return RidgeHyperproblem(num_features=5, rng=3)


def _mean_and_se(samples):
    samples = np.asarray(samples)
    return samples.mean(axis=0), samples.std(axis=0, ddof=1) / np.sqrt(len(samples))


def _assert_unbiased(estimates, truth):
    mean, se = _mean_and_se(estimates)
    z = np.abs(mean - truth) / se
    assert np.all(z < 5), f"bias beyond 5 standard errors: z = {z}"
    # The test must also be sharp: the spread is small compared with the signal.
    assert np.linalg.norm(se) < 0.2 * np.linalg.norm(truth)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scheme", ["central", "forward"])
def test_fg2uzo_unbiased_on_ridge(ridge, family, scheme):
    phi = np.array([0.5, -0.3, 1.0, 0.0, 2.0])
    truth = ridge.hypergradient(phi)
    problem = ridge.problem()
    # A fixed step: the noise probe of step="auto" is tested elsewhere, and this loop
    # runs 400 estimates. Bias O(h^2) (central) or O(h) (forward) is far below the SE.
    step = 1e-5 if scheme == "central" else 1e-7
    est = fz.FG2UZO(num_directions=2, scheme=scheme, directions=family, step=step)
    rng = np.random.default_rng(11)
    grads = [est.estimate(problem, phi, rng=rng).grad for _ in range(400)]
    if family == "coordinate" or family == "orthogonal":
        # Still random (b = 2 < N = 5), unbiased by symmetry.
        assert np.std(np.asarray(grads), axis=0).max() > 0
    _assert_unbiased(grads, truth)


@pytest.mark.parametrize("family", FAMILIES)
def test_antithetic_and_blackbox_unbiased(ridge, family):
    phi = np.array([0.5, -0.3, 1.0, 0.0, 2.0])
    truth = ridge.hypergradient(phi)
    problem = ridge.problem()
    rng = np.random.default_rng(5)
    est = fz.FG2UZO(num_directions=4, directions=family, antithetic=True, step=1e-5)
    _assert_unbiased([est.estimate(problem, phi, rng=rng).grad for _ in range(300)], truth)
    bb = fz.BlackBoxES(num_directions=4, directions=family, step=1e-5)
    _assert_unbiased([bb.estimate(problem, phi, rng=rng).grad for _ in range(600)], truth)


def test_fg2u_unbiased_and_exact_with_full_basis(ridge):
    phi = np.array([0.5, -0.3, 1.0, 0.0, 2.0])
    truth = ridge.hypergradient(phi)
    problem = ridge.problem(torch_inner=True)
    np.testing.assert_allclose(fz.RGU().estimate(problem, phi).grad, truth, rtol=1e-10)
    for family in ("coordinate", "orthogonal"):
        g = fz.FG2U(num_directions=5, directions=family).estimate(problem, phi, rng=0)
        np.testing.assert_allclose(g.grad, truth, rtol=1e-9, atol=1e-15)
        assert np.all(g.stderr == 0)  # a full orthonormal block is exact
    rng = np.random.default_rng(2)
    est = fz.FG2U(num_directions=3, chunk_size=2)
    _assert_unbiased([est.estimate(problem, phi, rng=rng).grad for _ in range(400)], truth)


def test_fg2u_agrees_with_rgu_on_unrolled_solver():
    uq = UnrolledQuadratic(num_params=6, steps=15, rng=1)
    problem = uq.problem()
    phi = np.linspace(-0.5, 0.5, 6)
    exact = fz.RGU().estimate(problem, phi).grad
    full = fz.FG2U(num_directions=6, directions="coordinate").estimate(problem, phi, rng=0)
    np.testing.assert_allclose(full.grad, exact, rtol=1e-10, atol=1e-14)
    looped = fz.FG2U(num_directions=6, directions="coordinate", vectorize=False).estimate(
        problem, phi, rng=0)
    np.testing.assert_allclose(looped.grad, full.grad, rtol=1e-12)
    rng = np.random.default_rng(9)
    grads = [fz.FG2U(num_directions=4).estimate(problem, phi, rng=rng).grad for _ in range(150)]
    _assert_unbiased(grads, exact)


def test_gaussian_mse_matches_theory(ridge):
    # E||g_hat - g||^2 = (N + 1) ||p||^2 / b for the projected term p = g - d_phi f.
    phi = np.array([0.5, -0.3, 1.0, 0.0, 2.0])
    problem = ridge.problem(torch_inner=True)
    truth = ridge.hypergradient(phi)
    _, _, direct = problem.outer_parts(ridge.inner(phi), phi)
    p = truth - direct
    n, b = phi.size, 4
    theory = (n + 1) * np.dot(p, p) / b
    rng = np.random.default_rng(4)
    est = fz.FG2U(num_directions=b)
    sq = np.array([np.sum((est.estimate(problem, phi, rng=rng).grad - truth) ** 2)
                   for _ in range(1200)])
    mse, se = sq.mean(), sq.std(ddof=1) / np.sqrt(len(sq))
    assert abs(mse - theory) < 5 * se, (mse, theory, se)


def test_reported_stderr_is_calibrated(ridge):
    phi = np.array([0.5, -0.3, 1.0, 0.0, 2.0])
    truth = ridge.hypergradient(phi)
    problem = ridge.problem()
    rng = np.random.default_rng(8)
    z = []
    for _ in range(300):
        g = fz.FG2UZO(num_directions=32, step=1e-5).estimate(problem, phi, rng=rng)
        z.append((g.grad - truth) / g.stderr)
    rms = np.sqrt(np.mean(np.square(z)))
    # z is t-distributed with 31 degrees of freedom: rms ~ sqrt(31/29) = 1.03; the
    # bounds leave room for the Monte-Carlo error of 1500 draws (about 3% here).
    assert 0.9 < rms < 1.2, rms


def test_finite_differences_converge_to_exact_with_the_right_order():
    uq = UnrolledQuadratic(num_params=5, steps=30, rng=0)
    problem = uq.problem()
    phi = 0.1 * np.ones(5)
    exact = fz.FG2U(num_directions=8).estimate(problem, phi, rng=1).grad
    steps = np.array([1e-1, 3e-2, 1e-2, 3e-3, 1e-3])
    slopes = {}
    for scheme in ("forward", "central"):
        errs = []
        for h in steps:
            zo = fz.FG2UZO(num_directions=8, scheme=scheme, step=h).estimate(problem, phi, rng=1)
            errs.append(np.linalg.norm(zo.grad - exact) / np.linalg.norm(exact))
        slopes[scheme] = np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert abs(slopes["forward"] - 1) < 0.1, slopes
    assert abs(slopes["central"] - 2) < 0.1, slopes
    auto = fz.FG2UZO(num_directions=8, scheme="central").estimate(problem, phi, rng=1)
    assert np.linalg.norm(auto.grad - exact) / np.linalg.norm(exact) <= 1e-6


def test_nfev_and_keywords_reach_the_solver(ridge):
    calls = []

    def solver(phi, *, warm_start=None, seed=None):
        calls.append((phi.copy(), None if warm_start is None else warm_start.copy(), seed))
        return ridge.inner(phi)

    problem = fz.BilevelProblem(inner=solver, outer=ridge.outer)
    phi = np.zeros(5)
    # A fixed step: step="auto" would add the noise probe's solves (tests/test_noise.py).
    g = fz.FG2UZO(num_directions=3, scheme="central", step=1e-6).estimate(problem, phi, rng=0)
    assert g.nfev == len(calls) == 2 * 3 + 1
    base = calls[0]
    assert base[1] is None
    assert all(np.array_equal(c[1], g.theta) for c in calls[1:])
    assert len({c[2] for c in calls}) == 1  # one common seed for the whole estimate
    calls.clear()
    g = fz.FG2UZO(num_directions=3, scheme="forward", step=1e-6).estimate(problem, phi, rng=0)
    assert g.nfev == len(calls) == 3 + 1
    # the perturbations have the requested Euclidean length
    np.testing.assert_allclose([np.linalg.norm(c[0] - phi) for c in calls[1:]], g.step)

    def plain(phi):  # no warm_start / seed keywords: still works
        return ridge.inner(phi)

    g2 = fz.FG2UZO(num_directions=3, scheme="forward", step=1e-6).estimate(
        fz.BilevelProblem(inner=plain, outer=ridge.outer), phi, rng=0)
    np.testing.assert_array_equal(g.grad, g2.grad)


def test_same_rng_same_estimate_across_zo_and_exact(ridge):
    phi = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    p = ridge.problem(torch_inner=True)
    a = fz.FG2UZO(num_directions=4).estimate(p, phi, rng=3)
    b = fz.FG2UZO(num_directions=4).estimate(p, phi, rng=3)
    np.testing.assert_array_equal(a.grad, b.grad)
    c = fz.FG2U(num_directions=4).estimate(p, phi, rng=3)
    np.testing.assert_allclose(a.grad, c.grad, rtol=1e-6)  # same directions


def test_backward_fills_grad_for_torch_optimizers(ridge):
    problem = ridge.problem()
    phi = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    est = fz.FG2UZO(num_directions=5, directions="coordinate")
    res = est.backward(problem, phi, rng=0)
    np.testing.assert_allclose(phi.grad.numpy(), res.grad)
    est.backward(problem, phi, rng=0)
    np.testing.assert_allclose(phi.grad.numpy(), 2 * res.grad)  # accumulates like autograd
    opt = torch.optim.Adam([phi], lr=0.1)
    first = None
    for _ in range(40):
        opt.zero_grad()
        r = est.backward(problem, phi, rng=0)
        first = r.value if first is None else first
        opt.step()
    assert r.value < first


def test_check_meta_gradient(ridge):
    phi = np.zeros(5)
    chk = fz.check_meta_gradient(ridge.problem(torch_inner=True), phi,
                                 estimator=fz.FG2UZO(num_directions=5, directions="orthogonal"))
    assert chk.reference.estimator == "RGU"
    assert chk.rel_err < 1e-7 and chk.cosine > 1 - 1e-12
    chk = fz.check_meta_gradient(ridge.problem(), phi)
    assert chk.reference.estimator == "CoordinateFD"
    assert chk.estimate.estimator == "FG2UZO" and 0 < chk.cosine <= 1
    assert "rel_err" in str(chk)


def test_coordinate_fd_matches_closed_form(ridge):
    phi = np.array([0.5, -0.3, 1.0, 0.0, 2.0])
    truth = ridge.hypergradient(phi)
    for scheme, rtol in (("central", 1e-8), ("forward", 1e-5)):
        g = fz.CoordinateFD(scheme=scheme).estimate(ridge.problem(), phi)
        assert np.linalg.norm(g.grad - truth) <= rtol * np.linalg.norm(truth)
        # step="auto": the noise probe's solves come on top
        assert g.nfev == (2 if scheme == "central" else 1) * 5 + 1 + g.noise.nfev
    bb = fz.CoordinateFD(through="value").estimate(ridge.problem(), phi)
    np.testing.assert_allclose(bb.grad, truth, rtol=1e-5)
