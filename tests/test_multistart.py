"""Parallel multi-start: the global minimum of a shifted Rastrigin function, the parallel
groups as computed from the configuration, lockstep runs equal to runs alone, successive
halving, the non-identifiability warning, failing runs."""

import math
import warnings

import numpy as np
import pytest
import torch

import fg2u_zo as fz
from fg2u_zo.errors import FG2UValueError, FG2UWarning, InnerSolverError
from fg2u_zo.globalize.multistart import rung_steps as _rung_steps

SHIFT = np.array([0.7, -1.3])
BOX = (-2.0, 2.0)
# Central differences along both axes: 4 perturbed solves per step, no noise probe.
EST = fz.FG2UZO(num_directions=2, directions="orthogonal", step=1e-6)
PER_STEP = 4


def rastrigin(inner=None):
    """sum(x^2 - 10 cos(2 pi x) + 10) at x = phi - SHIFT: a local minimum near every
    point of the shifted integer grid (16 in the box), the global one at SHIFT."""
    return fz.BilevelProblem(
        inner=inner or (lambda phi: phi - SHIFT), num_params=2,
        outer=lambda x, phi: (x ** 2 - 10 * torch.cos(2 * math.pi * x) + 10).sum())


def expected_groups(num_design, num_local, steps, rungs, halving):
    """The groups a lockstep multi-start with fixed-length runs must send: the design,
    then per step the live runs' base solves and their perturbed solves, then the final
    value at every run's end."""
    groups = [num_design]
    live = num_local
    for step in range(steps):
        groups += [live, PER_STEP * live]
        if step + 1 in rungs:
            live = max(1, math.ceil(live / halving))
    return groups + [num_local]


def stopped_at(res):
    return [r.stopped_at for r in res.runs]


def starts(res):
    return np.asarray([r.start for r in res.runs])


def test_multistart_finds_the_global_minimum_in_the_computed_rounds():
    res = fz.multistart(rastrigin(), BOX, EST, num_starts=64, num_local=16, steps=40,
                        optimizer="Rprop", lr=0.05, rng=0)
    # F ~ (1 + 20 pi^2) |x|^2 near the minimum: F < 1e-6 is |x| < 1e-4.
    np.testing.assert_allclose(res.phi, SHIFT, atol=1e-4)
    assert res.value < 1e-6
    rungs = _rung_steps(40, 16, 2)
    assert rungs == (2, 5, 10, 20)     # 40 / 16, 40 / 8, 40 / 4, 40 / 2
    groups = expected_groups(64, 16, 40, rungs, 2)
    assert res.groups == groups
    for w in (1, 8, 64):
        assert res.rounds(w) == sum(math.ceil(g / w) for g in groups)
    assert res.rounds(64) == 1 + 2 * 40 + 1          # every group fits 64 workers
    assert res.nfev == sum(groups)
    # Halving stopped 8, 4, 2 and 1 runs at the four rungs; one ran all 40 steps.
    assert sorted(s for s in stopped_at(res) if s is not None) == [0] * 8 + [1] * 4 + [
        2] * 2 + [3]
    assert stopped_at(res).count(None) == 1
    assert res.design.shape == (64, 2) and np.all(np.abs(res.design) <= 2.0)
    assert res.ends.shape == (16, 2) and res.end_values.shape == (16,)
    assert res.end_values.min() == res.value

    # A single run of the same local method from a corner ends in a local minimum.
    alone = fz.minimize(rastrigin(), np.array([-1.5, 1.5]), EST, optimizer="Rprop",
                        lr=0.05, steps=40, bounds=BOX, rng=0, progress=False)
    assert alone.value > 1.0 and np.max(np.abs(alone.phi - SHIFT)) > 0.5


def test_lockstep_runs_equal_runs_alone():
    # Gathering the runs' solves into shared groups must not change any run: each end
    # equals, bit for bit, a minimize from the same start with the same generator.
    res = fz.multistart(rastrigin(), BOX, EST, num_starts=16, num_local=3, steps=12,
                        halving=1, optimizer="Rprop", lr=0.05, rng=7)
    seeds = np.random.default_rng(7).spawn(3)
    for start, seed, end, value in zip(starts(res), seeds, res.ends, res.end_values):
        alone = fz.minimize(rastrigin(), start, EST, optimizer="Rprop", lr=0.05, steps=12,
                            bounds=BOX, rng=seed, progress=False)
        assert np.array_equal(alone.phi, end)
        assert alone.value == value
    assert res.groups == [16] + [3, 3 * PER_STEP] * 12 + [3]


