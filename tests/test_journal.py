"""The journal of finished evaluations: the file (append-only, checksummed, a torn or a
foreign journal ignored), the Evaluator answering from it, and a run SIGKILLed in the
middle of a step that, resumed, solves none of that step's finished evaluations again
and ends bit for bit where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import fg2u_zo as fz
from _process_checks import load_child
from fg2u_zo.persist.journal import MAGIC, EvaluationJournal, journal_path
from fg2u_zo.persist.checkpoint import read_checkpoint

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CHILD = os.path.join(DATA, "journal_child.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
posix_only = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")


child = load_child(CHILD)

POSITION = {"checkpoint": "0" * 64}
FINGERPRINT = {"problem": {"callable": "square", "code": "abc"}}


def square(phi, *, warm_start=None, seed=None):
    return np.asarray(phi, dtype=np.float64) ** 2


def ctx(seed=7, warm_start=None):
    """The journal context of a solve passed ``seed`` and ``warm_start``."""
    return fz.Request(square, [], seed=seed, warm_start=warm_start).context(
        {"seed", "warm_start"})


def _journal_with(path, points, seed=7, warm_start=None, tags=None):
    j = EvaluationJournal.create(path, POSITION, FINGERPRINT)
    for k, p in enumerate(points):
        j.record(ctx(seed, warm_start), p, square(p), solver_time=0.25 * (k + 1),
                 attempts=1 + k % 2, tag=("run", 0, k) if tags is None else tags[k])
    j.close()
    return j


POINTS = [np.array([0.1, 0.2, 0.3]), np.array([1.0, -2.0, 3.5]), np.array([1e-300, 7.0, 0.0])]


# -- the file ------------------------------------------------------------------------------
def test_records_round_trip_bit_for_bit(tmp_path):
    path = tmp_path / "r.journal"
    _journal_with(path, POINTS)
    j = EvaluationJournal.open(path, POSITION, FINGERPRINT)
    assert j.replayable == 3
    for k, p in enumerate(POINTS):
        hit = j.lookup(ctx(), p.copy())
        assert hit.theta.tobytes() == square(p).tobytes() and hit.theta.dtype == np.float64
        assert hit.solver_time == 0.25 * (k + 1) and hit.attempts == 1 + k % 2
    # Another seed, another warm start, a point one ulp away: not the same solve.
    assert j.lookup(ctx(seed=8), POINTS[0]) is None
    assert j.lookup(ctx(warm_start=np.ones(3)), POINTS[0]) is None
    assert j.lookup(ctx(), np.nextafter(POINTS[0], 1.0)) is None
    # No pickles: a header frame of JSON, then raw bytes.
    assert path.read_bytes().startswith(MAGIC) and b"pickle" not in path.read_bytes()


def test_a_torn_last_record_is_ignored_and_cut_before_the_next_append(tmp_path):
    path = tmp_path / "t.journal"
    _journal_with(path, POINTS)
    data = path.read_bytes()
    path.write_bytes(data[:-5])  # the process died in the middle of the last write
    j = EvaluationJournal.open(path, POSITION, FINGERPRINT)
    assert j.replayable == 2
    assert j.lookup(ctx(), POINTS[2]) is None and j.lookup(ctx(), POINTS[1]) is not None
    new = np.array([4.0, 5.0, 6.0])
    j.record(ctx(), new, square(new), solver_time=1.0, attempts=1)
    j.close()
    again = EvaluationJournal.open(path, POSITION, FINGERPRINT)
    assert again.replayable == 3  # the torn bytes were cut: the new record is readable
    assert again.lookup(ctx(), new) is not None


def test_a_record_with_a_wrong_checksum_is_ignored(tmp_path):
    path = tmp_path / "c.journal"
    _journal_with(path, POINTS)
    data = bytearray(path.read_bytes())
    # The second record's output bytes: a flipped bit in the middle of the file.
    theta = square(POINTS[1]).tobytes()
    where = bytes(data).index(theta, len(MAGIC))
    data[where + 3] ^= 0x10
    path.write_bytes(bytes(data))
    j = EvaluationJournal.open(path, POSITION, FINGERPRINT)
    assert j.replayable == 2
    assert j.lookup(ctx(), POINTS[1]) is None
    assert j.lookup(ctx(), POINTS[0]) is not None and j.lookup(ctx(), POINTS[2]) is not None


def test_a_journal_of_another_checkpoint_is_refused(tmp_path):
    path = tmp_path / "f.journal"
    _journal_with(path, POINTS)
    other = {"checkpoint": "1" * 64}
    j = EvaluationJournal.open(path, other, FINGERPRINT)
    assert j.replayable == 0 and j.lookup(ctx(), POINTS[0]) is None
    j.close()
    # ... and replaced by an empty journal of the position asked for.
    assert EvaluationJournal.open(path, other, FINGERPRINT).replayable == 0
    assert EvaluationJournal.open(path, POSITION, FINGERPRINT).replayable == 0


def test_a_journal_of_another_solver_is_not_replayed(tmp_path, caplog):
    # Issue 21, item 7: kill a run, fix the solver, resume: the old outputs were replayed.
    path = tmp_path / "s.journal"
    _journal_with(path, POINTS)
    changed = {"problem": {"callable": "square", "code": "def"}}
    with caplog.at_level("WARNING", logger="fg2u_zo"):
        j = EvaluationJournal.open(path, POSITION, changed)
    assert j.replayable == 0
    assert any("solvers changed" in r.getMessage() and "problem" in r.getMessage()
               for r in caplog.records)


@pytest.mark.parametrize("content", [b"", b"not a journal at all", MAGIC + b"\x00" * 5])
def test_a_damaged_file_is_not_a_journal(tmp_path, content):
    path = tmp_path / "d.journal"
    path.write_bytes(content)
    assert EvaluationJournal.open(path, POSITION, FINGERPRINT).replayable == 0


def _crafted(path, theta_bytes, theta_dtype, shape):
    """A journal whose one record has a valid checksum but the given output."""
    import struct
    import zlib

    from fg2u_zo.persist import journal as module

    j = EvaluationJournal.create(path, POSITION, FINGERPRINT)
    j.close()
    meta = json.dumps({"seed": 7, "warm_start": None, "tag": ["run", 0, 0],
                       "point": {"dtype": "<f8", "shape": [3]},
                       "theta": {"dtype": theta_dtype, "shape": list(shape)},
                       "solver_time": 0.0, "attempts": 1}, sort_keys=True).encode()
    payload = struct.pack("<I", len(meta)) + meta + POINTS[0].tobytes() + theta_bytes
    with open(path, "ab") as fh:
        fh.write(struct.pack("<QI", len(payload), zlib.crc32(payload)) + payload)
    return module


@pytest.mark.parametrize("dtype, data, shape", [
    ("<c16", np.array([1 + 2j, 3j, 0j]).tobytes(), (3,)),
    ("|O", b"\x00" * 24, (3,)),
    ("<U1", "abc".encode("utf-32-le"), (3,)),
    ("<f4", np.ones(3, np.float32).tobytes(), (3,)),
    ("<f8", np.array([1.0, np.nan, 2.0]).tobytes(), (3,)),
])
def test_a_crafted_record_is_corrupt_not_replayed(tmp_path, dtype, data, shape):
    # Item 8: a record with a valid checksum but an output of dtype object, unicode or
    # complex was replayed (complex losing its imaginary part) or crashed.
    path = tmp_path / "x.journal"
    _crafted(path, data, dtype, shape)
    j = EvaluationJournal.open(path, POSITION, FINGERPRINT)
    assert j.lookup(ctx(), POINTS[0]) is None


def test_retain_keeps_the_records_a_resumption_still_needs(tmp_path):
    path = tmp_path / "k.journal"
    _journal_with(path, POINTS, tags=[("run", 0, 3), ("run", 0, 4), ("screen",)])
    j = EvaluationJournal.open(path, POSITION, FINGERPRINT)
    moved = {"checkpoint": "2" * 64}
    j.retain(moved, lambda tag: True)  # the same steps, redone after a signal
    assert j.replayable == 3
    assert EvaluationJournal.open(path, moved, FINGERPRINT).replayable == 3
    j = EvaluationJournal.open(path, moved, FINGERPRINT)
    # Step 3 committed: its records go, those of step 4 and of the screening stay.
    j.retain({"checkpoint": "3" * 64},
             lambda tag: tag[0] == "screen" or (tag[0] == "run" and tag[2] >= 4))
    assert j.replayable == 2
    assert j.lookup(ctx(), POINTS[0]) is None and j.lookup(ctx(), POINTS[1]) is not None
    assert EvaluationJournal.open(path, {"checkpoint": "3" * 64}, FINGERPRINT).replayable == 2
    j.retain({"checkpoint": "4" * 64}, lambda tag: False)
    assert j.replayable == 0
    j.remove()
    assert not path.exists()


def test_a_symlink_at_the_journal_is_never_written_through(tmp_path):
    # Item 2: a symlink planted at a fixed temporary name was followed.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    path = tmp_path / "run.ckpt.journal"
    for name in os.listdir(tmp_path):
        pass
    os.symlink(victim, path)
    j = EvaluationJournal.open(path, POSITION, FINGERPRINT)  # not a journal: replaced
    j.record(ctx(), POINTS[0], square(POINTS[0]), solver_time=0.0, attempts=1)
    j.close()
    assert victim.read_text() == "precious\n"
    assert not os.path.islink(path)


# -- the Evaluator answering from it -------------------------------------------------------
class Flaky:
    """``square``, failing at the first call at each point in ``fail_once`` and at every
    call at the points in ``fail_always``; counts its calls."""

    def __init__(self, fail_once=(), fail_always=()):
        self.fail_once = {float(v) for v in fail_once}
        self.fail_always = {float(v) for v in fail_always}
        self.calls = 0

    def __call__(self, phi, *, seed=None):
        self.calls += 1
        key = float(phi[0])
        if key in self.fail_always:
            raise RuntimeError("always fails here")
        if key in self.fail_once:
            self.fail_once.discard(key)
            raise RuntimeError("fails once here")
        return np.asarray(phi, dtype=np.float64) ** 2


@pytest.mark.parametrize("backend", ["sequential", "threading"])
def test_the_evaluator_replays_finished_points_and_journals_only_successes(tmp_path,
                                                                         backend):
    path = tmp_path / "e.journal"
    points = [np.array([float(k), 0.5]) for k in range(6)]
    solver = Flaky(fail_once=[1.0], fail_always=[4.0])
    first = {}
    with fz.Evaluator(backend, n_jobs=2, max_retries=1) as ev:
        with ev.journaling(EvaluationJournal.create(path, POSITION, FINGERPRINT)):
            stats = ev.map(solver, points, first.__setitem__, seed=3)
    # 6 points, a retry of point 1 that succeeded, a retry of point 4 that failed again.
    assert stats.nfev == 8 and stats.nfev_replayed == 0 and stats.failed == {4}

    # A new process resuming: what finished is answered from the file, the failure is
    # tried again.
    again = Flaky(fail_always=[4.0])
    second = {}
    with fz.Evaluator(backend, n_jobs=2, max_retries=1) as ev:
        journal = EvaluationJournal.open(path, POSITION, FINGERPRINT)
        assert journal.replayable == 5
        with ev.journaling(journal):
            stats = ev.map(again, points, second.__setitem__, seed=3)
            theta, base = ev.solve(again, points[2], seed=3)
        assert ev.nfev_replayed == 6
        # Outside the block nothing is replayed.
        ev.map(again, points[:1], lambda k, t: None, seed=3)
        assert ev.nfev_replayed == 6
    assert stats.nfev_replayed == 5 and stats.nfev == 2 and stats.failed == {4}
    assert again.calls == 2 + 1  # point 4 twice (a retry), then the solve outside
    assert base.nfev == 0 and base.nfev_replayed == 1
    assert theta.tobytes() == first[2].tobytes()
    assert {k: v.tobytes() for k, v in second.items()} == {
        k: v.tobytes() for k, v in first.items()}
    # The retried point was journaled with its two attempts.
    hit = journal.lookup({"seed": 3, "warm_start": None}, points[1])
    assert hit.attempts == 2


def test_only_what_the_solver_is_passed_makes_calls_differ(tmp_path):
    def takes_nothing(phi):
        return phi * 3.0

    points = [np.array([1.0, 2.0])]
    with fz.Evaluator("sequential") as ev:
        with ev.journaling(EvaluationJournal.create(tmp_path / "j", POSITION, FINGERPRINT)):
            ev.map(takes_nothing, points, lambda k, t: None, seed=1, warm_start=np.ones(2))
        with ev.journaling(EvaluationJournal.open(tmp_path / "j", POSITION, FINGERPRINT)):
            # Not passed to this solver, so neither seed nor warm_start changes its output.
            stats = ev.map(takes_nothing, points, lambda k, t: None, seed=2)
            other = ev.map(square, points, lambda k, t: None, seed=2)
    assert stats.nfev_replayed == 1 and stats.nfev == 0
    assert other.nfev_replayed == 0 and other.nfev == 1  # square is passed seed=2


def test_only_one_journal_at_a_time(tmp_path):
    with fz.Evaluator("sequential") as ev:
        with ev.journaling(EvaluationJournal.create(tmp_path / "a", POSITION)):
            with pytest.raises(fz.FG2UValueError, match="already journals"):
                with ev.journaling(EvaluationJournal.create(tmp_path / "b", POSITION)):
                    pass


# -- runs ----------------------------------------------------------------------------------
def test_a_finished_run_leaves_no_journal_and_one_without_checkpoint_writes_none(
        tmp_path, monkeypatch):
    ckpt = tmp_path / "run.ckpt"
    res = fz.minimize(child.make_problem(), np.zeros(5), child.estimator("fixed"),
                      checkpoint=ckpt, **child.kwargs("fixed"))
    assert res.nfev_replayed == 0 and not os.path.exists(journal_path(ckpt))
    assert sorted(os.listdir(tmp_path)) == ["run.ckpt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    fz.minimize(child.make_problem(), np.zeros(5), child.estimator("fixed"),
                **child.kwargs("fixed"))
    assert os.listdir(empty) == []


@posix_only
def test_sigterm_keeps_the_abandoned_steps_evaluations(tmp_path):
    """SIGTERM abandons the step and checkpoints its start: the journal keeps what
    finished, and the resumption takes it from there."""
    reference = fz.minimize(child.make_problem(), np.zeros(5), child.estimator("fixed"),
                            **child.kwargs("fixed"))
    calls_before = sum(r.nfev for r in reference.history[:2])
    # SIGTERM when 3 of step 2's 5 solves have finished.
    problem = child.make_problem(term_at=calls_before + 4)
    stopped = fz.minimize(problem, np.zeros(5), child.estimator("fixed"),
                          checkpoint=tmp_path / "s.ckpt", history=tmp_path / "s.jsonl",
                          **child.kwargs("fixed"))
    assert stopped.status == "sigterm" and stopped.nit == 2
    assert read_checkpoint(tmp_path / "s.ckpt").status == "interrupted"
    fresh = child.make_problem()
    res = fz.resume(tmp_path / "s.ckpt", fresh, progress=False)
    assert res.history[2].nfev_replayed == 3 and res.history[2].nfev == 5 - 3
    assert res.nfev_replayed == 3 and fresh.inner.calls == reference.nfev - calls_before - 3
    assert res.phi.tobytes() == reference.phi.tobytes()
    assert not os.path.exists(journal_path(tmp_path / "s.ckpt"))


# -- a crash in the middle of a step -------------------------------------------------------
# (variant, step killed, finished solves of that step at the kill, checkpoint_every)
CRASHES = [
    ("fixed", 2, 3, 1),         # the base solve and 2 of the 4 perturbed ones
    ("auto", 0, 5, 1),          # step 0: the base solve and 4 of the noise probe's solves
    ("gauss-newton", 2, 1, 1),  # the trial of the step's two solves (trial, re-measure)
    ("fixed", 2, 3, 4),         # the checkpoint is the start: steps 0 and 1 are redone too
]


@pytest.fixture(scope="module")
def references():
    out = {}
    for variant in {c[0] for c in CRASHES}:
        problem = child.make_problem()
        res = fz.minimize(problem, np.zeros(5), child.estimator(variant),
                          **child.kwargs(variant))
        assert problem.inner.calls == res.nfev  # every call finished, none failed
        out[variant] = res
    return out


@posix_only
@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant, step, k, every", CRASHES)
def test_sigkill_mid_step_then_resume_solves_nothing_twice(tmp_path, references, variant,
                                                          step, k, every):
    reference = references[variant]
    per_step = reference.history[step].nfev
    assert 0 < k < per_step
    calls_before = sum(r.nfev for r in reference.history[:step])
    saved_at = step // every * every  # the step of the last checkpoint before the kill
    # The steps between the checkpoint and the kill are redone from the journal entirely.
    expected = [reference.history[i].nfev if saved_at <= i < step else k if i == step else 0
                for i in range(child.STEPS)]
    ckpt, history, markers = tmp_path / "run.ckpt", tmp_path / "run.jsonl", tmp_path / "m"
    markers.mkdir()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # The (k+1)-th solve of the step kills the process before it solves anything.
    proc = subprocess.run(
        [sys.executable, CHILD, variant, str(ckpt), str(history), str(markers),
         str(calls_before + k + 1), str(every)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    killed = read_checkpoint(ckpt)
    assert killed.step == saved_at and killed.status == "running"
    assert len(os.listdir(markers)) == calls_before + k
    assert os.path.exists(journal_path(ckpt))

    resumed_problem = child.make_problem()
    res = fz.resume(ckpt, resumed_problem, backend="sequential", progress=False)
    fresh_in_step = res.history[step].nfev
    print(f"{variant}, checkpoint_every={every}: step {step} of {per_step} solves, killed "
          f"after {k}: {fresh_in_step} fresh solves after resuming, "
          f"{res.history[step].nfev_replayed} replayed; run total {res.nfev} fresh + "
          f"{res.nfev_replayed} replayed (uninterrupted: {reference.nfev})")
    # Exactly the b - k unfinished solves of the step are solved; the k finished ones are
    # answered from the journal (the sequential backend had nothing else in flight).
    assert fresh_in_step == per_step - k
    assert res.history[step].nfev_replayed == k
    assert [r.nfev_replayed for r in res.history] == expected
    assert res.nfev_replayed == sum(expected)
    # No finished solve was ever redone: the two processes together solved what the
    # uninterrupted run solved, once each.
    assert len(os.listdir(markers)) + resumed_problem.inner.calls == reference.nfev
    assert res.nfev + res.nfev_replayed == reference.nfev
    # And the run is the uninterrupted one, bit for bit.
    assert res.phi.tobytes() == reference.phi.tobytes()
    assert [r.value for r in res.history] == [r.value for r in reference.history]
    assert [json.loads(line)["nfev_replayed"] for line in history.read_text().splitlines()
            ] == [r.nfev_replayed for r in res.history]
    assert read_checkpoint(ckpt).status == "finished"
    assert not os.path.exists(journal_path(ckpt))


class Outage:
    """The ridge solver of journal_child, failing once it has been called ``at`` times
    (a lost cluster) until ``back()``: the same object and code before and after, so the
    journal's fingerprint matches on resume."""

    def __init__(self, at):
        self.problem = child.make_problem()
        self.at, self.calls, self.restored = at, 0, False

    def __call__(self, phi, *, warm_start=None, seed=None):
        self.calls += 1
        if self.calls > self.at and not self.restored:
            raise RuntimeError("scheduler connection lost")
        return self.problem.inner(phi, warm_start=warm_start, seed=seed)

    def back(self):
        self.restored = True


