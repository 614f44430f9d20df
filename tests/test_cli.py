"""The fg2u-zo command line and its TOML configs: end to end on an external simulator,
validation before anything runs, plots."""

import json
import os
import re
import runpy
import shutil
import sys

import numpy as np
import pytest

import fg2u_zo as fz
from fg2u_zo.cli.main import main
from fg2u_zo.cli.config import load_config

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CASE_FILES = ("cli_sim.py", "cli_template.txt", "cli_obs.txt", "cli_model.py")

# -S: no site import, so each simulator process starts in ~30 ms instead of ~150 ms.
CONFIG = f"""
[solver]
kind = "subprocess"
argv = [{json.dumps(sys.executable)}, "-S", "cli_sim.py"]
template = "cli_template.txt"
input_name = "params.txt"
output = "out.txt"
timeout = 60

[outer]
kind = "least_squares"
data = "cli_obs.txt"

[parameters]
init = [1.0, 1.0, 0.0]
names = ["amplitude", "rate", "offset"]
bounds = [[0.0, 0.1, -5.0], [10.0, 5.0, 5.0]]

[estimator]
name = "FG2UZO"
num_directions = 3
directions = "orthogonal"
scheme = "forward"
step = 1e-6

[optimizer]
name = "adam"
lr = 0.2
steps = 10

[output]
checkpoint = "out/run.ckpt"
history = "out/run.jsonl"
seed = 0
"""

PYTHON_CONFIG = """
[solver]
kind = "python"
entry = "cli_model.py:decay"
kwargs = { t_max = 3.0 }

[outer]
data = "cli_obs.txt"

[parameters]
init = [1.0, 1.0, 0.5]

[estimator]
name = "FG2UZO"
num_directions = 3
directions = "orthogonal"
step = "auto"

[optimizer]
steps = 5
"""


@pytest.fixture
def case(tmp_path):
    """A directory with the simulator, its template, the data and a config.toml."""
    d = tmp_path / "case"
    d.mkdir()
    for name in CASE_FILES:
        shutil.copy(os.path.join(DATA, name), d / name)
    (d / "config.toml").write_text(CONFIG)
    return d


def _value(output):
    return float(re.search(r"value\s+(\S+)", output).group(1))


# -- help -----------------------------------------------------------------------------------
def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "resume", "plot", "check-gradient"):
        assert re.search(rf"^\s+{command}\b", out, re.MULTILINE), command


