"""A journal of finished solves, so that a resumed run solves nothing twice.

A run with a checkpoint keeps, next to it, an append-only file of every solve that
finished since the checkpoint was written: the point's exact bytes, the ``seed`` and
the digest of the ``warm_start`` the solver was passed, the output's exact bytes, the
solve's seconds and attempts, and a *tag* saying whose solve it was (a local run and
its step, or a stage of the run such as a multi-start's screening). A run killed in the
middle of a step resumes at the start of that step; its solves are then looked up here
before they are sent anywhere, and a finished one is answered from the file, bit for
bit what the solver returned, at no solver cost. Two solves are the same when the point
has the same bytes and the solver is passed the same ``seed`` and ``warm_start``.

What replay assumes: the inner solver computes the same function as when the record
was written. The journal's header holds a fingerprint of the run's solvers (for the
adapters of :mod:`solvers`, their configuration: command, template text, digests of
staged files; for a Python function, a digest of its code, or its ``version``
attribute; see :func:`fg2u_zo.evaluation.fingerprint.solver_fingerprint`). A journal
whose fingerprint differs from the resumed run's is not replayed, and a warning says
which solver changed. A change the fingerprint cannot see (a file the solver reads
that is not staged by the adapter, a library upgrade) is not detected: delete
``<checkpoint>.journal`` to solve everything again.

The journal belongs to one checkpoint: its header holds the checkpoint's digest. A
journal whose header names another checkpoint is ignored and started anew. Each time
the run writes a checkpoint it rewrites the journal (atomically) with the records the
run may still need: those of steps not yet committed (:meth:`EvaluationJournal.retain`),
whether the run goes on, was stopped by a signal or by an error; it removes the journal
when the run finishes.

File format (version 2)
-----------------------
``MAGIC``, then frames. A frame is ``<u8 length><u4 crc32 of the payload>`` followed
by the payload. The first frame's payload is the header, JSON: ``{"format":
FORMAT_NAME, "version": 2, "position": {...}, "fingerprint": {...}}``. Every later
frame is one solve: ``<u4 n>``, ``n`` bytes of JSON (``seed``, ``warm_start``, ``tag``,
``point`` and ``theta`` as ``{"dtype", "shape"}``, ``solver_time``, ``attempts``), the
point's raw bytes, then the output's raw bytes. No pickles: arrays are raw bytes
described by JSON, read back with :func:`numpy.frombuffer`; a record whose point or
output is not float64 (the only dtype the run writes) is corrupt and ignored.

Each frame is written with one unbuffered ``write``: a process killed at any instant
(SIGKILL included) loses no solve that had finished. A torn last frame (shorter than
its length) is ignored and cut off before the next append; a frame whose checksum
does not match is ignored. The file is not fsynced: after a power cut, records may be
missing (solved again), never wrong.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from ..errors import FG2UValueError
from ..evaluation.requests import Replayed
from .files import atomic_write, open_append

__all__ = ["EvaluationJournal", "journal_path", "FORMAT_NAME", "FORMAT_VERSION", "MAGIC"]

logger = logging.getLogger(__name__)

FORMAT_NAME = "fg2u-zo evaluation journal"
FORMAT_VERSION = 2
MAGIC = b"fg2u-zo journal\n"
_FRAME = struct.Struct("<QI")
_META = struct.Struct("<I")
# A frame longer than this is taken for a corrupted length field, not a record.
_MAX_FRAME = 2**40
#: The only dtype of points and outputs the run journals (outputs are validated float64).
_DTYPE = np.dtype(np.float64).str


def journal_path(checkpoint) -> str:
    """Where the journal of ``checkpoint`` lives: ``<checkpoint>.journal``."""
    return os.fspath(checkpoint) + ".journal"


@dataclass(frozen=True)
class _Entry:
    frame: tuple  # (offset, length) of the whole frame in the file
    offset: int  # of the output's bytes in the file
    shape: tuple
    solver_time: float
    attempts: int
    tag: tuple


def _frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _point_bytes(point):
    """``(shape, bytes)`` of a float64 point, or None for anything else."""
    try:
        a = np.ascontiguousarray(point)
    except (TypeError, ValueError):
        return None
    if a.dtype.str != _DTYPE:
        return None
    return tuple(a.shape), a.tobytes()


def _key(context: dict, shape, data: bytes) -> bytes:
    head = json.dumps({"seed": context.get("seed"), "warm_start": context.get("warm_start"),
                       "shape": list(shape)}, sort_keys=True)
    h = hashlib.sha256(head.encode())
    h.update(b"\0")
    h.update(data)
    return h.digest()


def _jsonable(value, what):
    try:
        return json.loads(json.dumps(value, sort_keys=True, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise FG2UValueError(f"`{what}` must be JSON data: {exc}") from None


class EvaluationJournal:
    """The append-only journal of one run's finished solves (see the module docstring);
    a :class:`~fg2u_zo.evaluation.requests.ReplayCache`.

    Made by the run (:func:`fg2u_zo.minimize` with ``checkpoint=``, or an
    :class:`~fg2u_zo.AskTell` with one) and attached to its Evaluator for the run's
    duration; users do not make one.

    Parameters
    ----------
    path : path-like
        The journal file.
    position : dict
        JSON data saying which checkpoint the records belong to (its digest).
    fingerprint : dict
        JSON data identifying the run's solvers.

    Use :meth:`open` to take over an existing file, :meth:`create` to start one.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "run.ckpt.journal")
    >>> j = EvaluationJournal.create(path, {"checkpoint": "abc"}, {"solver": "v1"})
    >>> j.record({"seed": 7, "warm_start": None}, np.ones(2), np.array([1.0, 1.0]),
    ...          solver_time=0.5, attempts=1, tag=("run", 0, 3))
    >>> j.close()
    >>> again = EvaluationJournal.open(path, {"checkpoint": "abc"}, {"solver": "v1"})
    >>> hit = again.lookup({"seed": 7, "warm_start": None}, np.ones(2))
    >>> hit.theta.tolist(), hit.solver_time, again.replayable
    ([1.0, 1.0], 0.5, 1)
    >>> EvaluationJournal.open(path, {"checkpoint": "abc"}, {"solver": "v2"}).replayable
    0
    """

    def __init__(self, path, position, fingerprint=None):
        self.path = os.path.abspath(os.fspath(path))
        self.position = _jsonable(position, "position")
        self.fingerprint = _jsonable(fingerprint or {}, "fingerprint")
        self._index = {}
        self._fd = None
        self._broken = False

    # -- making and taking over ------------------------------------------------------------
    @classmethod
    def create(cls, path, position, fingerprint=None) -> "EvaluationJournal":
        """A new, empty journal at ``path`` (replacing any file there, atomically)."""
        journal = cls(path, position, fingerprint)
        journal._rewrite([])
        return journal

    @classmethod
    def open(cls, path, position, fingerprint=None) -> "EvaluationJournal":
        """The journal at ``path`` if it belongs to ``position`` and its solvers have
        ``fingerprint``, else a new empty one.

        A file that is missing, unreadable, of another format or written for another
        checkpoint is replaced by an empty journal (logged at INFO); one written by
        other solvers likewise, with a WARNING naming what changed; a torn last record
        is cut off so that new records follow the last good one.
        """
        journal = cls(path, position, fingerprint)
        reason = journal._take_over()
        if reason is not None:
            if os.path.exists(journal.path):
                log = logger.warning if reason.startswith("the solver") else logger.info
                log("evaluation journal %s not replayed (%s); starting a new one",
                    journal.path, reason)
            journal._rewrite([])
        return journal

    def _take_over(self):
        """Index the file's records; returns why it cannot be used, or None."""
        try:
            if os.path.islink(self.path):
                return "it is a symbolic link"
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return "no file"
        except OSError as exc:
            return f"unreadable: {exc}"
        header, frames, end = _parse(data)
        if header is None:
            return "not a journal, or its header is damaged"
        if header.get("format") != FORMAT_NAME or header.get("version") != FORMAT_VERSION:
            return f"format {header.get('format')!r} version {header.get('version')!r}"
        if header.get("position") != self.position:
            return (f"written for {header.get('position')!r}, not for the checkpoint being "
                    f"resumed ({self.position!r})")
        if header.get("fingerprint") != self.fingerprint:
            return ("the solvers changed since its records were written: "
                    + _difference(header.get("fingerprint"), self.fingerprint)
                    + "; their outputs are solved again (the journal assumes the solver "
                    "computes the same function as when the records were written)")
        try:
            if end < len(data):
                os.truncate(self.path, end)  # the torn tail: new frames follow good ones
            self._fd = open_append(self.path)
        except OSError as exc:
            return f"cannot be appended to: {exc}"
        for start, payload in frames:
            self._add(payload, start)
        return None

    def _rewrite(self, frames):
        """Replace the file with the header and ``frames`` (raw bytes), atomically."""
        self.close()
        self._index = {}
        header = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION,
                             "position": self.position, "fingerprint": self.fingerprint},
                            sort_keys=True).encode()
        content = MAGIC + _frame(header) + b"".join(frames)
        try:
            # A journal is a cache: no fsync (a power cut costs solves, never results).
            atomic_write(self.path, content, fsync=False)
            self._fd = open_append(self.path)
        except OSError as exc:
            self._disable(exc)
            return
        self._broken = False
        if frames:
            for start, payload in _parse(content)[1]:
                self._add(payload, start)

    def retain(self, position, keep) -> None:
        """Belong to a new checkpoint, keeping the records a resumed run still needs.

        Parameters
        ----------
        position : dict
            The new checkpoint's position.
        keep : callable
            ``keep(tag) -> bool`` for each record's tag (see :class:`~fg2u_zo.evaluation.
            requests.Request`): the run keeps those of the steps it has not committed.
        """
        frames = []
        if os.path.exists(self.path) and not os.path.islink(self.path):
            try:
                with open(self.path, "rb") as fh:
                    data = fh.read()
            except OSError:
                data = b""
            for start, payload in _parse(data)[1]:
                tag = _record_tag(payload)
                if tag is not None and keep(tag):
                    frames.append(data[start - _FRAME.size:start + len(payload)])
        self.position = _jsonable(position, "position")
        self._rewrite(frames)

    # -- records ---------------------------------------------------------------------------
    def _add(self, payload, start):
        """Index one record (``payload`` starts at file offset ``start``)."""
        try:
            (n,) = _META.unpack_from(payload, 0)
            meta = json.loads(payload[_META.size:_META.size + n])
            point, theta = meta["point"], meta["theta"]
            if point["dtype"] != _DTYPE or theta["dtype"] != _DTYPE:
                return  # not what the run writes: a corrupt or crafted record
            p_shape, t_shape = tuple(point["shape"]), tuple(theta["shape"])
            if not all(isinstance(d, int) and d >= 0 for d in p_shape + t_shape):
                return
            p_start = _META.size + n
            p_end = p_start + 8 * math.prod(p_shape)
            if p_end + 8 * math.prod(t_shape) != len(payload):
                return
            context = {"seed": meta["seed"], "warm_start": meta["warm_start"]}
            key = _key(context, p_shape, payload[p_start:p_end])
            tag = meta.get("tag", [])
            if not isinstance(tag, list):
                return
            entry = _Entry((start - _FRAME.size, _FRAME.size + len(payload)), start + p_end,
                           t_shape, float(meta["solver_time"]), int(meta["attempts"]),
                           tuple(tag))
        except (KeyError, TypeError, ValueError, AttributeError, struct.error):
            return  # a record this version cannot read: solved again
        self._index.setdefault(key, entry)

    def record(self, context, point, theta, *, solver_time, attempts, tag=()):
        """Write one finished solve at once (one unbuffered write)."""
        if self._fd is None or self._broken:
            return
        described = _point_bytes(point)
        t = np.ascontiguousarray(theta)
        if described is None or t.dtype.str != _DTYPE:
            return
        p_shape, p_data = described
        meta = json.dumps({"seed": context.get("seed"), "warm_start": context.get("warm_start"),
                           "tag": list(tag), "point": {"dtype": _DTYPE, "shape": list(p_shape)},
                           "theta": {"dtype": _DTYPE, "shape": list(t.shape)},
                           "solver_time": float(solver_time), "attempts": int(attempts)},
                          sort_keys=True).encode()
        payload = b"".join((_META.pack(len(meta)), meta, p_data, t.tobytes()))
        frame = _frame(payload)
        try:
            view = memoryview(frame)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            self._disable(exc)

    def lookup(self, context, point):
        """The journaled output of the same solve at the same point, or None."""
        if not self._index:
            return None
        described = _point_bytes(point)
        if described is None:
            return None
        entry = self._index.get(_key(context, *described))
        if entry is None:
            return None
        nbytes = 8 * math.prod(entry.shape)
        try:
            with open(self.path, "rb") as fh:
                fh.seek(entry.offset)
                data = fh.read(nbytes)
        except OSError:
            return None
        if len(data) != nbytes:
            return None
        theta = np.frombuffer(data, dtype=np.float64).reshape(entry.shape).copy()
        if not np.all(np.isfinite(theta)):
            return None  # never written by the run (outputs are checked finite)
        return Replayed(theta, entry.solver_time, entry.attempts)

    @property
    def replayable(self) -> int:
        """Records that can answer a solve."""
        return len(self._index)

    def _disable(self, exc):
        if not self._broken:
            logger.warning("the evaluation journal %s cannot be written (%s): solves "
                           "are no longer journaled, and a resumed run will solve this "
                           "step again", self.path, exc)
        self._broken = True

    # -- the end ---------------------------------------------------------------------------
    def close(self):
        """Close the file (records stay on disk)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self):
        """Close and delete the file (the run finished)."""
        self.close()
        self._index = {}
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __repr__(self):
        return (f"EvaluationJournal({self.path!r}, position={self.position!r}, "
                f"replayable={self.replayable})")


def _record_tag(payload):
    """The tag of a record's payload, or None when it cannot be read."""
    try:
        (n,) = _META.unpack_from(payload, 0)
        tag = json.loads(payload[_META.size:_META.size + n]).get("tag", [])
    except (ValueError, AttributeError, struct.error):
        return None
    return tuple(tag) if isinstance(tag, list) else None


