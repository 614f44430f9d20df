"""Start external commands so that none outlives the run that started it.

A command runs in a session (and process group) of its own, so that a timeout kills
it with its children and only them. Left at that, the command would survive the death
of the process that started it -- a loky or dask worker that is killed, crashes or is
restarted, a run stopped with SIGTERM -- and keep running with ppid 1. Three layers
prevent that, each for the ways a run ends that the others miss:

1. **Parent-death signal** (Linux): the command is started with
   ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, so the kernel kills it the moment the process
   that started it dies, whatever killed that process. The signal fires when the
   *thread* that forked exits; here that thread is always the one that waits for the
   command until it has ended (:func:`wait_then_clean_group`), so it cannot exit
   while the command runs unless the whole process does.
2. **A watchdog process** (POSIX), one per process that runs commands, started on
   first use (:mod:`solvers._reaper`): it is told the process group of each running
   command through a pipe; when the pipe closes (the process died) it kills those
   groups -- the command's own children included, which the parent-death signal does
   not reach -- and keeps their working directories as failures. It also watches the
   *owner* of each command, the process that sent the adapter to this worker (the one
   running the optimization, when it runs on the same machine): when the owner exits,
   its commands are killed although the worker lives on.
3. **Cancelled dask tasks**: a command started from a dask task is polled while it
   runs and killed when the task is cancelled (the run gave up on it, or its client
   went away), since dask cannot interrupt the thread that runs the task.

Elsewhere (no ``prctl``, no ``/proc``), the watchdog still kills the groups of a worker
that died; the owner is not watched.

Each command's process group is registered with the watchdog only while the group
leader is known not to have been reaped, so that its id cannot have been recycled.
"""

from __future__ import annotations

import atexit
import ctypes
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

__all__ = ["FINISHED", "TIMED_OUT", "CANCELLED", "start_command", "wait_then_clean_group",
           "killpg", "process_identity", "owner_to_watch", "task_cancellation",
           "track_workdir", "untrack_workdir"]

logger = logging.getLogger(__name__)

FINISHED, TIMED_OUT, CANCELLED = "finished", "timeout", "cancelled"

PR_SET_PDEATHSIG = 1
# How often a command started from a dask task checks whether the task was cancelled.
CANCEL_POLL_SECONDS = 0.25

REAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_reaper.py")


# -- starting and waiting ------------------------------------------------------------------

def _load_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()


class _DieWithParent:
    """``preexec_fn``: SIGKILL this child when the thread that forked it exits."""

    def __init__(self, parent_pid):
        self.parent_pid = parent_pid

    def __call__(self):
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != self.parent_pid:
            # The parent died between fork and prctl: the signal will never come.
            os.kill(os.getpid(), signal.SIGKILL)


def start_command(argv, *, cwd, env, stdout, stderr, owner=None) -> subprocess.Popen:
    """Start ``argv`` in a new session that dies with this process (see module docs).

    ``owner`` is ``(pid, start_time)`` of a process whose exit must kill the command
    too (:func:`owner_to_watch`), or None. Raises what :class:`subprocess.Popen` raises.
    """
    preexec = _DieWithParent(os.getpid()) if _PRCTL is not None else None
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=stderr, start_new_session=True, preexec_fn=preexec)
    WATCHDOG.send("group", proc.pid, None if owner is None else list(owner))
    return proc


def wait_then_clean_group(proc, timeout, grace, cancelled=None) -> str:
    """Wait for ``proc``; kill its process group; return how it ended.

    Returns :data:`FINISHED`, :data:`TIMED_OUT` (ran past ``timeout`` seconds) or
    :data:`CANCELLED` (``cancelled()`` became true). In the last two cases the group is
    sent SIGTERM, then SIGKILL after ``grace`` seconds. In every case the group is sent
    SIGKILL at the end, which removes whatever the command left running in it.

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
        killpg(pgid, signal.SIGKILL)
        WATCHDOG.send("ungroup", pgid)
        proc.wait()
        raise
    killpg(pgid, signal.SIGKILL)
    WATCHDOG.send("ungroup", pgid)
    proc.wait()
    return outcome


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


def killpg(pgid, sig):
    """``os.killpg`` that ignores a group that is gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- working directories in use -------------------------------------------------------------

def track_workdir(path, *, root, tag, key, keep):
    """Tell the watchdog that ``path`` is in use: kept as a failure if this process dies."""
    WATCHDOG.send("dir", path, root, tag, key, keep)


def untrack_workdir(path):
    """``path`` was removed or kept by this process."""
    WATCHDOG.send("undir", path)


# -- owners ------------------------------------------------------------------------------------

def _read(path):
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def _start_time(pid):
    data = _read(f"/proc/{pid}/stat")
    if data is None:
        return None
    fields = data.rpartition(b")")[2].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _machine():
    """(boot id, pid namespace): pids compare only between processes that share both."""
    boot = _read("/proc/sys/kernel/random/boot_id")
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
    start = _start_time(os.getpid())
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
    if _start_time(pid) != start:
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
        self._groups = {}
        self._dirs = {}
        self._failed = False

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
            if tag == "group":
                self._groups[args[0]] = args[1]
            elif tag == "ungroup":
                self._groups.pop(args[0], None)
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
        for pgid, owner in self._groups.items():
            if not self._write(["group", pgid, owner]):
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
