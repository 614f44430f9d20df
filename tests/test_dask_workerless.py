"""The dask backend on a cluster that loses workers or its scheduler: it fails a map
instead of hanging forever, reports what dask lost and reran, and says why it waits.

Simulated clients and futures, so that each case is exact and fast; the same cases on
a real cluster of separate processes are in test_dask_cluster_faults.py.
"""

import logging
import pickle

import pytest

pytest.importorskip("distributed")

from distributed.scheduler import KilledWorker  # noqa: E402

from fg2u_zo.errors import InnerSolverError  # noqa: E402
from fg2u_zo.evaluation.backends import ItemDone, TaskDone, TaskLost  # noqa: E402
from fg2u_zo.evaluation.backends import dask as dask_backend  # noqa: E402
from fg2u_zo.evaluation.worker import Outcome  # noqa: E402


class _Client:
    status = "running"

    def __init__(self, workers):
        self.workers = workers
        self._event_handlers = {}

    def scheduler_info(self):
        return {"workers": self.workers}

    def subscribe_topic(self, topic, handler):
        self._event_handlers[topic] = handler

    def unsubscribe_topic(self, topic):
        self._event_handlers.pop(topic, None)


class _State:
    def __init__(self, exception):
        self.exception = exception


class _Future:
    """A finished, cancelled or erred dask future."""

    def __init__(self, key, status, result=None, exception=None):
        self.key, self.status = key, status
        self._result, self._exception = result, exception
        self._state = _State(exception)

    def cancelled(self):
        return self.status == "cancelled"

    def result(self):
        return self._result

    def exception(self):
        return self._exception

    def traceback(self):
        return None

    def add_done_callback(self, callback):
        pass


class _Cancelled(Exception):
    reason = "scheduler-connection-lost"


def _backend(client, futures=None):
    backend = dask_backend.DaskBackend(1, client=client)
    for task_id, (future, items) in (futures or {}).items():
        backend._futures[task_id] = (future, items)
        backend._keys[future.key] = task_id
    return backend


def _one_task(n_points=2, **future):
    items = [(k, None) for k in range(n_points)]
    return {0: (_Future("fg2u-zo-a", **future), items)}


def _collect(backend, task_id=0):
    events = []
    backend._collect((task_id, backend._futures[task_id][0], 0.0), events)
    return events


def test_no_workers_past_the_grace_period_raises_a_crash(monkeypatch, caplog):
    monkeypatch.setattr(dask_backend, "NO_WORKER_GRACE_SECONDS", 0.0)
    monkeypatch.setattr(dask_backend, "_WORKER_CHECK_SECONDS", 0.0)
    backend = _backend(_Client({}), _one_task(3, status="pending"))
    with caplog.at_level(logging.WARNING, logger=dask_backend.__name__):
        backend._check_workers_present()      # first sight of an empty cluster
    # Said at once, not only when the map gives up.
    assert "the dask cluster has no workers; 3 evaluation(s) wait" in caplog.text
    with pytest.raises(InnerSolverError, match="no workers.*3 evaluation") as info:
        backend._check_workers_present()      # still empty after the grace period
    assert info.value.kind == "crash"


def test_a_worker_coming_back_resets_the_clock(monkeypatch):
    monkeypatch.setattr(dask_backend, "NO_WORKER_GRACE_SECONDS", 0.0)
    monkeypatch.setattr(dask_backend, "_WORKER_CHECK_SECONDS", 0.0)
    client = _Client({})
    backend = _backend(client, _one_task(status="pending"))
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
    backend._check_workers_present()
    backend._check_workers_present()          # idle: an empty cluster is no error


def test_a_future_cancelled_by_dask_is_lost_through_no_fault_of_its_points():
    # When the client reconnects to a scheduler, dask cancels every future; they were
    # dropped without an event and the map waited forever for them.
    backend = _backend(_Client({"w": {}}), _one_task(2, status="cancelled",
                                                     exception=_Cancelled()))
    events = _collect(backend)
    assert len(events) == 1 and isinstance(events[0], TaskLost)
    lost = events[0]
    assert (lost.indices, lost.kind, lost.blameless, lost.culprit) == ((0, 1), "scheduler",
                                                                      True, None)
    assert "scheduler-connection-lost" in lost.message
    assert backend._futures == {} and backend._keys == {}


