"""Training throughput and MFU of the real trainer on a GPU, against a bf16 matmul peak measured in the same run.

    python scripts/bench_throughput.py --preset 124m --seq-len 1024 --batch-size 32 --steps 60 --runs 2

For each run it starts `train_sigma.py` as a user would (bf16 profile, torch.compile), reads
metrics.jsonl, drops the log intervals that include compilation, and reports the median compute-only
(`core`) and end-to-end (`effective`) tokens/s over the rest. MFU = flops_per_token * tokens/s / peak,
with the peak taken from a large bf16 matmul on the same card right before the runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def bf16_matmul_peak_tflops(n: int = 8192, reps: int = 30) -> float:
    """Median TFLOP/s of an n x n x n bf16 matmul (random data, after warm-up, CUDA events)."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


def one_run(args: argparse.Namespace, out: Path, level: str) -> dict:
    cmd = [
        sys.executable, str(REPO / "train_sigma.py"), f"@{REPO / 'train_sigma_args.txt'}",
        "--model-preset", args.preset, "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size),
        "--grad-accum", "1", "--steps", str(args.steps), "--log-every", str(args.log_every),
        "--eval-every", "0", "--eval-batches", "2", "--sample-every", "0", "--warmup-steps", "10",
        "--tokenizer-train-chars", str(args.tokenizer_chars), "--vocab-size", str(args.vocab_size),
        *([] if "--data-backend" in args.extra else ["--data-backend", "local", "--data-path", args.data_path]),
        "--output-dir", str(out), "--checkpoint-dir", str(out / "ckpt"), "--compile", args.compile,
        "--metrics-level", level, "--resume", "never", "--save-every", "0", *args.extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    (out / "stdout.txt").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"trainer failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["event"] == "step"]
    startup = next(r for r in records if r["event"] == "startup")
    warm = steps[args.skip_logs:]
    if not warm:
        raise SystemExit("not enough steps after warm-up; raise --steps")
    gpu_fields = ("gpu_util_percent", "gpu_mem_alloc_gb", "gpu_mem_reserved_gb", "gpu_power_w", "gpu_sm_clock_mhz",
                  "phase_data_s", "perf_bottleneck_stage", "perf_bottleneck_share", "effective_step_time_s")
    return {
        "metrics_level": level,
        "last_step_record": {k: warm[-1].get(k) for k in gpu_fields},
        "core_tokens_per_s": statistics.median(r["core_tokens_per_s"] for r in warm),
        "effective_tokens_per_s": statistics.median(r["effective_tokens_per_s"] for r in warm),
        "core_step_time_s": statistics.median(r["core_step_time_s"] for r in warm),
        "flops_per_token": startup["flops_per_token"],
        "n_params": startup["n_params"],
        "time_to_first_step_s": startup["time_to_first_step_s"],
        "final_loss": steps[-1]["loss"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="124m")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--skip-logs", type=int, default=2, help="log intervals dropped as warm-up/compile")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--vocab-size", type=int, default=32768)
    p.add_argument("--tokenizer-chars", type=int, default=20_000_000)
    p.add_argument("--compile", default="on")
    p.add_argument("--data-path", default=sysconfig.get_paths()["stdlib"],
                   help="local corpus (default: this Python's standard library source, real code text)")
    p.add_argument("--out", default=None, help="folder for run outputs and results.json")
    p.add_argument("--levels", default="full",
                   help="comma list of --metrics-level values, run alternately (full,minimal measures overhead)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more trainer flags, after everything")
    args = p.parse_args()

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("bench_throughput needs a CUDA GPU")
    card = torch.cuda.get_device_name()
    peak = bf16_matmul_peak_tflops()
    root = Path(args.out or tempfile.mkdtemp(prefix="bench_throughput_"))
    levels = args.levels.split(",")
    results = []
    for i in range(args.runs):
        for level in levels:  # alternate, so drift on the card hits every level alike
            r = one_run(args, root / f"run{i}_{level}", level)
            r["mfu"] = r["flops_per_token"] * r["core_tokens_per_s"] / (peak * 1e12)
            results.append(r)
            print(f"run {i} ({level}): {json.dumps(r)}", flush=True)
    by_level = {lv: [r for r in results if r["metrics_level"] == lv] for lv in levels}
    summary = {
        "card": card, "torch": torch.__version__, "cuda": torch.version.cuda,
        "bf16_matmul_peak_tflops": peak, "preset": args.preset, "seq_len": args.seq_len,
        "batch_size": args.batch_size, "tokens_per_step": args.seq_len * args.batch_size,
        "compile": args.compile, "extra": args.extra, "runs": results,
        "by_level": {lv: {"median_core_tokens_per_s": statistics.median(r["core_tokens_per_s"] for r in rs),
                          "median_effective_tokens_per_s": statistics.median(r["effective_tokens_per_s"] for r in rs),
                          "median_mfu": statistics.median(r["mfu"] for r in rs)} for lv, rs in by_level.items()},
    }
    (root / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{card} | torch {torch.__version__} CUDA {torch.version.cuda} | bf16 matmul peak {peak:.0f} TFLOP/s")
    print(f"preset {args.preset} ({results[0]['n_params'] / 1e6:.1f}M params), seq {args.seq_len}, "
          f"batch {args.batch_size}, compile {args.compile}, {args.runs} runs per level, extra {args.extra}")
    for lv, m in summary["by_level"].items():
        print(f"[{lv:>7}] core tokens/s {m['median_core_tokens_per_s']:>10,.0f} | effective tokens/s "
              f"{m['median_effective_tokens_per_s']:>10,.0f} | MFU {m['median_mfu']:.1%}")
    if len(levels) == 2:
        a, b = (summary["by_level"][lv]["median_effective_tokens_per_s"] for lv in levels)
        print(f"effective tokens/s, {levels[0]} vs {levels[1]}: {a / b - 1:+.2%}")


if __name__ == "__main__":
    main()
