"""Parallel multi-start: a space-filling design, one screening round, local runs in
lockstep, successive halving.

For a rugged or multimodal misfit a single local run finds the minimum of the basin it
starts in. A :class:`MultiStart` (``fz.minimize(..., multistart=fz.MultiStart())``, or
:func:`multistart`):

1. draws ``num_starts`` points of a space-filling design inside the bounds
   (:mod:`scipy.stats.qmc`: scrambled Sobol', Latin hypercube or Halton, seeded from
   the run's ``rng``), plus ``phi0`` when given;
2. evaluates ``F`` at all of them in **one** parallel group (on the first phase's
   problem);
3. runs the local method from the ``num_local`` best, in lockstep: every round of the
   run gathers the next request of every local run into one parallel group (no
   thread; see :mod:`fg2u_zo.outer.search`);
4. stops the runs that fall behind by successive halving: at each rung (a step count,
   or the end of a phase when there are several) only the best ``ceil(n / halving)``
   go on;
5. evaluates ``F`` on the run's problem at every end point (one group), and warns
   when two ends have nearly equal ``F`` but different ``phi``: the data do not
   identify the coefficients.

It is one run: one checkpoint, one journal of solves, one history; a resumption after
a crash at any moment continues it bit for bit.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import FG2UTypeError, FG2UValueError, FG2UWarning, user_stacklevel
from ..outer.convergence import Converged
from ..outer.phases import Phase
from ..validation import check_choice, check_positive_int

__all__ = ["MultiStart", "multistart", "DESIGNS", "design_points", "rung_steps"]

#: Space-filling designs of scipy.stats.qmc by name.
DESIGNS = ("sobol", "lhs", "halton")


def design_points(kind, num, lower, upper, rng):
    """``num`` points of a scipy.stats.qmc design scaled into ``[lower, upper]``."""
    from scipy.stats import qmc

    seed = np.random.default_rng(int(rng.integers(2**63 - 1)))
    d = lower.size
    if kind == "sobol":
        engine = qmc.Sobol(d, scramble=True, seed=seed)
        # The first 2^m points of a Sobol' sequence are balanced; others are still
        # well spread, so the count need not be a power of 2.
        sample = engine.random_base2(max(0, math.ceil(math.log2(num))))[:num]
    elif kind == "lhs":
        sample = qmc.LatinHypercube(d, seed=seed).random(num)
    else:
        sample = qmc.Halton(d, scramble=True, seed=seed).random(num)
    return qmc.scale(sample, lower, upper)


def rung_steps(steps, num_local, halving):
    """Steps after which runs are halved: ``steps / halving**j``, j = R..1, with R
    rungs to go from ``num_local`` runs to one."""
    if halving <= 1 or num_local <= 1:
        return ()
    count = math.ceil(math.log(num_local) / math.log(halving) - 1e-12)
    out = sorted({max(1, int(round(steps / halving ** j))) for j in range(count, 0, -1)})
    return tuple(s for s in out if s < steps)


@dataclass(frozen=True)
class MultiStart:
    """How a run starts from many points (see the module docstring).

    Parameters
    ----------
    num_starts : int
        Design points (0: run from ``phi0`` alone, through the same machinery).
    num_local : int
        Local runs, from the best screened points.
    design : {"sobol", "lhs", "halton"}
        Scrambled Sobol' (default), Latin hypercube or scrambled Halton.
    halving : float
        Successive halving: at each rung the best ``ceil(n / halving)`` runs go on.
        1 turns it off.
    rungs : sequence of int, optional
        Steps after which runs are halved (one phase only). Default: ``steps /
        halving**j`` for as many j as it takes to get down to one run; with several
        phases, the end of each phase but the last.
    tie_rtol, tie_xtol : float
        Two end values within ``tie_rtol`` of each other (relative to the larger, or to
        1e-8 times the median screened value when both are below it) whose points
        differ by more than ``tie_xtol`` times the box width in some coordinate raise
        a :class:`~fg2u_zo.FG2UWarning`.

    Examples
    --------
    A shifted Rastrigin function has a local minimum near every point of the integer
    grid; its global one is at the shift.

    >>> import numpy as np, torch, fg2u_zo as fz
    >>> shift = np.array([0.7, -1.3])
    >>> rastrigin = fz.BilevelProblem(
    ...     inner=lambda phi: phi - shift, num_params=2,
    ...     outer=lambda x, phi: (x ** 2 - 10 * torch.cos(2 * np.pi * x) + 10).sum())
    >>> est = fz.FG2UZO(num_directions=2, directions="orthogonal", step=1e-6)
    >>> res = fz.minimize(rastrigin, None, est, bounds=(-2.0, 2.0), optimizer="Rprop",
    ...                   lr=0.05, steps=40, rng=0, progress=False,
    ...                   multistart=fz.MultiStart(num_starts=64, num_local=16))
    >>> np.round(res.phi, 4).tolist(), res.groups[:3], res.rounds(64)
    ([0.7, -1.3], [64, 16, 64], 82)
    """

    num_starts: int = 16
    num_local: int = 4
    design: str = "sobol"
    halving: float = 2
    rungs: tuple | None = None
    tie_rtol: float = 1e-2
    tie_xtol: float = 1e-2

    name = "multistart"

    def __post_init__(self):
        check_positive_int(self.num_starts, "num_starts", minimum=0)
        check_positive_int(self.num_local, "num_local")
        check_choice(self.design, "design", DESIGNS)
        if not isinstance(self.halving, (int, float)) or isinstance(self.halving, bool) \
                or not self.halving >= 1:
            raise FG2UValueError(f"`halving` must be a number >= 1 (1: no halving), got "
                                 f"{self.halving!r}")
        if self.rungs is not None:
            try:
                rungs = tuple(check_positive_int(r, "rungs") for r in self.rungs)
            except TypeError:
                raise FG2UTypeError(f"`rungs` must be a sequence of step counts, got "
                                    f"{self.rungs!r}") from None
            object.__setattr__(self, "rungs", tuple(sorted(set(rungs))))
        for name in ("tie_rtol", "tie_xtol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise FG2UValueError(f"`{name}` must be a number >= 0, got {value!r}")

    def config(self) -> dict:
        """The settings, JSON (stored in the run's checkpoint)."""
        return {"name": self.name, "num_starts": self.num_starts,
                "num_local": self.num_local, "design": self.design,
                "halving": float(self.halving),
                "rungs": None if self.rungs is None else list(self.rungs),
                "tie_rtol": float(self.tie_rtol), "tie_xtol": float(self.tie_xtol)}

    @classmethod
    def from_config(cls, config: dict) -> "MultiStart":
        """Inverse of :meth:`config` (what a resumed run does)."""
        return cls(**{k: v for k, v in config.items() if k != "name"})

    def bind(self, *, problem, plans, bounds, phi0, num_params):
        """The strategy of one run: its box, its design, its rungs."""
        return _Strategy(self, problem, plans, bounds, phi0, num_params)


class _Strategy:
    """A :class:`MultiStart` bound to one run (what :class:`~fg2u_zo.outer.search.Search`
    asks: the design, the starts, the rungs, the halving, the ties)."""

    def __init__(self, spec, problem, plans, bounds, phi0, num_params):
        lo, hi = bounds.lower, bounds.upper
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(hi > lo)):
            raise FG2UValueError(
                "`bounds` must be finite with lower < upper in every coordinate for a "
                f"multi-start (the design fills the box); got lower={lo.tolist()}, "
                f"upper={hi.tolist()}")
        if spec.num_starts == 0 and phi0 is None:
            raise FG2UValueError("num_starts=0 runs from `phi0` alone: pass phi0")
        self.spec = spec
        self.lower, self.upper = lo, hi
        self.screens = spec.num_starts > 0
        self.screen_problem = plans[0].problem
        self.num_local = spec.num_local if self.screens else 1
        if spec.rungs is not None and len(plans) > 1:
            raise FG2UValueError(
                "`rungs` are step counts of a run of one phase; with several phases the "
                "runs are halved at the end of each phase: leave rungs out")
        self.rung_phases = len(plans) > 1 and spec.halving > 1
        if self.rung_phases or spec.halving <= 1:
            self.rung_steps = ()
        elif spec.rungs is not None:
            self.rung_steps = spec.rungs
        else:
            self.rung_steps = rung_steps(plans[0].steps, self.num_local, spec.halving)
        self._phi0 = phi0

    def design(self, rng, phi0):
        points = [phi0] if phi0 is not None else []
        if self.spec.num_starts:
            points += list(design_points(self.spec.design, self.spec.num_starts,
                                         self.lower, self.upper, rng))
        return np.asarray(points, dtype=np.float64)

    def choose(self, values):
        if not self.screens:
            return [0]
        order = sorted(range(len(values)),
                       key=lambda i: (not math.isfinite(values[i]), values[i], i))
        return [i for i in order if math.isfinite(values[i])][:self.spec.num_local]

    def decide(self, rung, values):
        order = sorted(values, key=lambda r: (not math.isfinite(values[r]), values[r], r))
        keep = max(1, math.ceil(len(order) / self.spec.halving))
        return set(order[keep:])

    def finish(self, search):
        """Warn when another end is as good as the best but elsewhere (the data may not
        identify the coefficients)."""
        runs = search.runs
        if not runs:
            return
        ends = np.asarray([run.phi() for run in runs])
        values = np.asarray([run.state.final_value if run.state.final_value is not None
                             else math.inf for run in runs])
        best = search.best()
        if not math.isfinite(values[best]):
            return
        finite = search.state.design_values[np.isfinite(search.state.design_values)]
        # Two fits that both reach rounding level (an exact model of noise-free data) are
        # equally good: values are compared no finer than 1e-8 of the typical screened one.
        floor = 1e-8 * (float(np.median(np.abs(finite))) if finite.size else 0.0)
        width = self.upper - self.lower
        for i, (end, value) in enumerate(zip(ends, values)):
            if i == best or not math.isfinite(value):
                continue
            close = abs(value - values[best]) <= self.spec.tie_rtol * max(
                abs(value), abs(values[best]), floor)
            apart = np.max(np.abs(end - ends[best]) / width) > self.spec.tie_xtol
            if close and apart:
                key = "multistart_tie"
                if key in search.warned:
                    return
                search.warned.add(key)
                warnings.warn(
                    f"two local runs ended with nearly equal F ({values[best]:.6g} and "
                    f"{value:.6g}) at different points ({np.round(ends[best], 6).tolist()} "
                    f"and {np.round(end, 6).tolist()}): the data may not identify these "
                    "parameters; add observations or fix some of them", FG2UWarning,
                    stacklevel=user_stacklevel())
                return


