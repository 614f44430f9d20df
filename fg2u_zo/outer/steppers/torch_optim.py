"""A ``torch.optim`` optimizer as a stepper: the default first-order outer step.

Each update builds the optimizer on a float64 leaf tensor holding ``z``, loads the state
it was given, sets ``z.grad`` to the chain-rule gradient ``dF/dz = g * T'(z)``, sets the
step's learning rate on every parameter group and calls ``step()``. The run projects
the new ``z`` onto the bounds. This is, operation for operation, what a persistent
optimizer object does, so the trajectory is the same bit for bit.

The optimizer's ``state_dict()`` becomes a :class:`StepperState`: every tensor of its
``state`` goes into ``arrays`` as a numpy array of the same dtype (Adam's ``step`` stays
float32), everything else into ``data`` as it is; the checkpoint stores both through
the package's one codec (:mod:`fg2u_zo.persist.codec`: tuples kept apart from lists,
non-finite floats tagged). No ``torch.save``, no pickles; the round trip is exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch

from ...errors import FG2UTypeError, FG2UValueError
from ...persist.codec import to_json
from .base import Stepper, StepperState, StepUpdate

__all__ = ["TorchOptimizer", "torch_factory", "torch_optimizer_names",
           "as_torch_optimizer_class", "encode_optimizer_state", "decode_optimizer_state"]

#: Optimizers a stochastic gradient cannot drive.
_REFUSED = ("LBFGS",)


def torch_optimizer_names() -> dict:
    """Lower-case name -> class of every usable ``torch.optim`` optimizer."""
    out = {}
    for name in dir(torch.optim):
        cls = getattr(torch.optim, name)
        if (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)
                and cls is not torch.optim.Optimizer):
            out[name.lower()] = cls
    return out


def as_torch_optimizer_class(optimizer):
    """Check that ``optimizer`` is a usable ``torch.optim.Optimizer`` class."""
    if isinstance(optimizer, torch.optim.Optimizer):
        raise FG2UTypeError(
            "`optimizer` must be an optimizer class, not an instance: minimize builds it on "
            "its own parameter tensor; pass e.g. optimizer=torch.optim.RMSprop and its "
            "options as optimizer_options={...}")
    if not (isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
        raise FG2UTypeError(
            f"`optimizer` must be a name, a torch.optim.Optimizer class or a fz.Stepper, "
            f"got {type(optimizer).__name__}")
    if optimizer.__name__ in _REFUSED and getattr(torch.optim, optimizer.__name__,
                                                   None) is optimizer:
        raise FG2UValueError(
            "`optimizer` LBFGS needs a closure that re-evaluates the loss exactly, which a "
            "stochastic meta-gradient cannot give; use 'adam', 'sgd' or RMSprop")
    return optimizer


class _TorchFactory:
    """``factory(**options) -> TorchOptimizer(cls, options)`` for the registry."""

    def __init__(self, cls):
        self.cls = as_torch_optimizer_class(cls)

    def __call__(self, **options):
        return TorchOptimizer(self.cls, options)

    def from_config(self, config):
        return TorchOptimizer.from_config(config)

    def __eq__(self, other):
        return isinstance(other, _TorchFactory) and other.cls is self.cls

    def __hash__(self):
        return hash(self.cls)


def torch_factory(cls):
    """The registry factory of a ``torch.optim`` class."""
    return _TorchFactory(cls)


def adam_factory(**options):
    """``optimizer="adam"``."""
    return TorchOptimizer(torch.optim.Adam, options)


def sgd_factory(**options):
    """``optimizer="sgd"``."""
    return TorchOptimizer(torch.optim.SGD, options)


# -- state <-> arrays and JSON -----------------------------------------------------------
def encode_optimizer_state(state_dict: dict) -> StepperState:
    """A torch optimizer ``state_dict()`` as arrays (tensors, same dtype) and plain data.

    Tensors go into ``arrays`` as ``"state.<param>.<key>"``; ``data["tensors"]`` lists,
    per parameter, which keys they were; the rest (tuples included) stays as it is, and
    the checkpoint's codec (:mod:`fg2u_zo.persist.codec`) stores it exactly.
    """
    arrays, state, tensors = {}, {}, {}
    for pid, entries in state_dict["state"].items():
        plain, keys = {}, []
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                arrays[f"state.{pid}.{key}"] = value.detach().cpu().numpy().copy()
                keys.append(key)
            else:
                plain[key] = value
        state[str(pid)] = plain
        tensors[str(pid)] = keys
    data = {"state": state, "tensors": tensors,
            "param_groups": [dict(group) for group in state_dict["param_groups"]]}
    try:
        to_json(data, tuples=True, where="optimizer state")
    except TypeError as exc:
        raise FG2UTypeError(f"the optimizer state cannot be stored in a checkpoint: {exc}"
                            ) from None
    return StepperState(arrays=arrays, data=data)


def decode_optimizer_state(state: StepperState) -> dict:
    """Inverse of :func:`encode_optimizer_state` (tensors are fresh copies).

    Raises
    ------
    ValueError
        When the data is not an encoded optimizer state.
    """
    data = state.data
    if not isinstance(data, dict) or not isinstance(data.get("state"), dict) \
            or not isinstance(data.get("tensors"), dict) \
            or not isinstance(data.get("param_groups"), list):
        raise ValueError("the optimizer state must be a JSON object with `state`, `tensors` "
                         "(objects) and `param_groups` (list)")
    out_state = {}
    for pid, entries in data["state"].items():
        keys = data["tensors"].get(pid, [])
        if not (isinstance(pid, str) and pid.isdigit()) or not isinstance(entries, dict) \
                or not isinstance(keys, list):
            raise ValueError(f"optimizer state key {pid!r} must be a parameter index with "
                             "an object of entries")
        decoded = dict(entries)
        for key in keys:
            name = f"state.{pid}.{key}"
            if name not in state.arrays:
                raise ValueError(f"optimizer state [{pid}][{key!r}] needs the array "
                                 f"{name!r}, which is missing")
            arr = np.asarray(state.arrays[name])
            if arr.dtype.kind not in "fiub":
                raise ValueError(f"optimizer state array {name!r} has dtype {arr.dtype}")
            decoded[key] = torch.from_numpy(arr.copy())
        out_state[int(pid)] = decoded
    return {"state": out_state, "param_groups": [dict(g) for g in data["param_groups"]]}


# -- the stepper -------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TorchOptimizer(Stepper):
    """A ``torch.optim`` optimizer driven by meta-gradient estimates.

    Parameters
    ----------
    optimizer_class : type
        A ``torch.optim.Optimizer`` subclass (not LBFGS: it needs exact re-evaluation).
    options : dict
        Keyword arguments of the optimizer besides ``lr`` (``{"betas": (0.9, 0.99)}``,
        ``{"momentum": 0.9}``).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from fg2u_zo.outer.transforms import ParameterTransform, as_bounds
    >>> from fg2u_zo.result import MetaGradient
    >>> sgd = TorchOptimizer(torch.optim.SGD)
    >>> T = ParameterTransform.from_spec(None, 2, as_bounds(None, 2))
    >>> g = MetaGradient(grad=np.array([1.0, -2.0]), value=0.5, stderr=np.zeros(2),
    ...                  nfev=1, num_directions=0)
    >>> up = sgd.update(sgd.init(np.zeros(2)), z=np.zeros(2), lr=0.1, estimate=g,
    ...                 transform=T)
    >>> up.z.tolist()
    [-0.1, 0.2]
    """

    optimizer_class: type
    options: dict = field(default_factory=dict)

    name: ClassVar[str] = "torch"
    extras: ClassVar[frozenset] = frozenset({"estimate", "transform"})
    uses_lr: ClassVar[bool] = True

    def __post_init__(self):
        as_torch_optimizer_class(self.optimizer_class)
        if not isinstance(self.options, dict):
            raise FG2UTypeError(
                f"`optimizer_options` must be a dict, got {type(self.options).__name__}")
        if "lr" in self.options:
            raise FG2UValueError(
                "pass the learning rate as minimize(lr=...) (or Phase(lr=...)), not in "
                "optimizer_options: the run sets it at every step from the schedule")
        # Fail now, not at step 0, for options the optimizer does not take.
        self._build(torch.zeros(1, dtype=torch.float64, requires_grad=True))

    def _build(self, param):
        try:
            return self.optimizer_class([param], lr=1e-3, **self.options)
        except (TypeError, ValueError) as exc:
            raise FG2UTypeError(
                f"cannot build optimizer {self.optimizer_class.__name__} with "
                f"optimizer_options={self.options!r}: {exc}") from None

    def config(self) -> dict:
        cls = self.optimizer_class
        if getattr(torch.optim, cls.__name__, None) is cls:
            name = f"torch.optim:{cls.__name__}"
        else:
            name = f"{cls.__module__}:{cls.__qualname__}"
        return {"name": name, "options": to_json(self.options)}

    @classmethod
    def from_config(cls, config: dict) -> "TorchOptimizer":
        name = config.get("name", "")
        attr = name[len("torch.optim:"):] if name.startswith("torch.optim:") else ""
        optimizer_class = getattr(torch.optim, attr, None) if attr else None
        if not (isinstance(optimizer_class, type)
                and issubclass(optimizer_class, torch.optim.Optimizer)):
            raise ValueError(f"{name!r} is not a torch.optim optimizer")
        options = config.get("options", {})
        if not isinstance(options, dict):
            raise TypeError("`options` must be a JSON object")
        return cls(optimizer_class, dict(options))

    def init(self, z0, **extra) -> StepperState:
        z = torch.tensor(np.asarray(z0, dtype=np.float64), dtype=torch.float64,
                         requires_grad=True)
        return encode_optimizer_state(self._build(z).state_dict())

    def check_state(self, state: StepperState, num_params: int) -> None:
        for name, arr in state.arrays.items():
            arr = np.asarray(arr)
            if arr.ndim and arr.shape != (num_params,):
                raise ValueError(f"optimizer state array {name!r} has shape {arr.shape}, "
                                 f"expected ({num_params},)")
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise ValueError(f"optimizer state array {name!r} is not finite")
        z = torch.zeros(num_params, dtype=torch.float64, requires_grad=True)
        try:
            self._build(z).load_state_dict(decode_optimizer_state(state))
        except (KeyError, RuntimeError, IndexError) as exc:
            raise ValueError(f"the optimizer state does not fit "
                             f"{self.optimizer_class.__name__}: {exc}") from None

    def update(self, state: StepperState, *, z, lr, estimate=None, transform=None,
               **extra) -> StepUpdate:
        g = estimate
        z = np.asarray(z, dtype=np.float64)
        grad_z = transform.chain(z, g.grad)
        param = torch.tensor(z, dtype=torch.float64, requires_grad=True)
        optimizer = self._build(param)
        optimizer.load_state_dict(decode_optimizer_state(state))
        param.grad = torch.from_numpy(np.ascontiguousarray(grad_z, dtype=np.float64))
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        z_new = param.detach().numpy().copy()
        return StepUpdate(z=z_new, state=encode_optimizer_state(optimizer.state_dict()),
                          phi=transform.forward(z), value=float(g.value), grad=g.grad,
                          meta_gradient=g)
