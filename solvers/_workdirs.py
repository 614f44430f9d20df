"""Working directories of an external command: one per call, failures kept but bounded.

Every call of :class:`solvers.Subprocess` runs in a fresh directory under a root
(``workdir_root``, else the system's temporary directory). Its name says which adapter
and which point it belongs to::

    fg2u-<tag>-<key>-<random>     a call in progress (or left by a process that died)
    fg2u-<tag>-failed-<key>       the kept directory of the last failed call at <key>

``tag`` identifies one adapter (it travels with the adapter when it is pickled to
workers) and ``key`` one point (a hash of ``phi`` and the ``seed``). The evaluator may
retry a failed point, in the same process or in another one, so the adapter cannot
know when a failure is final; what it can do, through the file system shared by every
process that runs it, is:

* on a success at ``key``, remove the failed directory of an earlier attempt at
  ``key`` (one ``lstat`` when there is none: the common case costs nothing);
* on a failure at ``key``, replace the directory of an earlier failed attempt at
  ``key``, write a note (``fg2u-failure.txt``: the error message) into the directory,
  and remove all but the ``keep`` most recent failed directories of the adapter.

So after a run, what is left are the directories of the most recent failures that no
later attempt repaired, at most ``keep`` of them per adapter, and at most ``max_bytes``
bytes in all: a kept directory's logs of the command's stdout and stderr are cut to
their last :data:`LOG_TAIL_BYTES` (a header line says how much was cut), older
directories go first when the kept ones hold more than ``max_bytes``, and when the
most recent one alone does, its largest files (other than the logs and the note) are
removed and listed in its note.

This module uses the standard library only: the watchdog process
(:mod:`solvers._reaper`) imports it to keep the directory of a call whose process died.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

__all__ = ["PREFIX", "FAILURE_NOTE", "STDOUT_LOG", "STDERR_LOG", "LOG_TAIL_BYTES",
           "new_workdir", "failed_workdir", "keep_failure", "forget_failure",
           "prune_failures"]

PREFIX = "fg2u-"
FAILURE_NOTE = "fg2u-failure.txt"
STDOUT_LOG = "fg2u-stdout.log"
STDERR_LOG = "fg2u-stderr.log"
#: A kept directory's logs hold at most this much of the end of what the command
#: printed: its last messages are what explains a failure.
LOG_TAIL_BYTES = 2**20


def new_workdir(root: str, tag: str, key: str) -> str:
    """Create the working directory of one call at point ``key``; return its path."""
    return tempfile.mkdtemp(prefix=f"{PREFIX}{tag}-{key}-", dir=root)


def failed_workdir(root: str, tag: str, key: str) -> str:
    """Where the kept directory of the last failed call at ``key`` lives."""
    return os.path.join(root, f"{PREFIX}{tag}-failed-{key}")


def keep_failure(workdir: str, *, root: str, tag: str, key: str, keep: int,
                 note: str, max_bytes: int | None = None) -> str | None:
    """Keep the directory of a failed call; return its new path, or None if removed.

    The directory gets ``note`` in :data:`FAILURE_NOTE`, its logs are cut to their
    tails, and it is renamed to :func:`failed_workdir` (replacing an earlier failed
    attempt at the same point); then only the ``keep`` most recent failed directories
    of ``tag`` are left, holding at most ``max_bytes`` bytes in all (None: no bound).
    """
    if keep <= 0:
        shutil.rmtree(workdir, ignore_errors=True)
        prune_failures(root, tag, 0)
        return None
    cap = LOG_TAIL_BYTES if max_bytes is None else max(1, min(LOG_TAIL_BYTES,
                                                              max_bytes // 4))
    for name in (STDOUT_LOG, STDERR_LOG):
        _cut_to_tail(os.path.join(workdir, name), cap)
    try:
        with open(os.path.join(workdir, FAILURE_NOTE), "w", encoding="utf-8",
                  errors="replace") as fh:
            fh.write(note.rstrip() + "\n")
    except OSError:
        return workdir if os.path.isdir(workdir) else None
    final = failed_workdir(root, tag, key)
    if os.path.lexists(final):
        shutil.rmtree(final, ignore_errors=True)
    try:
        os.rename(workdir, final)
    except OSError:
        # Another process just kept a failure at the same point: keep ours under its
        # own name; it carries the note, so pruning counts it all the same.
        final = workdir
    prune_failures(root, tag, keep, max_bytes)
    return final if os.path.isdir(final) else None


def _cut_to_tail(path: str, cap: int) -> None:
    """Keep the last ``cap`` bytes of the file at ``path``, after a header line."""
    try:
        with open(path, "r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size <= cap:
                return
            fh.seek(size - cap)
            tail = fh.read(cap)
            fh.seek(0)
            fh.write(f"[fg2u-zo: the first {size - cap} of {size} bytes of this log were "
                     f"cut; its last {cap} bytes follow]\n".encode())
            fh.write(tail)
            fh.truncate()
    except OSError:
        pass


def _tree_bytes(path: str) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def _trim(path: str, max_bytes: int) -> int:
    """Remove the largest files of a kept directory until it holds ``max_bytes``.

    The note and the logs stay; what was removed is added to the note. Returns the
    bytes left.
    """
    spared = {FAILURE_NOTE, STDOUT_LOG, STDERR_LOG}
    files = []
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            full = os.path.join(folder, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            total += st.st_size
            if not (folder == path and name in spared):
                files.append((st.st_size, full))
    removed = []
    for size, full in sorted(files, reverse=True):
        if total <= max_bytes:
            break
        try:
            os.unlink(full)
        except OSError:
            continue
        total -= size
        removed.append(f"{os.path.relpath(full, path)} ({size} bytes)")
    if removed:
        try:
            with open(os.path.join(path, FAILURE_NOTE), "a", encoding="utf-8",
                      errors="replace") as fh:
                fh.write(f"removed to keep this directory under {max_bytes} bytes: "
                         + ", ".join(removed) + "\n")
        except OSError:
            pass
    return total


def forget_failure(root: str, tag: str, key: str) -> None:
    """A call at ``key`` succeeded: remove the directory of an earlier failed attempt."""
    path = failed_workdir(root, tag, key)
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


def prune_failures(root: str, tag: str, keep: int, max_bytes: int | None = None) -> None:
    """Leave the ``keep`` most recent failed directories of adapter ``tag``, holding
    at most ``max_bytes`` bytes in all (None: no bound; see the module docstring)."""
    start = f"{PREFIX}{tag}-"
    kept = []
    try:
        entries = list(os.scandir(root))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(start):
            continue
        try:
            stamp = os.stat(os.path.join(entry.path, FAILURE_NOTE)).st_mtime_ns
        except OSError:
            continue  # a call in progress, or not a directory of ours
        kept.append((stamp, entry.name, entry.path))
    kept.sort(reverse=True)
    for _, _, path in kept[max(keep, 0):]:
        shutil.rmtree(path, ignore_errors=True)
    if max_bytes is None:
        return
    total, full = 0, False
    for i, (_, _, path) in enumerate(kept[:max(keep, 0)]):
        size = 0 if full else _tree_bytes(path)
        if i == 0 and size > max_bytes:
            size = _trim(path, max_bytes)
        if full or (i > 0 and total + size > max_bytes):
            full = True  # this one and every older one go
            shutil.rmtree(path, ignore_errors=True)
            continue
        total += size
