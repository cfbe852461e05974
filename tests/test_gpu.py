"""CUDA checks: skipped without a GPU (run them on the device machine with `pytest -m gpu`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.config import ModelConfig
from model.decoder import SigmaLM
from training.optim.muon import Muon

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
REPO = Path(__file__).resolve().parent.parent


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


def test_trainer_end_to_end_on_cuda(tmp_path):
    """The real CLI on the GPU: bf16 profile, compile, Muon + bf16 C3O state."""
    r = subprocess.run(
        [sys.executable, str(REPO / "train_sigma.py"), "--model-preset", "tiny", "--steps", "30",
         "--warmup-steps", "5", "--seq-len", "128", "--batch-size", "16", "--vocab-size", "1024",
         "--tokenizer-train-chars", "300000", "--eval-every", "0", "--output-dir", str(tmp_path / "run"),
         "--checkpoint-dir", str(tmp_path / "ck")],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[sigma] device=cuda" in r.stdout and "[sigma] dtype=bfloat16" in r.stdout
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    end = records[-1]
    assert end["event"] == "end" and end["heldout_loss_drop"] > 0.3
    steps = [r for r in records if r["event"] == "step"]
    assert all(s["mfu"] is None or 0 < s["mfu"] < 1 for s in steps)
