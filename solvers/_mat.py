"""Read space-time data sets stored in the layout of Raissi et al.'s ``.mat`` files.

Raissi, Perdikaris & Karniadakis (PINNs, 2019) ship their PDE data sets (Burgers, KdV,
Allen-Cahn, ...) as MATLAB files with a spatial grid ``x``, a time grid ``tt`` (or ``t``)
and the solution ``uu`` (or ``usol`` / ``u``) stored as ``(nx, nt)``: one column per time.
"""

from __future__ import annotations

import os

import numpy as np

from fg2u_zo.errors import FG2UValueError

__all__ = ["load_raissi_mat"]

# Key names tried in order; the first one present wins.
_X_KEYS = ("x",)
_T_KEYS = ("tt", "t")
_U_KEYS = ("uu", "usol", "u")


def _pick(data, keys, what, path):
    for key in keys:
        if key in data:
            return key, np.asarray(data[key])
    present = sorted(k for k in data if not k.startswith("__"))
    raise FG2UValueError(
        f"{path}: no {what} array: looked for key(s) {', '.join(map(repr, keys))}, "
        f"the file holds {present}. Rename the variable or load the file yourself.")


def _grid(key, arr, path):
    if arr.ndim > 2 or (arr.ndim == 2 and min(arr.shape) != 1):
        raise FG2UValueError(
            f"{path}: {key!r} must be a vector (1 x n or n x 1), got shape {arr.shape}")
    grid = arr.astype(np.float64).ravel()
    if grid.size < 2 or not np.all(np.isfinite(grid)) or not np.all(np.diff(grid) > 0):
        raise FG2UValueError(
            f"{path}: {key!r} must hold at least 2 finite, strictly increasing values")
    return grid


def load_raissi_mat(path):
    """Load ``(x, t, u)`` from a MATLAB file in Raissi's layout.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.mat`` file (MATLAB v5 / v7, read with :func:`scipy.io.loadmat`) with keys
        ``x`` (the spatial grid), ``tt`` or ``t`` (the times) and ``uu``, ``usol`` or
        ``u`` (the solution), tried in that order.

    Returns
    -------
    x : ndarray, shape (nx,)
    t : ndarray, shape (nt,)
    u : ndarray, shape (nt, nx)
        ``u[i, j]`` is the solution at time ``t[i]`` and position ``x[j]``: one row per
        time, the orientation every spectral solver in :mod:`solvers.spectral` returns.
        The stored array may be ``(nx, nt)`` (Raissi's files) or ``(nt, nx)``; the
        orientation is read from the grid sizes. When ``nx == nt`` it cannot be told
        apart and the array is taken as ``(nx, nt)``, as in Raissi's files.

    Raises
    ------
    FG2UValueError
        A key is missing (the message lists the keys present), a grid is not a
        strictly increasing vector, or the shape of ``u`` matches neither orientation.

    Examples
    --------
    >>> x, t, u = load_raissi_mat("examples/data/burgers.mat")   # doctest: +SKIP
    >>> u.shape == (t.size, x.size)                               # doctest: +SKIP
    True
    """
    from scipy.io import loadmat   # scipy.io is slow to import; only pay when used

    path = os.fspath(path)
    try:
        data = loadmat(path)
    except FileNotFoundError:
        raise FG2UValueError(f"path: no such file {path!r}") from None
    except (ValueError, TypeError, OSError) as exc:   # not a MATLAB v5/v7 file
        raise FG2UValueError(
            f"path: {path!r} cannot be read by scipy.io.loadmat ({exc}); MATLAB v7.3 "
            "(HDF5) files need h5py") from exc
    x_key, x = _pick(data, _X_KEYS, "spatial grid", path)
    t_key, t = _pick(data, _T_KEYS, "time grid", path)
    u_key, u = _pick(data, _U_KEYS, "solution", path)
    x = _grid(x_key, x, path)
    t = _grid(t_key, t, path)
    if u.ndim != 2:
        raise FG2UValueError(f"{path}: {u_key!r} must be 2-D, got shape {u.shape}")
    if u.shape == (x.size, t.size):     # Raissi's layout; also taken when nx == nt
        u = u.T
    elif u.shape != (t.size, x.size):
        raise FG2UValueError(
            f"{path}: {u_key!r} has shape {u.shape}, which matches neither "
            f"(nx, nt) = {(x.size, t.size)} nor (nt, nx) = {(t.size, x.size)} for "
            f"{x_key!r} and {t_key!r}")
    if np.iscomplexobj(u):
        raise FG2UValueError(f"{path}: {u_key!r} is complex; expected a real solution")
    return x, t, np.ascontiguousarray(u, dtype=np.float64)
