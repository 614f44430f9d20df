"""The Evaluator's own policies: batching, retries and their classification, failure
reports and counts, shape checks across calls, memory, configuration, arguments.

What every backend must do alike (same results, failures by kind, timeouts, worker
death) is checked once per registered backend in ``test_backends_conformance.py``.
Injected failures are decided by a hash of the point (``_faulty_solvers``).
"""

import logging
import os
import subprocess
import sys
import threading
import tracemalloc

import joblib
import numpy as np
import pytest

import _faulty_solvers as fs
import fg2u_zo as fz
from fg2u_zo.evaluation.backends import ItemDone, TaskDone, TaskLost, unregister_backend
from fg2u_zo.evaluation.map_run import BatchSizer
from fg2u_zo.evaluation.worker import run_items
from fg2u_zo.testing import RidgeHyperproblem

PHI = np.array([0.5, -0.3, 1.0, 0.0, 2.0])
STEP = 1e-4  # a fixed step: no noise probe, so nfev is exactly 2b + 1 or b + 1


@pytest.fixture(scope="module")
def ridge():
    return RidgeHyperproblem(num_features=5, rng=3)


@pytest.fixture(scope="module")
def loky_evaluator():
    ev = fz.Evaluator("loky", n_jobs=2, kill_grace=0.5).start()
    yield ev
    ev.close()


def _map(ev, solver, points):
    got = {}
    stats = ev.map(solver, points, lambda k, theta: got.__setitem__(k, theta))
    return got, stats


# -- batching --------------------------------------------------------------

@pytest.mark.timeout(120)
def test_auto_batching_groups_fast_solves(loky_evaluator, ridge):
    points = [PHI + 0.01 * k for k in range(120)]
    expected = [ridge.inner(p).sum() for p in points]
    for batch_size, check in (("auto", lambda t: t < 60), (1, lambda t: t == 120),
                              (7, lambda t: t == 18)):
        got = {}
        loky_evaluator.batch_size = batch_size
        try:
            stats = loky_evaluator.map(ridge.inner, points,
                                       lambda k, theta: got.__setitem__(k, theta.sum()))
        finally:
            loky_evaluator.batch_size = "auto"
        assert [got[k] for k in range(120)] == expected
        assert stats.nfev == 120 and check(stats.tasks), (batch_size, stats.tasks)


def test_batch_sizer():
    sizer = BatchSizer("auto", overhead=1e-3)
    assert sizer.size(1000, 2, None) == 1  # nothing measured yet
    for _ in range(5):
        sizer.observe(1e-3)
    assert sizer.size(1000, 2, None) == 20  # 20 ms tasks
    assert sizer.size(12, 2, None) == 3  # but at least two tasks per worker
    assert sizer.size(1000, 2, item_bytes=8 * 2**20) == 4  # at most 32 MB of results
    slow = BatchSizer("auto", overhead=1e-3, prior_seconds=0.5)
    assert slow.size(1000, 2, None) == 1
    assert BatchSizer(5, overhead=0.0).size(3, 2, None) == 5


# -- failures -----------------------------------------------------------------------------

@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["sleep", "busy"])
def test_timeout_interrupts_a_stuck_base_solve_in_process(ridge, mode):
    # Sequential, in the main thread: SIGALRM interrupts sleeping and spinning solvers
    # (the test's own timeout is the guard that it does).
    solver = fs.Faulty(ridge, hang_at=[PHI], hang_mode=mode)
    ev = fz.Evaluator(timeout=0.5, max_retries=1)
    with pytest.raises(fz.InnerSolverError, match="base point.*2 attempt.*timeout") as info:
        ev.solve(solver, PHI)
    assert info.value.kind == "timeout"
    assert ev.failure_counts == {"timeout": 1}


class Simulated(fz.Backend):
    """An engine simulated in this process, like dask: it cannot say which of a
    worker's tasks killed it; ``poll`` runs the tasks and says what became of them."""

    isolates_tasks = False
    process_isolated = True

    def __init__(self, config):
        self.pending, self.live = [], None

    def capacity(self):
        return 2

    def begin(self, solver, kwargs, expected_shape):
        self.live = (solver, kwargs, expected_shape)

    def submit(self, task_id, items, timeout):
        self.pending.append((task_id, items, timeout))

    def cancel(self, task_ids):
        self.pending = [t for t in self.pending if t[0] not in set(task_ids)]

    def close(self):
        self.pending = []


