"""Continuation in the horizon: the schedule, the move-on rule, the phases' problems and
their history, and a rugged misfit that only continuation gets right."""

import numpy as np
import pytest
import torch

import fg2u_zo as fz
from fg2u_zo.errors import FG2UTypeError, FG2UValueError

# Frequency fitting, the smallest rugged misfit: F(w) = mean (sin(w t) - sin(1.3 t))^2
# over t <= 10 has a local minimum wherever some crests line up (near 2.1 for a start
# at 2, see the Continuation docstring); over t <= 1.2 it is unimodal on [0.5, 3].
T = np.linspace(0.0, 10.0, 101)
W_TRUE = 1.3
DATA = torch.as_tensor(np.sin(W_TRUE * T))
ESTIMATOR = fz.FG2UZO(num_directions=1, step=1e-6)


class Sine:
    """sin(w t) on the times up to a horizon; records how far each solve ran."""

    def __init__(self, times, log):
        self.times, self.log = times, log

    def __call__(self, phi):
        self.log.append(self.times[-1])
        return np.sin(phi[0] * self.times)


def make_build(log=None):
    log = [] if log is None else log

    def build(horizon):
        keep = T <= horizon
        data = DATA[keep]
        return fz.BilevelProblem(inner=Sine(T[keep], log), num_params=1,
                                 outer=lambda theta, phi: ((theta - data) ** 2).mean())
    return build


# -- horizon_schedule -------------------------------------------------------------------
def test_schedule_doubles_the_horizon_down_to_min_points():
    times = np.linspace(0.01, 1.0, 100)
    h = fz.horizon_schedule(times)
    # 10 points are seen by t = 0.10; 1, 0.5, 0.25, 0.125 (0.0625 < 0.10 is not
    # reached), each moved down to the last observation it covers.
    np.testing.assert_allclose(h, [0.12, 0.25, 0.5, 1.0])
    assert np.all(np.isin(h, times))
    assert np.sum(times <= h[0]) >= 10
    assert fz.horizon_schedule(times, num_phases=2).tolist() == [0.5, 1.0]
    assert fz.horizon_schedule(times, growth=4.0).tolist() == [0.25, 1.0]
    assert fz.horizon_schedule(times, min_points=100).tolist() == [1.0]


def test_schedule_by_points_doubles_the_observations():
    # Observations crowded late: growth in time would give a first phase with few
    # points; growth in points puts the horizons at quantiles.
    times = np.sort(1.0 - np.linspace(0.0, 1.0, 64, endpoint=False) ** 2)
    h = fz.horizon_schedule(times, spacing="points", min_points=8)
    counts = [int(np.sum(times <= x)) for x in h]
    assert counts == [8, 16, 32, 64]


def test_schedule_refuses_bad_input():
    with pytest.raises(FG2UValueError, match="growth"):
        fz.horizon_schedule([0.1, 0.2], growth=1.0)
    with pytest.raises(FG2UValueError, match="times"):
        fz.horizon_schedule([])
    with pytest.raises(FG2UValueError, match="times"):
        fz.horizon_schedule([-0.1, 0.2])
    with pytest.raises(FG2UValueError, match="horizon"):
        fz.horizon_schedule([0.5, 1.0], horizon=0.1)


# -- Converged --------------------------------------------------------------------------
def test_converged_needs_patience_steps_below_xtol():
    rule = fz.Converged(xtol=1e-3, patience=3)
    assert not rule.check([[0.0], [1e-4], [2e-4]])               # too few steps
    assert rule.check([[0.0], [1e-4], [2e-4], [3e-4]])
    assert not rule.check([[0.0], [0.1], [0.1001], [0.1002]])     # one move of 0.1
    assert not rule.check([[0.0], [1e-4], [2e-4], [3e-4]], trials=[0, 0.5, 0])
    assert fz.Converged(xtol=0.0, snr=1.0, patience=2).check(
        [[0.0], [1.0]], snrs=[0.5, 0.3])
    assert not fz.Converged(xtol=0.0, snr=1.0, patience=2).check(
        [[0.0], [1.0]], snrs=[0.5, 3.0])
    with pytest.raises(FG2UValueError):
        fz.Converged(patience=0)


