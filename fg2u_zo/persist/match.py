"""Whether a checkpoint may be continued by a call: every difference that would change
the trajectory, named."""

from __future__ import annotations

import numpy as np

from ..errors import CheckpointError

__all__ = ["config_differences", "check_matches"]


def config_differences(saved, current, prefix="") -> list[str]:
    """Human-readable differences between two JSON-like configs, one per leaf.

    Examples
    --------
    >>> config_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}})
    ['b.c: checkpoint has 2, this run has 3']
    """
    out = []
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in list(saved) + [k for k in current if k not in saved]:
            where = f"{prefix}.{key}" if prefix else str(key)
            if key not in saved:
                out.append(f"{where}: not in the checkpoint, this run has {current[key]!r}")
            elif key not in current:
                out.append(f"{where}: checkpoint has {saved[key]!r}, this run has none")
            else:
                out.extend(config_differences(saved[key], current[key], where))
        return out
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        for i, (a, b) in enumerate(zip(saved, current)):
            out.extend(config_differences(a, b, f"{prefix}[{i}]"))
        return out
    if saved != current:
        out.append(f"{prefix}: checkpoint has {saved!r}, this run has {current!r}")
    return out


def check_matches(path, ck, config, bounds):
    """Raise CheckpointError naming every difference that would change the trajectory."""
    saved = dict(ck.config)
    diffs = []
    saved_steps = saved.pop("phase_steps", None)
    current = dict(config)
    current_steps = current.pop("phase_steps")
    diffs += config_differences(saved, current)
    if saved_steps is not None:
        if len(saved_steps) != len(current_steps):
            diffs.append(f"number of phases: checkpoint has {len(saved_steps)}, this run has "
                         f"{len(current_steps)}")
        else:
            # Phases already finished must keep their length; the current and later ones
            # may be lengthened (to continue a run) or shortened down to where it is.
            for run in ck.search.runs:
                for i in range(min(run.phase, len(saved_steps))):
                    if saved_steps[i] != current_steps[i]:
                        diffs.append(f"phases[{i}].steps: checkpoint has {saved_steps[i]} (a "
                                     f"finished phase), this run has {current_steps[i]}")
                if run.phase < len(current_steps) and current_steps[run.phase] < \
                        run.step_in_phase:
                    diffs.append(f"phases[{run.phase}].steps: the checkpoint is "
                                 f"{run.step_in_phase} steps into it, this run allows only "
                                 f"{current_steps[run.phase]}")
    for name, saved_b, cur_b in (("lower", ck.lower, bounds.lower),
                                 ("upper", ck.upper, bounds.upper)):
        if saved_b.shape != cur_b.shape or not np.array_equal(saved_b, cur_b):
            diffs.append(f"bounds ({name}): checkpoint has {saved_b.tolist()}, this run has "
                         f"{cur_b.tolist()}")
    if diffs:
        diffs = list(dict.fromkeys(diffs))
        raise CheckpointError(
            f"checkpoint {path!r} does not match this run:\n  " + "\n  ".join(diffs)
            + "\nresume with the configuration it was written with (fz.resume rebuilds it), "
              "or start a new run with another checkpoint path")
