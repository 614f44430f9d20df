"""The stepper protocol as the run loop drives it: a stepper written in a test runs through
fz.minimize with the extras it declares, checkpoints its own state, survives SIGKILL and
resumes bit for bit; the registry resolves names, lazily, with suggestions."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

import fg2u_zo as fz
from _process_checks import load_child
from fg2u_zo.persist.checkpoint import read_checkpoint
from fg2u_zo.outer.steppers import get_stepper, make_stepper, register_stepper
from fg2u_zo.outer.steppers.torch_optim import TorchOptimizer
from fg2u_zo.testing import RidgeHyperproblem

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CHILD = os.path.join(DATA, "stepper_child.py")


child = load_child(CHILD)


@pytest.fixture(scope="module")
def uninterrupted():
    return fz.minimize(child.make_problem(), np.zeros(5), child.estimator(), **child.KWARGS)


# -- a stepper written here, through the whole run ---------------------------------------
def test_toy_stepper_gets_its_extras_and_its_solves_are_counted(tmp_path, uninterrupted):
    res = uninterrupted
    ridge = RidgeHyperproblem()
    start = ridge.problem().outer_value(ridge.inner(np.zeros(5)), np.zeros(5))
    # It only ever accepts a trial that lowers F (the solver is deterministic): the values
    # never go up, and fall at every accepted step.
    values = [r.value for r in res.history] + [res.value]
    assert values[0] == start and values[-1] < start
    for before, after, r in zip(values, values[1:], res.history):
        assert (after < before) if r.info["accepted"] else (after == before)
    # Per step: 1 + 2b solves for the central estimate, 1 trial solve the stepper asks for;
    # plus the final value.
    per_step = 1 + 2 * 3 + 1
    assert [r.nfev for r in res.history] == [per_step] * child.STEPS
    assert res.nfev == child.STEPS * per_step + 1
    accepted = [r.info["accepted"] for r in res.history]
    assert any(accepted) and all(isinstance(a, bool) for a in accepted)
    # A rejected trial leaves phi where it was.
    for before, after, ok in zip(res.history, res.history[1:], accepted):
        assert np.array_equal(before.phi, after.phi) != ok
    # The stepper's info goes into the JSONL history.
    path = tmp_path / "run.jsonl"
    fz.minimize(child.make_problem(), np.zeros(5), child.estimator(), history=path,
                **{**child.KWARGS, "steps": 3})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [set(line["info"]) for line in lines] == [{"accepted", "trial_value", "step"}] * 3
    assert fz.read_history(path)[0].info == lines[0]["info"]


def _saved_step(path):
    try:
        return read_checkpoint(path).step
    except fz.CheckpointError:
        return -1


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.timeout(120)
def test_toy_stepper_sigkill_then_resume_is_bitwise_identical(tmp_path, uninterrupted):
    ckpt, history = tmp_path / "run.ckpt", tmp_path / "run.jsonl"
    with open(tmp_path / "child.log", "w") as log:
        proc = subprocess.Popen([sys.executable, CHILD, str(ckpt), str(history), "0.03"],
                                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while _saved_step(ckpt) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    killed = read_checkpoint(ckpt)
    assert 3 <= killed.step < child.STEPS, (tmp_path / "child.log").read_text()
    # The stepper's own state is in the checkpoint, as JSON and arrays.
    assert killed.config["optimizer"] == {"name": "toy-descent", "step_size": 0.5}
    assert killed.stepper_state.data["count"] == killed.step
    assert killed.stepper_state.arrays["last_grad"].shape == (5,)

    # Rebuilt through the registry from the checkpoint's configuration.
    res = fz.resume(ckpt, child.make_problem(), progress=False)
    assert res.phi.tobytes() == uninterrupted.phi.tobytes()
    # Solves of the killed step that had finished are taken from the journal, not redone.
    assert res.nit == child.STEPS and res.nfev + res.nfev_replayed == uninterrupted.nfev
    assert [r.info for r in res.history] == [r.info for r in uninterrupted.history]
    assert [json.loads(line)["step"] for line in history.read_text().splitlines()] == list(
        range(child.STEPS))


def test_resume_with_an_unregistered_stepper_asks_for_it(tmp_path):
    @dataclass(frozen=True)
    class Unregistered(child.ToyDescent):
        name: ClassVar[str] = "not-registered-anywhere"

    problem = child.make_problem()
    path = tmp_path / "u.ckpt"
    fz.minimize(problem, np.zeros(5), child.estimator(), optimizer=Unregistered(),
                steps=2, rng=0, checkpoint=path, progress=False)
    with pytest.raises(fz.CheckpointError, match="not-registered-anywhere.*optimizer="):
        fz.resume(path, problem, progress=False)
    res = fz.resume(path, problem, optimizer=Unregistered(), steps=3, progress=False)
    assert res.nit == 3
    with pytest.raises(fz.CheckpointError, match="step_size: checkpoint has 0.5"):
        fz.resume(path, problem, optimizer=Unregistered(step_size=0.1), steps=4)


def test_sketch_is_kept_only_when_the_stepper_asks():
    seen = []

    @dataclass(frozen=True)
    class Peek(fz.Stepper):
        wants_sketch: bool = False
        name: ClassVar[str] = "peek"

        @property
        def extras(self):
            return frozenset({"estimate", "sketch"} if self.wants_sketch else {"estimate"})

        def init(self, z0, **extra):
            return fz.StepperState()

        def update(self, state, *, z, lr, estimate):
            seen.append(estimate.sketch)
            return fz.StepUpdate(z=z - lr * estimate.grad, state=state, phi=z,
                                 value=estimate.value, grad=estimate.grad,
                                 meta_gradient=estimate)

    problem = RidgeHyperproblem().problem()
    for wants in (False, True):
        seen.clear()
        fz.minimize(problem, np.zeros(5), fz.FG2UZO(num_directions=3, step=1e-6),
                    optimizer=Peek(wants), steps=1, rng=0, progress=False)
        assert (seen[0] is not None) == wants
    assert seen[0].Y.shape[1] == 3  # one column per direction
    # An estimator that cannot keep a sketch is refused before any solve.
    from fg2u_zo.testing import UnrolledQuadratic

    uq = UnrolledQuadratic(num_params=3, steps=5)
    with pytest.raises(fz.FG2UValueError, match="phase 0: .*keep their sketch.*RGU"):
        fz.minimize(uq.problem(), np.zeros(3), fz.RGU(),
                    optimizer=Peek(True), steps=1, progress=False)


def test_torch_optimizer_stepper_equals_a_torch_loop():
    """TorchOptimizer through minimize = the same optimizer object stepped by hand."""
    ridge = RidgeHyperproblem()
    problem = ridge.problem()
    est = fz.FG2UZO(num_directions=4, step=1e-6)
    res = fz.minimize(problem, np.zeros(5), est, optimizer=torch.optim.Adam,
                      optimizer_options={"betas": (0.8, 0.95)}, lr=0.1, steps=5, rng=2,
                      progress=False)
    rng = np.random.default_rng(2)
    z = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([z], lr=0.1, betas=(0.8, 0.95))
    for _ in range(5):
        g = est.estimate(problem, z.detach().numpy().copy(), rng=rng)
        z.grad = torch.from_numpy(g.grad.copy())
        opt.step()
    assert res.phi.tobytes() == z.detach().numpy().tobytes()


# -- the registry ------------------------------------------------------------------------
@pytest.mark.parametrize("spec, name", [
    ("adam", "torch.optim:Adam"), ("SGD", "torch.optim:SGD"), ("rprop", "torch.optim:Rprop"),
    ("RMSprop", "torch.optim:RMSprop"), ("torch.optim:AdamW", "torch.optim:AdamW"),
    (torch.optim.Adagrad, "torch.optim:Adagrad"),
])
def test_names_and_classes_resolve(spec, name):
    assert make_stepper(spec).config()["name"] == name


def test_a_stepper_instance_is_used_as_is():
    toy = child.ToyDescent(step_size=0.25)
    assert make_stepper(toy) is toy
    with pytest.raises(fz.FG2UValueError, match="carries its own configuration"):
        make_stepper(toy, {"step_size": 1.0})


@pytest.mark.parametrize("name, suggestion", [
    ("Rpropp", "Rprop"), ("adamm", "Adam"), ("gauss-newtn", "gauss-newton"),
])
def test_unknown_names_suggest_the_closest(name, suggestion):
    # Issue 15 item 16: no "did you mean" for optimizer names.
    with pytest.raises(fz.FG2UValueError, match=f"did you mean '{suggestion}'"):
        fz.minimize(RidgeHyperproblem().problem(), np.zeros(5), fz.FG2UZO(), optimizer=name,
                    steps=1, progress=False)


def test_lazy_registration_imports_only_when_asked():
    register_stepper("broken-lazy", "no_such_module_anywhere:Stepper", overwrite=True)
    with pytest.raises(fz.FG2UValueError, match="cannot be imported"):
        get_stepper("broken-lazy")
    with pytest.raises(fz.FG2UValueError, match="already registered"):
        register_stepper("broken-lazy", "other_module:Other")
    # "gauss-newton" is registered without importing its module.
    code = ("import sys, fg2u_zo.outer.steppers as s; "
            "assert 'fg2u_zo.outer.steppers.gauss_newton' not in sys.modules; "
            "s.get_stepper('gauss-newton'); "
            "assert 'fg2u_zo.outer.steppers.gauss_newton' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_options_errors_name_the_fix():
    with pytest.raises(fz.FG2UValueError, match="minimize\\(lr=...\\)"):
        TorchOptimizer(torch.optim.Adam, {"lr": 0.1})
    with pytest.raises(fz.FG2UTypeError, match="momentum_typo"):
        make_stepper("sgd", {"momentum_typo": 0.9})


@dataclass(frozen=True)
class _StopsAfter(fz.Stepper):
    """A stepper that moves z by -0.1 g and says it converged after ``after`` steps of a
    phase."""

    after: int = 3

    name: ClassVar[str] = "stops-after"
    extras: ClassVar[frozenset] = frozenset({"estimate", "transform"})
    uses_lr: ClassVar[bool] = False

    def init(self, z0, **extra):
        return fz.StepperState(data={"count": 0})

    def update(self, state, *, z, lr, estimate, transform):
        count = state.data["count"] + 1
        return fz.StepUpdate(z=z - 0.1 * transform.chain(z, estimate.grad),
                             state=fz.StepperState(data={"count": count}),
                             phi=transform.forward(z), value=estimate.value,
                             converged="counted enough" if count >= self.after else None)


def test_a_stepper_that_converges_ends_its_phase_and_the_run():
    problem = RidgeHyperproblem().problem()
    est = fz.FG2UZO(num_directions=2, step=1e-6)
    res = fz.minimize(problem, np.zeros(5), est, optimizer=_StopsAfter(3), steps=50, rng=0,
                      progress=False)
    assert res.nit == 3 and res.status == "converged" and res.success
    assert "counted enough" in res.message
    # Each phase restarts the stepper, so each ends after its own 3 steps.
    phases = [fz.Phase(steps=50, restart=True), fz.Phase(steps=50, restart=True)]
    res = fz.minimize(problem, np.zeros(5), est, optimizer=_StopsAfter(3), phases=phases,
                      rng=0, progress=False)
    assert [p.steps for p in res.phases] == [3, 3] and res.status == "converged"