def _difference(old, new):
    """Which entries of two fingerprints differ, in a few words."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return "no fingerprint in the journal"
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "changed: " + ", ".join(keys[:5]) + (" ..." if len(keys) > 5 else "")


def _parse(data: bytes):
    """``(header, [(payload offset, payload), ...], end of the last whole frame)``.

    Frames with a wrong checksum are skipped; a frame running past the end of the data
    (torn) ends the parse. ``header`` is None when the magic or the header frame is bad.
    """
    if not data.startswith(MAGIC):
        return None, [], 0
    pos = len(MAGIC)
    frames = []
    header = None
    first = True
    while pos + _FRAME.size <= len(data):
        length, crc = _FRAME.unpack_from(data, pos)
        start = pos + _FRAME.size
        if length > _MAX_FRAME or start + length > len(data):
            break  # torn (or a corrupted length): nothing after it is trusted
        payload = data[start:start + length]
        pos = start + length
        if zlib.crc32(payload) != crc:
            if first:
                return None, [], 0
            continue
        if first:
            try:
                header = json.loads(payload)
            except ValueError:
                return None, [], 0
            if not isinstance(header, dict):
                return None, [], 0
            first = False
            continue
        frames.append((start, payload))
    if header is None:
        return None, [], 0
    return header, frames, pos
