"""A continuation plus multi-start run on loky, for the kill-at-any-moment test of
test_globalized_resume.py.

    python globalized_child.py CHECKPOINT MARKERS

Runs (or, when CHECKPOINT exists, resumes) the run to its end and prints its phi as
hex bytes. The inner solver writes one marker file into MARKERS per finished solve, so
that the solves of every process together can be counted. ``run`` is imported by the
test too: the killed runs, their resumptions and the uninterrupted reference are the
same run.
"""

import os
import sys
import time

import cloudpickle
import numpy as np
import torch

import fg2u_zo as fz

if __name__ != "__main__":  # imported by the test: its loky workers get it by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

T = np.linspace(0.0, 10.0, 101)
DATA = np.sin(1.3 * T)


class Sine:
    """sin(w t) up to a horizon, in 15 ms (a kill finds solves in flight)."""

    def __init__(self, horizon, markers):
        self.times = T[T <= horizon]
        self.markers = markers

    def __call__(self, phi):
        time.sleep(0.015)
        theta = np.sin(phi[0] * self.times)
        if self.markers is not None:
            fd, _ = _marker(self.markers)
            os.close(fd)
        return theta


def _marker(folder):
    import tempfile

    return tempfile.mkstemp(dir=folder, prefix="solve-")


def build(markers):
    def at(horizon):
        keep = T <= horizon
        data = torch.as_tensor(DATA[keep])
        return fz.BilevelProblem(inner=Sine(horizon, markers), num_params=1,
                                 outer=lambda theta, phi: ((theta - data) ** 2).mean())
    return at


def run(checkpoint=None, markers=None, backend="loky"):
    at = build(markers)
    horizons = fz.horizon_schedule(T[1:])
    phases = fz.horizon_phases(at, horizons, steps=40, stop=fz.Converged(xtol=1e-6))
    # One solve per task: at most one solve per worker is in flight when a kill comes.
    with fz.Evaluator(backend, n_jobs=2, batch_size=1) as ev:
        return fz.multistart(at(horizons[-1]), (0.2, 3.0),
                             fz.FG2UZO(num_directions=1, step=1e-6), phases=phases,
                             num_starts=8, num_local=3, optimizer="Rprop", lr=0.05, rng=5,
                             evaluator=ev, checkpoint=checkpoint, resume="auto",
                             progress=False)


if __name__ == "__main__":
    checkpoint, markers = sys.argv[1:3]
    res = run(checkpoint, markers)
    print(res.phi.tobytes().hex(), res.nfev, res.nfev_replayed, flush=True)
