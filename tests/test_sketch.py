"""The sketch an estimate keeps on request: ``Y ~ J_S U^T`` (fg2u_zo.estimators.reductions).

On a linear inner solver ``S(phi) = A phi + c`` a finite difference has no truncation
error, so ``Y`` must equal ``A U^T`` up to the rounding of the solves and of the
points; the bound used is derived below from the magnitudes involved.
"""

import numpy as np
import pytest
import torch

import fg2u_zo as fz

EPS = np.finfo(np.float64).eps
N, M = 4, 6
A = np.random.default_rng(7).standard_normal((M, N))
C = np.linspace(-1.0, 1.0, M)
PHI = np.array([0.7, -1.2, 0.3, 2.0])


def linear(phi, **_):
    return A @ phi + C


def outer(theta, phi):
    return 0.5 * (theta ** 2).sum() + 0.1 * (phi ** 2).sum()


def _drawn_directions(rng_seed, family, b, antithetic=False):
    """The directions an estimate with ``rng=rng_seed`` draws (seed first, then V)."""
    rng = np.random.default_rng(rng_seed)
    rng.integers(2**31 - 1)
    return fz.sample_directions(family, N, b, rng, antithetic=antithetic)


def _roundoff_bound(h, scheme):
    """Rounding error of ``Y`` on the linear solver.

    Each output ``A p + c`` is computed with a relative error of a few ulps of its
    terms, ``<= k eps (|A| |p| + |c|)`` with k ~ N; the point ``phi + h u`` itself is
    rounded by ``eps |phi|``, which ``A`` carries into the output. Dividing the
    difference of two such outputs by ``h`` (forward) or ``2h`` (central) gives
    ``2 (N + 2) eps (|A| (|phi| + h) + |c|) / h`` per entry as a safe bound.
    """
    scale = np.abs(A) @ (np.abs(PHI) + h) + np.abs(C)
    denominator = h if scheme == "forward" else 2.0 * h
    return 2 * (N + 2) * EPS * scale[:, None] / denominator


@pytest.mark.parametrize("scheme", ["forward", "central"])
@pytest.mark.parametrize("family", ["gaussian", "rademacher", "orthogonal"])
def test_fg2uzo_sketch_is_A_times_U_on_a_linear_solver(scheme, family):
    h = 1e-3
    problem = fz.BilevelProblem(inner=linear, outer=outer)
    est = fz.FG2UZO(num_directions=5, scheme=scheme, step=h, directions=family)
    g = est.estimate(problem, PHI, rng=3, keep_sketch=True)
    sk = g.sketch
    assert isinstance(sk, fz.Sketch)
    V = _drawn_directions(3, family, 5)
    np.testing.assert_array_equal(sk.directions, V / np.linalg.norm(V, axis=1)[:, None])
    np.testing.assert_allclose(np.linalg.norm(sk.directions, axis=1), 1.0, rtol=4 * EPS)
    assert sk.step == h and sk.scheme == scheme
    np.testing.assert_array_equal(sk.theta0, linear(PHI))
    assert sk.Y.shape == (M, 5) and sk.mask.all()
    err = np.abs(sk.Y - A @ sk.directions.T)
    assert np.all(err <= _roundoff_bound(h, scheme)), err.max()
    # A perturbation of the solver by one ulp-sized bias would break this: the bound
    # is far below the size of Y itself.
    assert _roundoff_bound(h, scheme).max() < 1e-9 * np.abs(A @ sk.directions.T).max()


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_blackbox_es_keeps_the_inner_sketch_too(scheme):
    h = 1e-3
    problem = fz.BilevelProblem(inner=linear, outer=lambda theta, phi: float((theta ** 2).sum()),
                                differentiable_outer=False)
    g = fz.BlackBoxES(num_directions=3, scheme=scheme, step=h).estimate(
        problem, PHI, rng=1, keep_sketch=True)
    err = np.abs(g.sketch.Y - A @ g.sketch.directions.T)
    assert np.all(err <= _roundoff_bound(h, scheme))


def test_coordinate_fd_sketch_is_the_jacobian():
    h = 1e-3
    problem = fz.BilevelProblem(inner=linear, outer=outer)
    g = fz.CoordinateFD(scheme="central", step=h).estimate(problem, PHI, keep_sketch=True)
    np.testing.assert_array_equal(g.sketch.directions, np.eye(N))
    assert np.all(np.abs(g.sketch.Y - A) <= _roundoff_bound(h, "central"))


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_keeping_the_sketch_changes_no_number_of_the_estimate(scheme):
    problem = fz.BilevelProblem(inner=lambda phi: np.sin(A @ phi), outer=outer)
    est = fz.FG2UZO(num_directions=6, scheme=scheme, step=1e-4)
    plain = est.estimate(problem, PHI, rng=5)
    kept = est.estimate(problem, PHI, rng=5, keep_sketch=True)
    assert plain.sketch is None
    np.testing.assert_array_equal(plain.grad, kept.grad)
    np.testing.assert_array_equal(plain.stderr, kept.stderr)
    assert plain.value == kept.value and plain.nfev == kept.nfev
    # The sketch carries the projection the gradient was built from:
    # grad = d_phi f + (1/b) sum_i <g_theta, Y_i> ||v_i|| v_i.
    V = _drawn_directions(5, "gaussian", 6)
    norms = np.linalg.norm(V, axis=1)
    c = (kept.theta.ravel() @ kept.sketch.Y) * norms
    np.testing.assert_allclose(kept.grad, 0.2 * PHI + (c[:, None] * V).mean(axis=0),
                               rtol=1e-10)


