"""Typed results: what an estimate, a failure and a gradient check report."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Failure", "Sketch", "MetaGradient", "GradientCheck"]


@dataclass(frozen=True)
class Failure:
    """One inner-solver evaluation that failed for good (after its retries).

    Attributes
    ----------
    index : int
        Position of the evaluation in the estimate's plan (0-based).
    direction : int or None
        Index of the random direction the evaluation belonged to; ``None`` for the
        base point.
    kind : str
        ``"exception"``, ``"nonfinite"``, ``"shape"``, ``"type"``, ``"timeout"``,
        ``"crash"`` (the worker process died), ...
    message : str
        The tail of the error message, traceback or stderr.
    attempts : int
        How many times the evaluation was tried.
    """

    index: int
    direction: int | None
    kind: str
    message: str
    attempts: int = 1


@dataclass(frozen=True, eq=False)
class Sketch:
    """The directional derivatives behind an estimate: ``Y ~ J_S U^T``.

    Kept only when asked for (``estimate(..., keep_sketch=True)``): memory O(M b).
    A model-based stepper (Gauss-Newton) linearizes the inner solver with it,
    ``S(phi + U^T a) ~ theta0 + Y a``.

    Attributes
    ----------
    directions : ndarray, shape (b, N)
        ``U``: the directions of the estimate, scaled to unit length row by row
        (``U = V / ||V||`` for the drawn directions ``V`` with ``E[v v^T] = I``).
    step : float or None
        The finite-difference step ``h`` (perturbed points ``phi +- h u_i``); ``None``
        on the exact path.
    scheme : {"forward", "central", "exact"}
        How ``Y`` was formed: ``(S(phi + h u_i) - theta0) / h``,
        ``(S(phi + h u_i) - S(phi - h u_i)) / (2 h)``, or ``torch.func.jvp`` along ``u_i``.
    theta0 : ndarray, shape (M,)
        The base output ``S(phi)``, flattened.
    Y : ndarray, shape (M, b)
        ``Y[:, i] ~ J_S(phi) u_i``. Columns of directions that failed are NaN.
    mask : ndarray of bool, shape (b,)
        The directions that succeeded and entered the estimate (an antithetic pair is
        masked whole). ``Y[:, ~mask]`` is NaN, never zero-filled.
    """

    directions: np.ndarray
    step: float | None
    scheme: str
    theta0: np.ndarray
    Y: np.ndarray
    mask: np.ndarray

    @property
    def num_directions(self) -> int:
        """Directions that succeeded (``mask.sum()``)."""
        return int(np.count_nonzero(self.mask))

    def successful(self):
        """``(U, Y)`` restricted to the directions that succeeded: shapes (d, N), (M, d)."""
        return self.directions[self.mask], self.Y[:, self.mask]

    def __repr__(self) -> str:
        b, n = self.directions.shape
        return (f"Sketch(scheme={self.scheme!r}, step={self.step!r}, N={n}, "
                f"M={self.theta0.size}, directions={self.num_directions}/{b})")


@dataclass(frozen=True, repr=False)
class MetaGradient:
    """A meta-gradient estimate ``g_hat ~ grad F(phi)`` with its diagnostics.

    Attributes
    ----------
    grad : ndarray, shape (N,)
        The estimate.
    value : float
        The outer loss ``F(phi) = f(S(phi), phi)`` at the base point.
    stderr : ndarray, shape (N,)
        Per-coordinate Monte-Carlo standard error of ``grad`` (zeros for deterministic
        estimators, ``inf`` when a single direction gives no spread to measure).
    nfev : int
        Inner-solver evaluations spent, counted where results were gathered, failed
        attempts and retries included. On the torch path: one per solve, one per
        direction for the forward-mode (jvp) solves.
    num_directions : int
        Directions that entered the estimate (after dropping failed ones).
    failures : list of Failure
        Evaluations that failed for good and were dropped.
    theta : ndarray
        The inner solution ``S(phi)`` at the base point.
    estimator : str
        Name of the estimator that produced it.
    step : float or None
        Finite-difference step (Euclidean length of the perturbation), ``None`` on
        exact paths.
    scheme : str or None
        ``"forward"`` or ``"central"`` for finite differences.
    solver_time : float
        Seconds spent inside the inner solver, summed over evaluations.
    wall_time : float
        Seconds of wall-clock time for the whole estimate.
    noise : NoiseEstimate or None
        For finite differences with ``step="auto"`` (or a ``noise=`` passed in): the
        noise estimate the step came from, with its predicted error
        (``noise.predicted_error(scheme)``, ``noise.relative_error(scheme)``) and the
        size of this estimate's differences against the noise
        (``noise.difference_to_noise``). Pass it back as ``noise=`` to reuse it.
        ``None`` for a fixed step and on exact paths.
    sketch : Sketch or None
        The directions and directional derivatives ``Y ~ J_S U^T`` behind the
        estimate, when it was asked for with ``keep_sketch=True``; ``None`` otherwise.
    zero_differences : int
        Finite differences only: directions (among the ``num_directions`` that entered
        the estimate) whose perturbed outputs did not move beyond the resolution of the
        solver's output (exactly equal to the base output, or within one unit of the
        last printed digit). See :attr:`degenerate`.
    """

    grad: np.ndarray
    value: float
    stderr: np.ndarray
    nfev: int
    num_directions: int
    failures: list = field(default_factory=list)
    theta: np.ndarray | None = None
    estimator: str = ""
    step: float | None = None
    scheme: str | None = None
    solver_time: float = 0.0
    wall_time: float = 0.0
    noise: object = None
    sketch: Sketch | None = None
    zero_differences: int = 0

    @property
    def degenerate(self) -> bool:
        """True when every direction's differences were zero or below the output
        resolution: the step is too small for the solver's precision, and ``grad``
        carries no information on the inner solver. An outer loop must not take such
        a gradient for convergence."""
        return self.num_directions > 0 and self.zero_differences >= self.num_directions

    @property
    def snr(self) -> float:
        """Signal-to-noise ratio ``||grad|| / ||stderr||`` (``inf`` for exact estimates)."""
        noise = float(np.linalg.norm(self.stderr))
        signal = float(np.linalg.norm(self.grad))
        if noise == 0.0:
            return np.inf
        return signal / noise

    def __repr__(self) -> str:
        return (f"MetaGradient(estimator={self.estimator!r}, value={self.value:.6g}, "
                f"|grad|={np.linalg.norm(self.grad):.4g}, snr={self.snr:.3g}, "
                f"nfev={self.nfev}, num_directions={self.num_directions}, "
                f"failures={len(self.failures)}"
                + (", degenerate=True" if self.degenerate else "") + ")")


@dataclass(frozen=True)
class GradientCheck:
    """Outcome of :func:`fg2u_zo.check_meta_gradient`.

    Attributes
    ----------
    rel_err : float
        ``||g - g_ref|| / ||g_ref||`` (the absolute difference when ``g_ref = 0``).
    cosine : float
        Cosine similarity between the estimate and the reference; ``nan`` when either
        is zero (then :attr:`reason` says which).
    estimate, reference : MetaGradient
        The two gradients compared.
    tolerance : float
        The largest ``||g - g_ref||`` that passes: ``num_stderr`` standard errors of
        the difference (from the two estimates' ``stderr``) plus ``rtol`` (or the
        predicted relative error of the finite differences, if larger) times
        ``||g_ref||``; ``nan`` when no verdict could be formed.
    passed : bool
        ``||g - g_ref|| <= tolerance``, and neither gradient degenerate or non-finite.
    reason : str
        Why it passed or failed, in words.
    """

    rel_err: float
    cosine: float
    estimate: MetaGradient
    reference: MetaGradient
    tolerance: float = float("nan")
    passed: bool = False
    reason: str = ""

    def __str__(self) -> str:
        cosine = (f"{self.cosine:.6f}" if np.isfinite(self.cosine)
                  else "undefined (a zero gradient)")
        lines = [
            f"estimator : {self.estimate.estimator} ({self.estimate.nfev} solves)",
            f"reference : {self.reference.estimator} ({self.reference.nfev} solves)",
            f"rel_err   : {self.rel_err:.3e}",
            f"cosine    : {cosine}",
            f"verdict   : {'PASSED' if self.passed else 'FAILED'}: {self.reason}",
        ]
        if self.estimate.step is not None:
            lines.append(f"step      : {self.estimate.step:.3e} ({self.estimate.scheme})")
        if self.estimate.noise is not None:
            lines.append(f"noise     : {self.estimate.noise}")
        return "\n".join(lines)
