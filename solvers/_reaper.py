"""The watchdog process: kills what a process started when that process goes away.

Run as ``python -I -S _reaper.py PID`` by :mod:`solvers._process_guard`, one per
process that runs external commands (PID: the main process, a loky or dask worker), in
a session of its own so that killing the worker's process group does not take it too.
It reads JSON lines on stdin, whose other end only that process holds:

* ``["call", token, owner]`` / ``["group", token, pgid]`` / ``["end", token]``: a call
  is about to start its command, whose environment carries ``token``
  (``FG2U_ZO_CALL``) / the command runs as process group ``pgid`` / the call is over.
  ``owner`` is ``null`` or ``[pid, start_time]`` of the process that sent the adapter
  to this worker (the process running the optimization);
* ``["dir", path, root, tag, key, keep, max_bytes]`` / ``["undir", path]``: a call's
  working directory is in use / was dealt with.

When stdin ends -- the process died, however: SIGKILL, a segfault, an out-of-memory
kill, a normal exit -- every tracked process group is sent SIGKILL, then every process
whose environment carries the token of a call still in progress (found in ``/proc``:
the descendants that left the group, and a command started just before the process
died), and every working directory still in use is kept as a failure
(:func:`solvers._workdirs.keep_failure`). When the owner of a call exits, its group
and its token's processes are killed at once (the worker itself may live on, blocked
waiting for the command). Owners are watched with a pidfd where the kernel has one
(Linux >= 5.3), else by reading ``/proc`` twice a second.

Standard library only, and nothing imported at start beyond what ``-S`` loads: this
process starts once per worker and should cost a few milliseconds.
"""

import json
import os
import select
import signal
import sys
import time

_POLL_MS = 500
# How often messages are read: every 50 ms while they come, up to every 200 ms when
# none came. A pipe holds 64 KiB, hundreds of calls' messages.
_DRAIN_MS = (50, 200)
TOKEN_KEY = b"FG2U_ZO_CALL="
# Searches of /proc for a token's processes after killing the ones found: a process
# may have forked while it was being killed.
_SEARCH_ROUNDS = 5


