"""BitNet 1.58 quantiser on CUDA: the Triton kernels against the reference at the 124m and 350m shapes
(bf16), inside ``torch.compile(fullgraph=True)``, without host syncs, and a tiny BitNet model training
with them. Skipped without a GPU; run with ``pytest -q tests/test_gpu_bitnet.py``.
"""

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from model.bitnet import int8_activation, ternary_weight
from model.config import ModelConfig
from model.decoder import SigmaLM
from model.kernels import bitnet as kb
from training.optim import build_optimizers

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CASES = kb.bench_cases("124m") + kb.bench_cases("350m")


def case_inputs(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    return case["make_inputs"]("cuda")


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_triton_equals_eager_reference(case: dict) -> None:
    x, w = case_inputs(case)
    x_q, w_q = kb.triton_impl(x, w)
    x_r, w_r = kb.reference(x, w)
    assert x_q.dtype == w_q.dtype == torch.bfloat16
    assert torch.equal(x_q, x_r), f"{(x_q != x_r).sum().item()} of {x_q.numel()} activations differ"
    assert torch.equal(w_q, w_r), f"{(w_q != w_r).sum().item()} of {w_q.numel()} weights differ"
    assert w_q.unique().numel() == 3 and not x_q.isnan().any()

    grad_x, grad_w = torch.randn_like(x), torch.randn_like(w)
    torch.autograd.backward((x_q, w_q), (grad_x, grad_w))
    assert torch.equal(x.grad, grad_x) and torch.equal(w.grad, grad_w)


def bitlinear(quant: Callable) -> Callable:
    """A BitLinear forward with quantiser ``quant``, returning the quantised operands as well."""

    def forward(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x_q, w_q = quant(x, w)
        return x_q, w_q, F.linear(x_q, w_q)

    return forward


@pytest.mark.parametrize("case", CASES[:3], ids=[c["name"] for c in CASES[:3]])
def test_triton_inside_torch_compile(case: dict) -> None:
    """fullgraph=True fails on any graph break; compiled and eager Triton results are the same kernels."""
    x, w = case_inputs(case)
    x_q, w_q, y = torch.compile(bitlinear(kb.triton_impl), fullgraph=True)(x, w)
    x_e, w_e, y_e = bitlinear(kb.triton_impl)(x, w)
    assert torch.equal(x_q, x_e) and torch.equal(w_q, w_e)
    torch.testing.assert_close(y, y_e)
    compiled_grads = torch.autograd.grad(y.float().square().mean(), (x, w))
    eager_grads = torch.autograd.grad(y_e.float().square().mean(), (x, w))
    for compiled, eager in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(compiled, eager)

    # The compiled reference (what --kernels torch runs) may round a division differently (Inductor's
    # fp32 division is not always IEEE): it may differ by a quantisation step in a few places only.
    x_c, w_c, _ = torch.compile(bitlinear(kb.reference), fullgraph=True)(x.detach(), w.detach())
    assert (x_c != x_q).float().mean() < 1e-3 and (w_c != w_q).float().mean() < 1e-3


def test_no_host_sync_in_the_quantiser() -> None:
    x, w = case_inputs(CASES[0])
    kb.triton_impl(x, w)  # compile the kernels first: the first launch may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        x_q, w_q = kb.triton_impl(x, w)
        torch.autograd.backward((x_q, w_q), (torch.ones_like(x_q), torch.ones_like(w_q)))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_nan_never_passes_on_cuda() -> None:
    x = torch.randn(4, 768, device="cuda", dtype=torch.bfloat16)
    x[2, 100] = float("nan")
    x_q = kb.act_quant(x)
    assert x_q[2].isnan().all() and not x_q[[0, 1, 3]].isnan().any()
    assert torch.equal(x_q.isnan(), int8_activation(x).isnan())
    w = torch.randn(64, 768, device="cuda", dtype=torch.bfloat16)
    w[5, 7] = float("inf")  # scale inf, then 0 * inf = NaN: every entry NaN, as in the reference
    assert kb.weight_quant(w).isnan().all() and ternary_weight(w).isnan().all()


def test_tiny_bitnet_model_trains_with_the_triton_quantiser() -> None:
    cfg = ModelConfig(vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, d_model=128, d_ff=256,
                      head_dim=32, max_seq_len=64, bitnet=True)  # fmt: skip
    torch.manual_seed(0)
    model = SigmaLM(cfg).cuda().to(torch.bfloat16).use_kernels(bitnet_quant=kb.triton_impl)
    fwd = torch.compile(model, fullgraph=True)
    pair = build_optimizers(model, lr=3e-3, muon_lr=0.02, weight_decay=0.0, betas=(0.9, 0.95),
                            c3o_state_dtype=torch.bfloat16, c3o_cautious=True, muon_momentum=0.95, ns_steps=5)  # fmt: skip
    tokens = torch.randint(
        0, cfg.vocab_size, (8, 65), device="cuda", generator=torch.Generator("cuda").manual_seed(0)
    )
    losses = []
    for _ in range(20):
        loss = fwd(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        pair.step()
        pair.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < 0.7 * losses[0], losses
