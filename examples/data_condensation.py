"""Data condensation on the sklearn digits: learn a few synthetic images per class.

The first task of the FG²U paper (Shen et al., NeurIPS 2024, Sec. 5.1), on the 8 x 8
digits that ship with scikit-learn (no download). The meta-parameters ``phi`` are
``k`` synthetic images per class (``N = 10 k 64`` pixels, fixed labels); the inner
problem trains a softmax-regression classifier (64 x 10 weights + 10 biases, from zero)
on them for ``T`` steps of plain gradient descent (:class:`solvers.TorchUnrolled`); the
outer loss is the cross-entropy of that classifier on the real training images.
Starting from ``k`` random real images per class, ``torch.optim.Adam`` moves the pixels
along the meta-gradient given by ``estimator.backward(problem, phi, rng=...)``.

Three exact torch estimators are compared:

* FG2U: forward gradient unrolling, ``b`` random directions pushed through the T
  steps with ``torch.func.jvp`` (vmapped), unbiased, memory flat in T;
* RGU: reverse-mode unrolling, exact, memory linear in T;
* TRGU: reverse mode through the last ``K`` steps only, cheap and biased.

Reported: test accuracy of a classifier trained (same T steps) on the condensed
images, against the same classifier trained on the random real images the run started
from; seconds per meta-step; and a table of the peak memory of one meta-gradient
against T. Memory is measured in this process: freed heap pages are handed back to the
OS (``malloc_trim``), the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``)
and the peak resident memory above the starting point is read from ``VmHWM``; where
the counter cannot be reset, each case runs in a fresh subprocess instead and reports
``ru_maxrss`` after minus before.

    python examples/data_condensation.py            # full: T = 100, k = 2, 300 steps
    python examples/data_condensation.py --quick    # < 60 s: T = 20, k = 1, 60 steps, b = 16

Prints a table, then one JSON line with ``acc_fg2u``, ``acc_rgu``, ``acc_trgu``,
``acc_random_baseline``, ``mem_fg2u_mb``, ``mem_rgu_mb`` and ``mem_trgu_mb`` (at the
largest T of the memory table), the seconds per meta-step and the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import fg2u_zo as fz
from fg2u_zo.testing import can_reset_peak, map_large_blocks_separately, peak_memory_mb
from solvers import TorchUnrolled

NUM_CLASSES = 10
PIXELS = 64
NUM_WEIGHTS = PIXELS * NUM_CLASSES + NUM_CLASSES


# -- the model (module level, so problems pickle) ------------------------------------------
def logits(theta, X):
    """Softmax-regression scores: ``theta`` packs a 64 x 10 weight matrix and 10 biases."""
    W = theta[:PIXELS * NUM_CLASSES].reshape(PIXELS, NUM_CLASSES)
    return X @ W + theta[PIXELS * NUM_CLASSES:]


class SyntheticSetLoss:
    """Inner loss: cross-entropy on the synthetic images ``phi`` (+ weight decay)."""

    def __init__(self, labels, weight_decay):
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.weight_decay = weight_decay

    def __call__(self, theta, phi):
        ce = F.cross_entropy(logits(theta, phi.reshape(-1, PIXELS)), self.labels)
        return ce + 0.5 * self.weight_decay * (theta[:PIXELS * NUM_CLASSES] ** 2).sum()


class RealDataLoss:
    """Outer loss: cross-entropy of the trained classifier on real training images."""

    def __init__(self, X, y):
        self.X = torch.as_tensor(X, dtype=torch.float64)
        self.y = torch.as_tensor(y, dtype=torch.long)

    def __call__(self, theta, phi):
        return F.cross_entropy(logits(theta, self.X), self.y)


# -- data and problem ----------------------------------------------------------------------
def load_digits_split(seed):
    """Digits scaled to [0, 1], split 70 / 30 (stratified) into train and test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=0.3, stratify=y, random_state=seed)


def random_real_images(X, y, k, rng):
    """``k`` random real training images per class: the start and the baseline."""
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False)
                          for c in range(NUM_CLASSES)])
    return X[idx].reshape(-1).copy(), y[idx].copy()


