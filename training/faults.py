"""Fault injection for the robustness tests, off unless ECO_TRAIN_FAULTS is set.

The checkpoint and non-finite guards can only be trusted if they are exercised; these hooks let a
test make a real run fail in a chosen way. ECO_TRAIN_FAULTS is a comma-separated list of:

    nan_loss@S[xN]      the loss of steps S..S+N-1 becomes NaN (S counts step attempts: skipped
                        steps count too, a rollback does not reset it)
    inf_grad@S[xN]      a gradient of steps S..S+N-1 becomes +inf
    raise@S             an exception is raised inside step S
    oom@S               torch.cuda.OutOfMemoryError is raised inside step S
    enospc@K            the K-th checkpoint save (1-based) fails with "No space left on device"
    save_pause=SECONDS  every save phase prints `[sigma] checkpoint_phase=<name>` and then sleeps
    slow_data=SECONDS   every batch takes that much longer to arrive (a slow data source)
    slow_opt=SECONDS    every optimizer step takes that much longer (a slow optimizer)
    wandb@S             the W&B mirror fails at step S (0: when it starts)

Unset (the normal case) every hook is a cheap no-op.
"""

from __future__ import annotations

import errno
import os
import time


def _parse(spec: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if "=" in item:
            key, _, value = item.partition("=")
            out[key] = float(value)
            continue
        kind, _, at = item.partition("@")
        first, _, count = at.partition("x")
        start = int(first)
        out.setdefault(kind, set()).update(range(start, start + int(count or 1)))
    return out


_FAULTS = _parse(os.environ.get("ECO_TRAIN_FAULTS", ""))
_saves = 0


def active(kind: str, step: int) -> bool:
    return step in _FAULTS.get(kind, ())


def delay(kind: str) -> None:
    """Sleep for `kind=SECONDS` when set (slow_data, slow_opt)."""
    seconds = _FAULTS.get(kind)
    if seconds:
        time.sleep(seconds)


def on_save_phase(name: str) -> None:
    pause = _FAULTS.get("save_pause")
    if pause:
        print(f"[sigma] checkpoint_phase={name}", flush=True)
        time.sleep(pause)


def maybe_fail_write() -> None:
    """Called once per save, before the first byte is written."""
    global _saves
    _saves += 1
    if _saves in _FAULTS.get("enospc", ()):
        raise OSError(errno.ENOSPC, "No space left on device (injected by ECO_TRAIN_FAULTS)")
