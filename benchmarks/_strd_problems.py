"""The NIST StRD nonlinear regression problems of ``python -m benchmarks.strd``.

The 27 data sets of NIST's Statistical Reference Datasets for nonlinear least squares
(public domain) are shipped unchanged in ``benchmarks/data/strd/<Name>.dat`` (see the
README there). Each file says, in its header, on which lines its starting values,
certified values and data stand; :func:`load` reads them from those lines, so a file
that was cut or shifted is refused rather than misread.

Every model below is written from the formula printed in its file, in numpy: the
inner solver of the benchmark is the black box ``beta -> y_hat(x_i; beta)`` for all
observations ``x_i``, and the outer loss compares ``y_hat`` with the responses
(``log y`` for Nelson, whose model is written for ``log y``).

Examples
--------
>>> from benchmarks._strd_problems import load
>>> p = load("Misra1a")
>>> p.num_params, p.num_obs, p.starts[1].tolist()
(2, 14, [250.0, 0.0005])
>>> bool(abs(p.rss(p.certified) / p.certified_rss - 1) < 1e-8)
True
"""

from __future__ import annotations

import math
import pathlib
import re
from dataclasses import dataclass

import numpy as np

__all__ = ["StrdProblem", "NAMES", "MODELS", "DATA_DIR", "load", "load_all"]

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data" / "strd"

#: In NIST's order (lower, average, higher difficulty).
NAMES = ("Misra1a", "Chwirut2", "Chwirut1", "Lanczos3", "Gauss1", "Gauss2", "DanWood",
         "Misra1b", "Kirby2", "Hahn1", "Nelson", "MGH17", "Lanczos1", "Lanczos2", "Gauss3",
         "Misra1c", "Misra1d", "Roszman1", "ENSO", "MGH09", "Thurber", "BoxBOD", "Rat42",
         "MGH10", "Eckerle4", "Rat43", "Bennett5")


# -- the models, y_hat(x; b), vectorized over the observations --------------------------
def _exp_saturation(b, x):            # Misra1a, BoxBOD: b1*(1-exp[-b2*x])
    return b[0] * -np.expm1(-b[1] * x)


def _chwirut(b, x):                   # exp[-b1*x]/(b2+b3*x)
    return np.exp(-b[0] * x) / (b[1] + b[2] * x)


def _three_exponentials(b, x):        # Lanczos1-3
    return b[0] * np.exp(-b[1] * x) + b[2] * np.exp(-b[3] * x) + b[4] * np.exp(-b[5] * x)


def _gauss(b, x):                     # Gauss1-3: a decay and two Gaussian peaks
    return (b[0] * np.exp(-b[1] * x) + b[2] * np.exp(-(x - b[3]) ** 2 / b[4] ** 2)
            + b[5] * np.exp(-(x - b[6]) ** 2 / b[7] ** 2))


def _danwood(b, x):                   # b1*x**b2
    return b[0] * x ** b[1]


def _misra1b(b, x):                   # b1*(1-(1+b2*x/2)**(-2))
    return b[0] * (1.0 - (1.0 + b[1] * x / 2.0) ** -2)


def _misra1c(b, x):                   # b1*(1-(1+2*b2*x)**(-.5))
    return b[0] * (1.0 - (1.0 + 2.0 * b[1] * x) ** -0.5)


def _misra1d(b, x):                   # b1*b2*x*((1+b2*x)**(-1))
    return b[0] * b[1] * x / (1.0 + b[1] * x)


def _kirby2(b, x):                    # quadratic / quadratic
    return (b[0] + b[1] * x + b[2] * x ** 2) / (1.0 + b[3] * x + b[4] * x ** 2)


def _cubic_over_cubic(b, x):          # Hahn1, Thurber
    return ((b[0] + b[1] * x + b[2] * x ** 2 + b[3] * x ** 3)
            / (1.0 + b[4] * x + b[5] * x ** 2 + b[6] * x ** 3))


def _nelson(b, x):                    # log[y] = b1 - b2*x1*exp[-b3*x2]
    return b[0] - b[1] * x[:, 0] * np.exp(-b[2] * x[:, 1])


