"""No process a run started outlives it: solvers.Subprocess under every way a run ends.

The simulator (tests/data/storm_sim.py, policy "hang") starts a child and both sleep
60 s, with a marker in their command lines. Each test ends a run in one way -- the
process that started the command killed, a loky or dask worker killed, a map aborted
while solves are in flight, a dask task cancelled, SIGTERM or SIGKILL of a process
running fz.minimize -- and then waits for every process with the marker to be gone,
up to GONE_WITHIN seconds: a bound far above what it takes (a fraction of a second),
not a timing that is asserted. Before the adapter's process guard they all survived
for the full 60 s, with ppid 1.
"""

from __future__ import annotations

import os
import pathlib
import pickle
import signal
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest

import fg2u_zo as fz
from _process_checks import (alive, leftovers, parent_of, processes_with, survivors,
                             wait_for, wait_started)
from fg2u_zo.errors import InnerSolverError
from solvers import Subprocess

DATA = pathlib.Path(__file__).resolve().parent / "data"
SIM = str(DATA / "storm_sim.py")
REPO = str(pathlib.Path(__file__).resolve().parents[1])
GONE_WITHIN = 15.0


@pytest.fixture
def marker():
    value = f"fg2u-test-{uuid.uuid4().hex}"
    yield value
    for pid in processes_with(value):  # whatever the test did, leave nothing behind
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def hang_solver(marker, root, policy="hang", *options, **kwargs):
    return Subprocess([sys.executable, SIM, policy, marker, *options], template="{phi}\n",
                      output="out.txt", workdir_root=root, **kwargs)


def command_pids(marker):
    """The simulator and its child, once both run; the simulator first."""
    pids = wait_started(marker, 2)
    leader = [p for p in pids if parent_of(p) not in pids]
    assert len(leader) == 1, pids
    return leader + [p for p in pids if p != leader[0]]


def child_env(marker):
    """The environment of a child python: the marker travels here, not in its argv."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env["FG2U_TEST_MARKER"] = marker
    return env


CALLER = """
import os
import sys
import numpy as np
from solvers import Subprocess
sim, root = sys.argv[1:3]
marker = os.environ["FG2U_TEST_MARKER"]
solver = Subprocess([sys.executable, sim, "hang", marker], template="{phi}\\n",
                    output="out.txt", workdir_root=root)
solver(np.zeros(2))
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_command_dies_with_the_process_that_started_it(marker, tmp_path, sig):
    caller = subprocess.Popen([sys.executable, "-c", CALLER, SIM, str(tmp_path)],
                              env=child_env(marker))
    try:
        pids = command_pids(marker)
        assert parent_of(pids[0]) == caller.pid
        caller.send_signal(sig)
        assert survivors(pids, GONE_WITHIN) == []
    finally:
        caller.kill()
        caller.wait()
    # The watchdog keeps the call's working directory as a failure, with a note.
    kept = wait_for(lambda: [p for p in tmp_path.iterdir() if "-failed-" in p.name],
                    GONE_WITHIN)
    assert len(kept) == 1 and len(list(tmp_path.iterdir())) == 1, list(tmp_path.iterdir())
    note = (kept[0] / "fg2u-failure.txt").read_text()
    assert f"(pid {caller.pid}) that ran this call died while its command ran" in note


SENDER = """
import os
import pickle
import sys
from solvers import Subprocess
sim, root = sys.argv[1:3]
solver = Subprocess([sys.executable, sim, "hang", os.environ["FG2U_TEST_MARKER"]],
                    template="{phi}\\n", output="out.txt", workdir_root=root)
sys.stdout.buffer.write(pickle.dumps(solver))
sys.stdout.buffer.flush()
os.close(1)
sys.stdin.read()  # lives until the test closes stdin
"""


