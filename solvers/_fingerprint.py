"""What identifies an adapter's configuration, as JSON data: its ``fingerprint()``.

A run that replays evaluations it journaled before it was interrupted must know
whether the solver is still the one that produced them. Each adapter's
``fingerprint()`` returns a dict of plain JSON values (str, numbers, bools, None,
lists, dicts with str keys) that changes when what the solver computes may have
changed: the adapter's type, the command and the input template, SHA-256 digests of
files, scripts and arrays it uses, its numeric settings, and for the Python callables
it wraps their ``module:qualname`` with a digest of their source. What a digest cannot
see -- a library the callable calls, a file the command reads on its own -- is what
the user-given ``version`` string of the adapter is for. Two fingerprints compare
equal with ``==`` after a JSON round trip; settings that do not change the results
(timeouts, where working directories go) are left out.

These helpers build the parts; the adapters assemble them.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import numbers
import os
import shutil

import numpy as np

from fg2u_zo.errors import FG2UTypeError

__all__ = ["adapter_name", "check_version", "file_digest", "executable_digest",
           "array_digest", "callable_identity", "jsonable"]

# Digests of files already read in this process: (path, size, mtime_ns) -> digest.
_FILE_DIGESTS: dict = {}
_CHUNK = 1 << 20


def adapter_name(obj) -> str:
    """``solvers.<Class>`` for the adapters exported by :mod:`solvers`."""
    cls = type(obj)
    module = cls.__module__
    if module.startswith("solvers."):
        module = "solvers"
    return f"{module}.{cls.__qualname__}"


def check_version(version):
    """The ``version=`` argument of an adapter: None or a str."""
    if version is not None and not isinstance(version, str):
        raise FG2UTypeError(f"`version` must be a str (e.g. '2.1' or a commit id) or None, "
                            f"got {type(version).__name__}")
    return version


def _sha256_file(path):
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    digest = _FILE_DIGESTS.get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(_CHUNK), b""):
                h.update(chunk)
        digest = _FILE_DIGESTS[key] = h.hexdigest()
    return digest


def file_digest(path) -> str | None:
    """SHA-256 of a file, or of a directory tree (its relative paths, the digests of
    its files and the targets of its links, in sorted order); None if unreadable."""
    path = os.fspath(path)
    try:
        if not os.path.isdir(path):
            return _sha256_file(path)
        h = hashlib.sha256()
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files) + [d for d in dirs
                                         if os.path.islink(os.path.join(folder, d))]:
                full = os.path.join(folder, name)
                rel = os.path.relpath(full, path)
                if os.path.islink(full):
                    part = "link:" + os.readlink(full)
                else:
                    part = _sha256_file(full)
                h.update(f"{rel}\0{part}\0".encode("utf-8", "surrogateescape"))
        return h.hexdigest()
    except OSError:
        return None


def executable_digest(name) -> str | None:
    """SHA-256 of the executable ``name`` resolves to here (PATH lookup), or None."""
    found = shutil.which(name)
    return None if found is None else file_digest(os.path.realpath(found))


def array_digest(value) -> dict:
    """``{"dtype", "shape", "sha256"}`` of an array (C order bytes)."""
    a = np.ascontiguousarray(np.asarray(value))
    if a.dtype.hasobject:
        return {"dtype": "object", "shape": list(a.shape), "items": jsonable(a.tolist())}
    return {"dtype": a.dtype.str, "shape": list(a.shape),
            "sha256": hashlib.sha256(a.tobytes()).hexdigest()}


def _source_digest(obj) -> str | None:
    try:
        source = inspect.getsource(obj)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def callable_identity(func) -> dict | None:
    """``{"callable": "module:qualname", "source_sha256": ...}`` of a Python callable.

    A function (or class) is named by its module and qualified name, with a digest
    of its source when it can be read. An instance with ``__call__`` is named by its
    class, with its attributes (see :func:`jsonable`). ``functools.partial`` gives its
    function, arguments and keywords.
    """
    if func is None:
        return None
    import functools
    if isinstance(func, functools.partial):
        return {"partial": callable_identity(func.func), "args": jsonable(list(func.args)),
                "keywords": jsonable(dict(func.keywords))}
    if inspect.isfunction(func) or inspect.ismethod(func) or inspect.isclass(func) \
            or inspect.isbuiltin(func):
        target = getattr(func, "__func__", func)
        out = {"callable": f"{getattr(target, '__module__', None)}:"
                           f"{getattr(target, '__qualname__', repr(target))}",
               "source_sha256": _source_digest(target)}
        if inspect.ismethod(func):
            out["self"] = _object_identity(func.__self__, depth=2)
        return out
    return _object_identity(func, depth=3)


def _object_identity(obj, depth):
    cls = type(obj)
    out = {"object": f"{cls.__module__}:{cls.__qualname__}",
           "source_sha256": _source_digest(cls)}
    state = getattr(obj, "__dict__", None)
    if state is not None and depth > 0:
        out["state"] = {str(k): jsonable(v, depth - 1) for k, v in sorted(state.items())
                        if not str(k).startswith("__")}
    return out


def jsonable(value, depth=3):
    """``value`` as JSON data that identifies it (see the module docstring).

    Numbers, strings, bools and None stay; non-finite floats become strings;
    sequences and mappings are converted item by item; arrays (numpy, torch, scipy
    sparse, anything :func:`numpy.asarray` takes) become their digest; callables
    their :func:`callable_identity`; slices ``{"slice": [start, stop, step]}``;
    other objects their class and (``depth`` levels deep) their attributes.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, slice):
        return {"slice": [jsonable(value.start), jsonable(value.stop), jsonable(value.step)]}
    if isinstance(value, dict):
        return {str(k): jsonable(v, depth) for k, v in sorted(value.items(),
                                                              key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, depth) for v in value]
    if isinstance(value, np.ndarray) or np.isscalar(value):
        return array_digest(value)
    if hasattr(value, "tocsr") and hasattr(value, "shape"):  # scipy.sparse
        csr = value.tocsr()
        return {"sparse": list(csr.shape), "data": array_digest(csr.data),
                "indices": array_digest(csr.indices), "indptr": array_digest(csr.indptr)}
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        return array_digest(value.detach().cpu().numpy())
    if callable(value):
        return callable_identity(value)
    if hasattr(value, "__array__") or hasattr(value, "to_numpy"):  # pandas, xarray ...
        try:
            return array_digest(value.to_numpy() if hasattr(value, "to_numpy") else value)
        except Exception:  # noqa: BLE001 - fall back to the object's attributes
            pass
    return _object_identity(value, depth=max(depth - 1, 0))
