"""The noise estimate: what the probe found, and the steps it calls for.

:class:`NoiseEstimate` is the typed result of :func:`fg2u_zo.estimate_noise` and of the
probe an estimator runs with ``step="auto"``; it is stored in checkpoints through
:meth:`NoiseEstimate.to_dict` / :meth:`NoiseEstimate.from_dict`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["NoiseEstimate", "STATUSES"]

STATUSES = ("ok", "exact", "too_small", "too_large", "failed")


@dataclass(frozen=True, eq=False)
class NoiseEstimate:
    """The noise level of a black-box evaluation and the steps it calls for.

    All derivatives and errors refer to the scalar ``f(t)`` examined along a unit
    direction ``u`` (``q(t) = <grad_theta f, S(phi + t u)>`` for FG2UZO, the
    objective ``F(phi + t u)`` for BlackBoxES): the same quantity, per unit
    direction, that each finite difference of an estimate computes.

    Attributes
    ----------
    noise : float
        Standard deviation of the noise of one evaluation of ``f`` (absolute).
        ``nan`` when no estimate could be made (``status`` "too_small" or
        "failed"); for "too_large" an upper bound.
    relative_noise : float
        ``noise / scale``: about ``10**-d`` when ``f`` carries ``d`` correct digits.
    scale : float
        The magnitude of ``f`` the noise is relative to: ``max_t sum_j |g_j
        theta_j(t)|`` for the projection (the size of the terms whose rounding is
        the noise, which cancellation in the sum does not reduce), ``max_t |F(t)|``
        for the objective.
    curvature : float
        ``|f''|`` along the probe lines (root mean square over ``num_lines``), each
        from a difference that rises above the noise; an upper bound when none does
        (the function is then nearly linear).
    third_derivative : float
        ``|f'''|``, likewise.
    slope : float
        ``|f'|`` (root mean square over the lines), from the most accurate central
        difference available; the denominator of :meth:`relative_error`.
    spacing : float
        Spacing of the probe points of the final difference table.
    status : {"ok", "exact", "too_small", "too_large", "failed"}
        ``"ok"``: a noise plateau was found. ``"exact"``: the noise is at
        double-precision rounding (``relative_noise <= EXACT_RELATIVE_NOISE``) or
        zero; the steps are then :func:`fg2u_zo.noise.steps.default_step`. The others
        say why the last try failed: outputs identical (spacing too small), no
        plateau (too large), evaluations failed; the steps then fall back to the
        default as well.
    nfev : int
        Inner-solver evaluations spent by the probe (the base point excluded when it
        was shared with an estimate).
    order : int
        Order of the difference table at which the noise plateau starts (0: none, or
        a printed-precision ``method``).
    method : {"table", "digits", "bits"}
        How the noise was read: ``"table"``, the difference-table plateau (ECnoise);
        ``"digits"`` / ``"bits"``, from the unit of the last digit of outputs printed
        with few significant decimal digits / mantissa bits (each contributing a
        uniform rounding error ``q / sqrt(12)``); the difference table misjudges
        rounding on lines where the outputs are nearly linear.
    quantity : {"inner", "value"}
        Which scalar was examined (projection or objective).
    num_lines : int
        Lines the derivatives were measured along (their root mean square is
        reported); the noise is read along the first.
    num_params : int
        N, the length of the phi it was measured at.
    phi_scale : float
        :func:`fg2u_zo.noise.steps.step_scale` of that phi.
    step_forward, step_central : float
        The noise-optimal steps (Euclidean length) for each scheme.
    predicted_error_forward, predicted_error_central : float
        Predicted RMS error of one finite-difference directional derivative along a
        unit direction at those steps.
    output_noise : ndarray, shape (M,) or None
        Noise level of each output component of the solver, from the same table.
    output_relative_noise : ndarray, shape (M,) or None
        ``output_noise / max_t |theta_j(t)|`` (0 where an output is identically 0).
    attempts : tuple of (float, str)
        ``(spacing, status)`` of each try, in order.
    output_precision : int
        Significant digits (``method="digits"``) or bits (``"bits"``) of the printed
        outputs; 0 otherwise.
    solver_time : float
        Seconds spent inside the solver by the probe.
    difference_to_noise : float or None
        Filled in on the copy an estimate reports (``MetaGradient.noise``): root mean
        square over its directions of ``|f(phi + h u_i) - f(phi)| / noise`` (forward) or
        ``|f(phi + h u_i) - f(phi - h u_i)| / noise`` (central), the projection's noise
        taken at the estimate's own outer gradient when the per-output noise is known.
        Near 1 the differences are drowned in noise. ``None`` straight out of
        :func:`estimate_noise`.
    flat_fraction : float
        Fraction of the neighbouring points on the first probe line between which the
        examined scalar did not change at all, while it did between others: near 1 with
        full-precision outputs, the response is piecewise constant (a tree model's split
        thresholds, an integer setting), not smooth at the probe's scale.
    """

    noise: float
    relative_noise: float
    scale: float
    curvature: float
    third_derivative: float
    slope: float
    spacing: float
    status: str
    nfev: int
    order: int
    method: str
    quantity: str
    num_lines: int
    num_params: int
    phi_scale: float
    step_forward: float
    step_central: float
    predicted_error_forward: float
    predicted_error_central: float
    output_noise: np.ndarray | None = None
    output_relative_noise: np.ndarray | None = None
    attempts: tuple = ()
    output_precision: int = 0
    solver_time: float = 0.0
    difference_to_noise: float | None = None
    flat_fraction: float = 0.0

    def step(self, scheme: str) -> float:
        """The step chosen for ``scheme`` ("forward" or "central")."""
        return self.step_forward if scheme == "forward" else self.step_central

    def predicted_error(self, scheme: str) -> float:
        """Predicted RMS error of one directional derivative (unit direction)."""
        return (self.predicted_error_forward if scheme == "forward"
                else self.predicted_error_central)

    def relative_error(self, scheme: str) -> float:
        """``predicted_error(scheme) / slope``: the digits the difference can deliver."""
        err = self.predicted_error(scheme)
        if self.slope > 0 or np.isnan(err):
            return err / self.slope if self.slope > 0 else np.nan
        return 0.0 if err == 0 else np.inf

    @property
    def digits(self) -> float:
        """Correct significant digits of the examined scalar, ``-log10(relative_noise)``."""
        if not self.relative_noise > 0:
            return np.inf if self.relative_noise == 0 else np.nan
        return -math.log10(self.relative_noise)

    @property
    def output_digits(self) -> float:
        """Median over output components of their correct significant digits."""
        rel = self.output_relative_noise
        if rel is None or rel.size == 0:
            return np.nan
        rel = rel[rel > 0]
        return np.inf if rel.size == 0 else -math.log10(float(np.median(rel)))

    def to_dict(self) -> dict:
        """Every field as plain Python (arrays as lists), for checkpoints and logs.

        :meth:`from_dict` rebuilds an equal estimate, so a resumed run takes exactly
        the same steps. Non-finite floats stay floats (``json.dumps`` writes them as
        ``NaN``/``Infinity``).
        """
        out = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif name == "attempts":
                value = [[float(spacing), status] for spacing, status in value]
            elif isinstance(value, np.generic):
                value = value.item()
            out[name] = value
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "NoiseEstimate":
        """Inverse of :meth:`to_dict`."""
        data = dict(data)
        for name in ("output_noise", "output_relative_noise"):
            if data.get(name) is not None:
                data[name] = np.asarray(data[name], dtype=np.float64)
        data["attempts"] = tuple((float(s), str(st)) for s, st in data.get("attempts", ()))
        return cls(**data)

    def __str__(self) -> str:
        # Continuation lines are indented to sit under the value column of
        # GradientCheck's "noise     : " line.
        pad = "\n" + " " * 12
        what = "<grad_theta f, S>" if self.quantity == "inner" else "F"
        head = (f"{self.noise:.2e} on {what} ({self.relative_noise:.1e} relative, "
                f"~{self.digits:.1f} digits), status {self.status}")
        probe = f"probe: {self.nfev} solves, spacing {self.spacing:.1e}"
        if self.status in ("ok", "exact"):
            probe += f", {self.method}"
        if len(self.attempts) > 1:
            probe += " after " + ", ".join(f"{s:.0e} {st}" for s, st in self.attempts[:-1])
        if self.method in ("digits", "bits"):
            probe += f"; outputs printed with {self.output_precision} {self.method}"
        elif self.output_relative_noise is not None:
            probe += f"; outputs ~{self.output_digits:.1f} digits (median)"
        derivs = (f"|f'| ~ {self.slope:.2e}, |f''| ~ {self.curvature:.2e}, "
                  f"|f'''| ~ {self.third_derivative:.2e} (rms over {self.num_lines} lines)")
        schemes = [f"{scheme:8s}: step {self.step(scheme):.2e}, predicted error "
                   f"{self.predicted_error(scheme):.1e} ({self.relative_error(scheme):.1e} "
                   "relative)" for scheme in ("forward", "central")]
        lines = [head, probe, derivs, *schemes]
        if self.difference_to_noise is not None:
            lines.append(f"differences / noise in the estimate: {self.difference_to_noise:.3g}")
        return pad.join(lines)
