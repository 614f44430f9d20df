"""``python -m benchmarks.strd`` and its harness: the shipped NIST data reproduce the
certified results, the accuracy and profile measures are right on hand-made cases, the
counting wrappers count and group every evaluation exactly, and the command prints its
JSON line."""

import json
import math
import shutil
import threading

import numpy as np
import pytest

import fg2u_zo as fz
from benchmarks import _profiles as prof
from benchmarks import strd
from benchmarks._strd_problems import DATA_DIR, NAMES, load

#: (parameters, observations) of each data set, from NIST's summary table.
SIZES = {"Misra1a": (2, 14), "Chwirut2": (3, 54), "Chwirut1": (3, 214), "Lanczos3": (6, 24),
         "Gauss1": (8, 250), "Gauss2": (8, 250), "DanWood": (2, 6), "Misra1b": (2, 14),
         "Kirby2": (5, 151), "Hahn1": (7, 236), "Nelson": (3, 128), "MGH17": (5, 33),
         "Lanczos1": (6, 24), "Lanczos2": (6, 24), "Gauss3": (8, 250), "Misra1c": (2, 14),
         "Misra1d": (2, 14), "Roszman1": (4, 25), "ENSO": (9, 168), "MGH09": (4, 11),
         "Thurber": (7, 37), "BoxBOD": (2, 6), "Rat42": (3, 9), "MGH10": (3, 16),
         "Eckerle4": (3, 35), "Rat43": (4, 15), "Bennett5": (3, 154)}


# -- the data ------------------------------------------------------------------------------
def test_all_27_data_sets_load_with_nists_sizes():
    assert set(NAMES) == set(SIZES) and len(NAMES) == 27
    for name in NAMES:
        p = load(name)
        assert (p.num_params, p.num_obs) == SIZES[name], name
        assert p.starts.shape == (2, p.num_params)
        assert np.all(np.isfinite(p.x)) and np.all(np.isfinite(p.y))


@pytest.mark.parametrize("name", NAMES)
def test_certified_parameters_give_the_certified_residual_sum_of_squares(name):
    p = load(name)
    rss = p.rss(p.certified)
    if name != "Lanczos1":
        assert abs(rss / p.certified_rss - 1.0) < 1e-8
        return
    # Lanczos1's certified RSS (1.4e-25) is below what the 11-digit certified values can
    # reproduce: rounding moves each b_j by up to 5e-11 |b_j|, and y_hat by up to
    # |J| |delta b| (J by central differences), far more than the residuals of 4e-13.
    # What must hold: sqrt(RSS(c)) <= sqrt(RSS*) + || |J| delta ||.
    delta = 5e-11 * np.abs(p.certified)
    J = np.column_stack([(p.predict(p.certified + h * e) - p.predict(p.certified - h * e))
                         / (2 * h) for h, e in zip(1e-6 * np.abs(p.certified),
                                                   np.eye(p.num_params))])
    bound = math.sqrt(p.certified_rss) + np.linalg.norm(np.abs(J) @ delta)
    assert math.sqrt(rss) <= bound
    assert rss < 1e-18          # and the fit is still exact to ~1e-9 in y


