"""Learning-rate schedules, as a pure function of the global step (so resume needs no scheduler state;
``plateau`` also follows the validation losses, and its state is saved).

``lr(step) = base_lr * lr_factor(schedule, step, total_steps, warmup_steps)``, applied before every
optimiser step:

* ``constant``: a linear warm-up from ``1/warmup_steps`` to 1 over the first ``warmup_steps`` steps, then 1.
* ``cosine``: the same warm-up, then a half cosine from 1 to 0 at ``total_steps``.
* ``plateau``: the warm-up of ``constant``; after it the engine leaves the rate to torch's
  ``ReduceLROnPlateau`` (stepped once per epoch on the validation loss, its state saved in ``last.pt``),
  so this factor is 1 there.
* ``onecycle``: torch's ``OneCycleLR`` shape (``anneal_strategy="cos"``, ``div_factor=25``,
  ``final_div_factor=1e4``): a cosine rise from 1/25 to 1 over the warm-up (30% of the steps when the
  warm-up is 0), then a cosine fall to 1/25e4.
"""
from __future__ import annotations

import math

__all__ = ["lr_factor"]


def _cos_interp(start: float, end: float, frac: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """The multiplier of the base learning rate at 0-based ``step`` of ``total_steps``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = max(0, min(int(warmup_steps), total_steps))
    if schedule == "onecycle":
        # As torch's OneCycleLR: the peak at step rise - 1, the end at step total_steps - 1.
        rise = warmup_steps if warmup_steps > 0 else max(1, int(0.3 * total_steps))
        peak = max(rise - 1, 0)
        initial, final = 1.0 / 25.0, 1.0 / 25.0 / 1e4
        if step <= peak:
            return _cos_interp(initial, 1.0, step / peak) if peak > 0 else 1.0
        return _cos_interp(1.0, final, (step - peak) / max(1, total_steps - 1 - peak))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule in ("constant", "plateau"):
        return 1.0
    if schedule == "cosine":
        return _cos_interp(1.0, 0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    raise ValueError(f"schedule must be one of ('constant', 'cosine', 'onecycle', 'plateau'), got {schedule!r}")
