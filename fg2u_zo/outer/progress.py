"""How a running optimization shows itself: a progress bar on a terminal, and one log
line per step for batch jobs.

With stderr a terminal (and tqdm installed, the ``progress`` extra) a bar shows the
steps, the value and the solves. Whatever stderr is, every committed step is logged at
INFO on the logger ``fg2u_zo.outer.progress``: a cluster job's log then tells how far
the run is without waiting for its end::

    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

gives lines such as ``step 12 (run 0, phase 1): F=3.1416e-04 nfev=85 rounds=30
radius=1.2e-03``.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["Progress", "log_step"]

logger = logging.getLogger(__name__)


def log_step(record, *, nfev, rounds):
    """One INFO line for a committed step (``nfev``, ``rounds``: the run's totals)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    info = record.info or {}
    radius = info.get("delta")
    logger.info("step %d (run %d, phase %d): F=%.6g nfev=%d rounds=%d%s", record.step,
                record.run, record.phase, record.value, nfev, rounds,
                f" radius={radius:.3g}" if isinstance(radius, (int, float)) else "")


class Progress:
    """A tqdm bar showing the value and nfev, or nothing.

    ``enabled=None`` shows it only when stderr is a terminal. tqdm is the optional
    extra ``progress``: without it there is no bar and no error.
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool | None = None):
        self._bar = None
        if enabled is None:
            enabled = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            logger.debug("tqdm is not installed (pip install fg2u-zo[progress]); no bar")
            return
        self._bar = tqdm(total=total, initial=min(initial, total), desc="fg2u-zo",
                         unit="step", dynamic_ncols=True, leave=True)

    def update(self, record, nfev):
        if self._bar is not None:
            self._bar.set_postfix(value=f"{record.value:.4g}", nfev=nfev, refresh=False)
            self._bar.update(1)

    def close(self):
        if self._bar is not None:
            self._bar.close()
            self._bar = None