def _mgh17(b, x):                     # b1 + b2*exp[-x*b4] + b3*exp[-x*b5]
    return b[0] + b[1] * np.exp(-x * b[3]) + b[2] * np.exp(-x * b[4])


def _roszman1(b, x):                  # b1 - b2*x - arctan[b3/(x-b4)]/pi
    return b[0] - b[1] * x - np.arctan(b[2] / (x - b[3])) / math.pi


def _enso(b, x):                      # annual cycle plus two cycles of fitted periods
    w = 2.0 * math.pi * x
    return (b[0] + b[1] * np.cos(w / 12.0) + b[2] * np.sin(w / 12.0)
            + b[4] * np.cos(w / b[3]) + b[5] * np.sin(w / b[3])
            + b[7] * np.cos(w / b[6]) + b[8] * np.sin(w / b[6]))


def _mgh09(b, x):                     # b1*(x**2+x*b2) / (x**2+x*b3+b4)
    return b[0] * (x ** 2 + x * b[1]) / (x ** 2 + x * b[2] + b[3])


def _rat42(b, x):                     # b1 / (1+exp[b2-b3*x])
    return b[0] / (1.0 + np.exp(b[1] - b[2] * x))


def _mgh10(b, x):                     # b1 * exp[b2/(x+b3)]
    return b[0] * np.exp(b[1] / (x + b[2]))


def _eckerle4(b, x):                  # (b1/b2) * exp[-0.5*((x-b3)/b2)**2]
    return (b[0] / b[1]) * np.exp(-0.5 * ((x - b[2]) / b[1]) ** 2)


def _rat43(b, x):                     # b1 / ((1+exp[b2-b3*x])**(1/b4))
    return b[0] / (1.0 + np.exp(b[1] - b[2] * x)) ** (1.0 / b[3])


def _bennett5(b, x):                  # b1 * (b2+x)**(-1/b3)
    return b[0] * (b[1] + x) ** (-1.0 / b[2])


#: Data set name -> ``model(b, x) -> y_hat`` (numpy; ``x`` is (m,) or, for Nelson, (m, 2)).
MODELS = {
    "Misra1a": _exp_saturation, "BoxBOD": _exp_saturation,
    "Chwirut1": _chwirut, "Chwirut2": _chwirut,
    "Lanczos1": _three_exponentials, "Lanczos2": _three_exponentials,
    "Lanczos3": _three_exponentials,
    "Gauss1": _gauss, "Gauss2": _gauss, "Gauss3": _gauss,
    "DanWood": _danwood, "Misra1b": _misra1b, "Misra1c": _misra1c, "Misra1d": _misra1d,
    "Kirby2": _kirby2, "Hahn1": _cubic_over_cubic, "Thurber": _cubic_over_cubic,
    "Nelson": _nelson, "MGH17": _mgh17, "Roszman1": _roszman1, "ENSO": _enso,
    "MGH09": _mgh09, "Rat42": _rat42, "MGH10": _mgh10, "Eckerle4": _eckerle4,
    "Rat43": _rat43, "Bennett5": _bennett5,
}

#: Data sets whose model is written for a transformed response.
_LOG_RESPONSE = frozenset({"Nelson"})


