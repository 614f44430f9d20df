"""Start external commands so that none outlives the run that started it.

A command runs in a session (and process group) of its own, so that a timeout kills
it with its children and only them. Left at that, the command would survive the death
of the process that started it -- a loky or dask worker that is killed, crashes or is
restarted, a run stopped with SIGTERM -- and keep running with ppid 1; and a
descendant that starts a session of its own (``setsid()``) would escape the kill of
the group. Four layers prevent that, each for the ways a run ends that the others miss:

1. **The process group**, killed with SIGKILL when the command ends, however it ends.
2. **The call token and the child subreaper** (:mod:`solvers._subreaper`): every
   descendant carries its call's token in its environment, and while a command runs
   its process is a child subreaper (Linux), so that the descendants that left the
   group come back to it; they are killed when the call ends.
3. **A watchdog process** (POSIX), one per process that runs commands, started on
   first use (:mod:`solvers._reaper`): it is told the token of each call before its
   command starts, and the command's process group once it runs, through a pipe. When
   the pipe closes (the process died, however: SIGKILL, a segfault, the out-of-memory
   killer) it kills those groups and every process whose environment carries one of
   those tokens (read from ``/proc``), and keeps the working directories as failures.
   It also watches the *owner* of each call, the process that sent the adapter to
   this worker (the one running the optimization, when it runs on the same machine):
   when the owner exits, its commands are killed although the worker lives on.
4. **Cancelled dask tasks**: a command started from a dask task is polled while it
   runs and killed when the task is cancelled (the run gave up on it, or its client
   went away), since dask cannot interrupt the thread that runs the task.

No parent-death signal (``prctl(PR_SET_PDEATHSIG)``): setting it needs code run in
the child between ``fork`` and ``exec`` (``preexec_fn``), which rules out the
``vfork`` path of :mod:`subprocess`; every command would then cost a full ``fork`` of
the worker, about 2 ms per call more (``benchmarks.adapter_overhead``). The watchdog,
told the token before the command starts, covers what that signal covered.

What remains possible is listed in :mod:`solvers._subreaper`; in addition, processes
that run as another user, or in another pid namespace, cannot be killed, and without
``/proc`` (not Linux) the watchdog still kills the process groups of a worker that
died, but the owner is not watched and tokens are not searched.

Each command's process group is registered with the watchdog only while the group
leader is known not to have been reaped, so that its id cannot have been recycled.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import select
import signal
import subprocess
import sys
import threading
import time

from ._subreaper import CALL_TOKEN_VAR, CALLS, killpg, proc_stat, read_proc, sweep

__all__ = ["FINISHED", "TIMED_OUT", "CANCELLED", "CALL_TOKEN_VAR", "start_command",
           "wait_then_clean_group", "killpg", "process_identity", "owner_to_watch",
           "task_cancellation", "track_workdir", "untrack_workdir"]

logger = logging.getLogger(__name__)

FINISHED, TIMED_OUT, CANCELLED = "finished", "timeout", "cancelled"

# How often a command started from a dask task checks whether the task was cancelled.
CANCEL_POLL_SECONDS = 0.25

REAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_reaper.py")


# -- starting and waiting ------------------------------------------------------------------

def start_command(argv, *, cwd, env, stdout, stderr, owner=None) -> subprocess.Popen:
    """Start ``argv`` in a new session that cannot outlive this process (module docs).

    ``env`` is the command's environment (None: this process's); the call's token is
    added to it. ``owner`` is ``(pid, start_time)`` of a process whose exit must kill
    the command too (:func:`owner_to_watch`), or None. Raises what
    :class:`subprocess.Popen` raises. The command must be waited for with
    :func:`wait_then_clean_group`.
    """
    env = dict(os.environ if env is None else env)
    with CALLS.lock:
        token = CALLS.new_token()
        env[CALL_TOKEN_VAR] = token
        # Before the command exists: if this process dies from here on, the watchdog
        # finds the command by its token.
        WATCHDOG.send("call", token, None if owner is None else list(owner))
        CALLS.enter(token)
        try:
            # No preexec_fn: subprocess then starts the command with vfork (see the
            # module docstring).
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=stdout, stderr=stderr, start_new_session=True)
        except BaseException:
            CALLS.leave(token)
            WATCHDOG.send("end", token)
            raise
        CALLS.running[proc.pid] = token
    WATCHDOG.send("group", token, proc.pid)
    return proc


def wait_then_clean_group(proc, timeout, grace, cancelled=None) -> str:
    """Wait for ``proc``; kill its process group and escaped descendants; say how it ended.

    Returns :data:`FINISHED`, :data:`TIMED_OUT` (ran past ``timeout`` seconds) or
    :data:`CANCELLED` (``cancelled()`` became true). In the last two cases the group is
    sent SIGTERM, then SIGKILL after ``grace`` seconds. In every case the group is sent
    SIGKILL at the end, which removes whatever the command left running in it, and
    the descendants that left the group are killed too (see the module docstring).

    The child is waited for *without reaping it* (pidfd / waitid WNOWAIT): while it is
    a zombie its pid, which is also the process-group id, cannot be recycled, so the
    final ``killpg`` cannot hit an unrelated group.
    """
    pgid = proc.pid
    try:
        outcome = _wait(proc, timeout, cancelled)
        if outcome != FINISHED:
            killpg(pgid, signal.SIGTERM)
            if grace > 0:
                _wait_unreaped(proc, grace)
    except BaseException:
        # KeyboardInterrupt, SIGTERM turned into an exception, an evaluator's SIGALRM
        # timeout: do not leave the command running.
        _clean(proc)
        raise
    _clean(proc)
    return outcome


def _clean(proc):
    """Kill the command's group and what escaped it; reap the command."""
    pgid = proc.pid
    token = CALLS.running.get(pgid)
    try:
        killpg(pgid, signal.SIGKILL)
        # The leader has exited once this returns: its children that outlived it are
        # this process's children now (subreaper), and the sweep can see them.
        _wait_unreaped(proc, None)
        if token is not None and CALLS.subreaper:
            info = proc_stat(pgid)  # the command, a zombie until reaped below
            sweep(token, None if info is None else info[3], exclude=(WATCHDOG.pid,))
    finally:
        with CALLS.lock:
            proc.wait()
            CALLS.leave(token, pgid)
        if token is not None:
            WATCHDOG.send("end", token)