class SharedFate(Simulated):
    """dask's failure mode: one worker holds two tasks, and when a point kills it
    (``Faulty(crash_mode="raise")`` stands for that), every task it holds is lost and
    nobody says which point did it."""

    def poll(self, timeout):
        held, self.pending = self.pending[:2], self.pending[2:]
        events = []
        for n, (task_id, items, task_timeout) in enumerate(held):
            outcomes, _ = run_items(*self.live, items, task_timeout)
            if any("simulated crash" in o.message for o in outcomes):
                return events + [TaskLost(t, tuple(i for i, _ in its), None, "crash",
                                          "the worker died") for t, its, _ in held[n:]]
            events += [ItemDone(task_id, o) for o in outcomes] + [TaskDone(task_id, 0.0)]
        return events


@pytest.mark.timeout(60)
def test_a_crash_that_names_no_culprit_is_pinned_on_the_right_point(ridge):
    # The points lost together are rerun one by one, each alone on the whole backend:
    # an innocent point that shared a worker with the culprit is never charged.
    fz.register_backend("shared-fate", SharedFate)
    try:
        points = [PHI + 0.1 * k for k in range(6)]
        solver = fs.Faulty(ridge, crash_at=[points[4]], crash_mode="raise")
        with fz.Evaluator("shared-fate", max_retries=1, batch_size=1) as ev:
            got, stats = _map(ev, solver, points)
    finally:
        unregister_backend("shared-fate")
    assert sorted(got) == [0, 1, 2, 3, 5]
    assert [(f.index, f.kind, f.attempts) for f in stats.failures] == [(4, "crash", 2)]
    assert stats.resubmitted >= 1  # point 5 was lost with point 4 and run again, free


class Unreliable(Simulated):
    """An engine that loses tasks through no fault of their points, the ways dask does:
    the first ``lose`` tasks are lost with the scheduler connection
    (``TaskLost(blameless=True)``); every later task reports that the engine ran it
    twice, having lost a worker the first time (``TaskDone(rerun=...)``); a point in
    ``killer`` is reported the way dask reports a one-point task that killed
    ``1 + allowed_failures`` workers (a culprit and that many attempts)."""

    def __init__(self, config, lose=2, killer=(), allowed_failures=3):
        super().__init__(config)
        self.lose, self.killer, self.allowed = lose, set(killer), allowed_failures
        self.runs = 0  # solver calls made, the engine's own reruns included

    def poll(self, timeout):
        held, self.pending = self.pending, []
        events = []
        for task_id, items, task_timeout in held:
            indices = tuple(i for i, _ in items)
            if self.lose > 0:
                self.lose -= 1
                events.append(TaskLost(task_id, indices, None, "scheduler",
                                       "dask cancelled the task (scheduler-connection-lost)",
                                       blameless=True))
                continue
            if len(indices) == 1 and indices[0] in self.killer:
                self.runs += 1 + self.allowed
                events.append(TaskLost(task_id, indices, indices[0], "crash",
                                       "KilledWorker", attempts=1 + self.allowed))
                continue
            self.runs += 2 * len(items)
            outcomes, _ = run_items(*self.live, items, task_timeout)
            events += [ItemDone(task_id, o) for o in outcomes]
            events.append(TaskDone(task_id, 0.0, rerun=len(items)))
        return events


def test_tasks_lost_through_no_fault_of_their_points_are_counted_and_rerun(ridge, caplog):
    # Before, a task that dask cancelled was dropped with no event and the map waited
    # forever, and solves dask ran again after a worker died were counted nowhere.
    engine = {}

    def factory(config):
        engine["it"] = Unreliable(config, lose=2)
        return engine["it"]

    fz.register_backend("unreliable", factory)
    try:
        points = [PHI + 0.1 * k for k in range(6)]
        with fz.Evaluator("unreliable", max_retries=0, batch_size=1) as ev:
            with caplog.at_level(logging.INFO, logger="fg2u_zo.evaluation.evaluator"):
                got, stats = _map(ev, ridge.inner, points)
            totals = dict(ev.lost_counts)
    finally:
        unregister_backend("unreliable")
    assert sorted(got) == list(range(6))
    assert all(np.array_equal(got[k], ridge.inner(points[k])) for k in got)
    assert stats.failures == [] and stats.nfev == 6
    # 2 evaluations lost with the scheduler; each of the 6 then ran twice (one rerun).
    assert stats.lost_counts == {"scheduler": 2, "crash": 6} and stats.resubmitted == 8
    assert totals == stats.lost_counts
    assert "lost through no fault of their own and run again (crash: 6, scheduler: 2)" \
        in caplog.text


