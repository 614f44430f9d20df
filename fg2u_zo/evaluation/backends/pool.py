"""The process pool behind ``backend="loky"``: loky worker processes we steer one by one.

joblib's reusable loky executor treats its workers as a unit: one worker that dies
breaks the executor, fails every queued call and cannot tell which call killed it,
and a call stuck in C code cannot be stopped short of killing them all. An inner
solver is exactly the kind of code that hangs and segfaults, so this pool starts
processes with loky's start method (fork + exec, no re-import of ``__main__``,
cloudpickle) but keeps one pipe per worker:

* each worker runs its tasks (batches of points) in order and streams one outcome per
  point, so the parent always knows which point a worker is on: when a worker dies,
  the point it was on is the culprit, and the rest of its work is resubmitted;
* the parent knows when each point started, so a solver that ignores SIGALRM (stuck
  in C code) is killed ``timeout + kill_grace`` seconds after it started, its process
  group with it, and only that worker is replaced;
* the solver and its keywords (the payload) travel once per map and per worker;
* a worker gets its next task while it runs the current one (when the task message
  is small), so it never waits for the parent between tasks.

Everything runs in the calling thread: :meth:`ProcessPool.poll` waits on the pipes
and on the process sentinels with :func:`multiprocessing.connection.wait`.

Deadlock freedom: a pipe holds 64 KiB. The parent writes a payload (any size) only to
a worker that has no task, i.e. that is blocked reading; a second, queued task only
when its message is small enough to sit in the pipe without a reader.
"""

from __future__ import annotations

import collections
import logging
import os
import pickle
import signal
import time
from multiprocessing.connection import wait as _wait_ready

from .events import ItemDone, TaskDone, TaskLost
from ..worker import load_failure, run_items
from ...errors import InnerSolverError

logger = logging.getLogger(__name__)

# Libraries that start one thread per core; with n workers each gets cores // n
# threads, as joblib's loky backend does, unless the user set them.
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")

# Consecutive worker deaths without any progress after which the pool gives up:
# workers that die at start-up or while unpickling the solver would otherwise be
# replaced forever.
_MAX_BARREN_DEATHS = 3

# A task is queued behind a running one only if its points fit well within a pipe.
_PREFETCH_BYTES = 16 * 1024


def _worker_main(conn):
    """Loop of one worker process: load payloads, run tasks, stream outcomes."""
    try:
        os.setsid()  # own process group: a kill also takes the solver's children
        own_group = True
    except OSError:
        own_group = False
    # Ctrl-C in a terminal reaches the whole foreground group; the parent decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loaded, load_error = None, None
    try:
        conn.send(("ready", os.getpid(), own_group))
        while True:
            msg = conn.recv()
            tag = msg[0]
            if tag == "stop":
                return
            if tag == "payload":
                _, token, blob = msg
                loaded = None  # free the previous warm start before loading the next
                try:
                    loaded, load_error = pickle.loads(blob), None
                except Exception as exc:  # noqa: BLE001 - reported with every item
                    load_error = exc
                conn.send(("loaded", token))
            elif tag == "task":
                _, task_id, items, timeout = msg
                if loaded is None:
                    for outcome in load_failure(items, load_error):
                        conn.send(("item", task_id, outcome))
                else:
                    solver, kwargs, expected_shape = loaded

                    def emit(outcome, task_id=task_id):
                        conn.send(("item", task_id, outcome))

                    run_items(solver, kwargs, expected_shape, items, timeout, emit=emit)
                conn.send(("done", task_id))
    except (EOFError, OSError):  # the parent went away
        return


class _Task:
    __slots__ = ("task_id", "items", "timeout", "token", "pending", "sent_at", "stale",
                 "nbytes")

    def __init__(self, task_id, items, timeout, token):
        self.task_id = task_id
        self.items = items
        self.timeout = timeout
        self.token = token
        self.pending = [index for index, _ in items]  # in the order the worker runs them
        self.sent_at = None
        self.stale = False  # cancelled: runs to completion, reports nothing
        self.nbytes = sum(getattr(point, "nbytes", 0) for _, point in items)


