"""Checkpoints: everything a resumed run needs, written atomically, read without pickle.

File format (version 1)
-----------------------
A checkpoint is one file, a zip archive (entries stored, not compressed) holding:

``meta.json``
    Format name and version, package version, time written, ``status`` and
    ``message``; ``num_params``; the position of the run: ``step`` (outer steps done),
    ``phase`` and ``step_in_phase``; ``history`` (``path`` and ``lines``, the number of
    JSONL lines the history had, to which a resumed run truncates it); ``rng`` (the
    numpy ``bit_generator.state``, arrays as ``{"__ndarray__": [...], "dtype": ...}``);
    ``noise`` (the noise estimate in use, or null); ``totals`` (``nfev``,
    ``solver_time``, ``wall_time`` since the run began); ``config`` (estimators, phases,
    optimizer, schedules, transforms: what must match for the run to continue exactly);
    ``metadata`` (free JSON, e.g. the config file path and its sha256 written by the CLI).
``arrays.npz``
    ``phi``, ``z`` (the optimizer's unconstrained variable) and the bounds ``lower``,
    ``upper``, read back with ``allow_pickle=False``.
``optimizer.pt``
    The ``torch.optim`` ``state_dict()``, written with :func:`torch.save` and read back
    with ``torch.load(..., weights_only=True)``.

Inspect one with ``unzip -p run.ckpt meta.json``. Floats survive the round trip bit for
bit: JSON holds ``repr(float)``, npz and torch hold the raw bytes.

Writes are atomic: the archive is written to ``<path>.tmp`` in the same directory,
fsynced, moved over ``<path>`` with :func:`os.replace` and the directory fsynced, so a
process killed at any instant leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import zipfile
from dataclasses import dataclass, field

import numpy as np

from .._version import __version__
from ..errors import CheckpointError

__all__ = ["Checkpoint", "read_checkpoint", "write_checkpoint", "config_differences",
           "FORMAT_VERSION"]

FORMAT_NAME = "fg2u-zo checkpoint"
FORMAT_VERSION = 1
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


@dataclass
class Checkpoint:
    """The state of an outer optimization run, as written to disk.

    Attributes
    ----------
    phi, z : ndarray, shape (N,)
        Meta-parameters and the optimizer's unconstrained variable (``phi = T(z)``).
    lower, upper : ndarray, shape (N,)
        Bounds of the run.
    optimizer_state : dict
        ``torch.optim.Optimizer.state_dict()``.
    rng_state : dict
        ``numpy.random.Generator.bit_generator.state`` before the next step.
    step, phase, step_in_phase : int
        Outer steps done, current phase and steps done in it.
    history_path : str or None
    history_lines : int
        Lines of the JSONL history covered by this checkpoint.
    noise : dict or None
        Encoded noise estimate in use (see :func:`encode_noise`).
    totals : dict
        ``nfev``, ``solver_time`` and ``wall_time`` since the run began.
    config : dict
        What the run was configured with (compared on resume).
    metadata : dict
        Free JSON (the CLI stores the config path and hash).
    status, message : str
        ``"running"``, ``"interrupted"``, ``"failed"`` or ``"finished"``, and why.
    """

    phi: np.ndarray
    z: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    optimizer_state: dict
    rng_state: dict
    step: int
    phase: int
    step_in_phase: int
    history_path: str | None = None
    history_lines: int = 0
    noise: dict | None = None
    totals: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    status: str = "running"
    message: str = ""
    written: str = ""
    version: str = __version__

    @property
    def num_params(self) -> int:
        return int(self.phi.size)

    def generator(self) -> np.random.Generator:
        """A ``numpy.random.Generator`` in the saved state."""
        return generator_from_state(self.rng_state)


# -- JSON helpers ------------------------------------------------------------------------
def to_json(value):
    """JSON-ready copy: arrays become ``{"__ndarray__": list, "dtype": str}``, tuples
    lists; non-finite floats ``{"__float__": "inf"}`` (strict JSON has no inf/nan)."""
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return {"__ndarray__": to_json(value.tolist()), "dtype": value.dtype.str,
                "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return to_json(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    return value


def from_json(value):
    """Inverse of :func:`to_json`."""
    if isinstance(value, dict):
        if "__ndarray__" in value:
            arr = np.array(from_json(value["__ndarray__"]), dtype=np.dtype(value["dtype"]))
            return arr.reshape(value.get("shape", arr.shape))
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def generator_state(rng: np.random.Generator) -> dict:
    return to_json(rng.bit_generator.state)


def generator_from_state(state: dict) -> np.random.Generator:
    """Rebuild a Generator from :func:`generator_state` (numpy's bit generators only)."""
    state = from_json(state)
    name = state.get("bit_generator")
    if name not in _BIT_GENERATORS:
        raise CheckpointError(
            f"the checkpoint's random state uses bit generator {name!r}; expected one of "
            f"{', '.join(_BIT_GENERATORS)}")
    bitgen = getattr(np.random, name)()
    bitgen.state = state
    return np.random.Generator(bitgen)


# -- noise estimates --------------------------------------------------------------------
def encode_noise(noise):
    """JSON description of a noise estimate (an object of :mod:`fg2u_zo`), or None.

    Uses ``noise.to_dict()`` when the class has one, else its dataclass fields.
    """
    if noise is None:
        return None
    cls = type(noise)
    if hasattr(noise, "to_dict"):
        data = noise.to_dict()
    elif hasattr(noise, "__dataclass_fields__"):
        data = {name: getattr(noise, name) for name in noise.__dataclass_fields__}
    else:
        data = dict(vars(noise))
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "data": to_json(data)}


