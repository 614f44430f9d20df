"""The keys of a TOML run configuration and the checks of its values.

Every table's valid keys are listed here (an unknown key gets the closest valid one
suggested), and :class:`TableChecker` checks values read from TOML (types, files,
executables, ``"module:function"`` entries), raising :class:`~fg2u_zo.ConfigError`
with one message that names the file, the section and the key. What a value *means*
is checked by the constructor it is passed to (:mod:`fg2u_zo.cli.build`); its errors
are re-worded by :meth:`TableChecker.from_constructor` to name the TOML key.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import math
import numbers
import os
import re
import sys

import numpy as np

from ..errors import ConfigError

__all__ = ["SECTIONS", "REQUIRED_SECTIONS", "SOLVER_KEYS", "OUTER_KEYS", "PARAMETER_KEYS",
           "OPTIMIZER_KEYS", "PHASE_KEYS", "PARALLEL_KEYS", "OUTPUT_KEYS", "CONTINUATION_KEYS",
           "MULTISTART_KEYS", "CONVERGED_KEYS", "UNCERTAINTY_KEYS", "FREEFEM_MODELS",
           "TableChecker", "show"]

SECTIONS = ("solver", "outer", "parameters", "estimator", "optimizer", "parallel", "output",
            "continuation", "multistart", "uncertainty")
REQUIRED_SECTIONS = ("solver", "outer", "parameters")
SOLVER_KEYS = {
    "subprocess": ("kind", "argv", "template", "input_name", "output", "reader", "skiprows",
                   "usecols", "comments", "files", "timeout", "env", "n_outputs",
                   "keep_workdir", "link", "kill_grace"),
    "freefem": ("kind", "model", "K", "mesh", "log_k", "precision", "source", "args",
                "output", "param_file", "files", "timeout", "executable", "n_outputs"),
    "python": ("kind", "entry", "kwargs"),
}
OUTER_KEYS = {
    "least_squares": ("kind", "data", "weights", "selection", "scale", "regularization"),
    "python": ("kind", "entry", "kwargs", "differentiable"),
}
PARAMETER_KEYS = ("size", "init", "bounds", "transform", "names")
OPTIMIZER_KEYS = ("name", "lr", "steps", "schedule", "options", "phases", "target", "gtol",
                  "max_nfev", "max_time")
PHASE_KEYS = ("steps", "lr", "schedule", "estimator", "solver", "name")
PARALLEL_KEYS = ("backend", "n_jobs", "timeout", "max_retries", "max_failure_fraction",
                 "scheduler_address", "batch_size")
OUTPUT_KEYS = ("checkpoint", "checkpoint_every", "history", "seed")
CONTINUATION_KEYS = ("times", "horizons", "growth", "min_points", "num_phases", "spacing",
                     "steps", "move_on", "stop")
MULTISTART_KEYS = ("num_starts", "num_local", "design", "halving", "rungs", "tie_rtol",
                   "tie_xtol", "stop")
CONVERGED_KEYS = ("xtol", "snr", "patience", "min_steps")   # fz.Converged
UNCERTAINTY_KEYS = ("enabled", "confidence", "method", "sigma", "scheme", "output")
FREEFEM_MODELS = ("diffusion",)

# A library message names its argument first, in backquotes, then says what is wrong:
# "`timeout` must be > 0" (but not "`skiprows`, `usecols` and ...": several arguments).
_ARGUMENT = re.compile(r"^`([A-Za-z_][\w.\[\]]*)`\s+(?=\w)")


def show(value) -> str:
    """``repr(value)``, cut to 60 characters for a one-line message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class TableChecker:
    """Checks of values read from one config file; each raises ConfigError naming the
    file, the section and the key (``where``, e.g. ``"[solver] timeout"``).

    Parameters
    ----------
    path : path-like
        The config file; relative paths in it resolve against its directory.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.base = os.path.dirname(os.path.abspath(self.path))

    def error(self, where, message) -> ConfigError:
        """The error to raise: ``"<file>: <where> <message>"``."""
        return ConfigError(f"{self.path}: {where} {message}", key=where)

    def from_constructor(self, exc, where, keys=()) -> ConfigError:
        """Re-word a constructor's error to name the TOML key it is about.

        A library message starts with the argument's name in backquotes; when that name
        is one of ``keys`` (the keys the table gave the constructor), the error names
        ``"<where> <key>"``, else ``where`` alone. Backquotes are dropped.
        """
        text = str(exc)
        match = _ARGUMENT.match(text)
        if match and match.group(1) in keys:
            return self.error(f"{where} {match.group(1)}", text[match.end():].replace("`", ""))
        return self.error(where, text.replace("`", ""))

    def unknown_keys(self, table, allowed, where):
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
                hint = (f"did you mean {close[0]!r}?" if close
                        else f"valid keys: {', '.join(allowed)}")
                raise self.error(where, f"has an unknown key {key!r}; {hint}")

    def table(self, value, where):
        if not isinstance(value, dict):
            raise self.error(where, f"must be a table, got {show(value)}")
        return value

    def string(self, value, where, choices=None):
        if not isinstance(value, str):
            raise self.error(where, f"must be a string, got {show(value)}")
        if choices is not None and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise self.error(where, f"must be one of {', '.join(map(repr, choices))}, got "
                                    f"{value!r}{hint}")
        return value

    def integer(self, value, where, minimum=1):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(where, f"must be an integer >= {minimum}, got {show(value)}")
        return value

    def number(self, value, where, *, positive=False, minimum=None):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
            raise self.error(where, f"must be a number, got {show(value)}")
        if positive and not value > 0:
            raise self.error(where, f"must be a number > 0, got {show(value)}")
        if minimum is not None and value < minimum:
            raise self.error(where, f"must be a number >= {minimum}, got {show(value)}")
        return float(value)

    def boolean(self, value, where):
        if not isinstance(value, bool):
            raise self.error(where, f"must be true or false, got {show(value)}")
        return value

    def string_list(self, value, where):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(where, f"must be a list of strings, got {show(value)}")
        return value

    def number_list(self, value, where):
        if not isinstance(value, list) or not all(
                isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value):
            raise self.error(where, f"must be a list of numbers, got {show(value)}")
        return [float(v) for v in value]

    def file(self, value, where):
        """An existing file, relative to the config's directory; returns the absolute path."""
        self.string(value, where)
        path = value if os.path.isabs(value) else os.path.join(self.base, value)
        if not os.path.exists(path):
            raise self.error(where, f"names a file that does not exist: {value!r} (looked "
                                    f"for {path})")
        return os.path.abspath(path)

    def output_path(self, value, where):
        """A path to write later; its directory must exist or be creatable."""
        self.string(value, where)
        path = os.path.abspath(value if os.path.isabs(value) else os.path.join(self.base,
                                                                                 value))
        parent = os.path.dirname(path)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if not os.access(parent, os.W_OK):
            raise self.error(where, f"cannot be written: {parent} is not writable")
        if os.path.isdir(path):
            raise self.error(where, f"names a directory ({path}); give a file name")
        return path

    def array(self, value, where):
        """A file of numbers (``.npy``, or text; ``.csv`` comma-separated) -> finite 1-D
        float64 array."""
        path = self.file(value, where)
        try:
            if path.endswith(".npy"):
                arr = np.load(path, allow_pickle=False)
            else:
                delimiter = "," if path.endswith(".csv") else None
                arr = np.loadtxt(path, delimiter=delimiter, ndmin=1)
        except (ValueError, OSError) as exc:
            raise self.error(where, f"file {value!r} is not an array of numbers: "
                                    f"{exc}") from None
        arr = np.asarray(arr, dtype=np.float64).ravel()
        if not np.all(np.isfinite(arr)):
            raise self.error(where, f"file {value!r} contains NaN or inf")
        return arr

    def entry(self, value, where):
        """``"module:attr"`` or ``"path/to/file.py:attr"`` -> the object."""
        self.string(value, where)
        module_part, sep, attr = value.rpartition(":")
        if not sep or not module_part or not attr:
            raise self.error(where, f"must be 'module:function' or 'file.py:function', got "
                                    f"{value!r}")
        if module_part.endswith(".py"):
            module = self._module_from_file(self.file(module_part, where), where)
        else:
            try:
                module = importlib.import_module(module_part)
            except ImportError as exc:
                raise self.error(where, f"cannot import module {module_part!r}: {exc}") from None
        obj = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise self.error(where, f"module {module_part!r} has no attribute "
                                        f"{attr!r}") from None
        if not callable(obj):
            raise self.error(where, f"{value!r} is not callable")
        return obj

    def _module_from_file(self, path, where):
        name = "_fg2u_config_" + hashlib.sha1(path.encode()).hexdigest()[:12]
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as exc:
                del sys.modules[name]
                raise self.error(where, f"{path} failed to import: "
                                        f"{type(exc).__name__}: {exc}") from None
            _pickle_by_value(module)
        return module


def _pickle_by_value(module):
    """A module loaded from a file path cannot be imported by worker processes: ask
    cloudpickle (joblib's copy and dask's) to ship its functions by value."""
    for name in ("joblib.externals.cloudpickle", "cloudpickle"):
        try:
            cp = importlib.import_module(name)
            cp.register_pickle_by_value(module)
        except (ImportError, ValueError, AttributeError):
            pass
