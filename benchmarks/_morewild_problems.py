"""The Moré–Wild derivative-free benchmark set of ``python -m benchmarks.morewild``.

Moré and Wild, "Benchmarking derivative-free optimization algorithms", SIAM J. Optim.
20(1), 2009: 53 smooth least-squares problems ``f(x) = sum_i F_i(x)^2`` built from 22
functions, 18 of Moré, Garbow and Hillstrom, "Testing unconstrained optimization
software", ACM TOMS 7(1), 1981 (numbers 1-18 below), and four of CUTEr (BDQRTIC, CUBE,
MANCINO, HEART8LS), with n = 2..12 parameters and m residuals, started from the
function's standard point ``x0`` (``s = 0``) or ``10 x0`` (``s = 1``).

The residual functions are written here from those published definitions, in numpy;
``TABLE`` is the paper's problem table (number, function, n, m, s), and the tests check
``f(x0)`` of all 53 problems against the values the set's authors publish with it.

Examples
--------
>>> from benchmarks._morewild_problems import problems
>>> ps = problems()
>>> len(ps), ps[6].name, ps[6].x0.tolist(), round(ps[6].value(ps[6].x0), 6)
(53, 'rosenbrock', [-1.2, 1.0], 24.2)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["MoreWildProblem", "FUNCTIONS", "TABLE", "problems", "standard_start"]


# -- the 22 residual functions F: R^n -> R^m ----------------------------------------------
def linear_full_rank(x, m):
    """MGH 32: ``F_i = x_i - 2/m sum(x) - 1`` (i <= n), ``-2/m sum(x) - 1`` after."""
    f = np.full(m, -2.0 * x.sum() / m - 1.0)
    f[:x.size] += x
    return f


def linear_rank_one(x, m):
    """MGH 33: ``F_i = i sum_j j x_j - 1``."""
    return np.arange(1, m + 1) * (np.arange(1, x.size + 1) @ x) - 1.0


def linear_rank_one_zero(x, m):
    """MGH 34: rank one with zero columns and rows: ``F_1 = F_m = -1``,
    ``F_i = (i - 1) sum_{j=2}^{n-1} j x_j - 1``."""
    n = x.size
    s = np.arange(2, n) @ x[1:n - 1]
    f = np.arange(0, m) * s - 1.0
    f[m - 1] = -1.0
    return f


def rosenbrock(x, m):
    """MGH 1."""
    return np.array([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


def helical_valley(x, m):
    """MGH 7; ``theta`` in [-1/4, 3/4) from the quadrant of ``(x1, x2)``."""
    if x[0] > 0:
        theta = math.atan(x[1] / x[0]) / (2 * math.pi)
    elif x[0] < 0:
        theta = math.atan(x[1] / x[0]) / (2 * math.pi) + 0.5
    else:  # the set's convention on the axis x1 = 0
        theta = 0.25
    return np.array([10.0 * (x[2] - 10.0 * theta),
                     10.0 * (math.hypot(x[0], x[1]) - 1.0), x[2]])


def powell_singular(x, m):
    """MGH 13."""
    return np.array([x[0] + 10 * x[1], math.sqrt(5) * (x[2] - x[3]),
                     (x[1] - 2 * x[2]) ** 2, math.sqrt(10) * (x[0] - x[3]) ** 2])


def freudenstein_roth(x, m):
    """MGH 2."""
    return np.array([-13 + x[0] + ((5 - x[1]) * x[1] - 2) * x[1],
                     -29 + x[0] + ((1 + x[1]) * x[1] - 14) * x[1]])


_BARD_Y = np.array([0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73,
                    0.96, 1.34, 2.10, 4.39])


def bard(x, m):
    """MGH 8: ``u_i = i``, ``v_i = 16 - i``, ``w_i = min(u_i, v_i)``."""
    u = np.arange(1, 16, dtype=np.float64)
    v = 16.0 - u
    w = np.minimum(u, v)
    return _BARD_Y - (x[0] + u / (x[1] * v + x[2] * w))


_KOWALIK_Y = np.array([0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342,
                       0.0323, 0.0235, 0.0246])
_KOWALIK_U = np.array([4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714,
                       0.0625])


def kowalik_osborne(x, m):
    """MGH 15."""
    u = _KOWALIK_U
    return _KOWALIK_Y - x[0] * u * (u + x[1]) / (u * (u + x[2]) + x[3])


_MEYER_Y = np.array([34780.0, 28610.0, 23650.0, 19630.0, 16370.0, 13720.0, 11540.0,
                     9744.0, 8261.0, 7030.0, 6005.0, 5147.0, 4427.0, 3820.0, 3307.0,
                     2872.0])


def meyer(x, m):
    """MGH 10: ``t_i = 45 + 5 i``."""
    t = 45.0 + 5.0 * np.arange(1, 17)
    return x[0] * np.exp(x[1] / (t + x[2])) - _MEYER_Y


def watson(x, m):
    """MGH 20 (m = 31): 29 polynomial terms at ``t_i = i / 29``, then ``x1`` and
    ``x2 - x1^2 - 1``."""
    n = x.size
    t = np.arange(1, 30) / 29.0
    powers = t[:, None] ** np.arange(n)            # t^(j-1), j = 1..n
    s1 = powers[:, :n - 1] @ (np.arange(1, n) * x[1:])
    s2 = powers @ x
    return np.concatenate([s1 - s2 ** 2 - 1.0, [x[0], x[1] - x[0] ** 2 - 1.0]])


def box_3d(x, m):
    """MGH 12: ``t_i = i / 10``."""
    t = np.arange(1, m + 1) / 10.0
    return (np.exp(-t * x[0]) - np.exp(-t * x[1])
            - x[2] * (np.exp(-t) - np.exp(-10.0 * t)))


def jennrich_sampson(x, m):
    """MGH 6."""
    i = np.arange(1, m + 1, dtype=np.float64)
    return 2.0 + 2.0 * i - (np.exp(i * x[0]) + np.exp(i * x[1]))


def brown_dennis(x, m):
    """MGH 16: ``t_i = i / 5``."""
    t = np.arange(1, m + 1) / 5.0
    return ((x[0] + t * x[1] - np.exp(t)) ** 2
            + (x[2] + x[3] * np.sin(t) - np.cos(t)) ** 2)


def chebyquad(x, m):
    """MGH 35: the mean of the shifted Chebyshev polynomials ``T_i(2 x_j - 1)`` minus
    their integral over [0, 1] (``-1/(i^2 - 1)`` for even i, 0 for odd i)."""
    n = x.size
    y = 2.0 * x - 1.0
    prev, cur = np.ones(n), y.copy()
    f = np.empty(m)
    for i in range(1, m + 1):
        f[i - 1] = cur.mean()
        if i % 2 == 0:
            f[i - 1] += 1.0 / (i * i - 1.0)
        prev, cur = cur, 2.0 * y * cur - prev
    return f


def brown_almost_linear(x, m):
    """MGH 27 (m = n)."""
    n = x.size
    f = np.empty(n)
    f[:n - 1] = x[:n - 1] + x.sum() - (n + 1.0)
    f[n - 1] = np.prod(x) - 1.0
    return f


_OSBORNE1_Y = np.array([0.844, 0.908, 0.932, 0.936, 0.925, 0.908, 0.881, 0.850, 0.818,
                        0.784, 0.751, 0.718, 0.685, 0.658, 0.628, 0.603, 0.580, 0.558,
                        0.538, 0.522, 0.506, 0.490, 0.478, 0.467, 0.457, 0.448, 0.438,
                        0.431, 0.424, 0.420, 0.414, 0.411, 0.406])


def osborne1(x, m):
    """MGH 17: ``t_i = 10 (i - 1)``."""
    t = 10.0 * np.arange(33)
    return _OSBORNE1_Y - (x[0] + x[1] * np.exp(-t * x[3]) + x[2] * np.exp(-t * x[4]))


_OSBORNE2_Y = np.array([1.366, 1.191, 1.112, 1.013, 0.991, 0.885, 0.831, 0.847, 0.786,
                        0.725, 0.746, 0.679, 0.608, 0.655, 0.616, 0.606, 0.602, 0.626,
                        0.651, 0.724, 0.649, 0.649, 0.694, 0.644, 0.624, 0.661, 0.612,
                        0.558, 0.533, 0.495, 0.500, 0.423, 0.395, 0.375, 0.372, 0.391,
                        0.396, 0.405, 0.428, 0.429, 0.523, 0.562, 0.607, 0.653, 0.672,
                        0.708, 0.633, 0.668, 0.645, 0.632, 0.591, 0.559, 0.597, 0.625,
                        0.739, 0.710, 0.729, 0.720, 0.636, 0.581, 0.428, 0.292, 0.162,
                        0.098, 0.054])


def osborne2(x, m):
    """MGH 19: ``t_i = (i - 1) / 10``."""
    t = np.arange(65) / 10.0
    return _OSBORNE2_Y - (x[0] * np.exp(-t * x[4])
                          + x[1] * np.exp(-(t - x[8]) ** 2 * x[5])
                          + x[2] * np.exp(-(t - x[9]) ** 2 * x[6])
                          + x[3] * np.exp(-(t - x[10]) ** 2 * x[7]))


def bdqrtic(x, m):
    """CUTEr BDQRTIC as a sum of squares (m = 2 (n - 4)): ``3 - 4 x_i`` and
    ``x_i^2 + 2 x_{i+1}^2 + 3 x_{i+2}^2 + 4 x_{i+3}^2 + 5 x_n^2``, i = 1..n-4."""
    n = x.size
    k = n - 4
    q = (x[:k] ** 2 + 2 * x[1:k + 1] ** 2 + 3 * x[2:k + 2] ** 2 + 4 * x[3:k + 3] ** 2
         + 5 * x[n - 1] ** 2)
    return np.concatenate([3.0 - 4.0 * x[:k], q])


def cube(x, m):
    """CUTEr CUBE: ``x1 - 1``, ``10 (x_i - x_{i-1}^3)``."""
    return np.concatenate([[x[0] - 1.0], 10.0 * (x[1:] - x[:-1] ** 3)])


def mancino(x, m):
    """CUTEr MANCINO (m = n): ``1400 x_i + (i - 50)^3 + sum_j v (sin^5 log v +
    cos^5 log v)``, ``v = sqrt(x_i^2 + i / j)``."""
    n = x.size
    i = np.arange(1, n + 1, dtype=np.float64)
    v = np.sqrt(x[:, None] ** 2 + i[:, None] / i[None, :])
    lv = np.log(v)
    s = (v * (np.sin(lv) ** 5 + np.cos(lv) ** 5)).sum(axis=1)
    return 1400.0 * x + (i - 50.0) ** 3 + s


def heart8(x, m):
    """CUTEr HEART8LS: the dipole-model equations of the heart."""
    a, b, c, d, t, u, v, w = x
    return np.array([
        a + b + 0.69,
        c + d + 0.044,
        t * a + u * b - v * c - w * d + 1.57,
        v * a + w * b + t * c + u * d + 1.31,
        a * (t * t - v * v) - 2 * c * t * v + b * (u * u - w * w) - 2 * d * u * w + 2.65,
        c * (t * t - v * v) + 2 * a * t * v + d * (u * u - w * w) + 2 * b * u * w - 2.0,
        (a * t * (t * t - 3 * v * v) + c * v * (v * v - 3 * t * t)
         + b * u * (u * u - 3 * w * w) + d * w * (w * w - 3 * u * u) + 12.6),
        (c * t * (t * t - 3 * v * v) - a * v * (v * v - 3 * t * t)
         + d * u * (u * u - 3 * w * w) - b * w * (w * w - 3 * u * u) - 9.48),
    ])


#: Function number (as in the paper) -> (name, residual function).
FUNCTIONS = {
    1: ("linear_full_rank", linear_full_rank), 2: ("linear_rank_one", linear_rank_one),
    3: ("linear_rank_one_zero", linear_rank_one_zero), 4: ("rosenbrock", rosenbrock),
    5: ("helical_valley", helical_valley), 6: ("powell_singular", powell_singular),
    7: ("freudenstein_roth", freudenstein_roth), 8: ("bard", bard),
    9: ("kowalik_osborne", kowalik_osborne), 10: ("meyer", meyer), 11: ("watson", watson),
    12: ("box_3d", box_3d), 13: ("jennrich_sampson", jennrich_sampson),
    14: ("brown_dennis", brown_dennis), 15: ("chebyquad", chebyquad),
    16: ("brown_almost_linear", brown_almost_linear), 17: ("osborne1", osborne1),
    18: ("osborne2", osborne2), 19: ("bdqrtic", bdqrtic), 20: ("cube", cube),
    21: ("mancino", mancino), 22: ("heart8", heart8),
}

#: The paper's 53 problems: (function number, n, m, s), the start being 10^s x0.
TABLE = (
    (1, 9, 45, 0), (1, 9, 45, 1), (2, 7, 35, 0), (2, 7, 35, 1), (3, 7, 35, 0),
    (3, 7, 35, 1), (4, 2, 2, 0), (4, 2, 2, 1), (5, 3, 3, 0), (5, 3, 3, 1), (6, 4, 4, 0),
    (6, 4, 4, 1), (7, 2, 2, 0), (7, 2, 2, 1), (8, 3, 15, 0), (8, 3, 15, 1),
    (9, 4, 11, 0), (10, 3, 16, 0), (11, 6, 31, 0), (11, 6, 31, 1), (11, 9, 31, 0),
    (11, 9, 31, 1), (11, 12, 31, 0), (11, 12, 31, 1), (12, 3, 10, 0), (13, 2, 10, 0),
    (14, 4, 20, 0), (14, 4, 20, 1), (15, 6, 6, 0), (15, 7, 7, 0), (15, 8, 8, 0),
    (15, 9, 9, 0), (15, 10, 10, 0), (15, 11, 11, 0), (16, 10, 10, 0), (17, 5, 33, 0),
    (18, 11, 65, 0), (18, 11, 65, 1), (19, 8, 8, 0), (19, 10, 12, 0), (19, 11, 14, 0),
    (19, 12, 16, 0), (20, 5, 5, 0), (20, 6, 6, 0), (20, 8, 8, 0), (21, 5, 5, 0),
    (21, 5, 5, 1), (21, 8, 8, 0), (21, 10, 10, 0), (21, 12, 12, 0), (21, 12, 12, 1),
    (22, 8, 8, 0), (22, 8, 8, 1),
)


def standard_start(number, n):
    """The function's standard starting point ``x0`` (MGH's, and CUTEr's for 19-22)."""
    if number in (1, 2, 3, 19):
        return np.ones(n)
    if number in (11, 16, 20):
        return np.full(n, 0.5)
    if number == 15:
        return np.arange(1, n + 1) / (n + 1.0)
    if number == 21:
        i = np.arange(1, n + 1, dtype=np.float64)
        r = np.sqrt(i[:, None] / i[None, :])
        lr = np.log(r)
        s = (r * (np.sin(lr) ** 5 + np.cos(lr) ** 5)).sum(axis=1)
        return -8.710996e-4 * ((i - 50.0) ** 3 + s)
    fixed = {4: [-1.2, 1.0], 5: [-1.0, 0.0, 0.0], 6: [3.0, -1.0, 0.0, 1.0], 7: [0.5, -2.0],
             8: [1.0, 1.0, 1.0], 9: [0.25, 0.39, 0.415, 0.39], 10: [0.02, 4000.0, 250.0],
             12: [0.0, 10.0, 20.0], 13: [0.3, 0.4], 14: [25.0, 5.0, -5.0, -1.0],
             17: [0.5, 1.5, 1.0, 0.01, 0.02],
             18: [1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5],
             22: [-0.3, -0.39, 0.3, -0.344, -1.2, 2.69, 1.59, -1.5]}
    return np.array(fixed[number], dtype=np.float64)


