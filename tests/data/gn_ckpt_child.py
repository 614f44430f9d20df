"""A Gauss-Newton run that checkpoints as it goes, for the kill/resume test of
test_gauss_newton.py.

    python gn_ckpt_child.py CHECKPOINT HISTORY SECONDS_PER_SOLVE

``make_problem``, ``estimator`` and ``KWARGS`` are imported by the test too, so the
interrupted run, its resumption and the uninterrupted reference are the same run.
"""

import sys

import numpy as np

import fg2u_zo as fz
from fg2u_zo.testing import slow_ridge_problem

STEPS = 10
# b = 2 directions per iteration on N = 5: the state holds a growing subspace, the
# noise probe's estimate (step="auto") and the trust radius.
KWARGS = dict(optimizer="gauss-newton", optimizer_options={"num_directions": 2},
              steps=STEPS, rng=11, bounds=(-3.0, 3.0), progress=False)


# The tests build the same problem from this name.
make_problem = slow_ridge_problem


def estimator():
    return fz.FG2UZO(num_directions=2, scheme="forward", step="auto")


if __name__ == "__main__":
    checkpoint, history, seconds = sys.argv[1:4]
    res = fz.minimize(make_problem(float(seconds)), np.zeros(5), estimator(),
                      checkpoint=checkpoint, checkpoint_every=1, history=history, **KWARGS)
    print(res.status, res.nit, flush=True)
