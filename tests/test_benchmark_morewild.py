"""``python -m benchmarks.morewild``: the 53 problems as Moré and Wild define them (f at
the starting point against the values published with the set, and known minima), the
convergence test, and the command's JSON line."""

import json
import math

import numpy as np
import pytest

from benchmarks import _profiles as prof
from benchmarks import morewild
from benchmarks._morewild_problems import TABLE, problems

#: f(x0) of problems 1..53, to the 6 digits the set's authors publish with it.
F0 = [7.20000e+01, 1.12500e+03, 1.16542e+07, 1.16859e+09, 4.98920e+06, 5.00936e+08,
      2.42000e+01, 1.79577e+06, 2.50000e+03, 1.06000e+04, 2.15000e+02, 1.61540e+06,
      4.00500e+02, 1.54575e+08, 4.16817e+01, 1.30623e+03, 5.31317e-03, 1.69361e+09,
      1.64308e+01, 2.32337e+06, 2.69042e+01, 8.15888e+06, 7.36782e+01, 2.05938e+07,
      1.03115e+03, 4.17131e+03, 7.92669e+06, 3.08106e+11, 4.64282e-02, 3.37706e-02,
      3.86177e-02, 2.88830e-02, 3.37633e-02, 2.67406e-02, 2.73248e+02, 1.61741e+01,
      2.09342e+00, 1.99685e+02, 9.04000e+02, 1.35600e+03, 1.58200e+03, 1.80800e+03,
      5.65000e+01, 7.05625e+01, 9.86875e+01, 2.53908e+09, 6.87380e+12, 3.36796e+09,
      3.73513e+09, 3.99107e+09, 1.13001e+13, 9.38567e+00, 3.36582e+10]


def test_the_table_has_53_problems_of_22_functions_with_n_from_2_to_12():
    ps = problems()
    assert len(ps) == len(TABLE) == 53
    assert {p.number for p in ps} == set(range(1, 23))
    assert min(p.n for p in ps) == 2 and max(p.n for p in ps) == 12
    for p in ps:
        assert p.residuals(p.x0).shape == (p.m,) and p.x0.shape == (p.n,)


@pytest.mark.parametrize("index", range(1, 54))
def test_f_at_the_start_matches_the_published_value(index):
    p = problems()[index - 1]
    # 6 significant digits: half a unit in the 6th digit is 5e-6 relative
    assert p.value(p.x0) == pytest.approx(F0[index - 1], rel=5.01e-6)


def test_known_minimizers_give_the_known_minima():
    ps = {p.index: p for p in problems()}
    assert ps[7].value([1.0, 1.0]) == 0.0                         # Rosenbrock
    assert ps[9].value([1.0, 0.0, 0.0]) == 0.0                    # helical valley
    assert ps[11].value(np.zeros(4)) == 0.0                       # Powell singular
    assert ps[25].value([1.0, 10.0, 1.0]) == pytest.approx(0.0, abs=1e-30)   # Box 3-D
    assert ps[35].value(np.ones(10)) == 0.0                       # Brown almost-linear
    assert ps[43].value(np.ones(5)) == 0.0                        # cube
    # linear function, full rank: f* = m - n at x = -1
    assert ps[1].value(-np.ones(9)) == pytest.approx(45 - 9, rel=1e-14)
    # Freudenstein-Roth's global minimum (5, 4) and Jennrich-Sampson's (m = 10)
    assert ps[13].value([5.0, 4.0]) == 0.0
    assert ps[26].value([0.2578252135686162] * 2) == pytest.approx(124.3621823556148,
                                                                     rel=1e-10)


def test_convergence_test_uses_the_best_value_of_any_method():
    class FakeRun:
        def __init__(self, values):
            self.log = prof.EvaluationLog()
            for v in values:
                self.log.add_group([np.zeros(2)], [v])

    p = problems()[6]                     # Rosenbrock from x0: f0 = 24.2
    levels, f0, f_low = morewild.levels_from(
        {"a": FakeRun([24.2, 3.0, 2.2]), "b": FakeRun([24.2, 0.2])}, p)
    assert f0 == pytest.approx(24.2) and f_low == 0.2
    # tau = 0.1: f <= 0.2 + 0.1 (24.2 - 0.2) = 2.6
    assert levels["tau1e-1"](None, 2.6) and not levels["tau1e-1"](None, 2.61)
    assert not levels["tau1e-3"](None, 0.2 + 0.025) and levels["tau1e-7"](None, 0.2)


def test_quick_run_of_one_problem_prints_the_json_line(tmp_path, capsys):
    morewild.main(["--only", "7", "--out", str(tmp_path)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for tau in ("1e-1", "1e-3", "1e-5", "1e-7"):
        assert f"evals_ratio_tau{tau}" in summary
        assert f"rounds_ratio_W8_tau{tau}" in summary
    assert summary["pairs"] == 1
    # f_L is the best value found: whoever found it solves every tau
    assert max(s["tau1e-7"] for s in summary["solved"].values()) == 1
    pair = summary["per_pair"]["07-rosenbrock-n2"]
    for row in pair.values():
        got = [row[f"evals_tau{t}"] for t in ("1e-1", "1e-3", "1e-5", "1e-7")]
        done = [g for g in got if g is not None]
        assert done == sorted(done) and all(not math.isnan(g) for g in done)
    assert (tmp_path / "morewild_full.md").exists()
