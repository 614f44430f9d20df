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
until stop), ``solved`` (pairs solved per method), ``ours_fail_dfols_ok`` (pairs DFO-LS
solves and ours does not), the profiles at a few alphas and the per-pair figures.

    python -m benchmarks.strd [--quick] [--plot] [--only NAME ...] [--methods M ...]

``--quick``: 8 problems, first start (well under 2 minutes on 2 cores). Writes
``results/strd_<mode>.md`` (the per-pair table) and, with ``--plot``, the profiles
``results/strd_<mode>_profiles.png``.
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
from benchmarks._strd_problems import NAMES, load
from benchmarks.peers import machine

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
QUICK = ("Misra1a", "Chwirut2", "DanWood", "Kirby2", "MGH17", "BoxBOD", "Rat42", "Eckerle4")
LEVELS = {"lre4": 4.0, "lre6": 6.0}
ALPHAS = (5, 10, 20, 50, 100)             # evaluations / (n + 1), for the JSON line
ROUND_ALPHAS = (10, 20, 50, 100, 300)     # rounds at W = 8
PLOT_ALPHAS = np.arange(1, 101, dtype=float)
PLOT_ROUNDS = np.unique(np.geomspace(1, 1000, 61).round())


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
    parser.add_argument("--quick", action="store_true",
                        help=f"{len(QUICK)} problems, first start only (< 2 min)")
    parser.add_argument("--plot", action="store_true",
                        help="write results/strd_<mode>_profiles.png (needs matplotlib)")
    parser.add_argument("--only", nargs="+", default=None, choices=NAMES, metavar="NAME",
                        help="data sets to run (both starts unless --quick)")
    parser.add_argument("--methods", nargs="+", default=None,
                        choices=[m.name for m in prof.METHODS], metavar="METHOD")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args(argv)

    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    start = time.perf_counter()
    names = args.only or (QUICK if args.quick else NAMES)
    todo, problems = pairs(names, (0,) if args.quick else (0, 1))
    methods = [m for m in prof.METHODS if args.methods is None or m.name in args.methods]
    with threadpool_limits(1):  # BLAS threads would only fight over the cores
        runs = prof.run_pairs(todo, methods, log=lambda s: print(s, flush=True))
    records = prof.measure(runs, {k: levels_of(problems[k]) for k in runs})
    n_of = {k: problems[k].num_params for k in runs}
    names_m = [m.name for m in methods]
    summary, cost = prof.summarize(records, n_of, names_m, list(LEVELS), ALPHAS,
                                   ROUND_ALPHAS)
    if f"rounds_ratio_W{prof.WIDTH}_lre4" in summary:
        summary[f"rounds_ratio_W{prof.WIDTH}"] = summary[f"rounds_ratio_W{prof.WIDTH}_lre4"]
    final_lre = {k: {m: round(prof.lre(_best_point(run), problems[k].certified), 2)
                     for m, run in per.items()} for k, per in runs.items()}
    wall = time.perf_counter() - start
    mode = "quick" if args.quick else "full"
    text = prof.markdown_table(records, n_of, names_m, list(LEVELS))
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    figure = None
    if args.plot:
        panels = [(f"LRE >= {t:g}", xlabel, alphas,
                   {m: prof.data_profile(cost[(m, kind, label)], alphas) for m in names_m})
                  for kind, alphas, xlabel in (
                      ("evals", PLOT_ALPHAS, "evaluations / (n + 1)"),
                      ("rounds", PLOT_ROUNDS, f"rounds at W = {prof.WIDTH}"))
                  for label, t in LEVELS.items()]
        figure = prof.plot_profiles(panels, args.out / f"strd_{mode}_profiles.png",
                                    f"NIST StRD, {len(records)} pairs, defaults only")
    result = {"benchmark": "strd", "mode": mode, "pairs": len(records),
              "budget": "100 (n + 1) evaluations", "width": prof.WIDTH,
              "groups": {m.name: m.groups for m in methods}, **summary,
              "final_lre": final_lre, "per_pair": prof.per_pair(records, list(LEVELS)),
              "figure": None if figure is None else figure.name,
              "wall_s": round(wall, 1), "machine": machine()}
    with open(args.out / f"strd_{mode}.md", "w") as fh:
        fh.write(f"# python -m benchmarks.strd{' --quick' if args.quick else ''}\n\n"
                 f"Evaluations to LRE >= 4 / LRE >= 6 / until the method stopped "
                 f"(budget 100 (n + 1)); {wall:.0f} s.\n\n{text}\n\n```json\n"
                 f"{json.dumps(result, indent=1, default=_json_default)}\n```\n")
    print(json.dumps(result, default=_json_default))
    return result


def _best_point(run):
    imp = run.log.improvements()
    return run.log.points[imp[-1]] if imp else np.full(1, np.nan)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


if __name__ == "__main__":
    main()
    sys.exit(0)