@dataclass(frozen=True, repr=False)
class StrdProblem:
    """One NIST StRD data set with its certified results.

    Attributes
    ----------
    name : str
    difficulty : str
        NIST's level: ``"lower"``, ``"average"`` or ``"higher"``.
    x : ndarray, shape (m,) or (m, 2)
        Predictor(s).
    y : ndarray, shape (m,)
        The response the model is fitted to (``log`` of the file's ``y`` for Nelson).
    starts : ndarray, shape (2, n)
        NIST's "Start 1" and "Start 2".
    certified : ndarray, shape (n,)
        Certified parameter values (11 significant digits).
    certified_rss : float
        Certified residual sum of squares.
    model : callable
        ``model(b, x) -> y_hat``.
    """

    name: str
    difficulty: str
    x: np.ndarray
    y: np.ndarray
    starts: np.ndarray
    certified: np.ndarray
    certified_rss: float
    model: object

    @property
    def num_params(self) -> int:
        return int(self.certified.size)

    @property
    def num_obs(self) -> int:
        return int(self.y.size)

    def predict(self, b) -> np.ndarray:
        """``y_hat(x_i; b)`` for every observation: the benchmark's black box."""
        return np.asarray(self.model(np.asarray(b, dtype=np.float64), self.x),
                          dtype=np.float64)

    def residuals(self, b) -> np.ndarray:
        """``y_hat - y``; their squares sum to the RSS."""
        return self.predict(b) - self.y

    def rss(self, b) -> float:
        r = self.residuals(b)
        return float(r @ r)

    def __repr__(self):
        return (f"StrdProblem({self.name!r}, n={self.num_params}, m={self.num_obs}, "
                f"{self.difficulty})")


_FLOAT = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[EeDd][-+]?\d+)?"


def _lines_of(header, what):
    m = re.search(what + r"\s*\(lines\s+(\d+)\s+to\s+(\d+)\)", header)
    if m is None:
        raise ValueError(f"no '{what} (lines a to b)' in the header")
    return int(m.group(1)), int(m.group(2))


def _number_after(text, label):
    m = re.search(re.escape(label) + r"\s*(" + _FLOAT + ")", text)
    if m is None:
        raise ValueError(f"no {label!r} line")
    return float(m.group(1))


def load(name, data_dir=DATA_DIR) -> StrdProblem:
    """Read ``<name>.dat`` from the lines its header names, and check its counts.

    Raises
    ------
    ValueError
        For an unknown name, or a file whose parameter or observation count disagrees
        with its header.
    """
    if name not in MODELS:
        raise ValueError(f"unknown StRD data set {name!r}; known: {', '.join(NAMES)}")
    lines = (pathlib.Path(data_dir) / f"{name}.dat").read_text().splitlines()
    header = "\n".join(lines[:12])
    s0, s1 = _lines_of(header, "Starting Values")
    _, c1 = _lines_of(header, "Certified Values")
    d0, d1 = _lines_of(header, "Data")
    rows = []
    for line in lines[s0 - 1:s1]:
        m = re.match(r"\s*b(\d+)\s*=\s*(.*)", line)
        if m is None:
            raise ValueError(f"{name}: line {line!r} is not a parameter line")
        rows.append([float(v) for v in m.group(2).split()])
    table = np.array(rows, dtype=np.float64)   # start 1, start 2, certified, std. dev.
    certified_block = "\n".join(lines[s0 - 1:c1])
    rss = _number_after(certified_block, "Residual Sum of Squares:")
    num_obs = int(_number_after(certified_block, "Number of Observations:"))
    data = np.array([[float(v) for v in line.split()] for line in lines[d0 - 1:d1]],
                    dtype=np.float64)
    n_declared = re.search(r"(\d+)\s+Parameters", "\n".join(lines))
    if n_declared is None or int(n_declared.group(1)) != table.shape[0]:
        raise ValueError(f"{name}: {table.shape[0]} parameter lines, header says "
                         f"{n_declared.group(1) if n_declared else '?'}")
    if data.shape[0] != num_obs:
        raise ValueError(f"{name}: {data.shape[0]} data lines, header says {num_obs}")
    level = re.search(r"(Lower|Average|Higher) Level of Difficulty", "\n".join(lines))
    y = data[:, 0]
    x = data[:, 1] if data.shape[1] == 2 else data[:, 1:]
    if name in _LOG_RESPONSE:
        y = np.log(y)
    return StrdProblem(name=name, difficulty=level.group(1).lower(), x=x, y=y,
                       starts=table[:, :2].T.copy(), certified=table[:, 2].copy(),
                       certified_rss=rss, model=MODELS[name])


def load_all(names=NAMES, data_dir=DATA_DIR):
    """All data sets (in NIST's order), as a list of :class:`StrdProblem`."""
    return [load(n, data_dir) for n in names]
