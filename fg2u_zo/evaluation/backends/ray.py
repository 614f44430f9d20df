"""``backend="ray"``: ray tasks (imported only when asked for).

``ray.init(num_cpus=n_jobs)`` unless ray is already initialized, or
``ray.init(address=scheduler_address)``. Each task runs in the main thread of a
worker process: timeouts are enforced with SIGALRM inside the task, and a task that
still does not come back is cancelled with ``ray.cancel(force=True)``, which kills
its worker. Needs ``pip install 'fg2u-zo[ray]'``.
"""

from __future__ import annotations

import time
import uuid

from .base import Backend, pickle_job
from .events import TaskLost, outcome_events
from ..worker import Payload, run_task, tail
from ...errors import FG2UValueError

__all__ = ["RayBackend", "create"]

# Payloads larger than this are put in the object store once per map.
BROADCAST_BYTES = 100_000


class RayBackend(Backend):
    """Tasks on ray; each task runs in the main thread of a worker process."""

    name = "ray"
    task_overhead = 1e-3
    process_isolated = True
    kills_on_timeout = True

    def __init__(self, n_jobs, *, scheduler_address=None, kill_grace=2.0):
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "backend='ray' needs ray, which is not installed: pip install 'fg2u-zo[ray]'"
            ) from exc
        self.n_jobs = n_jobs
        self.scheduler_address = scheduler_address
        self.kill_grace = kill_grace
        self._own = False
        self._remote = None
        self._refs = {}
        self._deadlines = {}
        self._payload = None
        self._capacity = n_jobs

    def start(self):
        import ray
        begin = time.perf_counter()
        if not ray.is_initialized():
            if self.scheduler_address is None:
                ray.init(num_cpus=self.n_jobs, include_dashboard=False)
            else:
                ray.init(address=self.scheduler_address)
            self._own = True
        if self._remote is None:
            self._remote = ray.remote(num_cpus=1, max_retries=0)(run_task)
        try:
            self._capacity = max(1, int(ray.cluster_resources().get("CPU", self.n_jobs)))
        except Exception:  # noqa: BLE001 - keep n_jobs
            pass
        return time.perf_counter() - begin

    def capacity(self):
        return 2 * self._capacity  # ray queues the extra ones: no gap between tasks

    def parallelism(self):
        return self._capacity

    def begin(self, solver, kwargs, expected_shape):
        import ray
        self.start()
        payload = Payload(uuid.uuid4().hex, pickle_job((solver, kwargs, expected_shape),
                                                       self.name))
        self._payload = ray.put(payload) if len(payload.blob) > BROADCAST_BYTES else payload

    def end(self):
        self._payload = None

    def submit(self, task_id, items, timeout):
        ref = self._remote.remote(self._payload, items, timeout)
        self._refs[task_id] = (ref, items, time.perf_counter())
        if timeout is not None:
            # Backstop; it may wait behind one task first.
            self._deadlines[task_id] = (time.monotonic()
                                        + 2 * len(items) * (timeout + self.kill_grace) + 10.0)

    def cancel(self, task_ids):
        import ray
        for task_id in task_ids:
            entry = self._refs.pop(task_id, None)
            self._deadlines.pop(task_id, None)
            if entry is not None:
                try:
                    ray.cancel(entry[0], force=True)
                except Exception:  # noqa: BLE001 - already finished
                    pass

    def poll(self, timeout):
        import ray
        events = []
        if not self._refs:
            time.sleep(min(timeout, 0.01))
            return events
        wait = timeout
        if self._deadlines:
            wait = max(0.0, min(wait, min(self._deadlines.values()) - time.monotonic()))
        by_ref = {entry[0]: task_id for task_id, entry in self._refs.items()}
        refs = list(by_ref)
        ready, _ = ray.wait(refs, num_returns=1, timeout=wait)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for ref in ready:
            task_id = by_ref[ref]
            _, items, submitted = self._refs.pop(task_id)
            self._deadlines.pop(task_id, None)
            indices = tuple(index for index, _ in items)
            try:
                outcomes, _, _ = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                continue
            except ray.exceptions.RayTaskError as exc:
                events.append(TaskLost(task_id, indices, None, "exception",
                                       f"the ray task failed outside the solver:\n"
                                       f"{tail(str(exc))}"))
                continue
            except ray.exceptions.RayError as exc:  # worker crashed, node died, OOM ...
                culprit = indices[0] if len(indices) == 1 else None
                events.append(TaskLost(task_id, indices, culprit, "crash",
                                       f"the ray worker running this evaluation died: "
                                       f"{type(exc).__name__}: {tail(str(exc), 5)}"))
                continue
            events += outcome_events(task_id, outcomes, time.perf_counter() - submitted)
        now = time.monotonic()
        for task_id, deadline in list(self._deadlines.items()):
            if now >= deadline:
                ref, items, _ = self._refs.pop(task_id)
                del self._deadlines[task_id]
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - it may have just finished
                    pass
                indices = tuple(index for index, _ in items)
                events.append(TaskLost(task_id, indices,
                                       indices[0] if len(indices) == 1 else None, "timeout",
                                       "the ray task did not come back within its timeout "
                                       "and its worker was killed"))
        return events

    def close(self):
        self.cancel(list(self._refs))
        self._payload = None
        if self._own:
            import ray
            ray.shutdown()
            self._own = False


def create(config) -> RayBackend:
    """The factory registered as ``"ray"``."""
    if config.client is not None:
        raise FG2UValueError("`client` is a dask client: use it with backend='dask', not "
                             "'ray'")
    return RayBackend(config.n_jobs, scheduler_address=config.scheduler_address,
                      kill_grace=config.kill_grace)
