"""GPU acceptance of the GRPO stage: SmolLM2-135M-Instruct, easy generated tasks, held-out pass rate
before and after, with a stop and a resume between the two phases.

    python3 scripts/grpo_gpu_demo.py --parts 'shared/smollm2/smol.gguf.part_*'      # writes into $OUT

What it does, all through eco_train's real entry point (`train_sigma.py`), nothing in-process:
1. re-assembles and converts the GGUF (`scripts/import_gguf.py`) into a Hugging Face folder;
2. `--stages grpo --init-from DIR --tokenizer DIR --steps 1`: the held-out tasks are scored greedily
   (`grpo_heldout_pass_rate_before`), phase 1 runs `--steps-per-phase` GRPO steps, the tasks are
   scored again, and the run ends with a checkpoint;
3. the same command with `--steps 2` resumes from that checkpoint and runs phase 2 (phase counter,
   task slice and TRL seed continue from the checkpoint), and scores the tasks a last time;
4. prints before/after pass rates, executions/s, the accelerator TRL ran with and the times, and
   writes `summary.json`, both runs' `metrics.jsonl` and logs under `--out` (default `$OUT`).

Knobs chosen for a 135M instruct model that already solves about half of the difficulty-1 tasks:
8 completions for each of 8 tasks per step (groups of 8 rarely all pass or all fail, so most carry
an advantage), completions up to 192 tokens (an answer is a ~60-token function plus some prose),
temperature 0.8, full weights in fp32 (`--hardware-profile fp32`: bf16 weights would round AdamW's
5e-6 steps away), no KL term. Time, estimated before any GPU run (transformers' eager generate on a
30-layer model: ~25-30 ms per decoded token, so ~6 s per step of 64 completions): 2 x 15 steps plus
three evaluations of 160 tasks plus two start-ups and the conversion, about 6 minutes; see
`phase_s` and the `*_s` fields of summary.json for what it really took, and lower
`--steps-per-phase` if it runs long.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What the GRPO stage and the conversion import beyond a plain torch + transformers machine.
NEEDED = ("trl", "datasets", "peft", "accelerate", "gguf")


def preflight(device: str) -> None:
    """Fail in seconds, naming what is missing (a dependency of a dependency too), not minutes into the run."""
    failures = []
    for name in NEEDED:
        try:
            importlib.import_module(name)
        except ImportError as e:  # e.name is the module really missing, e.g. requests under datasets
            failures.append(f"{name} ({e.name or e})")
    if failures:
        raise SystemExit(f"grpo_gpu_demo: cannot import {', '.join(failures)}; fix: pip install --no-deps the wheels "
                         "listed in the GRPO report (trl, datasets, dill, multiprocess, gguf; requests if named)")
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("grpo_gpu_demo: --device cuda but torch sees no GPU; fix: check nvidia-smi, or --device cpu "
                         "for a smoke run")


def run(cmd: list[str], log: Path) -> None:
    """Run `cmd` from the repo root, echoing its output and keeping a copy in `log`."""
    print("+ " + " ".join(cmd), flush=True)
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if "it/s]" not in line:  # progress bars: noise in a 12 kB output tail
                sys.stdout.write(line)
            f.write(line)
        if proc.wait() != 0:
            raise SystemExit(f"grpo_gpu_demo: command failed with exit code {proc.returncode}; log: {log}")


def train_cmd(args: argparse.Namespace, model_dir: Path, run_dir: Path, phases: int) -> list[str]:
    return [
        sys.executable, "train_sigma.py", "--stages", "grpo", "--init-from", str(model_dir),
        "--tokenizer", str(model_dir), "--steps", str(phases), "--warmup-steps", "0", "--seed", str(args.seed),
        "--device", args.device, "--hardware-profile", "fp32", "--compile", "off", "--kernels", "torch",
        "--data-backend", "seed", "--data-workers", "0", "--seq-len", "512", "--batch-size", "4",
        "--eval-batches", "2", "--output-dir", str(run_dir), "--checkpoint-dir", str(args.checkpoint_dir),
        "--save-every", "1", "--grpo-steps", str(args.steps_per_phase), "--grpo-prompts", str(args.prompts),
        "--grpo-generations", str(args.generations), "--grpo-completion-length", str(args.completion_length),
        "--grpo-temperature", str(args.temperature), "--grpo-lr", str(args.lr), "--grpo-beta", "0",
        "--grpo-lora-rank", "0", "--grpo-accelerator", "auto", "--grpo-tasks", "generated",
        "--grpo-difficulty", "1", "--grpo-eval-tasks", str(args.eval_tasks),
    ]


def summarize(records: list[dict], seconds: dict[str, float]) -> dict:
    grpo = [r for r in records if r["event"] == "grpo"]
    startup = next(r for r in records if r["event"] == "startup")
    if not grpo:
        raise SystemExit("grpo_gpu_demo: the runs wrote no grpo record; see the logs")
    return {
        "device_name": startup.get("device_name"), "accelerator": grpo[-1]["grpo_accelerator"],
        "prompt_format": grpo[-1]["grpo_prompt_format"],
        "heldout_tasks": grpo[-1]["grpo_heldout_tasks"],
        "heldout_pass_rate_before": grpo[0].get("grpo_heldout_pass_rate_before"),
        "heldout_pass_rate_after": [r["grpo_heldout_pass_rate"] for r in grpo],
        "train_pass_rate": [r["grpo_pass_rate"] for r in grpo],
        "executions_per_s": [r["grpo_executions_per_s"] for r in grpo],
        "executions": [r["grpo_executions"] for r in grpo],
        "phase_s": [r["grpo_phase_s"] for r in grpo],
        # Diagnostics: long, cut-off answers rarely pass; groups with no reward spread teach nothing.
        **{key: [r.get(f"grpo_{key}") for r in grpo]
           for key in ("completion_mean_length", "completion_clipped_ratio", "frac_reward_zero_std")},
        "grpo_steps": [r["grpo_steps"] for r in grpo],
        "resumed": any(r["event"] == "resume" for r in records),
        "sandbox_isolation": grpo[-1]["grpo_sandbox_isolation"],
        **{f"{k}_s": round(v, 1) for k, v in seconds.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--parts", nargs="+", help="the pieces of SmolLM2-135M-Instruct.Q4_1.gguf (or a quoted glob)")
    src.add_argument("--gguf", help="the whole .gguf file")
    src.add_argument("--model-dir-ready", metavar="DIR", help="an already converted folder (skips the conversion)")
    p.add_argument("--out", default=os.environ.get("OUT", "runs/grpo_gpu_demo"), help="results folder (default $OUT)")
    p.add_argument("--work", default="/tmp/eco_train_grpo_demo", help="model folder and checkpoints (not returned)")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--steps-per-phase", type=int, default=15)
    p.add_argument("--prompts", type=int, default=8, help="tasks per GRPO step")
    p.add_argument("--generations", type=int, default=8, help="completions per task")
    p.add_argument("--completion-length", type=int, default=192)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--eval-tasks", type=int, default=160, help="held-out tasks scored before and after each phase")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    preflight(args.device)

    out, work = Path(args.out).resolve(), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    args.checkpoint_dir = work / "checkpoints"
    run_dir = out / "run"
    # A rerun starts clean: no resume from an older demo's checkpoint, no records of it in the metrics.
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    shutil.rmtree(args.checkpoint_dir, ignore_errors=True)
    seconds: dict[str, float] = {}

    t0 = time.perf_counter()
    if args.model_dir_ready:
        model_dir = Path(args.model_dir_ready)
    else:
        model_dir = work / "smollm2-135m-instruct"
        source = ["--parts", *args.parts] if args.parts else [args.gguf]
        run([sys.executable, "scripts/import_gguf.py", *source, "--out", str(model_dir)], out / "import.log")
    seconds["convert"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run(train_cmd(args, model_dir, run_dir, phases=1), out / "phase1.log")
    seconds["run_phase1"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(train_cmd(args, model_dir, run_dir, phases=2), out / "phase2_resumed.log")
    seconds["run_phase2_resumed"] = time.perf_counter() - t0

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = summarize(records, seconds)
    summary["command"] = " ".join(["python3", "scripts/grpo_gpu_demo.py", *(argv if argv is not None else sys.argv[1:])])
    summary["train_command_phase2"] = " ".join(train_cmd(args, model_dir, run_dir, phases=2)[1:])
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    before, after = summary["heldout_pass_rate_before"], summary["heldout_pass_rate_after"]
    print(f"\nheld-out pass rate ({summary['heldout_tasks']} difficulty-1 tasks, greedy): {before:.1%} before -> "
          + " -> ".join(f"{a:.1%}" for a in after) + f" after {sum(summary['grpo_steps'])} GRPO steps")
    print(f"executions/s per phase: {', '.join(f'{x:.1f}' for x in summary['executions_per_s'])}; "
          f"accelerator: {summary['accelerator']}; device: {summary['device_name']}; "
          f"resumed between phases: {summary['resumed']}")
    print(f"summary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
