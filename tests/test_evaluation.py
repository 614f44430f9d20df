"""The Evaluator: backends, determinism, counting, failures, timeouts, crashes, memory.

Every backend must give the bitwise-identical estimate for the same ``rng`` and count
the same ``nfev``; injected failures (decided by a hash of the point, see
``_faulty_solvers``) must be dropped and reported with the right kind, whatever the
backend; crashes and hangs must neither end the estimate nor block it.

The expensive resources (a loky pool, a dask LocalCluster, a ray runtime) are started
once per module.
"""

import contextlib
import importlib.util
import os
import sys
import threading
import time
import tracemalloc

import joblib
import numpy as np
import pytest

import _faulty_solvers as fs
import fg2u_zo as fz
from fg2u_zo.evaluation.map_run import BatchSizer
from fg2u_zo.testing import RidgeHyperproblem

PHI = np.array([0.5, -0.3, 1.0, 0.0, 2.0])
STEP = 1e-4  # a fixed step: no noise probe, so nfev is exactly 2b + 1 or b + 1

HAVE_RAY = importlib.util.find_spec("ray") is not None

BACKENDS = ["sequential", "loky", "threading", pytest.param("dask", marks=pytest.mark.dask),
            pytest.param("ray", marks=pytest.mark.skipif(not HAVE_RAY, reason="ray missing"))]
PROCESS_BACKENDS = ("loky", "dask", "ray")


@pytest.fixture(scope="module")
def ridge():
    return RidgeHyperproblem(num_features=5, rng=3)


@pytest.fixture(scope="module")
def loky_evaluator():
    ev = fz.Evaluator("loky", n_jobs=2, kill_grace=0.5).start()
    yield ev
    ev.close()


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@contextlib.contextmanager
def evaluator_for(request, backend, **options):
    """An Evaluator on ``backend`` with ``options``, sharing the module's workers."""
    if backend == "loky":
        ev = request.getfixturevalue("loky_evaluator")
        saved = {name: getattr(ev, name) for name in options}
        for name, value in options.items():
            setattr(ev, name, value)
        try:
            yield ev
        finally:
            for name, value in saved.items():
                setattr(ev, name, value)
    elif backend == "dask":
        client = request.getfixturevalue("dask_client")
        with fz.Evaluator("dask", client=client, **options) as ev:
            yield ev
    elif backend == "ray":
        request.getfixturevalue("ray_runtime")
        with fz.Evaluator("ray", n_jobs=2, **options) as ev:
            yield ev
    else:
        with fz.Evaluator(backend, n_jobs=2 if backend == "threading" else 1, **options) as ev:
            yield ev


def _plan(ridge, est, rng):
    """The points an estimate evaluates: base first, then the plan's order."""
    rec = fs.Recorder(ridge)
    est.estimate(fz.BilevelProblem(inner=rec, outer=ridge.outer), PHI, rng=rng)
    return rec.points


# -- same numbers everywhere --------------------------------------------------------------

@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_estimate_and_nfev_on_every_backend(request, ridge, backend, tmp_path):
    problem = ridge.problem()
    central = fz.FG2UZO(num_directions=6, step=STEP)
    forward = fz.FG2UZO(num_directions=5, scheme="forward", step=STEP, directions="rademacher")
    ref_c = central.estimate(problem, PHI, rng=7)
    ref_f = forward.estimate(problem, PHI, rng=8)
    for batch_size in ("auto", 1, 4):
        with evaluator_for(request, backend, batch_size=batch_size) as ev:
            c = central.estimate(problem, PHI, rng=7, evaluator=ev)
            f = forward.estimate(problem, PHI, rng=np.random.default_rng(8), evaluator=ev)
        assert np.array_equal(c.grad, ref_c.grad), (backend, batch_size)
        assert np.array_equal(f.grad, ref_f.grad), (backend, batch_size)
        assert np.array_equal(c.stderr, ref_c.stderr)
        assert c.nfev == 2 * 6 + 1 and f.nfev == 5 + 1
        assert c.failures == [] and c.solver_time > 0
    # warm_start (theta at phi) reaches every perturbed solve, one common seed all of them.
    with evaluator_for(request, backend) as ev:
        central.estimate(fz.BilevelProblem(inner=fs.KeywordLogger(ridge, tmp_path),
                                           outer=ridge.outer), PHI, rng=7, evaluator=ev)
    calls = [name.split("-")[:2] for name in os.listdir(tmp_path)]
    assert len(calls) == 13 and len({seed for seed, _ in calls}) == 1
    assert sorted(warm for _, warm in calls) == ["cold"] + ["warm5"] * 12
    if backend == "sequential":  # nfev against a counter inside the solver
        rec = fs.Recorder(ridge)
        g = central.estimate(fz.BilevelProblem(inner=rec, outer=ridge.outer), PHI, rng=7)
        assert g.nfev == len(rec.points) == 13
        assert np.array_equal(g.grad, ref_c.grad)


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

