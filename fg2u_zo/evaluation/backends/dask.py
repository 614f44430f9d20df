"""``backend="dask"``: tasks on a dask.distributed cluster (imported only when asked for).

The cluster is ``client``, ``scheduler_address`` or a new ``LocalCluster(n_workers=n_jobs,
threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None)`` that
:meth:`DaskBackend.close` closes. Dask runs tasks in threads: a timed-out solver is
abandoned like with ``"threading"``, and on a cluster this backend started the worker
that holds it is restarted. A worker that dies fails its tasks with KilledWorker (at
once on clusters started here, after the scheduler's ``allowed-failures`` otherwise);
dask cannot tell which of its tasks killed it (``isolates_tasks = False``), so the
Evaluator reruns them one point per task and a point that kills a worker again is the
culprit -- except a one-point task that dask itself already ran on more than one
worker, all of which died: that point is charged at once, with all those attempts.
Large payloads are scattered to the workers once per map.

What the run does not cause but must survive, and how it shows:

* a worker that dies or leaves: the scheduler reruns its tasks elsewhere; the backend
  learns which of its tasks were on it from the scheduler's ``remove-worker`` events
  (topic ``"all"``), logs a WARNING and reports them as lost and run again
  (``TaskDone.rerun``), counted in ``MapStats.lost_counts``;
* the scheduler lost and back within the client's reconnect window: dask cancels
  every future of the client; a future cancelled by dask, not by the run, is a task
  lost through no fault of its points (``TaskLost(blameless=True)``, kind
  ``"scheduler"``), which the Evaluator submits again; a payload scattered to the old
  cluster travels inside each task from then on. Workers do not survive their
  scheduler: they must be restarted with it;
* no scheduler after the window (the client closed), or no worker for
  :data:`NO_WORKER_GRACE_SECONDS`: the map fails with kind ``"crash"``, the message
  counting the evaluations in flight. While the run waits, a WARNING every
  :data:`WAIT_LOG_SECONDS`.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
import traceback
import uuid
import weakref

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
#: While a map waits for workers or for the scheduler, it logs a WARNING this often.
WAIT_LOG_SECONDS = 30.0

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
        self._raw_payload = None  # the payload itself, when a scattered copy is lost
        self._keys = {}  # key of a future in flight -> its task id
        self._reruns = collections.Counter()  # task id -> workers dask lost it with
        self._notices = collections.deque()  # remove-worker events from the scheduler
        self._subscribed = None  # the client whose events we hear
        self._disconnected_since = None
        self._waiting_logged = 0.0

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
        self._raw_payload = self._payload = payload
        if len(payload.blob) > BROADCAST_BYTES:
            # One transfer per worker for the whole map, not one per task.
            try:
                self._payload = self.client.scatter(payload, broadcast=True, hash=False)
            except Exception as exc:  # noqa: BLE001 - no scheduler now: inside each task
                logger.warning("could not scatter the inner solver to the dask workers "
                               "(%r); it travels inside each task", exc)
        self._listen()
        try:
            # Two tasks per worker thread: the scheduler hands each worker its next task
            # while the current one runs, which hides the client-scheduler round trip.
            self._capacity = 2 * max(1, sum(self.client.nthreads().values()))
        except Exception:  # noqa: BLE001 - keep the last known value
            pass

    def end(self):
        self._payload = self._raw_payload = None  # releases a scattered payload

    def submit(self, task_id, items, timeout):
        if getattr(self._payload, "status", "finished") != "finished":
            # The scattered copy went with a scheduler that was lost.
            self._payload = self._raw_payload
        try:
            future = self.client.submit(run_task, self._payload, items, timeout,
                                        key=f"fg2u-zo-{uuid.uuid4().hex}", pure=False,
                                        retries=0)
        except Exception as exc:  # noqa: BLE001 - a closed client, among others
            raise InnerSolverError(f"cannot submit to the dask cluster ({exc!r}) with "
                                   f"{self._in_flight()} evaluation(s) in flight",
                                   kind="crash") from exc
        submitted = time.perf_counter()
        self._futures[task_id] = (future, items)
        self._keys[future.key] = task_id
        if timeout is not None:
            # Backstop only: the task enforces its own per-point timeouts; it may wait
            # behind one task on its worker first.
            self._deadlines[task_id] = (time.monotonic() + 2 * len(items) * timeout
                                        + self.kill_grace + 10.0)
        future.add_done_callback(lambda f: self._done.put((task_id, f, submitted)))

    def cancel(self, task_ids):
        for task_id in task_ids:
            entry = self._forget(task_id)
            if entry is not None:
                entry[0].cancel()

    def _forget(self, task_id):
        """Stop tracking a task; its (future, items), or None."""
        entry = self._futures.pop(task_id, None)
        self._deadlines.pop(task_id, None)
        self._reruns.pop(task_id, None)
        if entry is not None:
            self._keys.pop(entry[0].key, None)
        return entry

    def _in_flight(self):
        """Evaluations submitted and not yet reported."""
        return sum(len(items) for _, items in self._futures.values())

    def poll(self, timeout):
        self._check_client()
        events = []
        wait = timeout
        if self._deadlines:
            wait = max(0.0, min(wait, min(self._deadlines.values()) - time.monotonic()))
        try:
            item = self._done.get(timeout=wait)
        except queue.Empty:
            item = None
            if self.client.status == "running":  # asking a lost scheduler blocks
                self._check_workers_present()
        self._read_notices()
        while item is not None:
            self._collect(item, events)
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                item = None
        self._enforce_deadlines(events)
        return events

    def _check_client(self):
        """Fail once the client gave up on its scheduler; log while it tries."""
        status = self.client.status
        if status not in ("running", "connecting", "newly-created"):
            raise InnerSolverError(
                f"the dask client is {status!r} with {self._in_flight()} evaluation(s) in "
                "flight: the scheduler went away and did not come back within the "
                f"client's reconnect window ({_reconnect_window():g} s, "
                "distributed.comm.timeouts.connect). Restart the scheduler together with "
                "its workers and resume the run from its checkpoint", kind="crash")
        now = time.monotonic()
        if status == "connecting":
            if self._disconnected_since is None:
                self._disconnected_since = self._waiting_logged = now
                logger.warning(
                    "lost the connection to the dask scheduler with %d evaluation(s) in "
                    "flight; waiting up to %g s for it to come back (its workers must be "
                    "restarted with it); the lost evaluations will run again",
                    self._in_flight(), _reconnect_window())
            elif now - self._waiting_logged >= WAIT_LOG_SECONDS:
                self._waiting_logged = now
                logger.warning("still waiting for the dask scheduler (%.0f s so far)",
                               now - self._disconnected_since)
        elif self._disconnected_since is not None:
            logger.warning("the dask scheduler is back after %.1f s; the evaluations lost "
                           "with the connection run again", now - self._disconnected_since)
            self._disconnected_since = None
            self._listen(again=True)  # a new scheduler knows nothing of our subscription

    # -- what the scheduler says about lost workers -------------------------------------

    def _listen(self, again=False):
        """Hear the scheduler's ``"all"`` topic; ``again`` after a reconnection (a new
        scheduler knows nothing of the subscription)."""
        client = self.client
        if self._subscribed is not None and self._subscribed is not client:
            self._unlisten()
        if self._subscribed is None or again:
            _EventFanout.join(client, self, again=again)
            self._subscribed = client

    def _unlisten(self):
        if self._subscribed is not None:
            _EventFanout.leave(self._subscribed, self)
            self._subscribed = None

    def _read_notices(self):
        """Count this map's tasks on workers that left; say so."""
        while self._notices:
            event = self._notices.popleft()
            msg = event[1] if isinstance(event, (tuple, list)) and len(event) == 2 else event
            if not isinstance(msg, dict) or msg.get("action") != "remove-worker":
                continue
            mine = [self._keys[key] for key in msg.get("processing-tasks") or ()
                    if key in self._keys]
            if not mine:
                continue
            for task_id in mine:
                self._reruns[task_id] += 1
            logger.warning(
                "dask worker %s left the cluster while it held %d evaluation(s) of this "
                "map; they run again (counted in the map's lost_counts)",
                msg.get("worker", "?"), sum(len(self._futures[t][1]) for t in mine))

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
            if self._workerless_since is not None:
                logger.warning("the dask cluster has %d worker(s) again, after %.0f s "
                               "without any", count, now - self._workerless_since)
            self._workerless_since = None
            return
        if self._workerless_since is None:
            self._workerless_since = self._waiting_logged = now
            logger.warning("the dask cluster has no workers; %d evaluation(s) wait for one "
                           "(the map fails after %g s without any)", self._in_flight(),
                           NO_WORKER_GRACE_SECONDS)
        elif now - self._workerless_since >= NO_WORKER_GRACE_SECONDS:
            raise InnerSolverError(
                f"the dask cluster has had no workers for {NO_WORKER_GRACE_SECONDS:g} s "
                f"with {self._in_flight()} evaluation(s) in flight: its workers died and "
                "were not replaced. Restart the workers (or the cluster) and resume the "
                "run from its checkpoint", kind="crash")
        elif now - self._waiting_logged >= WAIT_LOG_SECONDS:
            self._waiting_logged = now
            logger.warning("the dask cluster has had no workers for %.0f s; %d "
                           "evaluation(s) wait", now - self._workerless_since,
                           self._in_flight())

    def _collect(self, item, events):
        task_id, future, submitted = item
        entry = self._futures.get(task_id)
        if entry is None or entry[0] is not future:
            return  # cancelled by the run
        rerun = self._reruns.get(task_id, 0)
        self._forget(task_id)
        items = entry[1]
        wall = time.perf_counter() - submitted
        indices = tuple(index for index, _ in items)
        if future.status == "finished":
            try:
                outcomes, abandoned, where = future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. lost while fetching
                events.append(TaskLost(task_id, indices, None, "crash",
                                       f"could not fetch the result: {exc!r}",
                                       rerun=rerun * len(items)))
                return
            events += outcome_events(task_id, outcomes, wall, rerun=rerun * len(items))
            if abandoned:
                self._restart_worker(where)
            return
        if future.cancelled():
            # Not by the run (that forgets the task first): by dask, e.g. when the
            # client reconnects to a scheduler. No point is to blame.
            self._check_client()
            reason = getattr(getattr(getattr(future, "_state", None), "exception", None),
                             "reason", "unknown")
            events.append(TaskLost(task_id, indices, None, "scheduler",
                                   f"dask cancelled the task ({reason})", blameless=True,
                                   rerun=rerun * len(items)))
            return
        exc = future.exception()
        from distributed.scheduler import KilledWorker
        if isinstance(exc, KilledWorker):
            message = f"the dask worker running this evaluation died ({exc})"
            allowed = getattr(exc, "allowed_failures", 0)
            allowed = allowed if isinstance(allowed, int) and allowed > 0 else 0
            if len(indices) == 1 and allowed:
                # dask already ran this one point on allowed + 1 workers and lost each:
                # it is the culprit, and each of those runs was an attempt.
                events.append(TaskLost(task_id, indices, indices[0], "crash", message,
                                       attempts=allowed + 1))
            else:
                events.append(TaskLost(task_id, indices, None, "crash", message,
                                       rerun=allowed * len(items)))
            return
        tb = future.traceback()
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        events.append(TaskLost(task_id, indices, None, "exception",
                               f"the dask task failed outside the solver:\n{tail(text)}",
                               rerun=rerun * len(items)))

    def _enforce_deadlines(self, events):
        now = time.monotonic()
        for task_id, deadline in list(self._deadlines.items()):
            if now < deadline:
                continue
            future, items = self._forget(task_id)
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
        self._payload = self._raw_payload = None
        self._unlisten()
        if self._own_client and self.client is not None:
            try:
                self.client.close()
            finally:
                if self._cluster is not None:
                    self._cluster.close()
            self.client, self._cluster, self._own_client = None, None, False


