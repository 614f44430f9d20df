"""The library's defaults on a public test set it was never tuned for: NIST StRD.

The question: with nothing tuned, how many evaluations and parallel rounds does
``fz.minimize`` need to fit NIST's 27 nonlinear regression problems (Statistical
Reference Datasets, certified parameter values, two published starting points each:
54 pairs, n = 2..9 parameters), against DFO-LS, DFBGN and ``scipy.optimize.least_squares``
(trf with 2-point differences, lm), each with its defaults?

- Inner black box: ``beta -> y_hat(x_i; beta)`` for all observations (numpy; the models
  in :mod:`benchmarks._strd_problems`); outer loss ``fz.LeastSquares(y, scale="sum")``
  (half the residual sum of squares); the peers get the residuals ``y_hat - y``.
- Budget: ``100 (n + 1)`` evaluations, or the method's own stop, whichever first.
- Accuracy: NIST's log relative error of the best point so far (lowest RSS among the
  first k evaluations), ``LRE = min_j -log10(|b_j - c_j| / |c_j|)``, capped at 11; a
  pair is solved at LRE >= 4 and at LRE >= 6.
- Data profiles: fraction of pairs solved against evaluations / (n + 1), and against
  parallel rounds with W = 8 workers (how each method's evaluations are grouped:
  :mod:`benchmarks._profiles`).
- Evaluations until each method stops (median over pairs).

JSON line (last): ``evals_ratio_lre4`` / ``evals_ratio_lre6`` (geometric mean over the
pairs both solve of DFO-LS's evaluations / ours: above 1, ours needs fewer),
``rounds_ratio_W8`` (the same for rounds at W = 8, LRE >= 4; ``rounds_ratio_W8_lre6``
at LRE >= 6), ``stop_evals_ratio`` (median over pairs of ours / DFO-LS's evaluations
until stop), ``after_final_accuracy_ours`` (median over pairs of the evaluations ours
spent after its best point came within half a digit of the LRE it ends with, as a
fraction of those it took to get there; ``after_final_accuracy`` per method),
``solved`` (pairs solved per method), ``ours_fail_dfols_ok`` (pairs DFO-LS
solves and ours does not), the profiles at a few alphas and the per-pair figures.

    python -m benchmarks.strd [--quick] [--plot] [--only NAME ...] [--methods M ...]

``--quick``: 8 problems, first start (well under 2 minutes on 2 cores). Writes
``results/strd_<mode>.md`` (the per-pair table) and, with ``--plot``, the profiles
``results/strd_<mode>_profiles.png``.
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks import _profiles as prof
from benchmarks._strd_problems import NAMES, load

QUICK = ("Misra1a", "Chwirut2", "DanWood", "Kirby2", "MGH17", "BoxBOD", "Rat42", "Eckerle4")
LEVELS = {"lre4": 4.0, "lre6": 6.0}
ALPHAS = (5, 10, 20, 50, 100)             # evaluations / (n + 1), for the JSON line
ROUND_ALPHAS = (10, 20, 50, 100, 300)     # rounds at W = 8


def pairs(names, starts):
    """``(key, fit, budget)`` and the problem of each requested (data set, start)."""
    out, problems = [], {}
    for name in names:
        p = load(name)
        for s in starts:
            key = f"{name}/start{s + 1}"
            fit = prof.LeastSquaresFit(name=key, predict=p.predict, data=p.y,
                                       x0=p.starts[s].copy())
            out.append((key, fit, 100 * (p.num_params + 1)))
            problems[key] = p
    return out, problems


def levels_of(problem):
    """Solved at LRE >= t: the best point so far agrees with the certified values to
    t significant digits in every parameter."""
    return {label: (lambda b, v, t=t: prof.lre(b, problem.certified) >= t)
            for label, t in LEVELS.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    prof.add_arguments(parser, f"{len(QUICK)} problems, first start only (< 2 min)")
    parser.add_argument("--only", nargs="+", default=None, choices=NAMES, metavar="NAME",
                        help="data sets to run (both starts unless --quick)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    todo, problems = pairs(args.only or (QUICK if args.quick else NAMES),
                           (0,) if args.quick else (0, 1))
    runs = prof.run_pairs(todo, prof.selected_methods(args.methods, args.width),
                          log=lambda s: print(s, flush=True))

    def extra(summary, records):
        best = {k: {m: run.log.points[run.log.improvements()[-1]]
                    if run.log.improvements() else None for m, run in per.items()}
                for k, per in runs.items()}
        return {f"rounds_ratio_W{prof.WIDTH}": summary.get(
                    f"rounds_ratio_W{prof.WIDTH}_lre4"),
                "final_lre": {k: {m: 0.0 if b is None else
                                  round(prof.lre(b, problems[k].certified), 2)
                                  for m, b in per.items()} for k, per in best.items()}}

    return prof.report("strd", args, runs, {k: levels_of(problems[k]) for k in runs},
                       {k: problems[k].num_params for k in runs},
                       {label: f"LRE >= {t:g}" for label, t in LEVELS.items()},
                       alphas=ALPHAS, round_alphas=ROUND_ALPHAS, start=start, extra=extra,
                       accuracy={k: (lambda b, v, c=problems[k].certified: prof.lre(b, c))
                                 for k in runs})


if __name__ == "__main__":
    main()
    sys.exit(0)
