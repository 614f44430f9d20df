"""Fourier pseudo-spectral reference simulators: Burgers, KdV and Allen-Cahn.

Each class is an inner solver whose meta-parameters ``phi`` are PDE coefficients::

    solver(phi, *, warm_start=None, seed=None) -> u      # u[i, j] = u(t_out[i], x_out[j])

The PDEs are written ``u_t = L u + N(u)`` on a periodic interval: ``L`` is the linear part
(diagonal in Fourier space, possibly stiff), ``N`` the nonlinear part, which is evaluated
pseudo-spectrally (product on the grid, derivative in Fourier space) with a 2/3-rule
dealiasing mask.

Time stepping
-------------
The default ``method="etdrk4"`` is the fourth-order exponential time-differencing
Runge-Kutta scheme of Cox & Matthews (2002) in the form of Kassam & Trefethen (2005),
with a **fixed** step: each output interval ``[t_out[i], t_out[i+1]]`` is cut into
``ceil((t_out[i+1] - t_out[i]) / dt)`` equal steps. ``L`` is integrated exactly, so the
step is limited by the accuracy of the nonlinear term only, not by the stiffness of
``nu u_xx`` or ``l2 u_xxx``.

A fixed step is chosen on purpose: these solvers feed finite-difference meta-gradients
(FG2U-ZO). With a fixed step the discrete solution is an analytic function of the
coefficients, so ``(S(phi + mu v) - S(phi - mu v)) / (2 mu)`` converges like ``mu**2``
down to the round-off floor. Measured at the default settings (Moré-Wild noise estimate
from 4th differences, relative to the RMS of u): about 5e-15 (Burgers), 1e-14 (KdV),
2e-14 (Allen-Cahn); central differences in ``nu`` with relative steps 1e-4 and 1e-5
agree to 1.4e-8.

An adaptive step-size controller (``solve_ivp``) makes the output only piecewise smooth
in ``phi``: where the number of steps or the accept/reject pattern changes, it jumps by
up to the local error, and a stencil straddling such a point gets an ``O(jump / mu)``
error. Measured on the Burgers data problem with DOP853 (1024 modes): the step count
changes (592 steps at ``nu``, 615 at ``1.05 nu``, rtol=1e-10), and at rtol=1e-6 forward
differences with relative steps 1e-3 and 1e-4 disagree by 1.3e-2, where the fixed-step
ETDRK4 shows 6.0e-4, its O(mu) truncation error. The adaptive integrators are offered
(``method="RK45" | "RK23" | "DOP853"``, restarted at every output time, with an
integrating factor for the dispersive part only) as an independent cross-check; on
these problems they are 10-50 times slower (2-3 s per Burgers solve).

Orientation of the output
-------------------------
``u`` has shape ``(len(t_out), len(x_out))``: one row per output time, ``u[0]`` being the
initial condition. With ``flatten=True`` it is ``u.ravel()`` (time-major, C order).
Values at ``x_out`` are exact Fourier interpolation of the spectral solution (the
trigonometric polynomial the solver evolves), so ``x_out`` may be any points; they are
taken modulo the period.

References
----------
S. M. Cox and P. C. Matthews, "Exponential time differencing for stiff systems",
J. Comput. Phys. 176 (2002). A.-K. Kassam and L. N. Trefethen, "Fourth-order
time-stepping for stiff PDEs", SIAM J. Sci. Comput. 26 (2005). M. Raissi, P. Perdikaris
and G. E. Karniadakis, "Physics-informed neural networks", J. Comput. Phys. 378 (2019).

The three simulators share one module (~640 lines, much of it documentation): they share
the grid, the dealiasing, the ETDRK4 coefficients and the time loop, and differ only in
their linear and nonlinear terms.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from fg2u_zo.errors import FG2UTypeError, FG2UValueError, InnerSolverError
from fg2u_zo.validation import check_finite_vector, check_positive_float

from ._fingerprint import adapter_name, array_digest

__all__ = ["Burgers", "KdV", "AllenCahn"]

_IVP_METHODS = ("RK45", "RK23", "DOP853")
_METHODS = ("etdrk4",) + _IVP_METHODS
# Step sizes of different output intervals that agree to this relative tolerance share one
# set of ETDRK4 coefficients: np.diff(np.linspace(...)) differs in the last bits only.
_STEP_RTOL = 1e-12


# --------------------------------------------------------------------------- helpers

def _phi_functions(z):
    """phi_1, phi_2, phi_3 of ETD, ``phi_j(z) = sum_n z**n / (n + j)!``, elementwise.

    The closed forms (e.g. ``(exp(z) - 1 - z - z**2/2) / z**3``) cancel catastrophically
    near 0, so |z| < 1 uses the Taylor series (20 terms: truncation < 1e-19), the rest the
    closed form (relative error a few 1e-15 at |z| = 1). Kassam & Trefethen's contour
    integral does the same job; this is cheaper and works for any complex z. Overflow
    (exp of a large positive z: an ill-posed, anti-diffusive coefficient) gives inf, which
    the blow-up guard turns into an InnerSolverError.
    """
    z = np.asarray(z)
    small = np.abs(z) < 1.0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        zb = np.where(small, 2.0, z)   # any value with |z| >= 1 keeps the closed form finite
        ez = np.exp(zb)
        p1 = (ez - 1.0) / zb
        p2 = (ez - 1.0 - zb) / zb**2
        p3 = (ez - 1.0 - zb - 0.5 * zb**2) / zb**3
    if np.any(small):
        zs = z[small]
        s1 = s2 = s3 = np.zeros_like(zs)
        for n in range(20, -1, -1):   # Horner: phi_j = sum_n z^n / (n + j)!
            s1 = s1 * zs + 1.0 / math.factorial(n + 1)
            s2 = s2 * zs + 1.0 / math.factorial(n + 2)
            s3 = s3 * zs + 1.0 / math.factorial(n + 3)
        p1[small], p2[small], p3[small] = s1, s2, s3   # fresh arrays: safe to write
    return p1, p2, p3


def _trig_interpolate(values, x_src, x_dst, period):
    """Trigonometric interpolation of samples on a uniform periodic grid (exact for
    band-limited data); the Nyquist mode of an even grid is split symmetrically."""
    m = values.size
    c = np.fft.rfft(values)
    w = np.full(c.size, 2.0 / m)
    w[0] = 1.0 / m
    if m % 2 == 0:
        w[-1] = 1.0 / m
    theta = np.outer(2 * np.pi / period * np.arange(c.size), x_dst - x_src[0])
    return (w * c.real) @ np.cos(theta) - (w * c.imag) @ np.sin(theta)


# --------------------------------------------------------------------------- base class

class _PeriodicSpectral:
    """Shared machinery. Subclasses set the class attributes below and `_operators`."""

    #: coefficient names in canonical order, and their default values (Raissi et al.)
    coefficient_names: tuple = ()
    default_coefficients: dict = {}
    _default_n_modes = 256
    _default_dt = 1e-3

    def __init__(self, u0, t_out, *, x0=None, domain=(-1.0, 1.0), n_modes=None,
                 x_out=None, learn=None, fixed=None, method="etdrk4", dt=None,
                 rtol=None, atol=None, dealias=2 / 3, flatten=False,
                 blowup_factor=100.0):
        # ---- grid
        try:
            a, b = (float(v) for v in domain)
        except (TypeError, ValueError):
            raise FG2UValueError(
                f"`domain` must be a pair (a, b) of numbers, got {domain!r}") from None
        if not (math.isfinite(a) and math.isfinite(b) and b > a):
            raise FG2UValueError(f"`domain` must be finite with b > a, got ({a}, {b})")
        n = self._default_n_modes if n_modes is None else n_modes
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise FG2UTypeError(f"`n_modes` must be an int, got {type(n).__name__}")
        n = int(n)
        if n < 16 or n % 2:
            raise FG2UValueError(
                f"`n_modes` must be an even integer >= 16 (a power of 2 is fastest), got {n}")
        self.domain = (a, b)
        self.period = b - a
        self.n_modes = n
        self.x = a + self.period * np.arange(n) / n   # solver grid, [a, b) without b

        if isinstance(dealias, bool) or not isinstance(dealias, numbers.Real) \
                or not 0 < dealias <= 1:
            raise FG2UValueError(
                f"`dealias` must be the fraction of wavenumbers kept, in (0, 1] (2/3 is "
                f"Orszag's rule, 1 keeps all but the Nyquist mode), got {dealias!r}")
        self.dealias = float(dealias)
        # The state keeps the wavenumbers m < dealias * n / 2 (exact quadratic products for
        # 2/3); the others are exactly 0 and are not stored: irfft(v, n) zero-pads them.
        m = np.arange(n // 2 + 1)
        self._k = 2 * np.pi / self.period * m[m < self.dealias * n / 2]

        # ---- times
        t_out = check_finite_vector(t_out, "t_out", allow_scalar=True)
        if np.any(np.diff(t_out) <= 0):
            raise FG2UValueError(
                "`t_out` must be strictly increasing, starting at the time of `u0`; "
                f"got a non-increasing step at index {int(np.argmin(np.diff(t_out)))}")
        self.t_out = t_out
        self.dt = check_positive_float(self._default_dt if dt is None else dt, "dt")

        # ---- method and tolerances
        if method not in _METHODS:
            raise FG2UValueError(f"`method` must be one of {_METHODS}, got {method!r}")
        self.method = method
        if method == "etdrk4":
            if rtol is not None or atol is not None:
                raise FG2UValueError(
                    "`rtol`/`atol` apply to the adaptive methods " f"{_IVP_METHODS}; "
                    "with method='etdrk4' the accuracy is set by the fixed step `dt`")
            self.rtol = self.atol = None
        else:
            self.rtol = check_positive_float(1e-10 if rtol is None else rtol, "rtol")
            self.atol = check_positive_float(1e-12 if atol is None else atol, "atol")
        self.flatten = bool(flatten)
        self.blowup_factor = check_positive_float(blowup_factor, "blowup_factor")
        if self.blowup_factor <= 1:
            raise FG2UValueError(f"`blowup_factor` must be > 1, got {self.blowup_factor}")

        # ---- coefficients: which are learned (phi) and which are fixed
        names = self.coefficient_names
        learn = names if learn is None else learn
        if isinstance(learn, str):
            learn = (learn,)
        learn = tuple(learn)
        bad = [p for p in learn if p not in names]
        if bad or not learn or len(set(learn)) != len(learn):
            raise FG2UValueError(
                f"`learn` must be a non-empty sequence of distinct names from {names}, "
                f"got {learn!r}")
        fixed = {} if fixed is None else fixed
        if not isinstance(fixed, Mapping):
            raise FG2UTypeError(f"`fixed` must be a mapping name -> value, got {fixed!r}")
        values = dict(self.default_coefficients)
        for key, val in fixed.items():
            if key not in names:
                raise FG2UValueError(f"`fixed`: unknown coefficient {key!r}; known: {names}")
            if key in learn:
                raise FG2UValueError(
                    f"`fixed`: {key!r} is also in `learn`; a coefficient is either "
                    "learned (in phi) or fixed")
            if isinstance(val, bool) or not isinstance(val, numbers.Real) \
                    or not math.isfinite(val):
                raise FG2UValueError(f"`fixed[{key!r}]` must be a finite number, got {val!r}")
            values[key] = float(val)
        self.param_names = learn
        self.fixed = {k: v for k, v in values.items() if k not in learn}

        # ---- initial condition on the solver grid, then its dealiased spectrum
        u0_grid = self._initial_values(u0, x0)
        self._v0 = np.fft.rfft(u0_grid)[:self._k.size]
        self._u_scale = max(1.0, float(np.max(np.abs(u0_grid))))

        # ---- output points
        if x_out is None:
            self.x_out = None
        else:
            self.x_out = check_finite_vector(x_out, "x_out", allow_scalar=True)
        self._eval = None   # Fourier evaluation matrices at x_out, built on first call

        # ---- fixed step plan: (step, substeps) per output interval
        gaps = np.diff(t_out)
        nsub = np.maximum(1, np.ceil(gaps / self.dt * (1 - 1e-12))).astype(int)
        steps = gaps / nsub
        reps = []
        for i, h in enumerate(steps):   # share coefficients between equal steps
            for r in reps:
                if abs(h - r) <= _STEP_RTOL * r:
                    steps[i] = r
                    break
            else:
                reps.append(h)
        self._steps = steps
        self._nsub = nsub

    # ------------------------------------------------------------------ construction

    def _initial_values(self, u0, x0):
        if callable(u0):
            if x0 is not None:
                raise FG2UValueError("`x0` is only used when `u0` is an array of values; "
                                     "a callable u0 is evaluated on the solver grid")
            try:
                vals = np.asarray(u0(self.x.copy()), dtype=np.float64)
            except Exception as exc:
                raise FG2UValueError(
                    f"`u0`: calling u0(x) on the solver grid failed: {exc!r}") from exc
            if vals.ndim == 0:
                vals = np.full(self.n_modes, float(vals))
            return self._check_u0(vals, self.n_modes, "u0(x)")
        vals = check_finite_vector(u0, "u0", allow_scalar=True)
        if x0 is None:
            return self._check_u0(vals, self.n_modes, "u0")
        x0 = check_finite_vector(x0, "x0", min_size=4, allow_scalar=True)
        if x0.shape != vals.shape:
            raise FG2UValueError(f"`x0` has {x0.size} points but `u0` has {vals.size} values")
        if np.any(np.diff(x0) <= 0) or x0[-1] - x0[0] > self.period * (1 + 1e-12):
            raise FG2UValueError(
                "`x0` must be strictly increasing and span at most one period "
                f"({self.period}) of the domain, got [{x0[0]}, {x0[-1]}]")
        scale = max(1.0, float(np.max(np.abs(vals))))
        if abs(x0[-1] - x0[0] - self.period) <= 1e-12 * self.period:
            # both ends of the period given (Raissi's grids include x = -1 and x = 1):
            # they are the same point of the periodic domain; keep one.
            if abs(vals[-1] - vals[0]) > 1e-8 * scale:
                raise FG2UValueError(
                    f"`u0` is not periodic: u0[0] = {vals[0]} and u0[-1] = {vals[-1]} at "
                    f"x0 = {x0[0]} and {x0[-1]}, one period apart")
            x0, vals = x0[:-1], vals[:-1]
        h0 = self.period / x0.size
        if np.allclose(np.diff(x0), h0, rtol=1e-9, atol=0):
            # uniform periodic samples: exact for band-limited data
            return _trig_interpolate(vals, x0, self.x, self.period)
        # scattered samples: periodic cubic spline, 4th-order accurate
        from scipy.interpolate import CubicSpline
        spline = CubicSpline(np.append(x0, x0[0] + self.period), np.append(vals, vals[0]),
                             bc_type="periodic")
        return spline(x0[0] + np.mod(self.x - x0[0], self.period))

    def _check_u0(self, vals, n, what):
        if vals.shape != (n,):
            raise FG2UValueError(
                f"`{what}` has shape {vals.shape} but the solver grid has n_modes = {n} "
                "points; pass values on the solver grid (solver.x), or pass `x0=` the grid "
                "the values are given on, or a callable of x")
        if not np.all(np.isfinite(vals)):
            raise FG2UValueError(f"`{what}` has non-finite values")
        return vals

    # ------------------------------------------------------------------ the equation

    def _operators(self, c):
        """Return (L, g) on the kept wavenumbers ``self._k``: the linear symbol and the
        multiplier of the nonlinear term, N(v) = g * rfft(_pointwise(irfft(v)))."""
        raise NotImplementedError

    @staticmethod
    def _pointwise(u):
        return u * u

    # ------------------------------------------------------------------ public

    @property
    def output_shape(self):
        """Shape of the returned array: ``(len(t_out), len(x_out))`` or its size."""
        nx = self.n_modes if self.x_out is None else self.x_out.size
        shape = (self.t_out.size, nx)
        return (shape[0] * shape[1],) if self.flatten else shape

    def coefficients(self, phi):
        """All PDE coefficients as a dict: the learned ones from ``phi``, the rest fixed."""
        phi = self._check_phi(phi)
        out = dict(self.fixed)
        out.update(zip(self.param_names, map(float, phi)))
        return {k: out[k] for k in self.coefficient_names}

    def __call__(self, phi, *, warm_start=None, seed=None):
        """Solve the PDE with coefficients ``phi`` (ordered as ``param_names``).

        ``warm_start`` and ``seed`` are accepted for the inner-solver interface and
        ignored: the solve is a deterministic time integration from ``u0``.

        Returns
        -------
        ndarray, float64
            ``u[i, j] = u(t_out[i], x_out[j])``, shape ``(len(t_out), len(x_out))``,
            or ``u.ravel()`` when ``flatten=True``.

        Raises
        ------
        FG2UValueError
            ``phi`` has the wrong length or non-finite values.
        InnerSolverError
            ``kind="nonfinite"``: the solution blew up (non-finite, or ``max|u|`` above
            ``blowup_factor * max(1, max|u0|)``), typically an anti-diffusive (negative)
            viscosity or a step ``dt`` too large for the nonlinear term;
            ``kind="not_converged"``: an adaptive integrator failed.
        """
        c = self.coefficients(phi)
        L, g = self._operators(c)
        if self.method == "etdrk4":
            V = self._run_etdrk4(L, g, c)
        else:
            V = self._run_ivp(L, g, c)
        U = self._evaluate(V)
        return U.ravel() if self.flatten else U

    def __repr__(self):
        fixed = ", ".join(f"{k}={v:g}" for k, v in self.fixed.items())
        return (f"{type(self).__name__}(n_modes={self.n_modes}, domain={self.domain}, "
                f"t=[{self.t_out[0]:g}..{self.t_out[-1]:g}] ({self.t_out.size}), "
                f"learn={self.param_names}, fixed={{{fixed}}}, method={self.method!r}, "
                f"dt={self.dt:g})")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_eval"] = None   # rebuilt on first use: keeps pickles small for workers
        return state

    def fingerprint(self) -> dict:
        """What identifies this simulator's results, as JSON data: the equation, the
        learned and fixed coefficients, grid, domain, digests of the initial spectrum
        and of the output times and points, the method and its step or tolerances,
        and the package version (this code ships with it; see
        :mod:`solvers._fingerprint`)."""
        from fg2u_zo import __version__
        return {"adapter": adapter_name(self), "package_version": __version__,
                "learn": list(self.param_names),
                "fixed": {k: float(v) for k, v in sorted(self.fixed.items())},
                "n_modes": self.n_modes, "domain": list(self.domain),
                "dealias": self.dealias, "u0_spectrum": array_digest(self._v0),
                "t_out": array_digest(self.t_out),
                "x_out": None if self.x_out is None else array_digest(self.x_out),
                "method": self.method, "dt": self.dt, "rtol": self.rtol, "atol": self.atol,
                "flatten": self.flatten, "blowup_factor": self.blowup_factor}

    # ------------------------------------------------------------------ internals

    def _check_phi(self, phi):
        # A single number is a phi of one entry (learn='nu').
        phi = check_finite_vector(phi, "phi", allow_scalar=True)
        if phi.shape != (len(self.param_names),):
            raise FG2UValueError(
                f"`phi` must have shape ({len(self.param_names)},): the coefficients "
                f"{self.param_names} in that order; got shape {phi.shape}")
        return phi

    def _nonlinear(self, v, g):
        kept = v.size   # irfft zero-pads the dealiased modes; rfft's are dropped
        return g * np.fft.rfft(self._pointwise(np.fft.irfft(v, self.n_modes)))[:kept]

    def _blowup(self, v, t, c):
        """Raise if the spectrum ``v`` at time t is non-finite or too large."""
        with np.errstate(all="ignore"):
            u = np.fft.irfft(v, self.n_modes)
            umax = float(np.max(np.abs(u)))
        limit = self.blowup_factor * self._u_scale
        if math.isfinite(umax) and umax <= limit:
            return
        raise InnerSolverError(
            f"{type(self).__name__}: the solution blew up at t = {t:g} "
            f"(max|u| = {umax:g} > {limit:g}) with coefficients {c}",
            kind="nonfinite",
            detail=f"method={self.method}, dt={self.dt:g}, n_modes={self.n_modes}; a "
                   "negative diffusion coefficient is ill-posed, a large coefficient of "
                   "the nonlinear term needs a smaller dt")

    def _etdrk4_coefficients(self, L, h):
        z = h * L
        p1, p2, p3 = _phi_functions(z)
        with np.errstate(over="ignore", invalid="ignore"):
            E = np.exp(z)
            E2 = np.exp(z / 2)
            q1, _, _ = _phi_functions(z / 2)
            Q = 0.5 * h * q1
            f1 = h * (p1 - 3 * p2 + 4 * p3)
            f2 = 2 * h * (p2 - 2 * p3)   # the 2 of Cox-Matthews' "2 f2 (Na + Nb)"
            f3 = h * (4 * p3 - p2)
        return E, E2, Q, f1, f2, f3

    def _run_etdrk4(self, L, g, c):
        nl = self._nonlinear
        nt = self.t_out.size
        V = np.empty((nt, self._v0.size), dtype=np.complex128)
        v = V[0] = self._v0
        cache = {}
        with np.errstate(over="ignore", invalid="ignore"):
            for i in range(nt - 1):
                h = self._steps[i]
                if h not in cache:
                    cache[h] = self._etdrk4_coefficients(L, h)
                E, E2, Q, f1, f2, f3 = cache[h]
                for _ in range(self._nsub[i]):
                    Nv = nl(v, g)
                    E2v = E2 * v
                    a = E2v + Q * Nv
                    Na = nl(a, g)
                    b = E2v + Q * Na
                    Nb = nl(b, g)
                    cc = E2 * a + Q * (2 * Nb - Nv)
                    Nc = nl(cc, g)
                    v = E * v + f1 * Nv + f2 * (Na + Nb) + f3 * Nc
                self._blowup(v, self.t_out[i + 1], c)
                V[i + 1] = v
        return V

    def _run_ivp(self, L, g, c):
        """Adaptive explicit Runge-Kutta (solve_ivp), restarted at every output time.

        The dispersive (imaginary) part of L is removed by an integrating factor,
        w = exp(-i Im(L) s) v, which is unitary and so harmless; the diffusive (real) part
        stays in the right-hand side, because an integrating factor exp(-Re(L) s) would
        couple modes through factors up to exp(|Re L| s) and make the system stiffer.
        """
        from scipy.integrate import solve_ivp

        n, nk = self.n_modes, self._v0.size
        nt = self.t_out.size
        V = np.empty((nt, nk), dtype=np.complex128)
        v = V[0] = self._v0
        lr, li = np.real(L), np.imag(L)
        dispersive = bool(np.any(li))

        def rhs(s, y):
            # y packs the spectrum scaled by 1/n, so that atol is in units of u
            w = (y[:nk] + 1j * y[nk:]) * n
            if dispersive:
                e = np.exp(1j * li * s)
                dw = lr * w + self._nonlinear(e * w, g) / e
            else:
                dw = lr * w + self._nonlinear(w, g)
            dw /= n
            return np.concatenate([dw.real, dw.imag])

        with np.errstate(over="ignore", invalid="ignore"):
            for i in range(nt - 1):
                tau = self.t_out[i + 1] - self.t_out[i]
                y0 = np.concatenate([v.real, v.imag]) / n
                sol = solve_ivp(rhs, (0.0, tau), y0, method=self.method,
                                rtol=self.rtol, atol=self.atol)
                if not sol.success:
                    raise InnerSolverError(
                        f"{type(self).__name__}: solve_ivp({self.method}) failed "
                        f"before t = {self.t_out[i + 1]:g} with coefficients {c}",
                        kind="not_converged", detail=str(sol.message))
                y = sol.y[:, -1]
                v = (y[:nk] + 1j * y[nk:]) * n
                if dispersive:
                    v = v * np.exp(1j * li * tau)
                self._blowup(v, self.t_out[i + 1], c)
                V[i + 1] = v
        return V

    def _evaluate(self, V):
        if self.x_out is None:
            return np.fft.irfft(V, self.n_modes, axis=1)
        if self._eval is None:
            n = self.n_modes
            w = np.full(n // 2 + 1, 2.0 / n)
            w[0] = w[-1] = 1.0 / n   # Nyquist (if kept): symmetric (cosine) interpolant
            w = w[:self._k.size]
            theta = np.outer(self._k, self.x_out - self.domain[0])
            self._eval = (w[:, None] * np.cos(theta), w[:, None] * np.sin(theta))
        C, S = self._eval
        return V.real @ C - V.imag @ S


# --------------------------------------------------------------------------- equations

_COMMON_PARAMS = """
    Parameters
    ----------
    u0 : array_like or callable
        Initial condition at ``t_out[0]``: values on the solver grid ``x`` (``n_modes``
        points ``a + j (b - a) / n_modes``), or a callable ``u0(x)`` evaluated there, or
        values on another grid given as ``x0``.
    t_out : array_like
        Output times, strictly increasing; ``t_out[0]`` is the time of ``u0``.
    x0 : array_like, optional
        Grid of the values ``u0`` (within one period, increasing). A grid that includes
        both ends of the period (as Raissi's data: ``x = linspace(-1, 1, 256)``) has its
        duplicate end point dropped. Uniform grids are interpolated exactly
        (trigonometric interpolation), others with a periodic cubic spline.
    domain : (float, float)
        Periodic interval ``[a, b)``. Default ``(-1, 1)``.
    n_modes : int
        Number of grid points (= complex Fourier modes), even, >= 16.
    x_out : array_like, optional
        Output points; default the solver grid ``x``. Any points are allowed (taken
        modulo the period): the solution is evaluated by exact Fourier interpolation.
    learn : sequence of str
        Coefficients held by ``phi``, in this order (becomes ``param_names``).
        Default: all coefficients, in the order of ``coefficient_names``.
    fixed : mapping, optional
        Values of the coefficients not learned; missing ones take Raissi's values
        (``default_coefficients``).
    method : {"etdrk4", "RK45", "RK23", "DOP853"}
        "etdrk4" (default): fixed step ``dt``, smooth in ``phi`` (for finite
        differences). The others: adaptive explicit ``solve_ivp``, accurate to
        ``rtol``/``atol`` but only piecewise smooth in ``phi`` (see the module notes)
        and 10-50 times slower.
    dt : float, optional
        Largest ETDRK4 step; each output interval is divided into equal steps <= dt.
    rtol, atol : float, optional
        Tolerances of the adaptive methods (default 1e-10, 1e-12, with ``atol`` in units
        of ``u``). Not accepted with ``method="etdrk4"``.
    dealias : float
        Fraction of the wavenumbers kept in the nonlinear term and the state; 2/3
        (Orszag's rule, default) makes quadratic products exact.
    flatten : bool
        Return ``u.ravel()`` (time-major) instead of the ``(nt, nx)`` array.
    blowup_factor : float
        Raise ``InnerSolverError(kind="nonfinite")`` when ``max|u|`` exceeds
        ``blowup_factor * max(1, max|u0|)`` at an output time.

    Attributes
    ----------
    param_names : tuple of str
        The order of ``phi``.
    x : ndarray
        The solver grid.
    """


class Burgers(_PeriodicSpectral):
    __doc__ = """Viscous Burgers equation ``u_t + lam u u_x = nu u_xx``, periodic.

    Coefficients (``coefficient_names``): ``("lam", "nu")``, default ``lam = 1``,
    ``nu = 0.01 / pi`` (Raissi et al.). Defaults ``n_modes = 1024``, ``dt = 2.5e-3``:
    the shock at ``t ~ 0.3`` is about 0.003 wide, and 256 modes (2/3-dealiased) leave a
    relative error of 9e-3; 1024 modes bring it to 1.6e-6 for ~0.05 s per solve.

    With the odd initial condition ``-sin(pi x)`` on ``[-1, 1)`` the periodic problem
    equals the Dirichlet problem ``u(+-1, t) = 0`` of Raissi's ``burgers.mat`` (by
    symmetry). At the defaults this solver reproduces that data set (100 times x 256
    points) to a relative L2 error of 1.6e-6 (2.7e-11 with ``n_modes=2048, dt=2.5e-4``).
    A smaller ``nu`` sharpens the shock: raise ``n_modes`` accordingly.
    """ + _COMMON_PARAMS + """
    Examples
    --------
    >>> import numpy as np
    >>> t = np.linspace(0.0, 0.99, 100)
    >>> x = np.linspace(-1.0, 1.0, 256)          # Raissi's grid, both ends included
    >>> burgers = Burgers(lambda x: -np.sin(np.pi * x), t, x_out=x, learn=("nu",))
    >>> burgers.param_names
    ('nu',)
    >>> u = burgers(np.array([0.01 / np.pi]))    # u[i, j] = u(t[i], x[j])
    >>> u.shape
    (100, 256)
    >>> bool(abs(u[-1, 0]) < 1e-12)              # u(-1, t) = 0 by symmetry
    True
    """

    coefficient_names = ("lam", "nu")
    default_coefficients = {"lam": 1.0, "nu": 0.01 / math.pi}
    _default_n_modes = 1024
    _default_dt = 2.5e-3

    def _operators(self, c):
        k = self._k
        return -c["nu"] * k**2, (-0.5j * c["lam"]) * k   # N = -lam/2 (u^2)_x


class KdV(_PeriodicSpectral):
    __doc__ = """Korteweg-de Vries equation ``u_t + l1 u u_x + l2 u_xxx = 0``, periodic.

    Coefficients: ``("l1", "l2")``, default ``l1 = 1``, ``l2 = 0.0025`` (Raissi et al.,
    with ``u0 = cos(pi x)`` on ``[-1, 1)``).
    Defaults ``n_modes = 512``, ``dt = 1e-3`` (relative error 1.4e-8 against a
    converged run on Raissi's problem, t in [0, 1]). Mass ``int u dx`` is conserved
    exactly, ``int u^2 dx`` up to the time-stepping error. A larger ``l1`` (steeper
    solitons) needs a smaller ``dt``; an unstable step is reported as a blow-up.
    """ + _COMMON_PARAMS

    coefficient_names = ("l1", "l2")
    default_coefficients = {"l1": 1.0, "l2": 0.0025}
    _default_n_modes = 512
    _default_dt = 1e-3

    def _operators(self, c):
        k = self._k
        # -l2 (ik)^3 = i l2 k^3: purely dispersive, integrated exactly by ETDRK4
        return (1j * c["l2"]) * k**3, (-0.5j * c["l1"]) * k


class AllenCahn(_PeriodicSpectral):
    __doc__ = """Allen-Cahn equation ``u_t = eps u_xx + a (u - u^3)``, periodic.

    Coefficients: ``("eps", "a")``, default ``eps = 1e-4``, ``a = 5`` (Raissi et al.,
    with ``u0 = x^2 cos(pi x)`` on ``[-1, 1)``). Defaults ``n_modes = 512``,
    ``dt = 5e-3`` (time error 7e-9; Raissi's ``u0`` has a kink at ``x = +-1`` in its
    periodic extension, which limits the spatial error to ~2e-5 at 512 modes and 4e-6 at
    1024). The linear part ``eps u_xx + a u`` is integrated exactly, so ``a = 0``
    gives the heat equation to round-off; the energy
    ``int eps/2 u_x^2 + a/4 (u^2 - 1)^2 dx`` decreases.
    """ + _COMMON_PARAMS

    coefficient_names = ("eps", "a")
    default_coefficients = {"eps": 1e-4, "a": 5.0}
    _default_n_modes = 512
    _default_dt = 5e-3

    def _operators(self, c):
        return -c["eps"] * self._k**2 + c["a"], np.full(self._k.size, -c["a"])   # -a u^3

    @staticmethod
    def _pointwise(u):
        return u * u * u
