"""What runs where the inner solver runs: one evaluation, its timeout and its checks.

This module is imported by every worker (loky processes, dask and ray workers,
threads), so it stays small and imports nothing heavy. Each evaluation is turned
into an :class:`Outcome` and never raises: the validated theta, or the failure's
kind, message and whether a retry can help. Outcomes hold builtins and numpy
arrays, so they cross process boundaries bit for bit.

Failures a retry cannot change are marked ``retryable=False``: the solver rejected
its arguments (it raised :class:`~fg2u_zo.FG2UValueError` or
:class:`~fg2u_zo.FG2UTypeError`, e.g. a ``phi`` of the wrong length), or it reported
itself that its output is unusable (an :class:`~fg2u_zo.InnerSolverError` of a kind
in :data:`DETERMINISTIC_KINDS`, such as the non-finite output of a program that warned
about it). A solver can decide for itself by setting ``retryable`` on the exception
it raises.

Timeouts are enforced here, inside the worker, so that a stuck solver frees its
worker without the parent having to kill anything:

* in a main thread (sequential backend, loky and ray workers) with ``SIGALRM``
  (``signal.setitimer``): the handler raises in the solver, which interrupts
  ``time.sleep``, Python loops and waits on subprocesses;
* elsewhere (threads of the threading backend, dask worker threads), where signals
  cannot be delivered, the solver runs in a helper daemon thread and is *abandoned*
  when the time is up: the task returns a timeout at once, the helper thread keeps
  running until the solver returns by itself (threads cannot be killed).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass

import numpy as np

from ..errors import FG2UTypeError, FG2UValueError, InnerSolverError

# A stuck solver that swallowed the first SIGALRM (a broad ``except BaseException``)
# gets it again every _ALARM_REPEAT seconds until it returns.
_ALARM_REPEAT = 1.0

_TAIL_LINES = 20
# An InnerSolverError's message (its reason, then the program's stderr/stdout tails)
# is kept whole up to this many lines; longer ones keep their head and their end.
_MESSAGE_LINES = 60

#: Kinds of :class:`~fg2u_zo.InnerSolverError` that a solver raises only when it ran to
#: the end and found its own result unusable: the same point gives the same failure.
DETERMINISTIC_KINDS = frozenset({"nonfinite", "missing_executable"})


def headline(message) -> str:
    """The line of a failure message that says what went wrong.

    The exception line of a traceback (its last line); else the message's first line
    that is not a note.
    """
    lines = [line for line in str(message).strip().splitlines()
             if line.strip() and not line.startswith("(not retried")]
    if not lines:
        return ""
    if lines[0].startswith("Traceback"):
        return lines[-1].strip()
    return lines[0].strip()


def tail(text, lines: int = _TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text`` (tracebacks and stderr end with the cause)."""
    return "\n".join(str(text).rstrip().splitlines()[-lines:])


def clip(text, lines: int = _MESSAGE_LINES) -> str:
    """``text`` whole when short; else its first lines (the reason) and its last ones."""
    all_lines = str(text).rstrip().splitlines()
    if len(all_lines) <= lines:
        return "\n".join(all_lines)
    head = lines // 3
    keep_tail = lines - head - 1
    skipped = len(all_lines) - head - keep_tail
    return "\n".join(all_lines[:head] + [f"[... {skipped} lines ...]"]
                     + all_lines[-keep_tail:])


@dataclass(frozen=True)
class Outcome:
    """What became of one evaluation.

    Attributes
    ----------
    index : int
        Position of the point in the map.
    theta : ndarray or None
        The validated float64 output; None when the evaluation failed.
    seconds : float
        Time spent in the solver (and in validating its output).
    kind : str or None
        Failure kind (``"exception"``, ``"nonfinite"``, ``"shape"``, ``"type"``,
        ``"timeout"``, or an :class:`~fg2u_zo.InnerSolverError`'s own kind); None on
        success.
    message : str
        The failure's message: the error, the tail of the traceback, the solver's
        stderr tail when it reported one.
    retryable : bool
        False when the same point would fail the same way again (see the module
        docstring).
    """

    index: int
    theta: np.ndarray | None
    seconds: float
    kind: str | None = None
    message: str = ""
    retryable: bool = True

    @property
    def ok(self) -> bool:
        """Whether the evaluation succeeded."""
        return self.kind is None


def _failed(index, kind, message, seconds, retryable=True) -> Outcome:
    return Outcome(index, None, seconds, kind, message, retryable)


