"""Coverage of confidence intervals on non-linear calibrations, against curve_fit and lmfit.

Three calibrations, each with replicate data sets drawn from known parameters with
Gaussian noise (the same data for every method):

* ``decay``: ``a exp(-k t)``, 10 observations on [0, 4];
* ``michaelis-menten``: ``vmax s / (km + s)``, 10 substrate levels on [0.05, 2];
* ``oscillator``: the position of ``y'' + 2 zeta omega y' + omega^2 y = 0``, ``y(0) = 1``,
  through ``solvers.SolveIVP`` (DOP853), 12 observations on [0, 6].

Each replicate is fitted by each method from the same start, and each method's 95 %
interval of every parameter is checked against the truth:

* ``linear``: ``fz.minimize`` (Gauss–Newton) then ``fz.uncertainty`` (Student's t with
  M - N dof, noise level from the residuals);
* ``linear-log``: the same, with the intervals computed in log-parameters;
* ``profile``: ``fz.uncertainty(method="profile")`` (F(1, M - N) threshold);
* ``curve_fit``: ``scipy.optimize.curve_fit``, ``popt +- t * sqrt(diag(pcov))``;
* ``lmfit``: ``lmfit.conf_interval`` at probability 0.95 (F-test profile, the default).

Coverage is the fraction of (replicate, parameter) intervals holding the truth; its
binomial standard error is ``sqrt(0.95 * 0.05 / n)``. Solves per interval count the
solver calls spent on the intervals (not on the fit) divided by N: for ``fz.uncertainty``
its ``nfev`` (noise probe, Jacobian, profile fits), for curve_fit 0 (its ``pcov``
reuses the fit's last Jacobian), for lmfit the residual evaluations of
``conf_interval``.

    python -m benchmarks.uncertainty [--quick] [--replicates R]

Prints a table, then one JSON line with each method's coverage per problem and overall,
and its solves per interval.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings

import numpy as np
from scipy import optimize, stats

import fg2u_zo as fz

CONFIDENCE = 0.95
METHODS = ("linear", "linear-log", "profile", "curve_fit", "lmfit")


# -- the models (module level: picklable) ------------------------------------------------------
class Decay:
    names = ("a", "k")

    def __init__(self, t):
        self.t = t

    def __call__(self, phi):
        return phi[0] * np.exp(-phi[1] * self.t)


class MichaelisMenten:
    names = ("vmax", "km")

    def __init__(self, s):
        self.t = s

    def __call__(self, phi):
        return phi[0] * self.t / (phi[1] + self.t)


def oscillator_rhs(t, y, p):
    omega, zeta = p
    return np.array([y[1], -2.0 * zeta * omega * y[1] - omega ** 2 * y[0]])


class Oscillator:
    """Position of a damped oscillator at ``t`` (the velocity is integrated, not observed)."""

    names = ("omega", "zeta")

    def __init__(self, t):
        from solvers import SolveIVP

        self.t = t
        self.ivp = SolveIVP(oscillator_rhs, y0=[1.0, 0.0], t_span=(0.0, float(t[-1])),
                            t_eval=t, rtol=1e-10, atol=1e-12)

    def __call__(self, phi):
        return self.ivp(np.asarray(phi, dtype=np.float64))[0::2]


def cases():
    """(name, model, truth, start, noise sd)."""
    return [
        ("decay", Decay(np.linspace(0.0, 4.0, 10)), np.array([2.0, 0.7]),
         np.array([1.5, 1.0]), 0.1),
        ("michaelis-menten", MichaelisMenten(np.linspace(0.05, 2.0, 10)),
         np.array([1.0, 0.5]), np.array([0.8, 0.3]), 0.05),
        ("oscillator", Oscillator(np.linspace(0.0, 6.0, 12)), np.array([2.0, 0.15]),
         np.array([1.8, 0.25]), 0.05),
    ]


class Counting:
    """A model that counts its calls (for lmfit, which reports no count of its own)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, phi):
        self.calls += 1
        return self.model(phi)


# -- one replicate, every method -------------------------------------------------------------
def covers(interval, truth):
    interval = np.asarray(interval, dtype=np.float64)
    return (interval[:, 0] <= truth) & (truth <= interval[:, 1])


def ours(model, y, start, evaluator, seed):
    problem = fz.BilevelProblem(inner=model, outer=fz.LeastSquares(y))
    res = fz.minimize(problem, start, fz.FG2UZO(scheme="forward"), optimizer="gauss-newton",
                      steps=60, callback=fz.Converged(xtol=1e-7, patience=2).callback(),
                      rng=seed, evaluator=evaluator, progress=False)
    out = {"fit_nfev": res.nfev}
    for method, options in (("linear", {}), ("linear-log", {"transform": "log"}),
                            ("profile", {"method": "profile"})):
        unc = fz.uncertainty(res, problem, confidence=CONFIDENCE, rng=seed, warn=False,
                             evaluator=evaluator, **options)
        out[method] = (unc.interval, unc.nfev / res.phi.size)
    return out


