"""Checkpoints: atomic writes, no pickles, exact resumption after SIGKILL and SIGTERM, and
refusal of a checkpoint that does not match the run."""

import dataclasses
import io
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
from _process_checks import load_child
from fg2u_zo.persist.checkpoint import read_checkpoint, write_checkpoint
from fg2u_zo.testing import RidgeHyperproblem

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CHILD = os.path.join(DATA, "ckpt_child.py")
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


child = load_child(CHILD)


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
    kwargs = dict(optimizer="adam", lr=0.1, rng=0, progress=False)
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
                fz.FG2UZO(num_directions=4, step=1e-6), optimizer="adam", lr=0.1, steps=3,
                rng=0, bounds=(-3, 3), checkpoint=path, progress=False)
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
    kwargs = dict(estimator=fz.FG2UZO(num_directions=4, step=1e-6), optimizer="adam",
                  lr=0.1, steps=3, bounds=(-3, 3), progress=False)
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
@pytest.fixture(scope="module")
def adam_run(tmp_path_factory):
    """A finished 4-step Adam run with a history, next to its checkpoint."""
    d = tmp_path_factory.mktemp("adam")
    fz.minimize(RidgeHyperproblem().problem(), np.zeros(5),
                fz.FG2UZO(num_directions=4, step="auto"), optimizer="adam", lr=0.1,
                steps=4, rng=0, bounds=(-3, 3), checkpoint=d / "run.ckpt",
                history=d / "run.jsonl", progress=False)
    return d / "run.ckpt"


def _checkpoint(adam_run, step=3):
    ck = dataclasses.replace(read_checkpoint(adam_run), history_lines=0, history_path=None)
    ck.search.runs[0].step = ck.search.runs[0].step_in_phase = step
    return ck


def test_round_trip_without_pickles(tmp_path, adam_run):
    with zipfile.ZipFile(adam_run) as zf:
        assert sorted(zf.namelist()) == ["arrays.npz", "meta.json"]  # no torch .pt file
        meta = json.loads(zf.read("meta.json"))  # strict JSON: no NaN/Infinity tokens
        with np.load(io.BytesIO(zf.read("arrays.npz")), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    assert meta["format_version"] == 3 and meta["search"]["runs"][0]["step"] == 4
    assert meta["search"]["stage"] == "done" and meta["status"] == "finished"
    assert meta["config"]["optimizer"] == {"name": "torch.optim:Adam", "options": {}}
    assert meta["history"]["path"] == "run.jsonl"  # relative to the checkpoint
    # Adam's state keeps its dtypes: the step counter is float32, the moments float64.
    assert arrays["runs/0/stepper/state.0.step"].dtype == np.float32
    assert arrays["runs/0/stepper/state.0.step"] == 4
    assert arrays["runs/0/stepper/state.0.exp_avg"].dtype == np.float64
    back = read_checkpoint(adam_run)
    assert back.noise is not None and back.search.runs[0].noise_age >= 0  # step="auto"
    np.testing.assert_array_equal(back.upper, np.full(5, 3.0))
    again = read_checkpoint(write_checkpoint(tmp_path / "again.ckpt", back))
    assert again.noise.to_dict() == back.noise.to_dict() or np.isnan(back.noise.noise)
    for name, arr in back.stepper_state.arrays.items():
        assert again.stepper_state.arrays[name].tobytes() == arr.tobytes()
    assert again.stepper_state.data == back.stepper_state.data
    for name in ("MT19937", "Philox", "SFC64"):
        rng = np.random.Generator(getattr(np.random, name)(11))
        ck = _checkpoint(adam_run)
        ck.search.runs[0].rng = np.random.Generator(getattr(np.random, name)(11))
        back = read_checkpoint(write_checkpoint(tmp_path / f"{name}.ckpt", ck))
        assert back.search.runs[0].rng.random() == rng.random()


def test_torch_optimizer_state_round_trip_is_exact():
    from fg2u_zo.outer.steppers.torch_optim import (decode_optimizer_state,
                                                    encode_optimizer_state)

    for cls, options in ((torch.optim.Adam, {"betas": (0.8, 0.9), "amsgrad": True}),
                         (torch.optim.Rprop, {}), (torch.optim.SGD, {"momentum": 0.9}),
                         (torch.optim.ASGD, {})):
        z = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)
        opt = cls([z], lr=0.01, **options)
        for k in range(3):
            z.grad = torch.tensor([1.0, -2.0, 0.5 * k], dtype=torch.float64)
            opt.step()
        state = encode_optimizer_state(opt.state_dict())
        json.dumps(state.data, allow_nan=False)
        back = decode_optimizer_state(state)
        ref = opt.state_dict()
        assert back["param_groups"] == ref["param_groups"]  # tuples stay tuples
        for key, value in ref["state"][0].items():
            if isinstance(value, torch.Tensor):
                assert back["state"][0][key].dtype == value.dtype, (cls, key)
                assert torch.equal(back["state"][0][key], value), (cls, key)
            else:
                assert back["state"][0][key] == value


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, adam_run):
    path = write_checkpoint(tmp_path / "c.ckpt", _checkpoint(adam_run, step=3))

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(path, _checkpoint(adam_run, step=4))
    monkeypatch.undo()
    assert read_checkpoint(path).step == 3
    assert os.listdir(tmp_path) == ["c.ckpt"]  # no temporary file left behind


