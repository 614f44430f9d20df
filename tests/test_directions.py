import numpy as np
import pytest

import fg2u_zo as fz
from fg2u_zo.directions import sample_directions

FAMILIES = fz.DIRECTION_FAMILIES


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("antithetic", [False, True])
def test_second_moment_is_identity(family, antithetic):
    n, b = 4, 20000
    V = sample_directions(family, n, b, rng=1, antithetic=antithetic)
    assert V.shape == (b, n)
    outer = V[:, :, None] * V[:, None, :]
    mean = outer.mean(axis=0)
    # Tolerance from the Monte-Carlo standard error of each entry of E[v v^T]
    # (a zero-variance entry, e.g. rademacher diagonals, must match exactly).
    se = outer.std(axis=0, ddof=1) / np.sqrt(b)
    assert np.all(np.abs(mean - np.eye(n)) <= 5 * se + 1e-12)


def test_family_specific_geometry():
    n = 6
    sph = sample_directions("sphere", n, 50, rng=0)
    np.testing.assert_allclose(np.linalg.norm(sph, axis=1), np.sqrt(n))
    rad = sample_directions("rademacher", n, 50, rng=0)
    assert set(np.unique(rad)) == {-1.0, 1.0}
    orth = sample_directions("orthogonal", n, 2 * n + 3, rng=0)
    for block in (orth[:n], orth[n:2 * n], orth[2 * n:]):
        np.testing.assert_allclose(block @ block.T, n * np.eye(len(block)), atol=1e-10)
    coord = sample_directions("coordinate", n, n, rng=0)
    np.testing.assert_array_equal(np.sort(np.argmax(np.abs(coord), axis=1)), np.arange(n))
    np.testing.assert_allclose(coord.T @ coord, n * np.eye(n))


def test_antithetic_pairs():
    V = sample_directions("gaussian", 3, 8, rng=0, antithetic=True)
    np.testing.assert_array_equal(V[0::2], -V[1::2])


def test_same_seed_same_directions_and_generator_advances():
    a = sample_directions("gaussian", 3, 4, rng=7)
    b = sample_directions("gaussian", 3, 4, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(7)
    first = sample_directions("gaussian", 3, 4, rng=rng)
    second = sample_directions("gaussian", 3, 4, rng=rng)
    assert not np.array_equal(first, second)


def test_bad_arguments():
    with pytest.raises(ValueError, match="directions"):
        sample_directions("cauchy", 3, 4)
    with pytest.raises(fz.FG2UValueError, match="num_directions"):
        sample_directions("gaussian", 3, 0)
    with pytest.raises(fz.FG2UValueError, match="even"):
        sample_directions("gaussian", 3, 3, antithetic=True)
    with pytest.raises(TypeError, match="rng"):
        sample_directions("gaussian", 3, 3, rng="seed")
