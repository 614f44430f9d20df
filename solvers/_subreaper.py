"""The descendants of a command that leave its process group come back, and are killed.

A command runs in a session of its own (:mod:`solvers._process_guard`), so killing its
process group kills its children -- but not a descendant that starts a session of its
own (``setsid()``: a daemon, the helper of an MPI launcher). Two things find those:

* **the call token**: each command gets a token of its call in its environment
  (:data:`CALL_TOKEN_VAR`), which every descendant inherits unless it replaces its
  environment; whatever session a descendant moves to, the token says which call it
  belongs to;
* **the child subreaper** (Linux): while one of its commands runs, the process that
  started it is a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), so that a
  descendant whose parent exits is re-parented to it instead of to init. When a call's
  command has ended and its group was killed, :func:`sweep` kills every adopted
  descendant that carries the call's token, with its process group, until none is
  left, and reaps the adopted descendants that exited, so that none stays a zombie of
  the worker.

The flag is on only while a command of this process runs (:class:`Calls` counts
them): a process that runs no command adopts nothing.

What remains possible: a descendant that both leaves the group and replaces its
environment (or is setuid, so that its environment cannot be read) is not recognized;
one that double-forks while its call's sweep runs may be raced; without
``PR_SET_CHILD_SUBREAPER`` (not Linux, kernels before 3.4, a seccomp filter that
forbids it) nothing is adopted, and escaped descendants are found only by the
watchdog, when the worker dies (:mod:`solvers._reaper`).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import sys
import threading
import time

__all__ = ["CALL_TOKEN_VAR", "CALLS", "Calls", "sweep", "proc_stat", "read_proc", "killpg"]

#: The environment variable that carries a call's token to the command and its
#: descendants.
CALL_TOKEN_VAR = "FG2U_ZO_CALL"

PR_SET_CHILD_SUBREAPER = 36
# The longest a call waits for the descendants it killed to exit (processes in
# uninterruptible sleep can take that long; anything longer is left to the watchdog).
SWEEP_SECONDS = 10.0


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


class Calls:
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
        """A call is over (lock held); the flag goes off with the last one."""
        self.tokens.discard(token)
        if pid is not None:
            self.running.pop(pid, None)
        if not self.tokens and self.subreaper:
            _PRCTL(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)

    def after_fork_in_child(self):
        self.__init__()


#: The calls of this process (a forked child starts with none).
CALLS = Calls()
os.register_at_fork(after_in_child=CALLS.after_fork_in_child)


def sweep(token, since, exclude=()):
    """Kill the adopted descendants of call ``token`` until none is left; reap them.

    ``since``: start time of the call's command. An adopted child that has exited
    (a zombie) is reaped when it descends from a command -- it is not in this
    process's session, since every command starts a session of its own -- and started
    after ``since``; a zombie cannot say which call it belonged to. Descendants of
    calls still running in other threads are left to them, and so are the pids in
    ``exclude`` (the watchdog).

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
        with CALLS.lock:
            others = CALLS.tokens - {token}
            for pid in _children(me):
                if pid in CALLS.running or pid in exclude:
                    continue
                info = proc_stat(pid)
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
    data = read_proc(f"/proc/{pid}/task/{pid}/children")
    if data is not None:
        return [int(p) for p in data.split()]
    found = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        data = read_proc(f"/proc/{pid}/task/{tid}/children")
        if data is not None:
            found += [int(p) for p in data.split()]
    return found


def read_proc(path):
    """The bytes of a ``/proc`` file, or None when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError:
        return None


def proc_stat(pid):
    """``(state, pgid, session, start_time)`` of ``pid``, or None if it is gone."""
    data = read_proc(f"/proc/{pid}/stat")
    if data is None:
        return None
    fields = data.rpartition(b")")[2].split()
    if len(fields) < 20:
        return None
    return fields[0], int(fields[2]), int(fields[3]), int(fields[19])


def _token_of(pid):
    data = read_proc(f"/proc/{pid}/environ")
    if not data:
        return None
    key = CALL_TOKEN_VAR.encode() + b"="
    for entry in data.split(b"\0"):
        if entry.startswith(key):
            return entry[len(key):].decode("ascii", "replace")
    return None


def killpg(pgid, sig):
    """``os.killpg`` that ignores a group that is gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


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
