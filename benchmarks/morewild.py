"""The library's defaults on the Moré–Wild derivative-free benchmark set.

The question: with nothing tuned, how does ``fz.minimize`` compare with DFO-LS, DFBGN
and ``scipy.optimize.least_squares`` (trf, lm), each with its defaults, on the test set
the derivative-free least-squares literature reports (Moré and Wild, SIAM J. Optim.
2009): 53 smooth problems ``f(x) = sum_i F_i(x)^2`` from 22 functions (Moré, Garbow and
Hillstrom 1981; CUTEr), n = 2..12, from ``x0`` or ``10 x0`` (see
:mod:`benchmarks._morewild_problems`)?

- Inner black box: ``x -> F(x)`` (numpy); outer loss ``fz.LeastSquares(0, scale="sum")``;
  the peers get ``F``.
- Budget: ``100 (n + 1)`` evaluations, or the method's own stop, whichever first.
- Solved at tolerance tau (Moré and Wild's test): the best value so far satisfies
  ``f(x) <= f_L + tau (f(x0) - f_L)``, ``f_L`` the smallest value any method found on
  that problem within the budget; tau in 1e-1, 1e-3, 1e-5, 1e-7.
- Data profiles against evaluations / (n + 1) and against parallel rounds at W = 8
  (grouping: :mod:`benchmarks._profiles`).

JSON line (last): ``evals_ratio_tau1e-1`` ... ``evals_ratio_tau1e-7`` (geometric mean,
over the problems both solve, of DFO-LS's evaluations / ours: above 1, ours needs
fewer), ``rounds_ratio_W8_tau...`` (the same for rounds at W = 8), ``solved``,
``stop_evals_ratio``, ``after_final_accuracy_ours`` (median of the evaluations spent
after the run came within half a digit of its final gap ``(f - f_L) / (f0 - f_L)``,
as a fraction of those it took to get there), ``ours_fail_dfols_ok``, profiles and
per-problem figures.

    python -m benchmarks.morewild [--quick] [--plot] [--only INDEX ...] [--methods M ...]

``--quick``: 12 of the 53 problems (well under 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

from benchmarks import _profiles as prof
from benchmarks._morewild_problems import problems as all_problems

TAUS = {"tau1e-1": 1e-1, "tau1e-3": 1e-3, "tau1e-5": 1e-5, "tau1e-7": 1e-7}
#: problem indices (1..53) of --quick: one or two per family, small n
QUICK = (7, 8, 9, 11, 13, 15, 17, 25, 26, 27, 36, 43)
ALPHAS = (5, 10, 20, 50, 100)
ROUND_ALPHAS = (10, 20, 50, 100, 300)


def pairs(indices):
    """``(key, fit, budget)`` and the problem for each requested index."""
    out, chosen = [], {}
    for p in all_problems():
        if p.index not in indices:
            continue
        fit = prof.LeastSquaresFit(name=p.label, predict=p.residuals, data=np.zeros(p.m),
                                   x0=p.x0.copy())
        out.append((p.label, fit, 100 * (p.n + 1)))
        chosen[p.label] = p
    return out, chosen


def levels_from(runs, problem):
    """Moré and Wild's convergence test with ``f_L`` the best value any method found."""
    f0 = problem.value(problem.x0)
    f_low = min(min(run.log.values, default=math.inf) for run in runs.values())
    f_low = min(f_low, f0)
    return {label: (lambda b, v, tau=tau: v <= f_low + tau * (f0 - f_low))
            for label, tau in TAUS.items()}, f0, f_low


def gap_digits(f0, f_L):
    """Accuracy as the digits of the remaining gap, ``-log10((f - f_L) / (f0 - f_L))``
    (at most 16)."""
    span = max(f0 - f_L, 1e-300)
    return lambda b, v: -math.log10(min(max((v - f_L) / span, 1e-16), 1.0))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    prof.add_arguments(parser, f"{len(QUICK)} of the 53 problems (< 2 min)")
    parser.add_argument("--only", nargs="+", type=int, default=None, metavar="INDEX",
                        help="problem numbers 1..53 to run")
    args = parser.parse_args(argv)
    if args.only and not all(1 <= k <= 53 for k in args.only):
        parser.error("--only takes problem numbers between 1 and 53")

    start = time.perf_counter()
    todo, chosen = pairs(set(args.only or (QUICK if args.quick else range(1, 54))))
    runs = prof.run_pairs(todo, prof.selected_methods(args.methods, args.width),
                          log=lambda s: print(s, flush=True))
    levels, f_info = {}, {}
    for key, per in runs.items():
        levels[key], f0, f_low = levels_from(per, chosen[key])
        f_info[key] = {"f0": f0, "f_L": f_low}
    return prof.report("morewild", args, runs, levels, {k: chosen[k].n for k in runs},
                       {label: f"tau = {tau:g}" for label, tau in TAUS.items()},
                       alphas=ALPHAS, round_alphas=ROUND_ALPHAS, start=start,
                       extra=lambda summary, records: {"f0_fL": f_info},
                       accuracy={k: gap_digits(**f_info[k]) for k in runs})


if __name__ == "__main__":
    main()
    sys.exit(0)
