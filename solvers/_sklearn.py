"""A scikit-learn fit as an inner solver: hyperparameters and sample weights from phi."""

from __future__ import annotations

import numbers
import warnings

import numpy as np

from fg2u_zo.errors import FG2UTypeError, FG2UValueError, InnerSolverError

from ._adapter_common import as_phi, as_theta, choice, exception_detail
from ._fingerprint import adapter_name, callable_identity, check_version, jsonable

__all__ = ["SklearnFit", "TRANSFORMS"]


def _sigmoid(x):
    # Written with exp(-|x|) so that neither branch overflows.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _softplus(x):
    return np.logaddexp(0.0, x)


def _identity(x):
    return x


def _exp10(x):
    return np.power(10.0, x)


#: Transforms from an entry of ``phi`` (unconstrained) to a hyperparameter or weight.
TRANSFORMS = {
    "identity": _identity,
    "exp": np.exp,        # log-scale penalties: C = exp(phi)
    "exp10": _exp10,      # C = 10**phi
    "sigmoid": _sigmoid,  # weights in (0, 1)
    "softplus": _softplus,  # positive weights, ~linear for large phi
}

_OUTPUTS = ("coef", "decision_function", "predict_proba", "predict")


def _import_sklearn():
    try:
        import sklearn.base
        import sklearn.exceptions
    except ImportError as exc:
        raise ImportError("SklearnFit needs scikit-learn: pip install 'fg2u-zo[sklearn]'"
                          ) from exc
    return sklearn