def describe_error(exc) -> tuple:
    """``(kind, message, retryable)`` of an exception raised by a solver.

    An :class:`~fg2u_zo.InnerSolverError` keeps its kind, and its ``detail`` (the
    program's stderr tail, for external commands) is added to the message unless the
    message already shows it; any other exception is ``"exception"`` with the tail of
    its traceback.
    """
    flag = getattr(exc, "retryable", None)
    if isinstance(exc, InnerSolverError):
        text = str(exc)
        detail = str(exc.detail or "").strip()
        if detail and detail not in text:
            text = f"{text}\n{detail}"
        kind, message = exc.kind, clip(text)
        retryable = exc.kind not in DETERMINISTIC_KINDS
        why = f"the solver itself reported this {exc.kind!r} failure"
    else:
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        kind, message = "exception", tail(text)
        # The solver's own argument check (a phi of the wrong length, say).
        retryable = not isinstance(exc, (FG2UValueError, FG2UTypeError))
        why = f"the solver rejected its arguments ({type(exc).__name__})"
    if isinstance(flag, bool):
        retryable = flag
        why = "the solver's error says a retry cannot help"
    if not retryable:
        message = f"(not retried: {why}; the same point would fail the same way)\n{message}"
    return kind, message, retryable


class SolverTimeout(BaseException):
    """Raised inside a solver whose time is up.

    A BaseException, so that the solver's own ``except Exception`` does not swallow it.
    """


def check_output(out, expected_shape):
    """Validate a solver's output; return ``(theta, None)`` or ``(None, (kind, message))``.

    These failures are retried: a solver that returns a wrong shape or NaN once may not
    the next time (a stochastic solver, a flaky file system).
    """
    if out is None or isinstance(out, (str, bytes, dict)):
        return None, ("type", f"solver returned {type(out).__name__}, which is not an array "
                              "of floats; return the inner solution as a numpy array")
    try:
        theta = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return None, ("type", f"solver returned {type(out).__name__}, which is not an array "
                              f"of floats ({exc})")
    if expected_shape is not None and theta.shape != tuple(expected_shape):
        return None, ("shape", f"solver returned shape {theta.shape}, expected "
                               f"{tuple(expected_shape)}, the shape of its other outputs (at "
                               "the base point, at earlier base points)")
    if not np.all(np.isfinite(theta)):
        nbad = int(np.size(theta) - np.count_nonzero(np.isfinite(theta)))
        return None, ("nonfinite", f"solver returned {nbad} non-finite value(s) (NaN/inf)")
    return theta, None


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _call_with_alarm(fn, timeout):
    """``fn()`` with a SIGALRM deadline; nests inside an enclosing ITIMER_REAL.

    An enclosing interval timer (pytest-timeout, a user's own alarm) keeps working:
    our timer never fires later than it would have, and when its time comes its own
    handler runs; it is re-armed with its remaining time afterwards.
    """
    state = {"armed": True, "outer_fired": False}
    start = time.monotonic()
    old_handler = signal.getsignal(signal.SIGALRM)
    old_delay, old_interval = signal.getitimer(signal.ITIMER_REAL)
    outer_deadline = start + old_delay if old_delay > 0 else None
    deadline = start + timeout

    def handler(signum, frame):
        if not state["armed"]:  # a signal that was already on its way when we disarmed
            return
        now = time.monotonic()
        if outer_deadline is not None and now >= outer_deadline - 1e-3 \
                and not state["outer_fired"]:
            state["outer_fired"] = True
            if callable(old_handler):
                old_handler(signum, frame)
            if now < deadline:  # the enclosing alarm did not stop us: wait for ours
                signal.setitimer(signal.ITIMER_REAL, deadline - now, _ALARM_REPEAT)
                return
        raise SolverTimeout

    signal.signal(signal.SIGALRM, handler)
    first = timeout if outer_deadline is None else min(timeout, max(old_delay, 1e-6))
    signal.setitimer(signal.ITIMER_REAL, first, _ALARM_REPEAT)
    try:
        return fn()
    finally:
        state["armed"] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if outer_deadline is not None:
            if not state["outer_fired"]:
                remaining = max(outer_deadline - time.monotonic(), 1e-6)
                signal.setitimer(signal.ITIMER_REAL, remaining, old_interval)
            elif old_interval > 0:
                signal.setitimer(signal.ITIMER_REAL, old_interval, old_interval)


def _call_in_helper_thread(fn, timeout):
    """``fn()`` in a daemon thread; returns ``(value, abandoned)``.

    On timeout the thread is left running (Python cannot kill a thread) and
    SolverTimeout is raised here, so the caller is free again.
    """
    box = {}
    done = threading.Event()

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc
        finally:
            done.set()

    helper = threading.Thread(target=target, name="fg2u-zo-solver", daemon=True)
    helper.start()
    if not done.wait(timeout):
        raise SolverTimeout
    if "error" in box:
        raise box["error"]
    return box["value"]


