"""The [uncertainty] table of `fg2u-zo run`, its summary, its file and its plot."""

import os
import re
import shutil

import numpy as np
import pytest

import fg2u_zo as fz
from fg2u_zo.cli.config import load_config
from fg2u_zo.cli.main import main

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

# cli_obs.txt holds amplitude * exp(-rate * t) + offset at (2.0, 1.3, 0.5), without noise.
CONFIG = """
[solver]
kind = "python"
entry = "cli_model.py:decay"

[outer]
data = "cli_obs.txt"

[parameters]
init = [1.0, 1.0, 0.0]
names = ["amplitude", "rate", "offset"]
transform = ["log", "log", "identity"]

[estimator]
name = "FG2UZO"
scheme = "forward"
step = 1e-7

[optimizer]
name = "gauss-newton"
steps = 15

[parallel]
backend = "sequential"

[output]
history = "out/run.jsonl"
seed = 0
"""


@pytest.fixture
def case(tmp_path, monkeypatch):
    for name in ("cli_obs.txt", "cli_model.py"):
        shutil.copy(os.path.join(DATA, name), tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _rows(out):
    """name -> (value, stderr, lo, hi) of the printed table."""
    rows = {}
    for m in re.finditer(r"^\s+(\w+)(?: \(\w+\))?\s+(\S+)\s+(\S+)\s+\[(\S+), (\S+)\]", out,
                         re.MULTILINE):
        rows[m.group(1)] = tuple(float(m.group(k)) for k in range(2, 6))
    return rows


@pytest.mark.timeout(120)
def test_run_prints_saves_and_plots_the_uncertainty(case, capsys):
    import matplotlib.image

    (case / "run.toml").write_text(CONFIG + '\n[uncertainty]\nmethod = "profile"\n'
                                            "sigma = 0.01\n")
    assert main(["run", "run.toml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert set(rows) == {"amplitude", "rate", "offset"}, out
    assert "(profile, least squares, 95%, normal quantile" in out
    saved = case / "out" / "run.uncertainty.json"
    assert f"uncertainty {saved}" in out
    unc = fz.Uncertainty.load(saved)
    # The same as fz.uncertainty on the fit, with the config's names, transform and sigma.
    cfg = load_config(case / "run.toml")
    direct = fz.uncertainty(unc.phi, cfg.problem, transform=["log", "log", "identity"],
                            sigma=0.01, rng=0, warn=False)
    np.testing.assert_allclose(unc.stderr, direct.stderr, rtol=1e-6)
    np.testing.assert_allclose(unc.linear_interval, direct.interval, rtol=1e-6)
    truth = np.array([2.0, 1.3, 0.5])
    assert np.all((unc.interval[:, 0] < truth) & (truth < unc.interval[:, 1]))
    for name, (value, stderr, lo, hi) in rows.items():
        i = unc.names.index(name)
        assert stderr == pytest.approx(unc.stderr[i], rel=1e-5)
        assert (lo, hi) == pytest.approx(tuple(unc.interval[i]), rel=1e-5)
    # A log parameter's interval is asymmetric in phi; the offset's is not transformed.
    assert unc.transform.kinds == ("log", "log", "identity") and unc.profiles is not None

    assert main(["plot", str(saved)]) == 0
    png = case / "out" / "run.uncertainty.png"
    assert capsys.readouterr().out.strip() == str(png)
    assert matplotlib.image.imread(png).shape[0] == 750


@pytest.mark.timeout(120)
def test_uncertainty_is_on_for_least_squares_and_can_be_turned_off(case, capsys):
    (case / "on.toml").write_text(CONFIG)
    assert main(["run", "on.toml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(linear, least squares, 95%, Student's t, 9 dof" in out
    (case / "off.toml").write_text(CONFIG + "\n[uncertainty]\nenabled = false\n")
    assert main(["run", "off.toml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "95% interval" not in out and "uncertainty (" not in out, out


@pytest.mark.parametrize("table, message", [
    ("confidance = 0.9", "[uncertainty] has an unknown key 'confidance'; did you mean "
                         "'confidence'?"),
    ("confidence = 95", "[uncertainty] confidence must be in (0, 1)"),
    ('method = "bootstrap"', "[uncertainty] method must be one of 'linear', 'profile'"),
    ("sigma = -1.0", "[uncertainty] sigma must be a number > 0"),
])
def test_bad_uncertainty_table_exits_2_before_running(case, capsys, table, message):
    (case / "bad.toml").write_text(CONFIG + f"\n[uncertainty]\n{table}\n")
    assert main(["run", "bad.toml", "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (case / "out").exists()


def test_plot_refuses_a_json_that_is_not_an_uncertainty(case, capsys):
    (case / "other.json").write_text('{"format": "something else"}')
    assert main(["plot", "other.json"]) == 2
    assert "not an uncertainty record" in capsys.readouterr().err
