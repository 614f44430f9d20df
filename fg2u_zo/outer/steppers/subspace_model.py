"""The pieces of a subspace Gauss–Newton model of ``F(z) = f(S(T(z)), T(z))``.

The model keeps the outer loss ``f`` exact and linearizes only the black box along the
orthonormal columns of ``Q`` (N x d, in the unconstrained ``z`` of the run):

    m(a) = f(theta_k + Y a, phi_k + P a),    Y ~ J_{S o T}(z_k) Q,   P = diag(T'(z_k)) Q

so its gradient at ``a = 0`` is ``Y^T grad_theta f + P^T grad_phi f`` and its Hessian
``[Y; P]^T (Hessian of f) [Y; P]``, from d Hessian-vector products of the torch outer
loss (double-backward passes through its gradient graph). For a
:class:`~fg2u_zo.LeastSquares` loss the model is formed in numpy from its residuals
instead (:func:`least_squares_model`): ``f = ||r||^2`` with ``r`` affine in
``(theta, phi)``, so ``m(a) = ||r + R a||^2`` exactly, ``R`` the residuals' change
along the columns, and no torch call is made. For a sum of
squares this is the Gauss–Newton matrix of DFO-LS (Cartis et al., 2019); for any other
twice-differentiable misfit it is the generalized Gauss–Newton model, which may be
indefinite.

``Y`` is kept current by the rank-one Broyden update after every trial and grown by
finite differences along new directions orthogonal to ``Q``
(:func:`add_difference_columns`).
"""

from __future__ import annotations

import numpy as np
import torch

from ...errors import FG2UValueError
from ...losses import LeastSquares

__all__ = ["outer_model", "least_squares_model", "subspace_subproblem", "ModelHessian",
           "broyden_update", "new_directions", "add_difference_columns"]

def _outer_function(problem, theta_shape):
    def f(theta_flat, phi):
        return problem.outer_torch(theta_flat.reshape(theta_shape), phi)
    return f


def outer_model(problem, theta, phi, Y, P):
    """Value, gradient and Hessian of the subspace model at ``a = 0``.

    Parameters
    ----------
    problem : BilevelProblem
        With a differentiable torch outer loss.
    theta : ndarray
        ``S(phi)`` (any shape; ``Y``'s rows are its flattened entries).
    phi : ndarray, shape (N,)
    Y : ndarray, shape (theta.size, d)
        Directional derivatives of the inner solver along the columns.
    P : ndarray, shape (N, d)
        The same columns' displacement of phi (``diag(T'(z)) Q``).

    Returns
    -------
    value : float
        ``f(theta, phi)``.
    g : ndarray, shape (d,)
        ``Y^T grad_theta f + P^T grad_phi f``.
    H : ndarray, shape (d, d)
        ``[Y; P]^T (Hessian of f) [Y; P]``, symmetrized.
    grad_theta, grad_phi : ndarray
        The outer loss's partial gradients (flattened theta).
    """
    theta = np.asarray(theta, dtype=np.float64)
    f = _outer_function(problem, theta.shape)
    th = torch.tensor(theta.reshape(-1))
    ph = torch.tensor(np.asarray(phi, dtype=np.float64))
    value, (g_theta, g_phi) = _value_and_grad(problem, f, th, ph)
    g = Y.T @ g_theta + P.T @ g_phi
    d = Y.shape[1]
    if d == 0:
        return value, g, np.zeros((0, 0)), g_theta, g_phi
    HY, HP = _hessian_products(f, th, ph, Y, P)
    H = Y.T @ HY + P.T @ HP
    return value, g, 0.5 * (H + H.T), g_theta, g_phi


def least_squares_model(loss, theta, phi, Y, P):
    """``(value, r, R)`` of a :class:`~fg2u_zo.LeastSquares` outer loss: its residuals
    ``r`` at ``(theta, phi)`` (``value = r^T r``) and their change ``R`` along the
    columns (``Y`` of theta, ``P`` of phi), in numpy."""
    r = loss.residuals(np.asarray(theta, dtype=np.float64).reshape(-1), phi)
    R = loss.residual_jacobian(Y, P)
    return float(r @ r), r, R


