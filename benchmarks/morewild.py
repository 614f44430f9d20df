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
``stop_evals_ratio``, ``ours_fail_dfols_ok``, profiles and per-problem figures.

    python -m benchmarks.morewild [--quick] [--plot] [--only INDEX ...] [--methods M ...]

``--quick``: 12 of the 53 problems (well under 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np

from benchmarks import _profiles as prof
from benchmarks._morewild_problems import problems as all_problems
from benchmarks.peers import machine

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
TAUS = {"tau1e-1": 1e-1, "tau1e-3": 1e-3, "tau1e-5": 1e-5, "tau1e-7": 1e-7}
#: problem indices (1..53) of --quick: one or two per family, small n
QUICK = (7, 8, 9, 11, 13, 15, 17, 25, 26, 27, 36, 43)
ALPHAS = (5, 10, 20, 50, 100)
ROUND_ALPHAS = (10, 20, 50, 100, 300)
PLOT_ALPHAS = np.arange(1, 101, dtype=float)
PLOT_ROUNDS = np.unique(np.geomspace(1, 1300, 61).round())


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{len(QUICK)} of the 53 problems (< 2 min)")
    parser.add_argument("--plot", action="store_true",
                        help="write results/morewild_<mode>_profiles.png (needs matplotlib)")
    parser.add_argument("--only", nargs="+", type=int, default=None, metavar="INDEX",
                        help="problem numbers 1..53 to run")
    parser.add_argument("--methods", nargs="+", default=None,
                        choices=[m.name for m in prof.METHODS], metavar="METHOD")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.only and not all(1 <= k <= 53 for k in args.only):
        parser.error("--only takes problem numbers between 1 and 53")

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    start = time.perf_counter()
    indices = set(args.only or (QUICK if args.quick else range(1, 54)))
    todo, chosen = pairs(indices)
    methods = [m for m in prof.METHODS if args.methods is None or m.name in args.methods]
    with threadpool_limits(1):
        runs = prof.run_pairs(todo, methods, log=lambda s: print(s, flush=True))
    levels, f_info = {}, {}
    for key, per in runs.items():
        levels[key], f0, f_low = levels_from(per, chosen[key])
        f_info[key] = {"f0": f0, "f_L": f_low}
    records = prof.measure(runs, levels)
    n_of = {k: chosen[k].n for k in runs}
    names_m = [m.name for m in methods]
    summary, cost = prof.summarize(records, n_of, names_m, list(TAUS), ALPHAS, ROUND_ALPHAS)
    wall = time.perf_counter() - start
    mode = "quick" if args.quick else "full"
    text = prof.markdown_table(records, n_of, names_m, list(TAUS))
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    figure = None
    if args.plot:
        panels = [(f"tau = {tau:g}", xlabel, alphas,
                   {m: prof.data_profile(cost[(m, kind, label)], alphas) for m in names_m})
                  for kind, alphas, xlabel in (
                      ("evals", PLOT_ALPHAS, "evaluations / (n + 1)"),
                      ("rounds", PLOT_ROUNDS, f"rounds at W = {prof.WIDTH}"))
                  for label, tau in TAUS.items()]
        figure = prof.plot_profiles(panels, args.out / f"morewild_{mode}_profiles.png",
                                    f"Moré–Wild, {len(records)} problems, defaults only")
    result = {"benchmark": "morewild", "mode": mode, "problems": len(records),
              "budget": "100 (n + 1) evaluations", "width": prof.WIDTH,
              "groups": {m.name: m.groups for m in methods}, **summary,
              "f0_fL": f_info, "per_pair": prof.per_pair(records, list(TAUS)),
              "figure": None if figure is None else figure.name,
              "wall_s": round(wall, 1), "machine": machine()}
    with open(args.out / f"morewild_{mode}.md", "w") as fh:
        fh.write(f"# python -m benchmarks.morewild{' --quick' if args.quick else ''}\n\n"
                 f"Evaluations to tau = 1e-1 / 1e-3 / 1e-5 / 1e-7 / until the method "
                 f"stopped (budget 100 (n + 1)); {wall:.0f} s.\n\n{text}\n\n```json\n"
                 f"{json.dumps(result, indent=1, default=str)}\n```\n")
    print(json.dumps(result, default=str))
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
