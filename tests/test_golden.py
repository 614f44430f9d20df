"""Fixed seeds give the same bytes as recorded before the package was restructured.

The golden file (``tests/data/golden/golden.npz``) was recorded with ``python -m
tests._golden`` on the code before the split into subpackages; estimates on three
backends, the exact torch path and two minimize runs with a checkpoint and a resume
must reproduce it exactly (``np.array_equal``, no tolerance).
"""

import numpy as np
import pytest

from _golden import BACKENDS, GOLDEN, estimate_cases, run_cases

golden = np.load(GOLDEN)
CASES, EXACT = estimate_cases()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_estimate_is_bitwise_the_recorded_one(name, backend):
    g = CASES[name](backend)
    np.testing.assert_array_equal(g.grad, golden[f"{name}__{backend}__grad"])
    np.testing.assert_array_equal(g.stderr, golden[f"{name}__{backend}__stderr"])
    assert g.value == golden[f"{name}__{backend}__value"][0]


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_estimate_is_bitwise_the_recorded_one(name):
    g = EXACT[name]()
    np.testing.assert_array_equal(g.grad, golden[f"{name}__grad"])


def test_minimize_and_resume_trajectories_are_bitwise_the_recorded_ones(tmp_path):
    runs = run_cases(str(tmp_path))
    for key, traj in runs.items():
        np.testing.assert_array_equal(traj, golden[key], err_msg=key)
