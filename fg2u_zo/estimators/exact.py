"""Exact estimators through a torch inner solver.

FG2U pushes random directions through the solver in forward mode
(``torch.func.jvp``, vmapped over chunks of directions): memory does not grow with
the unroll depth. RGU is plain reverse-mode unrolling, the exact gradient whose
memory grows with the depth; it is the reference in checks and benchmarks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch.func import jvp, vmap

from ..validation import as_generator, check_choice, check_phi, check_positive_int
from ..directions import DIRECTION_FAMILIES, sample_directions
from ..errors import FG2UTypeError, FG2UValueError, InnerSolverError
from .base import Estimator, combine_projections, frame_block_size
from ..evaluation.requests import done, new_seed
from ..result import MetaGradient, Sketch
from .reductions import check_keep_sketch

__all__ = ["FG2U", "RGU", "forward_tangents"]


def _check_theta(theta, who):
    if not isinstance(theta, torch.Tensor):
        raise FG2UTypeError(
            f"`inner_torch` must return a torch.Tensor, got {type(theta).__name__} ({who})")
    if not bool(torch.isfinite(theta).all()):
        raise InnerSolverError(
            f"the torch inner solver returned non-finite values ({who})", kind="nonfinite")
    return theta


def forward_tangents(fn, phi, V, *, project=None, keep=True, chunk_size=None,
                     vectorize=True):
    """Forward-mode products ``J_S v_i`` of a torch inner solver, chunk by chunk.

    Parameters
    ----------
    fn : callable
        ``fn(phi_tensor) -> theta_tensor`` (``problem.inner_torch``).
    phi : array_like, shape (N,)
    V : array_like, shape (b, N)
        The directions, one per row.
    project : array_like, optional
        With it, also ``c_i = <project, J_S v_i>``, computed inside the vmapped
        function so that without ``keep`` memory stays O(M + b).
    keep : bool
        Return the tangents ``T[i] = J_S v_i`` (flattened, shape (b, M)): memory O(M b).
    chunk_size : int, optional
        Directions per vmapped batch (default: all at once).
    vectorize : bool
        ``torch.func.vmap`` over a chunk, or a Python loop.

    Returns
    -------
    c or T or (c, T)
        ``c`` with ``project`` only, ``T`` with ``keep`` only, both with both.

    Raises
    ------
    FG2UValueError
        When vmap cannot batch ``fn`` (use ``vectorize=False``).
    InnerSolverError
        When a tangent is not finite.
    """
    phi_t = torch.as_tensor(phi, dtype=torch.float64)
    g_t = None if project is None else torch.as_tensor(project, dtype=torch.float64).reshape(-1)
    if g_t is None and not keep:
        raise FG2UValueError("forward_tangents needs `project=` or keep=True")

    def one(v):
        t = jvp(fn, (phi_t,), (v,))[1].reshape(-1)
        if g_t is None:
            return t
        return (t @ g_t, t) if keep else t @ g_t

    V = torch.as_tensor(np.asarray(V), dtype=torch.float64)
    chunk = chunk_size or V.shape[0]
    projections, tangents = [], []
    for start in range(0, V.shape[0], chunk):
        block = V[start:start + chunk]
        if vectorize:
            try:
                vals = vmap(one)(block)
            except RuntimeError as exc:
                raise FG2UValueError(
                    "torch.func.vmap could not batch the inner solver over directions "
                    f"({exc}); pass FG2U(vectorize=False) to loop over them") from exc
        else:
            rows = [one(v) for v in block]
            if g_t is not None and keep:
                vals = (torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))
            else:
                vals = torch.stack(rows)
        if g_t is not None and keep:
            vals, kept = vals
            tangents.append(kept.detach().numpy())
        elif g_t is None:
            tangents.append(vals.detach().numpy())
            continue
        projections.append(vals.detach().numpy())
    c = np.concatenate(projections) if g_t is not None else None
    T = np.concatenate(tangents) if keep else None
    if (c is not None and not np.all(np.isfinite(c))) or (
            T is not None and not np.all(np.isfinite(T))):
        raise InnerSolverError("a forward-mode solve returned non-finite tangents",
                               kind="nonfinite")
    if c is None:
        return T
    return (c, T) if keep else c


@dataclass(frozen=True)
class FG2U(Estimator):
    """FG²U: forward gradient unrolling with exact Jacobian-vector products.

    ``g = d_phi f + (1/b) sum_i <grad_theta f, J_S v_i> v_i`` with ``J_S v_i`` from
    ``torch.func.jvp`` through ``problem.inner_torch``. Unbiased; memory flat in the
    unroll depth.

    Parameters
    ----------
    num_directions : int
        Number b of random directions.
    directions : str
        Direction family (see :func:`fg2u_zo.sample_directions`).
    antithetic : bool
        Use pairs ``v, -v``.
    chunk_size : int, optional
        Directions pushed through the solver together by ``torch.func.vmap``; memory
        grows with it. Default: all ``num_directions`` at once.
    vectorize : bool
        If False, loop over directions instead of ``vmap`` (for solvers with
        data-dependent control flow that vmap cannot batch).

    Notes
    -----
    ``nfev`` counts ``1 + num_directions`` solves: one plain forward pass at phi and one
    forward-mode pass per direction. The torch path runs in the calling process (the
    plan asks for no solve); ``backend``/``n_jobs`` of ``estimate`` are accepted for
    interface symmetry and ignored.
    """

    num_directions: int = 16
    directions: str = "gaussian"
    antithetic: bool = False
    chunk_size: int | None = None
    vectorize: bool = True

    name: ClassVar[str] = "FG2U"
    options: ClassVar[frozenset] = frozenset({"keep_sketch"})

    def __post_init__(self):
        check_positive_int(self.num_directions, "num_directions")
        check_choice(self.directions, "directions", DIRECTION_FAMILIES)
        if self.chunk_size is not None:
            check_positive_int(self.chunk_size, "chunk_size")
        if self.antithetic and self.num_directions % 2:
            raise FG2UValueError(
                f"`num_directions` must be even with antithetic=True, got {self.num_directions}")

    def check_problem(self, problem) -> None:
        problem.require_torch_inner("FG2U")
        problem.require_differentiable_outer("FG2U")

    def directional_derivatives(self, problem, phi, V, g_theta, *, keep_tangents=False):
        """``c_i = <g_theta, J_S v_i>`` for each row of ``V``, chunk by chunk.

        With ``keep_tangents=True``, return ``(c, T)`` where ``T[i] = J_S v_i``
        (flattened, shape (b, M)): memory O(M b).
        """
        return forward_tangents(problem.inner_torch, phi, V, project=g_theta,
                                keep=keep_tangents, chunk_size=self.chunk_size,
                                vectorize=self.vectorize)

    def plan(self, problem, phi, *, rng=None, keep_sketch=False):
        """The estimate at ``phi`` (see :meth:`FG2UZO.plan`), computed in this process
        at once: the plan asks for no solve.

        With ``keep_sketch=True``, ``MetaGradient.sketch`` holds the unit directions
        ``U`` and ``Y[:, i] = J_S u_i`` from ``torch.func.jvp`` (scheme ``"exact"``,
        step None, every direction in the mask).
        """
        wall_start = time.perf_counter()
        self.check_problem(problem)
        phi = check_phi(phi, problem.num_params)
        keep_sketch = check_keep_sketch(keep_sketch)
        rng = as_generator(rng)
        new_seed(rng)  # keep the generator in step with FG2UZO: same directions
        V = sample_directions(self.directions, phi.size, self.num_directions, rng,
                              antithetic=self.antithetic)
        solve_start = time.perf_counter()
        with torch.no_grad():
            theta0 = _check_theta(problem.inner_torch(torch.as_tensor(phi)), "at phi")
        theta0 = theta0.detach().numpy().astype(np.float64)
        value, g_theta, direct = problem.outer_parts(theta0, phi)
        sketch = None
        if keep_sketch:
            c, T = self.directional_derivatives(problem, phi, V, g_theta, keep_tangents=True)
            norms = np.linalg.norm(V, axis=1)
            # J_S is linear in the tangent: J_S (v / ||v||) = (J_S v) / ||v||.
            sketch = Sketch(directions=V / norms[:, None], step=None, scheme="exact",
                            theta0=theta0.ravel().copy(), Y=(T / norms[:, None]).T,
                            mask=np.ones(V.shape[0], dtype=bool))
        else:
            c = self.directional_derivatives(problem, phi, V, g_theta)
        solver_time = time.perf_counter() - solve_start
        block = None if self.antithetic else frame_block_size(self.directions, phi.size)
        grad, stderr = combine_projections(direct, V, c, pairs=self.antithetic, block_size=block)
        return done(MetaGradient(
            grad=grad, value=value, stderr=stderr, nfev=1 + V.shape[0],
            num_directions=V.shape[0], failures=[], theta=theta0, estimator=self.name,
            solver_time=solver_time, wall_time=time.perf_counter() - wall_start,
            sketch=sketch))


@dataclass(frozen=True)
class RGU(Estimator):
    """Reverse-mode gradient unrolling: the exact meta-gradient by backpropagation.

    Differentiates ``outer(inner_torch(phi), phi)`` with torch autograd. Exact, one
    solve, but memory grows with the unroll depth of the inner solver (the whole
    computation graph is kept). ``stderr`` is zero.
    """

    name: ClassVar[str] = "RGU"

    def check_problem(self, problem) -> None:
        problem.require_torch_inner("RGU")
        problem.require_differentiable_outer("RGU")

    def plan(self, problem, phi, *, rng=None):
        """The exact meta-gradient at ``phi``, computed in this process at once (the plan
        asks for no solve); ``rng`` is ignored."""
        wall_start = time.perf_counter()
        self.check_problem(problem)
        return done(reverse_mode_gradient(problem, problem.inner_torch, phi, self.name,
                                          wall_start))


def reverse_mode_gradient(problem, inner, phi, name, wall_start) -> MetaGradient:
    """One backward pass through ``inner(phi)`` and the outer loss: the reverse-mode
    estimators' shared body (``inner`` is the full or the truncated torch solver)."""
    phi = check_phi(phi, problem.num_params)
    phi_t = torch.tensor(phi, dtype=torch.float64, requires_grad=True)
    theta = _check_theta(inner(phi_t), "at phi")
    loss = problem.outer_torch(theta, phi_t)
    (grad,) = torch.autograd.grad(loss, (phi_t,), allow_unused=True)
    grad = np.zeros_like(phi) if grad is None else grad.detach().numpy().copy()
    solver_time = time.perf_counter() - wall_start
    return MetaGradient(
        grad=grad, value=float(loss.detach()), stderr=np.zeros_like(phi), nfev=1,
        num_directions=0, failures=[], theta=theta.detach().numpy().astype(np.float64),
        estimator=name, solver_time=solver_time, wall_time=time.perf_counter() - wall_start)
