"""Ask/tell: a run whose solves a scheduler of the user's runs gives, bit for bit, the
result of fz.minimize with the same seed; answers come in any order, failures are told,
a duplicate or unknown answer is refused; a driver that crashed resumes from the
checkpoint and asks again only for what it was not told."""

import numpy as np
import pytest
import torch

import fg2u_zo as fz
from fg2u_zo.testing import RidgeHyperproblem

RIDGE = RidgeHyperproblem()


def fails_at(phi):
    """Where the test's solver fails: deterministic regions of phi (the first is crossed
    by some perturbed points of the first steps, never by a base point)."""
    return 0.0 < phi[0] < 3e-6 or 0.05 < phi[1] < 0.08


def solver(phi, *, seed=None):
    if fails_at(phi):
        raise RuntimeError("no solution in this region")
    return RIDGE.inner(phi)


def problem():
    return fz.BilevelProblem(inner=solver, outer=RIDGE.outer, num_params=5)


def clean():
    """The ridge problem with a solver that never fails."""
    return RIDGE.problem()


def drive(opt, rng, lose=()):
    """A scheduler: answers each round in a shuffled order, tells a failure where the
    solver raises, and tells one answer twice (which must be refused)."""
    duplicates = 0
    while not opt.done:
        batch = opt.ask()
        order = rng.permutation(len(batch))
        for k in order:
            e = batch[k]
            try:
                out = e.solve()
            except RuntimeError as exc:
                opt.tell(e.id, failure=exc)
                continue
            if e.id in lose:
                continue
            opt.tell(e.id, out)
        if batch and not opt.done and duplicates < 1:
            with pytest.raises(fz.FG2UValueError, match="was already told|not a solve of"):
                opt.tell(batch[0].id, np.zeros(5))
            duplicates += 1
    return opt.result()


CASES = {
    "gauss-newton": dict(estimator=fz.FG2UZO(scheme="forward"), optimizer="gauss-newton",
                         steps=8),
    "adam-auto-step": dict(estimator=fz.FG2UZO(num_directions=4), lr=0.1, steps=5),
    "multistart+phases": dict(
        estimator=fz.FG2UZO(num_directions=2, step=1e-6), optimizer="Rprop", lr=0.05,
        phases=[fz.Phase(steps=4, until=fz.Converged(xtol=1e-2)), fz.Phase(steps=4)],
        multistart=fz.MultiStart(num_starts=6, num_local=3)),
}


@pytest.mark.filterwarnings("ignore::fg2u_zo.FG2UWarning")  # the multi-start's tie warning
@pytest.mark.parametrize("name", sorted(CASES))
def test_ask_tell_is_bitwise_minimize(name):
    kwargs = dict(CASES[name])
    estimator = kwargs.pop("estimator")
    phi0 = np.zeros(5) if "multistart" not in kwargs else None
    common = dict(rng=3, bounds=(-1.0, 1.0), **kwargs)
    with fz.Evaluator("sequential", max_retries=0) as ev:
        reference = fz.minimize(problem(), phi0, estimator, evaluator=ev, workers=4,
                                progress=False, **common)
    opt = fz.AskTell(problem(), phi0, estimator, workers=4, **common)
    res = drive(opt, np.random.default_rng(1))
    assert res.phi.tobytes() == reference.phi.tobytes()
    assert res.value == reference.value
    assert res.groups == reference.groups
    assert res.nfev == reference.nfev and res.failures == reference.failures
    assert [r.value for r in res.history] == [r.value for r in reference.history]
    if name == "adam-auto-step":
        assert res.failures  # the failing region was crossed: told failures count


def test_unknown_and_malformed_answers_are_refused():
    opt = fz.AskTell(clean(), np.zeros(5), fz.FG2UZO(num_directions=2, step=1e-6),
                     steps=2, rng=0)
    batch = opt.ask()
    assert opt.ask() == batch or [e.id for e in opt.ask()] == [e.id for e in batch]
    with pytest.raises(fz.FG2UValueError, match="not a solve of the current round"):
        opt.tell("99.0", np.zeros(5))
    with pytest.raises(fz.FG2UTypeError, match="either the output or failure"):
        opt.tell(batch[0].id)
    with pytest.raises(fz.FG2UValueError, match="AskTell takes no `n_jobs`"):
        fz.AskTell(clean(), np.zeros(5), fz.FG2UZO(), n_jobs=2)
    with pytest.raises(fz.FG2UValueError, match="not over"):
        opt.result()
    # A NaN output is a failure of kind "nonfinite", as an Evaluator would record it.
    opt.tell({e.id: e.solve() for e in batch})
    nxt = opt.ask()
    opt.tell(nxt[0].id, np.full(5, np.nan))
    for e in nxt[1:]:
        opt.tell(e.id, e.solve())
    while not opt.done:
        opt.tell({e.id: e.solve() for e in opt.ask()})
    assert opt.result().failures == {"nonfinite": 1}


