"""Execution backends of the :class:`~fg2u_zo.Evaluator`.

Each backend runs *tasks* (batches of points) and reports *events*; the Evaluator
keeps every policy (batching, retries, failure accounting) and never needs to know
where a task ran. The common interface::

    backend.start() -> float                 # start workers/cluster; seconds it took
    backend.capacity() -> int                # tasks worth having in flight (queued too)
    backend.parallelism() -> int             # tasks running at once (to size batches)
    backend.begin(solver, kwargs, shape)     # ship the solver and its keywords, once per map
    backend.submit(task_id, items, timeout)  # items = [(index, point), ...]
    backend.poll(timeout) -> [event, ...]    # wait for results
    backend.cancel(task_ids); backend.end(); backend.close()

Events: ``("item", task_id, outcome)``, ``("done", task_id, wall_seconds)`` and
``("lost", task_id, indices, culprit, kind, message, seconds)`` (a worker died or was
killed; ``culprit`` is the point known to be responsible, or None).

dask and ray are imported only when asked for.
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import threading
import time
import traceback
import uuid

from .worker import Payload, evaluate, run_items, run_task, tail
from ..errors import FG2UTypeError, FG2UValueError, InnerSolverError

logger = logging.getLogger(__name__)

BACKENDS = ("sequential", "loky", "threading", "dask", "ray")

# Payloads larger than this are broadcast once per map (dask scatter, ray.put) instead
# of travelling inside every task.
_BROADCAST_BYTES = 100_000


def _dumps(obj, backend):
    """cloudpickle ``obj`` once, with an error that says what to do when it fails."""
    import cloudpickle  # a dependency of joblib
    try:
        return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - pickling errors come in many types
        raise FG2UTypeError(
            f"the inner solver (or its warm_start) cannot be pickled for backend="
            f"{backend!r}: {type(exc).__name__}: {exc}. Make it a module-level function or "
            "a picklable object, or use backend='threading' / 'sequential'") from exc


def _outcome_events(task_id, outcomes, wall):
    return [("item", task_id, o) for o in outcomes] + [("done", task_id, wall)]


class _Backend:
    """Defaults shared by the backends."""

    name = "?"
    #: a lost single-point task is certainly the culprit (no other task shared its fate)
    isolates_tasks = True
    #: typical cost of dispatching one task, seconds (sizes automatic batches)
    task_overhead = 1e-4

    def start(self) -> float:
        return 0.0

    def capacity(self) -> int:
        """Tasks worth having in flight (queued ones included)."""
        return 1

    def parallelism(self) -> int:
        """Tasks that run at the same time (what batch sizes are balanced over)."""
        return self.capacity()

    def begin(self, solver, kwargs, expected_shape):
        pass

    def end(self):
        pass

    def cancel(self, task_ids):
        pass

    def close(self):
        pass


class SequentialBackend(_Backend):
    """Runs each task in the calling thread when polled."""

    name = "sequential"
    task_overhead = 0.0

    def __init__(self):
        self._pending = []
        self._live = None

    def begin(self, solver, kwargs, expected_shape):
        self._live = (solver, kwargs, expected_shape)

    def end(self):
        self._live = None

    def submit(self, task_id, items, timeout):
        self._pending.append((task_id, items, timeout))

    def cancel(self, task_ids):
        self._pending = [t for t in self._pending if t[0] not in set(task_ids)]

    def poll(self, timeout):
        events = []
        while self._pending:
            task_id, items, task_timeout = self._pending.pop(0)
            solver, kwargs, shape = self._live
            start = time.perf_counter()
            for index, point in items:
                outcome, _ = evaluate(solver, index, point, kwargs, shape, task_timeout)
                events.append(("item", task_id, outcome))
            events.append(("done", task_id, time.perf_counter() - start))
        return events


class ThreadingBackend(_Backend):
    """A thread pool in this process; solvers share memory with the caller.

    Threads cannot be killed: a timed-out solver is abandoned in a helper thread
    (see :mod:`fg2u_zo.evaluation.worker`) and keeps running in the background.
    """

    name = "threading"
    task_overhead = 5e-5

    def __init__(self, n_jobs):
        self.n_jobs = n_jobs
        self._executor = None
        self._done = queue.Queue()
        self._futures = {}
        self._live = None

    def start(self):
        if self._executor is None:
            from concurrent.futures import ThreadPoolExecutor
            self._executor = ThreadPoolExecutor(self.n_jobs, thread_name_prefix="fg2u-zo")
        return 0.0

    def capacity(self):
        return 2 * self.n_jobs  # a queued task per thread: no gap between tasks

    def parallelism(self):
        return self.n_jobs

    def begin(self, solver, kwargs, expected_shape):
        self._live = (solver, kwargs, expected_shape)

    def end(self):
        self._live = None

    def submit(self, task_id, items, timeout):
        self.start()
        solver, kwargs, shape = self._live
        submitted = time.perf_counter()
        future = self._executor.submit(run_items, solver, kwargs, shape, items, timeout)
        self._futures[task_id] = future
        future.add_done_callback(lambda f: self._done.put((task_id, f, submitted)))

    def cancel(self, task_ids):
        for task_id in task_ids:
            future = self._futures.pop(task_id, None)
            if future is not None:
                future.cancel()  # a running one finishes unobserved

    def poll(self, timeout):
        events = []
        try:
            item = self._done.get(timeout=timeout)
        except queue.Empty:
            return events
        while True:
            task_id, future, submitted = item
            if self._futures.pop(task_id, None) is future and not future.cancelled():
                outcomes, _ = future.result()  # run_items never raises
                events += _outcome_events(task_id, outcomes, time.perf_counter() - submitted)
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                return events

    def close(self):
        if self._executor is not None:
            # Do not wait: abandoned solvers may still be running in their threads.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


class LokyBackend(_Backend):
    """Worker processes started with loky, steered by :class:`ProcessPool`."""

    name = "loky"
    task_overhead = 2e-4

    def __init__(self, n_jobs, kill_grace):
        self.n_jobs, self.kill_grace = n_jobs, kill_grace
        self.pool = None

    def start(self):
        from .pool import ProcessPool
        if self.pool is None or self.pool.closed:  # closed after workers kept dying
            self.pool = ProcessPool(self.n_jobs, kill_grace=self.kill_grace)
        return self.pool.wait_ready()

    def capacity(self):
        return 2 * self.pool.parallelism  # a task queued behind each running one

    def parallelism(self):
        return self.pool.parallelism

    def begin(self, solver, kwargs, expected_shape):
        if self.pool is None or self.pool.closed:
            self.start()
        blob = _dumps((solver, kwargs, expected_shape), self.name)
        self.pool.set_payload(uuid.uuid4().hex, blob)

    def submit(self, task_id, items, timeout):
        self.pool.submit(task_id, items, timeout)

    def poll(self, timeout):
        return self.pool.poll(timeout)

    def cancel(self, task_ids):
        self.pool.cancel(task_ids)

    def close(self):
        if self.pool is not None:
            self.pool.close()


class DaskBackend(_Backend):
    """Tasks on a dask.distributed cluster.

    Workers run tasks in threads, so timeouts are enforced by abandoning the solver's
    helper thread; a worker of a cluster we started that holds abandoned threads is
    restarted afterwards (its nanny replaces the process). A worker that dies fails
    its tasks with KilledWorker once the scheduler's ``allowed-failures`` is exceeded
    (0 on clusters we start): dask cannot say which of the tasks it held killed it,
    hence ``isolates_tasks = False``.
    """

    name = "dask"
    isolates_tasks = False
    task_overhead = 3e-3

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
        payload = Payload(uuid.uuid4().hex, _dumps((solver, kwargs, expected_shape), self.name))
        if len(payload.blob) > _BROADCAST_BYTES:
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
        while item is not None:
            self._collect(item, events)
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                item = None
        self._enforce_deadlines(events)
        return events

    def _collect(self, item, events):
        task_id, future, submitted = item
        entry = self._futures.get(task_id)
        if entry is None or entry[0] is not future:
            return  # cancelled
        del self._futures[task_id]
        self._deadlines.pop(task_id, None)
        items = entry[1]
        wall = time.perf_counter() - submitted
        indices = [index for index, _ in items]
        if future.status == "finished":
            try:
                outcomes, abandoned, where = future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. lost while fetching
                events.append(("lost", task_id, indices, None, "crash",
                               f"could not fetch the result: {exc!r}", 0.0))
                return
            events += _outcome_events(task_id, outcomes, wall)
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
        events.append(("lost", task_id, indices, None, kind, message, 0.0))

    def _enforce_deadlines(self, events):
        now = time.monotonic()
        for task_id, deadline in list(self._deadlines.items()):
            if now < deadline:
                continue
            future, items = self._futures.pop(task_id)
            del self._deadlines[task_id]
            indices = [index for index, _ in items]
            where = self._worker_of(future.key)
            future.cancel()
            if where is not None:
                self._restart_worker(where)
            culprit = indices[0] if len(indices) == 1 else None
            events.append(("lost", task_id, indices, culprit, "timeout",
                           "the dask task did not come back within its timeout (the worker "
                           "is unresponsive; stuck in code that holds the GIL?)", 0.0))

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


class RayBackend(_Backend):
    """Tasks on ray; each task runs in the main thread of a worker process.

    Timeouts are enforced with SIGALRM inside the task; a task that still does not
    come back is cancelled with ``ray.cancel(force=True)``, which kills its worker.
    """

    name = "ray"
    task_overhead = 1e-3

    def __init__(self, n_jobs, *, scheduler_address=None, kill_grace=2.0):
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "backend='ray' needs ray, which is not installed: pip install 'fg2u-zo[ray]'"
            ) from exc
        self.n_jobs = n_jobs
        self.scheduler_address = scheduler_address
        self.kill_grace = kill_grace
        self._own = False
        self._remote = None
        self._refs = {}
        self._deadlines = {}
        self._payload = None
        self._capacity = n_jobs

    def start(self):
        import ray
        begin = time.perf_counter()
        if not ray.is_initialized():
            if self.scheduler_address is None:
                ray.init(num_cpus=self.n_jobs, include_dashboard=False)
            else:
                ray.init(address=self.scheduler_address)
            self._own = True
        if self._remote is None:
            self._remote = ray.remote(num_cpus=1, max_retries=0)(run_task)
        try:
            self._capacity = max(1, int(ray.cluster_resources().get("CPU", self.n_jobs)))
        except Exception:  # noqa: BLE001 - keep n_jobs
            pass
        return time.perf_counter() - begin

    def capacity(self):
        return 2 * self._capacity  # ray queues the extra ones: no gap between tasks

    def parallelism(self):
        return self._capacity

    def begin(self, solver, kwargs, expected_shape):
        import ray
        self.start()
        payload = Payload(uuid.uuid4().hex, _dumps((solver, kwargs, expected_shape), self.name))
        self._payload = ray.put(payload) if len(payload.blob) > _BROADCAST_BYTES else payload

    def end(self):
        self._payload = None

    def submit(self, task_id, items, timeout):
        ref = self._remote.remote(self._payload, items, timeout)
        self._refs[task_id] = (ref, items, time.perf_counter())
        if timeout is not None:
            # Backstop; it may wait behind one task first.
            self._deadlines[task_id] = (time.monotonic()
                                        + 2 * len(items) * (timeout + self.kill_grace) + 10.0)

    def cancel(self, task_ids):
        import ray
        for task_id in task_ids:
            entry = self._refs.pop(task_id, None)
            self._deadlines.pop(task_id, None)
            if entry is not None:
                try:
                    ray.cancel(entry[0], force=True)
                except Exception:  # noqa: BLE001 - already finished
                    pass

    def poll(self, timeout):
        import ray
        events = []
        if not self._refs:
            time.sleep(min(timeout, 0.01))
            return events
        wait = timeout
        if self._deadlines:
            wait = max(0.0, min(wait, min(self._deadlines.values()) - time.monotonic()))
        by_ref = {entry[0]: task_id for task_id, entry in self._refs.items()}
        refs = list(by_ref)
        ready, _ = ray.wait(refs, num_returns=1, timeout=wait)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            task_id = by_ref[ref]
            _, items, submitted = self._refs.pop(task_id)
            self._deadlines.pop(task_id, None)
            indices = [index for index, _ in items]
            try:
                outcomes, _, _ = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                continue
            except ray.exceptions.RayTaskError as exc:
                events.append(("lost", task_id, indices, None, "exception",
                               f"the ray task failed outside the solver:\n{tail(str(exc))}", 0.0))
                continue
            except ray.exceptions.RayError as exc:  # worker crashed, node died, OOM ...
                culprit = indices[0] if len(indices) == 1 else None
                events.append(("lost", task_id, indices, culprit, "crash",
                               f"the ray worker running this evaluation died: "
                               f"{type(exc).__name__}: {tail(str(exc), 5)}", 0.0))
                continue
            events += _outcome_events(task_id, outcomes, time.perf_counter() - submitted)
        now = time.monotonic()
        for task_id, deadline in list(self._deadlines.items()):
            if now >= deadline:
                ref, items, _ = self._refs.pop(task_id)
                del self._deadlines[task_id]
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - it may have just finished
                    pass
                indices = [index for index, _ in items]
                events.append(("lost", task_id, indices,
                               indices[0] if len(indices) == 1 else None, "timeout",
                               "the ray task did not come back within its timeout and its "
                               "worker was killed", 0.0))
        return events

    def close(self):
        self.cancel(list(self._refs))
        self._payload = None
        if self._own:
            import ray
            ray.shutdown()
            self._own = False


# -- choosing a backend ------------------------------------------------------------------

def effective_n_jobs(n_jobs):
    """joblib's convention: ``-1`` all CPUs, ``-2`` all but one, ..."""
    if n_jobs < 0:
        return max(1, (os.cpu_count() or 1) + 1 + n_jobs)
    return n_jobs


