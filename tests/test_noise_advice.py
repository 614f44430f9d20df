"""The NoiseWarning: once per run, at the user's line, only when it matters
(fg2u_zo.noise.advice)."""

import warnings

import numpy as np
import pytest

import fg2u_zo as fz
from fg2u_zo.noise.advice import NOISE_NO_CHANGE, NOISE_PRECISION, WARNING_THRESHOLD
from fg2u_zo.testing import RidgeHyperproblem

PHI = np.array([0.5, -0.3, 1.0, 0.0, 2.0])
RIDGE = RidgeHyperproblem(num_features=5, rng=3)


def printed_solver(digits):
    def solver(phi, **_):
        return np.array([float(f"{v:.{digits - 1}e}") for v in RIDGE.inner(phi)])
    return solver


def problem(digits):
    return fz.BilevelProblem(inner=printed_solver(digits), outer=RIDGE.outer)


def noise_warnings(caught):
    return [w for w in caught if issubclass(w.category, fz.NoiseWarning)
            and w.category is not fz.ZeroDifferenceWarning]


def test_a_run_that_reprobes_is_warned_once():
    # 4 printed digits: the predicted error of a forward difference is ~0.1
    est = fz.FG2UZO(num_directions=2, scheme="forward")
    warned = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(3):  # noise=None: every estimate probes again
            g = est.estimate(problem(4), PHI + 0.01 * k, rng=k, warned=warned)
            assert g.noise.relative_error("forward") > WARNING_THRESHOLD
    assert len(noise_warnings(caught)) == 1 and warned == {NOISE_PRECISION}
    # the same loop without a set warns at every probe
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(3):
            est.estimate(problem(4), PHI + 0.01 * k, rng=k)
    assert len(noise_warnings(caught)) == 3


def _user_code(est, prob):
    """Stands for a user's script: the warning must point here, not into fg2u_zo."""
    return est.estimate(prob, PHI, rng=0)


def test_the_warning_points_at_the_users_line():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _user_code(fz.FG2UZO(num_directions=2, scheme="forward"), problem(4))
        fz.estimate_noise(problem(4), PHI, rng=0, scheme="forward")
    found = noise_warnings(caught)
    assert len(found) == 2
    assert all(w.filename == __file__ for w in found), [w.filename for w in found]
    assert found[0].lineno == _user_code.__code__.co_firstlineno + 2


def test_a_small_predicted_error_is_not_warned_about():
    # 6 printed digits, central: a predicted error ~1e-3 is below the threshold
    with warnings.catch_warnings():
        warnings.simplefilter("error", fz.NoiseWarning)
        g = fz.FG2UZO(num_directions=2).estimate(problem(6), PHI, rng=0)
    assert g.noise.method == "digits" and g.noise.output_precision == 6
    assert g.noise.relative_error("central") < WARNING_THRESHOLD


def test_outputs_that_never_change_are_warned_once_per_set():
    warned = set()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(2):
            fz.estimate_noise(problem(2), PHI, rng=k, spacing=1e-9, max_tries=2,
                              warned=warned)
    assert len(noise_warnings(caught)) == 1 and warned == {NOISE_NO_CHANGE}


def test_warned_must_be_a_set():
    with pytest.raises(TypeError, match="warned"):
        fz.FG2UZO(num_directions=2).estimate(problem(6), PHI, warned=[])
    with pytest.raises(TypeError, match="warned"):
        fz.estimate_noise(problem(6), PHI, warned="once")


def test_a_piecewise_constant_response_is_named_as_such():
    # Issue 21, item 17: on a pipeline whose response is piecewise constant in a
    # hyperparameter (a tree model's feature fraction) the warning spoke of printed
    # digits; full-precision outputs with exact ties are a non-smooth response.
    def tree(phi):
        return np.exp(np.floor(phi * 20) / 20) + 0.1 * np.floor(phi * 7) / 7

    prob = fz.BilevelProblem(inner=tree, outer=lambda t, ph: 0.5 * (t ** 2).sum())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = fz.estimate_noise(prob, np.array([0.31, -0.22, 0.55]), rng=0)
    assert est.flat_fraction >= 0.25
    (message,) = [str(w.message) for w in noise_warnings(caught)]
    assert "not smooth" in message and "BlackBoxES" in message
    assert "digits" not in message.split("significant")[0]


def test_the_advice_recommends_only_what_its_prediction_supports():
    # Issue 21, item 17: it recommended scheme='central' while predicting central to be
    # worse (forward 1.7e-2, central 1.1e-1).
    from dataclasses import replace

    from fg2u_zo.noise.advice import warn_about_noise

    est = fz.estimate_noise(problem(6), PHI, rng=0, warn=False)
    worse = replace(est, status="ok", slope=1.0, predicted_error_forward=1.7e-2,
                    predicted_error_central=1.1e-1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_about_noise(worse, "forward")
    (message,) = [str(w.message) for w in noise_warnings(caught)]
    assert "central" not in message and "1.7e-02" in message
    better = replace(worse, predicted_error_central=1e-3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_about_noise(better, "forward")
    (message,) = [str(w.message) for w in noise_warnings(caught)]
    assert "use scheme='central' (predicted 1.0e-03)" in message