def with_curve_fit(model, y, start):
    f = (lambda t, a, b: model(np.array([a, b])))
    popt, pcov, info, _, _ = optimize.curve_fit(f, model.t, y, p0=start, full_output=True)
    q = stats.t.ppf(0.5 * (1 + CONFIDENCE), y.size - popt.size)
    half = q * np.sqrt(np.diag(pcov))
    return np.column_stack([popt - half, popt + half]), info["nfev"]


def with_lmfit(model, y, start):
    import lmfit

    counting = Counting(model)
    params = lmfit.Parameters()
    for name, value in zip(model.names, start):
        params.add(name, value=float(value))

    def residual(p):
        return counting(np.array([p[name].value for name in model.names])) - y

    mini = lmfit.Minimizer(residual, params)
    result = mini.minimize(method="leastsq")
    fit_calls = counting.calls
    ci = lmfit.conf_interval(mini, result, sigmas=[CONFIDENCE])
    interval = np.array([[ci[name][0][1], ci[name][-1][1]] for name in model.names])
    return interval, (counting.calls - fit_calls) / len(model.names), fit_calls


def run(replicates, profile_replicates, lmfit_replicates):
    rows = []
    with fz.Evaluator("sequential") as ev, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c, (name, model, truth, start, sd) in enumerate(cases()):
            tally = {m: [0, 0, 0.0, 0] for m in METHODS}   # covered, intervals, solves, failed
            t0 = time.perf_counter()
            for r in range(replicates):
                rng = np.random.default_rng([c, r])
                y = model(truth) + sd * rng.standard_normal(model.t.size)
                results = {}
                try:
                    mine = ours(model, y, start, ev, seed=r)
                    results["linear"] = mine["linear"]
                    results["linear-log"] = mine["linear-log"]
                    if r < profile_replicates:
                        results["profile"] = mine["profile"]
                except fz.FG2UError:
                    for m in ("linear", "linear-log", "profile"):
                        tally[m][3] += 1
                try:
                    interval, _ = with_curve_fit(model, y, start)
                    results["curve_fit"] = (interval, 0.0)
                except (RuntimeError, ValueError):
                    tally["curve_fit"][3] += 1
                if r < lmfit_replicates:
                    try:
                        interval, solves, _ = with_lmfit(model, y, start)
                        results["lmfit"] = (interval, solves)
                    except Exception:   # lmfit raises plain exceptions on a failed CI
                        tally["lmfit"][3] += 1
                for m, (interval, solves) in results.items():
                    ok = covers(interval, truth)
                    tally[m][0] += int(ok.sum())
                    tally[m][1] += ok.size
                    tally[m][2] += solves
            seconds = time.perf_counter() - t0
            for m in METHODS:
                covered, n, solves, failed = tally[m]
                if n == 0:
                    continue
                rows.append({"problem": name, "method": m, "coverage": covered / n,
                             "intervals": n, "stderr": math.sqrt(0.95 * 0.05 / n),
                             "solves_per_interval": solves / (n / truth.size),
                             "failed": failed, "seconds": seconds})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="20 replicates, 10 for the profile methods (under 2 minutes)")
    parser.add_argument("--replicates", type=int, default=None)
    args = parser.parse_args(argv)
    replicates = args.replicates or (20 if args.quick else 200)
    # The profile methods cost tens to hundreds of solves an interval: half as many.
    profile_replicates = replicates if not args.quick else replicates // 2
    lmfit_replicates = profile_replicates
    t0 = time.perf_counter()
    rows = run(replicates, profile_replicates, lmfit_replicates)
    print(f"coverage of {100 * CONFIDENCE:g}% intervals (truth inside), "
          f"{replicates} replicates (profile, lmfit: {profile_replicates})")
    print(f"{'problem':>17} {'method':>11} {'coverage':>9} {'± se':>6} {'intervals':>9} "
          f"{'solves/interval':>15} {'failed':>6}")
    for r in rows:
        print(f"{r['problem']:>17} {r['method']:>11} {r['coverage']:>9.3f} {r['stderr']:>6.3f} "
              f"{r['intervals']:>9d} {r['solves_per_interval']:>15.1f} {r['failed']:>6d}")
    summary = {"benchmark": "uncertainty", "quick": bool(args.quick),
               "replicates": replicates, "profile_replicates": profile_replicates,
               "confidence": CONFIDENCE, "seconds": round(time.perf_counter() - t0, 1)}
    for m in METHODS:
        mine = [r for r in rows if r["method"] == m]
        if not mine:
            continue
        covered = sum(r["coverage"] * r["intervals"] for r in mine)
        n = sum(r["intervals"] for r in mine)
        key = m.replace("-", "_")
        summary[f"coverage_{key}"] = round(covered / n, 4)
        summary[f"coverage_{key}_min"] = round(min(r["coverage"] for r in mine), 4)
        summary[f"solves_per_interval_{key}"] = round(
            float(np.mean([r["solves_per_interval"] for r in mine])), 1)
        for r in mine:
            summary[f"coverage_{key}_{r['problem'].replace('-', '_')}"] = round(r["coverage"], 4)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