# -- continuation: phases of one run ------------------------------------------------------
def test_continuation_reaches_the_minimum_a_single_run_misses():
    log = []
    build = make_build(log)
    horizons = fz.horizon_schedule(T[1:])
    phases = fz.horizon_phases(build, horizons, steps=100, stop=fz.Converged(xtol=1e-5))
    res = fz.minimize(build(10.0), np.array([2.0]), ESTIMATOR, phases=phases,
                      optimizer="Rprop", lr=0.05, rng=0, progress=False)
    assert abs(res.phi[0] - W_TRUE) < 1e-4, res
    assert res.status == "converged" and res.success
    solves = list(log)
    # The same local method over the whole horizon from the same start stops in the
    # local minimum near 2.1 (F ~ 0.9 there, against ~1e-10 at the truth).
    alone = fz.minimize(build(10.0), np.array([2.0]), ESTIMATOR, optimizer="Rprop",
                        lr=0.05, steps=100, rng=0, progress=False)
    assert abs(alone.phi[0] - W_TRUE) > 0.5 and alone.value > 0.5

    # Each phase ran its own simulator, only to its horizon, in order.
    assert list(horizons) == [T[12], T[25], T[50], T[100]]
    assert [p.name for p in res.phases] == [f"horizon {h:g}" for h in horizons]
    assert list(dict.fromkeys(solves)) == list(horizons)
    assert np.all(np.diff(solves) >= 0)
    # The history: one record per step, phase labels in order, steps counted from 0.
    steps = [p.steps for p in res.phases]
    assert len(res.history) == res.nit == sum(steps)
    assert [r.step for r in res.history] == list(range(res.nit))
    labels = [r.phase for r in res.history]
    assert labels == sorted(labels) and set(labels) == {0, 1, 2, 3}
    assert [labels.count(k) for k in range(4)] == steps
    totals = [r.nfev_total for r in res.history]
    assert totals == sorted(totals) and totals[-1] < res.nfev
    # Phases before the last moved on when converged, well before their 100 steps, and
    # the last one stopped by its rule.
    assert all(n < 100 for n in steps)
    # Each phase restarted the stepper: Rprop's first step of a phase is lr in size.
    firsts = [next(r for r in res.history if r.phase == k) for k in range(4)]
    assert all(r.lr == 0.05 for r in firsts)


def test_carry_lr_starts_each_phase_with_the_last_moves():
    phases = fz.horizon_phases(make_build(), [1.2, 10.0], steps=[60, 5], carry_lr=3.0)
    res = fz.minimize(make_build()(10.0), np.array([1.5]), ESTIMATOR, phases=phases,
                      optimizer="Rprop", lr=0.05, rng=0, progress=False)
    first = [r for r in res.history if r.phase == 0]
    second = [r for r in res.history if r.phase == 1]
    moves = np.abs(np.diff([r.phi[0] for r in first[-3:]] + [second[0].phi[0]]))
    assert second[0].lr == pytest.approx(min(0.05, 3.0 * moves.max()), rel=1e-12)
    assert second[0].lr < 0.05 and first[0].lr == 0.05


def test_carry_lr_is_refused_with_gauss_newton():
    phases = fz.horizon_phases(make_build(), [1.2, 10.0], steps=5, carry_lr=3.0)
    with pytest.raises(FG2UValueError, match="carry_lr"):
        fz.minimize(make_build()(10.0), np.array([1.5]), ESTIMATOR, phases=phases,
                    optimizer="gauss-newton", rng=0, progress=False)


def test_a_callback_stops_the_run_in_a_later_phase():
    phases = fz.horizon_phases(make_build(), [1.2, 2.5, 10.0], steps=5, until=None)
    res = fz.minimize(make_build()(10.0), np.array([1.4]), ESTIMATOR, phases=phases,
                      lr=0.01, rng=0, progress=False,
                      callback=lambda record: record.phase == 1 and record.step == 6)
    assert res.status == "callback" and res.phase == 1
    assert [p.steps for p in res.phases] == [5, 2] and res.nit == 7


def test_horizon_phases_refuse_bad_input():
    build = make_build()
    with pytest.raises(FG2UValueError, match="increasing"):
        fz.horizon_phases(build, [1.0, 0.5])
    with pytest.raises(FG2UTypeError, match="build"):
        fz.horizon_phases(lambda h: None, [1.0])
    with pytest.raises(FG2UTypeError, match="build"):
        fz.horizon_phases(3, [1.0])
    with pytest.raises(FG2UValueError, match="steps"):
        fz.horizon_phases(build, [1.0, 2.0], steps=[5])
    with pytest.raises(FG2UValueError, match="until"):
        fz.horizon_phases(build, [1.0, 2.0, 3.0], until=[fz.Converged()])
    with pytest.raises(FG2UTypeError, match="stop"):
        fz.horizon_phases(build, [1.0, 2.0], stop=1e-3)
    with pytest.raises(FG2UTypeError, match="until"):
        fz.Phase(steps=3, until=1e-3)


def test_horizon_phases_of_fixed_length_keep_the_stepper_state():
    phases = fz.horizon_phases(make_build(), [1.2, 2.5, 5.0, 10.0], steps=[30, 20, 20, 40],
                               until=None, restart=False)
    assert [p.name for p in phases] == ["horizon 1.2", "horizon 2.5", "horizon 5",
                                        "horizon 10"]
    res = fz.minimize(make_build()(10.0), np.array([2.0]), ESTIMATOR, phases=phases,
                      optimizer="Rprop", lr=0.05, rng=0, progress=False)
    assert abs(res.phi[0] - W_TRUE) < 1e-4
    assert [r.phase for r in res.history] == [0] * 30 + [1] * 20 + [2] * 20 + [3] * 40
    assert res.status == "steps"


def test_continuation_with_gauss_newton_steps():
    # A trust-region stepper rejects trials; Converged counts a rejected trial as a move
    # of its length, so a shrinking radius does not end a phase early.
    phases = fz.horizon_phases(make_build(), fz.horizon_schedule(T[1:]), steps=60,
                               stop=fz.Converged(xtol=1e-8))
    res = fz.minimize(make_build()(10.0), np.array([2.0]), ESTIMATOR, phases=phases,
                      optimizer="gauss-newton", rng=0, progress=False)
    assert abs(res.phi[0] - W_TRUE) < 1e-7, res
    assert res.nit < 4 * 60