def test_lockstep_gauss_newton_runs_equal_runs_alone():
    # The runs take turns in one thread (the Gauss-Newton model uses torch.func, which
    # is not thread-safe). Bit for bit as alone, too.
    res = fz.multistart(rastrigin(), BOX, EST, num_starts=16, num_local=4, steps=10,
                        halving=1, optimizer="gauss-newton", rng=3)
    seeds = np.random.default_rng(3).spawn(4)
    for start, seed, end in zip(starts(res), seeds, res.ends):
        alone = fz.minimize(rastrigin(), start, EST, optimizer="gauss-newton", steps=10,
                            bounds=BOX, rng=seed, progress=False)
        assert np.array_equal(alone.phi, end)


def test_design_is_screened_in_one_group_with_phi0_first():
    res = fz.multistart(rastrigin(), BOX, EST, phi0=np.array([0.5, -1.0]), num_starts=8,
                        num_local=2, steps=3, halving=1, optimizer="Rprop", lr=0.05,
                        rng=1)
    assert res.groups[0] == 9
    np.testing.assert_array_equal(res.design[0], [0.5, -1.0])
    # F at the screened points, as the problem computes it.
    f = rastrigin()
    values = [f.outer_value(f.inner(p), p) for p in res.design]
    np.testing.assert_allclose(res.design_values, values, rtol=1e-12)
    # The local runs start from the two best screened points.
    best = np.argsort(values)[:2]
    np.testing.assert_array_equal(starts(res), res.design[best])


def test_num_starts_zero_runs_from_phi0_alone():
    res = fz.multistart(rastrigin(), BOX, EST, phi0=np.array([0.6, -1.2]), num_starts=0,
                        steps=40, optimizer="Rprop", lr=0.05, rng=0)
    np.testing.assert_allclose(res.phi, SHIFT, atol=1e-4)
    assert len(res.ends) == 1 and res.groups == [1, PER_STEP] * 40 + [1]


def test_equal_minima_at_different_points_warn():
    # F = (phi^2 - 1)^2 has two exact minima, +1 and -1: the data cannot tell them apart.
    problem = fz.BilevelProblem(inner=lambda phi: phi ** 2, num_params=1,
                                outer=lambda theta, phi: ((theta - 1.0) ** 2).sum())
    est = fz.FG2UZO(num_directions=1, step=1e-6)
    with pytest.warns(FG2UWarning, match="nearly equal F"):
        res = fz.multistart(problem, (-2.0, 2.0), est, num_starts=16, num_local=4,
                            steps=60, halving=1, optimizer="Rprop", lr=0.05, rng=0)
    assert sorted(np.round(res.ends[:, 0], 4).tolist())[0] == -1.0
    assert sorted(np.round(res.ends[:, 0], 4).tolist())[-1] == 1.0
    # One minimum only (phi^2 - 1 replaced by phi - 1): no warning.
    problem = fz.BilevelProblem(inner=lambda phi: phi, num_params=1,
                                outer=lambda theta, phi: ((theta - 1.0) ** 2).sum())
    with warnings.catch_warnings():
        warnings.simplefilter("error", FG2UWarning)
        fz.multistart(problem, (-2.0, 2.0), est, num_starts=16, num_local=4, steps=60,
                      halving=1, optimizer="Rprop", lr=0.05, rng=0)


def test_a_failing_run_is_reported_and_the_others_go_on():
    def inner(phi):
        # A hole in the parameter space that runs starting right of it must cross.
        if 0.9 < phi[0] < 1.1:
            raise InnerSolverError("no solution here", kind="not_converged")
        return phi - SHIFT

    # The only run fails: its error is raised.
    with pytest.raises(InnerSolverError, match="no solution here"):
        fz.multistart(rastrigin(inner), BOX, EST, phi0=np.array([1.15, -1.3]),
                      num_starts=0, steps=40, optimizer="Rprop", lr=0.05, rng=0)

    # Among other runs: only the one that crosses the hole fails.
    res = fz.multistart(rastrigin(inner), BOX, EST, phi0=np.array([1.15, -1.3]),
                        num_starts=4, num_local=5, steps=40, halving=1, optimizer="Rprop",
                        lr=0.05, rng=0)
    crossing = [i for i, s in enumerate(starts(res)) if s[0] == 1.15]
    assert len(crossing) == 1 and res.success
    assert [r.index for r in res.runs if r.error is not None] == crossing
    assert "no solution here" in res.runs[crossing[0]].error
    assert res.runs[crossing[0]].status == "failed"
    assert np.sum(np.isfinite(res.end_values)) == 4
    assert res.end_values[crossing[0]] == np.inf


