"""The harness shared by the least-squares test-set benchmarks (``benchmarks.strd``,
``benchmarks.morewild``): the methods, the record of every evaluation, and data profiles.

A problem is a :class:`LeastSquaresFit`: a black box ``predict(x) -> y_hat`` (numpy)
compared with ``data``; the residual sum of squares is ``sum((y_hat - data)^2)``.

**Methods**, each with its defaults and nothing tuned per problem (``METHODS``):

- ``ours``: ``fz.minimize(problem, x0)`` with the library's defaults on the bilevel
  problem ``inner = predict``, ``outer = fz.LeastSquares(data, scale="sum")`` (see
  :func:`ours`);
- ``DFO-LS``: ``dfols.solve`` (through :func:`examples._peers.run_dfols`, with DFO-LS's
  own default ``rhobeg``);
- ``DFBGN``: ``dfbgn.solve`` (through :func:`examples._peers.run_dfbgn`, its own default
  ``rhobeg``, adaptive subspace);
- ``scipy trf``: ``scipy.optimize.least_squares(method="trf")`` (2-point differences,
  its default);
- ``scipy lm``: ``scipy.optimize.least_squares(method="lm")`` (MINPACK's ``lmdif``).

Every method is stopped at the budget (its ``budget + 1``-th evaluation is refused, or,
for ours, left out of the record) or by its own stopping rule, whichever comes first.

**Counting.** Every inner evaluation is recorded in order, with its point and residual
sum of squares, in an :class:`EvaluationLog` that also keeps the *groups*: evaluations
that can run at once. A group of ``g`` evaluations costs ``ceil(g / W)`` parallel
rounds with ``W`` workers (:func:`benchmarks.peers.rounds`). The groups:

- ours: one group per ``Evaluator.map`` call and one per ``Evaluator.solve`` call
  (:class:`CountingEvaluator`, a subclass that records around the two calls every
  solve of the library goes through), in the order they were made: that is exactly the
  library's own parallel structure, read where it happens, not reconstructed;
- DFO-LS: its first ``n + 1`` evaluations (``x0`` and ``x0`` plus its ``n`` initial
  directions, which do not depend on each other's values) form one group, then one
  evaluation per group;
- DFBGN: its first 2 evaluations (``x0`` and its one initial direction: the adaptive
  default starts from a one-dimensional subspace and grows it one point at a time, each
  after a test on the values so far), then one per group;
- scipy: each finite-difference Jacobian (``n`` evaluations at ``x + h_j e_j``,
  ``j = 0..n-1``, in that order, right after the evaluation at ``x``) is one group,
  recognised from the points themselves; every other evaluation is a group of one.

Evaluations to a target count one by one (the first ``k`` evaluations, in the order
they were recorded; within a group of ours, in the order of the group's points); rounds
to a target count whole groups (a result is known when its group has finished).

**Profiles** (Moré and Wild 2009): for each method the fraction of (problem, start)
pairs solved within ``alpha (n + 1)`` evaluations (or ``alpha`` rounds), against
``alpha``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import pathlib
import time
from dataclasses import dataclass, field

import numpy as np

import fg2u_zo as fz
from benchmarks.peers import rounds

__all__ = ["WIDTH", "LeastSquaresFit", "EvaluationLog", "CountingEvaluator", "Run",
           "Method", "METHODS", "ours", "lre", "first_solved", "data_profile",
           "geometric_mean_ratio", "evals_to_final_accuracy", "run_pairs", "measure",
           "summarize", "per_pair", "markdown_table", "plot_profiles", "quiet_library",
           "add_arguments", "selected_methods", "report"]

#: Workers of a parallel round (ours runs with this many).
WIDTH = 8
#: Where the commands write their result files.
RESULTS = pathlib.Path(__file__).resolve().parent / "results"
#: The largest log relative error StRD's certified values (11 significant digits)
#: can confirm.
LRE_CAP = 11.0
#: "Reached its final accuracy": within half a digit of where the run ends.
FINAL_SLACK = 0.5


@dataclass(frozen=True)
class LeastSquaresFit:
    """``min_x sum((predict(x) - data)^2)`` from ``x0``."""

    name: str
    predict: object
    data: np.ndarray
    x0: np.ndarray

    @property
    def n(self) -> int:
        return int(np.asarray(self.x0).size)

    def residuals(self, x) -> np.ndarray:
        return np.asarray(self.predict(np.asarray(x, dtype=np.float64)),
                          dtype=np.float64).reshape(-1) - self.data

    def rss_of_output(self, y_hat) -> float:
        """Residual sum of squares of an output ``y_hat``; ``inf`` if not finite."""
        r = np.asarray(y_hat, dtype=np.float64).reshape(-1) - self.data
        value = float(r @ r)
        return value if math.isfinite(value) else math.inf


class EvaluationLog:
    """Every evaluation of one run, in order, in groups of concurrent evaluations.

    Attributes
    ----------
    points : list of ndarray
    values : list of float
        Residual sums of squares (``inf`` for a failed or non-finite evaluation).
    groups : list of int
        Sizes of the consecutive groups; they add up to ``nfev``.
    """

    def __init__(self):
        self.points, self.values, self.groups = [], [], []

    @property
    def nfev(self) -> int:
        return len(self.values)

    def add_group(self, points, values):
        points = [np.array(p, dtype=np.float64, copy=True) for p in points]
        if len(points) != len(values) or not points:
            raise ValueError("a group needs one value per point, and at least one point")
        self.points.extend(points)
        self.values.extend(float(v) if math.isfinite(v) else math.inf for v in values)
        self.groups.append(len(points))

    def regrouped(self, sizes) -> "EvaluationLog":
        """The same evaluations in groups of ``sizes`` (which must add up to nfev)."""
        if sum(sizes) != self.nfev or min(sizes, default=1) < 1:
            raise ValueError(f"group sizes {sizes} do not partition {self.nfev} evaluations")
        out = EvaluationLog()
        out.points, out.values, out.groups = self.points, self.values, list(sizes)
        return out

    def truncated(self, budget) -> "EvaluationLog":
        """The first ``budget`` evaluations (the group holding the last one, cut)."""
        if self.nfev <= budget:
            return self
        sizes, total = [], 0
        for g in self.groups:
            if total >= budget:
                break
            sizes.append(min(g, budget - total))
            total += sizes[-1]
        out = EvaluationLog()
        out.points, out.values, out.groups = (self.points[:budget], self.values[:budget],
                                              sizes)
        return out

    def improvements(self):
        """Indices where the best value so far strictly improves (the first finite
        evaluation included): the best-so-far point changes only there."""
        best, out = math.inf, []
        for k, v in enumerate(self.values):
            if v < best:
                best = v
                out.append(k)
        return out

    def group_of(self, k) -> int:
        """Index of the group holding evaluation ``k`` (0-based)."""
        ends = np.cumsum(self.groups)
        return int(np.searchsorted(ends, k, side="right"))

    def rounds_through(self, k, width) -> int:
        """Rounds with ``width`` workers until the group holding evaluation ``k`` ends."""
        return rounds(self.groups[:self.group_of(k) + 1], width)


def first_solved(log, solved):
    """``(evaluations, rounds at WIDTH)`` until the best-so-far point first satisfies
    ``solved(point, value)``, or ``(inf, inf)``. Evaluations count one by one; rounds
    count the whole group that produced it."""
    for k in log.improvements():
        if solved(log.points[k], log.values[k]):
            return k + 1, log.rounds_through(k, WIDTH)
    return math.inf, math.inf


def evals_to_final_accuracy(log, accuracy, slack=FINAL_SLACK):
    """Evaluations until the best-so-far point first came within ``slack`` (in
    ``accuracy``'s units, digits) of the accuracy it ends the run with; ``inf`` for a
    run without a finite evaluation. ``accuracy(point, value)`` grows as the point
    improves (the LRE against certified values, or the digits of the gap in F)."""
    improvements = log.improvements()
    if not improvements:
        return math.inf
    reached = [accuracy(log.points[k], log.values[k]) for k in improvements]
    # The last improvement qualifies: the search always ends.
    return next(k + 1 for k, a in zip(improvements, reached) if a >= reached[-1] - slack)


def lre(b, certified, cap=LRE_CAP) -> float:
    """NIST's log relative error of the estimate ``b``, the worst over parameters:
    ``min_j -log10(|b_j - c_j| / |c_j|)``, in ``[0, cap]`` (``cap`` for an exact match:
    the certified values carry 11 significant digits).

    Examples
    --------
    >>> lre([1.0, 2.0], [1.0, 2.0])
    11.0
    >>> round(lre([1.001, 2.0], [1.0, 2.0]), 6)
    3.0
    """
    b = np.asarray(b, dtype=np.float64)
    c = np.asarray(certified, dtype=np.float64)
    if not np.all(np.isfinite(b)):
        return 0.0
    rel = np.max(np.abs(b - c) / np.abs(c))
    if rel == 0.0:
        return float(cap)
    return float(min(cap, max(0.0, -math.log10(rel))))


def data_profile(costs, alphas):
    """Fraction of the pairs whose cost (evaluations / (n + 1), or rounds) is
    ``<= alpha``, for each ``alpha``; an unsolved pair has cost ``inf``.

    Examples
    --------
    >>> data_profile([1.0, 2.5, float("inf"), 4.0], [1, 2, 3, 5]).tolist()
    [0.25, 0.25, 0.5, 0.75]
    """
    costs = np.asarray(costs, dtype=np.float64)
    alphas = np.asarray(alphas, dtype=np.float64)
    if costs.size == 0:
        return np.zeros(alphas.shape)
    return (costs[None, :] <= alphas[:, None]).mean(axis=1)


def geometric_mean_ratio(numerator, denominator):
    """Geometric mean of ``numerator / denominator`` over the pairs where both are
    finite; ``(mean, number of pairs)``, the mean None when there is no such pair.

    Examples
    --------
    >>> geometric_mean_ratio([2.0, 8.0, float("inf")], [1.0, 2.0, 3.0])
    (2.82842712474619, 2)
    """
    a = np.asarray(numerator, dtype=np.float64)
    b = np.asarray(denominator, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    if not both.any():
        return None, 0
    return float(np.exp(np.mean(np.log(a[both] / b[both])))), int(both.sum())


def quiet_library():
    """Silence the library's and the peers' warnings and INFO logs during a run."""
    from examples._peers import quiet

    return quiet("fg2u_zo", "dfols", "dfbgn")


# -- the record of one run ---------------------------------------------------------------------
@dataclass
class Run:
    """One method on one problem: its evaluations (at most the budget) and why it
    stopped."""

    method: str
    log: EvaluationLog
    stop_evals: int
    status: str
    wall_time: float
    extra: dict = field(default_factory=dict)


# -- ours --------------------------------------------------------------------------------------
class CountingEvaluator(fz.Evaluator):
    """An :class:`fg2u_zo.Evaluator` that records each parallel group it answers
    (:meth:`~fg2u_zo.Evaluator.evaluate`, which ``solve`` and ``map`` go through too) as
    one group of concurrent evaluations in ``log``, with every point and its residual
    sum of squares (computed from the output, in this process, as it arrives).

    The run is the only caller of the Evaluator and every solve of the library is one
    of its requests: the groups are the library's own parallel groups, in the order it
    asked for them. A failed evaluation is recorded with the value ``inf``.
    """

    def __init__(self, fit, log, **options):
        super().__init__(**options)
        self._fit, self._record = fit, log

    def evaluate(self, requests, **options):
        points, values, counted = [], [], []
        for request in requests:
            start = len(points)
            points += [request.points[k] for k in range(len(request))]
            values += [math.inf] * len(request)
            if request.on_result is not None:
                def keep(index, theta, start=start, reduce=request.on_result):
                    values[start + index] = self._fit.rss_of_output(theta)
                    reduce(index, theta)

                request = dataclasses.replace(request, on_result=keep)
            counted.append((request, start))
        try:
            replies = super().evaluate([r for r, _ in counted], **options)
            for (request, start), reply in zip(counted, replies):
                if request.on_result is None:
                    for k, theta in enumerate(reply.thetas):
                        if theta is not None:
                            values[start + k] = self._fit.rss_of_output(theta)
            return replies
        finally:
            if points:
                self._record.add_group(points, values)


def ours(fit, budget, *, width=WIDTH):
    """The library as a new user calls it: ``fz.minimize(problem, fit.x0)`` with
    nothing but the budget (``max_nfev``) and the width: no estimator, no optimizer, no
    step count (the defaults: Gauss–Newton on forward differences, which stops by
    itself). The evaluator is the counting one, with ``n_jobs=width`` threads (solves of
    a numpy model release the GIL in their kernels; the number of workers is what sets
    the library's width).
    """
    problem = fz.BilevelProblem(inner=fit.predict,
                                outer=fz.LeastSquares(fit.data, scale="sum"),
                                num_params=fit.n)
    log = EvaluationLog()
    evaluator = CountingEvaluator(fit, log, backend="threading", n_jobs=width)
    status, start = "", time.perf_counter()
    try:
        res = fz.minimize(problem, fit.x0, max_nfev=budget, evaluator=evaluator, rng=0,
                          progress=False)
        status = f"{res.status}: {res.message}"[:200]
    except Exception as exc:  # a crash is a result too: keep what it evaluated
        status = f"error: {type(exc).__name__}: {exc}"[:200]
    finally:
        evaluator.close()
    wall = time.perf_counter() - start
    return Run("ours", log.truncated(budget), min(log.nfev, budget), status, wall)


# -- the peers ---------------------------------------------------------------------------------
class _SequentialLog:
    """The residual function a sequential peer calls: records each call as a group of
    one, and refuses call ``budget + 1``."""

    def __init__(self, fit, budget, replace_nonfinite):
        self.fit, self.budget, self.replace = fit, int(budget), replace_nonfinite
        self.log = EvaluationLog()

    def __call__(self, x):
        from examples._peers import BudgetExhausted

        if self.log.nfev >= self.budget:
            raise BudgetExhausted
        x = np.array(x, dtype=np.float64, copy=True)
        try:
            r = self.fit.residuals(x)
        except Exception:  # the model failed: the peer sees a huge value
            r = np.full(self.fit.data.size, np.inf)
        value = float(r @ r) if np.all(np.isfinite(r)) else math.inf
        self.log.add_group([x], [value])
        if self.replace and not math.isfinite(value):
            return np.full_like(r, 1e150)
        return r


def _difference_blocks(log, n):
    """Group sizes where each run of ``n`` evaluations at ``x + h_j e_j`` (j = 0..n-1,
    ``x`` the evaluation just before) is one group: a forward-difference Jacobian."""
    pts, sizes, k = log.points, [], 0
    while k < log.nfev:
        if k >= 1 and k + n <= log.nfev and all(
                np.flatnonzero(pts[k + j] != pts[k - 1]).tolist() == [j] for j in range(n)):
            sizes.append(n)
            k += n
        else:
            sizes.append(1)
            k += 1
    return sizes


def _first_merged(log, head):
    """The first ``head`` evaluations as one group, then one per group."""
    head = min(head, log.nfev)
    return ([head] if head else []) + [1] * (log.nfev - head)


def _default_rhobeg(x0):
    # DFO-LS's and DFBGN's own default (their docs): 0.1 max(|x0|_inf, 1).
    return 0.1 * max(float(np.max(np.abs(x0))), 1.0)


def _peer(runner_name, name, head):
    def run(fit, budget):
        from examples import _peers

        calls = _SequentialLog(fit, budget, replace_nonfinite=False)
        start = time.perf_counter()
        try:
            res = getattr(_peers, runner_name)(calls, fit.x0, _default_rhobeg(fit.x0),
                                               budget, seed=0)
            status = res.message
        except Exception as exc:
            status = f"error: {type(exc).__name__}: {exc}"[:200]
        wall = time.perf_counter() - start
        log = calls.log.regrouped(_first_merged(calls.log, head(fit.n)))
        return Run(name, log, log.nfev, status, wall)

    return run


def _scipy(method):
    def run(fit, budget):
        from scipy.optimize import least_squares

        from examples._peers import BudgetExhausted

        calls = _SequentialLog(fit, budget, replace_nonfinite=True)
        start, status = time.perf_counter(), "budget spent"
        try:
            status = least_squares(calls, fit.x0, method=method).message
        except BudgetExhausted:
            pass
        except Exception as exc:
            status = f"error: {type(exc).__name__}: {exc}"[:200]
        wall = time.perf_counter() - start
        log = calls.log.regrouped(_difference_blocks(calls.log, fit.n))
        return Run(f"scipy {method}", log, log.nfev, str(status), wall)

    return run


@dataclass(frozen=True)
class Method:
    """A method of the comparison: its label, its runner ``run(fit, budget) -> Run``
    and how its evaluations are grouped."""

    name: str
    run: object
    groups: str


METHODS = (
    Method("ours", ours, "one group per Evaluator.map / Evaluator.solve call"),
    Method("DFO-LS", _peer("run_dfols", "DFO-LS", lambda n: n + 1),
           "x0 and its n initial points together, then one per group"),
    Method("DFBGN", _peer("run_dfbgn", "DFBGN", lambda n: 2),
           "x0 and its one initial direction together, then one per group"),
    Method("scipy trf", _scipy("trf"), "each n-point difference Jacobian together"),
    Method("scipy lm", _scipy("lm"), "each n-point difference Jacobian together"),
)


# -- running and measuring a test set ------------------------------------------------------------
def run_pairs(pairs, methods, log=print):
    """Run every method on every ``(key, fit, budget)``; ``{key: {method: Run}}``.
    One torch and one BLAS thread: more would only fight over the cores."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    runs = {}
    with quiet_library(), threadpool_limits(1):
        for key, fit, budget in pairs:
            runs[key] = {}
            for method in methods:
                run = method.run(fit, budget)
                runs[key][method.name] = run
                log(f"{key:28s} n={fit.n:2d} {method.name:10s} {run.log.nfev:5d} evals "
                    f"({run.wall_time:5.1f} s) {run.status[:60]}")
    return runs


def measure(runs, levels, accuracy=None):
    """Evaluations and rounds (at ``WIDTH``) until each run's best point so far
    satisfies each level: ``levels[key] = {label: solved(point, value)}``; with
    ``accuracy[key] = accuracy(point, value)`` also the evaluations until the run's
    final accuracy (:func:`evals_to_final_accuracy`).

    Returns ``records[key][method] = {"evals": {label: k}, "rounds": {label: r},
    "stop_evals": ..., "final_evals": ..., "status": ..., "wall_s": ...}`` (``inf``
    where never solved).
    """
    records = {}
    for key, per in runs.items():
        records[key] = {}
        for name, run in per.items():
            rec = {"evals": {}, "rounds": {}, "stop_evals": run.stop_evals,
                   "final_evals": (math.inf if accuracy is None else
                                   evals_to_final_accuracy(run.log, accuracy[key])),
                   "status": run.status, "wall_s": round(run.wall_time, 3)}
            for label, solved in levels[key].items():
                rec["evals"][label], rec["rounds"][label] = first_solved(run.log, solved)
            records[key][name] = rec
    return records


def _rounded(x, digits=3):
    return None if x is None else round(x, digits)


def summarize(records, n_of, methods, labels, alphas, round_alphas, reference="DFO-LS"):
    """The figures of a test set from :func:`measure`'s records.

    - ``solved[method][label]``: pairs solved within the budget;
    - ``stop_evals_median[method]``: evaluations until the method stopped;
    - ``after_final_accuracy[method]``: median over pairs of the evaluations a run
      spent after reaching its final accuracy, as a fraction of those it spent to get
      there (``(stop - final) / final``; 0: it stopped at once, 1: it spent as much
      again); ``after_final_accuracy_ours`` the same for ours alone;
    - ``profiles[method]``: data profiles at ``alphas`` (evaluations / (n + 1)) and at
      ``round_alphas`` (rounds at ``WIDTH``);
    - against ``reference`` (DFO-LS), over the pairs both solve: ``evals_ratio_<label>``
      and ``rounds_ratio_W<WIDTH>_<label>``, geometric means of reference / ours (above
      1: ours needs fewer), with ``pairs_both_<label>``; ``stop_evals_ratio``: median
      over pairs of ours / reference evaluations until stop; ``ours_fail_<ref>_ok``:
      pairs the reference solves and ours does not, per label.

    Also returns the cost arrays ``cost[(method, "evals" | "rounds", label)]`` for plots.
    """
    keys = list(records)
    cost = {}
    for m in methods:
        for label in labels:
            cost[(m, "evals", label)] = np.array(
                [records[k][m]["evals"][label] / (n_of[k] + 1) for k in keys], dtype=float)
            cost[(m, "rounds", label)] = np.array(
                [records[k][m]["rounds"][label] for k in keys], dtype=float)
    out = {"solved": {m: {label: int(np.isfinite(cost[(m, "evals", label)]).sum())
                          for label in labels} for m in methods},
           "stop_evals_median": {m: float(np.median([records[k][m]["stop_evals"]
                                                     for k in keys])) for m in methods},
           "after_final_accuracy": {m: _after_final(records, m) for m in methods},
           "profiles": {m: {f"{label}_evals": dict(zip(
               map(str, alphas), np.round(data_profile(cost[(m, "evals", label)], alphas),
                                          3).tolist())) for label in labels} for m in methods}}
    for m in methods:
        for label in labels:
            out["profiles"][m][f"{label}_rounds_W{WIDTH}"] = dict(zip(
                map(str, round_alphas),
                np.round(data_profile(cost[(m, "rounds", label)], round_alphas), 3).tolist()))
    if "ours" in methods:
        out["after_final_accuracy_ours"] = out["after_final_accuracy"]["ours"]
    if "ours" not in methods or reference not in methods:
        return out, cost
    tag = reference.lower().replace("-", "")
    failures = {}
    for label in labels:
        for kind, name in (("evals", f"evals_ratio_{label}"),
                           ("rounds", f"rounds_ratio_W{WIDTH}_{label}")):
            ratio, both = geometric_mean_ratio(
                [records[k][reference][kind][label] for k in keys],
                [records[k]["ours"][kind][label] for k in keys])
            out[name] = _rounded(ratio)
        out[f"pairs_both_{label}"] = both
        failures[label] = [k for k in keys
                           if math.isfinite(records[k][reference]["evals"][label])
                           and not math.isfinite(records[k]["ours"]["evals"][label])]
    out["stop_evals_ratio"] = _rounded(float(np.median(
        [records[k]["ours"]["stop_evals"] / max(records[k][reference]["stop_evals"], 1)
         for k in keys])))
    out[f"ours_fail_{tag}_ok"] = failures
    return out, cost


def _after_final(records, method):
    spent = [(r["stop_evals"] - r["final_evals"]) / r["final_evals"]
             for r in (per[method] for per in records.values())
             if math.isfinite(r["final_evals"])]
    return _rounded(float(np.median(spent))) if spent else None


def per_pair(records, labels):
    """The per-pair figures of the JSON line (evaluations and rounds per label, stop)."""
    def finite(x):
        return x if math.isfinite(x) else None

    return {k: {m: {**{f"evals_{label}": finite(r["evals"][label]) for label in labels},
                    **{f"rounds_{label}": finite(r["rounds"][label]) for label in labels},
                    "final": finite(r["final_evals"]), "stop": r["stop_evals"]}
                for m, r in per.items()} for k, per in records.items()}


def markdown_table(records, n_of, methods, labels):
    """One row per pair: for each method, evaluations to each label (— : not reached)
    and evaluations until it stopped."""
    head = " / ".join(labels)
    lines = ["| pair | n | " + " | ".join(f"{m}: {head} / stop" for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for k, per in records.items():
        cells = []
        for m in methods:
            r = per[m]
            got = [str(r["evals"][label]) if math.isfinite(r["evals"][label]) else "—"
                   for label in labels]
            cells.append(" / ".join(got) + f" / {r['stop_evals']}")
        lines.append(f"| {k} | {n_of[k]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_arguments(parser, quick_help):
    """The options both test-set commands share."""
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--plot", action="store_true",
                        help="also write the data profiles as a PNG (needs matplotlib)")
    parser.add_argument("--methods", nargs="+", default=None,
                        choices=[m.name for m in METHODS], metavar="METHOD",
                        help=f"subset of {', '.join(m.name for m in METHODS)}")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS,
                        help="folder of the result files")
    parser.add_argument("--width", type=_positive_int, default=WIDTH,
                        help=f"workers of ours' runs, its width (default {WIDTH}; 1: a "
                             f"sequential user); rounds are counted at W = {WIDTH} for "
                             "every method")
    return parser


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def selected_methods(names, width=WIDTH):
    """The methods named (all when ``names`` is None); ours runs at ``width``."""
    return [dataclasses.replace(m, run=functools.partial(ours, width=width))
            if m.name == "ours" else m for m in METHODS if names is None or m.name in names]


def report(benchmark, args, runs, levels, n_of, level_titles, *, alphas, round_alphas,
           start, extra=None, accuracy=None):
    """Measure the runs, print the per-pair table and the JSON line (last), write
    ``<out>/<benchmark>_<mode>.md`` and, with ``--plot``, the profiles PNG.

    ``levels[key] = {label: solved(point, value)}``; ``level_titles[label]`` names a
    level in the figure; ``extra(summary, records)`` adds entries to the JSON line;
    ``accuracy[key](point, value)`` measures how far a run got (see :func:`measure`).
    Returns the JSON line's dict.
    """
    from benchmarks.peers import machine

    labels = list(level_titles)
    methods = list(next(iter(runs.values()))) if runs else []
    records = measure(runs, levels, accuracy)
    summary, cost = summarize(records, n_of, methods, labels, alphas, round_alphas)
    width = args.width
    mode = ("quick" if args.quick else "full") + ("" if width == WIDTH else f"_w{width}")
    text = markdown_table(records, n_of, methods, labels)
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    figure = None
    if args.plot:
        panels = [(level_titles[label], xlabel, grid,
                   {m: data_profile(cost[(m, kind, label)], grid) for m in methods})
                  for kind, grid, xlabel in (
                      ("evals", np.arange(1, 101, dtype=float), "evaluations / (n + 1)"),
                      ("rounds", np.unique(np.geomspace(1, 1500, 61).round()),
                       f"rounds at W = {WIDTH}"))
                  for label in labels]
        figure = plot_profiles(panels, args.out / f"{benchmark}_{mode}_profiles.png",
                               f"{benchmark}: {len(records)} pairs, defaults only")
    result = {"benchmark": benchmark, "mode": mode, "pairs": len(records),
              "budget": "100 (n + 1) evaluations", "width": WIDTH, "ours_width": width,
              "groups": {m.name: m.groups for m in METHODS if m.name in methods},
              **summary, **(extra(summary, records) if extra else {}),
              "per_pair": per_pair(records, labels),
              "figure": None if figure is None else figure.name,
              "wall_s": round(time.perf_counter() - start, 1), "machine": machine()}
    line = json.dumps(result, default=_json_default)
    with open(args.out / f"{benchmark}_{mode}.md", "w") as fh:
        fh.write(f"# python -m benchmarks.{benchmark}{' --quick' if args.quick else ''}"
                 f"{'' if width == WIDTH else f' --width {width}'}\n\n"
                 f"Evaluations to {' / '.join(labels)} / until the method stopped (budget "
                 f"100 (n + 1); — : not reached); {result['wall_s']:.0f} s.\n\n{text}\n\n"
                 f"```json\n{json.dumps(result, indent=1, default=_json_default)}\n```\n")
    print(line)
    return result


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


# -- figures -----------------------------------------------------------------------------------
def plot_profiles(panels, path, title):
    """``panels``: list of (subtitle, xlabel, alphas, {method: fractions}). Writes a PNG
    (needs matplotlib: the ``plot`` extra); returns the path, or None without it."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for ax, (sub, xlabel, alphas, curves) in zip(axes.ravel(), panels):
        for name, frac in curves.items():
            ax.step(alphas, frac, where="post", lw=2.0 if name == "ours" else 1.2,
                    label=name)
        ax.set(title=sub, xlabel=xlabel, ylim=(0, 1.02), xscale="log")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("fraction solved")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
