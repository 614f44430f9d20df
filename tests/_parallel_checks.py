"""One check for every adapter: a solver gives bitwise the same output in a loky or dask
worker as in this process (it pickles, and nothing in it depends on the process)."""

import warnings

import joblib
import numpy as np


def _assert_all_equal(serial, parallel):
    assert len(serial) == len(parallel)
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a, b)


def assert_loky_matches_serial(jobs):
    """``jobs``: ``(solver, phi)`` pairs, run here and on 2 loky workers."""
    jobs = list(jobs)
    serial = [solver(phi) for solver, phi in jobs]
    parallel = joblib.Parallel(n_jobs=2, backend="loky")(
        joblib.delayed(solver)(phi) for solver, phi in jobs)
    _assert_all_equal(serial, parallel)


def assert_dask_matches_serial(client, jobs):
    """``jobs``: ``(solver, phi)`` pairs, run here and on the dask ``client``'s workers."""
    jobs = list(jobs)
    serial = [solver(phi) for solver, phi in jobs]
    futures = [client.submit(solver, phi, pure=False) for solver, phi in jobs]
    with warnings.catch_warnings():
        # a solver's own warnings (e.g. non-convergence) come back through the client
        warnings.simplefilter("ignore")
        parallel = client.gather(futures)
    _assert_all_equal(serial, parallel)
