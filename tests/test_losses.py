"""fz.LeastSquares: its torch value, its residuals and its numpy gradients agree with
each other and with a direct formula; bad arguments are named."""

import pickle

import numpy as np
import pytest
import torch

import fg2u_zo as fz

RNG = np.random.default_rng(0)
M, K, N = 9, 5, 4
DATA = RNG.standard_normal(K)
SELECTION = np.array([0, 2, 3, 7, 8])
WEIGHTS = RNG.uniform(0.5, 2.0, K)
SIGMA = RNG.uniform(0.5, 2.0, K)
PENALTY = RNG.standard_normal((3, N))

CASES = {
    "plain": dict(data=RNG.standard_normal(M)),
    "weighted-sum-ridge": dict(data=DATA, weights=WEIGHTS, selection=SELECTION, scale="sum",
                               regularization=0.3),
    "sigma-penalty": dict(data=DATA, selection=SELECTION, sigma=SIGMA, regularization=0.7,
                          penalty=PENALTY),
    "scalar-weight-and-sigma": dict(data=DATA, weights=2.0, sigma=1.5, selection=SELECTION),
}


def _direct(theta, phi, data, weights=None, selection=None, scale="mean", regularization=0.0,
            sigma=None, penalty=None):
    """The docstring's formula, written out in numpy."""
    sel = theta if selection is None else theta[selection]
    w = 1.0 if weights is None else weights
    s = 1.0 if sigma is None else sigma
    sq = w * ((sel - data) / s) ** 2
    reduced = sq.mean() if scale == "mean" else sq.sum()
    D = np.eye(phi.size) if penalty is None else penalty
    return 0.5 * reduced + 0.5 * regularization * np.sum((D @ phi) ** 2)


@pytest.mark.parametrize("name", sorted(CASES))
def test_value_residuals_and_gradients_agree(name):
    kwargs = CASES[name]
    loss = fz.LeastSquares(**kwargs)
    theta, phi = RNG.standard_normal(M), RNG.standard_normal(N)
    theta_t = torch.tensor(theta, requires_grad=True)
    phi_t = torch.tensor(phi, requires_grad=True)
    value = loss(theta_t, phi_t)
    value.backward()
    truth = _direct(theta, phi, **kwargs)
    # Rounding of a few dozen float64 operations: 1e-13 relative is 500 ulps.
    assert value.item() == pytest.approx(truth, rel=1e-13)
    r = loss.residuals(theta, phi)
    assert float(r @ r) == pytest.approx(truth, rel=1e-13)
    np.testing.assert_allclose(loss.grad_theta(theta), theta_t.grad.numpy(), rtol=1e-13,
                               atol=1e-15)
    np.testing.assert_allclose(loss.grad_phi(phi), np.zeros(N) if phi_t.grad is None
                               else phi_t.grad.numpy(), rtol=1e-13, atol=1e-15)
    if "selection" in kwargs:  # outputs not compared with data get no gradient
        unused = np.setdiff1d(np.arange(M), kwargs["selection"])
        assert np.all(loss.grad_theta(theta)[unused] == 0)


def test_pickles_for_worker_processes():
    loss = fz.LeastSquares(**CASES["sigma-penalty"])
    clone = pickle.loads(pickle.dumps(loss))
    theta, phi = torch.as_tensor(RNG.standard_normal(M)), torch.as_tensor(RNG.standard_normal(N))
    assert clone(theta, phi).item() == loss(theta, phi).item()


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(data=[1.0, np.nan]), fz.FG2UValueError, "`data` must be finite"),
    (dict(data=[[1.0]]), fz.FG2UValueError, "`data` must be 1-D"),
    (dict(data=[1.0, 2.0], weights=[1.0]), fz.FG2UValueError, "`weights` has 1 values for 2"),
    (dict(data=[1.0, 2.0], weights=[1.0, -1.0]), fz.FG2UValueError, r"`weights` must be >= 0"),
    (dict(data=[1.0, 2.0], sigma=0.0), fz.FG2UValueError, r"`sigma` must be > 0"),
    (dict(data=[1.0, 2.0], selection=[0]), fz.FG2UValueError, "`selection` selects 1"),
    (dict(data=[1.0, 2.0], selection=[0.0, 1.0]), fz.FG2UTypeError, "`selection`"),
    (dict(data=[1.0], scale="men"), fz.FG2UValueError, "`scale`.*did you mean 'mean'"),
    (dict(data=[1.0], regularization=-1), fz.FG2UValueError, "`regularization` must be >= 0"),
    (dict(data=[1.0], penalty=[1.0, 2.0]), fz.FG2UValueError, "`penalty` must be a finite 2-D"),
])
def test_bad_arguments_are_named(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fz.LeastSquares(**kwargs)


def test_wrong_number_of_outputs_is_named():
    loss = fz.LeastSquares([1.0, 2.0, 3.0])
    with pytest.raises(fz.FG2UValueError, match="`data` has 3 values but the solver returned 4"):
        loss(torch.zeros(4, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    picked = fz.LeastSquares([1.0, 2.0], selection=[0, 5])
    with pytest.raises(fz.FG2UValueError, match="indexes up to 5 but the solver returned 4"):
        picked.residuals(np.zeros(4), np.zeros(1))
    penalized = fz.LeastSquares([1.0], regularization=1.0, penalty=np.ones((2, 3)))
    with pytest.raises(fz.FG2UValueError, match="`penalty` has 3 columns but phi has 2"):
        penalized.grad_phi(np.zeros(2))
