"""A fixed step below the output resolution (fg2u_zo.noise.resolution).

``step=1e-17`` at ``phi ~ 1`` rounds ``phi + h u`` back to ``phi``; ``step=1e-7`` on a
solver that prints 6 significant digits moves no output by more than one unit of its
last digit. Either gradient carries no information: the estimate must say so
(``zero_differences``, ``degenerate``) and warn once, with the fix.
"""

import warnings

import numpy as np
import pytest

import fg2u_zo as fz
from fg2u_zo.noise.advice import ZERO_DIFFERENCES
from fg2u_zo.noise.steps import default_step
from fg2u_zo.testing import RidgeHyperproblem

PHI = np.array([1.0, 0.9, 1.1])
RIDGE = RidgeHyperproblem(num_features=3, rng=2)


def printed(x, digits):
    return np.array([float(f"{v:.{digits - 1}e}") for v in np.ravel(x)])


def six_digits(phi, **_):
    return printed(RIDGE.inner(phi), 6)


def problem(inner=RIDGE.inner, differentiable=True):
    return fz.BilevelProblem(inner=inner,
                             outer=RIDGE.outer if differentiable else RIDGE.outer_numpy,
                             differentiable_outer=differentiable)


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_a_step_below_the_ulp_of_phi_is_degenerate_and_warned(scheme):
    est = fz.FG2UZO(num_directions=4, scheme=scheme, step=1e-17)
    with pytest.warns(fz.ZeroDifferenceWarning, match="step='auto'") as caught:
        g = est.estimate(problem(), PHI, rng=0)
    assert g.degenerate and g.zero_differences == g.num_directions == 4
    np.testing.assert_array_equal(g.grad, 0.0)  # the outer loss has no direct phi term
    # the fix names a step above double-precision rounding: the full-precision default
    suggested = float(str(caught[0].message).split("at least ~")[1].rstrip("."))
    np.testing.assert_allclose(suggested, default_step(PHI, scheme), rtol=0.05)
    assert "exactly zero" in str(caught[0].message)
    assert "degenerate=True" in repr(g)


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_a_step_below_six_printed_digits_is_degenerate(scheme):
    est = fz.FG2UZO(num_directions=6, scheme=scheme, step=1e-7)
    with pytest.warns(fz.ZeroDifferenceWarning) as caught:
        g = est.estimate(problem(six_digits), PHI, rng=1)
    assert g.degenerate
    message = str(caught[0].message)
    assert "exactly zero" in message or "6 significant digits" in message
    # A step the fix suggests is informative again: no warning, the gradient is close.
    suggested = float(message.split("at least ~")[1].rstrip("."))
    with warnings.catch_warnings():
        warnings.simplefilter("error", fz.ZeroDifferenceWarning)
        good = fz.FG2UZO(num_directions=3, directions="coordinate", scheme=scheme,
                         step=suggested).estimate(problem(six_digits), PHI, rng=1)
    assert good.zero_differences == 0 and not good.degenerate
    truth = RIDGE.hypergradient(PHI)
    assert np.linalg.norm(good.grad - truth) < 0.1 * np.linalg.norm(truth)


def test_one_unit_of_the_last_digit_is_below_the_resolution_but_two_are_not():
    # Outputs printed with 6 digits whose change is set exactly: one unit, then two.
    unit = 1e-5  # of values in [1, 10)

    def solver(phi, **_):
        moved = phi[0] != 1.0
        return np.array([1.5 + (units * unit if moved else 0.0), 2.25])

    for units, degenerate in ((1, True), (2, False)):
        est = fz.FG2UZO(num_directions=1, directions="coordinate", scheme="forward",
                        step=1e-3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            g = est.estimate(fz.BilevelProblem(
                inner=solver, outer=lambda th, ph: (th ** 2).sum(), num_params=1),
                np.array([1.0]), rng=0)
        assert g.degenerate is degenerate, units
        assert len([w for w in caught if w.category is fz.ZeroDifferenceWarning]) == degenerate


def test_a_solver_that_ignores_one_coordinate_is_not_degenerate():
    def ignores_first(phi, **_):
        return RIDGE.inner(np.array([0.0, phi[1], phi[2]]))

    with warnings.catch_warnings():
        warnings.simplefilter("error", fz.ZeroDifferenceWarning)
        g = fz.FG2UZO(num_directions=3, directions="coordinate", step=1e-4).estimate(
            problem(ignores_first), PHI, rng=0)
    assert g.zero_differences == 1 and not g.degenerate


@pytest.mark.parametrize("make", [
    lambda: fz.BlackBoxES(num_directions=3, step=1e-17),
    lambda: fz.CoordinateFD(step=1e-17),
])
def test_blackbox_and_coordinate_fd_report_it_too(make):
    with pytest.warns(fz.ZeroDifferenceWarning):
        g = make().estimate(problem(differentiable=False), PHI, rng=0)
    assert g.degenerate


def test_the_warning_is_shown_once_per_warned_set_and_at_the_callers_line():
    est = fz.FG2UZO(num_directions=2, step=1e-17)
    warned = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(3):
            assert est.estimate(problem(), PHI, rng=k, warned=warned).degenerate
    zero = [w for w in caught if w.category is fz.ZeroDifferenceWarning]
    assert len(zero) == 1 and warned == {ZERO_DIFFERENCES}
    assert zero[0].filename == __file__
    # without a set, every estimate warns (what Python's filters then make of it)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(2):
            est.estimate(problem(), PHI, rng=k)
    assert len(caught) == 2


def test_healthy_estimates_have_no_zero_differences():
    with warnings.catch_warnings():
        warnings.simplefilter("error", fz.ZeroDifferenceWarning)
        for est in (fz.FG2UZO(num_directions=4), fz.FG2UZO(num_directions=4, step=1e-6),
                    fz.FG2U(num_directions=4)):
            g = est.estimate(fz.BilevelProblem(inner=RIDGE.inner, outer=RIDGE.outer,
                                               inner_torch=RIDGE.inner_torch), PHI, rng=0)
            assert g.zero_differences == 0 and not g.degenerate