class SklearnFit:
    """Fit a scikit-learn estimator whose hyperparameters / sample weights come from ``phi``.

    Each call builds a fresh estimator, sets the hyperparameters mapped from ``phi``,
    fits it on ``(X, y)`` with the sample weights mapped from ``phi``, and returns the
    learned parameters or predictions on a fixed validation set.

    Parameters
    ----------
    estimator : estimator or callable
        An unfitted estimator or Pipeline (cloned with :func:`sklearn.base.clone` on every
        call), or a factory ``make_estimator() -> estimator`` (a module-level function).
    X, y : array_like
        Training data, passed to ``fit`` unchanged.
    params : dict or callable, optional
        Hyperparameters from ``phi``. Either a callable ``phi -> dict`` passed to
        ``set_params``, or a dict ``{name: spec}`` where ``name`` is a ``set_params``
        key (``"C"``, ``"logisticregression__C"``) and ``spec`` is ``(transform, index)``:
        ``transform`` one of ``"identity"``, ``"exp"``, ``"exp10"``, ``"sigmoid"``,
        ``"softplus"`` (see :data:`TRANSFORMS`) or a callable on arrays, and ``index`` an
        int or a slice of ``phi``. An int, or a slice selecting exactly one entry,
        gives a Python float; a longer slice gives an array. A bare int ``index`` means
        ``("identity", index)``. Example: ``{"C": ("exp", 0)}`` fits with
        ``C = exp(phi[0])``.
    sample_weight : tuple, str or callable, optional
        Per-sample weights from ``phi``: ``(transform, slice)`` as above (e.g.
        ``("sigmoid", slice(1, None))``, which must select ``len(y)`` entries); a
        transform name alone (``"sigmoid"``) for all of ``phi`` when ``phi`` holds
        only the weights; or a callable ``phi -> weights``.
    sample_weight_param : str, default "sample_weight"
        The ``fit`` keyword the weights are passed as; for a Pipeline name the step,
        e.g. ``"logisticregression__sample_weight"``.
    output : {"coef", "decision_function", "predict_proba", "predict"} or callable
        ``"coef"``: the final estimator's ``coef_`` flattened (C order), followed by
        ``np.atleast_1d(intercept_)`` (zeros when there is no intercept), so a model
        with ``k`` outputs and ``d`` features gives ``k * d + k`` numbers. The others:
        that method on ``X_val``, flattened. A callable ``output(fitted) -> array``
        for anything else.
    X_val : array_like, optional
        Validation inputs; required by the prediction outputs.
    fit_params : dict, optional
        Extra keyword arguments for ``fit``.
    on_convergence_warning : {"raise", "warn", "ignore"}, default "raise"
        What a :class:`sklearn.exceptions.ConvergenceWarning` during the fit does:
        raise ``InnerSolverError(kind="not_converged")`` with its text, re-emit it, or
        drop it. Other warnings pass through unchanged.
    version : str, optional
        Your name for the version of the code this solver calls, part of
        :meth:`fingerprint`: change it when that code changes in a way the
        fingerprint cannot see (a module the callables use).

    Notes
    -----
    **seed**: when the call gets ``seed``, every ``random_state`` parameter of the
    estimator (nested ones in a Pipeline too) is set to it; without a seed the
    estimator's own ``random_state`` is kept.

    **warm_start**: used only with ``output="coef"`` and an estimator (not a Pipeline)
    that has a ``warm_start`` parameter (LogisticRegression, ElasticNet, Lasso,
    SGDClassifier, ...): ``coef_`` and ``intercept_`` are preset from the previous
    ``theta`` and ``warm_start=True`` is set. If that is not possible (other estimator,
    wrong length) or the warm fit raises, the fit starts cold. Warm starts change the
    iterates, so results equal a cold fit only up to the solver tolerance.

    **Smoothness for finite differences**: the output is a smooth function of ``phi``
    only if the fit is solved to a tolerance well below the finite-difference step
    times the accuracy needed: an iterative solver stopped at ``tol`` leaves noise of
    about ``tol`` in ``coef_`` (and ``tol / mu`` in a derivative taken with step
    ``mu``). Set ``tol`` tight (``1e-10``) and ``max_iter`` high, and prefer solvers
    with exact or closed-form solutions (Ridge with ``solver="cholesky"``). Randomized
    solvers (SGD) are not smooth in ``phi`` even with a fixed seed.

    ``warnings.catch_warnings`` is process-global: with a thread backend, warnings of
    concurrent fits may be attributed to the wrong call. Use process backends.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import Ridge
    >>> from solvers import SklearnFit
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(20, 3)), rng.normal(size=20)
    >>> solver = SklearnFit(Ridge(fit_intercept=False, solver="cholesky"), X, y,
    ...                     params={"alpha": ("exp", 0)})
    >>> theta = solver(np.array([0.0]))          # alpha = exp(0) = 1
    >>> coef = np.linalg.solve(X.T @ X + np.eye(3), X.T @ y)
    >>> bool(np.allclose(theta, np.append(coef, 0.0)))
    True
    """

    def __init__(self, estimator, X, y, *, params=None, sample_weight=None,
                 sample_weight_param="sample_weight", output="coef", X_val=None,
                 fit_params=None, on_convergence_warning="raise", version=None):
        sklearn = _import_sklearn()
        if hasattr(estimator, "fit") and hasattr(estimator, "get_params"):
            sklearn.base.clone(estimator)  # fail now, not on a worker, if it cannot clone
            self.estimator, self.make_estimator = estimator, None
        elif callable(estimator):
            self.estimator, self.make_estimator = None, estimator
        else:
            raise FG2UTypeError("`estimator` must be a scikit-learn estimator or a "
                                f"factory make_estimator(), got {type(estimator).__name__}")
        n_samples = _num_samples(X, "X")
        if _num_samples(y, "y") != n_samples:
            raise FG2UValueError(f"`X` has {n_samples} samples but `y` has "
                                 f"{_num_samples(y, 'y')}")
        self.X, self.y, self.n_samples = X, y, n_samples
        if params is None or callable(params):
            self.params = params
        elif isinstance(params, dict):
            self.params = {str(k): _parse_spec(v, f"params[{k!r}]") for k, v in params.items()}
        else:
            raise FG2UTypeError("`params` must be a dict {name: (transform, index)} or a "
                                f"callable phi -> dict, got {type(params).__name__}")
        if sample_weight is None or callable(sample_weight):
            self.sample_weight = sample_weight
        else:
            self.sample_weight = _parse_spec(sample_weight, "sample_weight", whole_phi=True)
        self.sample_weight_param = str(sample_weight_param)
        if not callable(output):
            choice(output, "output", _OUTPUTS)
            if output != "coef" and X_val is None:
                raise FG2UValueError(f"output={output!r} predicts on a validation set: "
                                     "pass `X_val`")
        self.output = output
        self.X_val = X_val
        if fit_params is not None and not isinstance(fit_params, dict):
            raise FG2UTypeError(f"`fit_params` must be a dict, got {type(fit_params).__name__}")
        self.fit_params = dict(fit_params or {})
        self.on_convergence_warning = choice(on_convergence_warning, "on_convergence_warning",
                                             ("raise", "warn", "ignore"))
        self.version = check_version(version)

    def __repr__(self):
        what = self.estimator if self.estimator is not None else self.make_estimator
        return f"SklearnFit({what!r}, output={self.output!r})"

    def fingerprint(self) -> dict:
        """What identifies this solver's results, as JSON data: the estimator's class
        and parameters (``get_params(deep=True)``) or the factory, digests of ``X``,
        ``y`` and ``X_val``, the hyperparameter and sample-weight maps, the output,
        ``fit_params``, the scikit-learn version and ``version`` (see
        :mod:`solvers._fingerprint`)."""
        sklearn = _import_sklearn()
        if self.estimator is not None:
            cls = type(self.estimator)
            estimator = {"class": f"{cls.__module__}:{cls.__qualname__}",
                         "params": jsonable(self.estimator.get_params(deep=True))}
        else:
            estimator = {"factory": callable_identity(self.make_estimator)}
        return {"adapter": adapter_name(self), "version": self.version,
                "sklearn": sklearn.__version__, "estimator": estimator,
                "X": jsonable(self.X), "y": jsonable(self.y), "X_val": jsonable(self.X_val),
                "params": jsonable(self.params), "sample_weight": jsonable(self.sample_weight),
                "sample_weight_param": self.sample_weight_param,
                "output": jsonable(self.output), "fit_params": jsonable(self.fit_params),
                "on_convergence_warning": self.on_convergence_warning}

    def _new_estimator(self):
        sklearn = _import_sklearn()
        if self.estimator is not None:
            return sklearn.base.clone(self.estimator)
        try:
            est = self.make_estimator()
        except Exception as exc:
            raise InnerSolverError(f"`make_estimator` raised {type(exc).__name__}: {exc}",
                                   kind="exception", detail=exception_detail(exc)) from exc
        if not hasattr(est, "fit"):
            raise FG2UTypeError(f"`make_estimator` returned {type(est).__name__}, not an "
                                "estimator")
        return est

    def hyperparameters(self, phi):
        """The ``set_params`` dict that ``phi`` maps to."""
        phi = as_phi(phi)
        if self.params is None:
            return {}
        if callable(self.params):
            out = self.params(phi.copy())
            if not isinstance(out, dict):
                raise FG2UTypeError(f"`params(phi)` must return a dict, got "
                                    f"{type(out).__name__}")
            return out
        return {name: _apply_spec(spec, phi, f"params[{name!r}]")
                for name, spec in self.params.items()}

    def weights(self, phi):
        """The per-sample weights that ``phi`` maps to (None without ``sample_weight``)."""
        phi = as_phi(phi)
        if self.sample_weight is None:
            return None
        if callable(self.sample_weight):
            w = self.sample_weight(phi.copy())
        else:
            w = _apply_spec(self.sample_weight, phi, "sample_weight")
        w = np.asarray(w, dtype=np.float64).reshape(-1)
        if w.shape != (self.n_samples,) or not np.all(np.isfinite(w)):
            raise FG2UValueError(f"`sample_weight` must give {self.n_samples} finite weights "
                                 f"(one per sample), got shape {w.shape}")
        return w

    def __call__(self, phi, *, warm_start=None, seed=None):
        """Fit once for ``phi``; return the learned parameters or validation outputs."""
        phi = as_phi(phi)
        hyper = self.hyperparameters(phi)
        w = self.weights(phi)
        fit_kwargs = dict(self.fit_params)
        if w is not None:
            fit_kwargs[self.sample_weight_param] = w

        if warm_start is not None and self.output == "coef":
            warm = self._configured(hyper, seed)
            if _preset_warm_start(warm, warm_start, _num_features(self.X)):
                try:
                    return self._fit_and_output(warm, fit_kwargs)
                except InnerSolverError:
                    pass  # a cold fit decides whether this phi really fails
        return self._fit_and_output(self._configured(hyper, seed), fit_kwargs)

    def _configured(self, hyper, seed):
        est = self._new_estimator()
        try:
            if hyper:
                est.set_params(**hyper)
            if seed is not None:
                keys = [k for k in est.get_params(deep=True)
                        if k == "random_state" or k.endswith("__random_state")]
                if keys:
                    est.set_params(**{k: int(seed) for k in keys})
        except ValueError as exc:
            raise FG2UValueError(f"cannot set the hyperparameters {sorted(hyper)} on "
                                 f"{type(est).__name__}: {exc}") from None
        return est

    def _fit_and_output(self, est, fit_kwargs):
        sklearn = _import_sklearn()
        name = type(est).__name__
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", sklearn.exceptions.ConvergenceWarning)
            try:
                est.fit(self.X, self.y, **fit_kwargs)
            except Exception as exc:
                raise InnerSolverError(f"{name}.fit raised {type(exc).__name__}: {exc}",
                                       kind="exception", detail=exception_detail(exc)) from exc
        for w in caught:
            if issubclass(w.category, sklearn.exceptions.ConvergenceWarning):
                if self.on_convergence_warning == "raise":
                    raise InnerSolverError(f"{name}.fit did not converge: {w.message}",
                                           kind="not_converged", detail=str(w.message))
                if self.on_convergence_warning == "ignore":
                    continue
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        try:
            value = self._output(est)
        except InnerSolverError:
            raise
        except Exception as exc:
            raise InnerSolverError(f"output {self.output!r} of {name} raised "
                                   f"{type(exc).__name__}: {exc}", kind="exception",
                                   detail=exception_detail(exc)) from exc
        what = self.output if isinstance(self.output, str) else "output"
        return as_theta(value, where=f"{name} ({what})")

    def _output(self, est):
        if callable(self.output):
            return self.output(est)
        if self.output == "coef":
            final = getattr(est, "_final_estimator", est)
            if not hasattr(final, "coef_"):
                raise FG2UValueError(f"output='coef' needs an estimator with `coef_`, "
                                     f"{type(final).__name__} has none; use a prediction "
                                     "output or a callable `output`")
            coef = np.asarray(final.coef_, dtype=np.float64).reshape(-1)
            intercept = np.atleast_1d(np.asarray(getattr(final, "intercept_", 0.0),
                                                 dtype=np.float64)).reshape(-1)
            return np.concatenate([coef, intercept])
        return getattr(est, self.output)(self.X_val)


