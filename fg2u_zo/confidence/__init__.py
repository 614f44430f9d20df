"""Uncertainty of a calibration: covariance, intervals, identifiability, predictions.

One idea a module: ``jacobian`` (the inner solver's Jacobian at the fit, one group of
finite differences), ``covariance`` (least squares and Laplace covariance, the
spectrum), ``profile`` (profile-likelihood intervals) and ``fits`` (the profile's fits,
run side by side), ``identifiability`` (the warning), ``prediction`` (bands and
samples), ``result`` (:class:`Uncertainty`), ``report`` (its table), ``plotting`` (its
figure), ``analysis`` (:func:`uncertainty`, which puts them together).

The package is not named ``uncertainty``: importing a submodule of that name would
bind it over the function ``fg2u_zo.uncertainty``.
"""

from .analysis import uncertainty
from .profile import Profile
from .result import PredictionBand, Uncertainty

__all__ = ["uncertainty", "Uncertainty", "PredictionBand", "Profile"]