def subspace_subproblem(problem, theta, phi, Y, P, *, dense_max):
    """The trust-region subproblem of the model at ``a = 0``: a
    :class:`~.trust_region.LeastSquaresSubproblem` for a ``LeastSquares`` outer loss, a
    :class:`~.trust_region.DenseSubproblem` up to ``dense_max`` columns, a
    :class:`~.trust_region.KrylovSubproblem` of Hessian-vector products above.
    Each has ``g`` (the model gradient), ``solve(delta)`` and ``decrease(a)``.

    Raises
    ------
    FG2UValueError
        When the model is not finite (an output so large that its products overflow).
    """
    from .trust_region import DenseSubproblem, KrylovSubproblem, LeastSquaresSubproblem

    if isinstance(problem.outer, LeastSquares):
        _, r, R = least_squares_model(problem.outer, theta, phi, Y, P)
        return LeastSquaresSubproblem(r, R)
    if Y.shape[1] <= dense_max:
        _, g, H, _, _ = outer_model(problem, theta, phi, Y, P)
        return DenseSubproblem(g, H)
    hess = ModelHessian(problem, theta, phi, Y, P)
    return KrylovSubproblem(hess.g, hess)


def _value_and_grad(problem, f, th, ph):
    th = th.clone().requires_grad_(True)
    ph = ph.clone().requires_grad_(True)
    out = f(th, ph)
    gt, gp = torch.autograd.grad(out, (th, ph), allow_unused=True)
    gt = torch.zeros_like(th) if gt is None else gt
    gp = torch.zeros_like(ph) if gp is None else gp
    return float(out.detach()), (gt.numpy().copy(), gp.numpy().copy())


def _hessian_products(f, th, ph, Y, P):
    """``(H_tt Y + H_tp P, H_pt Y + H_pp P)``: one double-backward product per column
    through the outer loss's gradient graph, built once. Plain autograd rather than
    ``torch.func.vmap``: the first vmapped call imports torch's compiler stack, seconds
    of warm-up that a model of a few columns never wins back."""
    Yt = torch.as_tensor(np.ascontiguousarray(Y.T))
    Pt = torch.as_tensor(np.ascontiguousarray(P.T))
    out_t, out_p = _hessian_products_loop(f, th, ph, Yt, Pt)
    HY = torch.cat(out_t).numpy().T if out_t else np.zeros((Y.shape[0], 0))
    HP = torch.cat(out_p).numpy().T if out_p else np.zeros((P.shape[0], 0))
    if not (np.all(np.isfinite(HY)) and np.all(np.isfinite(HP))):
        raise FG2UValueError(
            "the outer loss's Hessian-vector products are not finite at the current point; "
            "the Gauss-Newton model needs a twice-differentiable outer loss")
    return HY, HP


def _hessian_products_loop(f, th, ph, Yt, Pt):
    th = th.clone().requires_grad_(True)
    ph = ph.clone().requires_grad_(True)
    gt, gp = torch.autograd.grad(f(th, ph), (th, ph), create_graph=True, allow_unused=True)
    gt = torch.zeros_like(th) if gt is None else gt
    gp = torch.zeros_like(ph) if gp is None else gp
    out_t, out_p = [], []
    for vt, vp in zip(Yt, Pt):
        inner = (gt * vt).sum() + (gp * vp).sum()
        if not inner.requires_grad:  # the loss is linear: its Hessian is zero
            out_t.append(torch.zeros_like(th)[None])
            out_p.append(torch.zeros_like(ph)[None])
            continue
        ht, hp = torch.autograd.grad(inner, (th, ph), retain_graph=True, allow_unused=True)
        out_t.append((torch.zeros_like(th) if ht is None else ht.detach())[None])
        out_p.append((torch.zeros_like(ph) if hp is None else hp.detach())[None])
    return out_t, out_p


class ModelHessian:
    """``v -> [Y; P]^T (Hessian of f) [Y; P] v`` without forming the d x d matrix.

    The outer loss's gradient graph is built once at ``(theta, phi)``; each product is
    one double-backward pass through it plus two products with ``[Y; P]`` (O(d (M + N))),
    where the dense Hessian of :func:`outer_model` costs d Hessian-vector products and
    a d x d x (M + N) product. For :class:`~.trust_region.KrylovSubproblem`.

    Attributes
    ----------
    value : float
    g : ndarray, shape (d,)
        The model gradient ``Y^T grad_theta f + P^T grad_phi f``.
    """

    def __init__(self, problem, theta, phi, Y, P):
        theta = np.asarray(theta, dtype=np.float64)
        f = _outer_function(problem, theta.shape)
        self.Y, self.P = Y, P
        self._th = torch.tensor(theta.reshape(-1), requires_grad=True)
        self._ph = torch.tensor(np.asarray(phi, dtype=np.float64), requires_grad=True)
        out = f(self._th, self._ph)
        gt, gp = torch.autograd.grad(out, (self._th, self._ph), create_graph=True,
                                     allow_unused=True)
        self._gt = torch.zeros_like(self._th) if gt is None else gt
        self._gp = torch.zeros_like(self._ph) if gp is None else gp
        self.value = float(out.detach())
        self.g = Y.T @ self._gt.detach().numpy() + P.T @ self._gp.detach().numpy()

    def __call__(self, v):
        vt = torch.as_tensor(self.Y @ v)
        vp = torch.as_tensor(self.P @ v)
        inner = (self._gt * vt).sum() + (self._gp * vp).sum()
        if not inner.requires_grad:  # the loss is linear: its Hessian is zero
            return np.zeros_like(v)
        ht, hp = torch.autograd.grad(inner, (self._th, self._ph), retain_graph=True,
                                     allow_unused=True)
        ht = np.zeros(self._th.shape) if ht is None else ht.numpy()
        hp = np.zeros(self._ph.shape) if hp is None else hp.numpy()
        out = self.Y.T @ ht + self.P.T @ hp
        if not np.all(np.isfinite(out)):
            raise FG2UValueError(
                "the outer loss's Hessian-vector products are not finite at the current "
                "point; the Gauss-Newton model needs a twice-differentiable outer loss")
        return out


