"""Checkpoints: atomic writes, no pickles, exact resumption after SIGKILL and SIGTERM, and
refusal of a checkpoint that does not match the run."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

import fg2u_zo as fz
from fg2u_zo.outer.checkpoint import (Checkpoint, generator_state, read_checkpoint,
                                write_checkpoint)
from fg2u_zo.testing import RidgeHyperproblem

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CHILD = os.path.join(DATA, "ckpt_child.py")
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _load_child():
    spec = importlib.util.spec_from_file_location("ckpt_child", CHILD)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


child = _load_child()


@pytest.fixture(scope="module")
def uninterrupted():
    """The reference: the child's run, start to end, in this process."""
    return fz.minimize(child.make_problem(), np.zeros(5), child.estimator(), **child.KWARGS)


def _start_child(tmp_path, seconds, every):
    ckpt, history = tmp_path / "run.ckpt", tmp_path / "run.jsonl"
    log = open(tmp_path / "child.log", "w")
    proc = subprocess.Popen(
        [sys.executable, CHILD, str(ckpt), str(history), str(seconds), str(every)],
        stdout=log, stderr=subprocess.STDOUT)
    return proc, ckpt, history, log


def _wait_for(predicate, proc, timeout, what, tmp_path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.kill()
    raise AssertionError(f"child never {what}; log:\n{(tmp_path / 'child.log').read_text()}")


def _saved_step(path):
    try:
        return read_checkpoint(path).step
    except fz.CheckpointError:  # not written yet
        return -1


def _history_steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


# -- exact resumption across processes ---------------------------------------------------
@posix_only
@pytest.mark.timeout(120)
def test_sigkill_then_resume_is_bitwise_identical(tmp_path, uninterrupted):
    proc, ckpt, history, log = _start_child(tmp_path, seconds=0.03, every=1)
    try:
        _wait_for(lambda: _saved_step(ckpt) >= 3, proc, 90, "wrote its 3rd checkpoint",
                  tmp_path)
        proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: a real crash
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        log.close()
    killed_at = read_checkpoint(ckpt)
    assert 3 <= killed_at.step < child.STEPS and killed_at.status == "running"

    res = fz.resume(ckpt, child.make_problem(), progress=False)
    assert res.phi.tobytes() == uninterrupted.phi.tobytes()
    assert res.nit == child.STEPS
    # The JSONL: each step exactly once, whatever the child had written past the checkpoint.
    assert _history_steps(history) == list(range(child.STEPS))
    assert [r.value for r in res.history] == [r.value for r in uninterrupted.history]


@posix_only
@pytest.mark.timeout(120)
def test_sigterm_writes_a_final_checkpoint(tmp_path, uninterrupted):
    # checkpoint_every larger than the run: the only checkpoint is the one SIGTERM writes.
    proc, ckpt, history, log = _start_child(tmp_path, seconds=0.03, every=1000)
    try:
        _wait_for(lambda: history.exists() and len(history.read_text().splitlines()) >= 3,
                  proc, 90, "wrote 3 history lines", tmp_path)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 143, (tmp_path / "child.log").read_text()
    finally:
        log.close()
    saved = read_checkpoint(ckpt)
    assert saved.status == "interrupted" and "SIGTERM" in saved.message
    assert 3 <= saved.step < child.STEPS
    assert saved.history_lines == saved.step == len(_history_steps(history))
    assert "sigterm" in (tmp_path / "child.log").read_text()

    res = fz.resume(ckpt, child.make_problem(), progress=False)
    assert res.phi.tobytes() == uninterrupted.phi.tobytes()
    assert _history_steps(history) == list(range(child.STEPS))


@pytest.mark.timeout(60)
def test_resume_can_lengthen_a_finished_run(tmp_path):
    problem = RidgeHyperproblem().problem()
    est = fz.FG2UZO(num_directions=4, step=1e-6)
    kwargs = dict(lr=0.1, rng=0, progress=False)
    full = fz.minimize(problem, np.zeros(5), est, steps=9, **kwargs)
    fz.minimize(problem, np.zeros(5), est, steps=5, checkpoint=tmp_path / "a.ckpt",
                history=tmp_path / "a.jsonl", **kwargs)
    more = fz.resume(tmp_path / "a.ckpt", problem, steps=9, progress=False)
    assert more.phi.tobytes() == full.phi.tobytes()
    assert more.nit == 9 and [r.step for r in more.history] == list(range(9))
    assert _history_steps(tmp_path / "a.jsonl") == list(range(9))
    # minimize(resume=True) with the same configuration is the same continuation.
    again = fz.minimize(problem, np.zeros(5), est, steps=9, checkpoint=tmp_path / "a.ckpt",
                        resume=True, **kwargs)
    assert again.phi.tobytes() == full.phi.tobytes()


@pytest.mark.timeout(60)
def test_resume_auto_starts_fresh_without_a_file(tmp_path):
    problem = RidgeHyperproblem().problem()
    res = fz.minimize(problem, np.zeros(5), fz.FG2UZO(num_directions=2, step=1e-6), steps=3,
                      checkpoint=tmp_path / "new.ckpt", resume="auto", progress=False)
    assert res.nit == 3 and read_checkpoint(tmp_path / "new.ckpt").status == "finished"


# -- mismatches --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "run.ckpt"
    fz.minimize(RidgeHyperproblem().problem(), np.zeros(5),
                fz.FG2UZO(num_directions=4, step=1e-6), lr=0.1, steps=3, rng=0,
                bounds=(-3, 3), checkpoint=path, progress=False)
    return path


@pytest.mark.parametrize("change, message", [
    ({"estimator": fz.FG2UZO(num_directions=8, step=1e-6)},
     "num_directions: checkpoint has 4, this run has 8"),
    ({"estimator": fz.BlackBoxES(num_directions=4, step=1e-6)},
     "name: checkpoint has 'FG2UZO', this run has 'BlackBoxES'"),
    ({"optimizer": "sgd"}, "optimizer.name: checkpoint has 'torch.optim:Adam'"),
    ({"lr": 0.5}, r"lr: checkpoint has 0.1, this run has 0.5"),
    ({"bounds": (-2, 2)}, r"bounds \(lower\)"),
    ({"transform": "log", "bounds": (-3, 3)}, "transform"),
])
def test_mismatched_configuration_is_refused(saved_run, change, message):
    kwargs = dict(estimator=fz.FG2UZO(num_directions=4, step=1e-6), lr=0.1, steps=3,
                  bounds=(-3, 3), progress=False)
    kwargs.update(change)
    phi0 = np.ones(5) if change.get("transform") == "log" else np.zeros(5)
    with pytest.raises(fz.CheckpointError, match=message):
        fz.minimize(RidgeHyperproblem().problem(), phi0, checkpoint=saved_run, resume=True,
                    **kwargs)


def test_resume_with_another_estimator_or_size_is_refused(saved_run):
    problem = RidgeHyperproblem().problem()
    with pytest.raises(fz.CheckpointError, match="num_directions"):
        fz.resume(saved_run, problem, estimator=fz.FG2UZO(num_directions=16, step=1e-6))
    small = RidgeHyperproblem(num_features=3).problem()
    with pytest.raises(fz.CheckpointError, match="num_params: checkpoint has 5, the problem "
                                                 "has 3"):
        fz.resume(saved_run, small)


def test_existing_checkpoint_is_never_overwritten_silently(saved_run):
    before = saved_run.read_bytes()
    with pytest.raises(fz.CheckpointError, match="already exists.*resume=True"):
        fz.minimize(RidgeHyperproblem().problem(), np.zeros(5), fz.FG2UZO(), steps=2,
                    checkpoint=saved_run, progress=False)
    assert saved_run.read_bytes() == before


def test_resume_true_needs_an_existing_file(tmp_path):
    with pytest.raises(fz.CheckpointError, match="does not exist"):
        fz.minimize(RidgeHyperproblem().problem(), np.zeros(5), fz.FG2UZO(), steps=2,
                    checkpoint=tmp_path / "none.ckpt", resume=True)


@pytest.mark.timeout(30)
def test_resume_asks_for_what_a_checkpoint_cannot_hold(tmp_path):
    ridge = RidgeHyperproblem()
    problem = ridge.problem()
    est = fz.FG2UZO(num_directions=2, step=1e-6)
    path = tmp_path / "phases.ckpt"
    fz.minimize(problem, np.zeros(5), progress=False, checkpoint=path, phases=[
        fz.Phase(steps=2, estimator=est, solver=ridge.inner), fz.Phase(steps=2, estimator=est)])
    with pytest.raises(fz.CheckpointError, match="phases="):
        fz.resume(path, problem)
    path = tmp_path / "schedule.ckpt"
    fz.minimize(problem, np.zeros(5), est, steps=2, schedule=lambda k, n: 1.0,
                checkpoint=path, progress=False)
    with pytest.raises(fz.CheckpointError, match="schedule="):
        fz.resume(path, problem)


# -- the file itself ---------------------------------------------------------------------
def _checkpoint(step=3):
    return Checkpoint(phi=np.array([1.0, 2.0]), z=np.array([0.5, -0.25]),
                      lower=np.array([-np.inf, 0.0]), upper=np.array([np.inf, 5.0]),
                      optimizer_state={"state": {0: {"step": torch.tensor(3.0)}},
                                       "param_groups": [{"lr": 0.1, "params": [0]}]},
                      rng_state=generator_state(np.random.default_rng(5)), step=step,
                      phase=0, step_in_phase=step, totals={"nfev": 10, "solver_time": 0.5,
                                                           "wall_time": 1.0})


def test_round_trip_without_pickles(tmp_path):
    path = write_checkpoint(tmp_path / "c.ckpt", _checkpoint())
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["arrays.npz", "meta.json", "optimizer.pt"]
        meta = json.loads(zf.read("meta.json"))  # strict JSON: no NaN/Infinity tokens
    assert meta["format_version"] == 1 and meta["step"] == 3
    back = read_checkpoint(path)
    np.testing.assert_array_equal(back.upper, [np.inf, 5.0])
    assert back.optimizer_state["state"][0]["step"].item() == 3.0
    assert back.generator().random() == np.random.default_rng(5).random()
    for name in ("MT19937", "Philox", "SFC64"):
        rng = np.random.Generator(getattr(np.random, name)(11))
        ck = _checkpoint()
        ck.rng_state = generator_state(rng)
        back = read_checkpoint(write_checkpoint(tmp_path / f"{name}.ckpt", ck))
        assert back.generator().random() == rng.random()


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = write_checkpoint(tmp_path / "c.ckpt", _checkpoint(step=3))

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(path, _checkpoint(step=4))
    monkeypatch.undo()
    assert read_checkpoint(path).step == 3
    assert os.listdir(tmp_path) == ["c.ckpt"]  # no temporary file left behind


def test_unreadable_checkpoints(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a zip")
    with pytest.raises(fz.CheckpointError, match="not a readable"):
        read_checkpoint(bad)
    with pytest.raises(fz.CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")
    path = write_checkpoint(tmp_path / "new.ckpt", _checkpoint())
    with zipfile.ZipFile(path) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    meta = json.loads(entries["meta.json"])
    meta["format_version"] = 99
    entries["meta.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    with pytest.raises(fz.CheckpointError, match="format 99.*upgrade"):
        read_checkpoint(path)


def test_optimizer_state_is_loaded_with_weights_only(tmp_path, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    read_checkpoint(write_checkpoint(tmp_path / "c.ckpt", _checkpoint()))
    assert calls == [True]