def test_a_symlink_at_a_temporary_name_is_never_followed(tmp_path, adam_run):
    # Issue 21, item 2: a symlink planted at run.ckpt.tmp had its target overwritten.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    path = tmp_path / "c.ckpt"
    os.symlink(victim, str(path) + ".tmp")
    write_checkpoint(path, _checkpoint(adam_run, step=3))
    assert victim.read_text() == "precious\n" and read_checkpoint(path).step == 3
    # A link at the checkpoint itself is replaced, not written through.
    os.unlink(path)
    os.symlink(victim, path)
    write_checkpoint(path, _checkpoint(adam_run, step=3))
    assert victim.read_text() == "precious\n" and not os.path.islink(path)


def _rewrite(path, edit_meta=None, edit_arrays=None):
    """Rewrite a checkpoint's entries in place (what an attacker or a bad disk does)."""
    with zipfile.ZipFile(path) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    if edit_meta is not None:
        meta = json.loads(entries["meta.json"])
        edit_meta(meta)
        entries["meta.json"] = json.dumps(meta).encode()
    if edit_arrays is not None:
        with np.load(io.BytesIO(entries["arrays.npz"]), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        edit_arrays(arrays)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        entries["arrays.npz"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


def test_unreadable_checkpoints(tmp_path, adam_run):
    bad = tmp_path / "bad.ckpt"
    bad.write_text("not a zip")
    with pytest.raises(fz.CheckpointError, match="not a readable"):
        read_checkpoint(bad)
    with pytest.raises(fz.CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")
    path = write_checkpoint(tmp_path / "new.ckpt", _checkpoint(adam_run))
    _rewrite(path, lambda meta: meta.update(format_version=99))
    with pytest.raises(fz.CheckpointError, match="format 99.*upgrade"):
        read_checkpoint(path)
    _rewrite(path, lambda meta: meta.update(format_version=1))
    with pytest.raises(fz.CheckpointError, match="format 1.*no longer read"):
        read_checkpoint(path)


def test_no_torch_save_or_load(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.save/torch.load must not be used for checkpoints")

    monkeypatch.setattr(torch, "save", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    problem = RidgeHyperproblem().problem()
    est = fz.FG2UZO(num_directions=2, step=1e-6)
    fz.minimize(problem, np.zeros(5), est, optimizer="rprop", steps=2, rng=0,
                checkpoint=tmp_path / "r.ckpt", progress=False)
    assert fz.resume(tmp_path / "r.ckpt", problem, steps=3, progress=False).nit == 3


# -- a checkpoint is data (issue 15, items 1-3) -------------------------------------------
@pytest.fixture
def run_dir(tmp_path):
    """A 4-step run: run.ckpt and its 4-line run.jsonl, in their own directory."""
    d = tmp_path / "runs"
    fz.minimize(RidgeHyperproblem().problem(), np.zeros(5),
                fz.FG2UZO(num_directions=2, step="auto"), optimizer="adam", lr=0.1,
                steps=4, rng=0, checkpoint=d / "run.ckpt", history=d / "run.jsonl",
                progress=False)
    return d


@pytest.mark.parametrize("noise", [
    {"class": "fg2u_zo.outer.history:HistoryWriter", "data": {"path": "VICTIM"}, "age": 0},
    {"type": "fg2u_zo.outer.history:HistoryWriter", "data": {"path": "VICTIM"}, "age": 0},
    {"type": "HistoryWriter", "data": {"path": "VICTIM"}, "age": 0},
    {"type": "NoiseEstimate", "data": {"path": "VICTIM"}, "age": 0},
], ids=["v1-class", "module-path", "other-tag", "unknown-field"])
def test_a_checkpoint_cannot_choose_code_to_run(run_dir, noise):
    # Item 1: meta.json named a class and its arguments, and resume called it (here: a
    # HistoryWriter that empties the file of the attacker's choice).
    victim = run_dir / "victim.txt"
    victim.write_text("precious\n")
    text = json.dumps(noise).replace("VICTIM", str(victim))
    _rewrite(run_dir / "run.ckpt",
             lambda meta: meta["search"]["runs"][0].update(noise=json.loads(text)))
    with pytest.raises(fz.CheckpointError, match="noise"):
        fz.resume(run_dir / "run.ckpt", RidgeHyperproblem().problem(), progress=False)
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["fg2u_zo.cli:main", "fg2u_zo.outer.history:HistoryWriter",
                                  "os:system"])
def test_a_checkpoint_cannot_name_the_stepper_code(run_dir, name):
    def edit(meta):
        meta["config"]["optimizer"] = {"name": name, "options": {"argv": ["run", "x"]}}

    _rewrite(run_dir / "run.ckpt", edit)
    with pytest.raises(fz.CheckpointError, match="not a known stepper"):
        fz.resume(run_dir / "run.ckpt", RidgeHyperproblem().problem(), progress=False)


def test_history_path_in_a_checkpoint_is_never_a_place_to_write(run_dir):
    # Issue 15, item 1: a changed history.path truncated any file on resume; a file of
    # the checkpoint's folder must still be a history.
    victim = run_dir / "victim.txt"
    victim.write_text("line 1\nline 2\nline 3\nline 4\nline 5\n")
    _rewrite(run_dir / "run.ckpt", lambda meta: meta["history"].update(path="victim.txt"))
    with pytest.raises(fz.CheckpointError, match="not an fg2u-zo history"):
        fz.resume(run_dir / "run.ckpt", RidgeHyperproblem().problem(), steps=6,
                  progress=False)
    assert victim.read_text() == "line 1\nline 2\nline 3\nline 4\nline 5\n"


@pytest.mark.parametrize("path", ["../../elsewhere/new/planted.jsonl", "/tmp/abs.jsonl",
                                  "a/../../b.jsonl"])
def test_a_history_path_outside_the_checkpoint_folder_is_refused(run_dir, tmp_path, path):
    # Issue 21, item 3: history.path = "../../elsewhere/new/planted.jsonl" created that
    # folder and file on resume.
    _rewrite(run_dir / "run.ckpt", lambda meta: meta["history"].update(path=path))
    with pytest.raises(fz.CheckpointError, match="`history.path` must be a file name "
                                                 "inside the checkpoint's folder"):
        fz.resume(run_dir / "run.ckpt", RidgeHyperproblem().problem(), steps=6,
                  progress=False)
    assert not (tmp_path / "elsewhere").exists()


def test_a_history_outside_the_folder_is_recorded_not_followed(tmp_path):
    (tmp_path / "ck").mkdir()
    problem = RidgeHyperproblem().problem()
    kwargs = dict(lr=0.1, rng=0, progress=False)
    est = fz.FG2UZO(num_directions=2, step=1e-6)
    fz.minimize(problem, np.zeros(5), est, steps=2, checkpoint=tmp_path / "ck" / "r.ckpt",
                history=tmp_path / "r.jsonl", **kwargs)
    ck = read_checkpoint(tmp_path / "ck" / "r.ckpt")
    assert ck.history_path is None and ck.history_outside == str(tmp_path / "r.jsonl")
    before = (tmp_path / "r.jsonl").read_bytes()
    fz.resume(tmp_path / "ck" / "r.ckpt", problem, steps=3, progress=False)
    assert (tmp_path / "r.jsonl").read_bytes() == before      # not written without asking
    fz.resume(tmp_path / "ck" / "r.ckpt", problem, steps=4, history=tmp_path / "r.jsonl",
              progress=False)
    # Named, it is continued after the lines the checkpoint counts (step 2 ran without it).
    assert _history_steps(tmp_path / "r.jsonl") == [0, 1, 3]


def test_resuming_a_copy_writes_the_copy_history(run_dir, tmp_path):
    # Item 2: the absolute history path was stored, so a copy appended to the original.
    import shutil

    original = (run_dir / "run.jsonl").read_bytes()
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    res = fz.resume(copy / "run.ckpt", RidgeHyperproblem().problem(), steps=6,
                    progress=False)
    assert res.nit == 6
    assert (run_dir / "run.jsonl").read_bytes() == original
    assert _history_steps(copy / "run.jsonl") == list(range(6))
    # The caller may name another history instead.
    res = fz.resume(copy / "run.ckpt", RidgeHyperproblem().problem(), steps=7,
                    history=tmp_path / "other.jsonl", progress=False)
    assert _history_steps(tmp_path / "other.jsonl") == [6]


def _set(path, value):
    def edit(meta):
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        target = meta
        for key in keys[:-1]:
            target = target[key]
        if value is _DELETE:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return edit


_DELETE = object()


R = "search.runs.0."


@pytest.mark.parametrize("field, value, message", [
    (R + "step", "forty", r"`runs\[0\].step` must be an integer"),
    (R + "step", -5, r"`runs\[0\].step` must be >= 0"),
    (R + "step", 4.0, r"`runs\[0\].step` must be an integer"),
    (R + "step", True, r"`runs\[0\].step` must be an integer"),
    (R + "phase", 3, "phase"),
    (R + "step_in_phase", 9, r"`runs\[0\].step_in_phase` and phase must be <= step"),
    (R + "totals", _DELETE, r"`runs\[0\].totals` is missing"),
    (R + "totals.nfev", -1, r"`runs\[0\].totals.nfev` must be >= 0"),
    (R + "totals.solver_time", "fast", r"`runs\[0\].totals.solver_time` must be a number"),
    (R + "status", "hacked", r"`runs\[0\].status` must be null or one of"),
    (R + "window", "x", r"`runs\[0\].window`"),
    (R + "stepper", [], r"`runs\[0\].stepper` must be a JSON object"),
    (R + "rng.bit_generator", "Evil", "`rng` uses bit generator 'Evil'"),
    (R + "rng.state", "x", "`rng` is not a valid PCG64 state"),
    (R + "noise.age", -2, "`noise.age` must be >= 0"),
    (R + "noise.data.nfev", "many", "`noise.data.nfev` must be an integer"),
    ("search.stage", "hacked", "`search.stage` must be one of"),
    ("search.groups", [-1], "`search.groups`"),
    ("history.lines", 40, "`history.lines` must be <= the steps done"),
    ("history.path", 7, "`history.path` must be a string"),
    ("config.phase_steps", [0], "`config.phase_steps`"),
    ("config.transform", [7] * 5, "`config.transform`"),
    ("config.phases", "all", "`config.phases`"),
    ("config.optimizer", _DELETE, "`config.optimizer` is missing"),
    ("status", "hacked", "`status` must be one of"),
    ("num_params", 3, r"`runs\[0\].z` must be a finite float64 array of 3 entries"),
])
def test_malformed_fields_name_the_field_and_write_nothing(run_dir, field, value, message):
    # Item 3: raw KeyError/TypeError, "step": -5 accepted; item 2: the history truncated
    # before the checkpoint was found bad.
    ckpt, history = run_dir / "run.ckpt", run_dir / "run.jsonl"
    with open(history, "a") as fh:  # lines past the checkpoint, as after a kill
        fh.write(history.read_text().splitlines()[-1] + "\n")
    _rewrite(ckpt, _set(field, value))
    before = {p: p.read_bytes() for p in (ckpt, history)}
    with pytest.raises(fz.CheckpointError, match=message):
        fz.resume(ckpt, RidgeHyperproblem().problem(), progress=False)
    with pytest.raises(fz.CheckpointError, match=message):
        fz.minimize(RidgeHyperproblem().problem(), np.zeros(5),
                    fz.FG2UZO(num_directions=2, step="auto"), optimizer="adam", lr=0.1,
                    steps=4, checkpoint=ckpt, history=history, resume=True,
                    progress=False)
    assert {p: p.read_bytes() for p in (ckpt, history)} == before
    assert sorted(os.listdir(run_dir)) == ["run.ckpt", "run.jsonl"]


@pytest.mark.parametrize("array, value, message", [
    ("phi", np.zeros(5), "`phi` must be float64 of shape"),
    ("runs/0/z", np.zeros(3), r"`runs\[0\].z` must be a finite float64 array"),
    ("runs/0/z", np.full(5, np.nan), r"`runs\[0\].z` must be a finite float64 array"),
    ("upper", np.full(5, np.nan), "without NaN"),
    ("lower", np.full(5, 9.0), "`phi` lies outside the bounds"),
    ("runs/0/stepper/state.0.exp_avg", np.zeros(7), "exp_avg.*shape"),
])
def test_malformed_arrays_are_refused(run_dir, array, value, message):
    def edit(arrays):
        arrays[array] = value

    _rewrite(run_dir / "run.ckpt", edit_arrays=edit)
    with pytest.raises(fz.CheckpointError, match=message):
        fz.resume(run_dir / "run.ckpt", RidgeHyperproblem().problem(), progress=False)


def test_cli_resume_of_a_malformed_checkpoint_exits_2(run_dir, capsys):
    from fg2u_zo.cli import main

    _rewrite(run_dir / "run.ckpt", _set(R + "step", "forty"))
    assert main(["resume", str(run_dir / "run.ckpt")]) == 2
    assert "`runs[0].step` must be an integer" in capsys.readouterr().err


def test_resuming_a_finished_run_answers_from_the_checkpoint(tmp_path):
    # Issue 21, item 10: each fz.resume of a finished checkpoint solved the final point
    # again (nfev 61 -> 62 -> 63).
    ridge = RidgeHyperproblem()
    calls = []

    def counted(phi):
        calls.append(1)
        return ridge.inner(phi)

    problem = fz.BilevelProblem(inner=counted, outer=ridge.outer, num_params=5)
    est = fz.FG2UZO(num_directions=2, step=1e-6)
    first = fz.minimize(problem, np.zeros(5), est, steps=3, rng=0, progress=False,
                        checkpoint=tmp_path / "f.ckpt")
    assert len(calls) == first.nfev
    for _ in range(2):
        again = fz.resume(tmp_path / "f.ckpt", problem, progress=False)
        assert again.nfev == first.nfev and again.value == first.value
        assert again.phi.tobytes() == first.phi.tobytes() and again.status == "steps"
    assert len(calls) == first.nfev  # not one solve more
