"""End-to-end runs of the real CLI on the CPU: outputs, determinism, the reference losses, export/import."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from entry import run_eco_train

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "tests" / "assets" / "reference_losses_tiny.json"

# A run small enough for a test (a few seconds on 2 cores) that still exercises every part:
# bootstrap seed batches, a trained tokenizer, Muon + C3O, evaluation and samples mid-run.
TINY = [
    "--device", "cpu", "--model-preset", "tiny", "--seq-len", "32", "--batch-size", "4",
    "--vocab-size", "512", "--tokenizer-train-chars", "60000", "--steps", "12", "--warmup-steps", "2",
    "--log-every", "1", "--eval-every", "6", "--eval-batches", "2", "--sample-every", "6",
    "--bootstrap-seed-batches", "2", "--seed", "7",
]

STEP_FIELDS = {"event", "step", "tokens", "time", "loss", "loss_ema", "lr", "grad_norm", "core_step_time_s",
               "core_tokens_per_s", "effective_step_time_s", "effective_tokens_per_s"}
STARTUP_FIELDS = {"startup_init_s", "time_to_first_batch_s", "time_to_first_step_s", "instant_inversion_iters",
                  "instant_inversion_rel_residual", "muon_params", "c3o_params", "muon_numel", "c3o_numel"}


def train(tmp_path: Path, *extra: str, name: str = "run") -> tuple[subprocess.CompletedProcess, list[dict], Path]:
    out = tmp_path / name
    r = run_eco_train(*TINY, "--output-dir", str(out), "--checkpoint-dir", str(out / "checkpoints"), *extra,
                      cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return r, records, out


def step_losses(records: list[dict]) -> list[float]:
    return [r["loss"] for r in records if r["event"] == "step"]


def test_run_writes_config_metrics_samples_and_checkpoint(tmp_path):
    r, records, out = train(tmp_path)
    for line in ("[sigma] device=cpu", "[sigma] instant_inversion_iters=5", "[sigma] muon_params=",
                 "[sigma] time_to_first_step_s=", "WARNING: training on the CPU"):
        assert line in r.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["loop"]["steps"] == 12 and config["model"]["n_layer"] == 4
    assert config["versions"]["torch"] == torch.__version__.split("+")[0]

    assert all({"event", "step", "tokens", "time"} <= rec.keys() for rec in records)
    steps = [rec for rec in records if rec["event"] == "step"]
    assert [s["step"] for s in steps] == list(range(1, 13))
    assert all(s.keys() >= STEP_FIELDS for s in steps)
    assert all(s["mfu"] is None for s in steps), "no GPU: MFU is null, never invented"
    assert steps[-1]["tokens"] == 12 * 4 * 32
    (startup,) = [rec for rec in records if rec["event"] == "startup"]
    assert startup.keys() >= STARTUP_FIELDS
    assert 0 < startup["instant_inversion_rel_residual"] < 0.3
    assert startup["ns_dtype"] == "float32"  # bf16 matmuls are emulated on most CPUs (test_hardware.py)
    assert startup["compile_aot_cache_hits"] is None, "nothing compiles on the CPU: cache counts are null"
    evals = [rec for rec in records if rec["event"] == "eval"]
    assert [e["step"] for e in evals] == [0, 6, 12]
    assert records[-1]["event"] == "end" and records[-1]["heldout_loss"] < records[-1]["heldout_loss_step0"]

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {6, 12} and all(s["text"].startswith(s["prompt"]) for s in samples)
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    ckpt = out / "checkpoints" / "step_12"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "tokenizer.json").is_file()
    assert not list((out / "checkpoints").glob(".tmp*"))


def test_same_seed_same_losses_and_reference(tmp_path):
    """Two runs with one seed give identical per-step losses, equal to the stored reference run.

    Bit for bit only on a CPU of the reference's SIMD level: torch picks other matmul and reduction
    kernels for AVX-512 than for AVX2, and they round differently (the first step agrees exactly; over
    12 steps the losses drift apart by up to 2e-4 relative). Elsewhere the losses must stay within 1e-3.
    """
    _, a, _ = train(tmp_path, name="a")
    _, b, _ = train(tmp_path, name="b")
    losses = step_losses(a)
    assert losses == step_losses(b)
    capability = torch.backends.cpu.get_cpu_capability()
    if os.environ.get("ECO_TRAIN_REGEN_REFERENCE") == "1":
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps({"args": TINY, "torch": torch.__version__, "cpu_capability": capability,
                                         "losses": losses}, indent=1))
    ref = json.loads(REFERENCE.read_text())
    assert ref["args"] == TINY, "the reference was made with other settings: regenerate it"
    if ref["cpu_capability"] == capability:
        assert losses == ref["losses"], "per-step losses moved: a change altered the maths of a tiny run"
    else:
        drift = max(abs(x - y) / abs(y) for x, y in zip(losses, ref["losses"], strict=True))
        assert drift < 1e-3, (f"per-step losses moved by {drift:.1e} relative (reference made on {ref['cpu_capability']}, "
                              f"this CPU is {capability}): a change altered the maths of a tiny run")


def test_other_seed_differs(tmp_path):
    _, a, _ = train(tmp_path, name="a")
    _, b, _ = train(tmp_path, "--seed", "8", name="b")
    assert step_losses(a) != step_losses(b)


def test_export_then_init_from_continues_the_same_model(tmp_path):
    """--export-hf writes a folder stock transformers loads; --init-from resumes those exact weights."""
    from transformers import AutoModelForCausalLM

    hf = tmp_path / "hf"
    _, first, out = train(tmp_path, "--export-hf", str(hf), name="first")
    model = AutoModelForCausalLM.from_pretrained(hf)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    _, second, _ = train(tmp_path, "--init-from", str(hf), "--tokenizer", str(hf), name="second")
    final_first = first[-1]["heldout_loss"]
    start_second = next(r for r in second if r["event"] == "eval")["heldout_loss"]
    assert start_second == pytest.approx(final_first, rel=1e-6)


def test_local_backend_and_c3o_only(tmp_path):
    from training.data.seed_corpus import seed_documents

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = seed_documents(seed=3)
    with open(corpus / "part.jsonl", "w") as f:
        for _ in range(400):
            f.write(json.dumps({"text": next(docs).text}) + "\n")
    r, records, _ = train(tmp_path, "--data-backend", "local", "--data-path", str(corpus),
                          "--optimizer", "c3o", "--bootstrap-seed-batches", "0")
    assert "[sigma] muon_params=0" in r.stdout
    assert records[-1]["heldout_loss"] < records[-1]["heldout_loss_step0"]


@pytest.mark.slow
def test_readme_cpu_main_job(tmp_path):
    """README command 1's job on the CPU: first step within 60 s, held-out loss >= 30% lower at the end."""
    out = tmp_path / "main"
    r = run_eco_train(f"@{REPO / 'train_sigma_args.txt'}", f"@{REPO / 'train_sigma_args_cpu.txt'}",
                      "--output-dir", str(out), "--checkpoint-dir", str(out / "ck"), cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    startup = next(rec for rec in records if rec["event"] == "startup")
    assert startup["time_to_first_step_s"] < 60
    assert records[-1]["event"] == "end" and records[-1]["heldout_loss_drop"] >= 0.30


def test_fp8_lm_head_without_the_fused_kernel_fails_at_start_up_with_the_fix(tmp_path):
    """On the CPU ``--kernels auto`` keeps the PyTorch loss, which has no FP8 head: the run stops before
    its first step, says why and what to do, and leaves a crash report; no checkpoint is written."""
    out = tmp_path / "run"
    r = run_eco_train(*TINY, "--fp8-lm-head", "on", "--output-dir", str(out), "--checkpoint-dir",
                      str(out / "checkpoints"), cwd=tmp_path)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "--fp8-lm-head on: the FP8 LM head is part of the fused linear + CE kernel" in r.stderr
    assert "--fp8-lm-head off" in r.stderr
    assert (out / "errors" / "crash_step_0.json").is_file()
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").glob("step_*"))