def test_a_one_point_task_the_engine_already_retried_is_charged_at_once(ridge):
    # dask reruns a task whose worker died allowed-failures times before it reports
    # KilledWorker; a one-point task is then certainly guilty, and those runs were
    # its attempts: with max_retries=1 it is dropped at once (4 worker deaths),
    # not rerun alone and then retried (12 deaths).
    engine = {}

    def factory(config):
        engine["it"] = Unreliable(config, lose=0, killer=[4], allowed_failures=3)
        return engine["it"]

    fz.register_backend("unreliable", factory)
    try:
        points = [PHI + 0.1 * k for k in range(6)]
        with fz.Evaluator("unreliable", max_retries=1, batch_size=1) as ev:
            got, stats = _map(ev, ridge.inner, points)
    finally:
        unregister_backend("unreliable")
    assert sorted(got) == [0, 1, 2, 3, 5]
    assert [(f.index, f.kind, f.attempts) for f in stats.failures] == [(4, "crash", 4)]
    assert engine["it"].runs == 4 + 2 * 5  # the culprit's 4, the others' 2 each
    assert stats.nfev == 4 + 5


@pytest.mark.timeout(120)
def test_unbiased_when_failures_are_independent_of_the_direction(ridge):
    truth = ridge.hypergradient(PHI)
    problem = fz.BilevelProblem(
        inner=fs.Faulty(ridge, base=PHI, raise_below=0.15, nan_below=0.2), outer=ridge.outer)
    est = fz.FG2UZO(num_directions=8, step=STEP)
    rng = np.random.default_rng(21)
    grads, failed, total = [], 0, 0
    with fz.Evaluator(max_retries=0, max_failure_fraction=0.9) as ev:
        for _ in range(300):
            g = est.estimate(problem, PHI, rng=rng, evaluator=ev)
            grads.append(g.grad)
            failed += len(g.failures)
            total += 16
    assert 0.15 < failed / total < 0.25  # about 20% of the points failed
    grads = np.asarray(grads)
    mean, se = grads.mean(axis=0), grads.std(axis=0, ddof=1) / np.sqrt(len(grads))
    z = np.abs(mean - truth) / se
    assert np.all(z < 5), z
    assert np.linalg.norm(se) < 0.2 * np.linalg.norm(truth)  # the test is sharp


# -- memory -------------------------------------------------------------------------------

