"""Start-up with and without the persisted compile cache (``--compile-cache``), on a GPU.

    python3 scripts/bench_compile_cache.py --preset 124m --seq-len 2048 --batch-size 32

Runs the real trainer twice with the same checkpoint folder, each time with an empty, private
Inductor cache (``TORCHINDUCTOR_CACHE_DIR``), so the only thing the second start can reuse is what
the first one saved under ``<checkpoint dir>/compile_cache/``. Compile time is time to first step
minus set-up time (``startup_init_s``), both from the startup record of metrics.jsonl; the
held-out evaluation at step 0 runs compiled too, so its graph is part of it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def start(args: argparse.Namespace, work: Path, name: str) -> dict:
    run_dir = work / name
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(work / f"inductor_{name}")}
    cmd = [sys.executable, str(REPO / "train_sigma.py"), "--model-preset", args.preset, "--seq-len", str(args.seq_len),
           "--batch-size", str(args.batch_size), "--steps", "3", "--log-every", "1", "--eval-every", "0",
           "--eval-batches", "1", "--sample-every", "0", "--warmup-steps", "1", "--data-backend", "seed",
           "--vocab-size", "32768", "--tokenizer-train-chars", "2000000", "--output-dir", str(run_dir),
           "--checkpoint-dir", str(work / "ckpt"), "--resume", "never", "--save-every", "0", *args.extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{name} start failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    startup = next(r for r in records if r["event"] == "startup")
    compile_s = startup["time_to_first_step_s"] - startup["startup_init_s"]
    return {"run": name, "compile_cache_loaded": startup["compile_cache_loaded"], "compile_s": compile_s,
            "startup_init_s": startup["startup_init_s"], "time_to_first_step_s": startup["time_to_first_step_s"],
            "fused_mlp_active": startup.get("fused_mlp_active"),
            "flash_attention_active": startup.get("flash_attention_active"),
            **{k: v for k, v in startup.items() if k.startswith(("compile_aot_", "compile_fx_"))}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="124m")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", default=None)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more trainer flags")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cold = start(args, work, "cold")
        warm = start(args, work, "warm")
    ratio = warm["compile_s"] / cold["compile_s"]
    for r in (cold, warm):
        print(json.dumps(r))
    print(f"compile time: cold {cold['compile_s']:.1f} s, with the persisted cache {warm['compile_s']:.1f} s "
          f"({ratio:.0%} of cold); time to first step: cold {cold['time_to_first_step_s']:.1f} s, "
          f"warm {warm['time_to_first_step_s']:.1f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"cold": cold, "warm": warm, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