# -- end to end -----------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_run_then_resume_an_external_simulator(case, tmp_path, monkeypatch, capsys):
    """10 steps of FG2UZO through `python cli_sim.py` (40 processes) cut the loss by more
    than 10x (about 21x measured); resume to 15 steps cuts it further (about 75x)."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths must resolve against the config's dir
    assert main(["run", str(case / "config.toml"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    ckpt, history = case / "out" / "run.ckpt", case / "out" / "run.jsonl"
    assert ckpt.exists() and history.exists()
    records = fz.read_history(history)
    assert [r.step for r in records] == list(range(10))
    first, after10 = records[0].value, _value(out)
    assert after10 < first / 10, (first, after10)
    # Issue 21, item 19: the summary names the parameters.
    assert re.search(r"phi\s+amplitude=\S+, rate=\S+, offset=\S+", out), out
    assert os.listdir(elsewhere) == []  # nothing written where the command was run

    assert main(["resume", str(ckpt), "--config", str(case / "config.toml"), "--steps", "15",
                 "--no-progress"]) == 0
    after15 = _value(capsys.readouterr().out)
    assert after15 < after10
    assert [r.step for r in fz.read_history(history)] == list(range(15))
    saved = fz.read_checkpoint(ckpt)
    assert saved.step == 15 and saved.metadata["config_path"] == str(case / "config.toml")
    # `run --resume` continues the config's checkpoint: finished, it answers from it.
    assert main(["run", str(case / "config.toml"), "--resume", "--steps", "16",
                 "--no-progress"]) == 0
    assert fz.read_checkpoint(ckpt).step == 16


@pytest.mark.timeout(60)
def test_run_refuses_to_overwrite_and_resume_refuses_an_edited_config(case, capsys):
    config = str(case / "config.toml")
    assert main(["run", config, "--steps", "2", "--no-progress"]) == 0
    assert main(["run", config, "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    ckpt = str(case / "out" / "run.ckpt")
    (case / "config.toml").write_text(CONFIG.replace("lr = 0.2", "lr = 0.3"))
    assert main(["resume", ckpt, "--config", config, "--no-progress"]) == 2
    assert "is not the config" in capsys.readouterr().err
    # --force reads the edited file, and the checkpoint still refuses the new lr.
    assert main(["resume", ckpt, "--config", config, "--force", "--no-progress"]) == 2
    assert "lr: checkpoint has 0.2, this run has 0.3" in capsys.readouterr().err
    (case / "config.toml").write_text(CONFIG)
    assert main(["run", config, "--overwrite", "--steps", "1", "--no-progress"]) == 0


@pytest.mark.timeout(60)
def test_resume_runs_only_the_config_the_user_names(case, tmp_path, capsys):
    # Issue 21, item 4: `fg2u-zo resume` ran the command of a config that only the
    # checkpoint named (its config_path and its own config_sha256 edited to match).
    config = str(case / "config.toml")
    assert main(["run", config, "--steps", "2", "--no-progress"]) == 0
    ckpt = case / "out" / "run.ckpt"
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.toml"
    evil.write_text(CONFIG.replace(f"argv = [{json.dumps(sys.executable)}",
                                   f"argv = [\"touch\", {json.dumps(str(marker))}, "
                                   f"{json.dumps(sys.executable)}"))

    def point_at_evil(meta):
        from fg2u_zo.cli.config import file_sha256

        meta["metadata"] = {"config_path": str(evil), "config_sha256": file_sha256(evil)}

    _rewrite_meta(ckpt, point_at_evil)
    capsys.readouterr()
    assert main(["resume", str(ckpt), "--steps", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--config" in err and "never chooses what runs" in err and str(evil) in err
    assert not marker.exists()
    # Named by the user, the right config resumes (its bytes are not the recorded ones:
    # --force, and the trajectory's settings are still checked).
    assert main(["resume", str(ckpt), "--config", config, "--force", "--steps", "3",
                 "--no-progress"]) == 0
    assert not marker.exists()


def _rewrite_meta(path, edit):
    import zipfile

    with zipfile.ZipFile(path) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    meta = json.loads(entries["meta.json"])
    edit(meta)
    entries["meta.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


@pytest.mark.timeout(60)
def test_a_failed_first_solve_does_not_block_the_rerun(case, capsys):
    # Issue 21, item 21: after a failure at the first solve, `run` said the checkpoint
    # exists and `resume` that the config changed.
    config = case / "config.toml"
    config.write_text(CONFIG.replace('output = "out.txt"', 'output = "nothing.txt"'))
    assert main(["run", str(config), "--no-progress"]) == 1
    capsys.readouterr()
    config.write_text(CONFIG)
    assert main(["run", str(config), "--steps", "2", "--no-progress"]) == 0
    assert fz.read_checkpoint(case / "out" / "run.ckpt").step == 2


# -- validation -----------------------------------------------------------------------------
BAD_CONFIGS = [
    pytest.param(("num_directions = 3", "num_direction = 3"),
                 "config.toml: [estimator] has an unknown key 'num_direction'; did you mean "
                 "'num_directions'?", id="unknown-key"),
    pytest.param(("num_directions = 3", 'num_directions = "ten"'),
                 "config.toml: [estimator] num_directions must be an integer >= 1, got 'ten'",
                 id="wrong-type"),
    pytest.param(('data = "cli_obs.txt"', 'data = "missing.npy"'),
                 "config.toml: [outer] data names a file that does not exist: 'missing.npy'",
                 id="missing-file"),
    pytest.param((f"argv = [{json.dumps(sys.executable)}", 'argv = ["no-such-simulator-xyz"'),
                 "config.toml: [solver] argv[0] executable 'no-such-simulator-xyz' not found "
                 "on PATH", id="missing-executable"),
    pytest.param(('name = "FG2UZO"', 'name = "FG2UZ0"'),
                 "config.toml: [estimator] name must be one of", id="bad-estimator-name"),
    pytest.param(("[optimizer]", "[optimiser]"),
                 "config.toml: the top level has an unknown key 'optimiser'; did you mean "
                 "'optimizer'?", id="unknown-section"),
    pytest.param(("lr = 0.2", 'lr = "fast"'),
                 "config.toml: [optimizer] lr must be a number, got 'fast'", id="wrong-lr"),
    pytest.param(('template = "cli_template.txt"', 'template = "cli_template.tx"'),
                 "config.toml: [solver] template names a file that does not exist",
                 id="missing-template"),
    pytest.param(("init = [1.0, 1.0, 0.0]", "init = [1.0, 1.0]"),
                 "config.toml: [parameters] names has 3 names for 2 parameters",
                 id="wrong-length"),
    pytest.param(("steps = 10", "steps = 10\n[[optimizer.phases]]\nsteps = 3\nlrr = 0.1"),
                 "did you mean 'lr'?", id="unknown-phase-key"),
    # Values the constructors check (solvers.Subprocess, fz.LeastSquares, the stepper
    # registry, the transforms), their message re-worded to name the TOML key.
    pytest.param(("timeout = 60", "timeout = -1"),
                 "config.toml: [solver] timeout must be > 0, got -1.0", id="solver-timeout"),
    pytest.param(('output = "out.txt"', 'output = "out.txt"\nskiprows = -1'),
                 "config.toml: [solver] skiprows must be >= 0, got -1", id="solver-skiprows"),
    pytest.param(('output = "out.txt"', 'output = "out.txt"\nusecols = "1"'),
                 "config.toml: [solver] usecols must be an int or a sequence of ints",
                 id="solver-usecols"),
    pytest.param(('name = "adam"', 'name = "Rpropp"'),
                 "config.toml: [optimizer] name 'Rpropp' is not a known stepper; did you mean "
                 "'Rprop'", id="optimizer-name"),
    pytest.param(('data = "cli_obs.txt"', 'data = "cli_obs.txt"\nscale = "men"'),
                 "config.toml: [outer] scale must be one of 'mean', 'sum'; got 'men'; did you "
                 "mean 'mean'?", id="outer-scale"),
    pytest.param(('data = "cli_obs.txt"', 'data = "cli_obs.txt"\nweights = [1.0, 2.0]'),
                 "config.toml: [outer] weights has 2 values for 12 data", id="outer-weights"),
    pytest.param(('data = "cli_obs.txt"', 'data = "cli_obs.txt"\nselection = [0, -1]'),
                 "config.toml: [outer] selection must hold indices >= 0", id="outer-selection"),
    pytest.param(("names = [", 'transform = "lg"\nnames = ['),
                 "config.toml: [parameters] transform must be one of", id="transform"),
]


@pytest.mark.parametrize("edit, message", BAD_CONFIGS)
def test_bad_config_exits_2_with_one_message_and_writes_nothing(case, monkeypatch, capsys,
                                                                  edit, message):
    old, new = edit
    assert old in CONFIG
    (case / "config.toml").write_text(CONFIG.replace(old, new, 1))
    monkeypatch.chdir(case)
    before = sorted(os.listdir(case))
    for command in (["run", "config.toml"], ["check-gradient", "config.toml"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert err.count("\n") == 1  # one clear line
    assert sorted(os.listdir(case)) == before  # no checkpoint, no history, no out/


def test_config_suggests_for_near_misses_in_values(case):
    (case / "config.toml").write_text(CONFIG.replace('scheme = "forward"',
                                                     'scheme = "forwards"'))
    with pytest.raises(fz.ConfigError, match=r"\[estimator\] scheme must be one of"):
        load_config(case / "config.toml")


@pytest.mark.timeout(60)
def test_a_config_without_estimator_and_optimizer_runs_the_defaults(case, capsys):
    # [estimator] and [optimizer] are optional: fz.minimize's defaults (Gauss-Newton on
    # forward differences) fit the exact data of amplitude 2, rate 1.3, offset 0.5 and
    # stop by themselves.
    text = PYTHON_CONFIG.split("[estimator]")[0] + '[output]\ncheckpoint = "out/run.ckpt"\n'
    (case / "config.toml").write_text(text)
    assert main(["run", str(case / "config.toml"), "--no-progress"]) == 0
    assert "converged" in capsys.readouterr().out
    saved = fz.read_checkpoint(case / "out" / "run.ckpt")
    assert saved.config["optimizer"]["name"] == "gauss-newton"
    phi = saved.search.runs[0].z
    np.testing.assert_allclose(phi, [2.0, 1.3, 0.5], rtol=1e-6)


def test_config_builds_phases_with_a_low_fidelity_solver(case):
    text = PYTHON_CONFIG.replace("[optimizer]\nsteps = 5", """[optimizer]
