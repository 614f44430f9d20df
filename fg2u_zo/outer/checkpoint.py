"""Checkpoints: everything a resumed run needs, written atomically, read as data only.

File format (version 2)
-----------------------
A checkpoint is one file, a zip archive (entries stored, not compressed) holding:

``meta.json``
    Format name and version, package version, time written, ``status`` and
    ``message``; ``num_params``; the position of the run: ``step`` (outer steps done),
    ``phase`` and ``step_in_phase``; ``history`` (``path``, relative to the
    checkpoint's directory, and ``lines``, the number of JSONL lines the history had,
    to which a resumed run truncates it); ``rng`` (the numpy ``bit_generator.state``);
    ``noise`` (``{"type": "NoiseEstimate", "data": {...}, "age": k}`` or null);
    ``totals`` (``nfev``, ``solver_time``, ``wall_time``, ``failures`` by kind and
    ``nfev_replayed``, evaluations answered from the journal, since the run began);
    ``stepper`` (``data``: the stepper's JSON state); ``config`` (estimators, phases,
    the stepper's configuration under ``optimizer``, schedules, transforms: what must
    match for the run to continue exactly); ``metadata`` (free JSON, e.g. the config
    file path and its sha256 written by the CLI).
``arrays.npz``
    ``phi``, ``z`` (the stepper's unconstrained variable), the bounds ``lower``,
    ``upper`` and the stepper's arrays under ``stepper/<name>``, read back with
    ``allow_pickle=False``.

Inspect one with ``unzip -p run.ckpt meta.json``. Floats survive the round trip bit for
bit: JSON holds ``repr(float)`` (non-finite ones as ``{"__float__": "inf"}``), npz the
raw bytes. A checkpoint names data, never code: :func:`read_checkpoint` checks every
field's type and range and raises :class:`~fg2u_zo.CheckpointError` naming the first
malformed one; nothing in the file picks what is imported or called, and its history
path is only ever a file to check before appending to it.

Writes are atomic: the archive is written to ``<path>.tmp`` in the same directory,
fsynced, moved over ``<path>`` with :func:`os.replace` and the directory fsynced, so a
process killed at any instant leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .._version import __version__
from ..errors import CheckpointError
from .serialization import (FieldReader, decode_noise, encode_noise, from_json,
                            generator_from_state, generator_state, to_json)
from .steppers.base import StepperState
from .transforms import TRANSFORM_KINDS

__all__ = ["Checkpoint", "read_checkpoint", "write_checkpoint", "config_differences",
           "FORMAT_VERSION", "STATUSES", "to_json", "from_json", "generator_state",
           "generator_from_state"]

FORMAT_NAME = "fg2u-zo checkpoint"
FORMAT_VERSION = 2
#: What a checkpoint's ``status`` may be.
STATUSES = ("running", "interrupted", "failed", "finished")
_STEPPER_PREFIX = "stepper/"
_ARRAYS = ("phi", "z", "lower", "upper")


@dataclass
class Checkpoint:
    """The state of an outer optimization run, as written to disk.

    Attributes
    ----------
    phi, z : ndarray, shape (N,)
        Meta-parameters and the stepper's unconstrained variable (``phi = T(z)``).
    lower, upper : ndarray, shape (N,)
        Bounds of the run.
    stepper_state : StepperState
        The stepper's state before the next step.
    rng_state : dict
        ``numpy.random.Generator.bit_generator.state`` before the next step.
    step, phase, step_in_phase : int
        Outer steps done, current phase and steps done in it.
    history_path : str or None
        The JSONL history (absolute once read: resolved against the checkpoint's
        directory).
    history_lines : int
        Lines of the JSONL history covered by this checkpoint.
    noise : NoiseEstimate or None
        Noise estimate in use; ``noise_age`` steps old.
    totals : dict
        ``nfev``, ``solver_time``, ``wall_time`` and ``failures`` (kind -> count) since
        the run began.
    config : dict
        What the run was configured with (compared on resume).
    metadata : dict
        Free JSON (the CLI stores the config path and hash).
    status, message : str
        ``"running"``, ``"interrupted"``, ``"failed"`` or ``"finished"``, and why.
    digest : str
        sha256 of the file's bytes (hex), set by :func:`write_checkpoint` and
        :func:`read_checkpoint`: the identity the run's journal of evaluations is
        checked against (see :mod:`fg2u_zo.evaluation.journal`).
    """

    phi: np.ndarray
    z: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    stepper_state: StepperState
    rng_state: dict
    step: int
    phase: int
    step_in_phase: int
    history_path: str | None = None
    history_lines: int = 0
    noise: object = None
    noise_age: int = 0
    totals: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    status: str = "running"
    message: str = ""
    written: str = ""
    version: str = __version__
    digest: str = ""

    @property
    def num_params(self) -> int:
        return int(self.phi.size)

    def generator(self) -> np.random.Generator:
        """A ``numpy.random.Generator`` in the saved state."""
        return generator_from_state(self.rng_state)


# -- writing -----------------------------------------------------------------------------
def _stored_history_path(history_path, directory):
    """The history path relative to the checkpoint's directory (absolute if impossible)."""
    if history_path is None:
        return None
    path = os.path.abspath(os.fspath(history_path))
    try:
        return os.path.relpath(path, directory)
    except ValueError:  # another drive on Windows
        return path


