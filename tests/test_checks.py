"""check_meta_gradient's verdict (fg2u_zo.checks): a tolerance from the estimator's own
standard error, a pass that can fail."""

import warnings

import numpy as np
import pytest

import fg2u_zo as fz
from fg2u_zo.checks import NUM_STDERR, RTOL
from fg2u_zo.testing import RidgeHyperproblem

PHI = np.array([0.5, -0.3, 1.0, 0.0, 2.0])
RIDGE = RidgeHyperproblem(num_features=5, rng=3)


def test_an_unbiased_estimate_passes_within_its_own_standard_error():
    chk = fz.check_meta_gradient(RIDGE.problem(torch_inner=True), PHI,
                                 estimator=fz.FG2UZO(num_directions=16, step=1e-6), rng=0)
    se = np.linalg.norm(chk.estimate.stderr)
    ref_norm = np.linalg.norm(chk.reference.grad)
    assert chk.reference.estimator == "RGU" and se > 0
    # the tolerance is taken from the estimate's standard error (RGU's is zero)
    np.testing.assert_allclose(chk.tolerance, NUM_STDERR * se + RTOL * ref_norm)
    assert chk.passed
    assert np.linalg.norm(chk.estimate.grad - chk.reference.grad) <= chk.tolerance
    assert "verdict   : PASSED" in str(chk)


def test_a_biased_black_box_fails():
    # The black box returns 1.3 times the solution the torch reference differentiates:
    # a bias of 30% that no standard error of a 5-direction orthogonal frame explains.
    def wrong(phi, **_):
        return 1.3 * RIDGE.inner(phi)

    problem = fz.BilevelProblem(inner=wrong, inner_torch=RIDGE.inner_torch, outer=RIDGE.outer)
    chk = fz.check_meta_gradient(problem, PHI, estimator=fz.FG2UZO(
        num_directions=5, directions="orthogonal", step=1e-6))
    assert not chk.passed and chk.rel_err > 0.05
    assert "verdict   : FAILED" in str(chk)


def test_a_degenerate_estimate_fails_instead_of_printing_nan():
    with pytest.warns(fz.ZeroDifferenceWarning):
        chk = fz.check_meta_gradient(RIDGE.problem(), PHI,
                                     estimator=fz.FG2UZO(num_directions=4, step=1e-17))
    assert not chk.passed and np.isnan(chk.cosine)
    text = str(chk)
    assert "nan" not in text.split("cosine    :")[1].splitlines()[0]
    assert "FAILED" in text and "step='auto'" in text


def test_a_single_direction_gives_no_verdict():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fz.NoiseWarning)
        chk = fz.check_meta_gradient(RIDGE.problem(), PHI,
                                     estimator=fz.FG2UZO(num_directions=1, step=1e-6))
    assert not chk.passed and "standard error" in chk.reason


def test_tolerances_are_validated():
    with pytest.raises(ValueError, match="rtol"):
        fz.check_meta_gradient(RIDGE.problem(), PHI, rtol=-1.0)