lr = 0.1
[[optimizer.phases]]
steps = 4
estimator = { num_directions = 1, directions = "gaussian" }
solver = { kwargs = { t_max = 2.0 } }
[[optimizer.phases]]
steps = 2
lr = 0.05
""")
    (case / "config.toml").write_text(text)
    cfg = load_config(case / "config.toml")
    low, full = cfg.phases
    assert (low.steps, full.steps, full.lr) == (4, 2, 0.05)
    assert low.estimator.num_directions == 1 and low.estimator.step == "auto"
    assert low.solver.keywords == {"t_max": 2.0} and full.solver is None
    phi = np.array([1.0, 1.0, 0.5])
    assert not np.allclose(low.solver(phi), cfg.problem.inner(phi))


# A legacy code that writes a table with a header line and a time column, and a
# trailing remark after '%' on every row; the model is cli_sim's.
TABLE_SIM = """import cli_sim
p = cli_sim.read_params()
with open("table.txt", "w") as fh:
    fh.write("TIME Y(T)\\n")
    for t, y in zip(cli_sim.TIMES, cli_sim.model(**p)):
        fh.write(repr(t) + " " + repr(y) + "  % checked\\n")
"""
TABLE_READER = """import os
import numpy as np

def read(workdir):
    return np.loadtxt(os.path.join(workdir, "table.txt"), skiprows=1, usecols=1,
                      comments="%")