def test_a_run_stopped_by_an_error_keeps_its_journal(tmp_path):
    # Issue 21, item 13: after the lost-scheduler error, resume replayed 0 records: the
    # interrupted step's finished solves ran again.
    kwargs = {**child.kwargs("fixed"), "backend": None}
    reference = fz.minimize(child.make_problem(), np.zeros(5), child.estimator("fixed"),
                            **kwargs)
    before = sum(r.nfev for r in reference.history[:2])
    solver = Outage(at=before + 3)   # step 2: the base point and 2 directions, then down
    problem = fz.BilevelProblem(inner=solver, outer=solver.problem.outer, num_params=5)
    with fz.Evaluator("sequential", max_retries=0, max_failure_fraction=0.2) as ev:
        with pytest.raises(fz.InnerSolverError, match="connection lost"):
            fz.minimize(problem, np.zeros(5), child.estimator("fixed"), evaluator=ev,
                        checkpoint=tmp_path / "o.ckpt", **kwargs)
    assert read_checkpoint(tmp_path / "o.ckpt").status == "failed"
    assert read_checkpoint(tmp_path / "o.ckpt").step == 2
    assert os.path.exists(journal_path(tmp_path / "o.ckpt"))
    solver.back()
    calls = solver.calls
    res = fz.resume(tmp_path / "o.ckpt", problem, backend="sequential", progress=False)
    redone = res.history[0]
    assert redone.step == 2 and redone.nfev_replayed == 3
    assert solver.calls - calls == reference.nfev - before - 3
    assert res.phi.tobytes() == reference.phi.tobytes()
