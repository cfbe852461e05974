"""The fused SwiGLU MLP (quack's GEMMs, ``--fused-mlp``) on a Hopper GPU against the reference.

Skipped without a GPU of compute capability 9.0+ or without quack (the lock installs it on Linux x86-64).
quack's default GEMM configs are used here (``tuned=False``): autotuning picks among configs of the same
kernels, and the trainer tests (tests/test_gpu.py) run the tuned path.
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
from model.decoder import SigmaLM, swiglu_mlp_reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                       reason="needs a GPU of compute capability 9.0+"),
    pytest.mark.skipif(importlib.util.find_spec("quack") is None, reason="needs quack-kernels"),
]


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def mlp_inputs(shape_x: tuple[int, ...], d_ff: int, seed: int = 0) -> list[torch.Tensor]:
    """x and (w_gate, w_up, w_down) in fp32, scaled like an initialised block."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    d = shape_x[-1]
    x = torch.randn(*shape_x, device="cuda", generator=gen)
    return [x] + [torch.randn(o, i, device="cuda", generator=gen) / i ** 0.5 for o, i in ((d_ff, d), (d_ff, d), (d, d_ff))]


def forward_backward(fn, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """The output and the gradients of x and the three weights, for a fixed random upstream gradient."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    cotangent = torch.randn(out.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    out.backward(cotangent.to(out.dtype))
    return [out.detach(), *(t.grad for t in leaves)]


def test_startup_check_passes_here() -> None:
    from model.kernels.swiglu_mlp import startup_check

    assert startup_check(torch.device("cuda")) is None
    # at a training shape (the tiny preset, 8 x 128 tokens) with its tuned configs, as the trainer runs it; the
    # quack cache in use is seeded with the shipped configs first, as the trainer does (tunes where none ship)
    from model.kernels.swiglu_mlp import use_cache_dir

    with mock.patch.dict(os.environ):  # use_cache_dir sets quack's environment: only for this check
        use_cache_dir(None, torch.device("cuda"))
        assert startup_check(torch.device("cuda"), shape=(8, 128, 128, 384)) is None


@pytest.mark.parametrize("shape_x, d_ff", [((4096, 768), 2048), ((2, 1024, 1024), 2816)], ids=["124m", "350m_3d"])
def test_quack_mlp_as_accurate_as_the_bf16_reference(shape_x, d_ff) -> None:
    """Output and all four gradients: quack's bf16 GEMMs are no further from the fp32 result than the bf16
    reference is (both round the same products to bf16; the bound leaves 25% for a different order)."""
    from model.kernels.swiglu_mlp import quack_mlp

    fp32 = mlp_inputs(shape_x, d_ff)
    want = forward_backward(swiglu_mlp_reference, fp32)
    bf16 = [t.to(torch.bfloat16) for t in fp32]
    ours = forward_backward(quack_mlp(tuned=False), bf16)
    ref = forward_backward(swiglu_mlp_reference, bf16)
    for name, o, r, w in zip(("out", "dx", "dW_gate", "dW_up", "dW_down"), ours, ref, want, strict=True):
        assert o.shape == w.shape and o.dtype == torch.bfloat16, name
        err, ref_err = rel_error(o, w), rel_error(r, w)
        assert err <= 1.25 * ref_err + 1e-3, (name, err, ref_err)


def test_quack_mlp_keeps_a_nan_row_nan() -> None:
    from model.kernels.swiglu_mlp import quack_mlp

    x, *ws = [t.to(torch.bfloat16) for t in mlp_inputs((256, 128), 256)]
    x[3, 5] = float("nan")
    out = quack_mlp(tuned=False)(x, *ws)
    assert torch.isnan(out[3]).all() and torch.isfinite(out[torch.arange(256, device="cuda") != 3]).all()


def test_auto_turns_it_on_for_compute_capability_9_0_and_124m_widths() -> None:
    cfg = dataclasses.replace(from_preset("124m", vocab_size=256, max_seq_len=64), n_layer=1)
    model = SigmaLM(cfg).cuda().to(torch.bfloat16)
    on, note = kernels.fused_mlp_wanted("auto", model)
    assert note is None and on == (torch.cuda.get_device_capability() == (9, 0))
    assert kernels.fused_mlp_wanted("on", model) == (True, None)
    tiny = SigmaLM(from_preset("tiny", vocab_size=256, max_seq_len=64)).cuda().to(torch.bfloat16)
    assert kernels.fused_mlp_wanted("auto", tiny) == (False, None)  # too narrow to pay for its tuning
    assert kernels.fused_mlp_wanted("on", tiny) == (True, None)
    with pytest.raises(RuntimeError, match="weights are torch.float32"):
        kernels.fused_mlp_wanted("on", SigmaLM(cfg).cuda())
    bitnet = SigmaLM(dataclasses.replace(cfg, bitnet=True)).cuda().to(torch.bfloat16)
    assert kernels.fused_mlp_wanted("auto", bitnet) == (False, None)
    with pytest.raises(RuntimeError, match="BitNet"):
        kernels.fused_mlp_wanted("on", bitnet)


def test_compiled_model_with_the_fused_mlp_matches_the_reference_model() -> None:
    """The tiny model in bf16 under torch.compile, fused MLPs against the reference ones from the same
    weights: the loss and every gradient agree to bf16 accuracy, and evaluation (no grad) agrees too."""
    from model.kernels.swiglu_mlp import quack_mlp

    cfg = from_preset("tiny", vocab_size=512, max_seq_len=128)
    torch.manual_seed(0)
    ref = SigmaLM(cfg).cuda().to(torch.bfloat16)
    fused = SigmaLM(cfg).cuda().to(torch.bfloat16)
    fused.load_state_dict(ref.state_dict())
    fused.use_kernels(swiglu_mlp=quack_mlp(tuned=False))
    tokens = torch.randint(0, 512, (8, 129), device="cuda")
    x, y = tokens[:, :-1], tokens[:, 1:]
    losses = []
    for model in (ref, fused):
        loss = torch.compile(model)(x, y)
        loss.backward()
        losses.append(loss.detach().float())
    assert abs(losses[0] - losses[1]) < 1e-2 * losses[0]
    for (name, p), q in zip(ref.named_parameters(), fused.parameters(), strict=True):
        assert rel_error(q.grad, p.grad) < 3e-2, name
    with torch.no_grad():
        torch.testing.assert_close(fused(x, y), ref(x, y))  # the reference path: same kernels exactly
