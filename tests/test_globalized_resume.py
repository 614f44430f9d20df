"""A continuation plus multi-start run killed (SIGKILL) at random moments and resumed each
time ends bit for bit where the uninterrupted run ends, and solves nothing twice but what
was in flight at each kill."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from _process_checks import load_child
from fg2u_zo.persist.checkpoint import read_checkpoint

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
CHILD = os.path.join(DATA, "globalized_child.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

child = load_child(CHILD)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="POSIX signals")
@pytest.mark.timeout(600)
def test_sigkill_at_random_moments_then_resume_is_bitwise_the_uninterrupted_run(tmp_path):
    reference = child.run(backend="loky")
    assert abs(reference.phi[0] - 1.3) < 1e-4 and len(reference.runs) == 3

    ckpt, markers = tmp_path / "run.ckpt", tmp_path / "markers"
    markers.mkdir()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rng = np.random.default_rng(0)
    kills, out = 0, None
    # Each process runs until it has solved a random number of points more (whatever
    # the machine's load, it made progress), then dies without a chance to clean up;
    # the next one resumes from the checkpoint and the journal.
    while out is None:
        proc = subprocess.Popen([sys.executable, CHILD, str(ckpt), str(markers)], env=env,
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        target = len(os.listdir(markers)) + int(rng.integers(40, 160))
        deadline = time.monotonic() + 300
        while proc.poll() is None and len(os.listdir(markers)) < target:
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            kills += 1
            continue
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        out = stdout.split()
    assert kills >= 2  # it was interrupted, more than once
    phi_hex, nfev, replayed = out[0], int(out[1]), int(out[2])
    # Bit for bit the uninterrupted run's end.
    assert phi_hex == reference.phi.tobytes().hex()
    assert read_checkpoint(ckpt).status == "finished"
    # Every solve of every process left a marker. Beyond the uninterrupted run's solves,
    # only those in flight at a kill (at most one per worker: each solve is its own task)
    # were solved again; the journal answered the rest.
    solved = len(os.listdir(markers))
    assert reference.nfev <= solved <= reference.nfev + 2 * kills, (solved, kills)
    assert nfev + replayed >= reference.nfev
