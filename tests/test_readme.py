"""The README's complete TOML config is accepted by the CLI's config loader as printed.

The README is the documentation most users copy from; this keeps its config example
true to the code (keys, values, the optimizer name)."""

import os
import re

import numpy as np
import pytest

from fg2u_zo.cli.config import load_config

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "README.md")


def _complete_config():
    text = open(README, encoding="utf-8").read()
    blocks = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    complete = [b for b in blocks if "[solver]" in b and "[output]" in b]
    assert complete, "the README has no complete TOML config"
    return complete[0]


def test_readme_config_loads(tmp_path, monkeypatch):
    config = _complete_config()
    # The files it names, as stand-ins: the loader checks they exist.
    (tmp_path / "heat_sim.py").write_text("print('stand-in')\n")
    (tmp_path / "heat_input.tmpl").write_text("{phi}\n")
    (tmp_path / "mesh.msh").write_text("stand-in mesh\n")
    np.save(tmp_path / "observed_temperature.npy", np.zeros(12))
    path = tmp_path / "config.toml"
    path.write_text(config)
    monkeypatch.chdir(tmp_path)
    cfg = load_config(str(path))
    assert cfg.phi0.size == 4
    name = re.search(r'^name = "([^"]+)"', config.split("[optimizer]")[1], flags=re.M)
    assert name and name.group(1) == "gauss-newton"
    assert cfg.minimize_options["optimizer"] == "gauss-newton"


def _quickstart():
    text = open(README, encoding="utf-8").read()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]


@pytest.mark.timeout(120)
def test_readme_quickstart_runs_and_its_minimize_is_gauss_newton(capsys):
    # The quickstart's last call names no optimizer: the default is Gauss-Newton, it
    # stops by itself, and prints what the comment says.
    code = _quickstart()
    namespace = {}
    exec(compile(code, "README.md#quickstart", "exec"), namespace)
    res = namespace["res"]
    assert res.optimizer == "gauss-newton" and res.status == "converged", res
    # The value it stops at is the bounded local optimum's, to the digits printed.
    claimed = re.search(r"# gauss-newton converged (\S+) (\d+)", code)
    assert res.value == pytest.approx(float(claimed.group(1)), abs=5e-7)
    capsys.readouterr()


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])


def _python_blocks():
    text = open(README, encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_readme_python_snippets_run(tmp_path, monkeypatch, capsys):
    """The quickstart, the minimize section (which continues it) and the continuation and
    multi-start snippet run as printed, and say what the README says they do."""
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks()
    quickstart = next(b for b in blocks if "fz.BilevelProblem(inner=inner" in b)
    outer = next(b for b in blocks if "fz.resume(\"ridge.ckpt\"" in b)
    rugged = next(b for b in blocks if "fz.horizon_phases(" in b)
    namespace = {}
    exec(compile(quickstart, "README quickstart", "exec"), namespace)
    exec(compile(outer, "README minimize", "exec"), namespace)
    assert namespace["res"].nit == 100 and (tmp_path / "ridge.ckpt").exists()
    namespace = {}
    exec(compile(rugged, "README continuation", "exec"), namespace)
    res = namespace["res"]
    assert abs(res.phi[0] - 1.3) < 1e-6 and len(res.runs) == 4
    out = capsys.readouterr().out
    assert "converged" in out and "horizon 1.2" in out