def test_multistart_refuses_bad_input():
    problem = rastrigin()
    with pytest.raises(FG2UValueError, match="finite"):
        fz.multistart(problem, (-np.inf, 1.0), EST)
    with pytest.raises(FG2UValueError, match="phi0"):
        fz.multistart(problem, BOX, EST, phi0=np.array([3.0, 0.0]))
    with pytest.raises(FG2UValueError, match="phi0"):
        fz.multistart(problem, BOX, EST, num_starts=0)
    with pytest.raises(FG2UValueError, match="num_local"):
        fz.multistart(problem, BOX, EST, num_local=0)
    with pytest.raises(FG2UValueError, match="num_params"):
        fz.multistart(fz.BilevelProblem(inner=lambda p: p, outer=lambda t, p: t.sum()),
                      BOX, EST)
    with pytest.raises(FG2UValueError, match="halving"):
        fz.multistart(problem, BOX, EST, halving=0.5)


def test_multistart_of_a_continuation_halves_after_each_phase():
    t = np.linspace(0.0, 10.0, 101)
    data = torch.as_tensor(np.sin(1.3 * t))

    def build(horizon):
        keep = t <= horizon
        return fz.BilevelProblem(inner=lambda phi: np.sin(phi[0] * t[keep]), num_params=1,
                                 outer=lambda theta, phi: ((theta - data[keep]) ** 2).mean())

    phases = fz.horizon_phases(build, fz.horizon_schedule(t[1:]), steps=60,
                               stop=fz.Converged(xtol=1e-5))
    res = fz.multistart(build(10.0), (0.2, 3.0), fz.FG2UZO(num_directions=1, step=1e-6),
                        phases=phases, num_starts=8, num_local=4, optimizer="Rprop",
                        lr=0.05, rng=0)
    assert abs(res.phi[0] - 1.3) < 1e-4
    # 4 runs in phase 0, 2 in phase 1, then 1: halved at the ends of phases 0 and 1.
    assert sorted(s for s in stopped_at(res) if s is not None) == [0, 0, 1]
    assert res.groups[0] == 8
    # Every end was evaluated on the whole horizon, in one group.
    assert res.groups[-1] == 4 and np.all(np.isfinite(res.end_values))
    assert sum(res.groups) == res.nfev


def test_multistart_starts_no_thread_and_warns_once(monkeypatch):
    import threading

    from fg2u_zo.errors import NoiseWarning

    def printed(phi):  # 3 significant digits: every run's noise probe would warn
        return np.array([float(f"{v:.2e}") for v in np.exp(phi) + phi ** 2])

    problem = fz.BilevelProblem(inner=printed, num_params=2,
                                outer=lambda th, phi: 0.5 * (th ** 2).sum())
    before = threading.active_count()
    counts = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fz.multistart(problem, BOX, fz.FG2UZO(num_directions=2), num_starts=8,
                      num_local=3, steps=3, halving=1, optimizer="Rprop", lr=0.05, rng=0,
                      callback=lambda r: counts.append(threading.active_count()))
    assert counts and set(counts) == {before}
    noise = [w for w in caught if issubclass(w.category, NoiseWarning)]
    assert len(noise) == 1
    # ... and it points at this file, the user's call, not at a library line.
    assert noise[0].filename == __file__


def test_multistart_takes_scipy_bounds_like_minimize():
    # The copies that disagreed: multistart refused scipy.optimize.Bounds, minimize took
    # them; both go through one bounds parser now.
    from scipy.optimize import Bounds

    a = fz.multistart(rastrigin(), Bounds([-2.0, -2.0], [2.0, 2.0]), EST, num_starts=8,
                      num_local=2, steps=5, halving=1, optimizer="Rprop", lr=0.05, rng=0)
    b = fz.multistart(rastrigin(), BOX, EST, num_starts=8, num_local=2, steps=5, halving=1,
                      optimizer="Rprop", lr=0.05, rng=0)
    assert a.phi.tobytes() == b.phi.tobytes()
    with pytest.raises(fz.FG2UTypeError, match="fz.MultiStart"):
        fz.minimize(rastrigin(), np.zeros(2), EST, bounds=BOX, multistart={"num_starts": 8})


def test_nothing_given_to_multistart_is_silently_ignored():
    # steps=, rungs= and stop= were ignored when the local runs were a continuation.
    phases = [fz.Phase(steps=5), fz.Phase(steps=5)]
    with pytest.raises(FG2UValueError, match="`steps`.*or `phases`"):
        fz.multistart(rastrigin(), BOX, EST, phases=phases, steps=40)
    with pytest.raises(FG2UValueError, match="rungs"):
        fz.multistart(rastrigin(), BOX, EST, phases=phases, rungs=[2])
    res = fz.multistart(rastrigin(), BOX, EST, phases=phases, num_starts=8, num_local=2,
                        halving=1, stop=fz.Converged(xtol=1.0, patience=1),
                        optimizer="Rprop", lr=0.05, rng=0)
    # stop= became the last phase's rule: every run converged early in it.
    assert all(r.status == "converged" and r.phases[-1].steps < 5 for r in res.runs)
