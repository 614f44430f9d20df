"""What identifies an inner solver's configuration: the fingerprint a run's journal of
finished solves is checked against before it replays any (see
:mod:`fg2u_zo.persist.journal`).

In order of preference:

- the solver's own ``fingerprint()`` method (the adapters of :mod:`solvers` have one:
  the command, the template text, digests of the staged files, ...);
- a ``version`` attribute the user sets on the solver (``solver.version = "2"``), for
  a change the code does not show (new data files, a recompiled library);
- for a Python function, method or callable object: its qualified name and a digest of
  its code (byte code, constants and names, nested functions included), so that an
  edited function does not replay the outputs of the old one. Values a closure captures
  and the module's name (``__main__`` in a script, its file name when imported) are
  not part of it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import types

__all__ = ["solver_fingerprint"]


def _code_digest(code, h):
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_digest(const, h)
        else:
            h.update(repr(const).encode())


def _callable_code(solver):
    if isinstance(solver, (types.FunctionType, types.MethodType)):
        return getattr(solver, "__code__", None) or getattr(
            getattr(solver, "__func__", None), "__code__", None)
    call = getattr(type(solver), "__call__", None)
    return getattr(call, "__code__", None)


def _name(obj):
    # The qualified name only: the module of a script's solver is "__main__" when the
    # script runs and its file name when a resumption imports it.
    target = obj if isinstance(obj, (types.FunctionType, types.MethodType, type)) else type(obj)
    return str(getattr(target, "__qualname__", type(target).__name__))


def solver_fingerprint(solver) -> dict:
    """JSON data identifying ``solver``'s configuration (see the module docstring).

    Examples
    --------
    >>> def solve(phi):
    ...     return 2.0 * phi
    >>> a = solver_fingerprint(solve)
    >>> def solve(phi):
    ...     return 3.0 * phi
    >>> a == solver_fingerprint(solve), a["callable"].endswith("solve")
    (False, True)
    """
    out = {"callable": _name(solver)}
    version = getattr(solver, "version", None)
    if isinstance(version, (str, int, float)) and not isinstance(version, bool):
        out["version"] = version
    own = getattr(solver, "fingerprint", None)
    if callable(own) and not isinstance(solver, type):
        try:
            data = json.dumps(own(), sort_keys=True, default=repr)
        except Exception as exc:  # a broken fingerprint must not stop a run
            data = f"fingerprint() raised {type(exc).__name__}"
        out["fingerprint"] = hashlib.sha256(data.encode()).hexdigest()[:32]
        return out
    if isinstance(solver, functools.partial):
        inner = solver_fingerprint(solver.func)
        inner["partial"] = hashlib.sha256(repr((solver.args, sorted(
            solver.keywords.items()))).encode()).hexdigest()[:32]
        return inner
    code = _callable_code(solver)
    if code is not None:
        h = hashlib.sha256()
        _code_digest(code, h)
        out["code"] = h.hexdigest()[:32]
    return out
