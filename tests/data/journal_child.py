"""A run that kills itself after a chosen solve, for the journal tests of test_journal.py.

    python journal_child.py VARIANT CHECKPOINT HISTORY MARKERS KILL_AT CHECKPOINT_EVERY

The inner solver writes one marker file into MARKERS per finished solve and, when it is
called for the KILL_AT-th time (1-based; 0: never), SIGKILLs its own process before it
solves anything: the KILL_AT - 1 solves before it have finished and been journaled, and
nothing is in flight (the sequential backend runs one solve at a time). ``make_problem``,
``estimator`` and ``kwargs`` are imported by the test too, so the killed run, its
resumption and the uninterrupted reference are the same run.
"""

import os
import signal
import sys

import numpy as np

import fg2u_zo as fz
from fg2u_zo.testing import RidgeHyperproblem

STEPS = 4


class MarkingRidge:
    """The ridge inner solver; counts its calls, marks each finished solve on disk."""

    def __init__(self, markers=None, kill_at=0, term_at=0):
        self.ridge = RidgeHyperproblem()
        self.markers, self.kill_at, self.term_at = markers, kill_at, term_at
        self.calls = 0

    # seed= and warm_start= are taken, so that they are part of what is journaled.
    def __call__(self, phi, *, warm_start=None, seed=None):
        self.calls += 1
        if self.calls == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # a real crash: no handler, no cleanup
        if self.calls == self.term_at:
            os.kill(os.getpid(), signal.SIGTERM)  # a batch scheduler's "time is up"
        theta = self.ridge.inner(phi)
        if self.markers is not None:
            fd = os.open(os.path.join(self.markers, f"solve-{os.getpid()}-{self.calls}"),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.close(fd)
        return theta


def make_problem(markers=None, kill_at=0, term_at=0):
    solver = MarkingRidge(markers, kill_at, term_at)
    return fz.BilevelProblem(inner=solver, outer=solver.ridge.outer, num_params=5)


def estimator(variant):
    if variant == "auto":  # the noise probe's solves are journaled too
        return fz.FG2UZO(num_directions=3, step="auto")
    return fz.FG2UZO(num_directions=4, scheme="forward", step=1e-6)


def kwargs(variant):
    common = dict(steps=STEPS, rng=11, bounds=(-3.0, 3.0), backend="sequential",
                  progress=False)
    if variant == "gauss-newton":  # the stepper asks for its trial points itself
        # "refresh": after the first model each step re-measures a direction beside its
        # trial (two solves a step on one worker), so a step can be killed in its middle.
        return dict(common, optimizer="gauss-newton", optimizer_options={"mode": "refresh"})
    return dict(common, optimizer="adam", lr=0.2)


if __name__ == "__main__":
    variant, checkpoint, history, markers, kill_at, every = sys.argv[1:7]
    res = fz.minimize(make_problem(markers, int(kill_at)), np.zeros(5), estimator(variant),
                      checkpoint=checkpoint, checkpoint_every=int(every), history=history,
                      **kwargs(variant))
    print(res.status, res.nit, flush=True)
