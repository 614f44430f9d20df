"""scipy routines as inner solvers: an ODE solve, an argmin, a sparse linear solve."""

from __future__ import annotations

import warnings

import numpy as np

from fg2u_zo.errors import FG2UTypeError, FG2UValueError, FG2UWarning, InnerSolverError

from ._adapter_common import (as_phi, as_theta, choice, exception_detail, finite_vector,
                              positive_int, positive_number)
from ._fingerprint import adapter_name, callable_identity, check_version, jsonable

__all__ = ["SolveIVP", "ScipyMinimize", "SparseLinear"]


def _check_callable(value, name, signature):
    if not callable(value):
        raise FG2UTypeError(f"`{name}` must be a callable {signature}, got "
                            f"{type(value).__name__}")
    return value


def _call_user(func, name, *args):
    """Call user code; turn its exception into an InnerSolverError of kind "exception"."""
    try:
        return func(*args)
    except InnerSolverError:
        raise
    except Exception as exc:
        raise InnerSolverError(f"`{name}` raised {type(exc).__name__}: {exc}",
                               kind="exception", detail=exception_detail(exc)) from exc


class SolveIVP:
    """``y' = rhs(t, y, phi)`` integrated by :func:`scipy.integrate.solve_ivp`.

    Parameters
    ----------
    rhs : callable
        ``rhs(t, y, p) -> dy/dt`` with ``y`` of shape ``(n,)``. ``p`` is ``phi``, or
        ``phi[:-n]`` when ``learn_y0=True``. A module-level function, to be picklable.
    y0 : array_like, shape (n,)
        Initial state (the default one when ``learn_y0=True``: unused then).
    t_span : (float, float)
        Integration interval.
    t_eval : array_like, shape (T,)
        Times at which the solution is returned, inside ``t_span``.
    method : str, default "DOP853"
        Any :func:`solve_ivp` method; "LSODA", "Radau" or "BDF" for stiff problems.
    rtol, atol : float, default 1e-10, 1e-12
        Integration tolerances. They are tight on purpose: the error the integrator
        leaves is not a smooth function of ``phi`` (step sizes are chosen adaptively and
        change discontinuously), so it acts as noise of relative size ~``rtol`` in the
        output, and a finite difference with step ``mu`` carries an error of about
        ``rtol / mu``. Keep ``rtol`` several orders below the step you use.
    learn_y0 : bool, default False
        If True, the last ``n`` entries of ``phi`` are the initial state.
    jac : callable, optional
        ``jac(t, y, p) -> (n, n)`` Jacobian of ``rhs`` for the implicit methods.
    version : str, optional
        Your name for the version of the code this solver calls, part of
        :meth:`fingerprint`: change it when that code changes in a way the
        fingerprint cannot see (a module the callables use).
    **options
        Passed to :func:`solve_ivp` (``max_step``, ``first_step`` ...).

    Returns
    -------
    theta : ndarray, shape (T * n,)
        The solution at ``t_eval``, time-major: ``theta[k * n + i] = y_i(t_eval[k])``,
        i.e. ``theta.reshape(T, n)`` has one row per time.

    Raises
    ------
    InnerSolverError
        ``kind="not_converged"`` with scipy's message when the solver fails
        (``success=False``); ``kind="exception"`` if ``rhs`` raises;
        ``kind="nonfinite"`` if the solution has NaN or inf.

    Notes
    -----
    ``seed`` and ``warm_start`` are accepted and ignored.

    Examples
    --------
    >>> import numpy as np
    >>> from solvers import SolveIVP
    >>> def decay(t, y, p):
    ...     return -p[0] * y
    >>> solver = SolveIVP(decay, y0=[1.0], t_span=(0.0, 1.0), t_eval=[0.5, 1.0])
    >>> bool(np.allclose(solver(np.array([2.0])), np.exp([-1.0, -2.0]), rtol=1e-9))
    True
    """

    def __init__(self, rhs, y0, t_span, t_eval, *, method="DOP853", rtol=1e-10, atol=1e-12,
                 learn_y0=False, jac=None, version=None, **options):
        self.rhs = _check_callable(rhs, "rhs", "rhs(t, y, phi) -> dy/dt")
        self.y0 = finite_vector(y0, "y0")
        t_span = tuple(float(t) for t in t_span)
        if len(t_span) != 2 or not t_span[0] != t_span[1]:
            raise FG2UValueError(f"`t_span` must be (t0, t1) with t0 != t1, got {t_span}")
        self.t_span = t_span
        t_eval = np.atleast_1d(np.asarray(t_eval, dtype=np.float64))
        lo, hi = min(t_span), max(t_span)
        if t_eval.ndim != 1 or np.any(t_eval < lo) or np.any(t_eval > hi):
            raise FG2UValueError(f"`t_eval` must be a 1-D array inside t_span={t_span}")
        self.t_eval = t_eval
        if not isinstance(method, str):
            # A class would work with scipy but not survive a config file; keep names.
            raise FG2UTypeError(f"`method` must be a solve_ivp method name such as "
                                f"'DOP853' or 'LSODA', got {type(method).__name__}")
        self.method = method
        self.rtol = positive_number(rtol, "rtol")
        self.atol = positive_number(atol, "atol")
        self.learn_y0 = bool(learn_y0)
        if jac is not None:
            _check_callable(jac, "jac", "jac(t, y, phi) -> (n, n) array")
        self.jac = jac
        self.options = options
        self.version = check_version(version)

    def __repr__(self):
        return (f"SolveIVP({getattr(self.rhs, '__name__', self.rhs)!r}, method="
                f"{self.method!r}, rtol={self.rtol:g}, atol={self.atol:g})")

    def fingerprint(self) -> dict:
        """What identifies this solver's results, as JSON data: ``rhs`` and ``jac``
        (module, qualified name, source digest), digests of ``y0`` and ``t_eval``,
        ``t_span``, the method, tolerances, ``learn_y0``, the options and ``version``
        (see :mod:`solvers._fingerprint`)."""
        return {"adapter": adapter_name(self), "version": self.version,
                "rhs": callable_identity(self.rhs), "jac": callable_identity(self.jac),
                "y0": jsonable(self.y0), "t_span": list(self.t_span),
                "t_eval": jsonable(self.t_eval), "method": self.method, "rtol": self.rtol,
                "atol": self.atol, "learn_y0": self.learn_y0,
                "options": jsonable(self.options)}

    def __call__(self, phi, *, warm_start=None, seed=None):
        from scipy.integrate import solve_ivp

        phi = as_phi(phi)
        n = self.y0.shape[0]
        if self.learn_y0:
            if phi.shape[0] < n:
                raise FG2UValueError(f"with learn_y0=True `phi` must hold at least "
                                     f"len(y0)={n} entries (the initial state last), "
                                     f"got {phi.shape[0]}")
            params, y0 = phi[:-n], phi[-n:]
        else:
            params, y0 = phi, self.y0
        kwargs = dict(self.options)
        if self.jac is not None:
            kwargs["jac"] = self.jac
        try:
            sol = solve_ivp(self.rhs, self.t_span, y0, method=self.method,
                            t_eval=self.t_eval, args=(params,), rtol=self.rtol,
                            atol=self.atol, **kwargs)
        except Exception as exc:
            raise InnerSolverError(f"solve_ivp raised {type(exc).__name__}: {exc}",
                                   kind="exception", detail=exception_detail(exc)) from exc
        if not sol.success:
            reached = f" (reached t={sol.t[-1]:g})" if sol.t.size else ""
            raise InnerSolverError(f"solve_ivp ({self.method}) failed{reached}: "
                                   f"{sol.message}", kind="not_converged",
                                   detail=str(sol.message))
        return as_theta(sol.y.T, where=f"solve_ivp ({self.method})")


