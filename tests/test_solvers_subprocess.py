"""Tests of solvers.Subprocess: a legacy executable (tests/data/sim.py) as an inner solver."""

from __future__ import annotations

import math
import os
import pathlib
import pickle
import sys
import time

import numpy as np
import pytest

import fg2u_zo as fz
from _parallel_checks import assert_dask_matches_serial, assert_loky_matches_serial
from fg2u_zo.errors import FG2UTypeError, FG2UValueError, InnerSolverError
from solvers import Subprocess

DATA = pathlib.Path(__file__).resolve().parent / "data"
SIM = str(DATA / "sim.py")
STORM = str(DATA / "storm_sim.py")
PHI = np.array([0.1, 1.0 / 3.0, -2.5e10, 1e-300, math.pi])


def known(phi):
    # Same formula and the same libm as sim.py, so the round trip must be exact.
    return np.array([math.sin(v) for v in phi] + [v * v for v in phi])


def sim(*args, **kwargs):
    kwargs.setdefault("output", "out.txt")
    kwargs.setdefault("timeout", 60)
    return Subprocess([sys.executable, SIM, *args], **kwargs)


def storm(policy, *options, **kwargs):
    """tests/data/storm_sim.py with a policy; phi on the first line of input.txt."""
    kwargs.setdefault("output", "out.txt")
    kwargs.setdefault("timeout", 60)
    kwargs.setdefault("template", "{phi}\n")
    return Subprocess([sys.executable, STORM, policy, "-", *options], **kwargs)


def storm_model(phi):
    # Same formula and libm as storm_sim.py: the round trip is exact.
    a, b = phi[0], phi[1]
    return np.array([a + 0.5 * math.sin(b), b + 0.5 * math.sin(a), a * b])


def write_with_seed(phi, workdir, *, seed=None, warm_start=None):
    extra = [float(seed)] if seed is not None else []
    extra += [] if warm_start is None else [float(np.sum(warm_start))]
    with open(os.path.join(workdir, "input.txt"), "w") as fh:
        fh.write(" ".join(repr(v) for v in [*phi.tolist(), *extra]))


def write_plain(phi, workdir):
    with open(os.path.join(workdir, "input.txt"), "w") as fh:
        fh.write(" ".join(map(repr, phi.tolist())))


def write_refusing(phi, workdir):
    if phi.shape[0] != 4:
        raise FG2UValueError(f"this deck needs 4 numbers, got {phi.shape[0]}")
    write_plain(phi, workdir)


def read_and_negate(workdir):
    return -np.loadtxt(os.path.join(workdir, "out.txt"))


