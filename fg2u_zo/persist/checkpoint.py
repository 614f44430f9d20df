"""Checkpoints: everything a resumed run needs, written atomically, read as data only.

File format (version 3)
-----------------------
A checkpoint is one file, a zip archive (entries stored, not compressed) holding:

``meta.json``
    Format name and version, package version, time written, ``status`` and
    ``message``; ``num_params``; ``history`` (``path``, relative to the checkpoint's
    folder and inside it, and ``lines``, the number of JSONL lines the history had, to
    which a resumed run truncates it; a history elsewhere is recorded as ``outside``
    and never written to unless the resumed call names it); ``search``: the run's
    stage (screening, local runs, final values, done), the solves of each parallel
    group so far, the totals of the stages, and one entry per local run (its position:
    ``step``, ``phase``, ``step_in_phase``; the ``rng`` state; the noise estimate; the
    stepper's JSON state; its totals, status, last value, rung, final value); ``config``
    (estimators, phases, the stepper's configuration under ``optimizer``, schedules,
    transforms, a multi-start's settings: what must match for the run to continue
    exactly); ``metadata`` (free JSON, e.g. the config file written by the CLI).
``arrays.npz``
    ``lower``, ``upper`` (the bounds), ``phi`` (each run's current point, one row per
    run), and per run ``runs/<i>/z`` and the stepper's arrays under
    ``runs/<i>/stepper/<name>``; a multi-start's ``design``, ``design_values`` and
    ``starts``; read back with ``allow_pickle=False``.

Inspect one with ``unzip -p run.ckpt meta.json``. Floats survive the round trip bit for
bit (see :mod:`fg2u_zo.persist.codec`). A checkpoint names data, never code:
:func:`read_checkpoint` checks every field's type and range and raises
:class:`~fg2u_zo.CheckpointError` naming the first malformed one; nothing in the file
picks what is imported or called, and its history path is only ever a file inside the
checkpoint's folder to check before appending to it.

Writes are atomic and never follow a planted link (:mod:`fg2u_zo.persist.files`). One
process at a time: :class:`CheckpointLock` refuses a second run on the same checkpoint.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import io
import json
import logging
import os
import socket
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .._version import __version__
from ..errors import CheckpointError
from .codec import FieldReader, from_json, to_json
from .files import atomic_write
from .history import HistoryWriter, read_history
from .journal import EvaluationJournal, journal_path
from .state import SearchState, decode_search, encode_search

__all__ = ["Checkpoint", "read_checkpoint", "write_checkpoint", "CheckpointLock", "RunStore",
           "FORMAT_VERSION", "STATUSES"]

logger = logging.getLogger(__name__)

FORMAT_NAME = "fg2u-zo checkpoint"
FORMAT_VERSION = 3
#: What a checkpoint's ``status`` may be.
STATUSES = ("running", "interrupted", "failed", "finished")


@dataclass
class Checkpoint:
    """The state of a run, as written to disk.

    Attributes
    ----------
    search : SearchState
        The stages and local runs (see :mod:`fg2u_zo.persist.state`).
    lower, upper : ndarray, shape (N,)
        Bounds of the run.
    phis : ndarray, shape (k, N)
        Each local run's current point (for reading; the state is ``search``).
    config : dict
        What the run was configured with (compared on resume).
    metadata : dict
        Free JSON.
    history_path : str or None
        The JSONL history (absolute once read), inside the checkpoint's folder.
    history_outside : str or None
        A history outside the checkpoint's folder: recorded, never followed.
    history_lines : int
        Lines of the history covered by this checkpoint.
    status, message : str
        ``"running"``, ``"interrupted"``, ``"failed"`` or ``"finished"``, and why.
    digest : str
        sha256 of the file's bytes (hex), set when written or read: the identity the
        run's journal of solves is checked against.
    """

    search: SearchState
    lower: np.ndarray
    upper: np.ndarray
    phis: np.ndarray
    config: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    history_path: str | None = None
    history_outside: str | None = None
    history_lines: int = 0
    status: str = "running"
    message: str = ""
    written: str = ""
    version: str = __version__
    digest: str = ""

    @property
    def num_params(self) -> int:
        return int(self.lower.size)

    # Conveniences for a run of one local run (what most checkpoints hold).
    def _single(self):
        if len(self.search.runs) != 1:
            raise AttributeError(f"this checkpoint holds {len(self.search.runs)} local runs; "
                                 "read them from `search.runs`")
        return self.search.runs[0]

    @property
    def phi(self) -> np.ndarray:
        """The current point of the run (of its only local run)."""
        return self.phis[0] if len(self.phis) == 1 else self._single() and self.phis[0]

    @property
    def step(self) -> int:
        """Steps done (by the only local run; summed over the runs of a multi-start)."""
        return sum(run.step for run in self.search.runs)

    @property
    def z(self):
        return self._single().z

    @property
    def phase(self):
        return self._single().phase

    @property
    def step_in_phase(self):
        return self._single().step_in_phase

    @property
    def stepper_state(self):
        return self._single().stepper_state

    @property
    def noise(self):
        return self._single().noise

    @property
    def totals(self) -> dict:
        """Totals of the whole run (stages and local runs)."""
        total = self.search.totals
        for run in self.search.runs:
            total = total.merged(run.totals)
        return total.to_dict()


# -- writing -----------------------------------------------------------------------------
def _history_field(history_path, directory):
    """``(relative path inside the folder, None)`` or ``(None, absolute path)``."""
    if history_path is None:
        return None, None
    path = os.path.abspath(os.fspath(history_path))
    try:
        rel = os.path.relpath(path, directory)
    except ValueError:  # another drive on Windows
        return None, path
    if rel.startswith(os.pardir + os.sep) or rel == os.pardir or os.path.isabs(rel):
        return None, path
    return rel, None


def write_checkpoint(path, ckpt: Checkpoint) -> str:
    """Write ``ckpt`` to ``path`` atomically; returns the absolute path.

    Sets ``ckpt.written`` and ``ckpt.digest`` (the sha256 of the bytes written).
    """
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    ckpt.written = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    search_json, arrays = encode_search(ckpt.search)
    rel, outside = _history_field(ckpt.history_path, directory)
    if ckpt.history_outside is not None and rel is None and outside is None:
        outside = ckpt.history_outside
    meta = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "fg2u_zo_version": __version__, "written": ckpt.written,
        "status": ckpt.status, "message": ckpt.message,
        "num_params": ckpt.num_params,
        "history": {"path": rel, "outside": outside, "lines": int(ckpt.history_lines)},
        "search": search_json, "config": to_json(ckpt.config),
        "metadata": to_json(ckpt.metadata),
    }
    arrays.update(lower=np.asarray(ckpt.lower, dtype=np.float64),
                  upper=np.asarray(ckpt.upper, dtype=np.float64),
                  phi=np.asarray(ckpt.phis, dtype=np.float64).reshape(-1, ckpt.num_params))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    text = json.dumps(meta, indent=1, allow_nan=False)  # fails before any file is touched
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("meta.json", text)
        zf.writestr("arrays.npz", buffer.getvalue())
    data = archive.getvalue()
    atomic_write(path, data)
    ckpt.digest = hashlib.sha256(data).hexdigest()
    return path


# -- reading -----------------------------------------------------------------------------
def read_checkpoint(path) -> Checkpoint:
    """Read and validate a checkpoint written by :func:`write_checkpoint`.

    Raises
    ------
    CheckpointError
        If the file is missing, not a checkpoint, of another format version, or any
        field is malformed (the message names the field).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            meta = json.loads(zf.read("meta.json"))
            with np.load(io.BytesIO(zf.read("arrays.npz")), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, ValueError, OSError,
            EOFError) as exc:
        raise CheckpointError(
            f"{path!r} is not a readable fg2u-zo checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    try:
        ckpt = _from_meta(meta, arrays, os.path.dirname(os.path.abspath(path)))
    except CheckpointError as exc:
        raise CheckpointError(f"{path!r}: {exc}") from None
    ckpt.digest = hashlib.sha256(data).hexdigest()
    return ckpt


def _history_path(history: FieldReader, directory):
    rel = history.string("path", optional=True)
    outside = history.string("outside", optional=True)
    if rel is not None:
        parts = rel.replace("\\", "/").split("/")
        if (not rel or "\x00" in rel or os.path.isabs(rel) or rel.startswith(("/", "\\"))
                or any(p == os.pardir for p in parts)):
            raise history.error("path", f"must be a file name inside the checkpoint's folder "
                                        f"(no absolute path, no '..'), got {rel!r:.120}")
        rel = os.path.normpath(os.path.join(directory, rel))
    if outside is not None and ("\x00" in outside or not outside):
        raise history.error("outside", f"must be a path, got {outside!r:.120}")
    return rel, outside


def _from_meta(meta, arrays, directory) -> Checkpoint:
    if not isinstance(meta, dict):
        raise CheckpointError("meta.json must be a JSON object")
    m = FieldReader(meta, "")
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"not an fg2u-zo checkpoint (format {meta.get('format')!r})")
    version = m.integer("format_version", minimum=1)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format {version} is newer than this fg2u-zo ({__version__}, "
            f"format {FORMAT_VERSION}) can read; upgrade fg2u-zo")
    if version < FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint format {version} is no longer read (this fg2u-zo writes format "
            f"{FORMAT_VERSION}); finish that run with the fg2u-zo version that wrote it "
            f"({meta.get('fg2u_zo_version')!r}), or start a new run")
    n = m.integer("num_params", minimum=1)
    history = FieldReader(m.obj("history"), "history")
    history_path, outside = _history_path(history, directory)
    lines = history.integer("lines", minimum=0)
    try:
        config = from_json(m.obj("config"))
        metadata = from_json(m.obj("metadata", optional=True) or {})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"a JSON value of the checkpoint is malformed: {exc}") from None
    search = decode_search(m.obj("search"), arrays, n)
    steps = sum(run.step for run in search.runs)
    if lines > steps:
        raise history.error("lines", f"must be <= the steps done ({steps}), got {lines}")
    _check_config(config, n, search)
    bounds = {}
    for name in ("lower", "upper"):
        arr = arrays.get(name)
        if arr is None or arr.dtype != np.float64 or arr.shape != (n,):
            raise CheckpointError(f"checkpoint array `{name}` must be float64 of shape ({n},)")
        bounds[name] = arr
    if np.isnan(bounds["lower"]).any() or np.isnan(bounds["upper"]).any() or np.any(
            bounds["lower"] > bounds["upper"]):
        raise CheckpointError("checkpoint arrays `lower`/`upper` must be bounds lower <= "
                              "upper without NaN")
    phis = arrays.get("phi")
    if phis is None or phis.dtype != np.float64 or phis.shape != (len(search.runs), n):
        raise CheckpointError(f"checkpoint array `phi` must be float64 of shape "
                              f"({len(search.runs)}, {n})")
    outside_bounds = np.flatnonzero(np.any((phis < bounds["lower"])
                                           | (phis > bounds["upper"]), axis=0))
    if outside_bounds.size:
        raise CheckpointError(f"checkpoint array `phi` lies outside the bounds at "
                              f"{outside_bounds[:10].tolist()}")
    return Checkpoint(
        search=search, lower=bounds["lower"], upper=bounds["upper"], phis=phis,
        config=config, metadata=metadata, history_path=history_path,
        history_outside=outside, history_lines=lines,
        status=m.string("status", choices=STATUSES), message=m.string("message"),
        written=m.string("written"), version=m.string("fg2u_zo_version"))


