"""Meta-gradient estimators, one idea a module.

``base`` (the Estimator protocol and the projection combine), ``reductions`` (what a finite-difference estimate keeps of each
perturbed solve: the projection, the value difference, or the outputs for the
sketch), ``zeroth_order`` (FG2U-ZO, black-box ES, coordinate differences),
``exact`` (FG2U and reverse-mode RGU on a torch inner solver), ``truncated`` (TRGU),
``implicit`` (Neumann). Nothing is imported here: ``fg2u_zo`` re-exports the public
names lazily, so a parallel worker never pays for torch. :func:`estimator_classes`
names the public estimator classes (what a checkpoint or a config may name).
"""

import importlib

#: The public estimator classes by name, and the module of each.
_CLASSES = {"FG2UZO": "zeroth_order", "BlackBoxES": "zeroth_order",
            "CoordinateFD": "zeroth_order", "FG2U": "exact", "RGU": "exact",
            "TRGU": "truncated", "Neumann": "implicit"}


def estimator_classes() -> dict:
    """The public estimator classes by name (``"FG2UZO"``, ``"RGU"`` ...): the closed
    set a checkpoint or a TOML config may name."""
    return {name: getattr(importlib.import_module(f".{module}", __name__), name)
            for name, module in _CLASSES.items()}