def decode_noise(encoded):
    """Inverse of :func:`encode_noise`. Only classes of the fg2u_zo package are rebuilt:
    a checkpoint names data, never code to run."""
    if encoded is None:
        return None
    import importlib

    module_name, _, qualname = encoded["class"].partition(":")
    if module_name.split(".")[0] != "fg2u_zo":
        raise CheckpointError(
            f"the checkpoint's noise estimate has class {encoded['class']!r}, which is not "
            "part of fg2u_zo; it cannot be rebuilt")
    try:
        cls = getattr(importlib.import_module(module_name), qualname)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(
            f"cannot rebuild the checkpoint's noise estimate {encoded['class']!r}: {exc}; "
            "is this the fg2u-zo version that wrote it?") from None
    data = from_json(encoded["data"])
    if hasattr(cls, "from_dict"):
        return cls.from_dict(data)
    return cls(**data)


# -- reading and writing ----------------------------------------------------------------
def write_checkpoint(path, ckpt: Checkpoint) -> str:
    """Write ``ckpt`` to ``path`` atomically; returns the absolute path.

    Examples
    --------
    >>> import tempfile, os, numpy as np
    >>> rng = np.random.default_rng(0)
    >>> ck = Checkpoint(phi=np.ones(2), z=np.zeros(2), lower=np.full(2, -np.inf),
    ...                 upper=np.full(2, np.inf), optimizer_state={}, step=3, phase=0,
    ...                 step_in_phase=3, rng_state=generator_state(rng))
    >>> path = write_checkpoint(os.path.join(tempfile.mkdtemp(), "run.ckpt"), ck)
    >>> back = read_checkpoint(path)
    >>> back.step, back.generator().random() == rng.random()
    (3, True)
    """
    import torch

    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    ckpt.written = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "fg2u_zo_version": __version__, "written": ckpt.written,
        "status": ckpt.status, "message": ckpt.message,
        "num_params": ckpt.num_params,
        "step": int(ckpt.step), "phase": int(ckpt.phase),
        "step_in_phase": int(ckpt.step_in_phase),
        "history": {"path": ckpt.history_path, "lines": int(ckpt.history_lines)},
        "rng": to_json(ckpt.rng_state), "noise": ckpt.noise,
        "totals": to_json(ckpt.totals), "config": to_json(ckpt.config),
        "metadata": to_json(ckpt.metadata),
    }
    arrays = io.BytesIO()
    np.savez(arrays, phi=np.asarray(ckpt.phi, dtype=np.float64),
             z=np.asarray(ckpt.z, dtype=np.float64), lower=ckpt.lower, upper=ckpt.upper)
    optimizer = io.BytesIO()
    torch.save(ckpt.optimizer_state, optimizer)
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.writestr("meta.json", json.dumps(meta, indent=1, allow_nan=False))
                zf.writestr("arrays.npz", arrays.getvalue())
                zf.writestr("optimizer.pt", optimizer.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)
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


def read_checkpoint(path) -> Checkpoint:
    """Read a checkpoint written by :func:`write_checkpoint`.

    Raises
    ------
    CheckpointError
        If the file is missing, not a checkpoint, or of a newer format.
    """
    import torch

    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with zipfile.ZipFile(path) as zf:
            meta = json.loads(zf.read("meta.json"))
            with np.load(io.BytesIO(zf.read("arrays.npz")), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in ("phi", "z", "lower", "upper")}
            optimizer_state = torch.load(io.BytesIO(zf.read("optimizer.pt")),
                                         weights_only=True)
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, ValueError) as exc:
        raise CheckpointError(
            f"{path!r} is not a readable fg2u-zo checkpoint ({type(exc).__name__}: {exc})"
        ) from None
    except Exception as exc:  # torch.load refusing a non-tensor payload, for one
        raise CheckpointError(
            f"cannot read the optimizer state in {path!r}: {exc}") from None
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path!r} is not an fg2u-zo checkpoint (format "
                              f"{meta.get('format')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path!r} has checkpoint format {meta['format_version']}, newer than this "
            f"fg2u-zo ({__version__}, format {FORMAT_VERSION}) can read; upgrade fg2u-zo")
    return Checkpoint(
        phi=arrays["phi"], z=arrays["z"], lower=arrays["lower"], upper=arrays["upper"],
        optimizer_state=optimizer_state, rng_state=from_json(meta["rng"]),
        step=meta["step"], phase=meta["phase"], step_in_phase=meta["step_in_phase"],
        history_path=meta["history"]["path"], history_lines=meta["history"]["lines"],
        noise=meta["noise"], totals=from_json(meta["totals"]),
        config=from_json(meta["config"]), metadata=from_json(meta.get("metadata") or {}),
        status=meta["status"], message=meta["message"], written=meta["written"],
        version=meta["fg2u_zo_version"])


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
