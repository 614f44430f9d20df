"""What every meta-gradient estimator shares: the plan / estimate split, the projection
combine and the torch ``backward`` bridge.

An estimator *plans* its solves: :meth:`Estimator.plan` checks its arguments, draws its
directions and seeds from ``rng`` at once, and returns a plan (a generator that yields
:class:`~fg2u_zo.evaluation.requests.Request` s and returns the
:class:`~fg2u_zo.MetaGradient`); it never holds an Evaluator. :meth:`Estimator.estimate`
is the convenience loop: the plan answered by an Evaluator.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import FG2UTypeError
from ..evaluation.evaluator import evaluator_scope
from ..evaluation.requests import drive

__all__ = ["Estimator", "combine_projections", "frame_block_size"]


def combine_projections(direct, V, c, *, pairs=False, block_size=None):
    """``g = direct + (1/b) sum_i c_i v_i`` and its per-coordinate standard error.

    Parameters
    ----------
    direct : ndarray, shape (N,)
        The deterministic part (``d_phi f``; zero for a fully black-box estimate).
    V : ndarray, shape (b, N)
        Directions with E[v v^T] = I.
    c : ndarray, shape (b,)
        Directional derivatives ``c_i ~ <grad, v_i>`` of the projected term.
    pairs : bool
        Rows ``2k, 2k+1`` are an antithetic pair: the standard error is then taken over
        pair means, the independent units.
    block_size : int, optional
        The rows come in blocks of ``block_size`` (= N) drawn without replacement from
        an orthonormal frame (``orthogonal`` and ``coordinate`` families). A full block
        sums to exactly N times the projected gradient, so only the last, partial block
        of ``r`` rows carries noise: the i.i.d. standard error is scaled by
        ``sqrt(r (N - r) / ((N - 1) b))``, the finite-population correction (zero when
        ``b`` is a multiple of N).

    Returns
    -------
    grad, stderr : ndarray, shape (N,)
    """
    contrib = c[:, None] * V
    b = contrib.shape[0]
    grad = direct + contrib.mean(axis=0)
    units = contrib.reshape(b // 2, 2, -1).mean(axis=1) if pairs else contrib
    if block_size is not None and not pairs:
        n, r = block_size, b % block_size
        factor = 0.0 if n == 1 or r == 0 else np.sqrt(r * (n - r) / ((n - 1) * b))
        if factor == 0.0:
            return grad, np.zeros_like(grad)
        stderr = factor * units.std(axis=0, ddof=1) / np.sqrt(b) if b > 1 else np.full(
            grad.shape, np.inf)
        return grad, stderr
    if units.shape[0] < 2:
        stderr = np.full(grad.shape, np.inf)
    else:
        stderr = units.std(axis=0, ddof=1) / np.sqrt(units.shape[0])
    return grad, stderr


def frame_block_size(directions: str, num_params: int, num_dropped: int = 0):
    """``block_size`` for :func:`combine_projections`, or None when rows are i.i.d.

    Dropped rows break the full-block structure, so the i.i.d. formula is used then.
    """
    if directions in ("orthogonal", "coordinate") and num_dropped == 0:
        return num_params
    return None


class Estimator:
    """Base class: subclasses implement :meth:`plan`."""

    name = "estimator"
    #: Keywords ``plan`` (and ``estimate``) take beyond the common ones, declared here so
    #: that the outer loop never inspects signatures: ``"noise"`` (reuse a
    #: NoiseEstimate), ``"keep_sketch"`` (fill ``MetaGradient.sketch``), ``"warned"`` (a
    #: set shared by a run's estimates so each warning shows once).
    options: frozenset = frozenset()

    def check_problem(self, problem) -> None:
        """Raise a clear error if ``problem`` lacks what this estimator needs.

        Called by every ``plan`` and, before step 0, by :func:`fg2u_zo.minimize` for
        every phase, so a run fails at once rather than at phase 2.
        """

    def plan(self, problem, phi, *, rng=None, **options):  # pragma: no cover - abstract
        """Check the arguments, draw from ``rng``, and return the plan of the estimate:
        a generator that yields Requests and returns a :class:`~fg2u_zo.MetaGradient`.
        ``options`` are those declared in :attr:`options`."""
        raise NotImplementedError

    def estimate(self, problem, phi, *, rng=None, evaluator=None, backend=None, n_jobs=None,
                 **options):
        """Estimate the meta-gradient of ``problem`` at ``phi``: :meth:`plan`, answered
        by ``evaluator`` (or a temporary Evaluator made from ``backend``, ``n_jobs`` and
        the remaining keywords, closed afterwards).

        Keywords declared in :attr:`options` go to :meth:`plan`; the others are
        Evaluator options (``timeout``, ``max_retries``, ...).
        """
        mine = {key: options.pop(key) for key in list(options) if key in self.options}
        plan = self.plan(problem, phi, rng=rng, **mine)
        with evaluator_scope(evaluator, backend, n_jobs, options) as ev:
            return drive(plan, ev)

    def backward(self, problem, phi, **kwargs):
        """Estimate the meta-gradient at ``phi`` and accumulate it into ``phi.grad``.

        This lets any ``torch.optim`` optimizer drive the outer loop::

            phi = torch.zeros(n, dtype=torch.float64, requires_grad=True)
            opt = torch.optim.Adam([phi], lr=1e-2)
            for _ in range(100):
                opt.zero_grad()
                est.backward(problem, phi, rng=rng)
                opt.step()

        Parameters
        ----------
        problem : BilevelProblem
        phi : torch.Tensor, shape (N,)
            A leaf tensor; its ``.grad`` receives the estimate (added, as autograd does).
        **kwargs
            Passed on to :meth:`estimate` (``rng``, ``evaluator``, ``backend`` ...).

        Returns
        -------
        MetaGradient
        """
        if not isinstance(phi, torch.Tensor):
            raise FG2UTypeError(
                f"`phi` must be a torch.Tensor for backward(), got {type(phi).__name__}; "
                "use estimate() for numpy arrays")
        result = self.estimate(problem, phi.detach().cpu().numpy(), **kwargs)
        g = torch.as_tensor(result.grad, dtype=phi.dtype, device=phi.device).reshape(phi.shape)
        if phi.grad is None:
            phi.grad = g.clone()
        else:
            phi.grad.add_(g)
        return result