@pytest.mark.timeout(120)
def test_commands_die_with_the_process_that_sent_the_solver(marker, tmp_path):
    # The process that pickles a solver (the one running the optimization, sending it
    # to workers) owns the commands it starts: they die when it exits, even if the
    # process running them lives on (a loky worker waiting for its command).
    sender = subprocess.Popen([sys.executable, "-c", SENDER, SIM, str(tmp_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=child_env(marker))
    solver = pickle.loads(sender.stdout.read())
    assert solver._owner is not None and solver._owner[0] == sender.pid
    assert pickle.loads(pickle.dumps(solver))._owner is None  # this process: no owner
    sender.stdin.close()
    sender.wait(60)
    with pytest.raises(InnerSolverError) as info:
        solver(np.zeros(2))
    assert info.value.kind == "returncode" and "SIGKILL" in str(info.value)
    assert leftovers(marker, GONE_WITHIN) == []
    # Unpickled once its sender has exited (e.g. read back from a file), it has no
    # owner: its commands run.
    again = pickle.loads(pickle.dumps(solver))
    assert again._owner is None


@pytest.mark.timeout(120)
def test_evaluator_timeout_kills_the_command_and_keeps_its_directory(marker, tmp_path):
    # The sequential backend's timeout interrupts the adapter's wait with SIGALRM.
    solver = hang_solver(marker, tmp_path)
    with fz.Evaluator("sequential", timeout=1.0, max_retries=0) as ev:
        with pytest.raises(InnerSolverError, match="longer than timeout=1 s"):
            ev.map(solver, [np.zeros(2)], lambda index, theta: None)
    assert leftovers(marker, GONE_WITHIN) == []
    kept = list(tmp_path.iterdir())
    assert len(kept) == 1, kept
    assert "interrupted by SolverTimeout" in (kept[0] / "fg2u-failure.txt").read_text()


def map_in_thread(ev, solver):
    """Start ``ev.map`` of one point in a thread; the thread and where its error goes."""
    errors = []

    def run():
        try:
            ev.map(solver, [np.zeros(2)], lambda index, theta: None)
        except InnerSolverError as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


@pytest.mark.timeout(180)
def test_loky_worker_killed_takes_its_command_along(marker, tmp_path):
    solver = hang_solver(marker, tmp_path)
    with fz.Evaluator("loky", n_jobs=1, max_retries=0) as ev:
        thread, errors = map_in_thread(ev, solver)
        pids = command_pids(marker)
        worker = parent_of(pids[0])
        assert worker != os.getpid()
        os.kill(worker, signal.SIGKILL)
        assert survivors(pids, GONE_WITHIN) == []
        thread.join(60)
    assert errors and errors[0].kind == "crash"
    assert leftovers(marker, GONE_WITHIN) == []


def zombie_children(pid):
    """Children of ``pid`` that exited and were not reaped."""
    found = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                found += [int(p) for p in fh.read().split()]
        except OSError:
            continue
    return [p for p in found if parent_of(p) is not None and not alive(p)]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["sequential", "loky"])
def test_descendants_that_start_their_own_session_are_killed(marker, tmp_path, backend):
    # The simulator starts a process in a session of its own (setsid), which starts
    # another one the same way; once both run, it writes its output and exits 0. Both
    # escaped its process group; they come back to the process that ran the command
    # (a child subreaper) and are killed before the call returns, the worker alive.
    solver = hang_solver(marker, tmp_path, "escape")
    got = []
    zombies_before = set(zombie_children(os.getpid()))
    with fz.Evaluator(backend, n_jobs=1, max_retries=0) as ev:
        ev.map(solver, [np.zeros(2)], lambda index, theta: got.append(theta))
        assert len(got) == 1 and np.all(np.isfinite(got[0]))
        assert leftovers(marker, GONE_WITHIN) == []
        if backend == "sequential":
            # They ran as children of this process for a moment: none is left a zombie.
            assert set(zombie_children(os.getpid())) <= zombies_before
    assert list(tmp_path.iterdir()) == []  # the successful call's directory is gone


@pytest.mark.timeout(180)
def test_escaped_descendants_die_with_a_killed_worker(marker, tmp_path):
    # As above, but the simulator hangs afterwards and its loky worker is killed: the
    # worker's watchdog finds the escaped processes by the call's token.
    solver = hang_solver(marker, tmp_path, "escape-hang")
    with fz.Evaluator("loky", n_jobs=1, max_retries=0) as ev:
        thread, errors = map_in_thread(ev, solver)
        pids = wait_started(marker, 3)
        simulator = [p for p in pids if parent_of(p) not in pids]
        worker = {parent_of(p) for p in simulator} - {1}
        assert len(worker) == 1 and worker != {os.getpid()}, (pids, simulator)
        os.kill(worker.pop(), signal.SIGKILL)
        assert survivors(pids, GONE_WITHIN) == []
        thread.join(60)
    assert errors and errors[0].kind == "crash"
    assert leftovers(marker, GONE_WITHIN) == []


@pytest.mark.dask
@pytest.mark.timeout(180)
def test_dask_worker_killed_or_task_cancelled(dask_client, marker, tmp_path):
    solver = hang_solver(marker, tmp_path)
    future = dask_client.submit(solver, np.zeros(2), pure=False)
    try:
        pids = command_pids(marker)
        worker = parent_of(pids[0])
        assert worker != os.getpid()
        os.kill(worker, signal.SIGKILL)
        assert survivors(pids, GONE_WITHIN) == []
        # The scheduler runs the task again on another worker; cancelling it there
        # kills that command too (dask cannot interrupt the thread running the task).
        rerun = command_pids(marker)
        assert not set(rerun) & set(pids)
        future.cancel()
        assert survivors(rerun, GONE_WITHIN) == []
    finally:
        future.cancel()
        dask_client.wait_for_workers(2, timeout=120)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("backend", ["loky", pytest.param("dask", marks=pytest.mark.dask)])
def test_aborted_map_kills_the_solves_in_flight(backend, marker, tmp_path, request):
    # Two points: one hangs; the other fails once the first has started, which stops the
    # map (max_failure_fraction=0) while the hanging solve is in flight.
    sync = tmp_path / "sync"
    sync.mkdir()
    solver = hang_solver(marker, tmp_path, "sign", f"sync={sync}")
    options = dict(max_retries=0, max_failure_fraction=0.0)
    if backend == "loky":
        ev = fz.Evaluator("loky", n_jobs=2, **options)
    else:
        ev = fz.Evaluator("dask", client=request.getfixturevalue("dask_client"), **options)
    with ev:
        with pytest.raises(InnerSolverError, match="negative phi"):
            ev.map(solver, [np.array([1.0, 0.0]), np.array([-1.0, 0.0])],
                   lambda index, theta: None)
        pids = processes_with(marker)
        assert len(pids) == 2  # in flight when the map gave up
        if backend == "dask":
            # The cancelled task's command goes at once, the Evaluator still open.
            assert survivors(pids, GONE_WITHIN) == []
    assert leftovers(marker, GONE_WITHIN) == []


RUN = """
import os
import sys
import numpy as np
import fg2u_zo as fz
from solvers import Subprocess
sim, root, backend, address = sys.argv[1:5]
marker = os.environ["FG2U_TEST_MARKER"]
solver = Subprocess([sys.executable, sim, "hang", marker], template="{phi}\\n",
                    output="out.txt", workdir_root=root)
problem = fz.BilevelProblem(inner=solver, outer=lambda theta, phi: (theta ** 2).sum())
if backend == "loky":
    options = {"backend": "loky", "n_jobs": 1}
else:
    options = {"evaluator": fz.Evaluator("dask", scheduler_address=address)}
fz.minimize(problem, np.zeros(2), estimator=fz.FG2UZO(num_directions=2, step=1e-3),
            steps=1, checkpoint=os.path.join(root, "run.ckpt"), **options)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("backend", ["loky", pytest.param("dask", marks=pytest.mark.dask)])
def test_stopping_a_run_leaves_no_command_behind(backend, sig, marker, tmp_path, request):
    address = (request.getfixturevalue("dask_client").scheduler.address
               if backend == "dask" else "")
    run = subprocess.Popen([sys.executable, "-c", RUN, SIM, str(tmp_path), backend, address],
                           env=child_env(marker))
    try:
        pids = wait_started(marker, 2, timeout=120)
        run.send_signal(sig)
        assert leftovers(marker, GONE_WITHIN) == []
        assert not set(pids) & set(processes_with(marker))
        run.wait(60)
        if sig == signal.SIGTERM:
            # minimize stops on SIGTERM: the step is abandoned, the run returns.
            assert run.returncode == 0
    finally:
        run.kill()
        run.wait()
        if backend == "dask":
            request.getfixturevalue("dask_client").wait_for_workers(2, timeout=120)
