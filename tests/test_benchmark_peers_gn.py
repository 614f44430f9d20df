"""The Gauss-Newton rows and the robust (non-least-squares) case of
``python -m benchmarks.peers``: exact call counting and grouping, and the robust case's
two implementations agreeing."""

import dataclasses
import math
import threading

import numpy as np
import pytest

import fg2u_zo as fz
from benchmarks import peers
from benchmarks._peer_problems import build_case
from test_benchmark_peers import CountingSolver


@pytest.mark.parametrize("mode", ["lean", "refresh"])
def test_gauss_newton_calls_are_counted_exactly_and_grouped_per_iteration(mode):
    case = build_case("reweight", 10)
    counter = CountingSolver(case.problem.inner)
    case = dataclasses.replace(case, problem=fz.BilevelProblem(
        inner=counter, outer=case.problem.outer, num_params=case.size))
    method = peers.METHODS_BY_NAME["GN " + mode]
    setting = {"num_directions": 4, "mode": mode, "radius": 1.0}
    trace = method.run(case, setting, seed=0, budget=60, stop_at=-math.inf)
    assert trace.nfev == counter.calls <= 60
    groups = trace.groups[:-1].tolist()          # the last group is the final value solve
    assert groups[0] == 5                        # the start and 4 directions
    # At most the trial and b = 4 directions per group.
    assert max(groups) <= 5
    if mode == "lean":
        # trial + 4 new directions, then trial + the last 2; once the subspace is
        # complete, a trial alone, or with the stale columns after a failed step (at
        # most 4), or those alone when the model sees no decrease worth a trial
        assert groups[1:3] == [5, 3]
        assert 1 in groups[3:]
    else:
        # trial + 4 directions (new first, then the stalest re-measured) in every group,
        # or the 4 directions alone when the model sees no decrease worth a trial
        assert set(groups) <= {4, 5} and groups.count(5) > groups.count(4)
    assert trace.groups[-1] == 1
    assert math.isfinite(trace.own_time) and trace.own_time >= 0


def test_robust_case_residuals_square_sum_to_the_cauchy_loss_and_the_adjoint_is_right():
    case = build_case("robust", 16, cells=16)
    phi = np.random.default_rng(1).uniform(-1, 1, 16)
    theta = case.problem.inner(phi)
    assert case.value(phi) == pytest.approx(case.problem.outer_value(theta, phi), rel=1e-12)
    _, grad = case.problem.inner.misfit_gradient(phi, case.problem.outer)
    h = 1e-6
    fd = np.array([(case.value(phi + h * e) - case.value(phi - h * e)) / (2 * h)
                   for e in np.eye(16)])
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9 * np.abs(fd).max())
    # Outliers: 5 % of the 256 sensors; the loss is not a sum of squares of the misfits.
    assert case.info["outliers"] == round(0.05 * 256)
    assert case.family not in peers.LEAST_SQUARES_FAMILIES


class LockedCountingSolver(CountingSolver):
    """CountingSolver for a solver called from several threads at once."""

    def __init__(self, solver):
        super().__init__(solver)
        self._lock = threading.Lock()

    def __call__(self, phi, *, warm_start=None, seed=None):
        with self._lock:
            self.calls += 1
        return self.solver(phi)


def reweight_counted(counter_class):
    """reweight-10 with its inner solver counted by ``counter_class``."""
    case = build_case("reweight", 10)
    counter = counter_class(case.problem.inner)
    return dataclasses.replace(case, problem=fz.BilevelProblem(
        inner=counter, outer=case.problem.outer, num_params=case.size)), counter


def test_gn_defaults_row_runs_the_library_untuned_and_counts_every_call():
    case, counter = reweight_counted(LockedCountingSolver)
    method = peers.METHODS_BY_NAME["GN (defaults)"]
    assert peers.GRIDS[method.name](case.family, case.size) == [{}]
    with pytest.raises(ValueError, match="takes no settings"):
        method.run(case, {"radius": 1.0}, seed=0, budget=200, stop_at=-math.inf)
    budget = 200
    trace = method.run(case, {}, seed=0, budget=budget, stop_at=-math.inf)
    assert trace.setting == "defaults"
    # every solve is counted, the run never overruns the budget, and its groups add up
    assert trace.nfev == counter.calls == int(trace.groups.sum()) <= budget
    if trace.status == "max_nfev":               # it used what it was given
        assert trace.nfev >= budget - peers.DEFAULTS_WORKERS - 1
    assert trace.groups[-1] == 1                  # the final value solve


def test_dfbgn_row_is_counted_exactly_and_runs_without_bounds():
    case, counter = reweight_counted(CountingSolver)
    method = peers.METHODS_BY_NAME["DFBGN"]
    trace = method.run(case, {"sigma0": 0.5}, seed=0, budget=80, stop_at=-math.inf)
    assert trace.status == "budget", trace.status   # ran (no error about bounds)
    assert trace.nfev == counter.calls <= 80
    assert trace.groups[0] == 2 and set(trace.groups[1:].tolist()) == {1}
    assert method.least_squares and not method.bounded
