"""fz.uncertainty: covariance, intervals, profiles, identifiability, predictions.

References computed another way: closed forms of linear Gaussian models (and of a
Poisson regression's Fisher information), scipy.optimize.curve_fit's pcov on the same
data, and the binomial spread of a coverage frequency over fixed-seed replicates.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import optimize, stats

import fg2u_zo as fz

EPS = np.finfo(np.float64).eps


# -- models (module level: picklable for the parallel backends) ------------------------------
class Linear:
    """theta = A phi."""

    def __init__(self, A):
        self.A = np.asarray(A, dtype=np.float64)

    def __call__(self, phi):
        return self.A @ phi


class Decay:
    """theta_i = a exp(-k t_i)."""

    def __init__(self, t):
        self.t = np.asarray(t, dtype=np.float64)

    def __call__(self, phi):
        return phi[0] * np.exp(-phi[1] * self.t)


class Product:
    """Outputs that depend on a * b only."""

    def __init__(self, t):
        self.t = np.asarray(t, dtype=np.float64)

    def __call__(self, phi):
        return phi[0] * phi[1] * np.exp(-self.t) + 0.5 * self.t


class PoissonNLL:
    """Negative log-likelihood of counts with log-mean theta (up to a constant)."""

    def __init__(self, counts):
        self.counts = torch.as_tensor(np.asarray(counts, dtype=np.float64))

    def __call__(self, theta, phi):
        return (torch.exp(theta) - self.counts * theta).sum()


class GaussianNLL:
    """0.5 * sum((theta - y) / sigma)**2: a likelihood written by hand."""

    def __init__(self, y, sigma):
        self.y = torch.as_tensor(np.asarray(y, dtype=np.float64))
        self.sigma = float(sigma)

    def __call__(self, theta, phi):
        return 0.5 * (((theta - self.y) / self.sigma) ** 2).sum()


TRUTH = np.array([1.0, -2.0, 0.5])


def design(m=20):
    t = np.linspace(0.0, 1.0, m)
    return np.column_stack([np.ones(m), t, np.sin(3.0 * t)])


def linear_data(seed, sigma=0.3, m=20):
    """(A, y, least-squares fit) of the linear model with Gaussian noise."""
    A = design(m)
    y = A @ TRUTH + sigma * np.random.default_rng(seed).standard_normal(m)
    return A, y, np.linalg.lstsq(A, y, rcond=None)[0]


def linear_problem(A, y, **loss):
    return fz.BilevelProblem(inner=Linear(A), outer=fz.LeastSquares(y, **loss))


def quiet_uncertainty(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # no warning expected on a well-posed problem
        return fz.uncertainty(*args, **kwargs)


# -- linear Gaussian model: closed forms ------------------------------------------------------
def test_linear_known_sigma_stderr_is_analytic():
    sigma = 0.3
    A, y, fit = linear_data(1, sigma)
    unc = quiet_uncertainty(fit, linear_problem(A, y), sigma=sigma, rng=0)
    analytic = sigma * np.sqrt(np.diag(np.linalg.inv(A.T @ A)))
    np.testing.assert_allclose(unc.stderr, analytic, rtol=1e-6)
    assert unc.dof is None and unc.quantile == pytest.approx(stats.norm.ppf(0.975))
    np.testing.assert_allclose(unc.interval[:, 1] - fit, unc.quantile * analytic, rtol=1e-6)
    assert unc.jacobian.shape == (20, 3)
    np.testing.assert_allclose(unc.jacobian, A, rtol=1e-6, atol=1e-9)
    assert unc.nfev >= 4 and unc.unconstrained.shape == (3, 0)


def test_linear_known_sigma_coverage_over_1000_replicates():
    A = design()
    sigma, truth = 0.3, TRUTH
    reps = 1000
    rng = np.random.default_rng(2024)
    covered = np.zeros(3)
    with fz.Evaluator("sequential") as ev:
        for _ in range(reps):
            y = A @ truth + sigma * rng.standard_normal(A.shape[0])
            fit = np.linalg.lstsq(A, y, rcond=None)[0]
            # A fixed step skips the noise probe: the model is linear, the difference exact.
            unc = fz.uncertainty(fit, linear_problem(A, y), sigma=sigma, step=1e-6,
                                 evaluator=ev, warn=False)
            covered += (unc.interval[:, 0] <= truth) & (truth <= unc.interval[:, 1])
    rate = covered / reps
    spread = 3.0 * math.sqrt(0.95 * 0.05 / reps)
    assert np.all(np.abs(rate - 0.95) <= spread), rate


def test_linear_estimated_sigma_uses_t_and_residuals():
    A, y, fit = linear_data(3, sigma=0.2, m=12)
    unc = quiet_uncertainty(fit, linear_problem(A, y), rng=0)
    r = y - A @ fit
    s2 = r @ r / (12 - 3)
    np.testing.assert_allclose(unc.cov, s2 * np.linalg.inv(A.T @ A), rtol=1e-6)
    assert unc.dof == 9
    assert unc.quantile == pytest.approx(stats.t.ppf(0.975, 9))
    assert unc.noise_sd == pytest.approx(math.sqrt(s2), rel=1e-9)
    # The loss's own scaling (mean or sum, a constant weight) leaves it unchanged.
    other = quiet_uncertainty(fit, linear_problem(A, y, scale="sum", weights=4.0), rng=0)
    np.testing.assert_allclose(other.cov, unc.cov, rtol=1e-6)


def test_regularization_is_a_gaussian_prior():
    sigma, lam = 0.3, 5.0
    A, y, _ = linear_data(4, sigma)
    # f = 0.5 sum(((A phi - y) / sigma)**2) + lam/2 ||phi||^2 is the negative log-posterior
    # of a N(0, 1/lam) prior: its covariance is (A^T A / sigma^2 + lam I)^-1.
    fit = np.linalg.solve(A.T @ A / sigma ** 2 + lam * np.eye(3), A.T @ y / sigma ** 2)
    problem = linear_problem(A, y, scale="sum", sigma=sigma, regularization=lam)
    unc = quiet_uncertainty(fit, problem, sigma=sigma, rng=0)
    expected = np.linalg.inv(A.T @ A / sigma ** 2 + lam * np.eye(3))
    np.testing.assert_allclose(unc.cov, expected, rtol=1e-6)


# -- against scipy.optimize.curve_fit ---------------------------------------------------------
def decay_data(seed=5, m=30):
    t = np.linspace(0.0, 4.0, m)
    sigma = 0.03 + 0.02 * t
    y = 2.0 * np.exp(-0.7 * t) + sigma * np.random.default_rng(seed).standard_normal(m)
    return t, y, sigma


def fd_tolerance(t, p, jac):
    """Relative accuracy of cov from two forward-difference Jacobians at relative steps
    sqrt(eps) * max(1, |p_j|): the column error of d/dk (a e^{-kt})' is |f''/f'| h / 2 =
    t h / 2 (d/da is linear, exact to rounding), plus rounding eps |f| / (h |f'|); the
    inverse of J^T J amplifies a relative error of J by up to 2 cond(J)^2. A factor 10
    covers the two Jacobians and the norms."""
    h = math.sqrt(EPS) * max(1.0, abs(p[1]))
    f = p[0] * np.exp(-p[1] * t)
    fprime = np.abs(p[0] * t * np.exp(-p[1] * t))
    ok = fprime > 0
    column = t.max() * h / 2 + np.max(EPS * np.abs(f[ok]) / (h * fprime[ok]))
    cond = np.linalg.cond(jac)
    return 10 * 2 * cond ** 2 * column


def decay_fit(seed):
    """(problem with the loss weighted by sigma, curve_fit's fit) of decay_data(seed)."""
    t, y, sigma = decay_data(seed)
    popt = optimize.curve_fit(lambda t, a, k: a * np.exp(-k * t), t, y, p0=[1.0, 1.0],
                              sigma=sigma)[0]
    return fz.BilevelProblem(inner=Decay(t), outer=fz.LeastSquares(y, sigma=sigma)), popt


@pytest.mark.parametrize("absolute", [False, True])
def test_nonlinear_cov_equals_curve_fit_pcov(absolute):
    t, y, sigma = decay_data()
    popt, pcov = optimize.curve_fit(lambda t, a, k: a * np.exp(-k * t), t, y, p0=[1.0, 1.0],
                                    sigma=sigma, absolute_sigma=absolute, method="trf",
                                    xtol=1e-15, ftol=1e-15, gtol=1e-15)
    problem = fz.BilevelProblem(inner=Decay(t), outer=fz.LeastSquares(y, sigma=sigma))
    unc = quiet_uncertainty(popt, problem, sigma=sigma if absolute else None, rng=0)
    tol = fd_tolerance(t, popt, unc.jacobian / sigma[:, None])
    assert tol < 1e-4   # the test means something
    np.testing.assert_allclose(unc.cov, pcov, rtol=tol)
    assert unc.dof == (None if absolute else t.size - 2)


# -- identifiability and profiles -------------------------------------------------------------
def test_product_only_warns_with_both_names_and_open_profiles():
    t = np.linspace(0.0, 4.0, 30)
    y = Product(t)(np.array([2.0, 0.7])) + 0.05 * np.random.default_rng(6).standard_normal(30)
    problem = fz.BilevelProblem(inner=Product(t), outer=fz.LeastSquares(y))
    # Any split of the fitted product is a fit: a = 1.4 / b.
    ab = float(np.sum((y - 0.5 * t) * np.exp(-t)) / np.sum(np.exp(-2 * t)))
    fit = np.array([0.8, ab / 0.8])
    with pytest.warns(fz.IdentifiabilityWarning) as record:
        unc = fz.uncertainty(fit, problem, names=["alpha", "beta"], transform="log",
                             method="profile", rng=0)
    found = [w for w in record if issubclass(w.category, fz.IdentifiabilityWarning)]
    assert len(found) == 1
    message = str(found[0].message)
    assert "alpha" in message and "beta" in message
    assert "log alpha" in message and "log beta" in message   # the combination
    assert unc.unconstrained.shape == (2, 1)
    np.testing.assert_allclose(np.abs(unc.unconstrained[:, 0]), [2 ** -0.5] * 2, rtol=1e-4)
    assert np.all(np.isinf(unc.stderr))
    assert unc.open.all()
    np.testing.assert_array_equal(unc.interval, [[0.0, np.inf], [0.0, np.inf]])
    assert unc.identifiability and "alpha" in unc.identifiability[0]
    with pytest.raises(fz.FG2UValueError, match="unconstrained"):
        unc.sample(10, rng=0)


class WeakSlope:
    """a exp(-t) + 1e-3 b t: b is barely seen by the data."""

    def __init__(self, t):
        self.t = np.asarray(t, dtype=np.float64)

    def __call__(self, phi):
        return phi[0] * np.exp(-self.t) + 1e-3 * phi[1] * self.t


def weak_slope_fit(b):
    t = np.linspace(0.0, 4.0, 30)
    model = WeakSlope(t)
    y = model(np.array([2.0, b])) + 0.05 * np.random.default_rng(16).standard_normal(30)
    A = np.column_stack([np.exp(-t), 1e-3 * t])
    return fz.BilevelProblem(inner=model, outer=fz.LeastSquares(y)), np.linalg.lstsq(
        A, y, rcond=None)[0]


def test_a_log_parameter_spanning_a_decade_is_named():
    problem, fit = weak_slope_fit(b=5.0)
    assert fit[1] > 0
    with pytest.warns(fz.IdentifiabilityWarning) as record:
        unc = fz.uncertainty(fit, problem, names=["amp", "slope"], transform="log", rng=0)
    lo, hi = unc.interval[1]
    assert hi > 10 * lo   # the finding is true
    message = [str(w.message) for w in record
               if issubclass(w.category, fz.IdentifiabilityWarning)][0]
    assert "barely constrain slope" in message and "log slope" in message
    assert "amp in" not in message   # the well-determined amplitude is not blamed


def test_a_profile_that_reaches_a_bound_is_open_there():
    problem, fit = weak_slope_fit(b=0.5)
    unc = fz.uncertainty(fit, problem, names=["amp", "slope"], method="profile",
                         bounds=([0.0, fit[1] - 2.0], [10.0, 20.0]), rng=0, warn=False)
    assert unc.linear_interval[1, 0] < fit[1] - 2.0    # the data do not reach the bound
    assert unc.interval[1, 0] == fit[1] - 2.0 and unc.open[1].tolist() == [True, False]
    assert not unc.open[0].any()
    assert "slope in" in unc.identifiability[0] and "open" in unc.identifiability[0]


def test_profile_equals_linear_on_a_linear_model():
    A, y, fit = linear_data(7, sigma=0.2, m=15)
    unc = quiet_uncertainty(fit, linear_problem(A, y), method="profile", rng=0)
    half = unc.linear_interval[:, 1] - unc.phi
    np.testing.assert_allclose(unc.interval, unc.linear_interval, rtol=0,
                               atol=1e-3 * half.min())
    assert not unc.open.any()
    for p in unc.profiles:
        assert p.statistic.min() >= -1e-6 and p.threshold == pytest.approx(unc.quantile ** 2)
    assert unc.nfev > 4


def test_profile_of_one_parameter_and_parallel_equals_sequential():
    problem, popt = decay_fit(8)
    seq = quiet_uncertainty(popt, problem, method="profile", rng=1)
    par = quiet_uncertainty(popt, problem, method="profile", rng=1, backend="threading",
                            n_jobs=2)
    np.testing.assert_array_equal(seq.interval, par.interval)
    assert seq.nfev == par.nfev
    # Curvature makes the profile interval of the rate asymmetric about the fit.
    lo, hi = seq.interval[1]
    assert lo < popt[1] < hi
    assert abs((hi - popt[1]) - (popt[1] - lo)) > 1e-3 * (hi - lo)


# -- transforms -------------------------------------------------------------------------------
def test_log_transform_maps_the_z_interval():
    problem, popt = decay_fit(9)
    unc = quiet_uncertainty(popt, problem, transform="log", rng=0)
    plain = quiet_uncertainty(popt, problem, rng=0)
    se_z = np.sqrt(np.diag(unc.cov_z))
    z = np.log(popt)
    np.testing.assert_allclose(unc.interval, np.exp(np.column_stack(
        [z - unc.quantile * se_z, z + unc.quantile * se_z])), rtol=1e-12)
    # Asymmetric in phi: farther above than below.
    assert np.all(unc.interval[:, 1] - popt > popt - unc.interval[:, 0])
    # The delta method links the two parametrizations: se_phi = phi se_z = se of plain.
    np.testing.assert_allclose(unc.stderr, popt * se_z, rtol=1e-12)
    np.testing.assert_allclose(unc.stderr, plain.stderr, rtol=1e-5)
    assert unc.transform.kinds == ("log", "log")


def test_transform_comes_from_the_run_and_can_be_overridden():
    t, y, sigma = decay_data(seed=10)
    problem = fz.BilevelProblem(inner=Decay(t), outer=fz.LeastSquares(y, sigma=sigma))
    res = fz.minimize(problem, np.array([1.0, 1.0]), fz.FG2UZO(step=1e-7, scheme="forward"),
                      optimizer="gauss-newton", steps=25, transform="log", rng=0,
                      progress=False)
    assert res.transform.kinds == ("log", "log")
    unc = quiet_uncertainty(res, problem, rng=0)
    assert unc.transform.kinds == ("log", "log")
    assert quiet_uncertainty(res, problem, transform="identity", rng=0).transform.kinds == (
        "identity", "identity")


# -- likelihoods: the Laplace covariance ------------------------------------------------------
def test_laplace_covariance_of_a_poisson_regression_is_the_inverse_fisher_information():
    rng = np.random.default_rng(11)
    X = np.column_stack([np.ones(40), rng.uniform(-1.0, 1.0, 40)])
    counts = rng.poisson(np.exp(X @ np.array([1.0, 0.8])))
    problem = fz.BilevelProblem(inner=Linear(X), outer=PoissonNLL(counts))
    fit = optimize.minimize(lambda b: np.sum(np.exp(X @ b) - counts * (X @ b)), np.zeros(2),
                            jac=lambda b: X.T @ (np.exp(X @ b) - counts), method="BFGS",
                            options={"gtol": 1e-10}).x
    unc = quiet_uncertainty(fit, problem, rng=0)
    mu = np.exp(X @ fit)
    np.testing.assert_allclose(unc.cov, np.linalg.inv(X.T @ (mu[:, None] * X)), rtol=1e-6)
    assert unc.loss == "likelihood" and unc.dof is None


def test_a_gaussian_likelihood_gives_the_least_squares_covariance():
    A, y, fit = linear_data(12)
    nll = quiet_uncertainty(fit, fz.BilevelProblem(inner=Linear(A), outer=GaussianNLL(y, 0.3)),
                            rng=0)
    ls = quiet_uncertainty(fit, linear_problem(A, y), sigma=0.3, rng=0)
    np.testing.assert_allclose(nll.cov, ls.cov, rtol=1e-6)
    np.testing.assert_allclose(nll.interval, ls.interval, rtol=1e-6)


# -- predictions and samples ------------------------------------------------------------------
def test_prediction_band_of_a_linear_prediction_is_analytic():
    sigma = 0.3
    A, y, fit = linear_data(13, sigma)
    unc = quiet_uncertainty(fit, linear_problem(A, y), sigma=sigma, rng=0)
    B = np.array([[1.0, 0.5, 0.0], [0.0, 1.0, 1.0]])
    band = unc.predict(Linear(B))
    cov = sigma ** 2 * np.linalg.inv(A.T @ A)
    np.testing.assert_allclose(band.value, B @ fit, rtol=1e-12)
    np.testing.assert_allclose(band.stderr, np.sqrt(np.diag(B @ cov @ B.T)), rtol=1e-6)
    np.testing.assert_allclose(band.upper - band.value, unc.quantile * band.stderr)
    np.testing.assert_allclose(band.jacobian, B, rtol=1e-6, atol=1e-9)
    assert band.nfev == 4   # the base point and one difference per parameter


def test_samples_follow_the_covariance_in_z():
    problem, popt = decay_fit(14)
    unc = quiet_uncertainty(popt, problem, transform="log", rng=0)
    k = 4000
    draws = unc.sample(k, rng=0)
    assert draws.shape == (k, 2) and np.all(draws > 0)
    z = np.log(draws)
    var = np.var(z, axis=0, ddof=1)
    # The variance of a sample variance of k normal draws is 2 sigma^4 / (k - 1).
    np.testing.assert_array_less(np.abs(var - np.diag(unc.cov_z)),
                                 5 * np.sqrt(2 / (k - 1)) * np.diag(unc.cov_z))
    np.testing.assert_array_less(np.abs(z.mean(axis=0) - unc.z),
                                 5 * np.sqrt(np.diag(unc.cov_z) / k))


# -- the result: report and JSON --------------------------------------------------------------
def test_report_names_values_and_strong_correlations(tmp_path):
    t = np.linspace(1.0, 1.5, 25)   # a short window: a and k strongly correlated
    y = Decay(t)(np.array([2.0, 0.7])) + 0.01 * np.random.default_rng(15).standard_normal(25)
    popt = optimize.curve_fit(lambda t, a, k: a * np.exp(-k * t), t, y, p0=[1.0, 1.0])[0]
    problem = fz.BilevelProblem(inner=Decay(t), outer=fz.LeastSquares(y))
    unc = fz.uncertainty(popt, problem, names=["amplitude", "rate"], rng=0, warn=False)
    text = str(unc)
    assert "amplitude" in text and "rate" in text and "95% interval" in text
    assert abs(unc.corr[0, 1]) > 0.9 and "amplitude–rate" in text
    back = fz.Uncertainty.load(unc.save(tmp_path / "unc.json"))
    np.testing.assert_array_equal(back.cov, unc.cov)
    np.testing.assert_array_equal(back.interval, unc.interval)
    assert back.names == unc.names and back.transform.kinds == unc.transform.kinds
    assert back.dof == unc.dof and str(back) == text


# -- bad input ---------------------------------------------------------------------------------
def bad_input_problem():
    A = design()
    y = A @ np.ones(3)
    return A, y, linear_problem(A, y)


def test_bad_input_errors_name_the_argument():
    A, y, problem = bad_input_problem()
    fit = np.ones(3)
    with pytest.raises(fz.FG2UTypeError, match="`result`"):
        fz.uncertainty({"x": fit}, problem)
    with pytest.raises(fz.FG2UTypeError, match="`problem`"):
        fz.uncertainty(fit, lambda phi: phi)
    with pytest.raises(fz.FG2UValueError, match="result.phi"):
        fz.uncertainty(np.ones(4), fz.BilevelProblem(inner=Linear(A), outer=fz.LeastSquares(y),
                                                     num_params=3))
    with pytest.raises(fz.FG2UValueError, match="result.phi"):
        fz.uncertainty(np.array([1.0, np.nan, 1.0]), problem)
    with pytest.raises(fz.FG2UValueError, match="`confidence`"):
        fz.uncertainty(fit, problem, confidence=95)
    with pytest.raises(fz.FG2UTypeError, match="`confidence`"):
        fz.uncertainty(fit, problem, confidence="high")
    with pytest.raises(fz.FG2UValueError, match="`method`"):
        fz.uncertainty(fit, problem, method="bootstrap")
    with pytest.raises(fz.FG2UValueError, match="`sigma`"):
        fz.uncertainty(fit, problem, sigma=-1.0)
    with pytest.raises(fz.FG2UValueError, match="`sigma`"):
        fz.uncertainty(fit, problem, sigma=np.ones(5))
    with pytest.raises(fz.FG2UValueError, match="`names`"):
        fz.uncertainty(fit, problem, names=["a", "b"])
    with pytest.raises(fz.FG2UValueError, match="log"):
        fz.uncertainty(np.array([1.0, -1.0, 1.0]), problem, transform="log")
    few = linear_problem(A[:3], y[:3])
    with pytest.raises(fz.FG2UValueError, match="M = 3 data .* N = 3"):
        fz.uncertainty(fit, few)
    likelihood = fz.BilevelProblem(inner=Linear(A), outer=GaussianNLL(y, 1.0))
    with pytest.raises(fz.FG2UValueError, match="`sigma` applies to a fz.LeastSquares"):
        fz.uncertainty(fit, likelihood, sigma=1.0)
    numpy_loss = fz.BilevelProblem(inner=Linear(A), outer=lambda th, ph: float(np.sum(th)),
                                   differentiable_outer=False)
    with pytest.raises(fz.FG2UValueError, match="differentiable"):
        fz.uncertainty(fit, numpy_loss)
    with pytest.raises(fz.FG2UTypeError, match="`predict`"):
        fz.uncertainty(fit, problem, sigma=1.0, warn=False).predict(np.zeros(3))


def test_inconsistent_sigma_warns():
    A, y, problem = bad_input_problem()
    fit = np.linalg.lstsq(A, y, rcond=None)[0]
    sigma = np.linspace(0.1, 1.0, y.size)
    with pytest.warns(fz.FG2UWarning, match="not proportional"):
        fz.uncertainty(fit, problem, sigma=sigma, rng=0)


# -- the README's example ----------------------------------------------------------------------
def test_readme_example_runs_and_prints_what_the_readme_shows(capsys):
    import os
    import re

    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "README.md"), encoding="utf-8").read()
    section = readme.split("## Uncertainty of a calibration", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    shown = re.search(r"```text\n(.*?)```", section, flags=re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out

    def rows(text):
        return {m.group(1): [float(m.group(k)) for k in range(2, 6)] for m in re.finditer(
            r"^\s+(\w+) \(log\)\s+(\S+)\s+(\S+)\s+\[(\S+), (\S+)\]", text, re.MULTILINE)}

    assert rows(printed).keys() == rows(shown).keys() == {"a", "k"}
    for name, numbers in rows(shown).items():
        # Six printed digits of a fit converged far below them.
        np.testing.assert_allclose(rows(printed)[name], numbers, rtol=1e-5)
    truth = np.array([2.0, 0.7])
    for unc in (namespace["unc"], namespace["prof"]):
        assert np.all((unc.interval[:, 0] < truth) & (truth < unc.interval[:, 1]))
    assert namespace["draws"].shape == (1000, 2)
    assert namespace["band"].value.shape == (20,)