def test_a_closed_client_fails_the_map_counting_the_evaluations_in_flight():
    # The message said "0 task(s) outstanding" while solves were in flight.
    client = _Client({})
    client.status = "closed"
    backend = _backend(client, _one_task(3, status="pending"))
    with pytest.raises(InnerSolverError, match=r"'closed' with 3 evaluation\(s\) in flight"
                                               r".*Restart the scheduler together with its "
                                               r"workers") as info:
        backend.poll(0.0)
    assert info.value.kind == "crash"


def test_waiting_for_the_scheduler_is_logged(caplog):
    client = _Client({})
    client.status = "connecting"
    backend = _backend(client, _one_task(2, status="pending"))
    with caplog.at_level(logging.WARNING, logger=dask_backend.__name__):
        assert backend.poll(0.0) == []
        client.status = "running"
        client.workers = {"w": {}}
        assert backend.poll(0.0) == []
    assert "lost the connection to the dask scheduler with 2 evaluation(s) in flight" \
        in caplog.text
    assert "the dask scheduler is back" in caplog.text
    assert "all" in client._event_handlers  # listening again, to the new scheduler


class _Worker:
    address = "tcp://127.0.0.1:9"


@pytest.mark.parametrize("allowed", [0, 3])
@pytest.mark.parametrize("n_points", [1, 2])
def test_killed_worker(allowed, n_points):
    exc = KilledWorker("fg2u-zo-a", _Worker(), allowed)
    backend = _backend(_Client({}), _one_task(n_points, status="error", exception=exc))
    (lost,) = _collect(backend)
    assert isinstance(lost, TaskLost) and lost.kind == "crash" and not lost.blameless
    if n_points == 1 and allowed:
        # dask ran the point on allowed + 1 workers and lost each: charged at once.
        assert (lost.culprit, lost.attempts, lost.rerun) == (0, allowed + 1, 0)
    else:
        # One death proves nothing about a point that was only queued on the worker,
        # and a batch does not say which point it was: the Evaluator finds out.
        assert (lost.culprit, lost.attempts, lost.rerun) == (None, 1, allowed * n_points)


def test_tasks_on_a_worker_that_left_are_counted_as_rerun(caplog):
    # The scheduler reruns the tasks of a worker that died (allowed-failures > 0): the
    # solves ran twice and nothing said so.
    client = _Client({"w": {}})
    outcomes = [Outcome(k, None, None, 0.0) for k in range(2)]
    backend = _backend(client, _one_task(2, status="finished",
                                         result=(outcomes, False, "tcp://127.0.0.1:8")))
    backend._listen()
    handler = client._event_handlers["all"]
    handler((0.0, {"action": "remove-worker", "worker": "tcp://127.0.0.1:7",
                   "processing-tasks": {"fg2u-zo-a", "someone-else"}, "expected": False}))
    handler((0.0, {"action": "add-worker", "worker": "tcp://127.0.0.1:8"}))
    with caplog.at_level(logging.WARNING, logger=dask_backend.__name__):
        backend._read_notices()
    assert "dask worker tcp://127.0.0.1:7 left the cluster while it held 2 evaluation(s)" \
        in caplog.text
    events = _collect(backend)
    assert [type(e) for e in events] == [ItemDone, ItemDone, TaskDone]
    assert events[-1].rerun == 2


def test_backends_sharing_a_client_each_hear_its_events_and_keep_the_users_handler():
    client = _Client({})
    seen = []
    client._event_handlers["all"] = seen.append
    first, second = _backend(client), _backend(client)
    first._listen()
    second._listen()
    event = (0.0, {"action": "add-worker"})
    client._event_handlers["all"](event)
    assert seen == [event] and list(first._notices) == list(second._notices) == [event]
    first.close()  # not in the reverse order of listening: the other still hears
    client._event_handlers["all"](event)
    assert len(second._notices) == 2 and len(seen) == 2
    second.close()
    assert client._event_handlers["all"] == seen.append


def test_a_scattered_payload_lost_with_the_scheduler_travels_inside_each_task():
    class _Submitting(_Client):
        def __init__(self):
            super().__init__({"w": {}})
            self.sent = []

        def submit(self, func, payload, items, timeout, **kwargs):
            self.sent.append(payload)
            return _Future(kwargs["key"], "pending")

    client = _Submitting()
    backend = _backend(client)
    raw = dask_backend.Payload("token", pickle.dumps(None))
    backend._raw_payload = raw
    backend._payload = _Future("scattered", "finished")
    backend.submit(1, [(0, None)], None)
    assert client.sent[-1] is backend._payload  # scattered copy while it lives
    backend._payload.status = "cancelled"  # gone with the scheduler
    backend.submit(2, [(1, None)], None)
    assert client.sent[-1] is raw
