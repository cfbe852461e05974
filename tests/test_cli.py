"""The command line contract (SPEC §4 "CLI"): @files, overrides, --help/--version, exit code 2 errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from entry import run_eco_train

from training.cli import UsageError, parse_args

REPO = Path(__file__).resolve().parent.parent
SHIPPED_ARGS_FILES = sorted(REPO.glob("train_sigma_args*.txt"))


def eco_train(*args: str) -> subprocess.CompletedProcess:
    return run_eco_train(*args, timeout=60)


def test_shipped_args_files_exist_and_parse():
    assert SHIPPED_ARGS_FILES, "the repo ships train_sigma_args.txt"
    for path in SHIPPED_ARGS_FILES:
        parse_args([f"@{path}"])
    ns = parse_args([f"@{p}" for p in SHIPPED_ARGS_FILES])  # the README's layered CPU command
    assert ns.device == "cpu" and ns.model_preset == "tiny"


def test_args_file_comments_inline_values_and_overrides(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("# a comment\n\n--steps 7   # trailing comment\n--seed\n11\n--output-dir 'my runs/x'\n")
    g = tmp_path / "b.txt"
    g.write_text("--steps 9\n")
    ns = parse_args([f"@{f}"])
    assert (ns.steps, ns.seed, ns.output_dir) == (7, 11, "my runs/x")
    assert parse_args([f"@{f}", f"@{g}"]).steps == 9  # later file wins
    assert parse_args([f"@{f}", "--steps", "3"]).steps == 3  # command line wins
    assert parse_args(["--steps", "3", f"@{f}"]).steps == 7  # order decides, not origin


def test_help_and_version():
    r = eco_train("--help")
    assert r.returncode == 0 and "--model-preset" in r.stdout and "@train_sigma_args.txt" in r.stdout
    r = eco_train("--version")
    assert r.returncode == 0 and r.stdout.startswith("eco_train ")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--no-such-flag", "1"], "unrecognized arguments: --no-such-flag"),
        (["--steps", "ten"], "argument --steps: expected an integer, got 'ten'"),
        (["--steps", "0"], "argument --steps: must be >= 1, got 0"),
        (["--lr", "-1"], "argument --lr: must be in (0.0, 10.0], got -1"),
        (["--lr", "nan"], "argument --lr: must be in (0.0, 10.0]"),
        (["--c3o-cautious", "maybe"], "argument --c3o-cautious: expected on or off"),
        (["--model-preset", "7b"], "argument --model-preset: invalid choice: '7b'"),
        (["@does_not_exist.txt"], "args file 'does_not_exist.txt' not found"),
        (["--data-backend", "local"], "--data-backend local needs --data-path"),
        (["--data-backend", "local", "--data-path", "/nonexistent/corpus"],
         "--data-path: data path does not exist: /nonexistent/corpus"),
        (["--data-path", "."], "--data-path is only read by --data-backend local"),
        (["--steps", "5", "--warmup-steps", "10"], "--warmup-steps 10 is more than --steps 5"),
        (["--device", "cpu", "--hardware-profile", "bf16"], "--hardware-profile bf16 needs a CUDA GPU"),
        (["--fp8-lm-head", "on", "--kernels", "torch"], "--fp8-lm-head on runs inside the fused linear + CE"),
        (["--fp8-lm-head", "maybe"], "argument --fp8-lm-head: invalid choice: 'maybe' (choose from 'auto', 'on', 'off')"),
        (["--fused-mlp", "on", "--bitnet-1-58", "on"], "--fused-mlp on replaces the MLP's plain matmuls"),
        (["--fused-mlp", "on", "--device", "cpu"], "--fused-mlp on runs quack's GPU GEMMs but --device is cpu"),
        (["--flash-attention", "on", "--device", "cpu"], "--flash-attention on runs FlashAttention 4's GPU kernels but"),
        (["--tokenizer", "/nonexistent/tok.json"], "--tokenizer '/nonexistent/tok.json' is neither"),
        (["--init-from", "/nonexistent/model"], "--init-from '/nonexistent/model' is not a Hugging Face"),
        (["--data-backend", "hybrid", "--mix", "fineweb=1"], "argument --mix: expected name=weight pairs"),
        (["--data-backend", "hybrid", "--mix", "cosmopedia=x"], "argument --mix: weight of cosmopedia must be"),
        (["--data-backend", "hybrid", "--mix", "cosmopedia=-1"], "argument --mix: weight of cosmopedia must be"),
        (["--data-backend", "hybrid", "--mix", "cosmopedia=0"], "argument --mix: at least one weight"),
        (["--mix", "cosmopedia=1"], "--mix is only read by --data-backend hybrid"),
        (["--data-backend", "hybrid", "--fineweb-path", "/nonexistent/fw"], "--fineweb-path '/nonexistent/fw' does not"),
        (["--data-backend", "hybrid", "--cosmopedia-path", "training/data"],
         "--cosmopedia-path 'training/data' holds no .parquet/.jsonl"),
        (["--data-backend", "hybrid", "--cc-wet-paths", "/nonexistent/list"], "--cc-wet-paths '/nonexistent/list' is"),
        (["--data-backend", "hybrid", "--cc-crawl", ""], "commoncrawl needs --cc-crawl or --cc-wet-paths"),
    ],
)
def test_bad_input_exits_2_with_one_clear_message(args, needle):
    r = eco_train(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("eco_train: error: ") and needle in lines[0], lines[0]
    assert "fix:" in lines[0]
    assert r.stdout == ""


def test_bad_input_inside_args_file_names_the_flag(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_text("--batch-size -4\n")
    r = eco_train(f"@{f}")
    assert r.returncode == 2 and "argument --batch-size: must be >= 1, got -4" in r.stderr


def test_local_path_problems(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="directory has no supported data files"):
        parse_args(["--data-backend", "local", "--data-path", str(empty)])
    bad = tmp_path / "data.csv"
    bad.write_text("a,b\n")
    with pytest.raises(UsageError, match="unsupported data file extension"):
        parse_args(["--data-backend", "local", "--data-path", str(bad)])
    good = tmp_path / "ok"
    good.mkdir()
    (good / "a.txt").write_text("hello")
    ns = parse_args(["--data-backend", "local", "--data-path", str(good), "--data-path", str(good / "a.txt")])
    assert ns.data_path == [str(good), str(good / "a.txt")]


def test_cli_stays_light():
    """Bad input must be rejected before torch is imported (fast, and no GPU work)."""
    code = ("import sys; from training.cli import parse_args; parse_args(['--steps','3']); "
            "assert 'torch' not in sys.modules, 'cli imported torch'")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# --- grpo group -------------------------------------------------------------------------------

@pytest.mark.parametrize("argv,needle", [
    (["--grpo", "on", "--grpo-difficulty", "4"], "--grpo-difficulty"),
    (["--reward-success", "-2"], "--reward-success"),
    (["--stages", "pretrain", "--grpo", "on"], "--stages pretrain"),
    (["--grpo", "off", "--stages", "grpo"], "--grpo is off"),
    (["--grpo-tasks", "missing.jsonl"], "--grpo-tasks"),
    (["--grpo", "on", "--grpo-completion-length", "300", "--seq-len", "256"], "--grpo-completion-length"),
    (["--grpo-generations", "1"], "--grpo-generations"),
    (["--grpo-accelerator", "unsloth", "--device", "cpu"], "--grpo-accelerator"),
])
def test_grpo_flag_errors(argv, needle):
    from training.cli import UsageError, parse_args

    with pytest.raises(UsageError, match=re.escape(needle)):
        parse_args(argv)


def test_grpo_flags_build_the_stage_config():
    from training.cli import parse_args
    from training.config import RunConfig

    g = RunConfig.from_args(parse_args(["--grpo", "on", "--grpo-difficulty", "1,2", "--grpo-lora-rank", "8"])).grpo
    assert g.enabled and g.difficulties == (1, 2) and g.lora_rank == 8 and g.reward_success == 2.0
    assert RunConfig.from_args(parse_args(["--stages", "grpo"])).grpo.only
