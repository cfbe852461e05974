"""metrics.jsonl writer, step timing without hot-path syncs, and run provenance (versions, git).

Every record is one JSON object on one line with `event`, `step`, `tokens`, `time` (unix seconds),
appended and flushed as it is written, so a crash never loses a written record and `tail -f`
works. Readings that do not exist on this machine are `null`, never invented.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

_VERSIONED = ("torch", "triton", "transformers", "tokenizers", "safetensors", "numpy", "trl", "peft")


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that decide the numbers (None when not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    return out


def git_revision(repo_dir: str | os.PathLike | None = None) -> str | None:
    """The checkout's commit (with `-dirty` when modified), or None outside a git checkout."""
    repo_dir = repo_dir or Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(repo_dir), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return rev.stdout.strip() or None if rev.returncode == 0 else None


def _clean(v: object) -> object:
    # json cannot hold NaN/inf portably: a non-finite reading is reported as null.
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsWriter:
    """Append-only JSONL; each record flushed on write."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.last: dict[str, object] = {}

    def write(self, event: str, *, step: int, tokens: int, **fields: object) -> dict[str, object]:
        record = {"event": event, "step": step, "tokens": tokens, "time": round(time.time(), 3)}
        record.update({k: _clean(v) for k, v in fields.items()})
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        self.last = record
        return record

    def close(self) -> None:
        self._f.close()


class Ema:
    """Bias-corrected exponential moving average (so early values are not pulled towards 0)."""

    def __init__(self, beta: float = 0.9):
        self.beta = beta
        self._raw = 0.0
        self._n = 0

    def update(self, x: float) -> float:
        self._n += 1
        self._raw = self.beta * self._raw + (1 - self.beta) * x
        return self.value

    @property
    def value(self) -> float | None:
        return None if self._n == 0 else self._raw / (1 - self.beta**self._n)

    def state_dict(self) -> dict:
        return {"beta": self.beta, "raw": self._raw, "n": self._n}

    def load_state_dict(self, d: dict) -> None:
        self.beta, self._raw, self._n = d["beta"], d["raw"], d["n"]


class StepTimer:
    """Times the compute part of steps without forcing a host-device sync each step.

    On CUDA each step records a pair of events; they are read only in `drain()`, which the loop
    calls at log steps right after its own `.item()` sync, so timing adds no sync of its own.
    On the CPU it uses perf_counter.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._pending: list[tuple[object, object]] = []
        self._t0 = 0.0

    def start(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._pending.append((ev, None))
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self._pending[-1] = (self._pending[-1][0], ev)
        else:
            self._pending.append((time.perf_counter() - self._t0, None))

    def drain(self) -> list[float]:
        """Seconds of each step since the last drain."""
        if self.cuda:
            torch.cuda.current_stream().synchronize()  # already idle after the loop's .item()
            out = [a.elapsed_time(b) / 1e3 for a, b in self._pending]
        else:
            out = [a for a, _ in self._pending]
        self._pending.clear()
        return out


def process_info() -> dict[str, object]:
    return {"argv": sys.argv, "pid": os.getpid(), "platform": platform.platform()}