def make_problem(X_train, y_train, labels, *, steps, lr, weight_decay):
    """The bilevel problem: T steps of gradient descent on the synthetic set."""
    inner = TorchUnrolled(SyntheticSetLoss(labels, weight_decay), theta0=np.zeros(NUM_WEIGHTS),
                          steps=steps, optimizer="sgd", lr=lr)
    return fz.BilevelProblem(inner=inner, outer=RealDataLoss(X_train, y_train),
                             num_params=len(labels) * PIXELS, name="digits-condensation")


def test_accuracy(problem, phi, X_test, y_test):
    """Accuracy on real test images of the classifier trained on ``phi``."""
    theta = torch.from_numpy(problem.inner(np.asarray(phi, dtype=np.float64)))
    pred = logits(theta, torch.as_tensor(X_test)).argmax(dim=1).numpy()
    return float(np.mean(pred == y_test))


def make_estimators(args):
    return {"FG2U": fz.FG2U(num_directions=args.directions),
            "RGU": fz.RGU(),
            "TRGU": fz.TRGU(backprop_steps=args.trgu_steps)}


def condense(problem, phi0, estimator, *, steps, lr, seed):
    """Adam on the pixels, driven by ``estimator.backward``; returns phi, losses, s/step."""
    phi = torch.tensor(phi0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([phi], lr=lr)
    rng = np.random.default_rng(seed)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        losses.append(estimator.backward(problem, phi, rng=rng).value)
        opt.step()
    seconds = (time.perf_counter() - start) / steps
    return phi.detach().numpy().copy(), losses, seconds


# -- memory ----------------------------------------------------------------------------------
def _memory_case(problem_kwargs, data, labels, phi0, estimator, T):
    problem = make_problem(*data, labels, steps=T, **problem_kwargs)
    # Warm-up at T = 2 so torch's lazily loaded kernels are not counted.
    estimator.estimate(make_problem(*data, labels, steps=2, **problem_kwargs), phi0, rng=0)
    _, mb, method = peak_memory_mb(lambda: estimator.estimate(problem, phi0, rng=0))
    return mb if method == "VmHWM-VmRSS" else None


def _memory_in_child(args, name, T):
    """Fallback without a resettable peak: one fresh process per case, ru_maxrss delta."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-case", name, str(T),
           "--k", str(args.k), "--seed", str(args.seed), "--directions", str(args.directions),
           "--trgu-steps", str(args.trgu_steps), "--inner-lr", str(args.inner_lr),
           "--weight-decay", str(args.weight_decay)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600,
                         env=env)
    return float(out.stdout.strip().splitlines()[-1])


def _child_memory_case(args, problem_kwargs, data, labels, phi0):
    name, T = args.memory_case[0], int(args.memory_case[1])
    est = make_estimators(args)[name]
    est.estimate(make_problem(*data, labels, steps=2, **problem_kwargs), phi0, rng=0)
    problem = make_problem(*data, labels, steps=T, **problem_kwargs)
    # A fresh process: where the peak counter cannot be reset, ru_maxrss still works.
    _, mb, _ = peak_memory_mb(lambda: est.estimate(problem, phi0, rng=0))
    print(mb)


# -- main ------------------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="T=20, k=1, 60 meta-steps, b=16, memory at T in (10, 100, 300); "
                             "< 60 s")
    parser.add_argument("--T", type=int, help="inner steps (default 100; quick 20)")
    parser.add_argument("--k", type=int, help="synthetic images per class (default 2; quick 1)")
    parser.add_argument("--steps", type=int, help="outer (meta) steps (default 300; quick 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--directions", type=int, help="FG2U directions b (default 32; quick 16)")
    parser.add_argument("--trgu-steps", type=int, help="TRGU's K (default T // 4)")
    parser.add_argument("--inner-lr", type=float, default=1.0, help="inner gradient-descent step")
    parser.add_argument("--outer-lr", type=float, default=0.03, help="Adam step on the pixels")
    parser.add_argument("--weight-decay", type=float, default=1e-3)
    parser.add_argument("--memory-T", type=int, nargs="+",
                        help="unroll depths of the memory table (default 10 100 1000; "
                             "quick 10 100 300)")
    parser.add_argument("--memory-case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.memory_T = sorted(set(args.memory_T or ((10, 100, 300) if args.quick
                                                 else (10, 100, 1000))))
    args.directions = args.directions or (16 if args.quick else 32)
    args.T = args.T or (20 if args.quick else 100)
    args.k = args.k or (1 if args.quick else 2)
    args.steps = args.steps or (60 if args.quick else 300)
    args.trgu_steps = args.trgu_steps or max(1, args.T // 4)
    for name in ("T", "k", "steps", "directions", "trgu_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(1)
    wall = time.perf_counter()
    X_train, X_test, y_train, y_test = load_digits_split(args.seed)
    phi0, labels = random_real_images(X_train, y_train, args.k,
                                      np.random.default_rng(args.seed))
    data = (X_train, y_train)
    problem_kwargs = dict(lr=args.inner_lr, weight_decay=args.weight_decay)
    if args.memory_case:
        _child_memory_case(args, problem_kwargs, data, labels, phi0)
        return 0

    problem = make_problem(*data, labels, steps=args.T, **problem_kwargs)
    estimators = make_estimators(args)
    baseline = test_accuracy(problem, phi0, X_test, y_test)
    print(f"digits: {len(y_train)} train / {len(y_test)} test images; k = {args.k} per class "
          f"(N = {phi0.size}); softmax regression, T = {args.T} inner GD steps; "
          f"{args.steps} Adam steps; FG2U b = {args.directions}, TRGU K = {args.trgu_steps}")
    print(f"{'estimator':<10} {'test acc':>9} {'outer loss':>21} {'s / step':>9}")
    print(f"{'random':<10} {baseline:>9.3f} {problem.outer_value(problem.inner(phi0), phi0):>21.4f}"
          f" {'-':>9}")
    results = {}
    for name, est in estimators.items():
        phi, losses, sec = condense(problem, phi0, est, steps=args.steps, lr=args.outer_lr,
                                    seed=args.seed)
        acc = test_accuracy(problem, phi, X_test, y_test)
        results[name] = dict(acc=acc, sec=sec, first=losses[0], last=losses[-1])
        print(f"{name:<10} {acc:>9.3f} {losses[0]:>10.4f} -> {losses[-1]:<8.4f} {sec:>9.4f}",
              flush=True)

    # Peak memory of one meta-gradient against T (same problem, fresh depth each time).
    in_process = can_reset_peak()
    if in_process:
        map_large_blocks_separately()
    memory = {name: [] for name in estimators}
    for T in args.memory_T:
        for name, est in estimators.items():
            if in_process:
                mb = _memory_case(problem_kwargs, data, labels, phi0, est, T)
            else:
                mb = _memory_in_child(args, name, T)
            memory[name].append(mb)
    method = "VmHWM-VmRSS in process" if in_process else "ru_maxrss, one process per case"
    print(f"\npeak memory of one meta-gradient, MB above the starting RSS ({method})")
    print(f"{'T':>6} " + " ".join(f"{name:>8}" for name in estimators))
    for i, T in enumerate(args.memory_T):
        print(f"{T:>6} " + " ".join(f"{memory[name][i]:>8.2f}" for name in estimators))

    print(json.dumps({
        "example": "data_condensation", "mode": "quick" if args.quick else "full",
        "acc_fg2u": results["FG2U"]["acc"], "acc_rgu": results["RGU"]["acc"],
        "acc_trgu": results["TRGU"]["acc"], "acc_random_baseline": baseline,
        "mem_T": max(args.memory_T),
        "mem_fg2u_mb": round(memory["FG2U"][-1], 3), "mem_rgu_mb": round(memory["RGU"][-1], 3),
        "mem_trgu_mb": round(memory["TRGU"][-1], 3),
        "sec_per_step": {name: round(r["sec"], 4) for name, r in results.items()},
        "outer_loss": {name: [round(r["first"], 4), round(r["last"], 4)]
                       for name, r in results.items()},
        "T": args.T, "k": args.k, "steps": args.steps, "directions": args.directions,
        "trgu_steps": args.trgu_steps, "seed": args.seed, "memory_method": method,
        "wall_s": round(time.perf_counter() - wall, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
