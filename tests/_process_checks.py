"""Processes found by a marker in their command line, for the process-cleanup tests.

psutil is not a dependency: ``/proc`` is read directly (Linux). A zombie (exited, not
yet reaped by whoever adopted it) counts as gone: it runs nothing.

Also the writer of the fault-storm simulator (``tests/data/storm_sim.py``); the module
travels by value with cloudpickle so that workers need not import ``tests/``.
"""

from __future__ import annotations

import os
import sys
import time

import cloudpickle

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _stat_fields(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rpartition(b")")[2].split()
    except OSError:
        return None


def alive(pid) -> bool:
    """True if ``pid`` runs (a zombie counts as dead)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def parent_of(pid) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])


def processes_with(marker: str) -> list[int]:
    """Pids of the running processes whose command line contains ``marker``."""
    needle = marker.encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        if needle in cmdline and alive(int(name)):
            found.append(int(name))
    return sorted(found)


def wait_for(predicate, timeout: float, interval: float = 0.05):
    """Poll ``predicate()`` until it is truthy or ``timeout`` seconds passed; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_started(marker: str, count: int, timeout: float = 60.0) -> list[int]:
    """The pids once ``count`` processes carry ``marker``; AssertionError if they never do."""
    def enough():
        pids = processes_with(marker)
        return pids if len(pids) >= count else None

    pids = wait_for(enough, timeout)
    assert pids, f"{count} processes with {marker!r} never started"
    return pids


def survivors(pids, timeout: float = 15.0) -> list[int]:
    """Which of ``pids`` still run after waiting up to ``timeout`` s for all to go."""
    wait_for(lambda: not any(alive(p) for p in pids), timeout)
    return [p for p in pids if alive(p)]


def leftovers(marker: str, timeout: float = 15.0) -> list[int]:
    """Processes with ``marker`` still running after waiting up to ``timeout`` s."""
    wait_for(lambda: not processes_with(marker), timeout)
    return processes_with(marker)


def storm_writer(phi, workdir, *, warm_start=None):
    """Input of storm_sim.py: phi exactly; "perturbed" when the call has a warm start.

    Estimators warm-start the perturbed solves from the base output; the base solve
    has none. The simulator lets the base point succeed, since a base point that
    fails for good stops a run by design.
    """
    with open(os.path.join(workdir, "input.txt"), "w") as fh:
        fh.write(" ".join(repr(v) for v in phi.tolist()) + "\n")
        if warm_start is not None:
            fh.write("perturbed\n")


def load_child(path):
    """Import a child script of ``tests/data`` as a module named after its file, and
    register it in ``sys.modules`` so that what it defines pickles by reference: the
    tests build the same problem and options as the child they kill."""
    import importlib.util

    name = os.path.splitext(os.path.basename(str(path)))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
