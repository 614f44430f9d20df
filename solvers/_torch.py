"""An unrolled torch optimizer as an inner solver: exact (jvp / reverse mode) and black box.

One object serves every estimator: ``.torch(phi)`` is differentiable in forward and
reverse mode (FG2U, RGU), ``.torch(phi, backprop_steps=K)`` keeps the graph of the last
``K`` steps only (TRGU), ``__call__`` is the numpy black box (FG2UZO) and
``inner_loss`` / ``inner_gradient`` serve the implicit (Neumann) estimator.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch
from torch.func import grad as func_grad

from fg2u_zo.errors import FG2UTypeError, FG2UValueError, InnerSolverError

from ._adapter_common import as_phi, positive_int, positive_number
from ._fingerprint import adapter_name, callable_identity, check_version, jsonable

__all__ = ["TorchUnrolled", "OPTIMIZERS"]

#: The inner optimizers :class:`TorchUnrolled` unrolls.
OPTIMIZERS = ("sgd", "momentum", "adam")


def _unit_interval(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FG2UTypeError(f"`{name}` must be a number in [0, 1), got {value!r}")
    if not (0.0 <= value < 1.0):
        raise FG2UValueError(f"`{name}` must be in [0, 1), got {value!r}")
    return float(value)


def _nonnegative(value, name):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise FG2UTypeError(f"`{name}` must be a number >= 0, got {value!r}")
    if not (np.isfinite(value) and value >= 0):
        raise FG2UValueError(f"`{name}` must be finite and >= 0, got {value!r}")
    return float(value)


def _as_theta0(theta0):
    if callable(theta0) and not isinstance(theta0, (torch.Tensor, np.ndarray)):
        return theta0
    if isinstance(theta0, torch.Tensor):
        theta0 = theta0.detach().cpu().numpy()
    try:
        arr = np.array(theta0, dtype=np.float64)
    except (TypeError, ValueError):
        raise FG2UTypeError(
            "`theta0` must be a 1-D array/tensor of floats or a callable theta0(phi) -> "
            f"tensor, got {type(theta0).__name__}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise FG2UValueError(
            f"`theta0` must be 1-D with shape (M,), got shape {arr.shape}; flatten the "
            "parameters into one vector and unflatten them inside `inner_loss`")
    if not np.all(np.isfinite(arr)):
        raise FG2UValueError("`theta0` must be finite")
    return torch.from_numpy(arr)


class TorchUnrolled:
    """``theta_T(phi)``: ``steps`` iterations of SGD, momentum or Adam on ``g(theta, phi)``.

    The inner optimizer is written functionally (no ``torch.optim``, no in-place
    updates), so the whole unrolled computation is an ordinary differentiable function
    of ``phi``: :func:`torch.func.jvp` and :func:`torch.func.vmap` pass through it
    (:class:`fg2u_zo.FG2U`) and so does reverse-mode autograd (:class:`fg2u_zo.RGU`).
    The inner gradient is ``torch.func.grad(inner_loss)``, which composes with all
    three transforms.

    Parameters
    ----------
    inner_loss : callable
        ``inner_loss(theta, phi) -> 0-d tensor``, the inner objective ``g``, written
        with torch operations; ``theta`` has shape ``(M,)``, ``phi`` shape ``(N,)``
        (both float64). It must be *functional*: no in-place changes of its inputs, no
        ``.item()``/``.numpy()`` on them, and no data-dependent Python control flow
        (``torch.func.vmap`` batches it over directions).
    theta0 : array_like of shape (M,), torch.Tensor or callable
        Where the inner optimizer starts: a fixed vector, or ``theta0(phi) -> tensor``
        (then the start depends on ``phi`` and is differentiated through).
    steps : int
        Number T of inner steps unrolled.
    optimizer : {"sgd", "momentum", "adam"}
        ``"sgd"``: ``theta -= lr * grad``. ``"momentum"``: heavy ball,
        ``buf = momentum * buf + grad; theta -= lr * buf``. ``"adam"``: Adam with bias
        correction, ``theta -= lr * m_hat / (sqrt(v_hat + eps_root) + eps)``.
    lr : float
        Inner learning rate (> 0).
    momentum : float
        Momentum coefficient in [0, 1) (``optimizer="momentum"`` only).
    betas : tuple of two floats
        Adam's decay rates, each in [0, 1).
    eps : float
        Adam's denominator offset (> 0).
    eps_root : float
        Offset inside Adam's square root (>= 0), as in optax: ``sqrt`` has an infinite
        derivative at 0, so a gradient entry that is exactly zero (a constant-zero
        input feature, say) would turn forward- and reverse-mode derivatives into NaN
        when ``eps_root = 0``. The default ``1e-16`` removes that and is negligible next
        to ``eps`` in the value.
    inner_grad : callable, optional
        ``inner_grad(theta, phi) -> tensor (M,)``, a hand-written ``d g / d theta`` in
        torch operations, used instead of ``torch.func.grad(inner_loss)`` (faster for
        simple losses; it must be differentiable in ``theta`` and ``phi`` itself).
    version : str, optional
        Your name for the version of the code this solver calls, part of
        :meth:`fingerprint`: change it when that code changes in a way the
        fingerprint cannot see (a module the callables use).

    Attributes
    ----------
    num_outputs : int or None
        M, the length of ``theta`` (None when ``theta0`` is a callable).

    Notes
    -----
    **Smoothness for finite differences.** ``__call__`` runs the same float64
    computation as ``.torch`` with no randomness and a fixed start, so ``theta_T`` is a
    deterministic, smooth (for a smooth ``inner_loss``) function of ``phi``. Its only
    noise is floating-point rounding, of relative size about machine epsilon
    (``1e-16``) times the conditioning of the T steps, so central differences reach
    ``~1e-8`` relative accuracy or better. ``warm_start`` and ``seed`` are accepted and
    deliberately ignored: starting from the previous solution would make ``theta_T`` a
    different function of ``phi`` for every call, which finite differences would see
    as noise.

    **Truncation.** ``.torch(phi, backprop_steps=K)`` runs the first ``T - K`` steps
    without a graph and detaches their result (including the optimizer state and the
    dependence of ``theta0`` on ``phi``), so reverse mode only sees the last ``K``
    steps: memory ``O(K)`` instead of ``O(T)``, at the price of a bias (TRGU).

    **Pickling.** The object pickles when ``inner_loss`` (and ``inner_grad``,
    ``theta0`` if callable) do: use module-level functions or instances of
    module-level classes, not lambdas or closures, to run it in loky, dask or ray
    workers.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from solvers import TorchUnrolled
    >>> def ridge(theta, phi):   # argmin: theta = phi / (1 + 1) = phi / 2
    ...     return 0.5 * ((theta - phi) ** 2).sum() + 0.5 * (theta ** 2).sum()
    >>> solver = TorchUnrolled(ridge, theta0=np.zeros(2), steps=100, lr=0.2)
    >>> np.round(solver(np.array([1.0, -2.0])), 6)
    array([ 0.5, -1. ])
    """

    def __init__(self, inner_loss, theta0, steps, *, optimizer="sgd", lr=0.1, momentum=0.9,
                 betas=(0.9, 0.999), eps=1e-8, eps_root=1e-16, inner_grad=None, version=None):
        if not callable(inner_loss):
            raise FG2UTypeError(
                f"`inner_loss` must be a callable inner_loss(theta, phi) -> 0-d tensor, got "
                f"{type(inner_loss).__name__}")
        if inner_grad is not None and not callable(inner_grad):
            raise FG2UTypeError(
                f"`inner_grad` must be a callable inner_grad(theta, phi) -> tensor or None, "
                f"got {type(inner_grad).__name__}")
        if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
            raise FG2UValueError(
                f"`optimizer` must be one of {', '.join(map(repr, OPTIMIZERS))}; got "
                f"{optimizer!r}")
        try:
            beta1, beta2 = betas
        except (TypeError, ValueError):
            raise FG2UValueError(f"`betas` must be a pair (beta1, beta2), got {betas!r}") from None
        self.inner_loss = inner_loss
        self.inner_grad = inner_grad
        self.theta0 = _as_theta0(theta0)
        self.steps = positive_int(steps, "steps")
        self.optimizer = optimizer
        self.lr = positive_number(lr, "lr")
        self.momentum = _unit_interval(momentum, "momentum")
        self.betas = (_unit_interval(beta1, "betas[0]"), _unit_interval(beta2, "betas[1]"))
        self.eps = positive_number(eps, "eps")
        self.eps_root = _nonnegative(eps_root, "eps_root")
        self.version = check_version(version)

    def fingerprint(self) -> dict:
        """What identifies this solver's results, as JSON data: ``inner_loss`` and
        ``inner_grad`` (module, qualified name, source digest), ``theta0`` (a digest,
        or the callable), the inner optimizer and its settings, and ``version`` (see
        :mod:`solvers._fingerprint`)."""
        return {"adapter": adapter_name(self), "version": self.version,
                "inner_loss": callable_identity(self.inner_loss),
                "inner_grad": callable_identity(self.inner_grad),
                "theta0": jsonable(self.theta0), "steps": self.steps,
                "optimizer": self.optimizer, "lr": self.lr, "momentum": self.momentum,
                "betas": list(self.betas), "eps": self.eps, "eps_root": self.eps_root}

    @property
    def num_outputs(self):
        return None if callable(self.theta0) else int(self.theta0.shape[0])

    def __repr__(self):
        name = getattr(self.inner_loss, "__name__", type(self.inner_loss).__name__)
        return (f"TorchUnrolled(inner_loss={name}, steps={self.steps}, "
                f"optimizer={self.optimizer!r}, lr={self.lr})")

    # -- the inner problem ----------------------------------------------------------
    def inner_gradient(self, theta, phi):
        """``d g / d theta`` at ``(theta, phi)``: ``inner_grad`` or ``torch.func.grad``."""
        if self.inner_grad is not None:
            return self.inner_grad(theta, phi)
        # Built per call rather than stored: the transformed function need not pickle.
        return func_grad(self.inner_loss, argnums=0)(theta, phi)

    def initial_theta(self, phi):
        """``theta0``, as a float64 tensor (evaluated at ``phi`` when it is a callable)."""
        if callable(self.theta0):
            theta = self.theta0(phi)
            if not isinstance(theta, torch.Tensor):
                raise FG2UTypeError(
                    f"`theta0(phi)` must return a torch.Tensor, got {type(theta).__name__}")
            return theta
        return self.theta0.to(dtype=phi.dtype)

    def _init_state(self, theta):
        if self.optimizer == "sgd":
            return ()
        if self.optimizer == "momentum":
            return (torch.zeros_like(theta),)
        return (torch.zeros_like(theta), torch.zeros_like(theta))

    def _step(self, t, theta, state, phi):
        """One functional optimizer step ``t`` (0-based): new ``(theta, state)``."""
        g = self.inner_gradient(theta, phi)
        if self.optimizer == "sgd":
            return theta - self.lr * g, state
        if self.optimizer == "momentum":
            (buf,) = state
            buf = self.momentum * buf + g
            return theta - self.lr * buf, (buf,)
        m, v = state
        beta1, beta2 = self.betas
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        m_hat = m / (1.0 - beta1 ** (t + 1))
        v_hat = v / (1.0 - beta2 ** (t + 1))
        return theta - self.lr * m_hat / (torch.sqrt(v_hat + self.eps_root) + self.eps), (m, v)

    # -- the three views ---------------------------------------------------------------
    def torch(self, phi, *, backprop_steps=None):
        """Run the T steps on a tensor ``phi``; returns ``theta_T`` (shape ``(M,)``).

        Parameters
        ----------
        phi : torch.Tensor, shape (N,)
            Float64 meta-parameters; may require grad, carry a jvp tangent or be
            batched by vmap.
        backprop_steps : int, optional
            Keep the autograd graph of the last ``K = backprop_steps`` steps only: the
            first ``T - K`` run under ``torch.no_grad`` and their result is detached.
            ``K >= T`` (or None) differentiates through every step.

        Returns
        -------
        torch.Tensor, shape (M,)
        """
        if not isinstance(phi, torch.Tensor):
            raise FG2UTypeError(
                f"`phi` must be a torch.Tensor for .torch(), got {type(phi).__name__}; call "
                "the solver itself for numpy arrays")
        detached = 0
        if backprop_steps is not None:
            detached = max(self.steps - positive_int(backprop_steps, "backprop_steps"), 0)
        if detached:
            with torch.no_grad():
                theta, state = self._run(phi, 0, detached, None, None)
            theta = theta.detach()
            state = tuple(s.detach() for s in state)
            return self._run(phi, detached, self.steps, theta, state)[0]
        return self._run(phi, 0, self.steps, None, None)[0]

    def _run(self, phi, start, stop, theta, state):
        if theta is None:
            theta = self.initial_theta(phi)
            if theta.dim() != 1:
                raise FG2UValueError(
                    f"`theta0` must give a 1-D tensor (M,), got shape {tuple(theta.shape)}")
            state = self._init_state(theta)
        for t in range(start, stop):
            theta, state = self._step(t, theta, state, phi)
        return theta, state

    def __call__(self, phi, *, warm_start=None, seed=None):
        """The numpy black box: ``theta_T`` for ``phi`` (shape ``(N,)``), no gradients.

        ``warm_start`` and ``seed`` are ignored (see Notes of the class).

        Raises
        ------
        InnerSolverError
            ``kind="nonfinite"`` when the iterates diverge (lower ``lr``).
        """
        phi = torch.from_numpy(as_phi(phi))
        with torch.no_grad():
            theta = self.torch(phi)
        out = theta.detach().cpu().numpy().astype(np.float64, copy=False).reshape(-1)
        if not np.all(np.isfinite(out)):
            raise InnerSolverError(
                f"TorchUnrolled: theta_T has non-finite entries after {self.steps} "
                f"{self.optimizer} steps with lr={self.lr}; the inner optimizer diverged, "
                "lower `lr`", kind="nonfinite")
        return out