@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", BACKENDS)
def test_failures_are_dropped_and_reported(request, ridge, backend):
    est = fz.FG2UZO(num_directions=10, step=STEP)
    points = _plan(ridge, est, rng=3)[1:]
    hashes = [fs.point_hash(p) for p in points]
    expected = {k: "exception" if u < 0.15 else "nonfinite"
                for k, u in enumerate(hashes) if u < 0.2}
    healthy = [k for k in range(len(points)) if k not in expected]
    hang_k, crash_k = healthy[3], healthy[7]
    in_process = backend not in PROCESS_BACKENDS
    # dask re-runs a task whose worker died allowed-failures (3) times before giving
    # up, so a solver that always kills its worker is tested on loky and ray only.
    crash_mode = "raise" if in_process or backend == "dask" else "exit"
    expected[hang_k] = "timeout"
    expected[crash_k] = "crash" if crash_mode == "exit" else "exception"
    assert 2 <= len(expected) - 2 <= 8  # the seed gives a few of each kind

    faults = dict(base=PHI, raise_below=0.15, nan_below=0.2)
    reference = fz.FG2UZO(num_directions=10, step=STEP).estimate(
        fz.BilevelProblem(inner=fs.Faulty(ridge, crash_at=[points[hang_k], points[crash_k]],
                                          crash_mode="raise", **faults), outer=ridge.outer),
        PHI, rng=3, max_retries=0)
    solver = fs.Faulty(ridge, hang_at=[points[hang_k]], crash_at=[points[crash_k]],
                       crash_mode=crash_mode, **faults)
    problem = fz.BilevelProblem(inner=solver, outer=ridge.outer)
    start = time.perf_counter()
    with evaluator_for(request, backend, timeout=1.0, max_retries=1) as ev:
        g = est.estimate(problem, PHI, rng=3, evaluator=ev)
    wall = time.perf_counter() - start

    assert {f.index: f.kind for f in g.failures} == expected
    assert all(f.attempts == 2 for f in g.failures)
    assert {f.direction for f in g.failures} == {k // 2 for k in expected}
    assert g.num_directions == 10 - len({k // 2 for k in expected})
    # Every attempt counted: one per healthy point, two per dropped point, plus the base.
    assert g.nfev == 1 + len(points) + len(expected)
    # Innocent points are never dropped: the same estimate as without hang and crash.
    assert np.array_equal(g.grad, reference.grad)
    assert all("injected failure" in f.message for f in g.failures
               if f.kind == "exception" and f.index != crash_k)
    # Two attempts at the hanging point cost two timeouts, not 1000 s; replacing a
    # crashed worker takes a few seconds more on a loaded machine.
    assert wall < 2 * 1.0 + (40 if crash_mode == "exit" else 15)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["sleep", "busy"])
def test_timeout_interrupts_a_stuck_solver_in_process(ridge, mode):
    solver = fs.Faulty(ridge, hang_at=[PHI], hang_mode=mode)
    ev = fz.Evaluator(timeout=0.5, max_retries=1)
    start = time.perf_counter()
    with pytest.raises(fz.InnerSolverError, match="base point.*timeout") as info:
        ev.solve(solver, PHI)
    assert info.value.kind == "timeout"
    assert time.perf_counter() - start < 2 * 0.5 + 2.0
    # The threading backend abandons the thread and goes on.
    points = [PHI + 0.1 * k for k in range(6)]
    solver = fs.Faulty(ridge, hang_at=[points[2]], hang_mode="sleep")
    got = {}
    with fz.Evaluator("threading", n_jobs=2, timeout=0.5, max_retries=0) as ev:
        start = time.perf_counter()
        stats = ev.map(solver, points, lambda k, theta: got.__setitem__(k, theta))
        assert time.perf_counter() - start < 0.5 + 2.0
    assert sorted(got) == [0, 1, 3, 4, 5] and [f.kind for f in stats.failures] == ["timeout"]


@pytest.mark.timeout(120)
def test_unresponsive_worker_is_killed_and_replaced(request, ridge):
    # SIGALRM blocked: only the parent's deadline (timeout + kill_grace) can stop it.
    est = fz.FG2UZO(num_directions=4, step=STEP)
    points = _plan(ridge, est, rng=5)[1:]
    solver = fs.Faulty(ridge, base=PHI, hang_at=[points[3]], hang_mode="blocked")
    problem = fz.BilevelProblem(inner=solver, outer=ridge.outer)
    with evaluator_for(request, "loky", timeout=0.5, max_retries=0) as ev:
        start = time.perf_counter()
        g = est.estimate(problem, PHI, rng=5, evaluator=ev)
        wall = time.perf_counter() - start
    assert [(f.index, f.kind) for f in g.failures] == [(3, "timeout")]
    assert "killed" in g.failures[0].message
    assert wall < 0.5 + 0.5 + 10.0
    # The pool is still usable, and gives the undisturbed result.
    ref = est.estimate(ridge.problem(), PHI, rng=5)
    assert np.array_equal(est.estimate(ridge.problem(), PHI, rng=5, evaluator=ev).grad, ref.grad)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["loky", pytest.param(
    "ray", marks=pytest.mark.skipif(not HAVE_RAY, reason="ray missing"))])
def test_worker_that_dies_once_costs_nothing(request, ridge, tmp_path, backend):
    est = fz.FG2UZO(num_directions=6, step=STEP)
    ref = est.estimate(ridge.problem(), PHI, rng=11)
    solver = fs.Faulty(ridge, base=PHI, crash_once=str(tmp_path / "crashed"), crash_mode="exit")
    with evaluator_for(request, backend, max_retries=1) as ev:
        g = est.estimate(fz.BilevelProblem(inner=solver, outer=ridge.outer), PHI, rng=11,
                         evaluator=ev)
        assert (tmp_path / "crashed").exists()  # it did crash a worker
        assert g.failures == [] and np.array_equal(g.grad, ref.grad)
        assert g.nfev in (13, 14)  # + the crashed attempt when it is known to have run
        # still usable after a worker raised and one died
        bad = fz.BilevelProblem(inner=fs.Faulty(ridge, base=PHI, raise_below=0.3),
                                outer=ridge.outer)
        assert est.estimate(bad, PHI, rng=11, evaluator=ev).failures
        assert np.array_equal(est.estimate(ridge.problem(), PHI, rng=11, evaluator=ev).grad,
                              ref.grad)


@pytest.mark.dask
@pytest.mark.timeout(180)
def test_dask_worker_killed_mid_estimate(dask_client, ridge, tmp_path):
    est = fz.FG2UZO(num_directions=6, step=STEP)
    ref = est.estimate(ridge.problem(), PHI, rng=12)
    # The solver SIGKILLs its own dask worker process once; the nanny restarts it.
    solver = fs.Faulty(ridge, base=PHI, crash_once=str(tmp_path / "killed"), crash_mode="kill")
    with fz.Evaluator(client=dask_client) as ev:
        assert ev.backend == "dask"
        g = est.estimate(fz.BilevelProblem(inner=solver, outer=ridge.outer), PHI, rng=12,
                         evaluator=ev)
    assert (tmp_path / "killed").exists()
    assert g.failures == [] and np.array_equal(g.grad, ref.grad) and g.nfev == 13
    dask_client.wait_for_workers(2, timeout=60)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["sequential", "loky"])