def test_each_evaluation_says_what_to_run():
    opt = fz.AskTell(problem(), np.zeros(5), fz.FG2UZO(num_directions=2, step=1e-6),
                     optimizer="adam", steps=1, rng=0)
    (base,) = opt.ask()
    assert base.label == "base" and base.run == 0 and base.phase == 0
    assert base.kwargs == {"seed": base.seed} and isinstance(base.seed, int)
    assert base.phi.tolist() == [0.0] * 5 and base.solver is solver
    opt.tell(base.id, base.solve())
    batch = opt.ask()
    assert [e.label for e in batch] == ["directions"] * 4
    assert len({e.id for e in batch}) == 4


@pytest.mark.timeout(120)
def test_a_crashed_driver_resumes_and_asks_only_what_it_was_not_told(tmp_path):
    estimator = fz.FG2UZO(num_directions=3, step=1e-6)
    common = dict(lr=0.1, steps=4, rng=2, bounds=(-1.0, 1.0))
    reference = fz.minimize(clean(), np.zeros(5), estimator, progress=False, **common)
    ckpt = tmp_path / "run.ckpt"
    opt = fz.AskTell(clean(), np.zeros(5), estimator, checkpoint=ckpt, **common)
    told = 0
    # Two rounds, then half of a third, then the driver dies (its object is dropped
    # without close(): a crash).
    for _ in range(2):
        opt.tell({e.id: e.solve() for e in opt.ask()})
    third = opt.ask()
    for e in third[: len(third) // 2]:
        opt.tell(e.id, e.solve())
        told += 1
    asked_again = []
    opt._prepared.release()  # what the death of the process does to the lock
    del opt
    opt = fz.AskTell(clean(), np.zeros(5), estimator, checkpoint=ckpt, resume="auto",
                     **common)
    while not opt.done:
        batch = opt.ask()
        asked_again.append(len(batch))
        opt.tell({e.id: e.solve() for e in batch})
    res = opt.result()
    assert res.phi.tobytes() == reference.phi.tobytes()
    # The told answers of the interrupted round were journaled and not asked again.
    assert res.nfev_replayed >= told
    assert res.nfev + res.nfev_replayed == reference.nfev


def test_a_second_run_on_one_checkpoint_is_refused(tmp_path):
    # Issue 21, item 1: two runs on one checkpoint both ran and overwrote each other.
    ckpt = tmp_path / "run.ckpt"
    estimator = fz.FG2UZO(num_directions=2, step=1e-6)
    first = fz.AskTell(clean(), np.zeros(5), estimator, steps=3, rng=0, checkpoint=ckpt)
    with pytest.raises(fz.CheckpointError, match="in use by another run.*pid"):
        fz.minimize(clean(), np.zeros(5), estimator, steps=3, rng=0, checkpoint=ckpt,
                    resume="auto", progress=False)
    with pytest.raises(fz.CheckpointError, match="in use by another run"):
        fz.resume(ckpt, clean(), progress=False)
    first.close()
    res = fz.resume(ckpt, clean(), progress=False)   # free again
    assert res.nit == 3


def test_asktell_with_torch_exact_path_runs_in_process():
    # The exact path asks only for the final value: jvps run in this process.
    quad = fz.testing.UnrolledQuadratic(num_params=3, steps=10)
    opt = fz.AskTell(quad.problem(), np.zeros(3), fz.FG2U(num_directions=3), lr=0.1,
                     optimizer="adam", steps=3, rng=0)
    asked = []
    while not opt.done:
        batch = opt.ask()
        if batch:
            asked.append([e.label for e in batch])
        opt.tell({e.id: e.solve() for e in batch})
    assert asked == [["final value"]]
    ref = fz.minimize(quad.problem(), np.zeros(3), fz.FG2U(num_directions=3), lr=0.1,
                      optimizer="adam", steps=3, rng=0, progress=False)
    assert opt.result().phi.tobytes() == ref.phi.tobytes()
    assert torch.is_tensor(torch.as_tensor(opt.result().phi))
