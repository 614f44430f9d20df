"""The one codec of what the package writes to disk: tagged JSON plus raw arrays.

Checkpoints, the evaluation journal's headers, stepper states and histories all go
through these functions, with one tag convention:

``{"__float__": "inf"}``
    A non-finite float (strict JSON has no inf/nan); finite floats are written with
    ``repr`` and come back bit for bit.
``{"__tuple__": [...]}``
    A tuple, kept apart from a list where the difference matters (``tuples=True``:
    optimizer states whose ``betas`` must come back as a tuple).
``{"__ndarray__": [...], "dtype": "<f8", "shape": [...]}``
    A small numeric array inline.
``{"__array__": "name"}``
    An array stored beside the JSON (a checkpoint's npz, bit for bit, no pickles),
    when the caller collects arrays (``arrays=`` a dict).

Everything read back is data: a closed set of tags maps to constructors, every field
is checked for its type and range (:class:`FieldReader`), and a malformed one raises
:class:`~fg2u_zo.CheckpointError` naming it. Nothing read chooses a module, a class or
a function.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import CheckpointError

__all__ = ["to_json", "from_json", "generator_state", "generator_from_state",
           "encode_noise", "decode_noise", "FieldReader", "NOISE_TYPES"]

BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
#: dtypes an array stored as JSON may have (no objects, no strings).
_ARRAY_KINDS = "biufc"


def to_json(value, *, arrays=None, tuples=False, where="value"):
    """JSON-ready copy of ``value`` (see the module docstring for the tags).

    Parameters
    ----------
    value
        Dicts, lists, tuples, numbers, strings, None, numpy arrays and scalars.
    arrays : dict, optional
        Collect numpy arrays here (under their path in ``value``, dotted) and write
        ``{"__array__": name}`` references; default: arrays inline.
    tuples : bool
        Tag tuples (else they become lists).
    where : str
        The path of ``value``, for names and error messages.

    Raises
    ------
    TypeError
        For a value of another type (the message names its path).
    """
    if isinstance(value, dict):
        return {str(k): to_json(v, arrays=arrays, tuples=tuples, where=f"{where}.{k}")
                for k, v in value.items()}
    if isinstance(value, tuple) and tuples:
        return {"__tuple__": [to_json(v, arrays=arrays, tuples=tuples, where=f"{where}.{i}")
                              for i, v in enumerate(value)]}
    if isinstance(value, (list, tuple)):
        return [to_json(v, arrays=arrays, tuples=tuples, where=f"{where}.{i}")
                for i, v in enumerate(value)]
    if isinstance(value, np.ndarray):
        if arrays is not None:
            arrays[where] = value
            return {"__array__": where}
        return {"__ndarray__": to_json(value.tolist()), "dtype": value.dtype.str,
                "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return to_json(value.item(), arrays=arrays, tuples=tuples, where=where)
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{where} holds {type(value).__name__}, which cannot be stored as data")


def from_json(value, *, arrays=None):
    """Inverse of :func:`to_json`; raises ValueError/TypeError on a malformed entry.

    ``arrays`` resolves ``{"__array__": name}`` references (a missing one is an error).
    """
    if isinstance(value, dict):
        if "__ndarray__" in value:
            dtype = np.dtype(value["dtype"])
            if dtype.kind not in _ARRAY_KINDS:
                raise ValueError(f"array dtype {dtype} is not numeric")
            arr = np.array(from_json(value["__ndarray__"]), dtype=dtype)
            return arr.reshape(value.get("shape", arr.shape))
        if set(value) == {"__array__"}:
            name = value["__array__"]
            if arrays is None or not isinstance(name, str) or name not in arrays:
                raise ValueError(f"the array {name!r} a JSON value refers to is missing")
            arr = np.asarray(arrays[name])
            if arr.dtype.kind not in _ARRAY_KINDS:
                raise ValueError(f"array {name!r} has dtype {arr.dtype}, which is not numeric")
            return arr.copy()
        if set(value) == {"__float__"}:
            if value["__float__"] not in ("inf", "-inf", "nan"):
                raise ValueError(f"{value['__float__']!r} is not a non-finite float")
            return float(value["__float__"])
        if set(value) == {"__tuple__"}:
            if not isinstance(value["__tuple__"], list):
                raise ValueError("a tuple must be a JSON list")
            return tuple(from_json(v, arrays=arrays) for v in value["__tuple__"])
        return {k: from_json(v, arrays=arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v, arrays=arrays) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"unexpected JSON value {value!r:.80}")


def generator_state(rng: np.random.Generator) -> dict:
    return to_json(rng.bit_generator.state)


def generator_from_state(state) -> np.random.Generator:
    """Rebuild a Generator from :func:`generator_state` (numpy's bit generators only)."""
    try:
        state = from_json(state)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"the checkpoint's `rng` is malformed: {exc}") from None
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in BIT_GENERATORS:
        raise CheckpointError(
            f"the checkpoint's `rng` uses bit generator {name!r}; expected one of "
            f"{', '.join(BIT_GENERATORS)}")
    bitgen = getattr(np.random, name)()
    try:
        bitgen.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise CheckpointError(
            f"the checkpoint's `rng` is not a valid {name} state: {exc}") from None
    return np.random.Generator(bitgen)