def test_a_cut_data_file_is_refused(tmp_path):
    path = tmp_path / "DanWood.dat"
    shutil.copy(DATA_DIR / "DanWood.dat", path)
    path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(ValueError, match="data lines"):
        load("DanWood", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown StRD data set"):
        load("Misra9")


def test_nelson_is_fitted_in_log_y():
    p = load("Nelson")
    raw = np.loadtxt(DATA_DIR / "Nelson.dat", skiprows=60)
    assert np.allclose(p.y, np.log(raw[:, 0]), rtol=0, atol=0)
    assert p.x.shape == (128, 2)


# -- accuracy and profiles -----------------------------------------------------------------
def test_log_relative_error_on_hand_made_cases():
    c = np.array([2.0, -4.0, 1e-6])
    assert prof.lre(c, c) == prof.LRE_CAP == 11.0
    # the worst parameter decides: 1e-4 relative on the second, 1e-9 on the others
    b = c * np.array([1 + 1e-9, 1 + 1e-4, 1 - 1e-9])
    assert prof.lre(b, c) == pytest.approx(4.0, abs=1e-9)
    assert prof.lre(c * np.array([1, 1, 1.5]), c) == pytest.approx(-math.log10(0.5))
    assert prof.lre(-c, c) == 0.0                      # wrong by 200 %: clipped at 0
    assert prof.lre([np.nan, -4.0, 1e-6], c) == 0.0    # a non-finite estimate
    assert prof.lre(c * (1 + 1e-13), c) == 11.0        # beyond the certified digits


def test_data_profile_and_geometric_mean_on_hand_made_cases():
    costs = [0.5, 2.0, 2.0, math.inf]
    assert prof.data_profile(costs, [0.4, 0.5, 1.9, 2.0, 100.0]).tolist() == [
        0.0, 0.25, 0.25, 0.75, 0.75]
    assert prof.data_profile([], [1.0]).tolist() == [0.0]
    ratio, both = prof.geometric_mean_ratio([10, 40, math.inf, 5], [10, 10, 3, math.inf])
    assert both == 2 and ratio == pytest.approx(2.0)
    assert prof.geometric_mean_ratio([math.inf], [1.0]) == (None, 0)


def _log(groups, values, points=None):
    log = prof.EvaluationLog()
    k = 0
    for g in groups:
        pts = points[k:k + g] if points is not None else [np.full(1, float(i))
                                                          for i in range(k, k + g)]
        log.add_group(pts, values[k:k + g])
        k += g
    return log


def test_first_solved_counts_evaluations_one_by_one_and_rounds_by_whole_groups():
    # groups of 1, 9, 1, 17 evaluations; the values reach 0.5 at evaluation 6 (in the
    # second group) and 0.1 at evaluation 28 (the last of the last group)
    values = [1.0] + [0.9, 0.8, 0.8, 0.7, 0.4, 0.6, 0.6, 0.6, 0.6] + [0.45] + [0.3] * 16 + [0.05]
    log = _log([1, 9, 1, 17], values)
    assert log.nfev == 28 and log.improvements() == [0, 1, 2, 4, 5, 11, 27]
    reach = lambda level: (lambda point, value: value <= level)  # noqa: E731
    assert prof.first_solved(log, reach(0.5)) == (6, 1 + 2)       # ceil(1/8) + ceil(9/8)
    assert prof.first_solved(log, reach(0.1)) == (28, 1 + 2 + 1 + 3)
    assert prof.first_solved(log, reach(0.01)) == (math.inf, math.inf)
    # the best-so-far *point* is judged: evaluation 10 (0.45) is not a new best
    best_points = [log.points[k][0] for k in log.improvements()]
    assert best_points == [0.0, 1.0, 2.0, 4.0, 5.0, 11.0, 27.0]


def test_evaluations_to_the_final_accuracy_are_counted_to_the_first_point_within_half_a_digit():
    # accuracy = -log10(value): the run ends at 1e-6; 3e-6 (5.52 digits) is within half
    # a digit of it, 1e-5 (5.0) is not
    values = [1.0, 1e-2, 1e-5, 2e-5, 3e-6, 2e-6, 1e-6, 1e-6, 1e-6, 1e-6]
    log = _log([1, 3, 6], values)
    digits = lambda point, value: -math.log10(value)  # noqa: E731
    assert prof.evals_to_final_accuracy(log, digits) == 5
    assert prof.evals_to_final_accuracy(log, digits, slack=0.0) == 7
    failed = _log([2], [math.inf, math.inf])
    assert prof.evals_to_final_accuracy(failed, digits) == math.inf
    # (stop - final) / final, median over the pairs with a finite final count
    records = {"a": {"m": {"stop_evals": 10, "final_evals": 5}},
               "b": {"m": {"stop_evals": 8, "final_evals": 8}},
               "c": {"m": {"stop_evals": 9, "final_evals": math.inf}},
               "d": {"m": {"stop_evals": 30, "final_evals": 10}}}
    assert prof._after_final(records, "m") == 1.0


def test_truncation_cuts_the_group_that_crosses_the_budget():
    log = _log([1, 8, 3], list(np.linspace(1, 0, 12)))
    cut = log.truncated(5)
    assert cut.nfev == 5 and cut.groups == [1, 4] and cut.values == log.values[:5]
    assert log.truncated(12) is log


def test_difference_blocks_are_recognised_from_the_points():
    x = np.array([1.0, 2.0, 3.0])
    pts = [x, x + [1e-8, 0, 0], x + [0, 2e-8, 0], x + [0, 0, 3e-8],   # f(x), then J(x)
           x + [0.1, 0.1, 0.0],                                       # a trial
           x + [0.2, 0.0, 0.0],                                       # a trial on an axis
           x + [0.2, 0.0, 0.0] + [1e-8, 0, 0], x + [0.2, 1e-8, 0.0],
           x + [0.2, 0.0, 1e-8]]
    log = _log([1] * len(pts), [1.0] * len(pts), points=pts)
    assert prof._difference_blocks(log, 3) == [1, 3, 1, 1, 3]


# -- the counting wrappers -----------------------------------------------------------------
class LockedCounter:
    """Counts the calls of a model from any thread."""

    def __init__(self, model):
        self.model, self.calls, self._lock = model, 0, threading.Lock()

    def __call__(self, x, **_):
        with self._lock:
            self.calls += 1
        return self.model(x)


def test_counting_evaluator_records_each_solve_and_map_as_one_group():
    p = load("DanWood")
    fit = prof.LeastSquaresFit("DanWood", p.predict, p.y, p.starts[1])
    log = prof.EvaluationLog()

    def model(b, **_):
        if b[0] < 0:
            raise RuntimeError("negative amplitude")
        return p.predict(b)

    ev = prof.CountingEvaluator(fit, log, backend="threading", n_jobs=3)
    try:
        ev.solve(model, np.array([0.7, 4.0]))
        pts = [np.array([0.7, 4.1]), np.array([-1.0, 4.0]), np.array([0.8, 4.0])]
        ev.map(model, pts, lambda k, theta: None, max_failure_fraction=1.0)
    finally:
        ev.close()
    assert log.groups == [1, 3] and log.nfev == 4
    assert log.values[0] == pytest.approx(p.rss([0.7, 4.0]), rel=1e-14)
    assert log.values[1] == pytest.approx(p.rss(pts[0]), rel=1e-14)
    assert log.values[2] == math.inf                 # the failed evaluation
    assert np.array_equal(log.points[3], pts[2])


def test_ours_counts_every_inner_solve_of_a_run():
    p = load("DanWood")
    counter = LockedCounter(p.predict)
    fit = prof.LeastSquaresFit("DanWood", counter, p.y, p.starts[1])
    log = prof.EvaluationLog()
    problem = fz.BilevelProblem(inner=counter, outer=fz.LeastSquares(p.y, scale="sum"),
                                num_params=2)
    ev = prof.CountingEvaluator(fit, log, backend="threading", n_jobs=prof.WIDTH)
    with prof.quiet_library():
        res = fz.minimize(problem, p.starts[1], fz.FG2UZO(scheme="forward"),
                          optimizer="gauss-newton", steps=200, max_nfev=40, evaluator=ev,
                          rng=0, progress=False)
    ev.close()
    assert log.nfev == counter.calls == res.nfev == sum(log.groups)
    # the best value recorded is the best the run saw (RSS = 2 x the outer loss)
    assert min(log.values) <= 2 * res.value * (1 + 1e-12)
    run = prof.ours(prof.LeastSquaresFit("DanWood", p.predict, p.y, p.starts[1]), 40)
    assert run.log.nfev == run.stop_evals <= 40


@pytest.mark.parametrize("method", ["DFO-LS", "DFBGN", "scipy trf", "scipy lm"])
def test_peers_are_counted_exactly_and_grouped_by_their_conventions(method):
    p = load("Misra1b")
    counter = LockedCounter(p.predict)
    fit = prof.LeastSquaresFit("Misra1b", counter, p.y, p.starts[1])
    runner = {m.name: m for m in prof.METHODS}[method]
    with prof.quiet_library():
        run = runner.run(fit, 60)
    assert run.log.nfev == counter.calls == run.stop_evals <= 60
    groups = run.log.groups
    if method == "DFO-LS":
        assert groups[0] == 3 and set(groups[1:]) <= {1}
    elif method == "DFBGN":
        assert groups[0] == 2 and set(groups[1:]) <= {1}
    else:   # f(x0), its 2-point Jacobian, and a Jacobian after each accepted step
        assert groups[:2] == [1, 2] and set(groups) == {1, 2}


# -- the command -----------------------------------------------------------------------------
def test_quick_run_of_one_problem_prints_the_json_line(tmp_path, capsys):
    strd.main(["--quick", "--only", "DanWood", "--out", str(tmp_path)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("evals_ratio_lre4", "evals_ratio_lre6", "rounds_ratio_W8",
                "rounds_ratio_W8_lre6", "stop_evals_ratio", "solved", "ours_fail_dfols_ok",
                "stop_evals_median", "profiles", "per_pair", "final_lre",
                "after_final_accuracy", "after_final_accuracy_ours"):
        assert key in summary, key
    assert summary["pairs"] == 1 and set(summary["solved"]) == {
        "ours", "DFO-LS", "DFBGN", "scipy trf", "scipy lm"}
    # DanWood is an easy fit: DFO-LS and scipy reach 6 digits within 300 evaluations
    assert summary["solved"]["DFO-LS"]["lre6"] == 1
    assert summary["solved"]["scipy lm"]["lre6"] == 1
    pair = summary["per_pair"]["DanWood/start1"]["DFO-LS"]
    assert pair["evals_lre4"] <= pair["evals_lre6"] <= pair["stop"] <= 300
    assert 1 <= pair["final"] <= pair["stop"]
    assert (tmp_path / "strd_quick.md").exists()
