"""A run's journal of finished evaluations, kept in step with its checkpoints.

The journal itself (file format, lookups) is :mod:`fg2u_zo.evaluation.journal`; this
module decides what happens to it as the run writes checkpoints: it belongs to the last
checkpoint written; when a step is done and checkpointed it keeps only the records a
resumed run has not reached yet; it keeps all of them when a signal abandoned a step
(the same step is redone from the same state), none after a failure (the solver may be
changed before the run is resumed), and it is removed when the run finishes.
"""

from __future__ import annotations

import logging

from ..evaluation.journal import EvaluationJournal, journal_path

__all__ = ["RunJournal", "journal_position"]

logger = logging.getLogger(__name__)


def journal_position(ck) -> dict:
    """What a journal must belong to: this checkpoint (its digest), at this step."""
    return {"checkpoint": ck.digest, "step": int(ck.step), "phase": int(ck.phase),
            "step_in_phase": int(ck.step_in_phase)}


class RunJournal:
    """The journal ``<checkpoint>.journal`` of one run.

    Parameters
    ----------
    checkpoint : str
        The run's checkpoint path.

    Attributes
    ----------
    journal : EvaluationJournal or None
        Open once the run has a checkpoint to journal against.
    """

    def __init__(self, checkpoint):
        self.path = journal_path(checkpoint)
        self.journal = None

    def resume(self, ck) -> EvaluationJournal:
        """Take over the journal of checkpoint ``ck`` (a foreign one is ignored)."""
        self.journal = EvaluationJournal.open(self.path, journal_position(ck))
        if self.journal.replayable:
            logger.info("%d finished evaluation(s) since the checkpoint will be taken "
                        "from %s instead of being solved again", self.journal.replayable,
                        self.path)
        return self.journal

    def after_save(self, status, ck):
        """Follow the checkpoint ``ck`` just written with ``status``."""
        if status == "finished":
            if self.journal is None:
                self.journal = EvaluationJournal(self.path, {})
            self.journal.remove()
            self.journal = None
            return
        position = journal_position(ck)
        if self.journal is None:
            self.journal = EvaluationJournal.create(self.path, position)
        else:
            keep = {"interrupted": "all", "failed": "none"}.get(status, "pending")
            self.journal.reset(position, keep=keep)

    def close(self):
        """Close the file; its records stay for a resumption."""
        if self.journal is not None:
            self.journal.close()