@pytest.mark.timeout(180)
def test_memory_does_not_grow_with_the_number_of_directions():
    m, b = 2 * 10**5, 200
    theta_bytes = 8 * m
    problem = fz.BilevelProblem(inner=fs.BigOutput(m),
                                outer=lambda theta, phi: 0.5 * (theta ** 2).sum() + phi.sum())
    est = fz.FG2UZO(num_directions=b, scheme="forward", step=1e-3)
    phi = np.array([0.1, 0.2, 0.3])
    tracemalloc.start()
    try:
        g = est.estimate(problem, phi, rng=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert g.nfev == b + 1 and g.num_directions == b
    # Bound: 20 thetas (32 MB); holding the b thetas would take b * 1.6 MB = 320 MB.
    assert peak < 20 * theta_bytes, peak / theta_bytes
    # F = 0.5 ||theta||^2 + sum(phi) with theta = sum(phi) + phi_0 e_0: closed form.
    s = phi.sum()
    truth = (m * s + phi[0]) + np.array([s + phi[0], 0.0, 0.0]) + 1.0
    assert np.all(np.abs(g.grad - truth) < 6 * g.stderr)


# -- configuration ------------------------------------------------------------------------

@pytest.mark.timeout(120)
def test_parallel_config_is_honoured(ridge, tmp_path):
    with joblib.parallel_config(backend="loky", n_jobs=2):
        ev = fz.Evaluator()
        assert (ev.backend, ev.n_jobs) == ("loky", 2)
        assert fz.Evaluator("sequential").backend == "sequential"  # arguments win
        assert fz.Evaluator(n_jobs=3).n_jobs == 3
    with joblib.parallel_config(n_jobs=2):
        assert fz.Evaluator().backend == "loky"  # joblib's default backend
    with joblib.parallel_config(prefer="threads", n_jobs=2):
        assert fz.Evaluator().backend == "threading"
    with joblib.parallel_config(backend="sequential"):
        assert fz.Evaluator().backend == "sequential"
    assert (fz.Evaluator().backend, fz.Evaluator().n_jobs) == ("sequential", 1)

    est = fz.FG2UZO(num_directions=6, step=STEP)
    ref = est.estimate(ridge.problem(), PHI, rng=4)
    problem = fz.BilevelProblem(inner=fs.WhereLogger(ridge, tmp_path), outer=ridge.outer)
    with joblib.parallel_config(backend="threading", n_jobs=2):
        g = est.estimate(problem, PHI, rng=4)
    assert np.array_equal(g.grad, ref.grad)
    assert {name.split("-", 1)[1].startswith("fg2u-zo") for name in os.listdir(tmp_path)} \
        == {True}
    for name in os.listdir(tmp_path):
        os.remove(tmp_path / name)
    with joblib.parallel_config(backend="loky", n_jobs=2):
        g = est.estimate(problem, PHI, rng=4)  # a temporary 2-worker pool
    pids = {int(name.split("-")[0]) for name in os.listdir(tmp_path)}
    assert np.array_equal(g.grad, ref.grad)
    assert os.getpid() not in pids and 1 <= len(pids) <= 2


@pytest.mark.dask
@pytest.mark.timeout(120)
def test_parallel_config_dask_uses_the_current_client(dask_client, ridge, tmp_path):
    est = fz.FG2UZO(num_directions=6, step=STEP)
    ref = est.estimate(ridge.problem(), PHI, rng=4)
    problem = fz.BilevelProblem(inner=fs.WhereLogger(ridge, tmp_path), outer=ridge.outer)
    with joblib.parallel_config(backend="dask"):
        assert fz.Evaluator().client is dask_client
        g = est.estimate(problem, PHI, rng=4)
    assert np.array_equal(g.grad, ref.grad) and g.nfev == 13
    worker_pids = set(dask_client.run(os.getpid).values())
    assert {int(name.split("-")[0]) for name in os.listdir(tmp_path)} <= worker_pids
    # A large solver is scattered once, not shipped with every task.
    big = fz.BilevelProblem(inner=fs.Faulty(RidgeHyperproblem(5, num_train=4000, rng=3)),
                            outer=ridge.outer)
    with fz.Evaluator(client=dask_client, batch_size=1) as ev:
        assert est.estimate(big, PHI, rng=4, evaluator=ev).nfev == 13


@pytest.mark.dask
@pytest.mark.timeout(120)
def test_dask_cluster_started_and_closed_by_the_evaluator(ridge):
    est = fz.FG2UZO(num_directions=4, step=STEP)
    ref = est.estimate(ridge.problem(), PHI, rng=2)
    ev = fz.Evaluator("dask", n_jobs=1)
    g = est.estimate(ridge.problem(), PHI, rng=2, evaluator=ev)
    cluster = ev.backend_object.cluster
    assert np.array_equal(g.grad, ref.grad) and len(cluster.workers) == 1
    ev.close()
    assert cluster.status.name == "closed"


@pytest.mark.timeout(30)
def test_bad_arguments_name_the_argument():
    cases = [({"backend": "mpi"}, ValueError, "backend"),
             ({"n_jobs": 0}, ValueError, "n_jobs"),
             ({"n_jobs": 1.5}, TypeError, "n_jobs"),
             ({"timeout": -1.0}, ValueError, "timeout"),
             ({"timeout": "10"}, TypeError, "timeout"),
             ({"max_retries": -1}, ValueError, "max_retries"),
             ({"max_failure_fraction": 1.0}, ValueError, "max_failure_fraction"),
             ({"batch_size": 0}, ValueError, "batch_size"),
             ({"batch_size": "big"}, TypeError, "batch_size"),
             ({"backend": "loky", "scheduler_address": "tcp://127.0.0.1:8786"}, ValueError,
              "scheduler_address"),
             ({"client": object()}, TypeError, "client")]
    for kwargs, exc, name in cases:
        with pytest.raises(exc, match=name) as info:
            fz.Evaluator(**kwargs)
        assert isinstance(info.value, fz.FG2UError), kwargs
    with pytest.raises(fz.FG2UTypeError, match="callable"):
        fz.Evaluator().solve(3, PHI)
    with pytest.raises(ValueError, match="timeout"):
        fz.FG2UZO().estimate(RidgeHyperproblem(5).problem(), PHI, timeout=0)


@pytest.mark.timeout(30)
def test_unpicklable_solver_on_loky_says_what_to_do(loky_evaluator):
    lock = threading.Lock()
    with pytest.raises(TypeError, match="cannot be pickled.*threading"):
        loky_evaluator.solve(lambda phi: phi + bool(lock), PHI)


@pytest.mark.timeout(30)
def test_missing_ray_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'fg2u-zo\[ray\]'"):
        fz.Evaluator("ray")
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match=r"pip install 'fg2u-zo\[dask\]'"):
        fz.Evaluator("dask")