def test_default_path_has_no_sketch():
    problem = fz.BilevelProblem(inner=linear, outer=outer)
    for est in (fz.FG2UZO(num_directions=2, step=1e-4), fz.CoordinateFD(step=1e-4),
                fz.BlackBoxES(num_directions=2, step=1e-4)):
        assert est.estimate(problem, PHI, rng=0).sketch is None


def test_keep_sketch_must_be_a_bool():
    problem = fz.BilevelProblem(inner=linear, outer=outer)
    with pytest.raises(TypeError, match="keep_sketch"):
        fz.FG2UZO(num_directions=2, step=1e-4).estimate(problem, PHI, keep_sketch="yes")


def _failing_at(bad_point):
    def solver(phi, **_):
        if np.array_equal(phi, bad_point):
            raise RuntimeError("diverged")
        return linear(phi)
    return solver


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_a_failed_direction_is_a_nan_column_not_zeros(scheme):
    h, b = 1e-3, 4
    V = _drawn_directions(2, "gaussian", b)
    U = V / np.linalg.norm(V, axis=1)[:, None]
    # The plan's points are phi + (sign h) u_i, built exactly like this.
    problem = fz.BilevelProblem(inner=_failing_at(PHI + h * U[1]), outer=outer)
    g = fz.FG2UZO(num_directions=b, scheme=scheme, step=h).estimate(
        problem, PHI, rng=2, keep_sketch=True, max_retries=0)
    assert [f.direction for f in g.failures] == [1]
    np.testing.assert_array_equal(g.sketch.mask, [True, False, True, True])
    assert np.isnan(g.sketch.Y[:, 1]).all()
    assert np.isfinite(g.sketch.Y[:, [0, 2, 3]]).all()
    assert g.sketch.num_directions == 3 == g.num_directions
    U_ok, Y_ok = g.sketch.successful()
    assert np.all(np.abs(Y_ok - A @ U_ok.T) <= _roundoff_bound(h, scheme))


def test_an_antithetic_pair_is_masked_whole():
    h, b = 1e-3, 4
    V = _drawn_directions(4, "gaussian", b, antithetic=True)
    U = V / np.linalg.norm(V, axis=1)[:, None]
    problem = fz.BilevelProblem(inner=_failing_at(PHI + h * U[2]), outer=outer)
    g = fz.FG2UZO(num_directions=b, scheme="forward", step=h, antithetic=True).estimate(
        problem, PHI, rng=4, keep_sketch=True, max_retries=0)
    np.testing.assert_array_equal(g.sketch.mask, [True, True, False, False])
    assert np.isnan(g.sketch.Y[:, 2:]).all() and np.isfinite(g.sketch.Y[:, :2]).all()


def test_exact_fg2u_sketch_is_the_jvp_on_a_torch_linear_solver():
    A_t, c_t = torch.as_tensor(A), torch.as_tensor(C)
    problem = fz.BilevelProblem(inner=linear, inner_torch=lambda phi: A_t @ phi + c_t,
                                outer=outer)
    for vectorize in (True, False):
        est = fz.FG2U(num_directions=5, vectorize=vectorize, chunk_size=2)
        plain = est.estimate(problem, PHI, rng=0)
        g = est.estimate(problem, PHI, rng=0, keep_sketch=True)
        sk = g.sketch
        assert plain.sketch is None
        np.testing.assert_array_equal(plain.grad, g.grad)
        assert sk.scheme == "exact" and sk.step is None and sk.mask.all()
        V = _drawn_directions(0, "gaussian", 5)
        np.testing.assert_allclose(sk.directions, V / np.linalg.norm(V, axis=1)[:, None],
                                   rtol=0, atol=0)
        np.testing.assert_allclose(np.linalg.norm(sk.directions, axis=1), 1.0, rtol=4 * EPS)
        np.testing.assert_array_equal(sk.theta0, A @ PHI + C)
        # jvp of a linear map is A u up to the rounding of one matrix-vector product
        # and of the division by ||v||.
        bound = (N + 2) * EPS * (np.abs(A) @ np.abs(sk.directions.T))
        assert np.all(np.abs(sk.Y - A @ sk.directions.T) <= bound)
