"""The machinery of ``python -m benchmarks.peers``: the rounds model, exact call
counting through every method's path, the problems' two implementations agreeing, and
the command's JSON line."""

import dataclasses
import json
import math

import numpy as np
import pytest

import fg2u_zo as fz
from benchmarks import peers
from benchmarks._peer_problems import Diffusion2D, WeightedRidge, build_case


class CountingSolver:
    """Counts the calls of an inner solver (in this process: sequential backend)."""

    def __init__(self, solver):
        self.solver, self.calls = solver, 0

    def __call__(self, phi, *, warm_start=None, seed=None):
        self.calls += 1
        return self.solver(phi)


@pytest.fixture(scope="module")
def small_case():
    return build_case("reweight", 10)


def counted(case):
    counter = CountingSolver(case.problem.inner)
    problem = fz.BilevelProblem(inner=counter, outer=case.problem.outer,
                                num_params=case.size)
    return dataclasses.replace(case, problem=problem), counter


# -- rounds model --------------------------------------------------------------------------
def test_rounds_is_sum_of_ceil_groups_over_workers():
    groups = [11, 1, 1, 64, 65, 2]
    assert peers.rounds(groups, 1) == sum(groups)
    assert peers.rounds(groups, 8) == 2 + 1 + 1 + 8 + 9 + 1
    assert peers.rounds(groups, 64) == 1 + 1 + 1 + 1 + 2 + 1


def test_trace_counts_a_group_when_it_has_finished():
    # FG2UZO-like: steps of 8 concurrent calls; the value drops below 0.5 in step 3.
    trace = peers.Trace("m", "", 0, np.array([8, 8, 8, 8, 1]),
                        np.array([1.0, 0.7, 0.4, np.nan, 0.3]), 0.0)
    assert trace.nfev == 33
    assert trace.calls_to(0.5) == 24
    assert trace.rounds_to(0.5, 1) == 24      # W = 1: rounds equal calls
    assert trace.rounds_to(0.5, 8) == 3
    assert trace.rounds_to(0.5, 64) == 3
    assert trace.calls_to(0.35) == 33         # the final solve's value counts too
    assert math.isinf(trace.calls_to(0.1))
    assert math.isinf(trace.rounds_to(0.1, 64))
    calls, best = trace.best_so_far()
    assert calls.tolist() == [8, 16, 24, 32, 33]
    assert best.tolist() == [1.0, 0.7, 0.4, 0.4, 0.3]  # NaN groups keep the best so far


# -- exact call counting --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["CMA-ES", "L-BFGS-B (FD)", "SPSA", "DFO-LS"])
def test_peer_calls_are_counted_exactly(small_case, name):
    case, counter = counted(small_case)
    method = peers.METHODS_BY_NAME[name]
    setting = peers.GRIDS[name](case.family, case.size)[0]
    trace = method.run(case, setting, seed=0, budget=120, stop_at=-math.inf)
    assert trace.nfev == counter.calls == 120   # the whole budget, not one call more
    if name == "L-BFGS-B (FD)":   # every evaluation: value + N forward differences
        assert set(trace.groups.tolist()) <= {case.size + 1, 120 % (case.size + 1)}
    if name == "DFO-LS":          # the initial N + 1 points run together
        assert trace.groups[0] == case.size + 1 and set(trace.groups[1:].tolist()) == {1}
    if name == "SPSA":
        assert set(trace.groups.tolist()) == {2}


def test_fg2uzo_calls_are_counted_exactly_and_grouped_per_step(small_case):
    case, counter = counted(small_case)
    method = peers.METHODS_BY_NAME["FG2UZO"]
    setting = {"num_directions": 7, "lr": 0.3, "directions": "orthogonal"}
    trace = method.run(case, setting, seed=0, budget=100, stop_at=-math.inf)
    assert trace.nfev == counter.calls <= 100
    # one group of b + 1 = 8 per step (forward differences), then the final solve
    assert set(trace.groups[:-1].tolist()) == {8} and trace.groups[-1] == 1
    assert trace.nfev > 100 - 8 - 1


def test_early_stop_past_the_target_keeps_the_counts(small_case):
    case, counter = counted(small_case)
    method = peers.METHODS_BY_NAME["DFO-LS"]
    trace = method.run(case, {"sigma0": 0.5}, seed=0, budget=1000, stop_at=case.target)
    assert trace.nfev == counter.calls < 1000
    assert trace.final_best() <= case.target


# -- the problems: two implementations agree ------------------------------------------------
def test_numpy_objective_equals_the_torch_outer_loss():
    for family, size in (("diffusion", 16), ("reweight", 10)):
        case = build_case(family, size)
        phi = np.random.default_rng(1).uniform(-1, 1, size)
        theta = case.problem.inner(phi)
        assert case.value(phi) == pytest.approx(case.problem.outer_value(theta, phi),
                                                rel=1e-12)


def test_diffusion_banded_solve_matches_sparse_linear_and_adjoint_matches_fd():
    phi = np.random.default_rng(2).uniform(-1, 1, 16)
    banded, sparse = Diffusion2D(16, 4), Diffusion2D(16, 4, method="spsolve")
    assert np.allclose(banded(phi), sparse(phi), rtol=1e-11, atol=0)
    case = build_case("diffusion", 16, cells=16)
    _, grad = case.problem.inner.misfit_gradient(phi, case.problem.outer)
    h = 1e-6
    fd = np.array([(case.value(phi + h * e) - case.value(phi - h * e)) / (2 * h)
                   for e in np.eye(16)])
    assert np.allclose(grad, fd, rtol=1e-5, atol=1e-9 * np.abs(fd).max())


def test_weighted_ridge_closed_form_matches_sklearn_fit():
    pytest.importorskip("sklearn")
    case = build_case("reweight", 10)
    closed = case.problem.inner
    via_sklearn = WeightedRidge(closed.X, closed.y, closed.alpha, sklearn=True)
    phi = np.random.default_rng(3).uniform(-2, 2, 10)
    assert np.allclose(closed(phi), via_sklearn(phi), rtol=1e-10, atol=1e-12)


# -- the command -----------------------------------------------------------------------------
def test_quick_run_prints_the_json_line_with_the_required_keys(tmp_path, capsys):
    peers.main(["--quick", "--only", "reweight-10", "--out", str(tmp_path),
                "--methods", "FG2UZO", "DFO-LS", "L-BFGS-B (FD)", "SPSA"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    for key in ("rounds_ratio_W64", "calls_ratio", "problems", "targets", "met", "wall_s"):
        assert key in summary
    entry = summary["problems"]["reweight-10"]
    for key in ("calls", "rounds_W1", "rounds_W8", "rounds_W64"):
        assert {"fg2uzo", "best_peer", "ratio", "lower_bound"} <= set(entry[key])
    # W = 1 rounds are calls: the same comparison
    assert entry["rounds_W1"]["ratio"] == entry["calls"]["ratio"]
    assert (tmp_path / "peers_quick.md").exists()
    assert (tmp_path / "peers_quick_reweight-10.png").exists()
