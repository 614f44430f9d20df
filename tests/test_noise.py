"""Noise estimation and the noise-aware step (fg2u_zo.noise: estimate, table, line, reuse, steps).

Synthetic solvers with a known noise level: smooth functions printed to d significant
digits, rounded without a short decimal form, given single-precision outputs, or
perturbed by gaussian noise that is a deterministic function of phi (as a real
simulator's noise is). Fixed seeds throughout.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings

import numpy as np
import pytest
import torch

import fg2u_zo as fz
from fg2u_zo.noise import auto_step
from fg2u_zo.noise.advice import WARNING_THRESHOLD
from fg2u_zo.noise.steps import default_step, max_step, noise_optimal_step, predicted_fd_error
from fg2u_zo.testing import RidgeHyperproblem

PHI = np.array([0.5, -0.3, 1.0, 0.0, 2.0])


# --------------------------------------------------------------------------------------
# Synthetic noisy solvers
# --------------------------------------------------------------------------------------

def printed(x, digits):
    """What a code that prints ``%.{digits-1}e`` hands back: the nearest doubles."""
    return np.array([float(f"{v:.{digits - 1}e}") for v in np.ravel(x)]).reshape(np.shape(x))


def last_digit_unit(x, digits):
    """Unit q of the last of ``digits`` significant digits of each value."""
    return 10.0 ** (np.floor(np.log10(np.abs(x))) - digits + 1)


def rounding_noise(g, theta, unit):
    """Noise of <g, theta> when each theta_j carries a rounding error uniform on
    [-q_j/2, q_j/2], independent across outputs: variance sum_j g_j^2 q_j^2 / 12."""
    return float(np.sqrt(np.sum(g ** 2 * unit ** 2) / 12.0))


class Printed:
    def __init__(self, inner, digits):
        self.inner, self.digits = inner, digits

    def __call__(self, phi):
        return printed(self.inner(phi), self.digits)


class Rounded:
    """Rounded to ``digits`` digits by arithmetic, leaving no short decimal form
    (``round(x / q) * q`` is rarely the double nearest to the decimal)."""

    def __init__(self, inner, digits):
        self.inner, self.digits = inner, digits

    def __call__(self, phi):
        x = self.inner(phi)
        q = last_digit_unit(x, self.digits)
        return np.round(x / q) * q


class GaussianNoise:
    """Additive gaussian noise of standard deviation ``sigma`` on each output, seeded by
    the bytes of phi: the same phi gives the same output."""

    def __init__(self, inner, sigma):
        self.inner, self.sigma = inner, sigma

    def __call__(self, phi):
        digest = hashlib.sha256(np.ascontiguousarray(phi, dtype=np.float64).tobytes()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        theta = self.inner(phi)
        return theta + self.sigma * rng.standard_normal(theta.shape)


class SmoothLayer:
    """``theta = tanh(A phi) + 0.1 (B phi)^2`` with M = 64 outputs."""

    def __init__(self, n=6, m=64, rng=0):
        rng = np.random.default_rng(rng)
        self.A = rng.standard_normal((m, n)) / np.sqrt(n)
        self.B = rng.standard_normal((m, n)) / np.sqrt(n)
        self.y = rng.standard_normal(m)

    def __call__(self, phi):
        return np.tanh(self.A @ phi) + 0.1 * (self.B @ phi) ** 2

    def outer(self, theta, phi):
        return 0.5 * ((theta - torch.as_tensor(self.y)) ** 2).sum()


@pytest.fixture(scope="module")
def ridge():
    return RidgeHyperproblem(num_features=5, rng=3)


@pytest.fixture(scope="module")
def layer():
    return SmoothLayer()


def quiet_estimate_noise(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fz.NoiseWarning)
        return fz.estimate_noise(*args, **kwargs)


def g_theta(problem, phi):
    theta = problem.inner(phi)
    return problem.outer_parts(theta, phi)[1], theta


# --------------------------------------------------------------------------------------
# The noise level
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("digits", [4, 6, 8, 10, 12])
def test_noise_of_printed_outputs(ridge, digits):
    problem = fz.BilevelProblem(inner=Printed(ridge.inner, digits), outer=ridge.outer)
    g, theta = g_theta(problem, PHI)
    truth = rounding_noise(g, theta, last_digit_unit(theta, digits))
    for seed in range(3):
        est = quiet_estimate_noise(problem, PHI, rng=seed)
        assert est.status == "ok" and est.method == "digits"
        assert est.output_precision == digits
        assert truth / 3 < est.noise < 3 * truth, (est.noise, truth)
        np.testing.assert_allclose(est.output_noise,
                                   last_digit_unit(theta, digits) / np.sqrt(12), rtol=0.5)


@pytest.mark.parametrize("digits", [4, 6, 8, 10, 12])
def test_noise_of_rounded_outputs_from_the_difference_table(layer, digits):
    # No short decimal form to read: the ECnoise difference table has to find it.
    problem = fz.BilevelProblem(inner=Rounded(layer, digits), outer=layer.outer)
    phi = np.linspace(-1.0, 1.0, 6)
    g, theta = g_theta(problem, phi)
    truth = rounding_noise(g, theta, last_digit_unit(theta, digits))
    for seed in range(3):
        est = quiet_estimate_noise(problem, phi, rng=seed)
        assert est.status == "ok" and est.method == "table" and est.order >= 1
        assert truth / 3 < est.noise < 3 * truth, (est.noise, truth)


@pytest.mark.parametrize("sigma", [1e-4, 1e-7, 1e-10, 1e-12])
def test_noise_of_gaussian_outputs(layer, sigma):
    problem = fz.BilevelProblem(inner=GaussianNoise(layer, sigma), outer=layer.outer)
    phi = np.linspace(-1.0, 1.0, 6)
    g, _ = g_theta(problem, phi)
    truth = sigma * np.linalg.norm(g)  # var <g, e> = sigma^2 |g|^2
    for seed in range(3):
        est = quiet_estimate_noise(problem, phi, rng=seed)
        assert est.status == "ok" and est.method == "table"
        assert truth / 3 < est.noise < 3 * truth, (est.noise, truth)
        # each output's own level, from the same table: right in the median
        assert sigma / 3 < np.median(est.output_noise) < 3 * sigma


def test_noise_of_single_precision_outputs(ridge):
    def solver(phi):
        return ridge.inner(phi).astype(np.float32).astype(np.float64)

    problem = fz.BilevelProblem(inner=solver, outer=ridge.outer)
    g, theta = g_theta(problem, PHI)
    # a float32 keeps 24 significant bits: the unit of the last is 2**(e - 24)
    unit = np.ldexp(1.0, np.frexp(theta)[1] - 24)
    est = quiet_estimate_noise(problem, PHI, rng=0)
    assert est.method == "bits" and est.output_precision == 24
    truth = rounding_noise(g, theta, unit)
    assert truth / 3 < est.noise < 3 * truth


def test_noise_of_the_objective_for_blackbox(ridge):
    problem = fz.BilevelProblem(inner=Printed(ridge.inner, 6), outer=ridge.outer_numpy,
                                differentiable_outer=False)
    theta = problem.inner(PHI)
    truth = rounding_noise(ridge.grad_theta(theta), theta, last_digit_unit(theta, 6))
    est = quiet_estimate_noise(problem, PHI, rng=1)
    assert est.quantity == "value"
    assert truth / 3 < est.noise < 3 * truth, (est.noise, truth)


def test_full_precision_is_exact_and_keeps_the_default_step(ridge):
    problem = ridge.problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error", fz.NoiseWarning)
        est = fz.estimate_noise(problem, PHI, rng=0)
        g = fz.FG2UZO(num_directions=5, scheme="forward").estimate(problem, PHI, rng=0)
    assert est.status == "exact" and est.relative_noise < 1e-14
    assert est.nfev == 9  # one table, no retries, no derivative points
    for scheme in ("forward", "central"):
        assert est.step(scheme) == default_step(PHI, scheme)
    assert g.step == default_step(PHI, "forward")


# --------------------------------------------------------------------------------------
# Too small / too large spacings
# --------------------------------------------------------------------------------------

def test_too_small_spacing_is_detected_and_widened(ridge):
    problem = fz.BilevelProblem(inner=Printed(ridge.inner, 6), outer=ridge.outer)
    calls = []
    counting = fz.BilevelProblem(inner=lambda phi: calls.append(1) or problem.inner(phi),
                                 outer=ridge.outer)
    est = quiet_estimate_noise(counting, PHI, rng=0, spacing=1e-10)
    statuses = [status for _, status in est.attempts]
    assert statuses[0] == "too_small" and statuses[-1] == "ok"
    spacings = [s for s, _ in est.attempts]
    np.testing.assert_allclose(spacings[1] / spacings[0], 100.0)
    assert est.nfev == len(calls)  # every try counted
    g, theta = g_theta(problem, PHI)
    truth = rounding_noise(g, theta, last_digit_unit(theta, 6))
    assert truth / 3 < est.noise < 3 * truth


def test_outputs_that_never_change_warn_and_fall_back(ridge):
    problem = fz.BilevelProblem(inner=lambda phi: printed(ridge.inner(phi), 2),
                                outer=ridge.outer)
    with pytest.warns(fz.NoiseWarning, match="did not change"):
        est = fz.estimate_noise(problem, PHI, rng=0, spacing=1e-9, max_tries=3)
    assert [status for _, status in est.attempts] == ["too_small"] * 3
    assert est.status == "too_small" and np.isnan(est.noise)
    assert est.step("central") == default_step(PHI, "central")


def test_too_large_spacing_is_detected_and_narrowed(layer):
    sigma = 1e-11
    problem = fz.BilevelProblem(inner=GaussianNoise(layer, sigma), outer=layer.outer)
    phi = np.linspace(-1.0, 1.0, 6)
    est = quiet_estimate_noise(problem, phi, rng=0, spacing=0.04)
    statuses = [status for _, status in est.attempts]
    assert statuses[0] == "too_large" and statuses[-1] == "ok"
    np.testing.assert_allclose(est.attempts[1][0], est.attempts[0][0] / 100)
    g, _ = g_theta(problem, phi)
    truth = sigma * np.linalg.norm(g)
    assert truth / 3 < est.noise < 3 * truth


def test_failed_probe_points_shrink_the_spacing(ridge):
    # The solver only exists near PHI: a wide probe line leaves its domain.
    def solver(phi):
        if np.linalg.norm(phi - PHI) > 1.3e-2:
            raise RuntimeError("outside the mesh")
        return printed(ridge.inner(phi), 8)

    problem = fz.BilevelProblem(inner=solver, outer=ridge.outer)
    est = quiet_estimate_noise(problem, PHI, rng=0, spacing=4e-3, max_retries=0)
    assert est.attempts[0][1] == "failed" and est.status == "ok"
    np.testing.assert_allclose(est.attempts[1][0], est.attempts[0][0] / 100)


# --------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------

def test_noise_optimal_step_minimises_the_predicted_error():
    for scheme, derivative in (("forward", 3.0), ("central", 0.5)):
        h = noise_optimal_step(1e-9, derivative, scheme)
        best = predicted_fd_error(h, 1e-9, derivative, scheme)
        for factor in (0.8, 1.25):
            assert predicted_fd_error(factor * h, 1e-9, derivative, scheme) > best
    assert noise_optimal_step(1e-9, 0.0, "forward") == np.inf


NOISES = [("digits", 4), ("digits", 6), ("digits", 8), ("digits", 10), ("digits", 12),
          ("gaussian", 1e-6), ("gaussian", 1e-9), ("gaussian", 1e-12)]


# The sweep's smallest steps are below the printed precision on purpose.
@pytest.mark.filterwarnings("ignore::fg2u_zo.ZeroDifferenceWarning")
@pytest.mark.parametrize("scheme", ["forward", "central"])
@pytest.mark.parametrize("kind, level", NOISES)
def test_auto_step_is_within_3x_of_the_best_step(ridge, kind, level, scheme):
    """Relative gradient error with step="auto" vs the best of 30 log-spaced steps.

    Full coordinate basis (b = N), so the error is the finite-difference error alone;
    the same directions for every step; errors averaged over three base points, each
    with its own noise probe, so that "best" is the best fixed step in expectation, not
    the luckiest draw of a deterministic noise pattern.
    """
    wrap = Printed if kind == "digits" else GaussianNoise
    problem = fz.BilevelProblem(inner=wrap(ridge.inner, level), outer=ridge.outer)
    bases = [PHI + 0.01 * k for k in range(3)]
    steps = np.logspace(-7, np.log10(0.3), 30)

    def rel_err(est, phi, **kw):
        g = est.estimate(problem, phi, **kw).grad
        truth = ridge.hypergradient(phi)
        return np.linalg.norm(g - truth) / np.linalg.norm(truth)

    def fixed(h):
        return fz.FG2UZO(num_directions=5, directions="coordinate", scheme=scheme, step=h)

    sweep = np.array([[rel_err(fixed(h), phi, rng=0) for phi in bases] for h in steps])
    best = sweep.mean(axis=1).min()
    auto = fz.FG2UZO(num_directions=5, directions="coordinate", scheme=scheme)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fz.NoiseWarning)
        auto_err = np.mean([rel_err(auto, phi, rng=k) for k, phi in enumerate(bases)])
    assert auto_err <= 3 * best, (auto_err, best, steps[sweep.mean(axis=1).argmin()])
    # and the scale-aware default, tuned for full precision, is far worse here
    default = np.mean([rel_err(fixed(default_step(phi, scheme)), phi, rng=0) for phi in bases])
    assert default > 5 * best


# --------------------------------------------------------------------------------------
# Integration with the estimators
# --------------------------------------------------------------------------------------

def test_auto_counts_probe_solves_and_noise_is_reused(ridge):
    calls = []

    def solver(phi, *, warm_start=None, seed=None):
        calls.append(seed)
        return printed(ridge.inner(phi), 8)

    problem = fz.BilevelProblem(inner=solver, outer=ridge.outer)
    est = fz.FG2UZO(num_directions=4, scheme="central")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fz.NoiseWarning)
        g = est.estimate(problem, PHI, rng=0)
    assert isinstance(g.noise, fz.NoiseEstimate) and g.noise.nfev > 0
    assert g.nfev == len(calls) == 2 * 4 + 1 + g.noise.nfev
    assert len(set(calls)) == 1  # the probe shares the estimate's seed
    assert g.step == g.noise.step_central
    assert g.noise.difference_to_noise > 10

    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error", fz.NoiseWarning)  # reuse: no new probe, no warning
        g2 = est.estimate(problem, PHI, rng=1, noise=g.noise)
    assert g2.nfev == len(calls) == 2 * 4 + 1
    assert g2.step == g.step

    calls.clear()
    g3 = fz.FG2UZO(num_directions=4, step=1e-4).estimate(problem, PHI, rng=0)
    assert g3.nfev == len(calls) == 2 * 4 + 1 and g3.noise is None  # fixed step: no probe


def test_same_directions_whatever_the_step(ridge):
    problem = ridge.problem(torch_inner=True)
    exact = fz.FG2U(num_directions=4).estimate(problem, PHI, rng=3)
    auto = fz.FG2UZO(num_directions=4).estimate(problem, PHI, rng=3)
    np.testing.assert_allclose(auto.grad, exact.grad, rtol=1e-6)


def test_noise_argument_is_validated(ridge):
    problem = ridge.problem()
    est = quiet_estimate_noise(problem, PHI, rng=0)
    with pytest.raises(fz.FG2UTypeError, match="noise"):
        fz.FG2UZO().estimate(problem, PHI, noise=1e-6)
    with pytest.raises(fz.FG2UValueError, match="objective|projection"):
        fz.BlackBoxES().estimate(problem, PHI, noise=est)
    with pytest.raises(fz.FG2UValueError, match="N=5"):
        fz.FG2UZO().estimate(RidgeHyperproblem(num_features=3).problem(), np.zeros(3),
                             noise=est)
    with pytest.raises(fz.FG2UValueError, match="num_points"):
        fz.estimate_noise(problem, PHI, num_points=3)
    with pytest.raises(fz.FG2UValueError, match="spacing"):
        fz.estimate_noise(problem, PHI, spacing=-1.0)


def test_coordinate_fd_and_blackbox_take_noise(ridge):
    problem = fz.BilevelProblem(inner=Printed(ridge.inner, 7), outer=ridge.outer_numpy,
                                differentiable_outer=False)
    truth = ridge.hypergradient(PHI)
    with warnings.catch_warnings():
        # 7 digits: a predicted error far below WARNING_THRESHOLD is not worth a warning
        warnings.simplefilter("error", fz.NoiseWarning)
        ref = fz.CoordinateFD().estimate(problem, PHI, rng=0)
    assert ref.noise.quantity == "value"
    assert ref.noise.relative_error("central") < WARNING_THRESHOLD
    # 7 printed digits: the auto step still gets about 4 digits of the gradient
    assert np.linalg.norm(ref.grad - truth) < 1e-3 * np.linalg.norm(truth)
    bb = fz.BlackBoxES(num_directions=5, directions="coordinate").estimate(
        problem, PHI, rng=1, noise=ref.noise)
    assert bb.nfev == 2 * 5 + 1 and bb.step == ref.step
    np.testing.assert_allclose(bb.grad, ref.grad, rtol=1e-12)


def test_warning_names_the_fix(ridge):
    problem = fz.BilevelProblem(inner=Printed(ridge.inner, 4), outer=ridge.outer)
    with pytest.warns(fz.NoiseWarning, match="4 significant digits.*print more significant "
                                             "digits") as caught:
        g = fz.FG2UZO(num_directions=2, scheme="forward").estimate(problem, PHI, rng=0)
    assert g.noise.relative_error("forward") > WARNING_THRESHOLD
    # With 4 digits central differences are predicted worse than forward ones (their
    # noise-optimal step is smaller against the same rounding): not recommended.
    assert g.noise.relative_error("central") > g.noise.relative_error("forward")
    assert "scheme='central'" not in str(caught[0].message)
    # 6 digits, central: printed short, but the predicted error (~1e-3) does not matter
    # against the Monte-Carlo spread of the estimate: no warning
    problem = fz.BilevelProblem(inner=Printed(ridge.inner, 6), outer=ridge.outer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fz.NoiseWarning)
        g = fz.FG2UZO(num_directions=2).estimate(problem, PHI, rng=0)
    assert g.noise.method == "digits" and g.noise.output_precision == 6
    assert 1e-5 < g.noise.relative_error("central") < WARNING_THRESHOLD
    # 12 digits: the differences keep ~6 digits, no warning
    problem = fz.BilevelProblem(inner=Printed(ridge.inner, 12), outer=ridge.outer)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fz.NoiseWarning)
        g = fz.FG2UZO(num_directions=2).estimate(problem, PHI, rng=0)
    assert g.noise.relative_error("central") < 1e-4


def test_noise_needs_refresh(ridge):
    problem = fz.BilevelProblem(inner=Printed(ridge.inner, 8), outer=ridge.outer)
    est = fz.FG2UZO(num_directions=5, directions="coordinate")
    g = est.estimate(problem, PHI, rng=0)
    g2 = est.estimate(problem, PHI + 0.01, rng=1, noise=g.noise)
    assert fz.noise_needs_refresh(None)
    assert not fz.noise_needs_refresh(g.noise, g2, phi=PHI + 0.01, age=1)
    assert fz.noise_needs_refresh(g.noise, g2, phi=5 * PHI, age=1)  # scale x 5
    assert not fz.noise_needs_refresh(g.noise, g2, phi=5 * PHI, age=0)  # min_age
    assert fz.noise_needs_refresh(g.noise, g2, age=10, max_age=10)
    drowned = dataclasses.replace(g2, noise=dataclasses.replace(g2.noise,
                                                                difference_to_noise=2.0))
    assert fz.noise_needs_refresh(g.noise, drowned, age=1)
    failed = dataclasses.replace(g.noise, status="too_small")
    assert fz.noise_needs_refresh(failed, g2, age=1)


def test_report_is_readable_and_serialisable(ridge):
    problem = fz.BilevelProblem(inner=Printed(ridge.inner, 6), outer=ridge.outer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fz.NoiseWarning)
        est = fz.estimate_noise(problem, PHI, rng=0)
        chk = fz.check_meta_gradient(problem, PHI,
                                     estimator=fz.FG2UZO(num_directions=5,
                                                         directions="coordinate"))
    text = str(est)
    for needle in ("status ok", "printed with 6 digits", "forward", "central", "predicted"):
        assert needle in text
    record = json.loads(json.dumps(est.to_dict()))
    assert record["status"] == "ok" and record["output_precision"] == 6
    back = fz.NoiseEstimate.from_dict(record)  # exact: a resumed run takes the same step
    assert back.step_central == est.step_central and back.attempts == est.attempts
    np.testing.assert_array_equal(back.output_noise, est.output_noise)
    assert str(back) == str(est)
    assert "noise     : " in str(chk) and "status ok" in str(chk)
    assert chk.rel_err < 1e-2  # the step follows the noise, so the check still agrees


def test_auto_step_from_an_old_estimate_follows_phi(ridge):
    est = quiet_estimate_noise(ridge.problem(), PHI, rng=0)  # exact: default step
    far = 100 * PHI
    assert auto_step(est, far, "central") == default_step(far, "central")
    noisy = dataclasses.replace(est, status="ok", step_central=10.0)
    assert auto_step(noisy, PHI, "central") == max_step(PHI)  # clipped


# --------------------------------------------------------------------------------------
# FreeFem++: 6 printed digits by default
# --------------------------------------------------------------------------------------

HAVE_FREEFEM = shutil.which("FreeFem++") is not None
ON_CI = os.environ.get("CI") == "true"


@pytest.mark.freefem
@pytest.mark.skipif(not HAVE_FREEFEM and not ON_CI,
                    reason="FreeFem++ not on PATH (apt-get install freefem++)")
def test_freefem_default_precision_is_detected_and_warned():
    from solvers import diffusion_model

    exact_solver = diffusion_model(K=3, precision=17)
    target = torch.as_tensor(exact_solver(np.full(9, 1.5)))

    def outer(theta, phi):
        return 0.5 * ((theta - target) ** 2).sum() * 1e3

    phi = np.linspace(0.8, 1.2, 9)
    coarse = fz.BilevelProblem(inner=diffusion_model(K=3, precision=None), outer=outer)
    fine = fz.BilevelProblem(inner=exact_solver, outer=outer)
    reference = fz.CoordinateFD(step=1e-4).estimate(fine, phi).grad  # 17 digits

    def rel_err(g):
        return np.linalg.norm(g.grad - reference) / np.linalg.norm(reference)

    est = fz.FG2UZO(num_directions=9, directions="coordinate", scheme="forward")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", fz.NoiseWarning)
        g = est.estimate(coarse, phi, rng=0)
    assert g.noise.method == "digits" and g.noise.output_precision == 6
    assert g.noise.relative_error("forward") > 1e-4
    # warned exactly when the predicted error matters, naming the printed digits
    matters = g.noise.relative_error("forward") > WARNING_THRESHOLD
    assert len(caught) == int(matters)
    assert all("printed with 6 significant digits" in str(w.message) for w in caught)
    # the noise-aware step is far better than the full-precision default
    with pytest.warns(fz.ZeroDifferenceWarning, match="step='auto'"):
        default = fz.FG2UZO(num_directions=9, directions="coordinate", scheme="forward",
                            step=default_step(phi, "forward")).estimate(coarse, phi, rng=0)
    # sqrt(eps) is far below 6 printed digits: no output moved, and the estimate says so
    assert default.degenerate and not g.degenerate
    assert rel_err(g) < 1e-2 < 0.1 * rel_err(default)

    with warnings.catch_warnings():
        warnings.simplefilter("error", fz.NoiseWarning)
        g17 = est.estimate(fine, phi, rng=0)
    assert g17.noise.status in ("exact", "ok") and g17.noise.method == "table"
    assert rel_err(g17) < 1e-5


def test_full_precision_model_at_round_points_is_not_taken_for_printed_output():
    # A float64 model evaluated at round numbers along a coordinate line on which it is
    # affine (the offset phi[2]) returns short decimals: that is not rounding noise.
    t = np.linspace(0.0, 3.0, 12)

    def decay(phi):
        return phi[0] * np.exp(-phi[1] * t) + phi[2]

    problem = fz.BilevelProblem(inner=decay, outer=lambda th, ph: 0.5 * (th ** 2).sum())
    phi = np.array([1.0, 1.0, 0.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", fz.NoiseWarning)
        g = fz.CoordinateFD().estimate(problem, phi, rng=0)
    assert g.noise.relative_noise < 1e-12, g.noise
    exact = fz.CoordinateFD(step=1e-6).estimate(problem, phi).grad
    np.testing.assert_allclose(g.grad, exact, rtol=1e-6)


def test_difference_to_noise_follows_the_outer_gradient(ridge):
    # The noise of the projection <g, S> scales with g: a probe made where the outer
    # gradient was 100 times larger must not make the differences look drowned later.
    inner = Printed(ridge.inner, 8)
    big = fz.BilevelProblem(inner=inner, outer=lambda th, ph: 100.0 * ridge.outer(th, ph))
    small = fz.BilevelProblem(inner=inner, outer=ridge.outer)
    est = fz.FG2UZO(num_directions=4, directions="coordinate")
    probe = est.estimate(big, PHI, rng=0).noise
    assert probe.status == "ok" and probe.method == "digits"
    g_big = est.estimate(big, PHI, rng=1, noise=probe)
    g_small = est.estimate(small, PHI, rng=1, noise=probe)
    np.testing.assert_allclose(g_small.noise.difference_to_noise,
                               g_big.noise.difference_to_noise, rtol=1e-9)
    assert g_small.noise.difference_to_noise > 100  # 8 digits: far above the noise
    assert not fz.noise_needs_refresh(probe, g_small, phi=PHI, age=1)
