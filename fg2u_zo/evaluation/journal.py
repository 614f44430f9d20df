"""A journal of finished evaluations, so that a resumed run solves nothing twice.

A run with a checkpoint keeps, next to it, an append-only file of every evaluation that
finished since the checkpoint was written: the point's exact bytes, the ``seed`` and
the digest of the ``warm_start`` the solver was passed, the output's exact bytes, and
the solve's seconds and attempts. A run killed in the middle of a step resumes at the
start of that step; its evaluations are then looked up here before they are sent to a
backend, and a finished one is answered from the file, bit for bit what the solver
returned, at no solver cost. Two evaluations are the same when the point has the same
bytes and the solver is passed the same ``seed`` and ``warm_start``; the solver itself
is not part of the key (a name would change between the script that crashed and the
command that resumes it): within one run position the seeds, drawn afresh for every
group of solves, keep apart the calls of different steps and phases.

The journal belongs to one checkpoint: its header holds the checkpoint's digest
(sha256 of its bytes) and position (``step``, ``phase``, ``step_in_phase``). A journal
whose header names another checkpoint is ignored and started anew. The run empties it
(atomically) each time it writes a checkpoint, but for the records a resumed run has
not reached yet (a resumption writes checkpoints before it reaches the step it was
killed in) and, after a signal abandoned a step, for all of them (the same step is
redone); it removes the journal when the run finishes. It assumes the inner solver did
not change between the crash and the resumption: delete ``<checkpoint>.journal`` to
solve everything again (a failed run, which may be resumed with a fixed solver, keeps
none).

File format (version 1)
-----------------------
``MAGIC``, then frames. A frame is ``<u8 length><u4 crc32 of the payload>`` followed
by the payload. The first frame's payload is the header, JSON:
``{"format": FORMAT_NAME, "version": 1, "position": {...}}``. Every later frame is one
evaluation: ``<u4 n>``, ``n`` bytes of JSON (``seed``, ``warm_start``,
``point`` and ``theta`` as ``{"dtype", "shape"}``, ``solver_time``, ``attempts``), the
point's raw bytes, then the output's raw bytes. No pickles: arrays are raw bytes
described by JSON, read back with :func:`numpy.frombuffer`.

Each frame is written with one unbuffered ``write``: a process killed at any instant
(SIGKILL included) loses no evaluation that had finished. A torn last frame (shorter
than its length) is ignored and cut off before the next append; a frame whose checksum
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

__all__ = ["EvaluationJournal", "JournalCall", "Replayed", "journal_path", "array_digest",
           "FORMAT_NAME", "FORMAT_VERSION", "MAGIC"]

logger = logging.getLogger(__name__)

FORMAT_NAME = "fg2u-zo evaluation journal"
FORMAT_VERSION = 1
MAGIC = b"fg2u-zo journal\n"
_FRAME = struct.Struct("<QI")
_META = struct.Struct("<I")
# A frame longer than this is taken for a corrupted length field, not a record.
_MAX_FRAME = 2**40


def journal_path(checkpoint) -> str:
    """Where the journal of ``checkpoint`` lives: ``<checkpoint>.journal``."""
    return os.fspath(checkpoint) + ".journal"


def array_digest(array) -> str:
    """sha256 of an array's dtype, shape and bytes, as hex (the ``warm_start`` identity)."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Replayed:
    """A finished evaluation read back from the journal."""

    theta: np.ndarray
    solver_time: float
    attempts: int


@dataclass(frozen=True)
class _Entry:
    frame: tuple  # (offset, length) of the whole frame in the file
    offset: int  # of the output's bytes in the file
    dtype: str
    shape: tuple
    solver_time: float
    attempts: int


def _frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _point_bytes(point):
    """``(dtype str, shape, bytes)`` of a numeric point, or None for anything else."""
    try:
        a = np.ascontiguousarray(point)
    except (TypeError, ValueError):
        return None
    if a.dtype.kind not in "biuf":
        return None
    return a.dtype.str, tuple(a.shape), a.tobytes()


def _key(context: dict, dtype: str, shape, data: bytes) -> bytes:
    head = json.dumps({**context, "dtype": dtype, "shape": list(shape)}, sort_keys=True)
    h = hashlib.sha256(head.encode())
    h.update(b"\0")
    h.update(data)
    return h.digest()