"""


def _table_config(case, solver_keys):
    (case / "table_sim.py").write_text(TABLE_SIM)
    (case / "table_reader.py").write_text(TABLE_READER)
    text = CONFIG.replace('"cli_sim.py"]', '"table_sim.py"]').replace(
        'output = "out.txt"', solver_keys)
    (case / "config.toml").write_text(text)
    return load_config(case / "config.toml")


@pytest.mark.parametrize("solver_keys", [
    'output = "table.txt"\nskiprows = 1\nusecols = [1]\ncomments = "%"',
    'output = "table.txt"\nskiprows = 1\nusecols = 1\ncomments = ["%", "#"]',
    'reader = "table_reader.py:read"',
], ids=["skiprows-usecols-comments", "scalar-usecols", "reader"])
def test_solver_reads_a_table_with_a_header(case, solver_keys):
    sim = runpy.run_path(os.path.join(DATA, "cli_sim.py"))  # not as __main__: no run
    cfg = _table_config(case, solver_keys)
    phi = np.array([2.0, 1.3, 0.5])
    np.testing.assert_array_equal(cfg.problem.inner(phi), sim["model"](*phi))


def test_solver_table_without_its_keys_fails_on_the_header(case):
    cfg = _table_config(case, 'output = "table.txt"')
    with pytest.raises(fz.InnerSolverError, match="TIME"):
        cfg.problem.inner(np.array([2.0, 1.3, 0.5]))


# -- check-gradient and plot ----------------------------------------------------------------
@pytest.mark.timeout(60)
def test_check_gradient_prints_the_report(case, capsys):
    (case / "config.toml").write_text(PYTHON_CONFIG)
    assert main(["check-gradient", str(case / "config.toml"), "--tol", "1e-5"]) == 0
    out = capsys.readouterr().out
    for field in ("estimator : FG2UZO", "reference : CoordinateFD", "rel_err", "cosine",
                  "step      :", "noise     :"):
        assert field in out, out
    rel_err = float(re.search(r"rel_err\s+:\s+(\S+)", out).group(1))
    assert rel_err < 1e-5


@pytest.fixture(scope="module")
def history_file(tmp_path_factory):
    from fg2u_zo.testing import RidgeHyperproblem

    path = tmp_path_factory.mktemp("plot") / "run.jsonl"
    fz.minimize(RidgeHyperproblem().problem(), np.zeros(5), lr=0.1, rng=0, history=path,
                progress=False, phases=[
                    fz.Phase(steps=4, estimator=fz.FG2UZO(num_directions=2, step=1e-6)),
                    fz.Phase(steps=4, estimator=fz.FG2UZO(num_directions=6, step=1e-6))])
    return path


def test_plot_writes_a_png_of_the_stated_size(history_file, tmp_path, capsys):
    import matplotlib.image

    out = tmp_path / "figure.png"
    assert main(["plot", str(history_file), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    pixels = matplotlib.image.imread(out)
    assert pixels.shape[:2] == (800, 1200)  # 12 x 8 in at 100 dpi
    # Default output: next to the history.
    assert main(["plot", str(history_file)]) == 0
    assert os.path.exists(str(history_file)[:-len(".jsonl")] + ".png")


def test_figure_has_the_stated_axes(history_file):
    from fg2u_zo.cli.plotting import AXIS_LABELS, DPI, FIGSIZE, history_figure

    fig = history_figure(history_file)
    labels = [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]
    assert labels == list(AXIS_LABELS)
    assert labels[1][0].startswith("inner solves") and labels[2][0].startswith("wall-clock")
    assert "SNR" in labels[3][1]
    assert tuple(fig.get_size_inches()) == FIGSIZE and fig.dpi == DPI
    # Value panels plot one point per step.
    assert len(fig.axes[0].lines[0].get_xdata()) == 8


def test_plot_errors_exit_2(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "none.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(["plot", str(empty)]) == 2
    assert "no steps" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_run_summary_reports_dropped_evaluations_by_kind(case, monkeypatch, capsys):
    config = PYTHON_CONFIG.replace("cli_model.py:decay", "cli_model.py:flaky_decay").replace(
        'step = "auto"', 'step = 1e-6\nscheme = "forward"') + (
        "\n[parallel]\nbackend = \"sequential\"\nmax_retries = 0\n")
    (case / "flaky.toml").write_text(config)
    monkeypatch.chdir(case)
    assert main(["run", "flaky.toml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"failures\s+(\d+) evaluations dropped \(exception (\d+)\)", out)
    assert match, out
    assert int(match.group(1)) == int(match.group(2)) >= 1


@pytest.mark.timeout(60)
def test_check_gradient_exits_non_zero_on_a_failed_verdict(case, monkeypatch, capsys):
    from fg2u_zo.cli.main import EXIT_FAILED

    (case / "tiny.toml").write_text(PYTHON_CONFIG.replace('step = "auto"', "step = 1e-17"))
    monkeypatch.chdir(case)
    with pytest.warns(fz.ZeroDifferenceWarning):
        code = main(["check-gradient", "tiny.toml"])
    assert code == EXIT_FAILED
    assert "FAILED" in capsys.readouterr().out


# -- [continuation] and [multistart] ---------------------------------------------------------
OSCILLATOR_CONFIG = """
[solver]
kind = "python"
entry = "cli_oscillator.py:oscillator"

