"""Start external commands so that none outlives the run that started it.

A command runs in a session (and process group) of its own, so that a timeout kills
it with its children and only them. Left at that, the command would survive the death
of the process that started it -- a loky or dask worker that is killed, crashes or is
restarted, a run stopped with SIGTERM -- and keep running with ppid 1; and a
descendant that starts a session of its own (``setsid()``: a daemon, the helper of an
MPI launcher) would escape the kill of the group. Four layers prevent that, each for
the ways a run ends that the others miss:

1. **The call token.** Each command gets a token of its call in its environment
   (``FG2U_ZO_CALL``), which every descendant inherits unless it replaces its
   environment: whatever session or group a descendant moves to, the token says
   which call it belongs to.
2. **Child subreaper** (Linux): while one of its commands runs, the process that
   started it is a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), so that a
   descendant whose parent exits -- a grandchild that called ``setsid()`` included --
   is re-parented to it instead of to init. When the command ends, its process group
   is killed, and then every adopted descendant that carries the call's token is
   killed with its own process group, until none is left; adopted descendants that
   have exited are reaped, so that none stays a zombie of the worker.
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

What remains possible: a descendant that both leaves the process group and replaces
its environment (or is setuid, so that its environment cannot be read) is not
recognized, and one that double-forks after the command and its group were killed is
raced; processes that ran as another user, or in another pid namespace, cannot be
killed. On Linux without ``PR_SET_CHILD_SUBREAPER`` (kernels before 3.4, or a seccomp
filter that forbids it), and elsewhere, the escaped descendants of a worker that keeps
running are not found until the worker exits. Without ``/proc`` (not Linux) the
watchdog still kills the process groups of a worker that died; the owner is not
watched and tokens are not searched.

Each command's process group is registered with the watchdog only while the group
leader is known not to have been reaped, so that its id cannot have been recycled.
"""

from __future__ import annotations

import atexit
import ctypes
import itertools
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

__all__ = ["FINISHED", "TIMED_OUT", "CANCELLED", "CALL_TOKEN_VAR", "start_command",
           "wait_then_clean_group", "killpg", "process_identity", "owner_to_watch",
           "task_cancellation", "track_workdir", "untrack_workdir"]

logger = logging.getLogger(__name__)

FINISHED, TIMED_OUT, CANCELLED = "finished", "timeout", "cancelled"

#: The environment variable that carries a call's token to the command and its
#: descendants.
CALL_TOKEN_VAR = "FG2U_ZO_CALL"

PR_SET_CHILD_SUBREAPER = 36
# How often a command started from a dask task checks whether the task was cancelled.
CANCEL_POLL_SECONDS = 0.25
# The longest a call waits for the descendants it killed to exit (processes in
# uninterruptible sleep can take that long; anything longer is left to the watchdog).
SWEEP_SECONDS = 10.0

REAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_reaper.py")


# -- the child subreaper ---------------------------------------------------------------------

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


class _Calls:
    """The calls of this process whose commands run, and the subreaper flag.

    ``lock`` is held while a command is started and registered, and while adopted
    children are examined, so that a command that exits at once is never taken for
    an adopted child and reaped behind its thread's back.
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.running = {}  # pid of a command not yet reaped -> its call's token
        self.tokens = set()  # tokens of the calls whose commands run
        self.count = itertools.count()
        self.subreaper = None  # None: not tried yet; else whether prctl works

    def new_token(self):
        return f"{os.getpid()}-{next(self.count)}-{os.urandom(4).hex()}"

    def enter(self, token):
        """A call starts (lock held): turn the subreaper flag on for its command."""
        if not self.tokens and _PRCTL is not None and self.subreaper is not False:
            self.subreaper = _PRCTL(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        self.tokens.add(token)

    def leave(self, token, pid=None):
        """A call is over (lock held); the flag goes off with the last one, so that a
        process running no command adopts nothing."""
        self.tokens.discard(token)
        if pid is not None:
            self.running.pop(pid, None)
        if not self.tokens and self.subreaper:
            _PRCTL(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)

    def after_fork_in_child(self):
        self.__init__()


_CALLS = _Calls()


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
    with _CALLS.lock:
        token = _CALLS.new_token()
        env[CALL_TOKEN_VAR] = token
        # Before the command exists: if this process dies from here on, the watchdog
        # finds the command by its token.
        WATCHDOG.send("call", token, None if owner is None else list(owner))
        _CALLS.enter(token)
        try:
            # No preexec_fn: subprocess then starts the command with vfork (see the
            # module docstring).
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                    stdout=stdout, stderr=stderr, start_new_session=True)
        except BaseException:
            _CALLS.leave(token)
            WATCHDOG.send("end", token)
            raise
        _CALLS.running[proc.pid] = token
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
    token = _CALLS.running.get(pgid)
    try:
        killpg(pgid, signal.SIGKILL)
        # The leader has exited once this returns: its children that outlived it are
        # this process's children now (subreaper), and the sweep can see them.
        _wait_unreaped(proc, None)
        if token is not None and _CALLS.subreaper:
            info = _stat(pgid)  # the command, a zombie until reaped below
            _sweep(token, None if info is None else info[3])
    finally:
        with _CALLS.lock:
            proc.wait()
            _CALLS.leave(token, pgid)
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


def killpg(pgid, sig):
    """``os.killpg`` that ignores a group that is gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- the sweep of adopted descendants ---------------------------------------------------------