@pytest.mark.timeout(120)
def test_dask_and_ray_are_imported_only_when_asked_for():
    code = ("import sys, numpy as np, fg2u_zo as fz; "
            "ev = fz.Evaluator('threading', n_jobs=2); ev.solve(np.cumsum, np.ones(3)); "
            "print(any(m in sys.modules for m in ('distributed', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=100, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.dask
@pytest.mark.timeout(120)
def test_workers_reports_the_cluster_size_not_n_jobs(dask_client):
    # An existing cluster runs as many evaluations at once as it has threads.
    with fz.Evaluator(client=dask_client, n_jobs=7) as ev:
        assert ev.n_jobs == 7
        assert ev.workers == sum(dask_client.nthreads().values()) == 2
    with fz.Evaluator("threading", n_jobs=3) as ev:
        assert ev.workers == 3


# -- what a user sees of failures ---------------------------------------------------------

@pytest.mark.timeout(60)
def test_a_wrong_shape_at_a_later_base_point_is_a_retried_shape_failure(ridge, tmp_path):
    # The shape is known after the first base solve; a later base solve that returns
    # another shape is a failure like a perturbed one, retried, not handed to torch.
    est = fz.FG2UZO(num_directions=3, step=STEP)
    phi2 = PHI + 0.25
    problem = fz.BilevelProblem(inner=fs.ShortOnce(ridge, at=phi2, marker=tmp_path / "short"),
                                outer=ridge.outer)
    with fz.Evaluator(max_retries=1) as ev:
        est.estimate(problem, PHI, rng=0, evaluator=ev)
        g = est.estimate(problem, phi2, rng=1, evaluator=ev)
    assert (tmp_path / "short").exists()  # it did return a short output once
    ref = est.estimate(ridge.problem(), phi2, rng=1)
    assert np.array_equal(g.grad, ref.grad) and g.failures == []
    assert g.nfev == ref.nfev + 1  # the short attempt is counted
    # Short at every attempt: the error says so, with the kind.
    always = fs.Faulty(ridge, base=PHI, short_below=1.0)
    with fz.Evaluator(max_retries=2) as ev:
        ev.solve(always, PHI)
        with pytest.raises(fz.InvalidSolverOutputError,
                           match=r"(?s)base point.*3 attempt.*shape \(4,\), expected \(5,\)") as info:
            ev.solve(always, phi2)
        assert info.value.kind == "shape" and ev.failure_counts == {"shape": 1}
        # The same solver at inputs of another shape has its own output shape.
        theta, _ = ev.solve(np.cumsum, np.ones(3))
        theta, _ = ev.solve(np.cumsum, np.ones(4))
    assert theta.tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.timeout(120)
def test_deterministic_failures_are_not_retried_and_keep_the_solvers_stderr(
        ridge, tmp_path, loky_evaluator):
    points = [PHI + 0.1 * k for k in range(4)]  # points[0] never fails
    # The solver's own argument check (FG2UValueError): one attempt each, said why.
    rejecting = fs.Faulty(ridge, base=PHI, reject_below=1.0)
    with fz.Evaluator(max_retries=3, max_failure_fraction=0.99) as ev:
        got, stats = _map(ev, rejecting, points)
    assert list(got) == [0] and stats.nfev == 4
    assert [(f.kind, f.attempts) for f in stats.failures] == [("exception", 1)] * 3
    assert all("FG2UValueError" in f.message and "not retried" in f.message
               for f in stats.failures)
    # A plain exception is still retried.
    flaky = fs.Faulty(ridge, base=PHI, raise_below=1.0)
    with fz.Evaluator(max_retries=3, max_failure_fraction=0.99) as ev:
        _, stats = _map(ev, flaky, points)
    assert [f.attempts for f in stats.failures] == [4] * 3
    # A non-finite output that the program reported (with a warning on its stderr and a
    # long stdout): one attempt, and the message keeps the reason and the warning.
    calls = tmp_path / "calls"
    calls.mkdir()
    with fz.Evaluator(max_retries=3) as ev:
        with pytest.raises(fz.InvalidSolverOutputError, match="base point.*1 attempt") as info:
            ev.solve(fs.ReportsNonFinite(ridge, calls), PHI)
    assert len(os.listdir(calls)) == 1
    for text in (str(info.value), info.value.detail):
        assert "returned 5 non-finite value(s)" in text
        assert "WARNING unstable: dt too large" in text and "not retried" in text
    assert info.value.kind == "nonfinite"
    # The same through worker processes (the classification crosses the pipe).
    loky_evaluator.max_retries, loky_evaluator.max_failure_fraction = 3, 0.99
    try:
        _, stats = _map(loky_evaluator, fs.ReportsNonFinite(ridge, calls, ok_at=PHI), points)
    finally:
        loky_evaluator.max_retries, loky_evaluator.max_failure_fraction = 1, 0.5
    assert [(f.kind, f.attempts) for f in stats.failures] == [("nonfinite", 1)] * 3
    assert all("WARNING unstable" in f.message and "returned 5 non-finite" in f.message
               for f in stats.failures)
    assert len(os.listdir(calls)) == 1 + 3


@pytest.mark.timeout(60)
def test_failures_are_logged_once_per_kind_and_counted(ridge, caplog):
    points = [PHI + 0.01 * k for k in range(40)]
    kinds = ["exception" if u < 0.2 else "nonfinite" if u < 0.4 else None
             for u in map(fs.point_hash, points)]
    expected = {kind: kinds.count(kind) for kind in ("exception", "nonfinite")}
    assert min(expected.values()) >= 2  # the seed gives a few of each
    solver = fs.Faulty(ridge, raise_below=0.2, nan_below=0.4)
    with caplog.at_level(logging.WARNING, logger="fg2u_zo"):
        with fz.Evaluator(max_retries=0, max_failure_fraction=0.9) as ev:
            first = _map(ev, solver, points)[1]
            second = _map(ev, solver, points)[1]
            totals = dict(ev.failure_counts)
    assert first.failure_counts == second.failure_counts == expected
    assert totals == {kind: 2 * n for kind, n in expected.items()}
    records = [r for r in caplog.records if r.name.startswith("fg2u_zo.evaluation")]
    assert len(records) == 2 and all(r.levelno == logging.WARNING for r in records)
    for kind, n in expected.items():
        (record,) = [r for r in records if repr(kind) in r.getMessage()]
        assert record.getMessage().startswith(f"{n} evaluation(s)")


@pytest.mark.timeout(120)
def test_more_jobs_than_cpus_gives_one_hint():
    code = ("import logging, os, fg2u_zo as fz; logging.basicConfig(); "
            "n = (os.cpu_count() or 1) + 1; "
            "[fz.Evaluator('threading', n_jobs=n).close() for _ in range(3)]; "
            "fz.Evaluator('threading', n_jobs=1).close()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=100, check=True)
    assert out.stderr.count("oversubscri") == 1, out.stderr
    assert "CPU" in out.stderr