[outer]
data = "osc_obs.txt"

[parameters]
init = [2.0]
bounds = [0.1, 5.0]

[estimator]
name = "FG2UZO"
num_directions = 1
directions = "orthogonal"
step = 1e-6

[optimizer]
name = "Rprop"
lr = 0.05
{steps}
[output]
history = "osc.jsonl"
seed = 0
{continuation}
"""

CONTINUATION_TABLE = """
[continuation]
times = "osc_times.txt"
horizons = "auto"
min_points = 8
steps = 200
move_on = { xtol = 1e-3, patience = 3 }
stop = { xtol = 1e-6 }
"""


@pytest.fixture
def oscillator_case(tmp_path):
    """The damped oscillator of tests/data/cli_oscillator.py, its frequency 1.3, observed
    at 100 times up to t = 20; the fit starts at 2.0."""
    sys.path.insert(0, DATA)
    try:
        from cli_oscillator import TIMES, oscillator
    finally:
        sys.path.remove(DATA)
    shutil.copy(os.path.join(DATA, "cli_oscillator.py"), tmp_path / "cli_oscillator.py")
    np.savetxt(tmp_path / "osc_obs.txt", oscillator(np.array([1.3])))
    np.savetxt(tmp_path / "osc_times.txt", TIMES)
    return tmp_path


@pytest.mark.timeout(120)
def test_continuation_reaches_the_frequency_a_plain_run_misses(oscillator_case, monkeypatch,
                                                               capsys):
    monkeypatch.chdir(oscillator_case)
    plain = OSCILLATOR_CONFIG.format(steps="steps = 200", continuation="")
    (oscillator_case / "plain.toml").write_text(plain)
    assert main(["run", "plain.toml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    phi = float(re.search(r"phi\s+\[(\S+)\]", out).group(1))
    assert abs(phi - 1.3) > 0.1, out         # a wrong minimum: some crests line up

    config = OSCILLATOR_CONFIG.format(steps="", continuation=CONTINUATION_TABLE)
    (oscillator_case / "cont.toml").write_text(config)
    assert main(["run", "cont.toml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    phi = float(re.search(r"phi\s+\[(\S+)\]", out).group(1))
    # The last phase stops once Rprop's steps stay below 1e-6 for 3 steps.
    assert abs(phi - 1.3) < 1e-4, out
    assert _value(out) < 1e-8, out
    horizons = [float(h) for h in re.findall(r"phase \d+\s+horizon (\S+),", out)]
    assert len(horizons) >= 3 and horizons == sorted(horizons) and horizons[-1] == 20.0
    records = [json.loads(line) for line in open(oscillator_case / "osc.jsonl")]
    phases = [r["phase"] for r in records]
    assert phases == sorted(phases) and set(phases) == set(range(len(horizons)))


@pytest.mark.timeout(120)
def test_a_continuation_run_is_resumed_where_it_stopped(oscillator_case, monkeypatch,
                                                        capsys):
    # A [continuation] run is one run with a checkpoint: stopped by its budget, resumed
    # with the budget lifted (an edited config: --force), it ends where the run that was
    # never stopped ends, bit for bit.
    monkeypatch.chdir(oscillator_case)
    full = OSCILLATOR_CONFIG.format(steps="", continuation=CONTINUATION_TABLE).replace(
        "seed = 0", 'seed = 0\ncheckpoint = "full.ckpt"')
    (oscillator_case / "full.toml").write_text(full)
    assert main(["run", "full.toml", "--no-progress"]) == 0
    reference = fz.read_checkpoint(oscillator_case / "full.ckpt")
    capsys.readouterr()
    cut = full.replace("full.ckpt", "cut.ckpt").replace("lr = 0.05", "lr = 0.05\nmax_nfev = 150")
    (oscillator_case / "cut.toml").write_text(cut)
    assert main(["run", "cut.toml", "--no-progress"]) == 0
    stopped = fz.read_checkpoint(oscillator_case / "cut.ckpt")
    assert stopped.step < reference.step and stopped.search.runs[0].status == "max_nfev"
    (oscillator_case / "cut.toml").write_text(full.replace("full.ckpt", "cut.ckpt"))
    capsys.readouterr()
    assert main(["resume", "cut.ckpt", "--config", "cut.toml", "--no-progress"]) == 2
    assert "--force" in capsys.readouterr().err   # not the bytes it was written with
    # `run --resume` (what a requeued batch job runs) continues it with the new budget;
    # the settings that change the trajectory are still checked.
    assert main(["run", "cut.toml", "--resume", "--no-progress"]) == 0
    resumed = fz.read_checkpoint(oscillator_case / "cut.ckpt")
    assert resumed.phis.tobytes() == reference.phis.tobytes()
    assert resumed.step == reference.step and resumed.status == "finished"


def test_continuation_passes_the_horizon_and_keeps_the_early_data(oscillator_case):
    import torch

    (oscillator_case / "cont.toml").write_text(
        OSCILLATOR_CONFIG.format(steps="", continuation=CONTINUATION_TABLE))
    cfg = load_config(oscillator_case / "cont.toml")
    times = np.loadtxt(oscillator_case / "osc_times.txt")
    horizons = fz.horizon_schedule(times, min_points=8)
    assert cfg.continuation and [p.name for p in cfg.phases] == [
        f"horizon {h:g}" for h in horizons]
    for horizon, phase in zip(horizons, cfg.phases):
        theta = phase.solver(np.array([1.3]))
        assert theta.size == phase.outer.data.size == np.sum(times <= horizon)
        assert float(phase.outer(torch.as_tensor(theta), torch.zeros(1))) < 1e-20
    assert cfg.phases[-1].until == fz.Converged(xtol=1e-6)
    assert all(p.until == fz.Converged(xtol=1e-3, patience=3) for p in cfg.phases[:-1])


RASTRIGIN_CONFIG = """
[solver]
kind = "python"
entry = "cli_oscillator.py:rastrigin"

