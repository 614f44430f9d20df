"""A run on a real dask cluster of separate processes survives a worker kill and a
scheduler restart: it finishes, bitwise equal to the sequential run, and reports what
was lost.

The cluster is what a user starts by hand: ``dask scheduler`` and ``dask worker``
(2 worker processes under nannies), each a process of its own on 127.0.0.1, with no
dashboard. During an ``fz.minimize`` run on it, while this run's solves are in
flight,

1. one worker process is SIGKILLed: its nanny starts a new one, and the scheduler
   (``allowed-failures`` 3, the default) runs its tasks again elsewhere;
2. the scheduler is SIGKILLed and started again on the same port, with new workers
   (workers close when they lose their scheduler), well within the client's
   reconnect window.

Before, the second made the run wait forever without a word, and the first was
counted nowhere. No assertion here is on time: the bounds below only stop a hang.
Each bound is a start of dask processes on a loaded machine (``START_SECONDS``, which
takes seconds), or the run itself: at most ``STEPS * (DIRECTIONS + 1)`` solves of
``DELAY`` seconds, each run at most a few times, on at least one worker.
"""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("distributed")

import _faulty_solvers as fs  # noqa: E402
import fg2u_zo as fz  # noqa: E402
from fg2u_zo.testing import RidgeHyperproblem  # noqa: E402

REPO = str(pathlib.Path(__file__).resolve().parents[1])
STEPS, DIRECTIONS, DELAY = 8, 4, 0.3
START_SECONDS = 60.0  # a dask scheduler or worker start on a loaded 2-core machine: seconds
# The client's reconnect window, above what a scheduler start takes.
RECONNECT_SECONDS = 2 * START_SECONDS
# Four starts of dask processes (the cluster, the worker's replacement, the scheduler
# and its new workers, the clients that watch the cluster), the reconnect window, and
# the solves -- each run at most four times -- on one worker; then a factor of two.
TEST_TIMEOUT = int(2 * (4 * START_SECONDS + RECONNECT_SECONDS
                        + 4 * STEPS * (DIRECTIONS + 1) * DELAY))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """``dask scheduler`` and ``dask worker`` processes on 127.0.0.1, no dashboards."""

    def __init__(self, log_dir):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, self.env.get("PYTHONPATH"))
                                                 if p)
        self.log = open(pathlib.Path(log_dir) / "cluster.log", "ab")
        self.processes = []
        self.scheduler = None

    def _start(self, *args):
        proc = subprocess.Popen(["dask", *args], env=self.env, stdin=subprocess.DEVNULL,
                                stdout=self.log, stderr=self.log, start_new_session=True)
        self.processes.append(proc)
        return proc

    def start_scheduler(self):
        self.scheduler = self._start("scheduler", "--host", "127.0.0.1", "--port",
                                     str(self.port), "--no-dashboard",
                                     "--dashboard-address", "127.0.0.1:0")

    def start_workers(self):
        self._start("worker", self.address, "--nworkers", "2", "--nthreads", "1",
                    "--host", "127.0.0.1", "--no-dashboard", "--dashboard-address",
                    "127.0.0.1:0")

    def wait_for_workers(self, n):
        from distributed import Client
        with Client(self.address, timeout=START_SECONDS) as client:
            client.wait_for_workers(n, timeout=START_SECONDS)

    def close(self):
        for proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.log.close()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        c.start_scheduler()
        c.start_workers()
        c.wait_for_workers(2)
        yield c
    finally:
        c.close()


def busy_worker(address, stop):
    """``(address, pid)`` of a worker running one of this run's tasks, once one does."""
    from distributed import Client
    with Client(address, timeout=START_SECONDS) as client:
        pids = client.run(os.getpid)
        while not stop.is_set():
            for worker, keys in client.processing().items():
                if any(str(k).startswith("fg2u-zo-") for k in keys) and worker in pids:
                    return worker, pids[worker]
            stop.wait(0.02)
    return None, None


@pytest.mark.slow
@pytest.mark.dask
@pytest.mark.timeout(TEST_TIMEOUT)
def test_a_run_survives_a_worker_kill_and_a_scheduler_restart(cluster, caplog):
    import dask

    ridge = RidgeHyperproblem(num_features=5, rng=3)
    est = fz.FG2UZO(num_directions=DIRECTIONS, scheme="forward", step=1e-4)
    options = dict(estimator=est, optimizer="adam", lr=0.1, steps=STEPS, rng=0)
    reference = fz.minimize(fz.BilevelProblem(inner=fs.Slow(ridge, 0.0), outer=ridge.outer),
                            np.zeros(5), backend="sequential", **options)

    stop = threading.Event()
    at_step = {2: threading.Event(), 5: threading.Event()}
    done = {}

    def chaos():
        # 1. A worker dies while it runs one of this run's solves.
        at_step[2].wait()
        worker, pid = busy_worker(cluster.address, stop)
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        done["worker"] = worker
        # 2. The scheduler dies while solves are in flight, and comes back on the same
        # port with new workers.
        at_step[5].wait()
        if busy_worker(cluster.address, stop)[1] is None:
            return
        cluster.scheduler.send_signal(signal.SIGKILL)
        cluster.scheduler.wait()
        cluster.start_scheduler()
        cluster.start_workers()
        done["scheduler"] = True

    def callback(record):
        event = at_step.get(record.step)
        if event is not None:
            event.set()

    thread = threading.Thread(target=chaos, daemon=True)
    thread.start()
    problem = fz.BilevelProblem(inner=fs.Slow(ridge, DELAY), outer=ridge.outer)
    try:
        with dask.config.set({"distributed.comm.timeouts.connect": f"{RECONNECT_SECONDS}s"}), \
                caplog.at_level(logging.WARNING, logger="fg2u_zo.evaluation.backends.dask"), \
                fz.Evaluator(scheduler_address=cluster.address, max_retries=1) as ev:
            res = fz.minimize(problem, np.zeros(5), evaluator=ev, callback=callback,
                              **options)
            lost = dict(ev.lost_counts)
    finally:
        stop.set()
        for event in at_step.values():
            event.set()
        thread.join(START_SECONDS)
    assert done == {"worker": done.get("worker"), "scheduler": True}, done

    # Finished, and bitwise the run that nothing disturbed.
    assert res.nit == STEPS and not res.failures
    assert np.array_equal(res.phi, reference.phi)
    # What was lost is reported: the solves dask ran again after the worker died, and
    # those lost with the scheduler connection.
    assert lost.get("crash", 0) >= 1 and lost.get("scheduler", 0) >= 1, lost
    assert res.lost == lost  # ... in the run's totals too
    assert f"dask worker {done['worker']} left the cluster" in caplog.text
    assert "lost the connection to the dask scheduler" in caplog.text
    assert "the dask scheduler is back" in caplog.text
