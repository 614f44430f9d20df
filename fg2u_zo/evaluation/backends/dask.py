"""``backend="dask"``: tasks on a dask.distributed cluster (imported only when asked for).

The cluster is ``client``, ``scheduler_address`` or a new ``LocalCluster(n_workers=n_jobs,
threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None)`` that
:meth:`DaskBackend.close` closes. Dask runs tasks in threads: a timed-out solver is
abandoned like with ``"threading"``, and on a cluster this backend started the worker
that holds it is restarted. A worker that dies fails its tasks with KilledWorker (at
once on clusters started here, after the scheduler's ``allowed-failures`` otherwise);
dask cannot tell which of its tasks killed it (``isolates_tasks = False``), so the
Evaluator reruns them one point per task and a point that kills a worker again is the
culprit. Large payloads are scattered to the workers once per map.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
import uuid

from .base import Backend, pickle_job
from .events import TaskLost, outcome_events
from ..worker import Payload, run_task, tail
from ...errors import InnerSolverError

__all__ = ["DaskBackend", "create"]

logger = logging.getLogger(__name__)

# Payloads larger than this are broadcast once per map instead of travelling inside
# every task.
BROADCAST_BYTES = 100_000


#: How long a cluster may have no worker at all, with tasks outstanding, before a map
#: fails with kind "crash" (a nanny restarts a worker within seconds when it can).
NO_WORKER_GRACE_SECONDS = 120.0
_WORKER_CHECK_SECONDS = 5.0

class DaskBackend(Backend):
    """Tasks on a dask.distributed cluster.

    Workers run tasks in threads, so timeouts are enforced by abandoning the solver's
    helper thread; a worker of a cluster we started that holds abandoned threads is
    restarted afterwards (its nanny replaces the process). A worker that dies fails
    its tasks with KilledWorker once the scheduler's ``allowed-failures`` is exceeded
    (0 on clusters we start).
    """

    name = "dask"
    isolates_tasks = False
    task_overhead = 3e-3
    process_isolated = True

    def __init__(self, n_jobs, *, client=None, scheduler_address=None, kill_grace=2.0):
        try:
            import distributed  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "backend='dask' needs dask.distributed: pip install 'fg2u-zo[dask]'") from exc
        self.n_jobs = n_jobs
        self.client = client
        self.scheduler_address = scheduler_address
        self.kill_grace = kill_grace
        self._own_client = False
        self._cluster = None
        self._done = queue.Queue()
        self._futures = {}
        self._deadlines = {}
        self._payload = None
        self._capacity = 2 * n_jobs
        self._workerless_since = None
        self._workers_checked = 0.0

    @property
    def cluster(self):
        """The LocalCluster this backend started, or None."""
        return self._cluster

    def start(self):
        if self.client is not None:
            return 0.0
        from distributed import Client
        begin = time.perf_counter()
        if self.scheduler_address is not None:
            self.client = Client(self.scheduler_address)
        else:
            from distributed import LocalCluster
            # allowed_failures=0: a task whose worker dies errs at once (KilledWorker) and
            # the Evaluator decides, instead of the scheduler re-running a crashing solver.
            # No dashboard; the scheduler's remaining HTTP endpoint (metrics) goes to a
            # free loopback port rather than 8787, which another cluster may hold.
            self._cluster = LocalCluster(
                n_workers=self.n_jobs, threads_per_worker=1, processes=True,
                host="127.0.0.1", dashboard_address=None,
                scheduler_kwargs={"allowed_failures": 0, "dashboard_address": "127.0.0.1:0"})
            self.client = Client(self._cluster)
        self._own_client = True
        return time.perf_counter() - begin

    def capacity(self):
        return self._capacity

    def parallelism(self):
        return max(1, self._capacity // 2)

    def workers(self):
        """Worker threads of the cluster now (it may grow or shrink between calls)."""
        try:
            return max(1, sum(self.client.nthreads().values()))
        except Exception:  # noqa: BLE001 - a cluster that cannot answer: the last count
            return self.parallelism()

    def begin(self, solver, kwargs, expected_shape):
        self.start()
        payload = Payload(uuid.uuid4().hex, pickle_job((solver, kwargs, expected_shape),
                                                       self.name))
        if len(payload.blob) > BROADCAST_BYTES:
            # One transfer per worker for the whole map, not one per task.
            payload = self.client.scatter(payload, broadcast=True, hash=False)
        self._payload = payload
        try:
            # Two tasks per worker thread: the scheduler hands each worker its next task
            # while the current one runs, which hides the client-scheduler round trip.
            self._capacity = 2 * max(1, sum(self.client.nthreads().values()))
        except Exception:  # noqa: BLE001 - keep the last known value
            pass

    def end(self):
        self._payload = None  # releases a scattered payload

    def submit(self, task_id, items, timeout):
        future = self.client.submit(run_task, self._payload, items, timeout,
                                    key=f"fg2u-zo-{uuid.uuid4().hex}", pure=False, retries=0)
        submitted = time.perf_counter()
        self._futures[task_id] = (future, items)
        if timeout is not None:
            # Backstop only: the task enforces its own per-point timeouts; it may wait
            # behind one task on its worker first.
            self._deadlines[task_id] = (time.monotonic() + 2 * len(items) * timeout
                                        + self.kill_grace + 10.0)
        future.add_done_callback(lambda f: self._done.put((task_id, f, submitted)))

    def cancel(self, task_ids):
        for task_id in task_ids:
            entry = self._futures.pop(task_id, None)
            self._deadlines.pop(task_id, None)
            if entry is not None:
                entry[0].cancel()

    def poll(self, timeout):
        events = []
        wait = timeout
        if self._deadlines:
            wait = max(0.0, min(wait, min(self._deadlines.values()) - time.monotonic()))
        try:
            item = self._done.get(timeout=wait)
        except queue.Empty:
            item = None
            if self.client.status not in ("running", "connecting"):
                raise InnerSolverError(
                    f"the dask client is {self.client.status!r} with {len(self._futures)} "
                    "task(s) outstanding: the scheduler went away", kind="crash")
            self._check_workers_present()
        while item is not None:
            self._collect(item, events)
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                item = None
        self._enforce_deadlines(events)
        return events

    def _check_workers_present(self):
        """Fail instead of waiting forever on a cluster that lost every worker.

        A nanny that cannot bring its worker back in time (a loaded machine) leaves the
        scheduler with no workers; outstanding tasks would then never finish. Asked at
        most every few seconds, only while tasks are outstanding.
        """
        now = time.monotonic()
        if not self._futures or now - self._workers_checked < _WORKER_CHECK_SECONDS:
            return
        self._workers_checked = now
        try:
            count = len(self.client.scheduler_info().get("workers", {}))
        except Exception:  # noqa: BLE001 - a failed query is not evidence either way
            return
        if count:
            self._workerless_since = None
            return
        if self._workerless_since is None:
            self._workerless_since = now
        elif now - self._workerless_since >= NO_WORKER_GRACE_SECONDS:
            raise InnerSolverError(
                f"the dask cluster has had no workers for {NO_WORKER_GRACE_SECONDS:g} s "
                f"with {len(self._futures)} task(s) outstanding: its workers died and were "
                "not replaced. Restart the workers (or the cluster) and resume the run "
                "from its checkpoint", kind="crash")

    def _collect(self, item, events):
        task_id, future, submitted = item
        entry = self._futures.get(task_id)
        if entry is None or entry[0] is not future:
            return  # cancelled
        del self._futures[task_id]
        self._deadlines.pop(task_id, None)
        items = entry[1]
        wall = time.perf_counter() - submitted
        indices = tuple(index for index, _ in items)
        if future.status == "finished":
            try:
                outcomes, abandoned, where = future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. lost while fetching
                events.append(TaskLost(task_id, indices, None, "crash",
                                       f"could not fetch the result: {exc!r}"))
                return
            events += outcome_events(task_id, outcomes, wall)
            if abandoned:
                self._restart_worker(where)
            return
        if future.cancelled():
            return
        exc = future.exception()
        from distributed.scheduler import KilledWorker
        if isinstance(exc, KilledWorker):
            kind, message = "crash", (
                f"the dask worker running this evaluation died ({exc})")
        else:
            kind = "exception"
            tb = future.traceback()
            text = "".join(traceback.format_exception(type(exc), exc, tb))
            message = f"the dask task failed outside the solver:\n{tail(text)}"
        events.append(TaskLost(task_id, indices, None, kind, message))

    def _enforce_deadlines(self, events):
        now = time.monotonic()
        for task_id, deadline in list(self._deadlines.items()):
            if now < deadline:
                continue
            future, items = self._futures.pop(task_id)
            del self._deadlines[task_id]
            indices = tuple(index for index, _ in items)
            where = self._worker_of(future.key)
            future.cancel()
            if where is not None:
                self._restart_worker(where)
            culprit = indices[0] if len(indices) == 1 else None
            events.append(TaskLost(task_id, indices, culprit, "timeout",
                                   "the dask task did not come back within its timeout (the "
                                   "worker is unresponsive; stuck in code that holds the "
                                   "GIL?)"))

    def _worker_of(self, key):
        try:
            for address, keys in self.client.processing().items():
                if key in keys:
                    return address
        except Exception:  # noqa: BLE001 - best effort
            return None
        return None

    def _restart_worker(self, address):
        """Free a worker stuck with abandoned threads; only on clusters we started."""
        if not self._own_client or self._cluster is None or not isinstance(address, str):
            logger.info("dask worker %s keeps a timed-out solver thread running", address)
            return
        client = self.client
        logger.info("restarting dask worker %s: it holds a timed-out solver thread", address)

        def restart():
            try:
                client.restart_workers([address], timeout=60, raise_for_error=False)
            except Exception as exc:  # noqa: BLE001 - best effort, logged
                # Expected when the cluster is being closed meanwhile.
                log = logger.debug if self.client is None else logger.warning
                log("could not restart dask worker %s: %r", address, exc)

        threading.Thread(target=restart, name="fg2u-zo-dask-restart", daemon=True).start()

    def close(self):
        self.cancel(list(self._futures))
        self._payload = None
        if self._own_client and self.client is not None:
            try:
                self.client.close()
            finally:
                if self._cluster is not None:
                    self._cluster.close()
            self.client, self._cluster, self._own_client = None, None, False


def create(config) -> DaskBackend:
    """The factory registered as ``"dask"``."""
    return DaskBackend(config.n_jobs, client=config.client,
                       scheduler_address=config.scheduler_address,
                       kill_grace=config.kill_grace)
