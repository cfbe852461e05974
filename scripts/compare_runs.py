"""Two runs' losses side by side, from their metrics.jsonl: did a change alter what the model learns?

    python3 scripts/compare_runs.py runs/a/metrics.jsonl runs/b/metrics.jsonl

Prints the training loss of every step record both runs logged, every held-out evaluation, and the
median core tokens/s of each (over step records after the first, which include compilation). Made for
A/B runs that share seed, data and schedule and differ in one flag (``scripts/gpu_figures.sh
fp8_quality``); the relative difference column is ``(b - a) / a``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.report import read_metrics  # noqa: E402


def read(path: Path) -> dict[str, dict[int, dict]]:
    """``{"step": {step: record}, "eval": {step: record}}`` from one metrics.jsonl (a cut last line of a
    crashed run is skipped, as ``eco_train report`` skips it)."""
    out: dict[str, dict[int, dict]] = {"step": {}, "eval": {}}
    for rec in read_metrics(path)[0]:
        if rec.get("event") in out:
            out[rec["event"]][rec["step"]] = rec
    return out


def rows(a: dict[int, dict], b: dict[int, dict], key: str) -> list[tuple[int, float, float, float]]:
    return [(step, a[step][key], b[step][key], (b[step][key] - a[step][key]) / a[step][key])
            for step in sorted(a.keys() & b.keys())
            if isinstance(a[step].get(key), float) and isinstance(b[step].get(key), float) and a[step][key]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = p.parse_args()
    a, b = read(args.a), read(args.b)
    print(f"a = {args.a}\nb = {args.b}")
    for title, event, key in (("training loss", "step", "loss"), ("held-out loss", "eval", "heldout_loss")):
        print(f"\n{title}\n{'step':>6} {'a':>9} {'b':>9} {'(b-a)/a':>9}")
        for step, va, vb, rel in rows(a[event], b[event], key):
            print(f"{step:6d} {va:9.4f} {vb:9.4f} {rel:+9.2%}")
    for name, run in (("a", a), ("b", b)):
        speeds = [r["core_tokens_per_s"] for step, r in sorted(run["step"].items())[1:]
                  if isinstance(r.get("core_tokens_per_s"), (int, float))]
        if speeds:
            print(f"\n{name}: median core tokens/s {statistics.median(speeds):,.0f} over {len(speeds)} records")


if __name__ == "__main__":
    main()
