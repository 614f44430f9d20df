"""A run driven by a stepper written here, for the kill/resume tests of test_steppers.py.

    python stepper_child.py CHECKPOINT HISTORY SECONDS_PER_SOLVE

``ToyDescent``, ``make_problem`` and ``KWARGS`` are imported by the test too, so the
interrupted run, its resumption and the uninterrupted reference are the same run.
"""

import sys
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

import fg2u_zo as fz
from fg2u_zo.testing import slow_ridge_problem

STEPS = 12
KWARGS = dict(optimizer="toy-descent", steps=STEPS, rng=5, bounds=(-3.0, 3.0),
              progress=False)


@dataclass(frozen=True)
class ToyDescent(fz.Stepper):
    """Gradient descent with a trial solve: accept and lengthen the step if F went down,
    else stay and halve it. Its state: the step length, counters (JSON) and the last
    gradient (an array)."""

    step_size: float = 0.5

    name: ClassVar[str] = "toy-descent"
    extras: ClassVar[frozenset] = frozenset({"estimate", "transform", "problem", "rng"})
    uses_lr: ClassVar[bool] = False

    def config(self):
        return {"name": self.name, "step_size": self.step_size}

    def init(self, z0, **extra):
        return fz.StepperState(arrays={"last_grad": np.zeros_like(z0)},
                               data={"count": 0, "accepted": 0, "step": self.step_size})

    def update(self, state, *, z, lr, estimate, transform, problem, rng):
        # A plan: it yields the request of its trial solve and is told the reply.
        h = state.data["step"]
        grad = transform.chain(z, estimate.grad)
        trial_z = z - h * grad
        trial_phi = transform.forward(trial_z)
        out = yield fz.solve_points(problem.inner, [trial_phi], rng, label="trial")
        trial = problem.outer_value(out.thetas[0], trial_phi)
        accepted = bool(trial < estimate.value)
        data = {"count": state.data["count"] + 1,
                "accepted": state.data["accepted"] + int(accepted),
                "step": h * 1.5 if accepted else h * 0.5}
        return fz.StepUpdate(
            z=trial_z if accepted else z,
            state=fz.StepperState(arrays={"last_grad": grad.copy()}, data=data),
            phi=transform.forward(z), value=estimate.value, grad=estimate.grad,
            meta_gradient=estimate,
            info={"accepted": accepted, "trial_value": float(trial), "step": h})


fz.register_stepper("toy-descent", ToyDescent, overwrite=True)


# The tests build the same problem from this name.
make_problem = slow_ridge_problem


def estimator():
    return fz.FG2UZO(num_directions=3, step=1e-6)


if __name__ == "__main__":
    checkpoint, history, seconds = sys.argv[1:4]
    res = fz.minimize(make_problem(float(seconds)), np.zeros(5), estimator(),
                      checkpoint=checkpoint, history=history, **KWARGS)
    print(res.status, res.nit, flush=True)
