"""Console output: `[sigma] key=value` start-up facts and one status line per log step.

Rank-0 only once several ranks exist; for now one process prints.
"""

from __future__ import annotations

import sys


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if v is None:
        return "null"
    return str(v)


def say(message: str) -> None:
    """A free-form `[sigma]` line (warnings, phase changes)."""
    print(f"[sigma] {message}", flush=True)


def facts(**fields: object) -> None:
    """One `[sigma] key=value` line per field, the machine-greppable start-up contract."""
    for k, v in fields.items():
        print(f"[sigma] {k}={_fmt(v)}", flush=True)


def status(step: int, total: int, **fields: object) -> None:
    """The one-line status of a log step."""
    parts = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
    print(f"step {step:>6d}/{total} {parts}", file=sys.stdout, flush=True)
