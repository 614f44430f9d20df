"""Steppers of the outer loop and the registry that names them.

A stepper moves ``z`` (see :mod:`fg2u_zo.outer.steppers.base` for the protocol).
:func:`fg2u_zo.minimize` takes ``optimizer=`` as

- a registered name (``"adam"``, ``"sgd"``, ``"gauss-newton"``, or one added with
  :func:`register_stepper`), case-insensitive;
- the name of any ``torch.optim`` optimizer (``"Rprop"``, ``"rmsprop"``), or its
  ``"torch.optim:Rprop"`` form as a checkpoint records it;
- a ``torch.optim.Optimizer`` class;
- a :class:`~fg2u_zo.outer.steppers.base.Stepper` instance.

Names may be registered lazily as ``"module:attr"`` strings: the module is imported
only when the name is asked for, so registering costs no import.

A registered factory is called as ``factory(**optimizer_options)``. A resumed run
rebuilds its stepper from the configuration stored in the checkpoint, through this
registry only: ``factory.from_config(config)`` when the factory has it (every
:class:`Stepper` subclass does), else ``factory(**config.get("options", {}))``.
Nothing else in a checkpoint chooses what is imported.
"""

from __future__ import annotations

import difflib
import importlib

from ...errors import FG2UTypeError, FG2UValueError
from .base import EXTRAS, Stepper, StepperState, StepUpdate, check_extras, solve_points

__all__ = ["register_stepper", "get_stepper", "make_stepper", "stepper_from_config",
           "stepper_names", "Stepper", "StepperState", "StepUpdate", "EXTRAS", "solve_points"]

_REGISTRY: dict = {}
#: The prefix a checkpoint gives torch.optim optimizers (``"torch.optim:Adam"``).
TORCH_PREFIX = "torch.optim:"


def register_stepper(name: str, factory, *, overwrite: bool = False) -> None:
    """Make ``optimizer=name`` build a stepper.

    Parameters
    ----------
    name : str
        The key, matched case-insensitively (``"gauss-newton"``).
    factory : callable or str
        ``factory(**optimizer_options) -> Stepper`` (a Stepper subclass is one), or a
        ``"module:attr"`` string naming it, imported on first use.
    overwrite : bool
        Replace an existing registration (else an error).

    Examples
    --------
    >>> import fg2u_zo as fz
    >>> fz.register_stepper("my-adam", "fg2u_zo.outer.steppers.torch_optim:adam_factory",
    ...                     overwrite=True)
    >>> from fg2u_zo.outer.steppers import make_stepper
    >>> make_stepper("my-adam").config()["name"]
    'torch.optim:Adam'
    """
    if not isinstance(name, str) or not name.strip():
        raise FG2UTypeError(f"`name` must be a non-empty string, got {name!r}")
    if isinstance(factory, str):
        module, _, attr = factory.partition(":")
        if not module or not attr:
            raise FG2UValueError(
                f"`factory` given as a string must be 'module:attr', got {factory!r}")
    elif not callable(factory):
        raise FG2UTypeError(
            f"`factory` must be a callable returning a Stepper or a 'module:attr' string, "
            f"got {type(factory).__name__}")
    key = name.strip().lower()
    if key in _REGISTRY and not overwrite and _REGISTRY[key] != factory:
        raise FG2UValueError(
            f"a stepper named {name!r} is already registered; pass overwrite=True to "
            "replace it")
    _REGISTRY[key] = factory


def stepper_names() -> list:
    """Registered names and the torch.optim optimizers usable as steppers."""
    from .torch_optim import torch_optimizer_names

    return sorted(set(_REGISTRY) | set(torch_optimizer_names()))


def get_stepper(name: str):
    """The factory registered under ``name`` (imported now if registered lazily).

    Raises
    ------
    FG2UValueError
        For an unknown name, with the closest known names.
    """
    from .torch_optim import torch_factory, torch_optimizer_names

    if not isinstance(name, str):
        raise FG2UTypeError(f"a stepper name must be a string, got {type(name).__name__}")
    key = name.strip().lower()
    if key.startswith(TORCH_PREFIX.lower()):
        key = key[len(TORCH_PREFIX):]
        names = torch_optimizer_names()
        if key in names:
            return torch_factory(names[key])
        raise _unknown(name)
    if key in _REGISTRY:
        factory = _REGISTRY[key]
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            try:
                factory = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise FG2UValueError(
                    f"the stepper {name!r} is registered as {factory!r}, which cannot be "
                    f"imported: {exc}") from None
        return factory
    names = torch_optimizer_names()
    if key in names:
        return torch_factory(names[key])
    raise _unknown(name)


