"""Several independent runs side by side: one parallel group per round for all of them.

What a multi-start does for starts of one problem, :func:`minimize_together` does for
runs of different problems (the fits of a profile likelihood, one per fixed value of a
parameter): each round gathers the next requests of every run that has some into one
:meth:`Evaluator.evaluate <fg2u_zo.Evaluator.evaluate>` call, and hands each run its
replies. No thread; each run is exactly the run :func:`fg2u_zo.minimize` would make
alone with the same arguments (its seeds are its own).
"""

from __future__ import annotations

from .minimize import finish
from .setup import RUN_DEFAULTS, prepare

__all__ = ["minimize_together"]


def minimize_together(calls, evaluator):
    """Run ``calls`` (dicts of :func:`fg2u_zo.minimize` arguments: ``problem``,
    ``phi0`` and keywords; no ``evaluator``) side by side on ``evaluator``.

    Returns
    -------
    list
        Per call, its :class:`~fg2u_zo.OptimizeResult`, or the exception it raised
        (a failing run stops alone).
    groups : list of int
        Solves of each shared parallel group.
    """
    runs, out = [], [None] * len(calls)
    for i, call in enumerate(calls):
        kwargs = dict(RUN_DEFAULTS, workers=None, progress=False)
        kwargs.update((k, v) for k, v in call.items() if k not in ("problem", "phi0",
                                                                     "estimator"))
        try:
            runs.append((i, prepare(call["problem"], call.get("phi0"),
                                    call.get("estimator"),
                                    workers_of=lambda stepper: evaluator.workers,
                                    **kwargs)))
        except Exception as exc:
            out[i] = exc
    groups = []
    live = list(runs)
    try:
        while live:
            asked = []
            for i, prepared in live:
                try:
                    group = prepared.search.next_group()
                except Exception as exc:
                    out[i] = exc
                    prepared.release()
                    continue
                if group is None:
                    out[i] = _finished(prepared)
                    continue
                asked.append((i, prepared, group))
            live = []
            if not asked:
                break
            requests = [r for _, _, group in asked for r in group]
            replies = evaluator.evaluate(requests)
            groups.append(sum(len(r) for r in requests))
            start = 0
            for i, prepared, group in asked:
                try:
                    prepared.search.tell(replies[start:start + len(group)])
                    live.append((i, prepared))
                except Exception as exc:
                    out[i] = exc
                    prepared.release()
                start += len(group)
    finally:
        for i, prepared in live:
            if out[i] is None:
                prepared.release()
    return out, groups


def _finished(prepared):
    try:
        return finish(prepared, "done")
    except Exception as exc:
        return exc
    finally:
        prepared.release()
