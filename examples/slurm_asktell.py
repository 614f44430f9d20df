"""A calibration whose solves run as SLURM array jobs, driven by ask/tell.

The driver process holds the run (``fz.AskTell``); each round of solves becomes one
SLURM array (``sbatch --array=0-K --wait``): task ``k`` reads its point from the round's
folder, runs the simulator, writes its output (or its error) there, and the driver tells
the run what came back, in whatever order. The run checkpoints after every round and
journals every answer, so the driver itself can run as a job that the scheduler
requeues: started again, it resumes and submits only the solves it was not told.

    python examples/slurm_asktell.py [--quick] [--workdir runs/slurm] [--array-size 8]
    python examples/slurm_asktell.py task ROUND_DIR INDEX     # what each array task runs

The simulator here is a damped-decay model ``y(t) = a exp(-b t) + c`` observed at 40
times with 1 % noise; replace ``simulate`` by your code (a subprocess, FreeFem++ ...).
``--sbatch`` names the submit command (default ``sbatch``; the tests put a stand-in on
PATH that runs the array tasks on the machine). Prints a table, then one JSON line with
``estimates``, ``truth``, ``max_rel_err``, ``nfev``, ``rounds`` and ``arrays`` (the
array jobs submitted).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

import numpy as np

# torch and fg2u_zo are imported by the driver only: an array task needs numpy alone,
# and starts in a fraction of a second.

TRUTH = np.array([2.0, 0.7, 0.3])
TIMES = np.linspace(0.0, 6.0, 40)
NAMES = ("a", "b", "c")


def simulate(phi):
    """The simulator: ``a exp(-b t) + c`` at the observation times."""
    a, b, c = phi
    return a * np.exp(-b * TIMES) + c


def observations():
    rng = np.random.default_rng(0)
    y = simulate(TRUTH)
    return y + 0.01 * np.abs(y).mean() * rng.standard_normal(y.size)


def make_problem():
    import torch

    import fg2u_zo as fz

    data = torch.as_tensor(observations())
    return fz.BilevelProblem(inner=simulate, num_params=3,
                             outer=lambda theta, phi: 0.5 * ((theta - data) ** 2).sum())


# -- what one array task runs ------------------------------------------------------------
def run_task(round_dir, index):
    """Solve point ``index`` of a round: ``point-<index>.npy`` in, ``output-<index>.npy``
    (or ``error-<index>.txt``) out, written atomically."""
    phi = np.load(os.path.join(round_dir, f"point-{index}.npy"))
    try:
        theta = simulate(phi)
        np.save(os.path.join(round_dir, f".output-{index}.npy"), theta)
        os.replace(os.path.join(round_dir, f".output-{index}.npy"),
                   os.path.join(round_dir, f"output-{index}.npy"))
    except Exception as exc:  # told to the run as a failure of this solve
        with open(os.path.join(round_dir, f"error-{index}.txt"), "w") as fh:
            fh.write(f"{type(exc).__name__}: {exc}")


JOB_SCRIPT = """#!/bin/bash
#SBATCH --job-name=fg2u-solve
#SBATCH --time=00:10:00
exec {python} {driver} task "$1" "$SLURM_ARRAY_TASK_ID"
"""


# -- the driver --------------------------------------------------------------------------
def submit(sbatch, job_script, round_dir, count):
    """One array job for the round, waited for (``--wait``)."""
    subprocess.run([sbatch, f"--array=0-{count - 1}", "--wait", job_script, round_dir],
                   check=True)


def drive(args):
    import fg2u_zo as fz

    os.makedirs(args.workdir, exist_ok=True)
    job_script = os.path.join(args.workdir, "solve.sh")
    with open(job_script, "w") as fh:
        fh.write(JOB_SCRIPT.format(python=sys.executable, driver=os.path.abspath(__file__)))
    os.chmod(job_script, 0o755)
    sbatch = shutil.which(args.sbatch) or args.sbatch
    opt = fz.AskTell(make_problem(), np.array([1.0, 1.0, 0.0]),
                     fz.FG2UZO(scheme="forward", step=1e-6), optimizer="gauss-newton",
                     steps=args.steps, rng=0, workers=args.array_size,
                     bounds=([0.0, 0.01, -5.0], [10.0, 5.0, 5.0]),
                     checkpoint=os.path.join(args.workdir, "run.ckpt"), resume="auto")
    arrays = 0
    with opt:
        while not opt.done:
            batch = opt.ask()
            if not batch:
                continue
            round_dir = os.path.join(args.workdir, f"round-{batch[0].id.split('.')[0]}")
            os.makedirs(round_dir, exist_ok=True)
            for k, e in enumerate(batch):
                np.save(os.path.join(round_dir, f"point-{k}.npy"), e.phi)
            submit(sbatch, job_script, round_dir, len(batch))
            arrays += 1
            for k, e in enumerate(batch):
                out = os.path.join(round_dir, f"output-{k}.npy")
                if os.path.exists(out):
                    opt.tell(e.id, np.load(out))
                else:
                    err = os.path.join(round_dir, f"error-{k}.txt")
                    reason = open(err).read() if os.path.exists(err) else "no output"
                    opt.tell(e.id, failure=reason)
            shutil.rmtree(round_dir)
    return opt.result(), arrays


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 steps (default 30)")
    parser.add_argument("--workdir", default="slurm-run", help="rounds, job script, "
                                                               "checkpoint")
    parser.add_argument("--array-size", type=int, default=8,
                        help="solves a round holds (the run's workers)")
    parser.add_argument("--sbatch", default="sbatch", help="the submit command")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    args.steps = args.steps or (10 if args.quick else 30)
    res, arrays = drive(args)
    rel = np.abs(res.phi - TRUTH) / np.abs(TRUTH)
    print(f"{'parameter':>10} {'estimate':>12} {'truth':>8} {'rel. error':>11}")
    for name, est, true, r in zip(NAMES, res.phi, TRUTH, rel):
        print(f"{name:>10} {est:>12.6g} {true:>8.3g} {r:>11.2e}")
    print(f"{res.message}; {res.nfev} solves in {arrays} array jobs")
    summary = {"estimates": dict(zip(NAMES, res.phi.tolist())),
               "truth": dict(zip(NAMES, TRUTH.tolist())), "max_rel_err": float(rel.max()),
               "nfev": int(res.nfev), "rounds": len(res.groups), "arrays": arrays}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "task":
        run_task(sys.argv[2], int(sys.argv[3]))
    else:
        main()
