"""Frozen binary vs source entry point: start-up to first step and steady tokens/s, side by side.

    python scripts/bench_exe.py                                    # CPU: tiny preset, 5 runs each
    python scripts/bench_exe.py --runs 3 --args "--model-preset 124m --seq-len 1024 --batch-size 16 --steps 60"

Runs alternate (source, binary, source, binary, ...) in fresh output folders so drift hits both
alike. Per run it records:
  - launch_to_first_step_s: wall clock from starting the process to the moment it prints
    `[sigma] time_to_first_step_s=` (includes the interpreter / bootloader and every import,
    which is where a frozen program differs; the trainer's own time_to_first_step_s starts later,
    when its run() begins, and is reported beside it),
  - steady_tokens_per_s: median `effective_tokens_per_s` over the second half of the step records
    (compile and warm-up excluded),
  - wall_s: the whole process.
Prints medians per entry point and the binary/source ratios, and writes all runs as JSON (--out).
The acceptance bars (issue 3): start-up ratio <= 1.3, tokens/s ratio within noise (~ +-5%).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ARGS = ("--device cpu --model-preset tiny --steps 60 --seq-len 64 --batch-size 8 --vocab-size 512 "
                "--tokenizer-train-chars 60000 --log-every 1 --eval-every 1000 --eval-batches 1 "
                "--sample-every 1000 --bootstrap-seed-batches 2")


def one_run(cmd: list[str], extra: list[str], workdir: Path) -> dict:
    out = workdir / "run"
    full = [*cmd, *extra, "--output-dir", str(out), "--checkpoint-dir", str(workdir / "ck")]
    t0 = time.perf_counter()
    proc = subprocess.Popen(full, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first_step = None
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:  # timestamp each line as it arrives: no polling error
        if first_step is None and "[sigma] time_to_first_step_s=" in line:
            first_step = time.perf_counter() - t0
        tail = (tail + [line])[-40:]
    rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{shlex.join(full)} exited {rc}:\n{''.join(tail)}")
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    startup = next(r for r in records if r["event"] == "startup")
    steps = [r for r in records if r["event"] == "step"]
    steady = [r["effective_tokens_per_s"] for r in steps[len(steps) // 2:] if r.get("effective_tokens_per_s")]
    return {"launch_to_first_step_s": first_step, "trainer_time_to_first_step_s": startup.get("time_to_first_step_s"),
            "steady_tokens_per_s": statistics.median(steady) if steady else None, "wall_s": wall,
            "device": startup.get("device_name") or startup.get("device")}


def med(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=str(REPO / "dist" / "eco_train" / "eco_train"), help="the frozen binary")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the source entry point")
    ap.add_argument("--runs", type=int, default=5, help="runs per entry point (medians are reported)")
    ap.add_argument("--args", default=DEFAULT_ARGS, help="eco_train flags for every run (one string)")
    ap.add_argument("--out", default=None, help="write every run and the medians here as JSON")
    opts = ap.parse_args()

    binary = Path(opts.binary).resolve()
    if not binary.is_file():
        print(f"bench_exe: no binary at {binary}; fix: ./build_exe.sh first, or pass --binary", file=sys.stderr)
        return 2
    entries = {"source": [opts.python, str(REPO / "train_sigma.py")], "binary": [str(binary)]}
    extra = shlex.split(opts.args)
    runs: dict[str, list[dict]] = {k: [] for k in entries}
    for i in range(opts.runs):
        for name, cmd in entries.items():
            with tempfile.TemporaryDirectory(prefix=f"bench_exe_{name}_") as d:
                r = one_run(cmd, extra, Path(d))
            runs[name].append(r)
            print(f"run {i + 1}/{opts.runs} {name:6s} launch->first step {r['launch_to_first_step_s']:.2f}s "
                  f"(trainer {r['trainer_time_to_first_step_s']:.2f}s)  steady {r['steady_tokens_per_s']:.0f} tok/s"
                  f"  wall {r['wall_s']:.1f}s", flush=True)

    keys = ("launch_to_first_step_s", "trainer_time_to_first_step_s", "steady_tokens_per_s", "wall_s")
    medians = {name: {k: med(rs, k) for k in keys} for name, rs in runs.items()}
    ratios = {k: medians["binary"][k] / medians["source"][k] for k in keys
              if medians["binary"][k] and medians["source"][k]}
    print(f"\nmedians of {opts.runs} runs each ({runs['source'][0]['device']}; {platform.node()}):")
    print(f"{'':32s}{'source':>12s}{'binary':>12s}{'binary/source':>15s}")
    for k in keys:
        s, b = medians["source"][k], medians["binary"][k]
        print(f"{k:32s}{s:12.3f}{b:12.3f}{ratios.get(k, float('nan')):15.3f}")
    size = sum(f.stat().st_size for f in binary.parent.rglob("*") if f.is_file())
    print(f"binary folder size: {size / 1e9:.2f} GB ({binary.parent})")
    if opts.out:
        Path(opts.out).write_text(json.dumps({"args": opts.args, "runs": runs, "medians": medians, "ratios": ratios,
                                              "binary": str(binary), "binary_folder_bytes": size,
                                              "python": platform.python_version(), "host": platform.node()},
                                             indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