def _check_config(config, n, search):
    c = FieldReader(config, "config")
    if c.integer("num_params", minimum=1) != n:
        raise c.error("num_params", f"must equal num_params ({n})")
    steps = config.get("phase_steps")
    if not isinstance(steps, list) or not steps or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in steps):
        raise c.error("phase_steps", f"must be a non-empty list of step counts >= 1, got "
                                     f"{steps!r:.80}")
    phases = config.get("phases")
    if not isinstance(phases, list) or len(phases) != len(steps) or not all(
            isinstance(p, dict) for p in phases):
        raise c.error("phases", f"must be a list of {len(steps)} JSON objects")
    for i, run in enumerate(search.runs):
        if run.phase >= len(steps):
            raise CheckpointError(f"checkpoint field `search.runs[{i}].phase` must be < the "
                                  f"number of phases ({len(steps)}), got {run.phase}")
    for i, p in enumerate(phases):
        pr = FieldReader(p, f"config.phases[{i}]")
        pr.number("lr", minimum=0.0)
        pr.obj("estimator")
        pr.obj("schedule")
    FieldReader(c.obj("optimizer"), "config.optimizer").string("name")
    kinds = config.get("transform")
    if not isinstance(kinds, list) or len(kinds) != n or not all(
            isinstance(k, str) for k in kinds):
        raise c.error("transform", f"must be a list of {n} transform names")