def test_too_many_failures_raise_with_the_last_error(request, ridge, backend):
    est = fz.FG2UZO(num_directions=8, step=STEP)
    many = fz.BilevelProblem(inner=fs.Faulty(ridge, base=PHI, raise_below=0.7),
                             outer=ridge.outer)
    with evaluator_for(request, backend, max_retries=1) as ev:
        with pytest.raises(fz.InnerSolverError, match="max_failure_fraction") as info:
            est.estimate(many, PHI, rng=0, evaluator=ev)
        assert "RuntimeError: injected failure" in str(info.value)
        assert info.value.kind == "exception" and "injected failure" in info.value.detail
        # The base point failing ends the estimate, whatever the fraction.
        base = fz.BilevelProblem(inner=fs.Faulty(ridge, raise_below=1.0), outer=ridge.outer)
        with pytest.raises(fz.InnerSolverError, match="base point.*2 attempt"):
            est.estimate(base, PHI, rng=0, evaluator=ev)
        nan = fz.BilevelProblem(inner=fs.Faulty(ridge, nan_below=1.0), outer=ridge.outer)
        with pytest.raises(fz.InvalidSolverOutputError, match="non-finite"):
            est.estimate(nan, PHI, rng=0, evaluator=ev)


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
    m, b = 10**6, 1000
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
    # Bound: 20 thetas (160 MB); holding the b thetas would take b * 8 MB = 8 GB.
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
    cluster = ev._impl._cluster
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
    import subprocess
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
