"""examples/data_condensation.py --quick: the condensed digits must beat the real ones.

Thresholds set from measured runs of the quick mode (T = 20, k = 1, 60 Adam steps,
FG2U b = 16): seed 0 gave acc_fg2u 0.917, acc_rgu 0.939, acc_trgu 0.933 against
0.706 for the random real images they started from (seed 1: 0.906 / 0.935 / 0.933 vs
0.665); mem_rgu_mb 9.6 vs mem_fg2u_mb 1.2 at T = 300.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "data_condensation.py")

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def quick_run():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--seed", "0"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return json.loads(lines[-1]), proc.stdout


def test_condensed_images_beat_random_real_images(quick_run):
    res, out = quick_run
    assert res["mode"] == "quick" and res["k"] == 1 and res["T"] == 20
    # Ten real images (one per class) train a classifier to ~0.7; ten learned ones,
    # whichever exact estimator learned them, to ~0.9 or more.
    assert 0.5 < res["acc_random_baseline"] < 0.8, out
    for key in ("acc_fg2u", "acc_rgu", "acc_trgu"):
        assert res[key] >= 0.85, (key, out)
        assert res[key] >= res["acc_random_baseline"] + 0.10, (key, out)
    # The outer loss (cross-entropy on real training images) fell by over 20 %.
    for name, (first, last) in res["outer_loss"].items():
        assert last < 0.8 * first, (name, out)


def test_reverse_unrolling_memory_grows_with_depth_fg2u_does_not(quick_run):
    res, out = quick_run
    assert res["mem_T"] == 300
    # RGU keeps at least theta_t (650 float64) for each of the 300 steps, ~1.5 MB;
    # FG2U keeps only b = 16 directions' worth of state, whatever T.
    assert res["mem_rgu_mb"] >= 300 * 650 * 8 / 2**20, out
    assert res["mem_rgu_mb"] > 3 * res["mem_fg2u_mb"], out
    assert res["mem_trgu_mb"] < res["mem_rgu_mb"] / 3, out