def broyden_update(Y, a, dtheta):
    """Rank-one Broyden update: ``Y + (dtheta - Y a) a^T / ||a||^2``.

    The least change of ``Y`` (Frobenius norm) that satisfies the secant condition
    ``Y_new a = dtheta`` along the step ``a`` (in the columns' coordinates); for an inner
    solver linear along the columns, an exact ``Y`` stays exact.

    Examples
    --------
    >>> import numpy as np
    >>> Y = broyden_update(np.zeros((2, 2)), np.array([1.0, 1.0]), np.array([2.0, 4.0]))
    >>> (Y @ np.array([1.0, 1.0])).tolist()
    [2.0, 4.0]
    """
    a = np.asarray(a, dtype=np.float64)
    norm2 = float(a @ a)
    if norm2 == 0.0:
        return Y
    return Y + np.outer(np.asarray(dtheta, dtype=np.float64).reshape(-1) - Y @ a, a / norm2)


def new_directions(Q, k, rng):
    """``k`` random orthonormal directions orthogonal to the columns of ``Q``.

    Gaussian columns projected out of ``span(Q)`` twice (classical Gram–Schmidt needs the
    second pass in floating point), then a QR factorization; uniformly distributed on
    the orthogonal complement. Returns an array of shape (N, k'), ``k' = min(k, N - d)``.
    """
    n, d = Q.shape
    k = int(min(k, n - d))
    if k <= 0:
        return np.zeros((n, 0))
    G = rng.standard_normal((n, k))
    for _ in range(2):
        G -= Q @ (Q.T @ G)
    U, R = np.linalg.qr(G)
    # Fix the signs (QR's are arbitrary) so the draw is a function of the generator only.
    return U * np.where(np.diag(R) < 0, -1.0, 1.0)


def add_difference_columns(Q, Y, base_z, base_theta, points_z, thetas, *, min_fraction=0.5):
    """Append finite-difference columns measured around ``base_z``.

    For each perturbed point ``p`` (in ``z``) with output ``theta_p``, the displacement
    ``s = p - base_z`` is split into its part in ``span(Q)`` and the rest ``s_perp``; the
    new column is ``q = s_perp / ||s_perp||`` with
    ``y = (theta_p - base_theta - Y Q^T s) / ||s_perp||``, so that ``[Y, y] [Q, q]^T s``
    reproduces the measured difference. For a point drawn orthogonal to ``Q`` this is the
    forward difference ``(theta_p - base_theta) / h``; a point pulled back by a bound
    still gives a valid column. Points whose displacement lies mostly in ``span(Q)``
    (``||s_perp|| < min_fraction ||s||``) or that did not move are skipped.

    Returns ``(Q, Y, kept)``: the grown matrices and the indices of the points used.
    """
    base_theta = np.asarray(base_theta, dtype=np.float64).reshape(-1)
    kept = []
    for i, (p, theta) in enumerate(zip(points_z, thetas)):
        if theta is None:
            continue
        s = np.asarray(p, dtype=np.float64) - base_z
        norm_s = float(np.linalg.norm(s))
        if norm_s == 0.0:
            continue
        c = Q.T @ s
        perp = s - Q @ c
        perp -= Q @ (Q.T @ perp)
        norm_p = float(np.linalg.norm(perp))
        if norm_p < min_fraction * norm_s:
            continue
        y = (np.asarray(theta, dtype=np.float64).reshape(-1) - base_theta - Y @ c) / norm_p
        Q = np.column_stack([Q, perp / norm_p])
        Y = np.column_stack([Y, y])
        kept.append(i)
    return Q, Y, kept
