"""Random directions with identity second moment, E[v v^T] = I.

All directions are drawn in the calling process from one
``numpy.random.Generator``: the evaluation backend never sees the generator, so a
seed gives the same directions (and the same estimate) whatever the backend or the
number of workers.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import ortho_group

from .validation import as_generator, check_choice, check_positive_int
from .errors import FG2UValueError

__all__ = ["DIRECTION_FAMILIES", "sample_directions"]

#: Families accepted by ``directions=``; each satisfies E[v v^T] = I.
DIRECTION_FAMILIES = ("gaussian", "rademacher", "sphere", "orthogonal", "coordinate")


def _gaussian(rng, b, n):
    return rng.standard_normal((b, n))


def _rademacher(rng, b, n):
    return 2.0 * rng.integers(0, 2, size=(b, n)).astype(np.float64) - 1.0


def _sphere(rng, b, n):
    v = rng.standard_normal((b, n))
    v *= np.sqrt(n) / np.linalg.norm(v, axis=1, keepdims=True)
    return v


def _blocks(b, n):
    """Sizes of the independent blocks of at most ``n`` rows that make up ``b`` rows."""
    full, rest = divmod(b, n)
    return [n] * full + ([rest] if rest else [])


def _orthogonal(rng, b, n):
    # Rows of a Haar-distributed orthogonal matrix are each uniform on the unit sphere,
    # so sqrt(n) * row has identity second moment, and rows within a block are
    # orthogonal: b = n directions of one block span the whole space.
    if n == 1:
        return _rademacher(rng, b, 1)
    rows = [ortho_group.rvs(n, random_state=rng)[:m] for m in _blocks(b, n)]
    return np.sqrt(n) * np.concatenate(rows, axis=0)


def _coordinate(rng, b, n):
    # Basis vectors drawn without replacement within each block of n: b = n gives a
    # permutation of the full basis, for which the estimator is exact.
    idx = np.concatenate([rng.permutation(n)[:m] for m in _blocks(b, n)])
    v = np.zeros((b, n))
    v[np.arange(b), idx] = np.sqrt(n)
    return v


_SAMPLERS = {
    "gaussian": _gaussian,
    "rademacher": _rademacher,
    "sphere": _sphere,
    "orthogonal": _orthogonal,
    "coordinate": _coordinate,
}


def sample_directions(family: str, num_params: int, num_directions: int, rng=None, *,
                      antithetic: bool = False) -> np.ndarray:
    """Draw ``num_directions`` random directions in R^num_params.

    Parameters
    ----------
    family : {"gaussian", "rademacher", "sphere", "orthogonal", "coordinate"}
        ``gaussian``: i.i.d. N(0, I). ``rademacher``: i.i.d. signs. ``sphere``: uniform on
        the sphere of radius sqrt(N). ``orthogonal``: rows of independent Haar orthogonal
        N x N matrices scaled by sqrt(N) (``num_directions`` may exceed N: further blocks
        are independent). ``coordinate``: basis vectors scaled by sqrt(N), drawn without
        replacement within blocks of N.
    num_params : int
        Dimension N.
    num_directions : int
        Number of rows b.
    rng : None, int or numpy.random.Generator
        Source of randomness.
    antithetic : bool
        If True, return pairs ``v, -v`` in consecutive rows (b must be even).

    Returns
    -------
    ndarray, shape (num_directions, num_params)
        Each row v satisfies E[v v^T] = I.

    Examples
    --------
    >>> V = sample_directions("rademacher", 3, 4, rng=0)
    >>> V.shape, bool(np.all(np.abs(V) == 1))
    ((4, 3), True)
    """
    check_choice(family, "directions", DIRECTION_FAMILIES)
    n = check_positive_int(num_params, "num_params")
    b = check_positive_int(num_directions, "num_directions")
    rng = as_generator(rng)
    if antithetic:
        if b % 2:
            raise FG2UValueError(
                f"`num_directions` must be even with antithetic=True (pairs v, -v), got {b}")
        half = _SAMPLERS[family](rng, b // 2, n)
        out = np.empty((b, n))
        out[0::2] = half
        out[1::2] = -half
        return out
    return _SAMPLERS[family](rng, b, n)
