"""What :func:`fg2u_zo.uncertainty` returns: :class:`Uncertainty` and
:class:`PredictionBand`, and their JSON form (for ``fg2u-zo plot``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ..errors import FG2UValueError
from .profile import Profile

__all__ = ["Uncertainty", "PredictionBand", "Profile", "FORMAT"]

#: The ``"format"`` of the JSON written by :meth:`Uncertainty.save`.
FORMAT = "fg2u-zo uncertainty 1"


@dataclass(frozen=True, eq=False)
class PredictionBand:
    """A first-order confidence band of a prediction ``predict(phi)``.

    Attributes
    ----------
    value : ndarray, shape (K,)
        ``predict(phi)`` at the fit.
    stderr : ndarray, shape (K,)
        ``sqrt(g cov g^T)`` per entry, ``g = d predict / d z``.
    lower, upper : ndarray, shape (K,)
        ``value -+ quantile * stderr``.
    jacobian : ndarray, shape (K, N)
        ``d predict / d phi``.
    confidence : float
    nfev : int
        Calls of ``predict`` spent.
    """

    value: np.ndarray
    stderr: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    jacobian: np.ndarray
    confidence: float
    nfev: int

    def __repr__(self):
        return (f"PredictionBand({self.value.size} values, confidence={self.confidence:g}, "
                f"max stderr={np.max(self.stderr, initial=0.0):.3g}, nfev={self.nfev})")


@dataclass(frozen=True, eq=False)
class Uncertainty:
    """The uncertainty of a calibration at its fit (see :func:`fg2u_zo.uncertainty`).

    Intervals and standard errors are in ``phi``. The Gaussian approximation is made in
    the run's unconstrained variable ``z`` (``phi = T(z)``, :attr:`transform`): for a
    ``"log"`` or ``"logit"`` parameter the interval is the image of the symmetric
    interval in ``z`` (asymmetric in ``phi``), and its ``stderr`` and ``cov`` are the
    delta method's ``T'(z) * (...) in z``.

    Attributes
    ----------
    phi, z : ndarray, shape (N,)
        The fit.
    value : float
        The outer loss at the fit.
    names : tuple of str
    transform : ParameterTransform
    confidence : float
    method : {"linear", "profile"}
    loss : {"least_squares", "likelihood"}
        How the covariance was formed (see :mod:`fg2u_zo.confidence.covariance`).
    theta : ndarray
        The inner output at the fit.
    jacobian : ndarray, shape (M, N)
        ``d S / d phi`` at the fit (outputs flattened).
    cov : ndarray, shape (N, N)
        In ``phi``. Parameters in an unconstrained combination have ``inf`` variances
        and NaN covariances.
    cov_z : ndarray, shape (N, N)
        In ``z``.
    stderr : ndarray, shape (N,)
    corr : ndarray, shape (N, N)
    interval : ndarray, shape (N, 2)
        The ``confidence`` interval of each parameter by ``method``.
    linear_interval : ndarray, shape (N, 2)
        The linear method's (equal to ``interval`` when ``method="linear"``).
    open : ndarray of bool, shape (N, 2)
        Ends the data do not bound (``interval`` is then ``+-inf`` or a bound).
    singular_values : ndarray, shape (N,)
        Of the whitened Jacobian in ``z``, largest first: ``1 / s_k`` is the standard
        deviation along ``directions[:, k]``.
    directions : ndarray, shape (N, N)
    unconstrained : ndarray, shape (N, k)
        Directions in ``z`` the data do not constrain (columns).
    condition_number : float
    dof : int or None
        ``M - N`` (Student's t) when the noise level was estimated; None when it was
        given or the loss is a likelihood (normal quantiles).
    quantile : float
        The t or normal quantile of the intervals.
    noise_sd : float or None
        Least squares: the noise standard deviation of a datum of unit weight
        (estimated when ``sigma=None``); None for a likelihood.
    unit : float
        The change of the loss that is one unit of chi-square (profile statistic
        ``(F - value) / unit``).
    nfev : int
        Solves spent (the Jacobian, its noise probe, the profile fits).
    step : float
        Relative finite-difference step of the Jacobian; ``scheme`` its scheme.
    scheme : str
    noise : NoiseEstimate or None
        The noise estimate behind ``step`` (measured in the scaled coordinates of
        :mod:`fg2u_zo.confidence.jacobian`).
    rcond : float
        Relative singular value below which a direction is unconstrained.
    profiles : tuple of Profile or None
        ``method="profile"``: each parameter's profile.
    identifiability : tuple of str
        The findings of the :class:`~fg2u_zo.IdentifiabilityWarning` (empty if none).
    """

    phi: np.ndarray
    z: np.ndarray
    value: float
    names: tuple
    transform: object
    confidence: float
    method: str
    loss: str
    theta: np.ndarray
    jacobian: np.ndarray
    cov: np.ndarray
    cov_z: np.ndarray
    stderr: np.ndarray
    corr: np.ndarray
    interval: np.ndarray
    linear_interval: np.ndarray
    open: np.ndarray
    singular_values: np.ndarray
    directions: np.ndarray
    unconstrained: np.ndarray
    condition_number: float
    dof: int | None
    quantile: float
    noise_sd: float | None
    unit: float
    nfev: int
    step: float
    scheme: str
    rcond: float
    noise: object = None
    profiles: tuple | None = None
    identifiability: tuple = field(default_factory=tuple)

    def __repr__(self):
        return (f"Uncertainty(N={self.phi.size}, method={self.method!r}, "
                f"confidence={self.confidence:g}, loss={self.loss!r}, dof={self.dof}, "
                f"condition_number={self.condition_number:.3g}, "
                f"unconstrained={self.unconstrained.shape[1]}, nfev={self.nfev})")

    def __str__(self):
        return self.report()

    def report(self, *, corr_threshold=0.9) -> str:
        """A table: names, values, standard errors, intervals, then the correlations
        above ``corr_threshold`` in absolute value and the identifiability findings."""
        from .report import report
        return report(self, corr_threshold=corr_threshold)

    # -- using the approximation ------------------------------------------------------
    def sample(self, size, rng=None) -> np.ndarray:
        """Draws from the Gaussian approximation in ``z``, mapped to ``phi``.

        Parameters
        ----------
        size : int
        rng : None, int or numpy.random.Generator

        Returns
        -------
        ndarray, shape (size, N)

        Raises
        ------
        FG2UValueError
            When a combination is unconstrained (its variance is infinite).
        """
        from .prediction import sample
        return sample(self, size, rng)

    def predict(self, predict, *, confidence=None, step=None, evaluator=None, backend=None,
                n_jobs=None, **evaluator_options) -> PredictionBand:
        """First-order confidence band of ``predict(phi) -> array`` at the fit.

        ``g = d predict / d z`` by one group of forward differences (through the
        Evaluator, like the inner solver's Jacobian, at the same relative ``step``
        unless one is given); ``stderr = sqrt(diag(g cov_z g^T))``; the band is
        ``value -+ quantile * stderr`` with this result's quantile (or that of
        ``confidence``). It is the band of the mean prediction; add the noise level for
        a band of new observations.

        Returns
        -------
        PredictionBand
        """
        from .prediction import prediction_band
        return prediction_band(self, predict, confidence=confidence, step=step,
                               evaluator=evaluator, backend=backend, n_jobs=n_jobs,
                               **evaluator_options)

    # -- JSON --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The result as JSON-ready data (arrays as lists, non-finite floats tagged);
        the noise estimate is left out. :meth:`from_dict` reads it back."""
        from ..persist.codec import to_json

        data = {"format": FORMAT}
        for name in self.__dataclass_fields__:
            if name in ("noise", "transform", "profiles"):
                continue
            value = getattr(self, name)
            data[name] = to_json(np.asarray(value) if isinstance(value, np.ndarray)
                                 else value)
        data["transform"] = {"kinds": list(self.transform.kinds),
                             "lower": to_json(self.transform.bounds.lower),
                             "upper": to_json(self.transform.bounds.upper)}
        data["profiles"] = None if self.profiles is None else [
            {f: to_json(getattr(p, f)) for f in p.__dataclass_fields__} for p in self.profiles]
        return data

    @classmethod
    def from_dict(cls, data) -> "Uncertainty":
        """Inverse of :meth:`to_dict`."""
        from ..persist.codec import from_json
        from ..outer.transforms import Bounds, ParameterTransform

        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise FG2UValueError(f"not an uncertainty record (its format is not {FORMAT!r})")
        data = dict(data)
        data.pop("format")
        t = data.pop("transform")
        transform = ParameterTransform(tuple(t["kinds"]), Bounds(
            np.asarray(from_json(t["lower"]), dtype=np.float64),
            np.asarray(from_json(t["upper"]), dtype=np.float64)))
        profiles = data.pop("profiles")
        if profiles is not None:
            profiles = tuple(Profile(**{k: from_json(v) for k, v in p.items()})
                             for p in profiles)
        values = {k: from_json(v) for k, v in data.items()}
        values["names"] = tuple(values["names"])
        values["identifiability"] = tuple(values["identifiability"])
        return cls(transform=transform, profiles=profiles, **values)

    def save(self, path) -> str:
        """Write :meth:`to_dict` as JSON to ``path``; returns the path."""
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh)
        return str(path)

    @classmethod
    def load(cls, path) -> "Uncertainty":
        """Read a file written by :meth:`save`."""
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))
