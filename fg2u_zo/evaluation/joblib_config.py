"""joblib's conventions: ``n_jobs`` counting from the CPUs, and ``joblib.parallel_config``.

An Evaluator made inside ``with joblib.parallel_config(backend=..., n_jobs=...)`` takes
its backend and worker count from there, as joblib's own ``Parallel`` would.
"""

from __future__ import annotations

import os

from .backends import available_backends
from ..errors import FG2UValueError

__all__ = ["effective_n_jobs", "from_parallel_config", "usable_cpus"]

_JOBLIB_NAMES = {"LokyBackend": "loky", "MultiprocessingBackend": "loky",
                 "ThreadingBackend": "threading", "SequentialBackend": "sequential",
                 "DaskDistributedBackend": "dask", "RayBackend": "ray"}


def usable_cpus() -> int:
    """CPUs this process may use (its affinity mask and cgroup quota, as joblib counts)."""
    try:
        from joblib import cpu_count
        return max(1, int(cpu_count()))
    except ImportError:  # pragma: no cover - joblib is a dependency
        return os.cpu_count() or 1


def effective_n_jobs(n_jobs):
    """joblib's convention: ``-1`` all CPUs, ``-2`` all but one, ..."""
    if n_jobs < 0:
        return max(1, usable_cpus() + 1 + n_jobs)
    return n_jobs


def from_parallel_config():
    """``(backend, n_jobs, client)`` set by an enclosing ``joblib.parallel_config``.

    Each is None when not set. ``prefer="threads"`` / ``require="sharedmem"`` map to
    ``"threading"`` as in joblib.
    """
    try:
        from joblib import parallel as jp
    except ImportError:  # pragma: no cover - joblib is a dependency
        return None, None, None
    config = getattr(jp._backend, "config", None)
    if config is None:
        return None, None, None
    unset = type(jp.default_parallel_config["backend"])
    backend_obj, n_jobs = jp.get_active_backend()
    explicit = not isinstance(config.get("backend"), unset)
    cls = type(backend_obj).__name__
    name = _JOBLIB_NAMES.get(cls)
    if name is None:
        raise FG2UValueError(
            f"the joblib backend {cls} set with joblib.parallel_config is not supported by "
            f"fg2u_zo.Evaluator; pass backend= one of "
            f"{', '.join(map(repr, available_backends()))}")
    if not explicit and name == "loky":
        name = None  # joblib's default, not a choice: our own default applies
    client = getattr(backend_obj, "client", None) if name == "dask" else None
    if isinstance(n_jobs, unset):
        n_jobs = None
    return name, n_jobs, client
