"""FlashAttention 4 (``--flash-attention``, model/kernels/flash_attention.py) on a Hopper GPU against the reference.

Skipped without a GPU of compute capability 9.0+ or without flash-attn-4 (the lock installs it on Linux x86-64).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from unittest import mock

import pytest
import torch

from model import kernels
from model.config import from_preset
from model.decoder import SigmaLM, causal_attention_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                       reason="needs a GPU of compute capability 9.0+"),
    pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn-4"),
]


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def forward_backward(fn, q, k, v, seed: int = 1) -> list[torch.Tensor]:
    """The output and dq, dk, dv for a fixed random upstream gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    out = fn(*leaves)
    cotangent = torch.randn(out.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(seed))
    out.backward(cotangent.to(out.dtype))
    return [out.detach(), *(t.grad for t in leaves)]


# (B, T, H, K, Hd): the 124m and 350m presets' heads (the latter grouped), a length that is not a multiple of the
# 128-row tiles, and narrow heads as in the tiny preset
SHAPES = [(2, 2048, 6, 6, 128), (2, 1024, 8, 4, 128), (3, 1000, 4, 2, 64), (4, 128, 4, 2, 32)]


@pytest.mark.parametrize("shape", SHAPES, ids=["124m", "350m_gqa", "ragged_len", "tiny"])
def test_fa4_as_accurate_as_the_bf16_reference(shape) -> None:
    """Output and all three gradients: FlashAttention's bf16 kernels are no further from the fp32 result than
    SDPA's bf16 kernels are (the bound leaves 25% for a different order of the sums), and NaN never passes."""
    from model.kernels.flash_attention import _fa4_forward

    B, T, H, K, Hd = shape
    gen = torch.Generator(device="cuda").manual_seed(0)
    fp32 = [torch.randn(B, T, n, Hd, device="cuda", generator=gen) for n in (H, K, K)]
    want = forward_backward(causal_attention_reference, *fp32)
    bf16 = [t.to(torch.bfloat16) for t in fp32]
    ours = forward_backward(lambda q, k, v: _fa4_forward(q, k, v)[0], *bf16)
    ref = forward_backward(causal_attention_reference, *bf16)
    for name, o, r, w in zip(("out", "dq", "dk", "dv"), ours, ref, want, strict=True):
        assert o.shape == w.shape and o.dtype == torch.bfloat16, name
        err, ref_err = rel_error(o, w), rel_error(r, w)
        assert err <= 1.25 * ref_err + 1e-3, (name, err, ref_err)


def test_fa4_keeps_a_nan_where_it_reaches() -> None:
    """A NaN key at position 5 of K/V head 1 reaches every query from 5 on (causal) of the query heads that share
    it, 2 and 3 (as SDPA's enable_gqa groups them), and no other output."""
    from model.kernels.flash_attention import _fa4_forward

    q, k, v = (torch.randn(1, 256, n, 64, device="cuda", dtype=torch.bfloat16) for n in (4, 2, 2))
    k[0, 5, 1] = float("nan")
    nan = torch.isnan(_fa4_forward(q, k, v)[0][0]).any(-1)  # (T, H): rows with a NaN
    want = torch.zeros_like(nan)
    want[5:, 2:] = True
    assert torch.equal(nan, want), nan.sum(0)


def test_the_op_passes_torch_library_opcheck() -> None:
    """Schema, fake tensors against the real kernels' outputs, the autograd registration, and AOT dispatch."""
    from model.kernels.flash_attention import _fa4_forward

    q, k, v = (torch.randn(2, 256, n, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for n in (4, 2, 2))
    torch.library.opcheck(_fa4_forward, (q, k, v))


def test_startup_check_passes_here() -> None:
    from model.kernels.flash_attention import startup_check, use_cache_dir

    with mock.patch.dict(os.environ):  # use_cache_dir sets FlashAttention's environment: only for this check
        use_cache_dir(None, torch.device("cuda"))
        assert startup_check(torch.device("cuda"), (512, 6, 6, 128)) is None


def test_auto_turns_it_on_for_compute_capability_9_0() -> None:
    cfg = dataclasses.replace(from_preset("124m", vocab_size=256, max_seq_len=64), n_layer=1)
    model = SigmaLM(cfg).cuda().to(torch.bfloat16)
    on, note = kernels.flash_attention_wanted("auto", model, seq_len=256)
    assert note is None and on == (torch.cuda.get_device_capability() == (9, 0))
    assert kernels.flash_attention_wanted("on", model, seq_len=256) == (True, None)
    with pytest.raises(RuntimeError, match="weights are torch.float32"):
        kernels.flash_attention_wanted("on", SigmaLM(cfg).cuda())


def test_compiled_model_with_fa4_matches_the_reference_model() -> None:
    """The tiny model in bf16 under torch.compile(fullgraph=True), FlashAttention against SDPA from the same
    weights: the loss and every gradient agree to bf16 accuracy, and evaluation (no grad, SDPA) agrees exactly."""
    from model.kernels.flash_attention import fa4_attention

    cfg = from_preset("tiny", vocab_size=512, max_seq_len=256)
    torch.manual_seed(0)
    ref = SigmaLM(cfg).cuda().to(torch.bfloat16)
    fast = SigmaLM(cfg).cuda().to(torch.bfloat16)
    fast.load_state_dict(ref.state_dict())
    fast.use_kernels(attention=fa4_attention)
    tokens = torch.randint(0, 512, (8, 257), device="cuda")
    x, y = tokens[:, :-1], tokens[:, 1:]
    losses = []
    for model in (ref, fast):
        loss = torch.compile(model, fullgraph=True)(x, y)
        loss.backward()
        losses.append(loss.detach().float())
    assert abs(losses[0] - losses[1]) < 1e-2 * losses[0]
    for (name, p), q in zip(ref.named_parameters(), fast.parameters(), strict=True):
        assert rel_error(q.grad, p.grad) < 3e-2, name
    with torch.no_grad():
        torch.testing.assert_close(fast(x, y), ref(x, y))