@dataclass(frozen=True, repr=False)
class MoreWildProblem:
    """Problem ``index`` (1..53) of the set: ``F`` of function ``number`` with n, m and
    the start ``10^s x0``."""

    index: int
    number: int
    name: str
    n: int
    m: int
    s: int
    x0: np.ndarray
    function: object

    @property
    def num_params(self) -> int:
        return self.n

    def residuals(self, x) -> np.ndarray:
        """``F(x)`` (shape (m,)); ``f = sum(F**2)``."""
        return np.asarray(self.function(np.asarray(x, dtype=np.float64), self.m),
                          dtype=np.float64)

    def value(self, x) -> float:
        r = self.residuals(x)
        return float(r @ r)

    @property
    def label(self) -> str:
        return f"{self.index:02d}-{self.name}-n{self.n}" + ("-x10" if self.s else "")

    def __repr__(self):
        return f"MoreWildProblem({self.label}, m={self.m})"


def problems():
    """The 53 problems, in the paper's order."""
    out = []
    for k, (number, n, m, s) in enumerate(TABLE, start=1):
        name, fn = FUNCTIONS[number]
        out.append(MoreWildProblem(index=k, number=number, name=name, n=n, m=m, s=s,
                                   x0=standard_start(number, n) * 10.0 ** s, function=fn))
    return out