def _wait(proc, timeout, cancelled):
    if timeout is None and cancelled is None:
        _wait_unreaped(proc, None)
        return FINISHED
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return TIMED_OUT
        step = remaining if cancelled is None else min(remaining, CANCEL_POLL_SECONDS)
        if _wait_unreaped(proc, step):
            return FINISHED
        if cancelled is not None and cancelled():
            return CANCELLED


def _wait_unreaped(proc, timeout):
    if timeout is None:
        try:
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            return True
        except (AttributeError, ChildProcessError):
            proc.wait()
            return True
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        # No pidfd (non-Linux): poll; the zombie is reaped, so the race above is
        # back, but only for the microseconds between reaping and killpg.
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        # PEP 475: poll() restarts with the remaining timeout after a signal.
        return bool(poller.poll(timeout * 1000.0))
    finally:
        os.close(fd)


# -- working directories in use -------------------------------------------------------------

def track_workdir(path, *, root, tag, key, keep, max_bytes=None):
    """Tell the watchdog that ``path`` is in use: kept as a failure if this process dies."""
    WATCHDOG.send("dir", path, root, tag, key, keep, max_bytes)


def untrack_workdir(path):
    """``path`` was removed or kept by this process."""
    WATCHDOG.send("undir", path)


# -- owners ------------------------------------------------------------------------------------

def _running_since(pid):
    """Start time of ``pid`` if it runs (not a zombie), else None."""
    info = proc_stat(pid)
    if info is None or info[0] in (b"Z", b"X"):
        return None
    return info[3]


def _machine():
    """(boot id, pid namespace): pids compare only between processes that share both."""
    boot = read_proc("/proc/sys/kernel/random/boot_id")
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    if boot is None:
        return None
    return boot.strip().decode("ascii", "replace"), namespace


