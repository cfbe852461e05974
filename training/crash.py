"""Crash reports: any unhandled failure leaves `<output-dir>/errors/crash_step_<step>.json`.

Written atomically (temporary file, fsync, rename) so a report is whole or absent. It carries what
someone needs to understand the failure without the console: the exception and traceback, where
the run was, the latest metrics, feature counters, the resolved config, versions, the device and
the last valid checkpoint. CUDA out-of-memory adds allocator statistics and a concrete hint.
"""

from __future__ import annotations

import json
import os
import platform
import time
import traceback
from pathlib import Path

import torch


def _oom_details() -> dict[str, object]:
    details: dict[str, object] = {
        "hint": "CUDA ran out of memory: halve --batch-size and double --grad-accum (same tokens per step), "
                "or lower --seq-len or the --model-preset",
    }
    if torch.cuda.is_available():
        stats = torch.cuda.memory_stats()
        keep = ("allocated_bytes.all.current", "allocated_bytes.all.peak", "reserved_bytes.all.current",
                "reserved_bytes.all.peak", "num_alloc_retries", "num_ooms")
        free, total = torch.cuda.mem_get_info()
        details.update(allocator={k: stats.get(k) for k in keep}, device_free_bytes=free, device_total_bytes=total)
    return details


def write_crash_report(run_dir: Path, exc: BaseException, *, step: int, tokens: int, metrics: dict,
                       features: dict, config: dict, versions: dict, device: str | None,
                       last_checkpoint: str | None) -> Path:
    """Write the report and return its path. The caller guards it: a failing report must not mask the crash."""
    errors = run_dir / "errors"
    errors.mkdir(parents=True, exist_ok=True)
    report = {
        "exception_type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "step": step,
        "tokens": tokens,
        "time": time.time(),
        "latest_metrics": metrics,
        "features": features,
        "config": config,
        "versions": versions,
        "device": device,
        "platform": platform.platform(),
        "last_valid_checkpoint": last_checkpoint,
    }
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        report["out_of_memory"] = _oom_details()
    path = errors / f"crash_step_{step}.json"
    tmp = errors / f".crash_step_{step}.json.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path