def write_checkpoint(path, ckpt: Checkpoint) -> str:
    """Write ``ckpt`` to ``path`` atomically; returns the absolute path.

    Sets ``ckpt.written`` and ``ckpt.digest`` (the sha256 of the bytes written).

    Examples
    --------
    >>> import os, tempfile, numpy as np, fg2u_zo as fz
    >>> from fg2u_zo.testing import RidgeHyperproblem
    >>> path = os.path.join(tempfile.mkdtemp(), "run.ckpt")
    >>> res = fz.minimize(RidgeHyperproblem(num_features=3).problem(), np.zeros(3),
    ...                   fz.FG2UZO(num_directions=2), steps=2, rng=0, checkpoint=path,
    ...                   progress=False)
    >>> ck = read_checkpoint(path)
    >>> rng = np.random.default_rng(0)
    >>> ck.rng_state = generator_state(rng)
    >>> back = read_checkpoint(write_checkpoint(path, ck))
    >>> back.step, back.generator().random() == rng.random()
    (2, True)
    """
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    ckpt.written = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    state = ckpt.stepper_state
    meta = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "fg2u_zo_version": __version__, "written": ckpt.written,
        "status": ckpt.status, "message": ckpt.message,
        "num_params": ckpt.num_params,
        "step": int(ckpt.step), "phase": int(ckpt.phase),
        "step_in_phase": int(ckpt.step_in_phase),
        "history": {"path": _stored_history_path(ckpt.history_path, directory),
                    "lines": int(ckpt.history_lines)},
        "rng": to_json(ckpt.rng_state), "noise": encode_noise(ckpt.noise, ckpt.noise_age),
        "totals": to_json(ckpt.totals), "stepper": {"data": to_json(state.data)},
        "config": to_json(ckpt.config), "metadata": to_json(ckpt.metadata),
    }
    arrays = {"phi": np.asarray(ckpt.phi, dtype=np.float64),
              "z": np.asarray(ckpt.z, dtype=np.float64),
              "lower": np.asarray(ckpt.lower, dtype=np.float64),
              "upper": np.asarray(ckpt.upper, dtype=np.float64)}
    for name, value in state.arrays.items():
        arrays[_STEPPER_PREFIX + name] = np.asarray(value)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    text = json.dumps(meta, indent=1, allow_nan=False)  # fails before any file is touched
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("meta.json", text)
        zf.writestr("arrays.npz", buffer.getvalue())
    data = archive.getvalue()
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
    ckpt.digest = hashlib.sha256(data).hexdigest()
    return path


def _fsync_directory(directory):
    # Makes the rename itself durable; not possible (nor needed) on every platform.
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


def _from_meta(meta, arrays, directory) -> Checkpoint:
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
            f"checkpoint format {version} (a torch.save optimizer state) is no longer "
            f"read; finish that run with the fg2u-zo version that wrote it "
            f"({meta.get('fg2u_zo_version')!r}), or start a new run")
    n = m.integer("num_params", minimum=1)
    step = m.integer("step", minimum=0)
    phase = m.integer("phase", minimum=0)
    step_in_phase = m.integer("step_in_phase", minimum=0)
    if step_in_phase > step:
        raise m.error("step_in_phase", f"must be <= step ({step}), got {step_in_phase}")
    if phase > step:
        raise m.error("phase", f"must be <= step ({step}), got {phase}")
    history = FieldReader(m.obj("history"), "history")
    history_path = history.string("path", optional=True)
    lines = history.integer("lines", minimum=0)
    if lines > step:
        raise history.error("lines", f"must be <= step ({step}), got {lines}")
    if history_path is not None:
        if not history_path or "\x00" in history_path:
            raise history.error("path", f"must be a file name, got {history_path!r}")
        history_path = os.path.normpath(os.path.join(directory, history_path))
    noise, age = decode_noise(meta.get("noise"))
    if noise is not None and noise.num_params != n:
        raise m.error("noise.data.num_params", f"must be num_params ({n}), got "
                                               f"{noise.num_params}")
    totals = _totals(FieldReader(m.obj("totals"), "totals"))
    stepper = FieldReader(m.obj("stepper"), "stepper")
    try:
        stepper_data = from_json(stepper.obj("data"))
        config = from_json(m.obj("config"))
        metadata = from_json(m.obj("metadata", optional=True) or {})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"a JSON value of the checkpoint is malformed: {exc}") from None
    _check_config(config, n, phase)
    rng_state = m.obj("rng")
    generator_from_state(rng_state)  # validates it
    core = _arrays(arrays, n)
    stepper_arrays = {k[len(_STEPPER_PREFIX):]: v for k, v in arrays.items()
                      if k.startswith(_STEPPER_PREFIX)}
    return Checkpoint(
        phi=core["phi"], z=core["z"], lower=core["lower"], upper=core["upper"],
        stepper_state=StepperState(arrays=stepper_arrays, data=stepper_data),
        rng_state=from_json(rng_state), step=step, phase=phase,
        step_in_phase=step_in_phase, history_path=history_path, history_lines=lines,
        noise=noise, noise_age=age, totals=totals, config=config, metadata=metadata,
        status=m.string("status", choices=STATUSES), message=m.string("message"),
        written=m.string("written"), version=m.string("fg2u_zo_version"))