class ScipyMinimize:
    """``theta*(phi) = argmin_theta g(theta, phi)`` by :func:`scipy.optimize.minimize`.

    Parameters
    ----------
    objective : callable
        ``objective(theta, phi) -> float`` (or ``(float, gradient)`` with ``jac=True``).
    x0 : array_like, shape (M,)
        Starting point when the call gets no ``warm_start``.
    method : str, optional
        Any :func:`minimize` method; by default scipy's choice: "BFGS" without bounds,
        "L-BFGS-B" with them. BFGS stops on the gradient norm (``gtol = tol``), which
        finds the argmin to ~``tol / lambda_min``. L-BFGS-B also stops when the relative
        decrease of ``g`` falls to machine precision; since ``g`` is flat to second
        order at the minimum, that limits ``theta*`` to ~``sqrt(eps) ~ 1e-8`` (relative
        to its scale) whatever ``tol`` is: fine for steps ``mu >= 1e-4``, too coarse
        for smaller ones.
    jac : callable or bool, optional
        ``jac(theta, phi) -> (M,)`` gradient, or True when ``objective`` returns it.
        Strongly recommended: without it scipy differentiates by finite differences,
        which limits how precisely the argmin is found (about ``sqrt(eps)`` in the
        gradient) and shows up as noise in ``theta*``; BFGS then cannot meet the
        default ``tol`` and reports "precision loss" (``InnerSolverError``).
    bounds : sequence or scipy.optimize.Bounds, optional
        Bounds on ``theta`` (L-BFGS-B, TNC, SLSQP, trust-constr ...).
    tol : float, default 1e-10
        :func:`minimize`'s ``tol``. A finite difference through an argmin divides the
        optimizer's stopping error by the step: if ``theta*`` is found to within
        ``delta``, the derivative estimate is off by ~``delta / mu``. With a gradient
        tolerance ``gtol`` and a Hessian whose smallest eigenvalue is ``lambda``,
        ``delta ~ gtol / lambda``; choose ``tol`` (or ``options``) so that ``delta`` is
        well below ``mu`` times the accuracy you need.
    options : dict, optional
        Method options (``maxiter``, ``gtol``, ``ftol`` ...); they override ``tol``.
    on_failure : {"raise", "warn"}, default "raise"
        What to do when scipy reports ``success=False``: raise
        ``InnerSolverError(kind="not_converged")`` with scipy's message, or emit a
        :class:`fg2u_zo.FG2UWarning` with it and return the last iterate.
    version : str, optional
        Your name for the version of the code this solver calls, part of
        :meth:`fingerprint`: change it when that code changes in a way the
        fingerprint cannot see (a module the callables use).

    Notes
    -----
    ``warm_start`` (an earlier ``theta*``, shape ``(M,)``) replaces ``x0``: along an
    outer optimization it saves iterations, and at nearby ``phi + mu v`` it gives the
    optimizer less room to stop at different points. ``seed`` is ignored.

    Examples
    --------
    >>> import numpy as np
    >>> from solvers import ScipyMinimize
    >>> def g(theta, phi):
    ...     return 0.5 * np.sum((theta - phi) ** 2) + 0.5 * np.sum(theta ** 2)
    >>> def dg(theta, phi):
    ...     return (theta - phi) + theta
    >>> solver = ScipyMinimize(g, x0=np.zeros(2), jac=dg)
    >>> bool(np.allclose(solver(np.array([1.0, -2.0])), [0.5, -1.0], atol=1e-8))
    True
    """

    def __init__(self, objective, x0, *, method=None, jac=None, bounds=None, tol=1e-10,
                 options=None, on_failure="raise", version=None):
        self.objective = _check_callable(objective, "objective", "objective(theta, phi)")
        self.x0 = finite_vector(x0, "x0")
        if method is not None and not isinstance(method, str):
            raise FG2UTypeError(f"`method` must be a scipy.optimize.minimize method name "
                                f"such as 'BFGS' or 'L-BFGS-B', got {type(method).__name__}")
        self.method = method
        if not (jac is None or isinstance(jac, bool) or callable(jac)):
            raise FG2UTypeError("`jac` must be None, True or a callable "
                                f"jac(theta, phi), got {type(jac).__name__}")
        self.jac = jac
        self.bounds = bounds
        self.tol = None if tol is None else positive_number(tol, "tol")
        if options is not None and not isinstance(options, dict):
            raise FG2UTypeError(f"`options` must be a dict, got {type(options).__name__}")
        self.options = dict(options or {})
        self.on_failure = choice(on_failure, "on_failure", ("raise", "warn"))
        self.version = check_version(version)

    def __repr__(self):
        return (f"ScipyMinimize({getattr(self.objective, '__name__', self.objective)!r}, "
                f"method={self.method!r}, tol={self.tol!r})")

    def fingerprint(self) -> dict:
        """What identifies this solver's results, as JSON data: ``objective`` and
        ``jac`` (module, qualified name, source digest), a digest of ``x0``, the
        method, bounds, ``tol``, options, ``on_failure`` and ``version`` (see
        :mod:`solvers._fingerprint`)."""
        return {"adapter": adapter_name(self), "version": self.version,
                "objective": callable_identity(self.objective), "jac": jsonable(self.jac),
                "x0": jsonable(self.x0), "method": self.method,
                "bounds": jsonable(self.bounds), "tol": self.tol,
                "options": jsonable(self.options), "on_failure": self.on_failure}

    def __call__(self, phi, *, warm_start=None, seed=None):
        from scipy.optimize import minimize

        phi = as_phi(phi)
        x0 = self.x0
        if warm_start is not None:
            ws = np.asarray(warm_start, dtype=np.float64).reshape(-1)
            if ws.shape == x0.shape and np.all(np.isfinite(ws)):
                x0 = ws
        name = self.method or "default method"
        try:
            res = minimize(self.objective, x0, args=(phi,), method=self.method,
                           jac=self.jac, bounds=self.bounds, tol=self.tol,
                           options=self.options or None)
        except Exception as exc:
            raise InnerSolverError(f"minimize ({name}) raised {type(exc).__name__}: "
                                   f"{exc}", kind="exception",
                                   detail=exception_detail(exc)) from exc
        if not res.success:
            message = (f"minimize ({name}) did not converge after {res.get('nit', '?')} "
                       f"iterations: {res.message}")
            if self.on_failure == "raise":
                raise InnerSolverError(message, kind="not_converged", detail=str(res.message))
            warnings.warn(message, FG2UWarning, stacklevel=2)
        return as_theta(res.x, where=f"minimize ({name})")


