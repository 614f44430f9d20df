"""The bilevel problem: an inner solver and an outer loss."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from .errors import FG2UTypeError, FG2UValueError

__all__ = ["BilevelProblem"]


class TorchAsNumpy:
    """Numpy view of a torch inner solver, so the zeroth-order path can run it too.

    Picklable whenever the wrapped function is.
    """

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, phi, *, warm_start=None, seed=None):
        with torch.no_grad():
            out = self.fn(torch.as_tensor(np.asarray(phi, dtype=np.float64)))
        return out.detach().cpu().numpy().astype(np.float64, copy=False)

    def torch(self, phi):
        return self.fn(phi)


class BilevelProblem:
    """``min_phi F(phi) = f(S(phi), phi)`` with an inner solver ``S`` and outer loss ``f``.

    Parameters
    ----------
    inner : callable, optional
        The inner solver ``inner(phi, *, warm_start=None, seed=None) -> theta`` taking
        and returning numpy arrays (the black box; ``warm_start`` and ``seed`` are only
        passed when the signature accepts them). An object that also has a method
        ``torch(phi_tensor) -> theta_tensor`` (such as :class:`solvers.TorchUnrolled`)
        serves the exact torch estimators as well.
    outer : callable
        The outer loss ``outer(theta, phi) -> scalar``. With
        ``differentiable_outer=True`` (default) it receives float64 torch tensors and
        must return a 0-d tensor built with torch operations, so its gradients with
        respect to ``theta`` and ``phi`` are exact. With ``differentiable_outer=False`` it
        receives numpy arrays and returns a float; only :class:`BlackBoxES` and
        :class:`CoordinateFD` apply then.
    inner_torch : callable, optional
        A torch implementation ``inner_torch(phi_tensor) -> theta_tensor`` of the inner
        solver, for :class:`FG2U` and :class:`RGU`. If ``inner`` is omitted, the numpy
        solver is derived from it.
    num_params : int, optional
        Number N of meta-parameters; when given, every ``phi`` is checked against it.
    differentiable_outer : bool
        Whether ``outer`` is a torch function (see ``outer``).
    name : str, optional
        Label used in logs and reports.

    Examples
    --------
    >>> import numpy as np, torch
    >>> problem = BilevelProblem(inner=lambda phi: 2.0 * phi,
    ...                          outer=lambda theta, phi: (theta ** 2).sum())
    >>> problem.outer_value(np.array([1.0, 2.0]), np.array([0.5, 1.0]))
    5.0
    """

    def __init__(self, inner=None, outer=None, *, inner_torch=None, num_params=None,
                 differentiable_outer: bool = True, name: str | None = None):
        if outer is None or not callable(outer):
            raise FG2UTypeError(
                "`outer` must be a callable outer(theta, phi) -> scalar, got "
                f"{type(outer).__name__}")
        if inner is None and inner_torch is None:
            raise FG2UValueError("pass the inner solver as `inner=` (numpy) or `inner_torch=`")
        if inner is not None and not callable(inner):
            raise FG2UTypeError(f"`inner` must be callable, got {type(inner).__name__}")
        if inner_torch is not None and not callable(inner_torch):
            raise FG2UTypeError(f"`inner_torch` must be callable, got {type(inner_torch).__name__}")
        if inner_torch is None and inner is not None and callable(getattr(inner, "torch", None)):
            inner_torch = inner.torch
        if inner is None:
            inner = TorchAsNumpy(inner_torch)
        if num_params is not None:
            if isinstance(num_params, bool) or not isinstance(num_params, numbers.Integral):
                raise FG2UTypeError(f"`num_params` must be an int, got {num_params!r}")
            if num_params < 1:
                raise FG2UValueError(f"`num_params` must be >= 1, got {num_params}")
            num_params = int(num_params)
        self.inner = inner
        self.outer = outer
        self.inner_torch = inner_torch
        self.num_params = num_params
        self.differentiable_outer = bool(differentiable_outer)
        self.name = name or getattr(inner, "__name__", type(inner).__name__)

    def __repr__(self):
        return (f"BilevelProblem(name={self.name!r}, num_params={self.num_params}, "
                f"torch_inner={self.inner_torch is not None}, "
                f"differentiable_outer={self.differentiable_outer})")

    # -- outer loss -----------------------------------------------------------------
    def _check_scalar(self, out):
        if not isinstance(out, torch.Tensor):
            raise FG2UTypeError(
                "`outer` must return a 0-d torch tensor computed from theta and phi with torch "
                f"operations, got {type(out).__name__}; for an outer loss written in numpy "
                "use BilevelProblem(..., differentiable_outer=False) with BlackBoxES")
        if out.numel() != 1 or out.dim() > 1:
            raise FG2UValueError(
                f"`outer` must return a scalar, got a tensor of shape {tuple(out.shape)}; "
                "reduce it, e.g. with .sum() or .mean()")
        return out.reshape(())

    def outer_torch(self, theta, phi):
        """Evaluate the differentiable outer loss on tensors; returns a 0-d tensor."""
        self.require_differentiable_outer("this estimator")
        return self._check_scalar(self.outer(theta, phi))

    def outer_value(self, theta, phi) -> float:
        """The outer loss ``f(theta, phi)`` as a float (no gradients)."""
        if not self.differentiable_outer:
            value = self.outer(np.asarray(theta), np.asarray(phi))
            try:
                value = float(np.asarray(value).reshape(()))
            except (TypeError, ValueError):
                raise FG2UValueError(
                    "`outer` must return a scalar, got "
                    f"{type(value).__name__} of shape {np.shape(value)}") from None
            return value
        with torch.no_grad():
            out = self._check_scalar(self.outer(torch.as_tensor(theta, dtype=torch.float64),
                                                torch.as_tensor(phi, dtype=torch.float64)))
        return float(out)

    def outer_parts(self, theta, phi):
        """Value and exact partial gradients of the outer loss.

        Returns
        -------
        value : float
        grad_theta : ndarray, shape of ``theta``
            ``d f / d theta`` at (theta, phi).
        grad_phi : ndarray, shape (N,)
            The direct term ``d f / d phi`` at fixed theta.
        """
        self.require_differentiable_outer("FG2UZO and FG2U")
        theta_t = torch.tensor(np.asarray(theta, dtype=np.float64), requires_grad=True)
        phi_t = torch.tensor(np.asarray(phi, dtype=np.float64), requires_grad=True)
        try:
            out = self._check_scalar(self.outer(theta_t, phi_t))
        except (RuntimeError, TypeError) as exc:
            if "numpy" not in str(exc).lower():
                raise
            # torch's own words ("Can't call numpy() on Tensor that requires grad") do
            # not say what to change in the user's loss.
            raise FG2UTypeError(
                "`outer` must be written in torch: it was called with tensors that require "
                f"grad and converted them to numpy ({exc}). Use torch operations on the "
                "tensors it receives (e.g. 0.5 * (theta ** 2).sum() instead of np.sum), or "
                "build the problem with differentiable_outer=False and use BlackBoxES"
            ) from exc
        if not out.requires_grad:
            raise FG2UValueError(
                "`outer` returned a tensor that depends on neither theta nor phi; build it "
                "from the tensors it receives (no .item(), .numpy() or float() inside)")
        g_theta, g_phi = torch.autograd.grad(out, (theta_t, phi_t), allow_unused=True)
        g_theta = np.zeros(theta_t.shape) if g_theta is None else g_theta.numpy()
        g_phi = np.zeros(phi_t.shape) if g_phi is None else g_phi.numpy()
        return float(out.detach()), g_theta, g_phi

    def require_differentiable_outer(self, who: str):
        if not self.differentiable_outer:
            raise FG2UValueError(
                f"{who} needs a differentiable torch outer loss, but the problem was built "
                "with differentiable_outer=False; use BlackBoxES (or CoordinateFD) instead")

    def require_torch_inner(self, who: str):
        if self.inner_torch is None:
            raise FG2UValueError(
                f"{who} differentiates through the inner solver with torch and needs "
                "`inner_torch=` (or an inner solver with a .torch method such as "
                "solvers.TorchUnrolled); for a black-box solver use FG2UZO")