def process_identity():
    """This process, as the owner of an adapter it sends away; None off Linux."""
    machine = _machine()
    start = _running_since(os.getpid())
    if machine is None or start is None:
        return None
    return (*machine, os.getpid(), start)


def owner_to_watch(identity):
    """``(pid, start_time)`` to watch here for an owner ``identity``, or None.

    None when the owner is this process, another machine or pid namespace, or has
    exited already (an adapter unpickled long after it was saved has no owner).
    """
    if not identity or len(identity) != 4:
        return None
    boot, namespace, pid, start = identity
    if _machine() != (boot, namespace) or pid == os.getpid():
        return None
    if _running_since(pid) != start:
        return None
    return int(pid), int(start)


# -- dask tasks ------------------------------------------------------------------------------

def task_cancellation():
    """A function that says whether the dask task running this thread was cancelled.

    None when this thread does not run a dask task (dask is not even imported then).
    """
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed.worker import thread_state
        key = thread_state.key
        tasks = thread_state.execution_state["worker"].state.tasks
    except Exception:  # noqa: BLE001 - not a task thread, or another dask version
        return None

    def cancelled():
        try:
            task = tasks.get(key)
            return task is None or task.state in ("cancelled", "released", "forgotten")
        except Exception:  # noqa: BLE001 - read from another thread: never fail the call
            return False

    return cancelled


# -- the watchdog ------------------------------------------------------------------------------

class _Watchdog:
    """This process's end of the pipe to its watchdog (:mod:`solvers._reaper`).

    Started on first use; what it was told is mirrored here and told again to a new
    watchdog if the first one went away. A forked child starts its own.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._reset()

    def _reset(self):
        self._fd = None
        self._proc = None
        self._pid = None
        self._calls = {}  # token -> [owner, pgid]
        self._dirs = {}
        self._failed = False

    @property
    def pid(self):
        """The watchdog's pid, or None."""
        return None if self._proc is None else self._proc.pid

    def after_fork_in_child(self):
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._lock = threading.Lock()
        self._reset()

    def send(self, tag, *args):
        with self._lock:
            if tag == "call":
                self._calls[args[0]] = [args[1], None]
            elif tag == "group":
                if args[0] in self._calls:
                    self._calls[args[0]][1] = args[1]
            elif tag == "end":
                self._calls.pop(args[0], None)
            elif tag == "dir":
                self._dirs[args[0]] = args[1:]
            elif tag == "undir":
                self._dirs.pop(args[0], None)
            # A (re)started watchdog is told the whole mirror, this message's effect
            # included.
            if self._fd is None or not self._write([tag, *args]):
                self._start()

    def _write(self, message):
        data = (json.dumps(message) + "\n").encode()
        try:
            os.write(self._fd, data)  # < PIPE_BUF: one atomic write
            return True
        except OSError:
            return False

    def _start(self):
        """Start (or restart) the watchdog and tell it the mirror; False on failure."""
        if self._failed:
            return False
        self._close()
        try:
            read_end, write_end = os.pipe()
        except OSError:
            return False
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-I", "-S", REAPER, str(os.getpid())], stdin=read_end,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except (OSError, ValueError) as exc:
            os.close(write_end)
            self._failed = True
            logger.warning("cannot start the watchdog that kills external commands when "
                           "this process dies (%s); they may outlive it", exc)
            return False
        finally:
            os.close(read_end)
        self._fd, self._pid = write_end, os.getpid()
        return self._replay()

    def _replay(self):
        for token, (owner, pgid) in self._calls.items():
            if not self._write(["call", token, owner]):
                return False
            if pgid is not None and not self._write(["group", token, pgid]):
                return False
        for path, info in self._dirs.items():
            if not self._write(["dir", path, *info]):
                return False
        return True

    def _close(self):
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        if self._proc is not None:
            try:
                self._proc.wait(1.0)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None

    def shutdown(self):
        """At exit: close the pipe; the watchdog kills what still runs, then exits."""
        with self._lock:
            if self._pid == os.getpid():
                self._close()


WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=WATCHDOG.after_fork_in_child)
atexit.register(WATCHDOG.shutdown)
