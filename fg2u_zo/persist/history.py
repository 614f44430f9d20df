"""How a run reports itself: one typed record per outer step, in a JSONL file.

The JSONL history has one JSON object per line, one line per outer step, written and
flushed as each step completes. A checkpoint records how many lines the history had
when it was written; a resumed run truncates the file back to that many lines before
appending, so a run killed between writing a line and writing its checkpoint never
leaves a duplicated or a missing step.

Keys of a line (non-finite floats are written as ``null``)::

    step              0-based index of the outer step (of its local run)
    phase             index of the phase (see fg2u_zo.Phase)
    run               index of the local run (0 but for a multi-start)
    estimator         name of the estimator used
    value             outer loss F(phi) at the start of the step
    grad_norm         ||g|| of the meta-gradient estimate (in phi space)
    stderr_norm       ||stderr|| of the estimate
    snr               grad_norm / stderr_norm (null for exact estimators: infinite)
    nfev, nfev_total  inner-solver evaluations of this step / since the run began
    nfev_replayed     evaluations of this step answered from the journal of a resumed
                      run (solved before the interruption), not in nfev
    solver_time, solver_time_total
                      seconds inside the inner solver, this step / since the run began
    wall_time         seconds of wall-clock time since the run began (summed over resumes)
    failures          evaluations dropped in this step
    fd_step           finite-difference step of the estimate (null on exact paths)
    fd_error          predicted relative error of one directional difference at that
                      step, from the noise estimate behind it (null without one)
    lr                learning rate used for the step
    phi               phi the step's value belongs to, when N <= PHI_MAX_SIZE
    info              (only for steppers that report them) the stepper's own fields,
                      e.g. rho, delta, accepted of a trust-region step
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, fields

import numpy as np

from ..errors import CheckpointError, FG2UValueError

__all__ = ["StepRecord", "HistoryWriter", "read_history", "PHI_MAX_SIZE"]

logger = logging.getLogger(__name__)

#: phi is written into the JSONL history only up to this many parameters; larger
#: vectors live in the checkpoint, so the history stays small enough to plot.
PHI_MAX_SIZE = 1000


@dataclass(frozen=True)
class StepRecord:
    """What one outer step did (see the module docstring for the meaning of each field).

    Callbacks of :func:`fg2u_zo.minimize` receive one after each step; returning True
    from a callback stops the run.
    """

    step: int
    phase: int
    estimator: str
    value: float
    grad_norm: float
    stderr_norm: float
    snr: float
    nfev: int
    nfev_total: int
    solver_time: float
    solver_time_total: float
    wall_time: float
    failures: int
    fd_step: float | None
    lr: float
    fd_error: float | None = None
    phi: np.ndarray | None = None
    info: dict | None = None
    nfev_replayed: int = 0
    run: int = 0

    def to_dict(self) -> dict:
        """JSON-ready dict: non-finite floats become None, phi a list (or absent)."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "phi":
                if value is not None and np.size(value) <= PHI_MAX_SIZE:
                    out["phi"] = [float(v) for v in np.asarray(value)]
                continue
            if f.name == "info":
                if value:
                    out["info"] = _json_info(value)
                continue
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "StepRecord":
        """Inverse of :meth:`to_dict` (``null`` snr and stderr_norm read back as ``inf``)."""
        kwargs = {}
        for f in fields(cls):
            value = data.get(f.name)
            if f.name == "phi":
                value = None if value is None else np.asarray(value, dtype=np.float64)
            elif f.name in ("snr", "stderr_norm") and value is None:
                value = math.inf  # the only non-finite values these take
            elif f.name in ("value", "grad_norm") and value is None:
                value = math.nan
            elif f.name == "info" and value is not None and not isinstance(value, dict):
                raise TypeError(f"`info` must be an object, got {value!r}")
            elif f.name in ("nfev_replayed", "run") and value is None:
                value = 0  # histories written before the journal / multi-start runs
            kwargs[f.name] = value
        return cls(**kwargs)

    def __repr__(self) -> str:
        d = asdict(self)
        d.pop("phi")
        return "StepRecord(" + ", ".join(f"{k}={v!r}" for k, v in d.items()) + ")"