_JOBLIB_NAMES = {"LokyBackend": "loky", "MultiprocessingBackend": "loky",
                 "ThreadingBackend": "threading", "SequentialBackend": "sequential",
                 "DaskDistributedBackend": "dask", "RayBackend": "ray"}


def from_parallel_config():
    """``(backend, n_jobs, client)`` set by an enclosing ``joblib.parallel_config``.

    Each is None when not set. ``prefer="threads"`` / ``require="sharedmem"`` map to
    ``"threading"`` as in joblib.
    """
    try:
        from joblib import parallel as jp
    except ImportError:  # pragma: no cover - joblib is a dependency
        return None, None, None
    config = getattr(jp._backend, "config", None)
    if config is None:
        return None, None, None
    unset = type(jp.default_parallel_config["backend"])
    backend_obj, n_jobs = jp.get_active_backend()
    explicit = not isinstance(config.get("backend"), unset)
    cls = type(backend_obj).__name__
    name = _JOBLIB_NAMES.get(cls)
    if name is None:
        raise FG2UValueError(
            f"the joblib backend {cls} set with joblib.parallel_config is not supported by "
            f"fg2u_zo.Evaluator; pass backend= one of {', '.join(map(repr, BACKENDS))}")
    if not explicit and name == "loky":
        name = None  # joblib's default, not a choice: our own default applies
    client = getattr(backend_obj, "client", None) if name == "dask" else None
    if isinstance(n_jobs, unset):
        n_jobs = None
    return name, n_jobs, client
