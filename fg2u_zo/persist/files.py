"""Writing files that other processes and people may also touch: atomically, through a
fresh temporary file, never following a link planted at a fixed name.

Every file the package replaces (a checkpoint, a journal rewritten at a checkpoint) is
written to a new temporary file in the same folder, created with ``O_EXCL`` (so a
symlink or file already there at that name is never opened), fsynced, and moved over
the target with :func:`os.replace`, which replaces a link at the target rather than
writing through it. A process killed at any instant leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

__all__ = ["atomic_write", "open_append", "fsync_directory"]


def atomic_write(path, data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` by ``data`` atomically (see the module docstring)."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_directory(directory)


def open_append(path) -> int:
    """A file descriptor appending to ``path``, which must be a regular file and not a
    symbolic link (``O_NOFOLLOW``)."""
    flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
    return os.open(os.fspath(path), flags)


def fsync_directory(directory) -> None:
    """Make a rename in ``directory`` durable (not possible, nor needed, everywhere)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
