"""Tests of solvers.SklearnFit: hyperparameters and sample weights of a fit from phi."""

from __future__ import annotations

import pickle
import sys
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import ElasticNet, LogisticRegression, Ridge, SGDRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from _parallel_checks import assert_dask_matches_serial, assert_loky_matches_serial
from fg2u_zo.errors import FG2UTypeError, FG2UValueError, InnerSolverError
from solvers import SklearnFit

RNG = np.random.default_rng(0)
X = RNG.normal(size=(40, 3))
Y = X @ np.array([1.0, 2.0, -3.0]) + 0.5 + 0.1 * RNG.normal(size=40)
LABELS = (X @ np.array([1.0, -2.0, 0.5]) + 0.3 * RNG.normal(size=40) > 0).astype(int)
X_VAL = RNG.normal(size=(7, 3))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def ridge_closed_form(alpha, w=None):
    """Weighted ridge with an (unpenalized) intercept: centre with the weights, solve."""
    w = np.ones(len(Y)) if w is None else w
    xm, ym = w @ X / w.sum(), w @ Y / w.sum()
    Xc, yc = X - xm, Y - ym
    coef = np.linalg.solve(Xc.T @ (w[:, None] * Xc) + alpha * np.eye(3), Xc.T @ (w * yc))
    return np.append(coef, ym - xm @ coef)


def make_ridge():
    return Ridge(solver="cholesky")


def ridge_params(phi):
    return {"alpha": float(np.exp(phi[0]))}


def random_state_of(est):
    states = [v for k, v in est.get_params(deep=True).items() if k.endswith("random_state")]
    return np.array(states, dtype=float)


# -- known answers ---------------------------------------------------------------------

def test_ridge_with_log_penalty_and_sigmoid_weights_matches_closed_form():
    solver = SklearnFit(Ridge(solver="cholesky"), X, Y, params={"alpha": ("exp", 0)},
                        sample_weight=("sigmoid", slice(1, None)))
    phi = np.concatenate([[np.log(2.5)], RNG.normal(size=40)])
    theta = solver(phi)
    assert theta.shape == (4,)  # coef_ (3,), then intercept_
    np.testing.assert_allclose(theta, ridge_closed_form(2.5, sigmoid(phi[1:])), rtol=1e-10)
    unweighted = SklearnFit(Ridge(solver="cholesky"), X, Y, params={"alpha": ("exp", 0)})
    np.testing.assert_allclose(unweighted(phi[:1]), ridge_closed_form(2.5), rtol=1e-10)


def test_finite_difference_through_the_fit_matches_the_hypergradient():
    # d coef / d log(alpha) = -alpha (Xc^T Xc + alpha I)^-1 coef for ridge.
    solver = SklearnFit(Ridge(solver="cholesky"), X, Y, params={"alpha": ("exp", 0)})
    phi, h = np.array([np.log(2.5)]), 1e-5
    fd = (solver(phi + h) - solver(phi - h)) / (2 * h)
    Xc = X - X.mean(axis=0)
    coef = ridge_closed_form(2.5)[:3]
    exact = -2.5 * np.linalg.solve(Xc.T @ Xc + 2.5 * np.eye(3), coef)
    np.testing.assert_allclose(fd[:3], exact, rtol=1e-7)


def test_prediction_outputs_on_validation_set():
    est = LogisticRegression(tol=1e-10, max_iter=1000)
    phi = np.array([0.3])
    coef = SklearnFit(est, X, LABELS, params={"C": ("exp", 0)})(phi)
    decision = SklearnFit(est, X, LABELS, params={"C": ("exp", 0)}, X_val=X_VAL,
                          output="decision_function")(phi)
    np.testing.assert_allclose(decision, X_VAL @ coef[:3] + coef[3], rtol=1e-10)
    proba = SklearnFit(est, X, LABELS, params={"C": ("exp", 0)}, X_val=X_VAL,
                       output="predict_proba")(phi).reshape(7, 2)
    np.testing.assert_allclose(proba[:, 1], sigmoid(decision), rtol=1e-10)


def test_pipeline_with_step_parameters_and_weights():
    pipe = make_pipeline(StandardScaler(), Ridge(solver="cholesky"))
    w = np.linspace(0.5, 1.5, 40)
    solver = SklearnFit(pipe, X, Y, params={"ridge__alpha": ("exp10", 0)},
                        sample_weight=lambda_free_weights,
                        sample_weight_param="ridge__sample_weight")
    theta = solver(np.array([0.0]))  # alpha = 10**0 = 1
    Xs = StandardScaler().fit_transform(X)
    ref = Ridge(alpha=1.0, solver="cholesky").fit(Xs, Y, sample_weight=w)
    np.testing.assert_allclose(theta, np.append(ref.coef_, ref.intercept_), rtol=1e-10)


def lambda_free_weights(phi):
    return np.linspace(0.5, 1.5, 40)


def test_factory_params_function_and_spec_shorthands():
    phi = np.array([np.log(2.5)])
    solver = SklearnFit(make_ridge, X, Y, params=ridge_params)
    np.testing.assert_allclose(solver(phi), ridge_closed_form(2.5), rtol=1e-10)
    # A one-entry slice gives a float, like an int index.
    sliced = SklearnFit(make_ridge, X, Y, params={"alpha": ("exp", slice(0, 1))})
    np.testing.assert_array_equal(sliced(phi), solver(phi))
    assert sliced.hyperparameters(phi) == {"alpha": pytest.approx(2.5, rel=1e-15)}
    # A transform name alone weights with all of phi.
    w_phi = RNG.normal(size=40)
    weighted = SklearnFit(Ridge(alpha=2.5, solver="cholesky"), X, Y, sample_weight="sigmoid")
    np.testing.assert_allclose(weighted(w_phi), ridge_closed_form(2.5, sigmoid(w_phi)),
                               rtol=1e-10)


