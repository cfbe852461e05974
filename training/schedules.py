"""Training schedules: pure functions of the step (no state, no globals), unit-tested.

``lr_multiplier`` scales every optimizer group's base lr (Muon and C3O share it); ``muon_momentum``
warms Muon's momentum up. Steps count from 0.
"""

from __future__ import annotations

import math

LR_SCHEDULES = ("cosine", "wsd")


def lr_multiplier(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    schedule: str,
    min_ratio: float = 0.1,
    decay_frac: float = 0.2,
) -> float:
    """Multiplier in [min_ratio, 1] applied to each group's base lr at ``step``.

    Warmup (both schedules): linear, ``(step + 1) / warmup_steps`` for ``step < warmup_steps``, so
    the first step already moves (a zero-lr step would be wasted compute) and ``step ==
    warmup_steps - 1`` reaches 1.

    After warmup:
      * ``"cosine"``: half cosine from 1 at ``warmup_steps`` down to ``min_ratio`` at ``total_steps``.
      * ``"wsd"`` (warmup-stable-decay): 1 until the last ``decay_frac`` of training
        (``round(decay_frac * total_steps)`` steps), then linear down to ``min_ratio`` at
        ``total_steps``. The stable phase lets a run be extended or branched from a mid-run
        checkpoint without re-warming, and the short final decay recovers most of cosine's loss.
    Steps at or past ``total_steps`` return ``min_ratio``.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}; got {schedule!r} (--lr-schedule)")
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0; got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}]; got {warmup_steps}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1]; got {min_ratio}")
    if not 0.0 <= decay_frac <= 1.0:
        raise ValueError(f"decay_frac must be in [0, 1]; got {decay_frac}")

    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= total_steps:
        return min_ratio
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # wsd
    decay_steps = round(decay_frac * total_steps)
    decay_start = total_steps - decay_steps
    if step < decay_start:
        return 1.0
    progress = (step - decay_start) / max(1, decay_steps)
    return 1.0 - (1.0 - min_ratio) * progress


def muon_momentum(step: int, *, warmup_steps: int = 300, start: float = 0.85, end: float = 0.95) -> float:
    """Muon momentum, linear from ``start`` at step 0 to ``end`` at ``warmup_steps``, then flat.

    Lower momentum early lets Muon follow the fast-changing early gradients (modded-nanogpt / nanochat
    practice); 0.95 afterwards is ``torch.optim.Muon``'s default.
    """
    if warmup_steps < 0:
        raise ValueError(f"muon momentum warmup_steps must be >= 0; got {warmup_steps}")
    if warmup_steps == 0:
        return end
    frac = min(max(step, 0) / warmup_steps, 1.0)
    return start + (end - start) * frac