class _EventFanout:
    """The one handler of a dask client's ``"all"`` topic, shared by the backends that
    use the client: each gets every event; a handler the client had before is called
    too, and put back when the last backend leaves (in whatever order they leave)."""

    _by_client = weakref.WeakKeyDictionary()
    _guard = threading.Lock()

    def __init__(self, client):
        self.client = client
        self.previous = getattr(client, "_event_handlers", {}).get("all")
        self.backends = weakref.WeakSet()
        self.lock = threading.Lock()

    def __call__(self, event):
        with self.lock:
            backends = list(self.backends)
        for backend in backends:
            backend._notices.append(event)
        if self.previous is not None:
            return self.previous(event)
        return None

    def subscribe(self):
        try:
            self.client.subscribe_topic("all", self)
        except Exception as exc:  # noqa: BLE001 - lost workers are then not counted
            logger.debug("cannot subscribe to the dask scheduler's events: %r", exc)

    @classmethod
    def join(cls, client, backend, again=False):
        with cls._guard:
            fanout = cls._by_client.get(client)
            if fanout is None:
                fanout = cls._by_client[client] = cls(client)
                again = True
            with fanout.lock:
                fanout.backends.add(backend)
        if again:
            fanout.subscribe()

    @classmethod
    def leave(cls, client, backend):
        with cls._guard:
            fanout = cls._by_client.get(client)
            if fanout is None:
                return
            with fanout.lock:
                fanout.backends.discard(backend)
                if len(fanout.backends):
                    return
            del cls._by_client[client]
        try:
            if fanout.previous is not None:
                client.subscribe_topic("all", fanout.previous)
            elif client.status == "running":
                client.unsubscribe_topic("all")
        except Exception:  # noqa: BLE001 - best effort on a client going away
            pass


def _reconnect_window():
    """Seconds a dask client tries to reach its scheduler again before it closes."""
    try:
        import dask
        from dask.utils import parse_timedelta
        return float(parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"),
                                     "s"))
    except Exception:  # noqa: BLE001 - only for messages
        return 30.0


def create(config) -> DaskBackend:
    """The factory registered as ``"dask"``."""
    return DaskBackend(config.n_jobs, client=config.client,
                       scheduler_address=config.scheduler_address,
                       kill_grace=config.kill_grace)
