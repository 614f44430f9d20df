"""Bad input gets a library error that is also the builtin, naming the argument."""

import numpy as np
import pytest
import torch

import fg2u_zo as fz
import solvers
from fg2u_zo.testing import RidgeHyperproblem


@pytest.fixture
def ridge():
    return RidgeHyperproblem(num_features=3, rng=0)


def _outer(theta, phi):
    return (theta ** 2).sum()


@pytest.mark.parametrize("phi, exc, match", [
    (np.zeros((3, 1)), ValueError, "phi.*1-D"),
    (np.zeros(4), ValueError, "phi.*3 entries"),
    (np.array([0.0, np.nan, 1.0]), ValueError, "phi.*finite"),
    (np.array([0.0, np.inf, 1.0]), ValueError, "phi.*finite"),
    ("abc", TypeError, "phi"),
    (None, TypeError, "phi"),
    (np.zeros(0), ValueError, "phi"),
])
def test_bad_phi(ridge, phi, exc, match):
    with pytest.raises(exc, match=match) as info:
        fz.FG2UZO(num_directions=2).estimate(ridge.problem(), phi)
    assert isinstance(info.value, fz.FG2UError)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_directions": 0}, "num_directions"),
    ({"num_directions": 2.5}, "num_directions"),
    ({"step": 0.0}, "step"),
    ({"step": -0.1}, "step.*> 0"),
    ({"step": "tiny"}, "step"),
    ({"scheme": "backward"}, "scheme"),
    ({"directions": "cauchy"}, "directions"),
    ({"num_directions": 3, "antithetic": True}, "even"),
])
def test_bad_estimator_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match) as info:
        fz.FG2UZO(**kwargs)
    assert isinstance(info.value, fz.FG2UError)


def test_bad_exact_and_reference_arguments():
    with pytest.raises(fz.FG2UValueError, match="num_directions"):
        fz.FG2U(num_directions=0)
    with pytest.raises(fz.FG2UValueError, match="chunk_size"):
        fz.FG2U(chunk_size=0)
    with pytest.raises(fz.FG2UValueError, match="through"):
        fz.CoordinateFD(through="outer")
    with pytest.raises(fz.FG2UValueError, match="step"):
        fz.BlackBoxES(step=-1.0)


@pytest.mark.parametrize("output, exc, match", [
    (lambda phi: np.zeros(len(phi) + 1), ValueError, "shape"),
    (lambda phi: np.full(len(phi), np.nan), ValueError, "non-finite"),
    (lambda phi: None, TypeError, "not an array"),
    (lambda phi: "theta", TypeError, "not an array"),
])
def test_bad_solver_output_at_base_point(output, exc, match):
    calls = {"n": 0}

    def solver(phi):
        calls["n"] += 1
        # base point fine for the shape case, so the mismatch shows at perturbed points
        if match == "shape" and calls["n"] == 1:
            return np.zeros(len(phi))
        return output(phi)

    problem = fz.BilevelProblem(inner=solver, outer=_outer)
    with pytest.raises(exc, match=match) as info:
        fz.FG2UZO(num_directions=2).estimate(problem, np.zeros(3), max_retries=0)
    assert isinstance(info.value, fz.InnerSolverError)


def test_solver_exception_carries_traceback_tail():
    def solver(phi):
        raise RuntimeError("mesh generation failed at node 17")

    problem = fz.BilevelProblem(inner=solver, outer=_outer)
    with pytest.raises(fz.InnerSolverError, match="node 17"):
        fz.FG2UZO(num_directions=2).estimate(problem, np.zeros(3))


@pytest.mark.parametrize("outer, exc, match", [
    (lambda theta, phi: theta ** 2, ValueError, "scalar"),
    (lambda theta, phi: 1.0, TypeError, "torch tensor"),
    (lambda theta, phi: torch.tensor(1.0, dtype=torch.float64), ValueError, "depends on neither"),
])
def test_bad_outer(ridge, outer, exc, match):
    problem = fz.BilevelProblem(inner=ridge.inner, outer=outer)
    with pytest.raises(exc, match=match) as info:
        fz.FG2UZO(num_directions=2).estimate(problem, np.zeros(3))
    assert isinstance(info.value, fz.FG2UError)


