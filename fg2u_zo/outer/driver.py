"""Running a :class:`~fg2u_zo.outer.search.Search` to its end with an Evaluator.

The loop of :func:`fg2u_zo.minimize`: the search's next group of requests goes to
:meth:`Evaluator.evaluate <fg2u_zo.Evaluator.evaluate>` (the only call to it in the
outer loop), its replies back to the search, and the run's files follow: a checkpoint
after the rounds that committed steps, every solve journaled as it arrives.

Signals: SIGTERM (a batch scheduler's "time is up") abandons the steps in progress at
once; a first SIGINT (Ctrl-C) lets the steps in progress finish and starts no new one,
a second abandons them. Either way a checkpoint of the committed state is written and
the run stops (SIGINT raises KeyboardInterrupt, SIGTERM returns with status
``"sigterm"``); the journal keeps the solves of the abandoned steps, so a resumption
solves none of them again.

An error (a step's solves failed past the failure policy, a non-finite step, a broken
outer loss) writes a checkpoint with status ``"failed"`` whose path is added to the
error's message, and is raised again.
"""

from __future__ import annotations

import contextlib
import logging
import signal

from .signals import Abandon, SignalGuard, annotate

__all__ = ["drive_search", "checkpoint_round", "save_on_error"]

logger = logging.getLogger(__name__)


def drive_search(search, evaluator, store, *, checkpoint_every=1, fresh=True):
    """Run ``search`` with ``evaluator`` until it is done or stopped.

    Returns
    -------
    str
        ``"done"``, or ``"sigterm"`` when SIGTERM stopped it (a checkpoint was written).

    Raises
    ------
    KeyboardInterrupt
        After SIGINT, once the checkpoint is written.
    Exception
        What a step raised, after a checkpoint of the last committed state.
    """
    journal = None
    with contextlib.ExitStack() as stack:
        if fresh and store.path is not None:
            store.save(search, search.phis(), "running", "started")
        journal = store.journal
        stack.enter_context(evaluator.journaling(journal))
        guard = stack.enter_context(SignalGuard())
        try:
            while True:
                if guard.received is not None:
                    search.draining = True
                group = search.next_group()
                if group is None:
                    break
                guard.abandonable = True
                try:
                    replies = evaluator.evaluate(group)
                finally:
                    guard.abandonable = False
                search.tell(replies)
                checkpoint_round(search, store, checkpoint_every)
        except (Abandon, KeyboardInterrupt) as exc:
            signum = exc.args[0] if isinstance(exc, Abandon) else signal.SIGINT
            search.abandon()
            return _stop_on_signal(search, store, signum, abandoned=True)
        except Exception as exc:
            search.abandon()
            save_on_error(search, store, exc)
            raise
        finally:
            search.close()
            _log_failure_totals(search)
        if guard.received is not None and not search.done:
            return _stop_on_signal(search, store, guard.received, abandoned=False)
    return "done"


def checkpoint_round(search, store, every):
    """A checkpoint after a round that committed a step due (every ``every`` steps of a
    run) or passed a stage (also what :class:`~fg2u_zo.AskTell` does after a round)."""
    commits = search.take_commits()
    if store.path is None or not commits:
        return
    if every > 1 and all(record is not None and (record.step + 1) % every
                         for record in commits):
        return
    step = max((r.step + 1 for r in commits if r is not None), default=0)
    store.save(search, search.phis(), "running", f"step {step}")


def _stop_on_signal(search, store, signum, abandoned):
    name = "SIGTERM" if signum == signal.SIGTERM else "SIGINT"
    what = ("abandoned the steps in progress" if abandoned
            else "finished the steps in progress")
    steps = sum(run.state.step for run in search.runs)
    path = store.save(search, search.phis(), "interrupted", f"{name} after {steps} steps")
    msg = (f"stopped by {name} ({what}) after {steps} steps; checkpoint written to "
           f"{path}; continue with fz.resume({path!r}, problem) or "
           f"`fg2u-zo resume {path}`")
    logger.warning(msg)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt(msg)
    search.signal_message = msg
    return "sigterm"


def save_on_error(search, store, exc):
    """Checkpoint the committed state before ``exc`` is raised; name it in the error."""
    if getattr(exc, "checkpoint", None) is not None:
        return
    steps = sum(run.state.step for run in search.runs)
    if store.path is None and steps == 0:
        # Nothing done yet: a temporary checkpoint would only hold the start, and
        # suggesting to resume it would send the user after the wrong fix.
        return
    path = store.save(search, search.phis(), "failed",
                      f"stopped after {steps} steps: {type(exc).__name__}")
    exc.checkpoint = path
    annotate(exc, f"fg2u-zo: the run stopped after {steps} steps; its state is saved in "
                  f"{path}. Fix the cause, then continue with fz.resume({path!r}, "
                  f"problem) or `fg2u-zo resume {path}`.")


def _log_failure_totals(search):
    failures = search.totals().failures if search.state is not None else {}
    if failures:
        counts = ", ".join(f"{kind}: {n}" for kind, n in sorted(failures.items()))
        logger.warning("evaluations that failed for good since the run began: %s", counts)