def _alive(pid):
    """True if ``pid`` runs; a zombie (exited, not yet reaped by init) counts as dead."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


# -- known answers ---------------------------------------------------------------------

def test_whole_vector_template_round_trips_exactly(tmp_path):
    solver = sim("ok", template="{phi}\n", workdir_root=tmp_path)
    theta = solver(PHI)
    assert theta.dtype == np.float64 and theta.shape == (10,)
    np.testing.assert_array_equal(theta, known(PHI))


def test_named_indexed_and_seed_placeholders(tmp_path):
    template = pathlib.Path(tmp_path / "deck.tmpl")
    template.write_text("{alpha} {phi[1]}\n{beta:.3f} {n} {seed} {{not a placeholder}}\n")
    # The command echoes its input minus the literal-brace text, which is not a number.
    solver = Subprocess([sys.executable, "-c",
                         "t = open('input.txt').read().replace('{not a placeholder}', '');"
                         "open('out.txt', 'w').write(t)"],
                        template=template, names=["alpha", "beta"], output="out.txt",
                        timeout=60, workdir_root=tmp_path)
    phi = np.array([0.1, 2.0 / 3.0])
    theta = solver(phi, seed=7)
    np.testing.assert_array_equal(theta, [0.1, 2.0 / 3.0, 0.667, 2, 7])
    with pytest.raises(FG2UValueError, match="seed"):
        solver(phi)


def test_writer_gets_seed_and_warm_start_and_reader_is_used(tmp_path):
    solver = sim("ok", writer=write_with_seed, output=None, reader=read_and_negate,
                 workdir_root=tmp_path)
    phi = np.array([0.5, 1.5])
    theta = solver(phi, seed=3, warm_start=np.array([1.0, 1.0]))
    np.testing.assert_array_equal(theta, -known([0.5, 1.5, 3.0, 2.0]))
    np.testing.assert_array_equal(solver(phi), -known(phi))


def test_csv_with_fortran_exponents_and_comments(tmp_path):
    theta = sim("csv", template="{phi}", workdir_root=tmp_path)(PHI[:3])
    np.testing.assert_allclose(theta, known(PHI[:3]), rtol=1e-15, atol=0)


def test_header_line_skiprows_usecols_comments(tmp_path):
    # out.txt: "TIME T(0.25) T(0.5)", then rows "t theta_i 2*theta_i".
    phi = np.array([0.5, -1.25])
    theta = storm_model(phi)
    with pytest.raises(InnerSolverError) as info:
        storm("header", workdir_root=tmp_path)(phi)
    msg = str(info.value)
    assert info.value.kind == "output"
    assert "cannot read 'TIME' as a number (line 1" in msg and "skiprows" in msg
    np.testing.assert_array_equal(
        storm("header", skiprows=1, usecols=1, workdir_root=tmp_path)(phi), theta)
    np.testing.assert_array_equal(
        storm("header", skiprows=1, usecols=-1, workdir_root=tmp_path)(phi), 2 * theta)
    np.testing.assert_array_equal(
        storm("header", skiprows=1, usecols=[2, 1], workdir_root=tmp_path)(phi),
        np.column_stack([2 * theta, theta]).ravel())
    table = storm("header", comments=["TIME", "#"], workdir_root=tmp_path)(phi)
    np.testing.assert_array_equal(table, np.column_stack([[0, 1, 2], theta, 2 * theta]).ravel())
    with pytest.raises(InnerSolverError, match="line 2 has 3 column"):
        storm("header", skiprows=1, usecols=3, workdir_root=tmp_path)(phi)


def test_comments_none_and_text_options_checked(tmp_path):
    with pytest.raises(InnerSolverError, match="cannot read '#'"):
        sim("csv", template="{phi}", comments=None, workdir_root=tmp_path)(PHI[:3])
    with pytest.raises(FG2UValueError, match="text `output`"):
        sim("ok", output="out.npy", skiprows=1)
    with pytest.raises(FG2UValueError, match="text `output`"):
        sim("ok", output=None, reader=read_and_negate, usecols=0)
    with pytest.raises(FG2UValueError, match="`skiprows` must be >= 0"):
        sim("ok", skiprows=-1)
    with pytest.raises(FG2UTypeError, match="`usecols`"):
        sim("ok", usecols="1")
    with pytest.raises(FG2UValueError, match="`comments`"):
        sim("ok", comments="")


def test_staged_file_named_like_a_written_one_is_refused(tmp_path):
    # Linked, the rendered template would go through the link into the user's file;
    # copied, it would silently replace it (or stand in for a missing output).
    own = tmp_path / "input.txt"
    own.write_text("user data\n")
    out = tmp_path / "out.txt"
    out.write_text("1 2 3\n")
    for link in (True, False):
        with pytest.raises(FG2UValueError, match="`input_name`"):
            sim("ok", template="{phi}", files=[own], link=link)
        with pytest.raises(FG2UValueError, match="`output`"):
            sim("ok", template="{phi}", input_name="deck.txt", files=[out], link=link)
    assert own.read_text() == "user data\n"
    # A writer may replace a copied file, never write through a link.
    solver = sim("ok", writer=write_plain, files=[own], link=False, workdir_root=tmp_path)
    np.testing.assert_array_equal(solver(PHI), known(PHI))
    linked = sim("ok", writer=write_plain, files=[own], link=True, workdir_root=tmp_path)
    with pytest.raises(FG2UValueError, match="`writer` wrote 'input.txt'"):
        linked(PHI)
    assert own.read_text() == "user data\n"


def test_a_written_path_inside_a_linked_folder_is_refused(tmp_path):
    # input_name="dir/input.txt" with files=[".../dir"], link=True wrote every call's
    # deck into the user's folder; with parallel calls, commands read each other's.
    own = tmp_path / "dir"
    own.mkdir()
    (own / "mesh.msh").write_text("mesh\n")
    with pytest.raises(FG2UValueError, match=r"`input_name` 'dir/input.txt' lies in 'dir'"
                                             r".*input_name='input.txt'.*link=False"):
        sim("ok", template="{phi}", input_name="dir/input.txt", files=[own], link=True)
    with pytest.raises(FG2UValueError, match=r"`output` 'dir/out.txt' lies in 'dir'"):
        sim("ok", template="{phi}", output="dir/out.txt", files=[own], link=True)
    # Copied, the folder is the call's own: writing into it is fine.
    code = ("import numpy as np; "
            "np.savetxt('dir/out.txt', 2 * np.loadtxt('dir/input.txt', ndmin=1))")
    (tmp_path / "runs").mkdir()
    copied = Subprocess([sys.executable, "-c", code], template="{phi}",
                        input_name="dir/input.txt", output="dir/out.txt", files=[own],
                        timeout=60, workdir_root=tmp_path / "runs")
    np.testing.assert_array_equal(copied(np.array([1.5, -3.0])), [3.0, -6.0])
    assert sorted(p.name for p in own.iterdir()) == ["mesh.msh"]


def test_freefem_refuses_a_staged_file_named_like_its_inputs(tmp_path):
    from solvers import FreeFem
    script = tmp_path / "model.edp"
    script.write_text("// empty\n")
    for name in ("phi.txt", "model.edp"):
        clash = tmp_path / "data" / name
        clash.parent.mkdir(exist_ok=True)
        clash.write_text("1\n")
        with pytest.raises(FG2UValueError, match=repr(name)):
            FreeFem(script, files=[clash], link=True, executable=sys.executable)
    # Its parameter file inside a linked folder would be written into that folder.
    with pytest.raises(FG2UValueError, match=r"`param_file` 'data/phi.txt' lies in 'data'"):
        FreeFem(script, param_file="data/phi.txt", files=[clash.parent], link=True,
                executable=sys.executable)


def test_npy_output_and_files_copied_or_linked(tmp_path):
    code = ("import numpy as np; a = np.loadtxt('input.txt', ndmin=1);"
            "b = np.loadtxt('table.txt'); np.save('out.npy', a * b)")
    table = tmp_path / "table.txt"
    table.write_text("2.0\n")
    for link in (False, True):
        solver = Subprocess([sys.executable, "-c", code], template="{phi}", output="out.npy",
                            files=[table], link=link, timeout=60, workdir_root=tmp_path)
        np.testing.assert_array_equal(solver(np.array([1.5, -3.0])), [3.0, -6.0])


def test_staged_files_by_relative_name(tmp_path):
    solver = Subprocess([sys.executable, "sim.py", "ok"], files=[SIM], template="{phi}",
                        output="out.txt", timeout=60, workdir_root=tmp_path)
    np.testing.assert_array_equal(solver(PHI), known(PHI))
    # The executable itself staged into the working directory and run as ./name.
    exe = tmp_path / "legacy.sh"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" sim.py ok\n')
    exe.chmod(0o755)
    staged = Subprocess(["./legacy.sh"], files=[exe, SIM], template="{phi}", output="out.txt",
                        timeout=60, workdir_root=tmp_path)
    np.testing.assert_array_equal(staged(PHI), known(PHI))


# -- working directory ------------------------------------------------------------------

def test_workdir_removed_on_success_kept_on_failure(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    sim("ok", template="{phi}", workdir_root=root)(PHI)
    assert list(root.iterdir()) == []

    with pytest.raises(InnerSolverError) as info:
        sim("nooutput", template="{phi}", workdir_root=root)(PHI)
    kept = list(root.iterdir())
    assert len(kept) == 1 and kept[0].name.startswith("fg2u-")
    assert info.value.workdir == str(kept[0])
    assert str(kept[0]) in str(info.value)
    assert (kept[0] / "input.txt").exists()


def test_keep_workdir_keeps_every_directory(tmp_path):
    solver = sim("ok", template="{phi}", workdir_root=tmp_path, keep_workdir=True)
    solver(PHI)
    solver(PHI)
    kept = sorted(tmp_path.iterdir())
    assert len(kept) == 2
    np.testing.assert_array_equal(np.loadtxt(kept[0] / "out.txt"), known(PHI))


def test_only_the_last_failures_no_retry_repaired_are_kept(tmp_path):
    # 24 points: about 30 % fail at every attempt, the others fail once and succeed at
    # the retry. Only the directories of points dropped for good may stay, the last
    # keep_failed of them; before, every failed attempt left one (40 here).
    root, state = tmp_path / "runs", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    solver = storm("flaky", f"state={state}", workdir_root=root, keep_failed=3)
    points = [np.array([0.1 * k, 1.0]) for k in range(24)]
    with fz.Evaluator("sequential", max_retries=1, max_failure_fraction=0.9) as ev:
        stats = ev.map(solver, points, lambda index, theta: None)
    dropped = len(stats.failures)
    assert 4 <= dropped <= 12 and stats.nfev == 2 * len(points)  # every point retried
    kept = sorted(root.iterdir())
    assert len(kept) == 3, kept
    for path in kept:
        assert "-failed-" in path.name
        assert "this point always fails" in (path / "fg2u-failure.txt").read_text()
    # The message of a dropped point names its kept directory.
    assert any(str(path) in f.message for f in stats.failures for path in kept)


LOUD = ("import sys; sys.stdout.write('o' * 3_000_000 + '\\nLAST-OUT\\n'); "
        "sys.stderr.write('e' * 3_000_000 + '\\nLAST-ERR\\n'); "
        "open('big.bin', 'wb').write(bytes(2**20)); sys.exit(3)")


def kept_bytes(root):
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def test_kept_failures_keep_the_tail_of_what_the_command_printed(tmp_path):
    # Three failing calls that each printed 3 MB to stdout and 3 MB to stderr left 18 MB
    # on disk; a kept directory's logs now hold the last MiB of each.
    LOG_TAIL_BYTES = 2**20  # as documented
    solver = Subprocess([sys.executable, "-c", LOUD], template="{phi}", output="out.txt",
                        timeout=60, workdir_root=tmp_path)
    for k in range(3):
        with pytest.raises(InnerSolverError) as info:
            solver(np.array([float(k)]))
        # The message still shows the end of what the command said.
        assert "LAST-ERR" in str(info.value) and "LAST-OUT" in str(info.value)
    kept = sorted(tmp_path.iterdir())
    assert len(kept) == 3
    for path in kept:
        for name, last in (("fg2u-stdout.log", b"LAST-OUT\n"), ("fg2u-stderr.log",
                                                                 b"LAST-ERR\n")):
            data = (path / name).read_bytes()
            header, _, tail = data.partition(b"\n")
            assert len(tail) == LOG_TAIL_BYTES and tail.endswith(last)
            assert b"bytes of this log were cut" in header
    # Per directory: two log tails (and their header lines), the 1 MiB file, and the
    # note with the error message, which quotes at most 16 KiB of each log.
    assert kept_bytes(tmp_path) < 3 * (2 * LOG_TAIL_BYTES + 2**20 + 2**16)


def test_kept_failures_are_bounded_in_bytes(tmp_path):
    bound = 3 * 2**20
    solver = Subprocess([sys.executable, "-c", LOUD], template="{phi}", output="out.txt",
                        timeout=60, workdir_root=tmp_path, keep_failed=5,
                        keep_failed_bytes=bound)
    for k in range(4):
        with pytest.raises(InnerSolverError) as info:
            solver(np.array([float(k)]))
        assert kept_bytes(tmp_path) <= bound
    # Each kept directory holds about 1.8 MiB (two 768 KiB log tails, a 1 MiB file):
    # only the most recent one fits, and it is the one the last error names.
    kept = list(tmp_path.iterdir())
    assert [str(p) for p in kept] == [info.value.workdir]
    # A bound below one directory's size: its largest file goes, named in the note.
    small = Subprocess([sys.executable, "-c", LOUD], template="{phi}", output="out.txt",
                       timeout=60, workdir_root=tmp_path, keep_failed_bytes=2**20)
    with pytest.raises(InnerSolverError) as info:
        small(np.array([9.0]))
    path = pathlib.Path(info.value.workdir)
    assert not (path / "big.bin").exists()
    assert "big.bin (1048576 bytes)" in (path / "fg2u-failure.txt").read_text()
    assert kept_bytes(path) <= 2**20
    with pytest.raises(FG2UValueError, match="keep_failed_bytes"):
        sim("ok", template="{phi}", keep_failed_bytes=0)


def test_keep_failed_zero_keeps_nothing_and_says_so(tmp_path):
    solver = sim("fail", template="{phi}", workdir_root=tmp_path, keep_failed=0)
    with pytest.raises(InnerSolverError) as info:
        solver(PHI)
    assert info.value.workdir is None
    assert "working directory removed: keep_failed=0" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_failure_replaces_the_directory_of_an_earlier_attempt(tmp_path):
    solver = sim("fail", template="{phi}", workdir_root=tmp_path)
    for _ in range(3):
        with pytest.raises(InnerSolverError):
            solver(PHI)
    assert len(list(tmp_path.iterdir())) == 1
    for k in range(3):
        with pytest.raises(InnerSolverError):
            solver(PHI + k + 1)
    assert len(list(tmp_path.iterdir())) == 4
    with pytest.raises(FG2UValueError, match="keep_failed"):
        sim("ok", template="{phi}", keep_failed=-1)


# -- failures ----------------------------------------------------------------------------

@pytest.mark.timeout(30)
@pytest.mark.parametrize("ignore_term", [False, True], ids=["sigterm", "sigkill"])
def test_timeout_kills_the_whole_process_group(tmp_path, ignore_term):
    extra = ["ignore_term"] if ignore_term else []
    solver = sim("sleep", "2", *extra, timeout=2.0, kill_grace=0.3, workdir_root=tmp_path)
    with pytest.raises(InnerSolverError) as info:
        solver(PHI)
    # No wall-clock bound is asserted (a loaded machine may be slow); what matters is
    # the kind, and that every process of the group is gone below.
    assert info.value.kind == "timeout"
    assert "timed out" in str(info.value)

    pids = [int(p) for p in (pathlib.Path(info.value.workdir) / "pids.txt").read_text().split()]
    # child, grandchild and great-grandchild all started before the timeout
    assert len(pids) == 3
    deadline = time.monotonic() + 15.0  # generous: the group was killed already
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [p for p in pids if _alive(p)] == []


def test_nonzero_exit_reports_code_and_stderr_tail(tmp_path):
    with pytest.raises(InnerSolverError) as info:
        sim("fail", template="{phi}", workdir_root=tmp_path)(PHI)
    err = info.value
    assert err.kind == "returncode"
    msg = str(err)
    assert "return code 3" in msg
    assert "stderr line 29" in msg and "stderr line 10\n" in msg
    assert "stderr line 9\n" not in msg  # only the last 20 lines
    assert err.detail.splitlines()[-1] == "stderr line 29"


def test_missing_output_names_the_file(tmp_path):
    with pytest.raises(InnerSolverError) as info:
        sim("nooutput", template="{phi}", workdir_root=tmp_path)(PHI)
    assert info.value.kind == "output"
    assert "'out.txt'" in str(info.value) and "not written" in str(info.value)


def test_garbage_output_shows_first_lines(tmp_path):
    with pytest.raises(InnerSolverError) as info:
        sim("garbage", template="{phi}", workdir_root=tmp_path)(PHI)
    assert info.value.kind == "output"
    msg = str(info.value)
    assert "'out.txt'" in msg and "hello world" in msg and "segmentation fault" in msg


def test_nonfinite_and_wrong_length_output(tmp_path):
    with pytest.raises(InnerSolverError) as info:
        sim("nan", template="{phi}", workdir_root=tmp_path)(PHI)
    assert info.value.kind == "nonfinite"
    with pytest.raises(InnerSolverError) as info:
        sim("ok", template="{phi}", n_outputs=3, workdir_root=tmp_path)(PHI)
    assert info.value.kind == "shape" and "n_outputs" in str(info.value)


def test_nonfinite_output_carries_the_programs_stderr(tmp_path):
    with pytest.raises(InnerSolverError) as info:
        storm("unstable", workdir_root=tmp_path)(np.array([0.5, 1.0]))
    assert info.value.kind == "nonfinite"
    assert "WARNING unstable: CFL number 3.2 > 1" in str(info.value)
    assert info.value.detail.splitlines()[-1] == "WARNING unstable: CFL number 3.2 > 1"
    assert info.value.workdir in str(info.value)


def test_wrong_length_phi_is_a_value_error_before_anything_runs(tmp_path):
    # Deterministic errors: FG2UValueError, which an evaluator does not retry.
    solver = sim("ok", template="{phi}", n_params=3, workdir_root=tmp_path)
    with pytest.raises(FG2UValueError, match="must have 3 entries"):
        solver(np.zeros(2))
    named = sim("ok", template="{a} {b}", names=["a", "b"], workdir_root=tmp_path)
    with pytest.raises(FG2UValueError, match="`names` has 2 entries"):
        named(np.zeros(3))
    with pytest.raises(FG2UValueError, match="out of range"):
        sim("ok", template="{phi[2]}", workdir_root=tmp_path)(np.zeros(2))
    refusing = sim("ok", writer=write_refusing, workdir_root=tmp_path)
    with pytest.raises(FG2UValueError, match="needs 4 numbers"):
        refusing(np.zeros(2))
    assert list(tmp_path.iterdir()) == []
    np.testing.assert_array_equal(solver(np.zeros(3)), known(np.zeros(3)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_placeholder_refused_before_anything_runs(tmp_path, bad):
    root = tmp_path / "runs"
    root.mkdir()
    marker = tmp_path / "ran"
    solver = sim("marker", str(marker), template="{a} {b}", names=["a", "b"],
                 workdir_root=root)
    with pytest.raises(FG2UValueError, match="finite"):
        solver(np.array([1.0, bad]))
    assert not marker.exists()
    assert list(root.iterdir()) == []
    # The same solver with finite values does run: the marker check can fail.
    np.testing.assert_array_equal(solver(np.array([1.0, 2.0])), known([1.0, 2.0]))
    assert marker.exists()


def test_template_from_a_file(tmp_path):
    deck = tmp_path / "deck.tmpl"
    deck.write_text("{phi}\n")
    for kwargs in ({"template": deck}, {"template_file": deck}, {"template_file": str(deck)}):
        solver = sim("ok", workdir_root=tmp_path, **kwargs)
        assert solver.template == "{phi}\n"
        np.testing.assert_array_equal(solver(PHI), known(PHI))
    # A str is the deck's text; one that names an existing file is most likely a
    # mistake (a TOML config's `template` is a path): warn, pointing at the caller.
    plain = tmp_path / "constant.txt"
    plain.write_text("1.0 2.0\n")
    with pytest.warns(fz.FG2UWarning, match=r"name of an existing file.*template_file") as rec:
        solver = sim("ok", template=str(plain))
    assert solver.template == str(plain) and rec[0].filename == __file__
    with pytest.raises(FG2UValueError, match="either `template`.*or `template_file`"):
        sim("ok", template="{phi}", template_file=deck)
    with pytest.raises(FG2UValueError, match="`template_file`.*is not a file"):
        sim("ok", template_file=tmp_path / "missing.tmpl")
    with pytest.raises(FG2UValueError, match="either `template` or `writer`, not both"):
        sim("ok", template_file=deck, writer=write_plain)


def test_shell_string_refused():
    with pytest.raises(FG2UTypeError, match="no shell"):
        Subprocess(f"{sys.executable} {SIM} ok", output="out.txt")
    with pytest.raises(TypeError):  # also a builtin TypeError
        Subprocess(b"ls", output="out.txt")


def test_constructor_errors_name_the_argument(tmp_path):
    with pytest.raises(FG2UValueError, match=r"`timeout` must be > 0, got -1"):
        sim("ok", template="{phi}", timeout=-1)
    with pytest.raises(FG2UValueError, match=r"unknown template placeholder \{gamma\}"):
        sim("ok", template="{alpha} {gamma}", names=["alpha"])
    with pytest.raises(FG2UValueError, match="only phi can be indexed"):
        sim("ok", template="{alpha[0]}", names=["alpha"])
    with pytest.raises(FG2UValueError, match="exactly one of `output`"):
        Subprocess([sys.executable, SIM, "ok"])
    with pytest.raises(FG2UValueError, match="does not exist"):
        sim("ok", files=[tmp_path / "missing.dat"])
    with pytest.raises(FG2UValueError, match="relative path"):
        Subprocess(["./sim.py"], output="out.txt")
    with pytest.raises(FG2UValueError, match="'./sim.py'"):
        Subprocess(["sim.py"], files=[SIM], output="out.txt")
    with pytest.raises(FG2UValueError, match=r"`kill_grace` must be > 0, got -2"):
        sim("ok", kill_grace=-2)
    with pytest.raises(FG2UValueError, match="either `template` or `writer`"):
        sim("ok", template="{phi}", writer=write_plain)


def test_missing_executable(tmp_path):
    with pytest.raises(FG2UValueError, match="no-such-simulator-xyz"):
        Subprocess(["no-such-simulator-xyz"], output="out.txt")
    solver = Subprocess(["no-such-simulator-xyz"], output="out.txt", check_executable=False,
                        install_hint="build it with make", workdir_root=tmp_path)
    with pytest.raises(InnerSolverError) as info:
        solver(PHI)
    assert info.value.kind == "missing_executable"
    assert "no-such-simulator-xyz" in str(info.value) and "build it with make" in str(info.value)


def test_thread_variables_default_to_one(tmp_path, monkeypatch):
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                 "VECLIB_MAXIMUM_FRAMEWORK_THREADS", "NUMEXPR_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    np.testing.assert_array_equal(sim("env", workdir_root=tmp_path)(PHI), [1, 1, 1, 1, 1])
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    solver = sim("env", env={"MKL_NUM_THREADS": "2"}, workdir_root=tmp_path)
    np.testing.assert_array_equal(solver(PHI), [4, 1, 2, 1, 1])


# -- parallel backends -------------------------------------------------------------------

def _points():
    rng = np.random.default_rng(0)
    return [rng.normal(size=4) for _ in range(4)]


def test_pickle_round_trip(tmp_path):
    for solver in (sim("ok", template="{phi}", workdir_root=tmp_path),
                   sim("ok", writer=write_plain, workdir_root=tmp_path)):
        clone = pickle.loads(pickle.dumps(solver))
        np.testing.assert_array_equal(clone(PHI), solver(PHI))


@pytest.mark.timeout(120)
def test_loky_matches_serial():
    solver = sim("ok", writer=write_plain)
    assert_loky_matches_serial((solver, p) for p in _points())


@pytest.mark.dask
@pytest.mark.timeout(120)
def test_dask_matches_serial(dask_client, tmp_path):
    solver = sim("ok", template="{phi}")
    points = _points()
    assert_dask_matches_serial(dask_client, ((solver, p) for p in points))
    # A failure on a worker comes back as InnerSolverError with its kind intact.
    bad = dask_client.submit(sim("fail", template="{phi}", workdir_root=tmp_path), points[0],
                             pure=False)
    with pytest.raises(InnerSolverError) as info:
        bad.result()
    assert info.value.kind == "returncode"
    assert info.value.workdir.startswith(str(tmp_path))