class EvaluationJournal:
    """The append-only journal of one run's finished evaluations (see the module doc).

    Made by the run (:func:`fg2u_zo.minimize` with ``checkpoint=``) and attached to its
    :class:`~fg2u_zo.Evaluator` for the run's duration
    (:meth:`Evaluator.journaling <fg2u_zo.Evaluator.journaling>`); users do not make one.

    Parameters
    ----------
    path : path-like
        The journal file.
    position : dict
        JSON scalars that say which checkpoint the records belong to (its digest and
        its step, phase and step in phase).

    Use :meth:`open` to take over an existing file, :meth:`create` to start one.

    Examples
    --------
    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "run.ckpt.journal")
    >>> j = EvaluationJournal.create(path, {"checkpoint": "abc", "step": 3})
    >>> call = j.call(seed=7, warm_start=None)
    >>> call.record(np.ones(2), np.array([1.0, 1.0]), solver_time=0.5, attempts=1)
    >>> j.close()
    >>> again = EvaluationJournal.open(path, {"checkpoint": "abc", "step": 3})
    >>> hit = again.call(seed=7, warm_start=None).lookup(np.ones(2))
    >>> hit.theta.tolist(), hit.solver_time, again.replayable
    ([1.0, 1.0], 0.5, 1)
    >>> EvaluationJournal.open(path, {"checkpoint": "other", "step": 3}).replayable
    0
    """

    def __init__(self, path, position):
        self.path = os.path.abspath(os.fspath(path))
        self.position = _check_position(position)
        self._index = {}
        self._used = set()  # keys that answered an evaluation
        self._fd = None
        self._broken = False

    # -- making and taking over ------------------------------------------------------------
    @classmethod
    def create(cls, path, position) -> "EvaluationJournal":
        """A new, empty journal at ``path`` (replacing any file there, atomically)."""
        journal = cls(path, position)
        journal._rewrite([])
        return journal

    @classmethod
    def open(cls, path, position) -> "EvaluationJournal":
        """The journal at ``path`` if it belongs to ``position``, else a new empty one.

        A file that is missing, unreadable, of another format or written for another
        checkpoint is replaced by an empty journal (logged at INFO); a torn last
        record is cut off so that new records follow the last good one.
        """
        journal = cls(path, position)
        reason = journal._take_over()
        if reason is not None:
            if os.path.exists(journal.path):
                logger.info("evaluation journal %s ignored (%s); starting a new one",
                            journal.path, reason)
            journal._rewrite([])
        return journal

    def _take_over(self):
        """Index the file's records; returns why it cannot be used, or None."""
        try:
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
        try:
            if end < len(data):
                os.truncate(self.path, end)  # the torn tail: new frames follow good ones
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            return f"cannot be appended to: {exc}"
        for start, payload in frames:
            self._add(payload, start)
        return None

    def _rewrite(self, frames):
        """Replace the file with the header and ``frames`` (raw bytes), atomically."""
        self.close()
        self._index, self._used = {}, set()
        header = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION,
                             "position": self.position}, sort_keys=True).encode()
        content = MAGIC + _frame(header) + b"".join(frames)
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "wb") as fh:
                fh.write(content)
            os.replace(tmp, self.path)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            self._disable(exc)
            if os.path.exists(tmp):
                os.unlink(tmp)
            return
        self._broken = False
        if frames:
            for start, payload in _parse(content)[1]:
                self._add(payload, start)

    def reset(self, position, *, keep="pending"):
        """Belong to a new checkpoint, atomically.

        Parameters
        ----------
        position : dict
            The new checkpoint's position (see the class).
        keep : {"pending", "all", "none"}
            Which records stay. ``"pending"``: those the file held when it was opened
            that have not answered an evaluation yet (a resumed run checkpoints after
            each step it redoes, possibly before it reaches the step it was killed in:
            the records of the steps ahead are still to be used). ``"all"``: every
            record (a step abandoned by a signal is redone from the same state).
            ``"none"``: an empty journal.
        """
        if keep not in ("pending", "all", "none"):
            raise FG2UValueError(f"`keep` must be 'pending', 'all' or 'none', got {keep!r}")
        pending = [e.frame for key, e in self._index.items() if key not in self._used]
        frames = []
        if os.path.exists(self.path) and (keep == "all" or keep == "pending" and pending):
            try:
                with open(self.path, "rb") as fh:
                    data = fh.read()
            except OSError:
                data = b""
            if keep == "all":
                frames = [data[start - _FRAME.size:start + len(payload)]
                          for start, payload in _parse(data)[1]]
            else:
                frames = [data[start:start + length] for start, length in pending]
        self.position = _check_position(position)
        self._rewrite(frames)

    # -- records ---------------------------------------------------------------------------
    def _add(self, payload, start):
        """Index one record (``payload`` starts at file offset ``start``)."""
        try:
            (n,) = _META.unpack_from(payload, 0)
            meta = json.loads(payload[_META.size:_META.size + n])
            point, theta = meta["point"], meta["theta"]
            p_dtype, t_dtype = np.dtype(point["dtype"]), np.dtype(theta["dtype"])
            p_shape, t_shape = tuple(point["shape"]), tuple(theta["shape"])
            p_start = _META.size + n
            p_end = p_start + p_dtype.itemsize * math.prod(p_shape)
            if p_end + t_dtype.itemsize * math.prod(t_shape) != len(payload):
                return
            context = {"seed": meta["seed"], "warm_start": meta["warm_start"]}
            key = _key(context, p_dtype.str, p_shape, payload[p_start:p_end])
            entry = _Entry((start - _FRAME.size, _FRAME.size + len(payload)), start + p_end,
                           t_dtype.str, t_shape, float(meta["solver_time"]),
                           int(meta["attempts"]))
        except (KeyError, TypeError, ValueError, struct.error):
            return  # a record this version cannot read: solved again
        self._index.setdefault(key, entry)

    def append(self, context, point, theta, solver_time, attempts):
        """Write one finished evaluation (see :meth:`JournalCall.record`)."""
        if self._fd is None or self._broken:
            return
        described = _point_bytes(point)
        if described is None:
            return
        p_dtype, p_shape, p_data = described
        t = np.ascontiguousarray(theta)
        meta = json.dumps({**context, "point": {"dtype": p_dtype, "shape": list(p_shape)},
                           "theta": {"dtype": t.dtype.str, "shape": list(t.shape)},
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

    def record(self, context, point, theta, *, solver_time, attempts, tag=()):
        """Journal one finished evaluation at once (one unbuffered write)."""
        self.append(context, point, theta, solver_time, attempts)

    def lookup(self, context, point):
        """The journaled output of the same call at the same point, or None."""
        if not self._index:
            return None
        described = _point_bytes(point)
        if described is None:
            return None
        key = _key(context, *described)
        entry = self._index.get(key)
        if entry is None:
            return None
        dtype = np.dtype(entry.dtype)
        nbytes = dtype.itemsize * math.prod(entry.shape)
        try:
            with open(self.path, "rb") as fh:
                fh.seek(entry.offset)
                data = fh.read(nbytes)
        except OSError:
            return None
        if len(data) != nbytes:
            return None
        theta = np.frombuffer(data, dtype=dtype).reshape(entry.shape).copy()
        self._used.add(key)
        return Replayed(theta, entry.solver_time, entry.attempts)

    def call(self, *, seed, warm_start, expected_shape=None) -> "JournalCall":
        """The journal as one Evaluator call sees it (see :class:`JournalCall`)."""
        return JournalCall(self, seed=seed, warm_start=warm_start,
                           expected_shape=expected_shape)

    @property
    def replayable(self) -> int:
        """Records that can answer an evaluation (those the file held when it was
        opened: a record written by this process answers only a later resumption)."""
        return len(self._index)

    def _disable(self, exc):
        if not self._broken:
            logger.warning("the evaluation journal %s cannot be written (%s): evaluations "
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


class JournalCall:
    """The journal for one Evaluator call: the keywords its solver is passed.

    An evaluation is the same when the solver is passed the same ``seed`` and
    ``warm_start`` (by digest) at a point of the same bytes.
    """

    def __init__(self, journal, *, seed, warm_start, expected_shape=None):
        self.journal = journal
        self.context = {"seed": None if seed is None else int(seed),
                        "warm_start": None if warm_start is None
                        else array_digest(warm_start)}
        self.expected_shape = None if expected_shape is None else tuple(expected_shape)

    @property
    def replayable(self) -> int:
        """Records of the journal that can answer an evaluation."""
        return self.journal.replayable

    def lookup(self, point):
        """A :class:`Replayed` output for ``point``, or None to solve it.

        A record whose output does not have the call's expected shape is not used.
        """
        hit = self.journal.lookup(self.context, point)
        if hit is None or (self.expected_shape is not None
                           and hit.theta.shape != self.expected_shape):
            return None
        return hit

    def record(self, point, theta, *, solver_time, attempts):
        """Journal a finished evaluation at once (one unbuffered write)."""
        self.journal.append(self.context, point, theta, solver_time, attempts)


def _check_position(position):
    if not isinstance(position, dict):
        raise FG2UValueError(f"`position` must be a dict of JSON scalars, got "
                             f"{type(position).__name__}")
    return json.loads(json.dumps(position, sort_keys=True))


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