def test_bad_problem_and_wrong_estimator_for_problem(ridge):
    with pytest.raises(TypeError, match="outer"):
        fz.BilevelProblem(inner=ridge.inner, outer=None)
    with pytest.raises(TypeError, match="inner"):
        fz.BilevelProblem(inner=3, outer=_outer)
    with pytest.raises(ValueError, match="num_params"):
        fz.BilevelProblem(inner=ridge.inner, outer=_outer, num_params=0)
    with pytest.raises(fz.FG2UValueError, match="inner_torch"):
        fz.FG2U().estimate(ridge.problem(), np.zeros(3))
    with pytest.raises(fz.FG2UValueError, match="inner_torch"):
        fz.RGU().estimate(ridge.problem(), np.zeros(3))
    np_outer = fz.BilevelProblem(inner=ridge.inner,
                                 outer=lambda th, ph: float(np.sum(th ** 2)),
                                 differentiable_outer=False)
    with pytest.raises(fz.FG2UValueError, match="BlackBoxES"):
        fz.FG2UZO().estimate(np_outer, np.zeros(3))
    g = fz.BlackBoxES(num_directions=4).estimate(np_outer, np.zeros(3), rng=0)
    assert np.all(np.isfinite(g.grad))


def test_rng_and_evaluator_arguments(ridge):
    with pytest.raises(TypeError, match="rng"):
        fz.FG2UZO().estimate(ridge.problem(), np.zeros(3), rng=np.random.RandomState(0))
    with pytest.raises(ValueError, match="backend"):
        fz.FG2UZO().estimate(ridge.problem(), np.zeros(3), backend="mpi")
    with pytest.raises(ValueError, match="n_jobs"):
        fz.FG2UZO().estimate(ridge.problem(), np.zeros(3), n_jobs=0)
    with pytest.raises(ValueError, match="either"):
        fz.FG2UZO().estimate(ridge.problem(), np.zeros(3), evaluator=fz.Evaluator(),
                             n_jobs=2)


def test_errors_are_both_library_and_builtin():
    assert issubclass(fz.FG2UValueError, ValueError)
    assert issubclass(fz.FG2UTypeError, TypeError)
    assert issubclass(fz.InnerSolverError, RuntimeError)
    assert issubclass(fz.ConfigError, ValueError)
    assert issubclass(fz.NoiseWarning, UserWarning)


# -- one set of checks for fg2u_zo and the adapters in solvers ---------------------------------
def _decay(t, y, p):
    return -p[0] * y + p[-1]


def _ridge_loss(theta, phi):
    return 0.5 * ((theta - phi) ** 2).sum() + 0.5 * (theta ** 2).sum()


def _phi_takers():
    """Callables that check a phi of 2 entries: the estimator path and three adapters."""
    x = np.linspace(-1.0, 1.0, 64, endpoint=False)
    burgers = solvers.Burgers(-np.sin(np.pi * x), [0.0, 0.01], n_modes=64)
    ivp = solvers.SolveIVP(_decay, [1.0], (0.0, 1.0), [1.0])
    unrolled = solvers.TorchUnrolled(_ridge_loss, np.zeros(2), 5)
    problem = fz.BilevelProblem(inner=lambda phi: np.zeros(1), outer=_outer, num_params=2)
    return {"estimate": lambda phi: fz.FG2UZO(num_directions=2).estimate(problem, phi),
            "Burgers": burgers, "SolveIVP": ivp, "TorchUnrolled": unrolled}


@pytest.mark.parametrize("taker", ["estimate", "Burgers", "SolveIVP", "TorchUnrolled"])
@pytest.mark.parametrize("phi, exc, match", [
    (np.array([0.5, np.nan]), fz.FG2UValueError,
     r"`phi` must be finite; entries \[1\] are \[nan\]"),
    (np.array([0.5 + 1j, 0.5]), fz.FG2UValueError, "`phi` must be real, got complex values"),
    ("0.5", fz.FG2UTypeError, "`phi` must be"),
], ids=["nan", "complex", "text"])
def test_fg2u_zo_and_the_adapters_refuse_bad_phi_alike(taker, phi, exc, match):
    with pytest.raises(exc, match=match):
        _phi_takers()[taker](phi)


@pytest.mark.parametrize("build, match", [
    (lambda: fz.FG2UZO(step=-0.1), "`step` must be > 0, got -0.1"),
    (lambda: solvers.SolveIVP(_decay, [1.0], (0.0, 1.0), [1.0], rtol=-0.1),
     "`rtol` must be > 0, got -0.1"),
    (lambda: solvers.Burgers(np.zeros(64), [0.0, 0.1], dt=-0.1),
     "`dt` must be > 0, got -0.1"),
    (lambda: solvers.Burgers(np.zeros(64), [0.0, 0.1], dt=float("inf")),
     "`dt` must be a finite number > 0, got inf"),
    (lambda: solvers.Subprocess(["true"], output="o.txt", timeout=-0.1),
     "`timeout` must be > 0, got -0.1"),
])
def test_positive_numbers_are_checked_alike(build, match):
    with pytest.raises(fz.FG2UValueError, match=match):
        build()
