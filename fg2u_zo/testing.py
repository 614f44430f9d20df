"""Bilevel problems with known meta-gradients, and a peak-memory probe, for tests,
benchmarks and examples.

:class:`RidgeHyperproblem` has a closed-form hypergradient and a numpy black-box
inner solver; :class:`UnrolledQuadratic` is a smooth torch inner solver (unrolled
gradient descent) that serves both the exact and the zeroth-order path.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import re
import resource
import time

import numpy as np
import torch

from .validation import as_generator, check_positive_int
from .problem import BilevelProblem

__all__ = ["RidgeHyperproblem", "SlowRidge", "slow_ridge_problem", "UnrolledQuadratic",
           "peak_memory_mb", "can_reset_peak", "map_large_blocks_separately"]


class RidgeHyperproblem:
    """Ridge regression whose per-feature log-penalties are the meta-parameters.

    Inner: ``theta(phi) = argmin ||X theta - y||^2 / 2 + sum_j exp(phi_j) theta_j^2 / 2``,
    i.e. ``theta = A^{-1} X^T y`` with ``A = X^T X + diag(exp(phi))``, solved with numpy
    (the black box). Outer: ``f = ||X_val theta - y_val||^2 / (2 n_val)``.

    Hypergradient: ``dF/dphi_j = -exp(phi_j) theta_j (A^{-1} grad_theta f)_j``.

    Parameters
    ----------
    num_features : int
        N = M = number of features.
    num_train, num_val : int
        Sample sizes.
    noise : float
        Standard deviation of the label noise.
    rng : None, int or Generator
        Draws the data.
    """

    def __init__(self, num_features=5, num_train=40, num_val=30, noise=0.5, rng=0):
        n = check_positive_int(num_features, "num_features")
        rng = as_generator(rng)
        w = rng.standard_normal(n)
        self.X = rng.standard_normal((num_train, n))
        self.y = self.X @ w + noise * rng.standard_normal(num_train)
        self.X_val = rng.standard_normal((num_val, n))
        self.y_val = self.X_val @ w + noise * rng.standard_normal(num_val)
        self.num_params = n

    def inner(self, phi, *, warm_start=None, seed=None):
        A = self.X.T @ self.X + np.diag(np.exp(phi))
        return np.linalg.solve(A, self.X.T @ self.y)

    def inner_torch(self, phi):
        X = torch.as_tensor(self.X)
        A = X.T @ X + torch.diag(torch.exp(phi))
        return torch.linalg.solve(A, X.T @ torch.as_tensor(self.y))

    def outer(self, theta, phi):
        r = torch.as_tensor(self.X_val) @ theta - torch.as_tensor(self.y_val)
        return 0.5 * (r ** 2).mean()

    def outer_numpy(self, theta, phi):
        """:meth:`outer` in numpy: the outer loss of a black-box (non-torch) objective."""
        r = self.X_val @ np.asarray(theta) - self.y_val
        return 0.5 * float(np.mean(r ** 2))

    def grad_theta(self, theta):
        r = self.X_val @ theta - self.y_val
        return self.X_val.T @ r / len(self.y_val)

    def hypergradient(self, phi):
        """Closed-form ``grad F(phi)``."""
        phi = np.asarray(phi, dtype=np.float64)
        theta = self.inner(phi)
        A = self.X.T @ self.X + np.diag(np.exp(phi))
        return -np.exp(phi) * theta * np.linalg.solve(A, self.grad_theta(theta))

    def problem(self, *, torch_inner=False) -> BilevelProblem:
        """The :class:`BilevelProblem` (numpy black box; torch inner when asked)."""
        return BilevelProblem(inner=self.inner, outer=self.outer,
                              inner_torch=self.inner_torch if torch_inner else None,
                              num_params=self.num_params, name="ridge")


class SlowRidge:
    """The ridge inner solver of :class:`RidgeHyperproblem`, taking ``seconds`` longer
    per solve (same output): a stand-in for a slow simulator in the kill-and-resume
    tests, where a process must die while solves are in flight."""

    def __init__(self, seconds=0.0):
        self.ridge = RidgeHyperproblem()
        self.seconds = float(seconds)

    def __call__(self, phi):
        if self.seconds:
            time.sleep(self.seconds)
        return self.ridge.inner(phi)


def slow_ridge_problem(seconds=0.0) -> BilevelProblem:
    """The 5-parameter ridge problem whose inner solver is :class:`SlowRidge`."""
    solver = SlowRidge(seconds)
    return BilevelProblem(inner=solver, outer=solver.ridge.outer, num_params=5)


class UnrolledQuadratic:
    """T steps of gradient descent on a strongly convex inner loss, written in torch.

    Inner loss ``g(theta, phi) = theta^T A theta / 2 - b^T theta + sum_j exp(phi_j)
    theta_j^2 / 2 + sum_j phi_j theta_j^3 / 3``, small cubic term included so that
    ``S`` has non-zero third derivatives (finite-difference errors show their order).
    Outer loss ``f = ||theta - target||^2 / 2 + 0.01 ||phi||^2 / 2``.

    The same object is the torch solver (``.torch``) and the numpy black box
    (``__call__``), so the exact and zeroth-order paths meet on one problem.
    """

    def __init__(self, num_params=5, steps=30, lr=0.1, rng=0):
        n = check_positive_int(num_params, "num_params")
        self.steps = check_positive_int(steps, "steps")
        rng = as_generator(rng)
        Q = rng.standard_normal((n, n))
        self.A = Q @ Q.T / n + np.eye(n)
        self.b = rng.standard_normal(n)
        self.target = rng.standard_normal(n)
        self.lr = lr
        self.num_params = n

    def torch(self, phi):
        A, b = torch.as_tensor(self.A), torch.as_tensor(self.b)
        theta = torch.zeros_like(b) + 0.0 * phi
        for _ in range(self.steps):
            grad = A @ theta - b + torch.exp(phi) * theta + phi * theta ** 2 * 0.1
            theta = theta - self.lr * grad
        return theta

    def __call__(self, phi, *, warm_start=None, seed=None):
        with torch.no_grad():
            return self.torch(torch.as_tensor(np.asarray(phi, dtype=np.float64))).numpy()

    def outer(self, theta, phi):
        return 0.5 * ((theta - torch.as_tensor(self.target)) ** 2).sum() + 0.005 * (phi ** 2).sum()

    def problem(self) -> BilevelProblem:
        return BilevelProblem(inner=self, outer=self.outer, num_params=self.num_params,
                              name="unrolled-quadratic")


# -- peak memory of a call (Linux) ------------------------------------------------------------
def _status_kb(field):
    with open("/proc/self/status") as fh:
        return int(re.search(rf"^{field}:\s+(\d+)\s+kB", fh.read(), re.MULTILINE).group(1))


def _libc():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


def _release_free_heap():
    # Freed tensors stay in glibc's heap, where the measured call would reuse them
    # without raising the RSS: hand them back so that its peak is counted in full.
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def can_reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter of this process; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def map_large_blocks_separately(threshold: int = 128 * 1024) -> None:
    """Make glibc give every allocation above ``threshold`` bytes its own mapping.

    glibc's adaptive mmap threshold moves freed large blocks into the heap, where
    fragmentation inflates the RSS beyond the live tensors (and drifts with the number
    of steps); a fixed threshold returns each large tensor to the OS when freed, so
    the RSS follows the live tensors. For a child process, setting the environment
    variable ``MALLOC_MMAP_THRESHOLD_`` does the same.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(-3, int(threshold))  # -3 = M_MMAP_THRESHOLD


def peak_memory_mb(fn):
    """Run ``fn()`` and measure the resident memory it added at its peak.

    CPU tensors live in ``malloc``'d memory, so the RSS sees them (``tracemalloc``
    would not). Freed heap pages are returned first, then the peak counter is reset
    (``/proc/self/clear_refs``) and ``VmHWM - VmRSS`` is read after the call. Where
    the counter cannot be reset, ``ru_maxrss`` after minus before is returned instead:
    meaningful only in a fresh process whose earlier peak was lower.

    Returns
    -------
    result
        What ``fn()`` returned.
    mb : float
        Megabytes added at the peak.
    method : {"VmHWM-VmRSS", "ru_maxrss"}
    """
    _release_free_heap()
    if can_reset_peak():
        before = _status_kb("VmRSS")
        out = fn()
        return out, (_status_kb("VmHWM") - before) / 1024.0, "VmHWM-VmRSS"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = fn()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return out, (after - before) / 1024.0, "ru_maxrss"
