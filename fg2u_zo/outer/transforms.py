"""Box bounds and reparametrizations ``phi = T(z)`` of the meta-parameters.

The outer optimizer of :func:`fg2u_zo.minimize` moves an unconstrained variable ``z``;
the estimators see ``phi = T(z)``. ``T`` acts entry by entry, one kind per entry:

- ``"identity"``: ``phi = z``;
- ``"log"``: ``phi = exp(z)`` keeps ``phi > 0`` (scales, rates, conductivities);
- ``"logit"``: ``phi = lo + (hi - lo) * sigmoid(z)`` keeps ``phi`` inside finite
  bounds ``[lo, hi]`` (fractions, bounded coefficients).

Because ``T`` is elementwise, the chain rule is a product:
``dF/dz_j = dF/dphi_j * T'(z_j)``. Bounds on ``"identity"`` and ``"log"`` entries are
enforced by projection: after each optimizer step ``phi`` is clipped into ``[lo, hi]``
and ``z`` set back to ``T^{-1}(phi)``, for the clipped entries only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit

from ..errors import FG2UTypeError, FG2UValueError

__all__ = ["Bounds", "ParameterTransform", "TRANSFORM_KINDS", "as_bounds"]

TRANSFORM_KINDS = ("identity", "log", "logit")
_TINY = np.finfo(np.float64).tiny


@dataclass(frozen=True, eq=False)
class Bounds:
    """Per-parameter lower and upper bounds (``-inf``/``inf`` where unbounded)."""

    lower: np.ndarray
    upper: np.ndarray

    @property
    def active(self) -> bool:
        return bool(np.isfinite(self.lower).any() or np.isfinite(self.upper).any())

    def violations(self, phi) -> np.ndarray:
        """Indices where ``phi`` lies outside ``[lower, upper]``."""
        phi = np.asarray(phi, dtype=np.float64)
        return np.flatnonzero((phi < self.lower) | (phi > self.upper))


def _bound_array(value, num_params, name, default):
    if value is None:
        return np.full(num_params, default)
    if np.iscomplexobj(value) or isinstance(value, complex):
        raise FG2UTypeError(f"`bounds` {name} must be real, got {value!r}")
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise FG2UTypeError(
            f"`bounds` {name} must be a number or a sequence of {num_params} numbers, "
            f"got {value!r}") from None
    if arr.ndim == 0:
        arr = np.full(num_params, float(arr))
    if arr.shape != (num_params,):
        raise FG2UValueError(
            f"`bounds` {name} must be a number or have length {num_params} (one per "
            f"parameter), got shape {arr.shape}")
    nan = np.flatnonzero(np.isnan(arr))
    if nan.size:
        # NaN is more often a bug upstream than a wish for no bound: say which.
        raise FG2UValueError(
            f"`bounds` {name}[{int(nan[0])}] is nan; pass None (or {default}) for no bound "
            "on that side")
    return arr


def as_bounds(bounds, num_params: int) -> Bounds:
    """Normalize ``bounds`` to :class:`Bounds`.

    Parameters
    ----------
    bounds : None, (lo, hi) or scipy.optimize.Bounds
        ``lo`` and ``hi`` are numbers, sequences of ``num_params`` numbers, or None
        (unbounded on that side).
    num_params : int

    Examples
    --------
    >>> b = as_bounds((0.0, [1.0, 2.0]), 2)
    >>> b.lower.tolist(), b.upper.tolist()
    ([0.0, 0.0], [1.0, 2.0])
    """
    if bounds is None:
        return Bounds(np.full(num_params, -np.inf), np.full(num_params, np.inf))
    if isinstance(bounds, Bounds):
        lo, hi = bounds.lower, bounds.upper
    elif hasattr(bounds, "lb") and hasattr(bounds, "ub"):  # scipy.optimize.Bounds
        lo, hi = bounds.lb, bounds.ub
    else:
        try:
            lo, hi = bounds
        except (TypeError, ValueError):
            raise FG2UTypeError(
                "`bounds` must be a pair (lo, hi) of numbers or per-parameter sequences, or "
                f"a scipy.optimize.Bounds; got {bounds!r}") from None
    lower = _bound_array(lo, num_params, "lo", -np.inf)
    upper = _bound_array(hi, num_params, "hi", np.inf)
    bad = np.flatnonzero(lower > upper)
    if bad.size:
        raise FG2UValueError(
            f"`bounds` need lo <= hi; at indices {bad[:10].tolist()} lo = "
            f"{lower[bad[:10]].tolist()} > hi = {upper[bad[:10]].tolist()}"
            + (f" (and {bad.size - 10} more)" if bad.size > 10 else ""))
    return Bounds(lower, upper)


def _kinds_from_spec(spec, num_params):
    """Per-parameter kind names from the ``transform=`` argument."""
    if spec is None:
        return ["identity"] * num_params
    if isinstance(spec, str):
        return [_check_kind(spec, "transform")] * num_params
    try:
        items = list(spec)
    except TypeError:
        raise FG2UTypeError(
            "`transform` must be None, a name ('log', 'logit'), a sequence of one name per "
            "parameter, or a list of (indices, name) pairs; got "
            f"{type(spec).__name__}") from None
    if items and all(isinstance(it, tuple) and len(it) == 2 and isinstance(it[1], (str, type(None)))
                     and not isinstance(it[0], str) for it in items):
        kinds = ["identity"] * num_params
        for where, kind in items:
            kind = _check_kind(kind, f"transform for {where!r}")
            idx = np.arange(num_params)[where] if isinstance(where, slice) else where
            idx = np.atleast_1d(np.asarray(idx))
            if idx.dtype.kind not in "iu":
                raise FG2UTypeError(
                    f"`transform` blocks must be indexed by a slice or integer indices, got "
                    f"{where!r}")
            if idx.size and (idx.min() < -num_params or idx.max() >= num_params):
                raise FG2UValueError(
                    f"`transform` block {where!r} indexes outside 0..{num_params - 1}")
            for i in idx.tolist():
                kinds[i] = kind
        return kinds
    if len(items) != num_params:
        raise FG2UValueError(
            f"`transform` given per parameter must have length {num_params}, got "
            f"{len(items)}; or pass (indices, name) pairs, e.g. [(slice(0, 3), 'log')]")
    return [_check_kind(k, f"transform[{i}]") for i, k in enumerate(items)]


def _check_kind(kind, where):
    if kind is None:
        return "identity"
    if not isinstance(kind, str) or kind not in TRANSFORM_KINDS:
        raise FG2UValueError(
            f"`{where}` must be one of {', '.join(map(repr, TRANSFORM_KINDS))} or None, got "
            f"{kind!r}")
    return kind


def _log_inside(value, lo, hi):
    """``log(value)`` nudged by ulps until ``exp`` of it lies in ``[lo, hi]``.

    ``exp(log(x))`` can round one ulp past ``x``; a bound reached by projection must
    hold exactly, not up to rounding.
    """
    z = np.log(value)
    for _ in range(8):
        e = np.exp(z)
        if e > hi:
            z = np.nextafter(z, -np.inf)
        elif e < lo:
            z = np.nextafter(z, np.inf)
        else:
            break
    return z


@dataclass(frozen=True, eq=False)
class ParameterTransform:
    """The elementwise map ``phi = T(z)``, with the bounds it must respect.

    Build it with :meth:`from_spec`.

    Examples
    --------
    >>> T = ParameterTransform.from_spec(["log", "logit", None], 3,
    ...                                  as_bounds(([0, 0, -1], [10, 1, 1]), 3))
    >>> z = T.inverse(np.array([2.0, 0.25, 0.5]))
    >>> np.allclose(T.forward(z), [2.0, 0.25, 0.5])
    True
    """

    kinds: tuple
    bounds: Bounds

    @classmethod
    def from_spec(cls, spec, num_params: int, bounds: Bounds) -> "ParameterTransform":
        """Resolve ``transform=`` (None, a name, one name per parameter, or
        ``[(indices, name), ...]`` blocks) against ``num_params`` and ``bounds``."""
        kinds = tuple(_kinds_from_spec(spec, num_params))
        k = np.array(kinds)
        lg = np.flatnonzero(k == "logit")
        unbounded = lg[~(np.isfinite(bounds.lower[lg]) & np.isfinite(bounds.upper[lg])
                         & (bounds.upper[lg] > bounds.lower[lg]))]
        if unbounded.size:
            raise FG2UValueError(
                f"the 'logit' transform needs finite bounds lo < hi; parameters "
                f"{unbounded[:10].tolist()} have none: pass bounds=(lo, hi)")
        return cls(kinds, bounds)

    def _masks(self):
        k = np.array(self.kinds)
        return k == "log", k == "logit"

    def forward(self, z) -> np.ndarray:
        """``phi = T(z)``."""
        z = np.asarray(z, dtype=np.float64)
        phi = z.copy()
        log, lg = self._masks()
        phi[log] = np.exp(z[log])
        lo, hi = self.bounds.lower[lg], self.bounds.upper[lg]
        # expit saturates to exactly 0 or 1 for large |z|; clip guards lo + (hi-lo)*1
        # rounding a hair above hi.
        phi[lg] = np.clip(lo + (hi - lo) * expit(z[lg]), lo, hi)
        return phi

    def inverse(self, phi) -> np.ndarray:
        """``z = T^{-1}(phi)``; raises if ``phi`` is outside the transform's domain."""
        phi = np.asarray(phi, dtype=np.float64)
        z = phi.copy()
        log, lg = self._masks()
        bad = np.flatnonzero(log & ~(phi > 0))
        if bad.size:
            raise FG2UValueError(
                f"the 'log' transform needs phi > 0; phi{bad[:10].tolist()} = "
                f"{phi[bad[:3]].tolist()}")
        z[log] = np.log(phi[log])
        lo, hi = self.bounds.lower[lg], self.bounds.upper[lg]
        inside = (phi[lg] > lo) & (phi[lg] < hi)
        if not inside.all():
            idx = np.flatnonzero(lg)[~inside]
            raise FG2UValueError(
                f"the 'logit' transform needs lo < phi < hi strictly; phi{idx[:10].tolist()} = "
                f"{phi[idx[:3]].tolist()} is on or outside its bounds: start inside them")
        z[lg] = logit((phi[lg] - lo) / (hi - lo))
        return z

    def chain(self, z, grad_phi) -> np.ndarray:
        """``dF/dz = dF/dphi * T'(z)``, elementwise."""
        z = np.asarray(z, dtype=np.float64)
        d = np.ones_like(z)
        log, lg = self._masks()
        d[log] = np.exp(z[log])
        s = expit(z[lg])
        d[lg] = (self.bounds.upper[lg] - self.bounds.lower[lg]) * s * (1.0 - s)
        return np.asarray(grad_phi, dtype=np.float64) * d

    def z_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The box of ``z`` that maps into the bounds: the bounds themselves for
        identity entries, their logarithms for ``'log'`` entries (``-inf`` for a lower
        bound <= 0), none for ``'logit'`` entries (they never leave the bounds)."""
        lower, upper = self.bounds.lower.copy(), self.bounds.upper.copy()
        log, lg = self._masks()
        with np.errstate(divide="ignore"):
            lower[log] = np.where(lower[log] > 0, np.log(np.maximum(lower[log], _TINY)),
                                  -np.inf)
            upper[log] = np.log(upper[log])
        lower[lg], upper[lg] = -np.inf, np.inf
        return lower, upper

    def project(self, z) -> tuple[np.ndarray, np.ndarray]:
        """Clip ``phi = T(z)`` into the bounds; return ``(z', changed)``.

        Only entries whose ``phi`` left the bounds are changed, so a step that stays
        feasible is reproduced bit for bit. ``'logit'`` entries never need it.
        """
        z = np.asarray(z, dtype=np.float64)
        if not self.bounds.active:
            return z, np.zeros(z.shape, dtype=bool)
        log, lg = self._masks()
        phi = self.forward(z)
        lower = self.bounds.lower
        changed = ((phi < lower) | (phi > self.bounds.upper)) & ~lg
        if not changed.any():
            return z, changed
        z = z.copy()
        # A log entry cannot reach a lower bound <= 0 anyway; clip to tiny for the log.
        lower_log = np.where(log, np.maximum(lower, _TINY), lower)
        clipped = np.clip(phi, lower_log, self.bounds.upper)
        z[changed & ~log] = clipped[changed & ~log]
        for i in np.flatnonzero(changed & log):
            z[i] = _log_inside(clipped[i], lower[i], self.bounds.upper[i])
        return z, changed

    def config(self) -> list:
        """One kind name per parameter (JSON), for checkpoints."""
        return list(self.kinds)
