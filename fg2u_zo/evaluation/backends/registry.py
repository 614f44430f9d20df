"""The backend registry: the names ``Evaluator(backend=...)`` accepts.

A name maps to a *factory*, ``factory(config: BackendConfig) -> Backend``, called once
per Evaluator (and again after :meth:`~fg2u_zo.Evaluator.close`). The built-in
backends are registered here by module, and their modules are imported only when a
backend is made: asking for ``"threading"`` never imports dask or ray.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Sequence

from .base import Backend
from ...errors import FG2UTypeError, FG2UValueError

__all__ = ["register_backend", "unregister_backend", "available_backends", "create_backend",
           "check_backend_name", "BackendNames"]

# name -> factory, in registration order (the order error messages list them in)
_FACTORIES: dict = {}


def register_backend(name: str, factory, *, replace: bool = False):
    """Make ``Evaluator(backend=name)`` use the backend that ``factory`` makes.

    Parameters
    ----------
    name : str
        The name to register, e.g. ``"slurm"``.
    factory : callable
        ``factory(config) -> Backend``: ``config`` is a
        :class:`~fg2u_zo.evaluation.backends.BackendConfig` (``n_jobs``,
        ``kill_grace``, ``client``, ``scheduler_address``); the result must be an
        instance of :class:`~fg2u_zo.Backend`. A ``Backend`` subclass whose
        ``__init__`` takes the config is a factory. Raise ``ImportError`` naming what to
        install when an optional engine is missing, ``FG2UValueError`` for options it
        cannot honour.
    replace : bool
        Allow replacing a backend registered under the same name.

    Raises
    ------
    FG2UTypeError
        ``name`` is not a string or ``factory`` is not callable.
    FG2UValueError
        ``name`` is empty or already registered (without ``replace=True``).

    Examples
    --------
    >>> import numpy as np, fg2u_zo as fz
    >>> from fg2u_zo.evaluation.backends import SequentialBackend, unregister_backend
    >>> fz.register_backend("mine", lambda config: SequentialBackend())
    >>> fz.Evaluator("mine").solve(np.cumsum, np.ones(2))[0].tolist()
    [1.0, 2.0]
    >>> unregister_backend("mine")
    """
    if not isinstance(name, str):
        raise FG2UTypeError(f"`name` must be a string, got {type(name).__name__}")
    if not name or name != name.strip():
        raise FG2UValueError(f"`name` must be a non-empty name without surrounding spaces, "
                             f"got {name!r}")
    if not callable(factory):
        raise FG2UTypeError(f"`factory` must be callable as factory(config) -> Backend, got "
                            f"{type(factory).__name__}")
    if name in _FACTORIES and not replace:
        raise FG2UValueError(f"a backend named {name!r} is already registered; pass "
                             "replace=True to replace it, or choose another name")
    _FACTORIES[name] = factory


def unregister_backend(name: str):
    """Remove a registered backend (Evaluators already made keep theirs).

    Raises
    ------
    FG2UValueError
        When no backend of that name is registered.
    """
    check_backend_name(name, "name")
    del _FACTORIES[name]


def available_backends() -> tuple:
    """The registered backend names, built-in ones first.

    Registered is not installed: ``"dask"`` and ``"ray"`` are listed even when their
    packages are missing, and making one then raises an ImportError naming the extra
    to install.

    Examples
    --------
    >>> import fg2u_zo as fz
    >>> fz.available_backends()[:5]
    ('sequential', 'loky', 'threading', 'dask', 'ray')
    """
    return tuple(_FACTORIES)


def check_backend_name(value, name: str = "backend") -> str:
    """``value`` if it is a registered backend name, else an error that lists them."""
    if not isinstance(value, str):
        raise FG2UTypeError(f"`{name}` must be a backend name (a string), got "
                            f"{type(value).__name__}; registered: "
                            f"{', '.join(map(repr, _FACTORIES))}")
    if value not in _FACTORIES:
        close = difflib.get_close_matches(value, list(_FACTORIES), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise FG2UValueError(f"`{name}` must be one of the registered backends "
                             f"{', '.join(map(repr, _FACTORIES))} (see register_backend), "
                             f"got {value!r}{hint}")
    return value


def create_backend(name: str, config) -> Backend:
    """Make the backend registered as ``name`` from ``config``."""
    factory = _FACTORIES[check_backend_name(name)]
    backend = factory(config)
    if not isinstance(backend, Backend):
        raise FG2UTypeError(f"the factory registered as backend {name!r} returned "
                            f"{type(backend).__name__}, not a fg2u_zo.Backend")
    return backend


class BackendNames(Sequence):
    """The registered names, read anew at every use (``in``, iteration, ``len``).

    ``fg2u_zo.evaluation.BACKENDS`` is one: checks against it see backends registered
    after it was imported.
    """

    def __getitem__(self, index):
        return tuple(_FACTORIES)[index]

    def __len__(self):
        return len(_FACTORIES)

    def __contains__(self, value):
        return value in _FACTORIES

    def __iter__(self):
        return iter(tuple(_FACTORIES))

    def __repr__(self):
        return f"BackendNames({tuple(_FACTORIES)!r})"


def _builtin(module: str):
    """A factory that imports ``backends.<module>`` only when a backend is made."""

    def factory(config):
        return importlib.import_module(f"{__package__}.{module}").create(config)

    factory.__qualname__ = factory.__name__ = f"{module}.create"
    return factory


for _name, _module in (("sequential", "sequential"), ("loky", "loky"),
                       ("threading", "threads"), ("dask", "dask"), ("ray", "ray")):
    register_backend(_name, _builtin(_module))
del _name, _module
