"""Where the Evaluator's solves run: a registry of backends behind one protocol.

``base`` (the :class:`Backend` protocol and its :class:`BackendConfig`), ``events``
(what a backend reports: :class:`ItemDone`, :class:`TaskDone`, :class:`TaskLost`),
``registry`` (:func:`register_backend`, :func:`available_backends`), and one module
per built-in engine: ``sequential``, ``threads`` (``"threading"``), ``loky`` (with
its process ``pool``), ``dask`` and ``ray`` -- the last two imported only when asked
for.
"""

from .base import Backend, BackendConfig
from .events import ItemDone, TaskDone, TaskLost
from .registry import (BackendNames, available_backends, check_backend_name, create_backend,
                       register_backend, unregister_backend)
from .sequential import SequentialBackend

__all__ = ["Backend", "BackendConfig", "ItemDone", "TaskDone", "TaskLost",
           "register_backend", "unregister_backend", "available_backends",
           "check_backend_name", "create_backend", "BackendNames", "SequentialBackend"]