def _sweep(token, since):
    """Kill the adopted descendants of call ``token`` until none is left; reap them.

    ``since``: start time of the call's command. An adopted child that has exited
    (a zombie) is reaped when it descends from a command -- it is not in this
    process's session, since every command starts a session of its own -- and started
    after ``since``; a zombie cannot say which call it belonged to. Descendants of
    calls still running in other threads are left to them.

    A killed child is waited for until it is reaped, and every reap is followed by
    another look at the children: a process's children come to this one when it
    exits, and one that is exiting no longer shows its environment.
    """
    me, my_session = os.getpid(), os.getsid(0)
    prefix = f"{me}-"
    deadline = time.monotonic() + SWEEP_SECONDS
    delay = 0.001
    killed = set()
    while True:
        again = False
        with _CALLS.lock:
            others = _CALLS.tokens - {token}
            for pid in _children(me):
                if pid in _CALLS.running or pid == WATCHDOG.pid:
                    continue
                info = _stat(pid)
                if info is None or info[2] == my_session:
                    continue  # gone, or not from a command: not ours to touch
                state, pgid, _, start = info
                if state in (b"Z", b"X"):
                    if pid in killed or since is None or start >= since:
                        _reap(pid)
                        killed.discard(pid)
                        again = True
                    continue
                if pid in killed:
                    again = True  # still exiting
                    continue
                owner = _token_of(pid)
                if owner is None or not owner.startswith(prefix) or owner in others:
                    continue
                # Its own group first (its children that stayed with it), then itself.
                killpg(pgid, signal.SIGKILL)
                _kill(pid)
                killed.add(pid)
                again = True
        if not again or time.monotonic() > deadline:
            return
        # The killed ones take a moment to exit; their children, re-parented here on
        # their exit, are seen by the next pass.
        time.sleep(delay)
        delay = min(2 * delay, 0.05)


def _children(pid):
    """Pids of this process's children, adopted ones included."""
    # Adopted children go to the first live thread, the main one unless it has
    # exited; read every thread only then.
    try:
        with open(f"/proc/{pid}/task/{pid}/children", "rb") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        pass
    found = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as fh:
                found += [int(p) for p in fh.read().split()]
        except OSError:
            continue
    return found


def _stat(pid):
    """``(state, pgid, session, start_time)`` of ``pid``, or None if it is gone."""
    data = _read(f"/proc/{pid}/stat")
    if data is None:
        return None
    fields = data.rpartition(b")")[2].split()
    if len(fields) < 20:
        return None
    return fields[0], int(fields[2]), int(fields[3]), int(fields[19])


def _token_of(pid):
    data = _read(f"/proc/{pid}/environ")
    if not data:
        return None
    key = CALL_TOKEN_VAR.encode() + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(key):
            return entry[len(key):].decode("ascii", "replace")
    return None


def _kill(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _reap(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# -- working directories in use -------------------------------------------------------------

def track_workdir(path, *, root, tag, key, keep, max_bytes=None):
    """Tell the watchdog that ``path`` is in use: kept as a failure if this process dies."""
    WATCHDOG.send("dir", path, root, tag, key, keep, max_bytes)


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


def _running_since(pid):
    """Start time of ``pid`` if it runs (not a zombie), else None."""
    info = _stat(pid)
    if info is None or info[0] in (b"Z", b"X"):
        return None
    return info[3]


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
os.register_at_fork(after_in_child=_CALLS.after_fork_in_child)
atexit.register(WATCHDOG.shutdown)