# -- helpers -------------------------------------------------------------------------

def _num_samples(a, name):
    try:
        return a.shape[0] if hasattr(a, "shape") else len(a)
    except TypeError:
        raise FG2UTypeError(f"`{name}` must be array-like, got {type(a).__name__}") from None


def _num_features(X):
    shape = getattr(X, "shape", None)
    if shape is not None and len(shape) == 2:
        return shape[1]
    return np.asarray(X).shape[1]


def _parse_spec(spec, name, *, whole_phi=False):
    if isinstance(spec, (numbers.Integral, slice)) and not isinstance(spec, bool):
        spec = ("identity", spec)
    if whole_phi and isinstance(spec, str):
        spec = (spec, slice(None))
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise FG2UTypeError(f"`{name}` must be (transform, index), e.g. ('exp', 0) or "
                            f"('sigmoid', slice(1, None)), got {spec!r}")
    transform, index = spec
    if isinstance(transform, str):
        if transform not in TRANSFORMS:
            known = ", ".join(map(repr, TRANSFORMS))
            raise FG2UValueError(f"`{name}`: unknown transform {transform!r}; use one of "
                                 f"{known} or a callable")
    elif not callable(transform):
        raise FG2UTypeError(f"`{name}`: the transform must be a name or a callable, got "
                            f"{type(transform).__name__}")
    if not (isinstance(index, slice) or
            (isinstance(index, numbers.Integral) and not isinstance(index, bool))):
        raise FG2UTypeError(f"`{name}`: the index must be an int or a slice of phi, got "
                            f"{index!r}")
    return (transform, index)


