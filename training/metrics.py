"""metrics.jsonl writer, step timing without hot-path syncs, and run provenance (versions, git).

Every record is one JSON object on one line with `event`, `step`, `tokens`, `time` (unix seconds),
appended and flushed as it is written, so a crash never loses a written record and `tail -f`
works. Readings that do not exist on this machine are `null`, never invented.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

_VERSIONED = ("torch", "triton", "transformers", "tokenizers", "safetensors", "numpy", "trl", "peft")


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that decide the numbers (None when not installed)."""
    return {"python": platform.python_version(), **{name: package_version(name) for name in _VERSIONED},
            "cuda": torch.version.cuda}


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
    """Append-only JSONL; each record flushed on write and mirrored to the sinks (W&B).

    A sink that fails is reported once and dropped: metrics.jsonl is the record that must not stop.
    """

    def __init__(self, path: str | os.PathLike, *, run_id: str | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.run_id = run_id
        self.sinks: list = []
        self.last: dict[str, object] = {}

    def write(self, event: str, *, step: int, tokens: int, **fields: object) -> dict[str, object]:
        record = {"event": event, "step": step, "tokens": tokens, "time": round(time.time(), 3),
                  "run_id": self.run_id}
        record.update({k: _clean(v) for k, v in fields.items()})
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        self.last = record
        for sink in list(self.sinks):
            try:
                sink.log(record)
            except Exception as e:  # never let a mirror stop training
                self.sinks.remove(sink)
                print(f"[sigma] WARNING: {type(sink).__name__} failed ({e!r}); it is off for the rest of the run, "
                      f"metrics.jsonl goes on", flush=True)
        return record

    def close(self) -> None:
        for sink in self.sinks:
            with contextlib.suppress(Exception):  # closing a mirror must not mask the run's outcome
                sink.close()
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


STAGES = ("data", "h2d", "forward", "backward", "optimizer", "eval", "checkpoint", "logging", "post_training",
          "other")
"""Where a step's wall time goes; `perf_bottleneck_stage_id` is an index into this tuple."""
COMPUTE_STAGES = ("h2d", "forward", "backward", "optimizer")


class StageClock:
    """Per-stage times without forcing a host-device sync.

    Device stages (h2d, forward, backward, optimizer) are bracketed by CUDA events on a GPU and read
    only in `drain()`, which the loop calls at log steps where it synchronises anyway; on the CPU,
    where work is synchronous, perf_counter is exact. Host stages (data wait, eval, checkpoint,
    logging, post-training phases) are host waits, measured with perf_counter via `add()`.
    `enabled=False` (--metrics-level minimal) times only the compute block as a whole.
    """

    def __init__(self, device: torch.device, *, enabled: bool = True):
        self.cuda = device.type == "cuda"
        self.enabled = enabled
        self._open: dict[str, object] = {}
        self._device: list[tuple[str, object, object]] = []
        self._host: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._steps = 0

    def _now(self) -> object:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def start(self, stage: str) -> None:
        # Full: each compute stage is timed and "compute" is their sum. Minimal: one pair per step.
        if (stage == "compute") != self.enabled:
            self._open[stage] = self._now()

    def stop(self, stage: str) -> None:
        if stage in self._open:
            self._device.append((stage, self._open.pop(stage), self._now()))

    def add(self, stage: str, seconds: float) -> None:
        self._host[stage] += seconds

    def step_done(self) -> None:
        self._steps += 1

    def drain(self) -> tuple[dict[str, float], int]:
        """(seconds per stage summed since the last drain, steps) — plus "compute", the timed core."""
        if self.cuda and self._device:
            torch.cuda.current_stream().synchronize()  # already idle after the loop's .item()
        totals = dict(self._host)
        totals["compute"] = 0.0
        for stage, a, b in self._device:
            dt = a.elapsed_time(b) / 1e3 if self.cuda else b - a
            totals[stage] = totals.get(stage, 0.0) + dt
        if self.enabled:
            totals["compute"] = sum(totals[s] for s in COMPUTE_STAGES)
        steps, self._steps = self._steps, 0
        self._device.clear()
        self._host = dict.fromkeys(STAGES, 0.0)
        return totals, steps


def bottleneck(stage_s: dict[str, float], wall_s: float) -> tuple[int | None, str | None, float | None]:
    """The stage that took the largest share of the wall time, with that share."""
    if wall_s <= 0:
        return None, None, None
    shares = {s: stage_s.get(s, 0.0) / wall_s for s in STAGES if s != "other"}
    shares["other"] = max(0.0, 1.0 - sum(shares.values()))
    name = max(shares, key=shares.get)
    return STAGES.index(name), name, min(1.0, shares[name])


class ResourceSampler:
    """Samples CPU, RAM, GPU utilisation, power and SM clock on a background thread (never blocks the loop).

    `read()` returns the averages since the last read; GPU fields are null without a GPU or NVML.
    The clock shows throttling: a card at its power limit lowers it, and the same work takes longer.
    """

    def __init__(self, device: torch.device, *, interval_s: float = 1.0, enabled: bool = True):
        import threading

        import psutil

        self._psutil = psutil
        self.device = device
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._samples: list[tuple[float | None, ...]] = []
        self._stop = threading.Event()
        self._nvml = device.type == "cuda" and self._probe_nvml()
        self._clock = self._nvml  # some virtualised GPUs report utilisation but not clocks
        psutil.cpu_percent(interval=None)  # the first call only primes the counter
        self._thread = threading.Thread(target=self._run, name="eco_train-resources", daemon=True)
        if enabled:
            self._thread.start()

    def _probe_nvml(self) -> bool:
        try:
            torch.cuda.utilization(self.device)
            return True
        except Exception:  # no driver / no pynvml: GPU readings stay null
            return False

    def _sample(self) -> tuple[float | None, ...]:
        gpu_util = gpu_power = gpu_clock = None
        if self._nvml:
            try:
                gpu_util = float(torch.cuda.utilization(self.device))
                gpu_power = torch.cuda.power_draw(self.device) / 1000.0  # mW -> W
            except Exception:
                self._nvml = self._clock = False
        if self._clock:
            try:
                gpu_clock = float(torch.cuda.clock_rate(self.device))  # MHz
            except Exception:
                self._clock = False
        cpu, ram = self._psutil.cpu_percent(interval=None), self._psutil.virtual_memory().percent
        return (cpu, ram, gpu_util, gpu_power, gpu_clock)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            sample = self._sample()
            with self._lock:
                self._samples.append(sample)

    def read(self) -> dict[str, float | None]:
        with self._lock:
            samples, self._samples = self._samples, []
        if not samples:
            samples = [self._sample()]

        def mean(i: int) -> float | None:
            vals = [x[i] for x in samples if x[i] is not None]
            return sum(vals) / len(vals) if vals else None

        out = {"cpu_util_percent": mean(0), "ram_used_percent": mean(1), "gpu_util_percent": mean(2),
               "gpu_power_w": mean(3), "gpu_sm_clock_mhz": mean(4), "gpu_mem_alloc_gb": None,
               "gpu_mem_reserved_gb": None}
        if self.device.type == "cuda":  # allocator counters: host-side reads, no sync
            out["gpu_mem_alloc_gb"] = torch.cuda.memory_allocated(self.device) / 1e9
            out["gpu_mem_reserved_gb"] = torch.cuda.memory_reserved(self.device) / 1e9
        return out

    def close(self) -> None:
        self._stop.set()
