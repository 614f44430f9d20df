"""Input-deck templates of :class:`solvers.Subprocess`: parsed once, filled per call.

Placeholders use Python's format syntax and are filled with numbers only: ``{phi[3]}``,
``{phi}`` (the whole vector, space separated), ``{n}``, ``{seed}`` and the ``names`` of
the entries of ``phi``. Numbers are written with ``repr(float)`` unless the placeholder
has a format spec.
"""

from __future__ import annotations

import string

from fg2u_zo.errors import FG2UValueError

__all__ = ["parse_template", "render_template", "format_number"]


def parse_template(text, names):
    """Split the template once into (literal, key, index, spec) pieces; refuse unknowns."""
    allowed = {"phi", "n", "seed", *(names or ())}
    fields = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise FG2UValueError(f"`template` is not a valid format string ({exc}); write "
                             "literal braces as '{{' and '}}'") from None
    for literal, field, spec, conversion in parsed:
        if field is None:
            fields.append((literal, None, None, None))
            continue
        key, index = field, None
        if "[" in field:
            key, _, rest = field.partition("[")
            if key != "phi" or not rest.endswith("]"):
                raise FG2UValueError(f"template placeholder {{{field}}}: only phi can be "
                                     "indexed, as in {phi[3]}")
            try:
                index = int(rest[:-1])
            except ValueError:
                raise FG2UValueError(f"template placeholder {{{field}}}: the index must be "
                                     "an integer, as in {phi[3]}") from None
        if key not in allowed or "." in field or conversion:
            known = ", ".join("{" + a + "}" for a in sorted(allowed))
            raise FG2UValueError(f"unknown template placeholder {{{field}}}; known: {known} "
                                 "and {phi[i]} (literal braces are written '{{' and '}}')")
        if spec:
            try:
                format(1.0, spec)
            except ValueError:
                raise FG2UValueError(f"template placeholder {{{field}:{spec}}}: invalid "
                                     "format spec for a number") from None
        fields.append((literal, key, index, spec))
    return fields


def render_template(fields, phi, names, seed):
    """The template text for ``phi`` (a finite 1-D float64 array) and ``seed``.

    Raises FG2UValueError (a deterministic error, never worth a retry) when ``phi`` does
    not fit the template: a wrong length for ``names``, an index out of range, a
    ``{seed}`` placeholder without a seed.
    """
    named = None
    if names is not None and len(names) != phi.shape[0]:
        raise FG2UValueError(f"`names` has {len(names)} entries but `phi` has "
                             f"{phi.shape[0]}; give one name per entry of phi")
    parts = []
    for literal, key, index, spec in fields:
        parts.append(literal)
        if key is None:
            continue
        if key == "phi":
            if index is None:
                parts.append(" ".join(format_number(v, spec) for v in phi.tolist()))
                continue
            if not -phi.shape[0] <= index < phi.shape[0]:
                raise FG2UValueError(f"template placeholder {{phi[{index}]}} is out of "
                                     f"range for phi of length {phi.shape[0]}")
            value = float(phi[index])
        elif key == "n":
            value = phi.shape[0]
        elif key == "seed":
            if seed is None:
                raise FG2UValueError("the template uses {seed} but the call got no "
                                     "`seed`; call solver(phi, seed=...)")
            try:
                value = int(seed)
            except (TypeError, ValueError):
                raise FG2UValueError(f"`seed` must be an int, got {seed!r}") from None
        else:
            if named is None:
                named = dict(zip(names, phi.tolist()))
            value = named[key]
        parts.append(format_number(value, spec))
    return "".join(parts)


def format_number(value, spec):
    """``value`` with ``spec``, or its shortest round-tripping repr when there is none."""
    if spec:
        return format(value, spec)
    # repr of a Python float is the shortest string that reads back to the same double.
    return repr(value) if isinstance(value, float) else str(value)