[outer]
data = "zeros.txt"
scale = "sum"

[parameters]
init = [-1.5, 1.5]
bounds = [-2.0, 2.0]

[estimator]
name = "FG2UZO"
num_directions = 2
directions = "orthogonal"
step = 1e-6

[optimizer]
name = "Rprop"
lr = 0.05
steps = 40

[output]
seed = 0

[multistart]
num_starts = 32
num_local = 8
design = "sobol"
halving = 2
"""


@pytest.fixture
def rastrigin_case(tmp_path):
    shutil.copy(os.path.join(DATA, "cli_oscillator.py"), tmp_path / "cli_oscillator.py")
    np.savetxt(tmp_path / "zeros.txt", np.zeros(4))
    (tmp_path / "ms.toml").write_text(RASTRIGIN_CONFIG)
    return tmp_path


@pytest.mark.timeout(120)
def test_multistart_finds_the_global_minimum_a_plain_run_misses(rastrigin_case, monkeypatch,
                                                                 capsys):
    monkeypatch.chdir(rastrigin_case)
    plain = RASTRIGIN_CONFIG.split("[multistart]")[0]
    (rastrigin_case / "plain.toml").write_text(plain)
    assert main(["run", "plain.toml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert _value(out) > 0.5, out            # a local minimum near the start

    assert main(["run", "ms.toml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    phi = [float(v) for v in re.search(r"phi\s+\[([^\]]+)\]", out).group(1).split(",")]
    # Rprop's last steps are lr * 0.5**k: 40 steps end well within 1e-3 of a minimum.
    assert np.allclose(phi, [0.7, -1.3], atol=1e-3), out
    assert _value(out) < 1e-5, out
    ends = re.findall(r"run \d+\s+value (\S+)", out)
    assert len(ends) == 8, out               # every local run's end is reported


@pytest.mark.parametrize("table, edit, message", [
    pytest.param("continuation", ("min_points = 8", "min_point = 8"),
                 "[continuation] has an unknown key 'min_point'; did you mean 'min_points'?",
                 id="continuation-key"),
    pytest.param("continuation", ("xtol = 1e-3,", "xtl = 1e-3,"),
                 "[continuation] move_on has an unknown key 'xtl'; did you mean 'xtol'?",
                 id="converged-key"),
    pytest.param("continuation", ('times = "osc_times.txt"', "times = [1.0, 2.0]"),
                 "[continuation] times has 2 times for the 100 entries of [outer] data",
                 id="times-length"),
    pytest.param("continuation", ("steps = 200", "steps = [200, 1]"),
                 "[continuation] steps must have one entry per phase",
                 id="steps-per-phase"),
    pytest.param("multistart", ("num_local = 8", "num_locals = 8"),
                 "[multistart] has an unknown key 'num_locals'; did you mean 'num_local'?",
                 id="multistart-key"),
    pytest.param("multistart", ('design = "sobol"', 'design = "sobl"'),
                 "[multistart] design must be one of 'sobol', 'lhs', 'halton', got 'sobl'",
                 id="multistart-design"),
    pytest.param("multistart", ("bounds = [-2.0, 2.0]", "bounds = [-2.0, inf]"),
                 "[parameters] bounds (hi) must be finite for [multistart]",
                 id="multistart-bounds"),
])
def test_bad_search_table_exits_2_naming_the_key(oscillator_case, monkeypatch, capsys, table,
                                                  edit, message):
    monkeypatch.chdir(oscillator_case)
    np.savetxt(oscillator_case / "zeros.txt", np.zeros(4))
    if table == "continuation":
        config = OSCILLATOR_CONFIG.format(steps="", continuation=CONTINUATION_TABLE)
    else:
        config = RASTRIGIN_CONFIG
    old, new = edit
    assert old in config
    config = config.replace(old, new, 1)
    (oscillator_case / "bad.toml").write_text(config)
    before = sorted(os.listdir(oscillator_case))
    assert main(["run", "bad.toml"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1
    assert sorted(os.listdir(oscillator_case)) == before


@pytest.mark.timeout(120)
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigint_is_reported_once_and_exits_130(case):
    # Issue 21, item 22: the SIGINT message was printed twice (once as "error:").
    import signal
    import subprocess
    import time

    config = case / "config.toml"
    config.write_text(CONFIG.replace("steps = 10", "steps = 200"))
    proc = subprocess.Popen([sys.executable, "-m", "fg2u_zo.cli", "run", str(config),
                             "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    history = case / "out" / "run.jsonl"
    deadline = time.monotonic() + 90
    while not (history.exists() and history.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.count("stopped by SIGINT") == 1, err
    assert "error:" not in err, err
    assert fz.read_checkpoint(case / "out" / "run.ckpt").status == "interrupted"
