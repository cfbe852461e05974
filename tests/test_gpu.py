"""CUDA checks: skipped without a GPU (run them on the device machine with `pytest -m gpu`)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.config import ModelConfig
from model.decoder import SigmaLM
from model.fp8 import fp8_supported
from training.optim.muon import Muon

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
REPO = Path(__file__).resolve().parent.parent
# The fused MLP (quack) can run here; the tiny preset's tests ask for it (--fused-mlp auto leaves it off for a
# model that narrow, model.kernels.swiglu_mlp.AUTO_MIN_D_MODEL).
FUSED_MLP = (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)
             and importlib.util.find_spec("quack") is not None)
FUSED_MLP_ON = ("--fused-mlp", "on") if FUSED_MLP else ()
# FlashAttention 4: --flash-attention auto runs it on compute capability 9.0 wherever it imports
FLASH_ATTENTION = (torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)
                   and importlib.util.find_spec("flash_attn") is not None)


@pytest.fixture(scope="module", autouse=True)
def shared_quack_cache(tmp_path_factory):
    """One quack cache for the trainer runs here, so the fused MLP's GEMMs are autotuned once, not per run
    (the trainer keeps a QUACK_CACHE_DIR it finds set), and one FlashAttention cache likewise. The
    compile-cache test takes them away again."""
    with pytest.MonkeyPatch.context() as mp:
        for var in ("QUACK_CACHE_DIR", "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR"):
            if not os.environ.get(var):  # one set outside (a warm machine's) is shared as well
                mp.setenv(var, str(tmp_path_factory.mktemp(var.lower())))
        yield


def test_muon_matches_torch_muon_on_cuda():
    torch.manual_seed(0)
    shapes = [(64, 32), (64, 32), (32, 96)]
    ours = [torch.nn.Parameter(torch.randn(s, device="cuda")) for s in shapes]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt_a, opt_b = Muon(ours, lr=0.02), torch.optim.Muon(ref, lr=0.02)
    for _ in range(3):
        for a, b in zip(ours, ref, strict=True):
            g = torch.randn_like(a)
            a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)


def test_bf16_compiled_model_trains_on_cuda():
    cfg = ModelConfig(vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, d_model=128, d_ff=256,
                      head_dim=32, max_seq_len=64)
    model = SigmaLM(cfg).cuda().to(torch.bfloat16)
    fwd = torch.compile(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 512, (8, 65), device="cuda")
    losses = []
    for _ in range(20):
        loss = fwd(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.7, losses


def _train_tiny_on_cuda(tmp_path, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """30 steps of the tiny preset through the real CLI; its stdout and metrics records."""
    r = subprocess.run(
        [sys.executable, str(REPO / "train_sigma.py"), "--model-preset", "tiny", "--steps", "30",
         "--warmup-steps", "5", "--seq-len", "128", "--batch-size", "16", "--vocab-size", "1024",
         "--tokenizer-train-chars", "300000", "--eval-every", "0", "--output-dir", str(tmp_path / "run"),
         "--checkpoint-dir", str(tmp_path / "ck"), *extra],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r, [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_trainer_end_to_end_on_cuda(tmp_path):
    """The real CLI on the GPU: bf16 profile, compile, Muon + bf16 C3O state, and the fused MLP where it runs."""
    r, records = _train_tiny_on_cuda(tmp_path, *FUSED_MLP_ON)
    assert "[sigma] device=cuda" in r.stdout and "[sigma] dtype=bfloat16" in r.stdout
    assert "[sigma] ns_dtype=bfloat16" in r.stdout
    assert f"[sigma] fused_mlp_active={int(FUSED_MLP)}" in r.stdout
    assert f"flash_attention_active={int(FLASH_ATTENTION)}" in r.stdout
    end = records[-1]
    assert end["event"] == "end" and end["heldout_loss_drop"] > 0.3
    steps = [r for r in records if r["event"] == "step"]
    assert all(s["mfu"] is None or 0 < s["mfu"] < 1 for s in steps)


@pytest.mark.parametrize(("flag", "active"), [((), 1), (("--fp8-lm-head", "on"), 1), (("--fp8-lm-head", "off"), 0)],
                         ids=["default", "on", "off"])
def test_trainer_fp8_lm_head_on_cuda(tmp_path, flag, active):
    """The FP8 head through the real CLI: on by default (``auto``) on an FP8 GPU and with ``on``, bf16 with
    ``off`` on any GPU; reported at start-up, and the model learns either way."""
    if active and not fp8_supported(torch.device("cuda")):
        pytest.skip("needs FP8 tensor cores (compute capability 8.9+)")
    r, records = _train_tiny_on_cuda(tmp_path, *flag)
    assert f"[sigma] fp8_lm_head_active={active}" in r.stdout
    (startup,) = [x for x in records if x["event"] == "startup"]
    assert startup["fp8_lm_head_active"] == active
    if active:
        assert startup["kernels"]["linear_ce"] == "triton"
    assert records[-1]["event"] == "end" and records[-1]["heldout_loss_drop"] > 0.3


def test_trainer_bitnet_with_the_fp8_lm_head_on_cuda(tmp_path):
    """BitNet 1.58 (the block linears) and the default FP8 LM head together through the real CLI: both
    reported at start-up, and the model learns."""
    if not fp8_supported(torch.device("cuda")):
        pytest.skip("needs FP8 tensor cores (compute capability 8.9+)")
    r, records = _train_tiny_on_cuda(tmp_path, "--bitnet-1-58", "on")
    assert "[sigma] fp8_lm_head_active=1" in r.stdout and "[sigma] bitnet_1_58_active=1" in r.stdout
    (startup,) = [x for x in records if x["event"] == "startup"]
    assert startup["fp8_lm_head_active"] == 1 and startup["bitnet_1_58_active"] == 1
    end = records[-1]
    print("bitnet + fp8 head: heldout_loss_drop", end.get("heldout_loss_drop"))
    assert end["event"] == "end" and end["heldout_loss_drop"] > 0.3


def _tiny_session(tmp_path, *extra: str):
    from training.cli import parse_args
    from training.config import RunConfig
    from training.metrics import MetricsWriter
    from training.trainer import setup

    ns = parse_args(["--model-preset", "tiny", "--seq-len", "128", "--batch-size", "8", "--vocab-size", "1024",
                     "--tokenizer-train-chars", "200000", "--output-dir", str(tmp_path / "run"),
                     "--checkpoint-dir", str(tmp_path / "ck"), "--resume", "never", *extra])
    cfg = RunConfig.from_args(ns)
    (tmp_path / "run").mkdir(parents=True, exist_ok=True)
    return setup(cfg, tmp_path / "run", MetricsWriter(tmp_path / "run" / "metrics.jsonl"), 0.0)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_train_step_never_syncs_with_the_host(tmp_path, kernels):
    """The hot path (data to device, forward, backward, clip, non-finite guard, Muon + C3O update)
    queues work without one host-device sync: torch raises on any sync in "error" mode."""
    from training.metrics import StageClock
    from training.trainer import train_step

    s = _tiny_session(tmp_path, "--kernels", kernels, *FUSED_MLP_ON)
    assert s.startup["flash_attention_active"] == int(FLASH_ATTENTION)  # its launches are in the hot path too
    clock = StageClock(s.hw.device, enabled=True)
    for _ in range(3):  # compile, autotune and allocator warm-up may sync
        train_step(s, clock, lambda: True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            out = train_step(s, clock, lambda: True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    loss, grad_norm, tokens, ok = out
    assert bool(ok) and torch.isfinite(loss) and tokens == 8 * 128
    s.batches.close()


def test_compile_cache_makes_the_second_start_faster(tmp_path):
    """A second start with a fresh Inductor cache but our persisted artifacts compiles much faster."""
    def start(name: str) -> list[dict]:
        """One start with its own empty Inductor cache; only the checkpoint folder is shared."""
        # quack's and FlashAttention's caches: with the checkpoints
        env = {k: v for k, v in os.environ.items() if k not in ("QUACK_CACHE_DIR", "FLASH_ATTENTION_CUTE_DSL_CACHE_DIR")}
        env["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path / f"inductor_{name}")
        r = subprocess.run(
            [sys.executable, str(REPO / "train_sigma.py"), "--model-preset", "tiny", "--steps", "2",
             "--seq-len", "128", "--batch-size", "8", "--vocab-size", "1024", "--tokenizer-train-chars",
             "200000", "--eval-every", "0", "--log-every", "1", "--output-dir", str(tmp_path / name),
             "--checkpoint-dir", str(tmp_path / "ck"), "--resume", "never", "--save-every", "0", *FUSED_MLP_ON],
            capture_output=True, text=True, timeout=600, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        return [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    cold_records, warm_records = start("cold"), start("warm")
    cold, warm = (next(x for x in r if x["event"] == "startup") for r in (cold_records, warm_records))
    # the restored graphs compute what the compiled ones did: same data and seed, so the same losses and
    # gradient norms (up to the backward's non-deterministic reductions); a stale graph would be far off
    steps = [[(x["loss"], x["grad_norm"]) for x in r if x["event"] == "step"] for r in (cold_records, warm_records)]
    assert len(steps[0]) == len(steps[1]) == 2, steps
    for got, want in zip(steps[1], steps[0], strict=True):
        assert got == pytest.approx(want, rel=2e-2), steps
    assert cold["compile_cache_loaded"] == 0 and warm["compile_cache_loaded"] == 1
    # the model's graphs (quack's autograd.Functions in them too) came from AOTAutograd's cache: none re-traced
    assert warm["compile_aot_cache_hits"] > 0 and warm["compile_aot_cache_bypasses"] == 0, warm
    assert list((tmp_path / "ck" / "compile_cache").glob("*.bin"))
    assert cold["fused_mlp_active"] == warm["fused_mlp_active"] == int(FUSED_MLP)
    assert cold["flash_attention_active"] == warm["flash_attention_active"] == int(FLASH_ATTENTION)
    if FLASH_ATTENTION:  # its compiled kernels are kept with the checkpoints too
        assert any(f.is_file() for f in (tmp_path / "ck" / "compile_cache" / "flash_attention").rglob("*"))
    if FUSED_MLP:  # the fused MLP's tuned configs are kept there too, so the warm start did not re-tune
        from model.kernels import swiglu_mlp

        tuned = list((tmp_path / "ck" / "compile_cache" / "quack").rglob("*.autotune.json"))
        assert tuned
        gpu = swiglu_mlp.gpu_folder_name(torch.device("cuda"))
        if "tiny:1024" in swiglu_mlp.tuned_shapes(gpu):  # this run's shape (8 x 128 tokens) ships here: none tuned
            shipped = list((swiglu_mlp.TUNED_DIR / gpu).glob("*/*.autotune.json"))
            assert len(tuned) == len(shipped), sorted(str(f.relative_to(tmp_path)) for f in tuned)
    cold_compile = cold["time_to_first_step_s"] - cold["startup_init_s"]
    warm_compile = warm["time_to_first_step_s"] - warm["startup_init_s"]
    assert warm_compile < 0.6 * cold_compile, (cold_compile, warm_compile)
