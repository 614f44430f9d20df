"""A dask cluster that lost every worker fails the map instead of hanging forever."""

import pytest

pytest.importorskip("distributed")

from fg2u_zo.errors import InnerSolverError  # noqa: E402
from fg2u_zo.evaluation.backends import dask as dask_backend  # noqa: E402


class _Client:
    status = "running"

    def __init__(self, workers):
        self.workers = workers

    def scheduler_info(self):
        return {"workers": self.workers}


def _backend(client):
    backend = dask_backend.DaskBackend(1, client=client)
    backend._futures = {0: object()}  # one task outstanding
    return backend


def test_no_workers_past_the_grace_period_raises_a_crash(monkeypatch):
    monkeypatch.setattr(dask_backend, "NO_WORKER_GRACE_SECONDS", 0.0)
    monkeypatch.setattr(dask_backend, "_WORKER_CHECK_SECONDS", 0.0)
    backend = _backend(_Client({}))
    backend._check_workers_present()          # first sight of an empty cluster
    with pytest.raises(InnerSolverError, match="no workers") as info:
        backend._check_workers_present()      # still empty after the grace period
    assert info.value.kind == "crash"


def test_a_worker_coming_back_resets_the_clock(monkeypatch):
    monkeypatch.setattr(dask_backend, "NO_WORKER_GRACE_SECONDS", 0.0)
    monkeypatch.setattr(dask_backend, "_WORKER_CHECK_SECONDS", 0.0)
    client = _Client({})
    backend = _backend(client)
    backend._check_workers_present()
    client.workers = {"tcp://127.0.0.1:1": {}}
    backend._check_workers_present()          # a worker is back: no error
    client.workers = {}
    backend._check_workers_present()          # the clock starts again
    with pytest.raises(InnerSolverError):
        backend._check_workers_present()


def test_no_check_without_outstanding_tasks(monkeypatch):
    monkeypatch.setattr(dask_backend, "NO_WORKER_GRACE_SECONDS", 0.0)
    monkeypatch.setattr(dask_backend, "_WORKER_CHECK_SECONDS", 0.0)
    backend = _backend(_Client({}))
    backend._futures = {}
    backend._check_workers_present()
    backend._check_workers_present()          # idle: an empty cluster is no error