class FieldReader:
    """Typed access to one JSON object of a checkpoint; every error names the field.

    Examples
    --------
    >>> FieldReader({"step": 3}, "").integer("step", minimum=0)
    3
    >>> FieldReader({"step": "forty"}, "").integer("step")
    Traceback (most recent call last):
    ...
    fg2u_zo.errors.CheckpointError: checkpoint field `step` must be an integer, got 'forty'
    """

    def __init__(self, data, prefix):
        self.prefix = prefix
        if not isinstance(data, dict):
            raise self.error("", f"must be a JSON object, got {data!r:.80}")
        self.data = data

    def error(self, key, what):
        name = f"{self.prefix}.{key}" if self.prefix and key else (self.prefix or key)
        return CheckpointError(f"checkpoint field `{name}` {what}")

    def _get(self, key, default):
        if key not in self.data:
            if default is _MISSING:
                raise self.error(key, "is missing")
            return default
        return self.data[key]

    def integer(self, key, *, minimum=None, default=None):
        value = self._get(key, _MISSING if default is None else default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, got {value!r:.80}")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be >= {minimum}, got {value}")
        return value

    def number(self, key, *, minimum=None, finite=True, default=None):
        value = self._get(key, _MISSING if default is None else default)
        if isinstance(value, dict) and not finite:
            try:
                value = from_json(value)
            except (TypeError, ValueError):
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"must be a number, got {value!r:.80}")
        value = float(value)
        if finite and not math.isfinite(value):
            raise self.error(key, f"must be finite, got {value}")
        if minimum is not None and not value >= minimum:
            raise self.error(key, f"must be >= {minimum}, got {value}")
        return value

    def string(self, key, *, choices=None, optional=False):
        value = self._get(key, None if optional else _MISSING)
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.error(key, f"must be a string, got {value!r:.80}")
        if choices is not None and value not in choices:
            raise self.error(key, f"must be one of {', '.join(map(repr, choices))}, got "
                                  f"{value!r:.80}")
        return value

    def obj(self, key, *, optional=False):
        value = self._get(key, None if optional else _MISSING)
        if value is None and optional:
            return None
        if not isinstance(value, dict):
            raise self.error(key, f"must be a JSON object, got {value!r:.80}")
        return value

    def array(self, key, *, optional=False):
        value = self._get(key, None if optional else _MISSING)
        if value is None and optional:
            return None
        if not isinstance(value, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool)
                or (isinstance(v, dict) and set(v) == {"__float__"}) for v in value):
            raise self.error(key, f"must be a list of numbers, got {value!r:.80}")
        return np.asarray(from_json(value), dtype=np.float64)


_MISSING = object()


# -- noise estimates --------------------------------------------------------------------
def _noise_types():
    from ..noise.estimate import NoiseEstimate

    return {"NoiseEstimate": NoiseEstimate}


#: The type tags a checkpoint's noise estimate may carry (a closed set).
NOISE_TYPES = ("NoiseEstimate",)


def encode_noise(noise, age=0):
    """JSON description ``{"type", "data", "age"}`` of a noise estimate, or None."""
    if noise is None:
        return None
    tag = type(noise).__name__
    if tag not in NOISE_TYPES:
        raise CheckpointError(f"cannot store a noise estimate of type {tag} in a checkpoint")
    return {"type": tag, "data": to_json(noise.to_dict()), "age": int(age)}


def _annotation_kind(annotation):
    text = str(annotation).replace(" ", "")
    return {"float": "float", "int": "int", "str": "str", "bool": "bool",
            "tuple": "attempts", "float|None": "float?", "int|None": "int?",
            "np.ndarray|None": "array?", "numpy.ndarray|None": "array?"}.get(text, "scalar")


def decode_noise(encoded):
    """Inverse of :func:`encode_noise`: ``(noise, age)``; each field type-checked."""
    if encoded is None:
        return None, 0
    top = FieldReader(encoded, "noise")
    tag = top.string("type", choices=NOISE_TYPES)
    age = top.integer("age", minimum=0, default=0)
    data = FieldReader(top.obj("data"), "noise.data")
    cls = _noise_types()[tag]
    fields = cls.__dataclass_fields__
    unknown = sorted(set(data.data) - set(fields))
    if unknown:
        raise data.error(unknown[0], f"is not a field of {tag}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data.data:
            continue  # the dataclass default applies, or the constructor says what lacks
        kind = _annotation_kind(f.type)
        value = data.data[name]
        if kind == "float" or (kind == "float?" and value is not None):
            kwargs[name] = data.number(name, finite=False)
        elif kind == "int" or (kind == "int?" and value is not None):
            kwargs[name] = data.integer(name, minimum=0)
        elif kind == "str":
            kwargs[name] = data.string(name)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise data.error(name, f"must be true or false, got {value!r:.80}")
            kwargs[name] = value
        elif kind == "array?":
            kwargs[name] = data.array(name, optional=True)
        elif kind == "attempts":
            if not isinstance(value, list) or not all(
                    isinstance(a, list) and len(a) == 2 and isinstance(a[1], str)
                    and isinstance(a[0], (int, float, dict)) for a in value):
                raise data.error(name, f"must be a list of [spacing, status], got "
                                       f"{value!r:.80}")
            kwargs[name] = tuple((FieldReader({"s": a[0]}, f"noise.data.{name}")
                                  .number("s", finite=False), a[1]) for a in value)
        else:
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise data.error(name, f"must be a JSON scalar, got {value!r:.80}")
            kwargs[name] = value
    try:
        return cls(**kwargs), age
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint field `noise.data` is not a valid {tag}: "
                              f"{exc}") from None