def _spsolve(A, b, x0, rtol, atol, maxiter):
    from scipy.sparse.linalg import MatrixRankWarning, spsolve

    with warnings.catch_warnings():
        warnings.simplefilter("error", MatrixRankWarning)
        try:
            return spsolve(A.tocsc(), b), 0
        except MatrixRankWarning as exc:
            raise InnerSolverError(f"spsolve: the matrix is singular ({exc})",
                                   kind="nonfinite") from None


def _krylov(name):
    def solve(A, b, x0, rtol, atol, maxiter):
        import scipy.sparse.linalg as spla

        func = getattr(spla, name)
        try:
            return func(A, b, x0=x0, rtol=rtol, atol=atol, maxiter=maxiter)
        except TypeError as exc:
            if "rtol" not in str(exc):
                raise
            # scipy < 1.12 called the relative tolerance `tol`.
            return func(A, b, x0=x0, tol=rtol, atol=atol, maxiter=maxiter)
    solve.__name__ = name
    return solve


_LINEAR_METHODS = {
    "spsolve": _spsolve,
    "cg": _krylov("cg"),
    "gmres": _krylov("gmres"),
    "bicgstab": _krylov("bicgstab"),
}


class SparseLinear:
    """A steady problem ``A(phi) u = b`` solved with :mod:`scipy.sparse.linalg`.

    Parameters
    ----------
    assemble : callable
        ``assemble(phi) -> A``, a sparse (or dense) ``(n, n)`` matrix.
    b : array_like, shape (n,), or callable
        Right-hand side, or ``b(phi) -> (n,)`` when it depends on ``phi``.
    method : {"spsolve", "cg", "gmres", "bicgstab"}, default "spsolve"
        A sparse direct solve (SuperLU), or a Krylov method ("cg" needs a symmetric
        positive-definite ``A``).
    rtol : float, default 1e-12
        Relative residual tolerance of the Krylov methods (ignored by "spsolve"). An
        iterative solve stops at a residual that changes non-smoothly with ``phi``, so
        the output carries noise of relative size ~``rtol * cond(A)``; a finite
        difference with step ``mu`` has an error of about that divided by ``mu``.
        "spsolve" has rounding-level noise only and is the right default for moderate
        ``n``.
    atol : float, default 0.0
        Absolute residual tolerance of the Krylov methods.
    maxiter : int, optional
        Iteration limit of the Krylov methods.
    observe : array_like or sparse matrix, optional
        What is returned: ``None`` for all of ``u``; an integer index array (or a
        boolean mask, or a slice) for ``u[observe]``; a 2-D ``(m, n)`` dense or sparse
        matrix for ``observe @ u``.
    version : str, optional
        Your name for the version of the code this solver calls, part of
        :meth:`fingerprint`: change it when that code changes in a way the
        fingerprint cannot see (a module the callables use).

    Raises
    ------
    InnerSolverError
        ``kind="not_converged"`` when a Krylov method ends with ``info != 0``;
        ``kind="nonfinite"`` for a singular matrix; ``kind="exception"`` if
        ``assemble`` raises; ``kind="shape"`` if ``A`` or ``b`` have the wrong shape.

    Notes
    -----
    Krylov methods start from ``warm_start`` when it has the shape of ``u`` (i.e. when
    ``observe`` is ``None``; an observed subset cannot restart the solve, so it is then
    ignored). ``seed`` is ignored.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> from solvers import SparseLinear
    >>> def assemble(phi):
    ...     return sp.diags([phi[0] * np.ones(3)], [0])
    >>> solver = SparseLinear(assemble, b=np.ones(3))
    >>> solver(np.array([4.0]))
    array([0.25, 0.25, 0.25])
    """

    def __init__(self, assemble, b, *, method="spsolve", rtol=1e-12, atol=0.0, maxiter=None,
                 observe=None, version=None):
        self.assemble = _check_callable(assemble, "assemble", "assemble(phi) -> matrix")
        if callable(b):
            self.b = b
        else:
            b = np.asarray(b, dtype=np.float64)
            if b.ndim != 1 or not np.all(np.isfinite(b)):
                raise FG2UValueError(f"`b` must be a finite 1-D array (or a callable "
                                     f"b(phi)), got shape {b.shape}")
            self.b = b
        self.method = choice(method, "method", tuple(_LINEAR_METHODS))
        self.rtol = positive_number(rtol, "rtol")
        if not (isinstance(atol, (int, float)) and np.isfinite(atol) and atol >= 0):
            raise FG2UValueError(f"`atol` must be >= 0, got {atol!r}")
        self.atol = float(atol)
        self.maxiter = None if maxiter is None else positive_int(maxiter, "maxiter")
        self.observe = _check_observe(observe)
        self.version = check_version(version)

    def __repr__(self):
        return (f"SparseLinear({getattr(self.assemble, '__name__', self.assemble)!r}, "
                f"method={self.method!r}, rtol={self.rtol:g})")

    def fingerprint(self) -> dict:
        """What identifies this solver's results, as JSON data: ``assemble`` (and
        ``b`` when it is a callable: module, qualified name, source digest; else a
        digest of it), the method, tolerances, ``maxiter``, ``observe`` and
        ``version`` (see :mod:`solvers._fingerprint`)."""
        return {"adapter": adapter_name(self), "version": self.version,
                "assemble": callable_identity(self.assemble), "b": jsonable(self.b),
                "method": self.method, "rtol": self.rtol, "atol": self.atol,
                "maxiter": self.maxiter, "observe": jsonable(self.observe)}

    def __call__(self, phi, *, warm_start=None, seed=None):
        import scipy.sparse as sp

        phi = as_phi(phi)
        A = _call_user(self.assemble, "assemble", phi)
        A = A if sp.issparse(A) else sp.csr_matrix(np.asarray(A, dtype=np.float64))
        b = self.b
        if callable(b):
            b = np.asarray(_call_user(b, "b", phi), dtype=np.float64).reshape(-1)
        n = b.shape[0]
        if A.shape != (n, n):
            raise InnerSolverError(f"`assemble` returned a matrix of shape {A.shape}, "
                                   f"expected ({n}, {n}) to match `b`", kind="shape")
        x0 = None
        if warm_start is not None and self.method != "spsolve":
            ws = np.asarray(warm_start, dtype=np.float64).reshape(-1)
            if ws.shape == (n,) and np.all(np.isfinite(ws)):
                x0 = ws
        solve = _LINEAR_METHODS[self.method]
        try:
            u, info = solve(A, b, x0, self.rtol, self.atol, self.maxiter)
        except InnerSolverError:
            raise
        except Exception as exc:
            raise InnerSolverError(f"{self.method} raised {type(exc).__name__}: {exc}",
                                   kind="exception", detail=exception_detail(exc)) from exc
        if info != 0:
            why = (f"did not reach rtol={self.rtol:g} in {info} iterations" if info > 0
                   else f"failed with illegal input or breakdown (info={info})")
            raise InnerSolverError(f"{self.method} {why}", kind="not_converged",
                                   detail=f"info={info}")
        u = np.asarray(u, dtype=np.float64).reshape(-1)
        observe = self.observe
        if observe is not None:
            if sp.issparse(observe) or (isinstance(observe, np.ndarray) and observe.ndim == 2):
                if observe.shape[1] != n:
                    raise InnerSolverError(f"`observe` has shape {observe.shape}, expected "
                                           f"(m, {n})", kind="shape")
                u = np.asarray(observe @ u).reshape(-1)
            else:
                u = u[observe]
        return as_theta(u, where=self.method)


def _check_observe(observe):
    import scipy.sparse as sp

    if observe is None or isinstance(observe, slice) or sp.issparse(observe):
        return observe
    arr = np.asarray(observe)
    if arr.ndim == 1 and arr.dtype == bool:
        return arr
    if arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer):
        return arr
    if arr.ndim == 2 and np.issubdtype(arr.dtype, np.number):
        return arr.astype(np.float64)
    raise FG2UValueError("`observe` must be None, a slice, a 1-D integer index array or "
                         f"boolean mask, or a 2-D (m, n) matrix; got shape {arr.shape} of "
                         f"{arr.dtype}")