class _Worker:
    __slots__ = ("process", "conn", "pid", "own_group", "ready", "token", "loading",
                 "tasks", "clock", "killed", "drain_deadline")

    def __init__(self, process, conn):
        self.process = process
        self.conn = conn
        self.pid = process.pid
        self.own_group = False
        self.ready = False  # sent "ready"
        self.token = None  # the last payload sent to it
        self.loading = False  # a payload was sent and not yet acknowledged
        self.tasks = collections.deque()  # sent, in order; tasks[0] is running
        self.clock = None  # when the point it is running started (as seen from here)
        self.killed = None  # (kind, message) when the parent killed it
        self.drain_deadline = None  # when its cancelled tasks must be over


def _exit_description(process) -> str:
    code = process.exitcode
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ProcessPool:
    """``n_workers`` loky processes; see the module docstring.

    Events returned by :meth:`poll` (:mod:`~fg2u_zo.evaluation.backends.events`):

    * :class:`ItemDone` -- one evaluation finished;
    * :class:`TaskDone` -- the task finished;
    * :class:`TaskLost` -- the worker died (``kind="crash"``) or was killed for
      overrunning the timeout (``kind="timeout"``); ``indices`` got no outcome,
      ``culprit`` (the one it was running) is among them.
    """

    def __init__(self, n_workers: int, *, kill_grace: float = 2.0, start_timeout=120.0,
                 drain_timeout=5.0):
        self.n_workers = n_workers
        self.kill_grace = kill_grace
        self.start_timeout = start_timeout
        self.drain_timeout = drain_timeout
        self._workers: list[_Worker] = []
        self._queue: collections.deque = collections.deque()
        self._payload = None  # (token, blob) of the current map
        self._barren_deaths = 0
        self._closed = False
        self._ctx = None
        self._env = None

    # -- life cycle ---------------------------------------------------------------------

    def start(self):
        """Start the missing workers (non-blocking; they report when ready)."""
        if self._closed:
            raise RuntimeError("the process pool is closed")
        if self._ctx is None:
            from joblib.externals.loky.backend.context import get_context
            self._ctx = get_context("loky")
            threads = str(max(1, (os.cpu_count() or 1) // self.n_workers))
            self._env = {name: threads for name in _THREAD_ENV if name not in os.environ}
        while len(self._workers) < self.n_workers:
            parent_conn, child_conn = self._ctx.Pipe(duplex=True)
            process = self._ctx.Process(target=_worker_main, args=(child_conn,),
                                        env=self._env, daemon=True, name="fg2u-zo-worker")
            process.start()
            child_conn.close()
            self._workers.append(_Worker(process, parent_conn))
        return self

    def wait_ready(self, timeout=None):
        """Block until every worker accepts work; returns the seconds waited."""
        start = time.monotonic()
        timeout = self.start_timeout if timeout is None else timeout
        self.start()
        while not all(w.ready for w in self._workers):
            if time.monotonic() - start > timeout:
                raise InnerSolverError(
                    f"the loky worker processes did not start within {timeout:g} s",
                    kind="crash")
            for event in self.poll(0.05):  # only "ready" messages can come now
                logger.debug("unexpected event while starting: %r", event)
        return time.monotonic() - start

    def close(self):
        """Stop every worker: idle ones are asked to exit, busy ones are killed."""
        if self._closed:
            return
        self._closed = True
        self._queue.clear()
        for w in self._workers:
            if w.ready and not w.tasks:
                try:
                    w.conn.send(("stop",))
                except OSError:
                    pass
            else:
                self._kill(w)
        deadline = time.monotonic() + 2.0
        for w in self._workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.exitcode is None:
                self._kill(w)
                w.process.join(1.0)
            w.conn.close()
        self._workers = []

    # -- the map interface ----------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def parallelism(self) -> int:
        """Workers, starting ones included."""
        return max(1, len(self._workers))

    def set_payload(self, token, blob):
        self._payload = (token, blob)

    def submit(self, task_id, items, timeout):
        self._queue.append(_Task(task_id, items, timeout, self._payload[0]))
        self._dispatch()

    def cancel(self, task_ids):
        """Forget these tasks: drop the queued ones; the running ones finish unobserved.

        Replacing a worker costs seconds (a new interpreter imports numpy, torch ...),
        so a worker running a cancelled task is left to finish it, and killed only if it
        is still at it ``drain_timeout`` seconds later (checked while the pool is polled).
        """
        task_ids = set(task_ids)
        self._queue = collections.deque(t for t in self._queue if t.task_id not in task_ids)
        for w in self._workers:
            for task in w.tasks:
                if task.task_id in task_ids and not task.stale:
                    task.stale = True
                    if w.drain_deadline is None:
                        w.drain_deadline = time.monotonic() + self.drain_timeout

    def poll(self, timeout):
        """Wait up to ``timeout`` seconds for something to happen; return the events."""
        events = []
        self._dispatch()
        waitables = {}
        for w in self._workers:
            waitables[w.conn] = w
            waitables[w.process.sentinel] = w
        wait_for = max(0.0, min(timeout, self._next_deadline() - time.monotonic()))
        ready = _wait_ready(list(waitables), wait_for) if waitables else []
        handled = set()
        for obj in ready:
            w = waitables[obj]
            if id(w) not in handled:
                handled.add(id(w))
                self._drain(w, events)
        self._enforce_deadlines()
        self._dispatch()
        return events

    # -- internals ------------------------------------------------------------------------

    def _drain(self, w, events):
        """Read every message the worker sent; handle its death if it died."""
        dead = False
        try:
            while w.conn.poll():
                self._handle(w, w.conn.recv(), events)
        except (EOFError, OSError):
            dead = True
        if dead or w.process.exitcode is not None:
            w.process.join(1.0)
            self._on_death(w, events)

    def _handle(self, w, msg, events):
        tag = msg[0]
        now = time.monotonic()
        if tag == "item":
            _, task_id, outcome = msg
            task = w.tasks[0] if w.tasks else None
            if task is None or task.task_id != task_id:
                return
            if outcome.index in task.pending:
                task.pending.remove(outcome.index)
            w.clock = now
            self._barren_deaths = 0
            if not task.stale:
                events.append(ItemDone(task_id, outcome))
        elif tag == "done":
            task = w.tasks.popleft() if w.tasks else None
            if task is not None and not task.stale:
                events.append(TaskDone(task.task_id, now - task.sent_at))
            w.clock = now if w.tasks else None
            if not any(t.stale for t in w.tasks):
                w.drain_deadline = None
        elif tag == "loaded":
            w.loading = False
            w.clock = now if w.tasks else None
        elif tag == "ready":
            # Not progress: only outcomes reset _barren_deaths, or workers that start
            # and then die unpickling the solver would be replaced forever.
            _, w.pid, w.own_group = msg
            w.ready = True

    def _send(self, w, message) -> bool:
        try:
            w.conn.send(message)
            return True
        except OSError:
            return False  # the death shows on the sentinel at the next poll

    def _send_task(self, w, task):
        if not w.tasks and not w.loading:
            w.clock = time.monotonic()
        task.sent_at = time.monotonic()
        w.tasks.append(task)
        self._send(w, ("task", task.task_id, task.items, task.timeout))

    def _dispatch(self):
        if not self._queue or self._closed:
            return
        token = self._payload[0]
        idle = [w for w in self._workers if w.ready and not w.tasks and w.killed is None]
        # Workers that already hold this map's payload first: nothing to ship.
        idle.sort(key=lambda w: w.token != token)
        for w in idle:
            if not self._queue:
                return
            task = self._queue.popleft()
            if w.token != task.token:
                # Only an idle worker is sent a payload: it is reading, the send cannot
                # block on a worker that is itself blocked writing to us.
                w.token, w.loading = task.token, True
                self._send(w, ("payload", task.token, self._payload[1]))
            self._send_task(w, task)
        for w in self._workers:
            if not self._queue:
                return
            task = self._queue[0]
            if len(w.tasks) == 1 and w.token == task.token and w.killed is None \
                    and not w.tasks[0].stale and task.nbytes <= _PREFETCH_BYTES:
                self._send_task(w, self._queue.popleft())

    def _deadline(self, w):
        """When the parent kills ``w``: its point overran, or its cancelled task lingers."""
        if not w.tasks or w.killed is not None:
            return float("inf")
        deadline = float("inf")
        if w.tasks[0].timeout is not None and w.clock is not None:
            deadline = w.clock + w.tasks[0].timeout + self.kill_grace
        if w.drain_deadline is not None:
            deadline = min(deadline, w.drain_deadline)
        return deadline

    def _next_deadline(self):
        return min((self._deadline(w) for w in self._workers), default=float("inf"))

    def _enforce_deadlines(self):
        now = time.monotonic()
        for w in self._workers:
            if now < self._deadline(w):
                continue
            if w.tasks[0].stale:
                w.killed = ("cancelled", "")
            else:
                elapsed = now - w.clock
                w.killed = ("timeout", (
                    f"the inner solver ran {elapsed:.3g} s, longer than timeout="
                    f"{w.tasks[0].timeout:g} s, did not stop on SIGALRM (stuck outside "
                    f"Python?) and its worker process (pid {w.pid}) was killed"))
                logger.warning("killing worker %d: evaluation past its timeout", w.pid)
            self._kill(w)

    def _kill(self, w):
        try:
            if w.own_group:
                os.killpg(w.pid, signal.SIGKILL)
            else:
                os.kill(w.pid, signal.SIGKILL)
        except OSError:
            try:
                w.process.kill()
            except (OSError, AttributeError, ValueError):
                pass

    def _on_death(self, w, events):
        self._workers.remove(w)
        try:
            w.conn.close()
        except OSError:
            pass
        how = _exit_description(w.process)
        tasks = list(w.tasks)
        if not w.ready or w.loading:
            # Died starting or unpickling the solver: nothing ran, resubmit as is.
            self._barren_deaths += 1
            self._queue.extendleft(reversed([t for t in tasks if not t.stale]))
        elif tasks:
            running, queued = tasks[0], tasks[1:]
            self._queue.extendleft(reversed([t for t in queued if not t.stale]))
            if running.stale:
                pass
            elif running.pending:
                culprit = running.pending[0]
                if w.killed is not None and w.killed[0] == "timeout":
                    kind, message = w.killed
                else:
                    kind, message = "crash", (
                        f"the worker process (pid {w.pid}) died ({how}) while evaluating "
                        f"point {culprit}: a segfault, os._exit, an out-of-memory kill ...")
                seconds = time.monotonic() - (w.clock or time.monotonic())
                events.append(TaskLost(running.task_id, tuple(running.pending), culprit,
                                       kind, message, seconds))
            else:  # every outcome arrived, only "done" is missing
                events.append(TaskDone(running.task_id, time.monotonic() - running.sent_at))
        logger.info("worker %d died (%s); starting a replacement", w.pid, how)
        if self._barren_deaths >= _MAX_BARREN_DEATHS:
            self.close()
            raise InnerSolverError(
                f"{self._barren_deaths} loky worker processes died while starting or while "
                f"unpickling the inner solver (last one: {how}); the solver or a module it "
                "imports crashes the interpreter: try backend='sequential' to see the error",
                kind="crash")
        if not self._closed:
            self.start()