def multistart(problem, bounds, estimator=None, *, phi0=None, num_starts=16, num_local=4,
               design="sobol", halving=2, steps=None, rungs=None, stop=None, phases=None,
               tie_rtol=1e-2, tie_xtol=1e-2, **options):
    """Minimize from the best points of a space-filling design, in parallel: one call
    of :func:`~fg2u_zo.minimize` with ``multistart=MultiStart(...)``.

    Parameters
    ----------
    problem : BilevelProblem
    bounds : (lower, upper) or scipy.optimize.Bounds
        Finite box of the design; also the local runs' bounds.
    estimator : Estimator
        The local runs' meta-gradient estimator.
    phi0 : array_like, optional
        A start of the user's, screened with the design.
    num_starts, num_local, design, halving, rungs, tie_rtol, tie_xtol
        See :class:`MultiStart`.
    steps : int, optional
        Most steps of a local run (one phase; with ``phases`` their steps); default
        as :func:`~fg2u_zo.minimize`'s.
    stop : Converged, optional
        Ends a local run once converged (set as the last phase's ``until``).
    phases : list of Phase, optional
        The phases of every local run (e.g. :func:`~fg2u_zo.horizon_phases`: the
        design is screened on the first phase's problem and the rungs are the ends of
        the phases).
    **options
        :func:`~fg2u_zo.minimize` keywords (``optimizer``, ``lr``, ``rng``,
        ``checkpoint``, ``evaluator``, ``n_jobs`` ...).

    Returns
    -------
    OptimizeResult
        ``phi`` the best end; ``runs`` every local run; ``design`` and
        ``design_values`` the screening; ``groups`` and ``rounds(W)`` the parallel
        groups.

    Warns
    -----
    FG2UWarning
        When two end points have nearly equal values but different ``phi``.
    """
    from ..outer.minimize import minimize

    if stop is not None and not isinstance(stop, Converged):
        raise FG2UTypeError(f"`stop` must be a fz.Converged or None, got {type(stop).__name__}")
    if phases is not None and steps is not None:
        raise FG2UValueError("pass `steps` (a run of one phase) or `phases` (each with its "
                             "steps), not both")
    steps = 100 if steps is None else steps
    spec = MultiStart(num_starts=num_starts, num_local=num_local, design=design,
                      halving=halving, rungs=rungs, tie_rtol=tie_rtol, tie_xtol=tie_xtol)
    if stop is not None:
        if phases is None:
            if steps is None:
                from ..outer.setup import default_steps
                lower = bounds.lb if hasattr(bounds, "lb") else bounds[0]
                size = (problem.num_params or (np.size(phi0) if phi0 is not None else 0)
                        or np.size(lower))
                steps = default_steps(problem, size, options.get("optimizer"))
            phases = [Phase(steps=check_positive_int(steps, "steps"), until=stop)]
        else:
            phases = list(phases)
            phases[-1] = _with_until(phases[-1], stop)
    return minimize(problem, phi0, estimator, bounds=bounds, steps=steps, phases=phases,
                    multistart=spec, **options)


def _with_until(phase, stop):
    import dataclasses

    return dataclasses.replace(phase, until=stop)