def _unknown(name):
    from .torch_optim import torch_optimizer_names

    known = sorted(set(_REGISTRY)) + sorted(
        cls.__name__ for cls in torch_optimizer_names().values())
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.strip().lower().removeprefix(
        TORCH_PREFIX.lower()), list(lowered), n=3, cutoff=0.6)
    hint = (" did you mean " + " or ".join(repr(lowered[c]) for c in close) + "?"
            if close else "")
    return FG2UValueError(
        f"`optimizer` {name!r} is not a known stepper;{hint} use 'adam', 'sgd', "
        f"'gauss-newton', the name of a torch.optim optimizer (e.g. 'RMSprop'), a "
        f"torch.optim.Optimizer class, a fz.Stepper instance, or a name added with "
        f"fz.register_stepper")


def make_stepper(optimizer="adam", options=None) -> Stepper:
    """Resolve ``minimize``'s ``optimizer=`` and ``optimizer_options=`` to a Stepper.

    Examples
    --------
    >>> make_stepper("rprop").config()
    {'name': 'torch.optim:Rprop', 'options': {}}
    >>> from fg2u_zo.errors import FG2UValueError
    >>> try:
    ...     make_stepper("Rpropp")
    ... except FG2UValueError as exc:
    ...     print("did you mean 'Rprop'" in str(exc))
    True
    """
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise FG2UTypeError(
            f"`optimizer_options` must be a dict, got {type(options).__name__}")
    if isinstance(optimizer, Stepper):
        if options:
            raise FG2UValueError(
                "`optimizer_options` are for an optimizer given by name or class; a "
                "Stepper instance carries its own configuration")
        check_extras(optimizer)
        return optimizer
    if isinstance(optimizer, str):
        factory = get_stepper(optimizer)
    elif isinstance(optimizer, type) and issubclass(optimizer, Stepper):
        factory = optimizer
    else:
        from .torch_optim import as_torch_optimizer_class, torch_factory

        factory = torch_factory(as_torch_optimizer_class(optimizer))
    try:
        stepper = factory(**options)
    except TypeError as exc:
        raise FG2UTypeError(
            f"cannot build the stepper {optimizer!r} with optimizer_options={options!r}: "
            f"{exc}") from None
    if not isinstance(stepper, Stepper):
        raise FG2UTypeError(
            f"the stepper factory of {optimizer!r} returned {type(stepper).__name__}, not "
            "a fz.Stepper")
    check_extras(stepper)
    return stepper


def stepper_from_config(config: dict) -> Stepper:
    """Rebuild the stepper a checkpoint recorded, through the registry only.

    Raises
    ------
    FG2UValueError
        When its name is not registered (register it, or pass ``optimizer=``).
    """
    from ...errors import CheckpointError

    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise CheckpointError("the checkpoint's `config.optimizer` must be a JSON object "
                              "with a string `name`")
    try:
        factory = get_stepper(config["name"])
    except FG2UValueError as exc:
        raise CheckpointError(
            f"cannot rebuild the checkpoint's stepper: {exc}; pass optimizer= as in the "
            "original run") from None
    try:
        from_config = getattr(factory, "from_config", None)
        if from_config is not None:
            stepper = from_config(config)
        else:
            options = config.get("options", {})
            if not isinstance(options, dict):
                raise TypeError("`options` must be a JSON object")
            stepper = factory(**options)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"cannot rebuild the checkpoint's stepper {config['name']!r} from "
            f"config.optimizer = {config!r}: {exc}") from None
    if not isinstance(stepper, Stepper):
        raise CheckpointError(
            f"the stepper factory of {config['name']!r} returned {type(stepper).__name__}")
    return stepper


register_stepper("adam", "fg2u_zo.outer.steppers.torch_optim:adam_factory")
register_stepper("sgd", "fg2u_zo.outer.steppers.torch_optim:sgd_factory")
register_stepper("gauss-newton", "fg2u_zo.outer.steppers.gauss_newton:GaussNewton")
