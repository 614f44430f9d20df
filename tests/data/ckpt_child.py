"""A run that checkpoints as it goes, for the kill/resume tests of test_checkpoint.py.

    python ckpt_child.py CHECKPOINT HISTORY SECONDS_PER_SOLVE CHECKPOINT_EVERY

``make_problem`` and ``KWARGS`` are imported by the test too, so the interrupted run,
its resumption and the uninterrupted reference are the same run.
"""

import sys

import numpy as np

import fg2u_zo as fz
from fg2u_zo.testing import slow_ridge_problem

STEPS = 12
KWARGS = dict(lr=0.2, steps=STEPS, rng=7, bounds=(-3.0, 3.0), schedule="cosine",
              progress=False)


# The tests build the same problem from this name.
make_problem = slow_ridge_problem


def estimator():
    # step="auto": the noise estimate is part of the state that must survive the kill.
    return fz.FG2UZO(num_directions=4, step="auto")


if __name__ == "__main__":
    checkpoint, history, seconds, every = sys.argv[1:5]
    res = fz.minimize(make_problem(float(seconds)), np.zeros(5), estimator(),
                      checkpoint=checkpoint, checkpoint_every=int(every), history=history,
                      **KWARGS)
    print(res.status, res.nit, flush=True)
    sys.exit(143 if res.status == "sigterm" else 0)