def test_seed_sets_every_random_state():
    est = make_pipeline(StandardScaler(), SGDRegressor(random_state=5))
    solver = SklearnFit(est, X, Y, output=random_state_of)
    np.testing.assert_array_equal(solver(np.zeros(1)), [5])  # the estimator's own
    np.testing.assert_array_equal(solver(np.zeros(1), seed=11), [11])
    sgd = SklearnFit(SGDRegressor(tol=None, max_iter=5), X, Y)
    a, b = sgd(np.zeros(1), seed=1), sgd(np.zeros(1), seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sgd(np.zeros(1), seed=2))


# -- warm start and convergence ----------------------------------------------------------

def test_warm_start_presets_coefficients():
    converged = SklearnFit(LogisticRegression(tol=1e-10, max_iter=1000), X, LABELS,
                           params={"C": ("exp", 0)})(np.array([0.0]))
    two_steps = SklearnFit(LogisticRegression(tol=1e-10, max_iter=2), X, LABELS,
                           params={"C": ("exp", 0)})
    with pytest.raises(InnerSolverError) as info:
        two_steps(np.array([0.0]))  # cold: 2 iterations are not enough
    assert info.value.kind == "not_converged"
    # From the solution, 2 iterations are: the warm start was used.
    np.testing.assert_allclose(two_steps(np.array([0.0]), warm_start=converged), converged,
                               atol=1e-9)
    # ElasticNet (coordinate descent) the same way.
    enet = SklearnFit(ElasticNet(tol=1e-12, max_iter=100000), X, Y, params={"alpha": ("exp", 0)})
    ref = enet(np.array([-3.0]))
    short = SklearnFit(ElasticNet(tol=1e-12, max_iter=3), X, Y, params={"alpha": ("exp", 0)})
    with pytest.raises(InnerSolverError):
        short(np.array([-3.0]))
    np.testing.assert_allclose(short(np.array([-3.0]), warm_start=ref), ref, atol=1e-9)
    # Estimators without warm_start ignore it.
    ridge = SklearnFit(Ridge(solver="cholesky"), X, Y)
    np.testing.assert_array_equal(ridge(np.zeros(1), warm_start=np.ones(4)),
                                  ridge(np.zeros(1)))


def test_convergence_warning_policy():
    kwargs = dict(params={"C": ("exp", 0)})
    est = LogisticRegression(tol=1e-10, max_iter=2)
    with pytest.raises(InnerSolverError, match="did not converge") as info:
        SklearnFit(est, X, LABELS, **kwargs)(np.zeros(1))
    assert info.value.kind == "not_converged" and "ITERATIONS" in info.value.detail.upper()
    with pytest.warns(ConvergenceWarning):
        SklearnFit(est, X, LABELS, on_convergence_warning="warn", **kwargs)(np.zeros(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        theta = SklearnFit(est, X, LABELS, on_convergence_warning="ignore",
                           **kwargs)(np.zeros(1))
    assert theta.shape == (4,)


# -- errors ------------------------------------------------------------------------------

def test_argument_errors():
    with pytest.raises(FG2UValueError, match="unknown transform 'log'"):
        SklearnFit(Ridge(), X, Y, params={"alpha": ("log", 0)})
    with pytest.raises(FG2UTypeError, match=r"\(transform, index\)"):
        SklearnFit(Ridge(), X, Y, params={"alpha": "exp"})
    with pytest.raises(FG2UValueError, match="X_val"):
        SklearnFit(Ridge(), X, Y, output="predict")
    with pytest.raises(FG2UValueError, match="`output` must be one of"):
        SklearnFit(Ridge(), X, Y, output="coefficients")
    with pytest.raises(FG2UValueError, match="samples"):
        SklearnFit(Ridge(), X, Y[:5])
    with pytest.raises(FG2UValueError, match="out of range"):
        SklearnFit(Ridge(), X, Y, params={"alpha": ("exp", 3)})(np.zeros(1))
    with pytest.raises(FG2UValueError, match="40 finite weights"):
        SklearnFit(Ridge(), X, Y, sample_weight=("exp", slice(0, 5)))(np.zeros(5))
    with pytest.raises(FG2UValueError, match="cannot set the hyperparameters"):
        SklearnFit(Ridge(), X, Y, params={"lambda_": ("exp", 0)})(np.zeros(1))
    with pytest.raises(FG2UValueError, match="finite"):
        SklearnFit(Ridge(), X, Y)(np.array([np.nan]))


def test_missing_sklearn_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r"pip install 'fg2u-zo\[sklearn\]'"):
        SklearnFit(make_ridge, X, Y)


# -- picklable, parallel -----------------------------------------------------------------

def _solver():
    return SklearnFit(LogisticRegression(tol=1e-10, max_iter=1000), X, LABELS,
                      params={"C": ("exp", 0)}, sample_weight=("softplus", slice(1, None)))


def _points():
    rng = np.random.default_rng(3)
    return [rng.normal(size=41) for _ in range(4)]


def test_pickle_round_trip():
    solver = _solver()
    phi = _points()[0]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(solver))(phi), solver(phi))


@pytest.mark.timeout(120)
def test_loky_matches_serial():
    solver = _solver()
    assert_loky_matches_serial((solver, p) for p in _points())


@pytest.mark.dask
@pytest.mark.timeout(120)
def test_dask_matches_serial(dask_client):
    solver = _solver()
    assert_dask_matches_serial(dask_client, ((solver, p) for p in _points()))