def _totals(t: FieldReader) -> dict:
    failures = t.obj("failures", optional=True) or {}
    for kind, count in failures.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise t.error(f"failures.{kind}", f"must be a count >= 0, got {count!r:.80}")
    # nfev_replayed is absent from the checkpoints written before the journal.
    replayed = t.integer("nfev_replayed", minimum=0, default=0)
    return {"nfev": t.integer("nfev", minimum=0),
            "solver_time": t.number("solver_time", minimum=0.0),
            "wall_time": t.number("wall_time", minimum=0.0),
            "failures": dict(failures), "nfev_replayed": replayed}


def _check_config(config, n, phase):
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
    if phase >= len(steps):
        raise CheckpointError(f"checkpoint field `phase` must be < the number of phases "
                              f"({len(steps)}), got {phase}")
    for i, p in enumerate(phases):
        pr = FieldReader(p, f"config.phases[{i}]")
        pr.number("lr", minimum=0.0)
        pr.obj("estimator")
        pr.obj("schedule")
    FieldReader(c.obj("optimizer"), "config.optimizer").string("name")
    kinds = config.get("transform")
    if not isinstance(kinds, list) or len(kinds) != n or not all(
            k in TRANSFORM_KINDS for k in kinds):
        raise c.error("transform", f"must be a list of {n} of "
                                   f"{', '.join(map(repr, TRANSFORM_KINDS))}")


def _arrays(arrays, n):
    out = {}
    for name in _ARRAYS:
        if name not in arrays:
            raise CheckpointError(f"checkpoint array `{name}` is missing")
        arr = arrays[name]
        if arr.dtype != np.float64 or arr.shape != (n,):
            raise CheckpointError(f"checkpoint array `{name}` must be float64 of shape "
                                  f"({n},), got {arr.dtype} {arr.shape}")
        out[name] = arr
    for name in ("phi", "z"):
        if not np.all(np.isfinite(out[name])):
            raise CheckpointError(f"checkpoint array `{name}` is not finite")
    if np.isnan(out["lower"]).any() or np.isnan(out["upper"]).any() or np.any(
            out["lower"] > out["upper"]):
        raise CheckpointError("checkpoint arrays `lower`/`upper` must be bounds lower <= "
                              "upper without NaN")
    outside = np.flatnonzero((out["phi"] < out["lower"]) | (out["phi"] > out["upper"]))
    if outside.size:
        raise CheckpointError(f"checkpoint array `phi` lies outside the bounds at "
                              f"{outside[:10].tolist()}")
    return out


def config_differences(saved, current, prefix="") -> list[str]:
    """Human-readable differences between two JSON-like configs, one per leaf.

    Examples
    --------
    >>> config_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}})
    ['b.c: checkpoint has 2, this run has 3']
    """
    out = []
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in list(saved) + [k for k in current if k not in saved]:
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                out.append(f"{where}: not in the checkpoint, this run has {current[key]!r}")
            elif key not in current:
                out.append(f"{where}: checkpoint has {saved[key]!r}, this run has none")
            else:
                out.extend(config_differences(saved[key], current[key], where))
        return out
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        for i, (a, b) in enumerate(zip(saved, current)):
            out.extend(config_differences(a, b, f"{prefix}[{i}]"))
        return out
    if saved != current:
        out.append(f"{prefix}: checkpoint has {saved!r}, this run has {current!r}")
    return out
