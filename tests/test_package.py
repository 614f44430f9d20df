"""The package surface: every public name resolves, and workers stay light."""

import subprocess
import sys

import fg2u_zo as fz


def test_every_public_name_resolves():
    for name in fz.__all__:
        assert getattr(fz, name) is not None, name
    assert set(fz.__all__) <= set(dir(fz))


def test_workers_do_not_import_torch():
    # A parallel worker imports the package to run a numpy solver; torch costs seconds
    # per worker process, so it must stay out of that path.
    code = ("import sys, fg2u_zo, fg2u_zo.evaluation.worker, fg2u_zo.errors, solvers._freefem, "
            "solvers._subprocess; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_version_from_the_command_line():
    out = subprocess.run([sys.executable, "-m", "fg2u_zo.cli.main", "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"fg2u-zo {fz.__version__}"
