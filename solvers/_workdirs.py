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
later attempt repaired, at most ``keep`` of them per adapter.

This module uses the standard library only: the watchdog process
(:mod:`solvers._reaper`) imports it to keep the directory of a call whose process died.
"""

from __future__ import annotations

import os
import shutil
import tempfile

__all__ = ["PREFIX", "FAILURE_NOTE", "new_workdir", "failed_workdir", "keep_failure",
           "forget_failure", "prune_failures"]

PREFIX = "fg2u-"
FAILURE_NOTE = "fg2u-failure.txt"


def new_workdir(root: str, tag: str, key: str) -> str:
    """Create the working directory of one call at point ``key``; return its path."""
    return tempfile.mkdtemp(prefix=f"{PREFIX}{tag}-{key}-", dir=root)


def failed_workdir(root: str, tag: str, key: str) -> str:
    """Where the kept directory of the last failed call at ``key`` lives."""
    return os.path.join(root, f"{PREFIX}{tag}-failed-{key}")


def keep_failure(workdir: str, *, root: str, tag: str, key: str, keep: int,
                 note: str) -> str | None:
    """Keep the directory of a failed call; return its new path, or None if removed.

    The directory gets ``note`` in :data:`FAILURE_NOTE` and is renamed to
    :func:`failed_workdir` (replacing an earlier failed attempt at the same point);
    then only the ``keep`` most recent failed directories of ``tag`` are left.
    """
    if keep <= 0:
        shutil.rmtree(workdir, ignore_errors=True)
        prune_failures(root, tag, 0)
        return None
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
    prune_failures(root, tag, keep)
    return final if os.path.isdir(final) else None


def forget_failure(root: str, tag: str, key: str) -> None:
    """A call at ``key`` succeeded: remove the directory of an earlier failed attempt."""
    path = failed_workdir(root, tag, key)
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)


def prune_failures(root: str, tag: str, keep: int) -> None:
    """Remove all but the ``keep`` most recent failed directories of adapter ``tag``."""
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
