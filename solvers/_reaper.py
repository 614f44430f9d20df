"""The watchdog process: kills what a process started when that process goes away.

Run as ``python -I -S _reaper.py PID`` by :mod:`solvers._process_guard`, one per
process that runs external commands (PID: the main process, a loky or dask worker), in
a session of its own so that killing the worker's process group does not take it too.
It reads JSON lines on stdin, whose other end only that process holds:

* ``["group", pgid, owner]`` / ``["ungroup", pgid]``: a command's process group runs /
  is over. ``owner`` is ``null`` or ``[pid, start_time]`` of the process that sent the
  adapter to this worker (the process running the optimization);
* ``["dir", path, root, tag, key, keep]`` / ``["undir", path]``: a call's working
  directory is in use / was dealt with.

When stdin ends -- the process died, however: SIGKILL, a segfault, an out-of-memory
kill, a normal exit -- every tracked process group is sent SIGKILL and every working
directory still in use is kept as a failure (:func:`solvers._workdirs.keep_failure`).
When the owner of a group exits, the group is sent SIGKILL at once (the worker itself
may live on, blocked waiting for the command). Owners are watched with a pidfd where
the kernel has one (Linux >= 5.3), else by reading ``/proc`` twice a second.

Standard library only, and nothing imported at start beyond what ``-S`` loads: this
process starts once per worker and should cost a few milliseconds.
"""

import json
import os
import select
import signal
import sys

_POLL_MS = 500


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


class Reaper:
    def __init__(self, parent):
        self.parent = parent
        self.groups = {}  # pgid -> owner (pid, start) or None
        self.dirs = {}  # path -> (root, tag, key, keep)
        self.owners = {}  # owner -> pidfd, or None where owners are polled
        self.by_fd = {}  # pidfd -> owner
        self.dead = set()  # owners seen to exit
        self.poller = select.poll()
        self.poller.register(0, select.POLLIN)

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
        for pgid, own in self.groups.items():
            if own == owner:
                _killpg(pgid)

    # -- messages -------------------------------------------------------------------------

    def apply(self, message):
        tag = message[0]
        if tag == "group":
            pgid, owner = int(message[1]), message[2]
            owner = None if owner is None else (int(owner[0]), int(owner[1]))
            self.groups[pgid] = owner
            if owner is not None:
                self._watch(owner)
                if owner in self.dead:
                    _killpg(pgid)
        elif tag == "ungroup":
            owner = self.groups.pop(int(message[1]), None)
            if owner is not None and owner not in self.groups.values():
                self._unwatch(owner)
        elif tag == "dir":
            path, root, tag_, key, keep = message[1:6]
            self.dirs[path] = (root, tag_, key, int(keep))
        elif tag == "undir":
            self.dirs.pop(message[1], None)

    def finish(self):
        """The process that started the commands is gone: kill them, keep their dirs."""
        for pgid in self.groups:
            _killpg(pgid)
        if not self.dirs:
            return
        workdirs = _load_workdirs()
        note = (f"the process (pid {self.parent}) that ran this call died while its "
                "command ran; the command's process group was killed")
        for path, (root, tag, key, keep) in self.dirs.items():
            try:
                workdirs.keep_failure(path, root=root, tag=tag, key=key, keep=keep, note=note)
            except OSError:
                pass

    def run(self):
        buffer = b""
        while True:
            timeout = _POLL_MS if any(fd is None for fd in self.owners.values()) else None
            for fd, _ in self.poller.poll(timeout):
                if fd == 0:
                    chunk = os.read(0, 65536)
                    if not chunk:
                        self.finish()
                        return
                    *lines, buffer = (buffer + chunk).split(b"\n")
                    for line in lines:
                        if line.strip():
                            self.apply(json.loads(line))
                elif fd in self.by_fd:
                    self._owner_died(self.by_fd[fd])
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