# -- one process at a time ---------------------------------------------------------------
class CheckpointLock:
    """An exclusive lock on a checkpoint: ``<checkpoint>.lock``, held while a run uses it.

    The lock is an ``flock`` on the lock file, which the kernel releases when the
    holder dies (SIGKILL included): a lock left by a killed run is never stale on the
    same machine. The file holds the holder's pid, host and start time, for the message
    a second run gets. On file systems without ``flock`` across machines (some NFS
    set-ups), the lock protects processes of one machine only.

    Raises
    ------
    CheckpointError
        From :meth:`acquire`, when another process holds the lock.
    """

    def __init__(self, checkpoint):
        self.path = os.fspath(checkpoint) + ".lock"
        self._fd = None

    def acquire(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)) or ".", exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        for _ in range(10):
            try:
                fd = os.open(self.path, flags, 0o644)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise CheckpointError(f"{self.path} is a symbolic link; remove it") from None
                raise
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise CheckpointError(
                    f"checkpoint {self.path[:-5]!r} is in use by another run ({holder}); "
                    "two runs on one checkpoint would solve the same points twice and "
                    "overwrite each other's checkpoints: wait for it to end, or give this "
                    "run another checkpoint path") from None
            # The file may have been unlinked by its previous holder between our open and
            # our lock: then we hold a lock nobody else will see. Check, else retry.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:  # pragma: no cover - a lock file replaced ten times in a row
            raise CheckpointError(f"could not take the lock {self.path}")
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": datetime.datetime.now(datetime.timezone.utc).isoformat(
                               timespec="seconds")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        self._fd = fd
        return self

    def release(self):
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"
    except (OSError, ValueError):
        return "a process that has not written its name yet"