def start_time(pid):
    """Start time of ``pid`` (clock ticks since boot), or None if it is not running."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data.rpartition(b")")[2].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _killpg(pgid):
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _token_holders(tokens):
    """``(pid, pgid)`` of the running processes whose environment carries a token."""
    wanted = {TOKEN_KEY + t.encode() for t in tokens}
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    me = os.getpid()
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                environ = fh.read()
        except OSError:
            continue
        if TOKEN_KEY not in environ or not wanted.intersection(environ.split(b"\0")):
            continue
        try:
            found.append((int(name), os.getpgid(int(name))))
        except OSError:
            continue
    return found


def kill_tokens(tokens):
    """SIGKILL every process that carries one of ``tokens``, with its process group."""
    if not tokens:
        return
    for _ in range(_SEARCH_ROUNDS):
        holders = _token_holders(tokens)
        if not holders:
            return
        for pid, pgid in holders:
            _killpg(pgid)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)


class Reaper:
    def __init__(self, parent):
        self.parent = parent
        self.calls = {}  # token -> [owner (pid, start) or None, pgid or None]
        self.dirs = {}  # path -> (root, tag, key, keep, max_bytes)
        self.owners = {}  # owner -> pidfd, or None where owners are polled
        self.by_fd = {}  # pidfd -> owner
        self.dead = set()  # owners seen to exit
        self.poller = select.poll()
        # Not POLLIN: a pipe write wakes its reader synchronously, which on a busy
        # machine preempts the writer for a fraction of a millisecond -- five times per
        # call of a command. Messages are read every _DRAIN_MS instead; the end of the
        # pipe (POLLHUP, always reported) still wakes this process at once.
        self.poller.register(0, 0)
        os.set_blocking(0, False)

    # -- owners ---------------------------------------------------------------------------

    def _watch(self, owner):
        if owner in self.owners or owner in self.dead:
            return
        pid, start = owner
        fd = None
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            fd = None
        if start_time(pid) != start:  # exited already, or the pid was reused
            if fd is not None:
                os.close(fd)
            self._owner_died(owner)
            return
        self.owners[owner] = fd
        if fd is not None:
            self.by_fd[fd] = owner
            self.poller.register(fd, select.POLLIN)

    def _unwatch(self, owner):
        fd = self.owners.pop(owner, None)
        if fd is not None:
            self.poller.unregister(fd)
            del self.by_fd[fd]
            os.close(fd)

    def _owner_died(self, owner):
        self._unwatch(owner)
        self.dead.add(owner)
        tokens = [t for t, (own, _) in self.calls.items() if own == owner]
        self._kill(tokens)

    def _kill(self, tokens):
        for token in tokens:
            pgid = self.calls[token][1]
            if pgid is not None:
                _killpg(pgid)
        kill_tokens(tokens)

    # -- messages -------------------------------------------------------------------------

    def apply(self, message):
        tag = message[0]
        if tag == "call":
            token, owner = message[1], message[2]
            owner = None if owner is None else (int(owner[0]), int(owner[1]))
            self.calls[token] = [owner, None]
            if owner is not None:
                self._watch(owner)
        elif tag == "group":
            token, pgid = message[1], int(message[2])
            if token in self.calls:
                self.calls[token][1] = pgid
                if self.calls[token][0] in self.dead:
                    self._kill([token])
        elif tag == "end":
            entry = self.calls.pop(message[1], None)
            owner = None if entry is None else entry[0]
            if owner is not None and all(own != owner for own, _ in self.calls.values()):
                self._unwatch(owner)
        elif tag == "dir":
            path, root, tag_, key, keep = message[1:6]
            max_bytes = message[6] if len(message) > 6 else None
            self.dirs[path] = (root, tag_, key, int(keep), max_bytes)
        elif tag == "undir":
            self.dirs.pop(message[1], None)

    def finish(self):
        """The process that started the commands is gone: kill them, keep their dirs."""
        self._kill(list(self.calls))
        if not self.dirs:
            return
        workdirs = _load_workdirs()
        note = (f"the process (pid {self.parent}) that ran this call died while its "
                "command ran; the command's process group was killed")
        for path, (root, tag, key, keep, max_bytes) in self.dirs.items():
            try:
                workdirs.keep_failure(path, root=root, tag=tag, key=key, keep=keep,
                                      note=note, max_bytes=max_bytes)
            except OSError:
                pass

    def run(self):
        buffer = b""
        drain_ms = _DRAIN_MS[0]
        while True:
            timeout = drain_ms
            if any(fd is None for fd in self.owners.values()):
                timeout = min(timeout, _POLL_MS)
            for fd, _ in self.poller.poll(timeout):
                if fd in self.by_fd:
                    self._owner_died(self.by_fd[fd])
            # Read what came; at a hang-up (fd 0 reported), up to the end of the pipe,
            # since the last messages count too.
            got = hangup = False
            while True:
                try:
                    chunk = os.read(0, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    hangup = True
                    break
                got = True
                *lines, buffer = (buffer + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        self.apply(json.loads(line))
            if hangup:
                self.finish()
                return
            # Busy: read often, so the pipe never fills and blocks its writer; idle:
            # wake up rarely.
            drain_ms = _DRAIN_MS[0] if got else min(2 * drain_ms, _DRAIN_MS[1])
            for owner, fd in list(self.owners.items()):
                if fd is None and start_time(owner[0]) != owner[1]:
                    self._owner_died(owner)


def _load_workdirs():
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_workdirs.py")
    spec = importlib.util.spec_from_file_location("fg2u_reaper_workdirs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The pid comes from the command line: the parent may be gone before we ask.
    Reaper(int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()).run()


if __name__ == "__main__":
    sys.exit(main())