def evaluate(solver, index, point, kwargs, expected_shape, timeout):
    """Run one evaluation; never raises (except KeyboardInterrupt).

    Returns
    -------
    outcome : Outcome
    abandoned : bool
        A helper thread was left running a timed-out solver.
    """
    abandoned = False

    def call():
        return solver(point, **kwargs)

    start = time.perf_counter()
    try:
        if timeout is None:
            out = call()
        elif _in_main_thread() and hasattr(signal, "setitimer"):
            out = _call_with_alarm(call, timeout)
        else:
            try:
                out = _call_in_helper_thread(call, timeout)
            except SolverTimeout:
                abandoned = True
                raise
    except SolverTimeout:
        seconds = time.perf_counter() - start
        how = ("its thread was abandoned and keeps running until the solver returns"
               if abandoned else "the solver was interrupted")
        return _failed(index, "timeout", f"the inner solver ran longer than timeout={timeout:g} "
                                         f"s and was stopped after {seconds:.3g} s ({how})",
                       seconds), abandoned
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - every solver error is recorded
        kind, message, retryable = describe_error(exc)
        return _failed(index, kind, message, time.perf_counter() - start,
                       retryable), abandoned
    seconds = time.perf_counter() - start
    theta, err = check_output(out, expected_shape)
    if err is not None:
        return _failed(index, *err, seconds), abandoned
    return Outcome(index, theta, seconds), abandoned


# -- payloads: the solver and its keywords, shipped once per map -------------------------

_PAYLOAD_CACHE: dict = {}
_PAYLOAD_LOCK = threading.Lock()
_PAYLOAD_CACHE_SIZE = 2


class Payload:
    """The pickled ``(solver, kwargs, expected_shape)`` of one map, with a token.

    Pickled once in the parent (cloudpickle, so lambdas and closures work) and
    unpickled at most once per worker process: workers keep the last few by token.
    """

    __slots__ = ("token", "blob")

    def __init__(self, token: str, blob: bytes):
        self.token = token
        self.blob = blob

    def __reduce__(self):
        return (Payload, (self.token, self.blob))

    def load(self):
        """``(solver, kwargs, expected_shape)``; raises what unpickling raises."""
        with _PAYLOAD_LOCK:
            hit = _PAYLOAD_CACHE.get(self.token)
            if hit is not None:
                return hit
        import pickle
        loaded = pickle.loads(self.blob)
        with _PAYLOAD_LOCK:
            while len(_PAYLOAD_CACHE) >= _PAYLOAD_CACHE_SIZE:
                _PAYLOAD_CACHE.pop(next(iter(_PAYLOAD_CACHE)))
            _PAYLOAD_CACHE[self.token] = loaded
        return loaded


def run_items(solver, kwargs, expected_shape, items, timeout, emit=None):
    """Evaluate ``items = [(index, point), ...]`` in order.

    ``emit(outcome)`` is called after each one when given (the process pool streams
    outcomes, so a crash loses only the evaluation that was running). Returns the list
    of outcomes and the number of abandoned helper threads.
    """
    outcomes, abandoned = [], 0
    for index, point in items:
        outcome, lost_thread = evaluate(solver, index, point, kwargs, expected_shape, timeout)
        abandoned += lost_thread
        if emit is not None:
            emit(outcome)
        else:
            outcomes.append(outcome)
    return outcomes, abandoned


def load_failure(items, exc) -> list:
    """Outcomes for a task whose payload could not be unpickled in the worker."""
    text = tail("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    message = ("the inner solver could not be unpickled in the worker (is its module "
               f"importable there?):\n{text}")
    return [_failed(index, "exception", message, 0.0) for index, _ in items]


def run_task(payload, items, timeout):
    """Entry point of a dask or ray task: load the payload, run the items.

    Returns ``(outcomes, abandoned, where)``: ``where`` names the worker (dask
    address or pid) so that the parent can restart one that holds abandoned threads.
    """
    where = os.getpid()
    dask_worker = sys.modules.get("distributed")  # loaded on dask workers, never imported here
    if dask_worker is not None:
        try:
            where = dask_worker.get_worker().address
        except ValueError:  # not running on a dask worker
            pass
    try:
        solver, kwargs, expected_shape = payload.load()
    except Exception as exc:  # noqa: BLE001 - reported as a failure of every item
        return load_failure(items, exc), 0, where
    outcomes, abandoned = run_items(solver, kwargs, expected_shape, items, timeout)
    return outcomes, abandoned, where