# -- what a run writes -------------------------------------------------------------------
class RunStore:
    """The files of one run: its checkpoint, the journal of its solves, its history.

    Parameters
    ----------
    checkpoint : str or None
        The checkpoint path (None: a temporary one is made only when a failure or a
        signal needs one, and nothing is journaled).
    config, metadata : dict
        Written with every checkpoint.
    lower, upper : ndarray
        The bounds.
    history : str or None
        The JSONL history.
    fingerprint : dict
        The run's solvers' fingerprint (the journal's header).
    """

    def __init__(self, checkpoint, *, config, metadata, lower, upper, history=None,
                 fingerprint=None):
        self.path = checkpoint
        self.config, self.metadata = config, metadata
        self.lower, self.upper = lower, upper
        self.history_path = history
        self.history_outside = None
        self._history_lines = 0  # of a history this run does not write ...
        self._recorded_history = None  # ... and its path
        self.fingerprint = fingerprint or {}
        self.journal = None
        self.history = None
        self.last = None  # the last checkpoint written
        self.last_digest = None

    # -- opening ----------------------------------------------------------------------------
    def open_fresh(self):
        if self.history_path is not None:
            self.history = HistoryWriter(self.history_path)

    def open_resumed(self, ck: Checkpoint, records_out: list):
        """Take over ``ck``'s journal and history; the history's records are appended
        to ``records_out`` when it is the checkpoint's own."""
        self.last, self.last_digest = self.path, ck.digest
        self.history_outside = ck.history_outside
        if self.path is not None:
            self.journal = EvaluationJournal.open(journal_path(self.path),
                                                  {"checkpoint": ck.digest}, self.fingerprint)
            if self.journal.replayable:
                logger.info("%d finished solve(s) since the checkpoint will be taken from %s "
                            "instead of being solved again", self.journal.replayable,
                            self.journal.path)
        if self.history_path is None:
            # Not written by this run: its record stays as it was, for a later
            # resumption that continues it.
            self._recorded_history = ck.history_path
            self._history_lines = ck.history_lines
            if ck.history_outside is not None and ck.history_path is None:
                logger.warning("the run's history was %s, outside the checkpoint's folder: "
                               "it is not continued unless you pass history= that path",
                               ck.history_outside)
            return
        same = (ck.history_path is not None and
                os.path.abspath(ck.history_path) == os.path.abspath(self.history_path)) or (
            ck.history_outside is not None and
            os.path.abspath(ck.history_outside) == os.path.abspath(self.history_path))
        keep = ck.history_lines if same else None
        self.history = HistoryWriter(self.history_path, keep_lines=keep)
        if same and ck.history_lines:
            try:
                records_out.extend(read_history(self.history_path)[:ck.history_lines])
            except (ValueError, OSError) as exc:
                logger.warning("could not read back %s: %s", self.history_path, exc)

    def write_record(self, record):
        if self.history is not None:
            self.history.write(record)

    # -- saving -----------------------------------------------------------------------------
    def save(self, search, phis, status, message, *, temporary_ok=True) -> str | None:
        """Write the checkpoint of ``search`` (a temporary file when none was configured
        and ``temporary_ok``), then keep in the journal only what may still be needed."""
        path = self.path
        if path is None:
            if not temporary_ok:
                return None
            import tempfile

            fd, path = tempfile.mkstemp(prefix="fg2u-zo-", suffix=".ckpt")
            os.close(fd)
            self.path = path
        if self.history is not None:
            self.history.sync()  # the lines the checkpoint counts are on disk first
        ck = Checkpoint(search=search.snapshot(), lower=self.lower, upper=self.upper,
                        phis=phis, config=self.config, metadata=self.metadata,
                        history_path=self.history_path or self._recorded_history,
                        history_outside=self.history_outside,
                        history_lines=(self.history.lines if self.history
                                       else self._history_lines),
                        status=status, message=message)
        self.last = write_checkpoint(path, ck)
        self.last_digest = ck.digest
        self._follow_journal(search, status, ck)
        return self.last

    def _follow_journal(self, search, status, ck):
        if self.path is None:
            return
        jpath = journal_path(self.path)
        if status == "finished":
            if self.journal is None:
                self.journal = EvaluationJournal(jpath, {}, self.fingerprint)
            self.journal.remove()
            self.journal = None
            return
        position = {"checkpoint": ck.digest}
        if self.journal is None:
            self.journal = EvaluationJournal.create(jpath, position, self.fingerprint)
        else:
            # Kept after a failure too: the solver is fingerprinted, so a fixed solver's
            # resumption does not replay the old one's outputs, while a run stopped by a
            # lost cluster replays what it had finished.
            self.journal.retain(position, search.pending_tag)

    def close(self):
        if self.journal is not None:
            self.journal.close()
        if self.history is not None:
            self.history.close()