def _json_info(info):
    """A stepper's info fields as strict JSON: numpy scalars as Python, non-finite as null."""
    out = {}
    for key, value in info.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        out[str(key)] = value
    return out


def read_history(path) -> list[StepRecord]:
    """Read a JSONL history into step records.

    A last line cut short by a killed process is ignored.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "run.jsonl")
    >>> with HistoryWriter(path) as h:
    ...     h.write(StepRecord(0, 0, "FG2UZO", 1.5, 2.0, 0.1, 20.0, 9, 9, 0.01, 0.01, 0.02,
    ...                        0, 1e-5, 0.1))
    >>> read_history(path)[0].value
    1.5
    """
    records = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.endswith("\n"):
                break
            line = line.strip()
            if not line:
                continue
            try:
                records.append(StepRecord.from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError) as exc:
                raise FG2UValueError(
                    f"{path}:{number}: not a history line of fg2u-zo ({exc})") from None
    return records


#: How every line json.dumps(StepRecord.to_dict()) writes begins.
_LINE_START = b'{"step": '


def _check_history_file(path):
    """Line ends of an existing history file, after checking that it is one.

    A resumed run truncates its history to the lines its checkpoint counts. It does so
    only to a file whose complete lines are all step records and whose unfinished last
    line (a process killed while writing it) starts like one: never to another file a
    checkpoint may name.
    """
    ends = []
    with open(path, "rb") as fh:
        pos = 0
        for number, line in enumerate(fh, start=1):
            pos += len(line)
            if not line.endswith(b"\n"):
                ok = _LINE_START.startswith(line) or line.startswith(_LINE_START)
            else:
                try:
                    record = json.loads(line)
                    ok = isinstance(record, dict) and isinstance(record.get("step"), int)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    ok = False
                ends.append(pos)
            if not ok:
                raise CheckpointError(
                    f"{path} is not an fg2u-zo history (line {number} is not a step "
                    "record); refusing to truncate or append to it: pass history= the "
                    "run's JSONL file, or a new path")
    return ends


class HistoryWriter:
    """Appends step records to a JSONL file.

    Parameters
    ----------
    path : path-like
    keep_lines : int, optional
        ``None``: start a new file (an existing one is replaced). An int: keep the first
        ``keep_lines`` complete lines of an existing file and append after them (what a
        resumed run does).
    """

    def __init__(self, path, keep_lines: int | None = None):
        self.path = os.fspath(path)
        parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(parent, exist_ok=True)
        if keep_lines is None:
            self._fh = open(self.path, "w", encoding="utf-8")
            self.lines = 0
            return
        if not os.path.exists(self.path):
            if keep_lines:
                logger.warning("history %s is missing; the %d steps before the checkpoint "
                               "will not be in it", self.path, keep_lines)
            self._fh = open(self.path, "w", encoding="utf-8")
            self.lines = 0 if not keep_lines else keep_lines
            return
        ends = _check_history_file(self.path)
        if len(ends) < keep_lines:
            raise CheckpointError(
                f"history {self.path} has {len(ends)} complete lines but the checkpoint "
                f"was written after {keep_lines}: it was truncated or replaced; restore it, "
                "or pass another history path to resume into a new file")
        size = ends[keep_lines - 1] if keep_lines else 0
        with open(self.path, "r+b") as fh:
            fh.truncate(size)
        self._fh = open(self.path, "a", encoding="utf-8")
        self.lines = keep_lines

    def write(self, record: StepRecord):
        """Append one line and flush it to the OS (a kill loses at most this line)."""
        self._fh.write(json.dumps(record.to_dict(), allow_nan=False) + "\n")
        self._fh.flush()
        self.lines += 1

    def sync(self):
        """fsync the file, so the lines a checkpoint counts are on disk before it."""
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self):
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