def _apply_spec(spec, phi, name):
    transform, index = spec
    func = TRANSFORMS[transform] if isinstance(transform, str) else transform
    if isinstance(index, slice):
        raw = phi[index]
        if raw.size == 0:
            raise FG2UValueError(f"`{name}`: {index} selects no entry of phi (length "
                                 f"{phi.shape[0]})")
    else:
        if not -phi.shape[0] <= index < phi.shape[0]:
            raise FG2UValueError(f"`{name}`: index {index} is out of range for phi of "
                                 f"length {phi.shape[0]}")
        raw = phi[index:index + 1] if index != -1 else phi[-1:]
    value = np.asarray(func(raw), dtype=np.float64)
    if not np.all(np.isfinite(value)):
        raise FG2UValueError(f"`{name}`: the transform gave a non-finite value from "
                             f"phi[{index}] (overflow?); bound phi")
    return float(value.reshape(-1)[0]) if value.size == 1 else value


def _preset_warm_start(est, warm_start, n_features):
    """Preset ``coef_``/``intercept_`` from a previous theta; False if not applicable."""
    if hasattr(est, "steps") or "warm_start" not in est.get_params(deep=False):
        return False
    ws = np.asarray(warm_start, dtype=np.float64).reshape(-1)
    per = n_features + 1
    if ws.size == 0 or ws.size % per or not np.all(np.isfinite(ws)):
        return False
    k = ws.size // per
    coef = ws[:k * n_features].reshape(k, n_features)
    intercept = ws[k * n_features:]
    from sklearn.base import is_classifier

    est.set_params(warm_start=True)
    if is_classifier(est) or k > 1:
        est.coef_, est.intercept_ = coef, intercept
    else:
        est.coef_, est.intercept_ = coef[0], float(intercept[0])
    return True
