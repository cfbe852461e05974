"""CUDA checks of the fused RMSNorm, QK-norm + RoPE and linear + CE kernels (skipped without a GPU).

Run on the GPU machine with ``pytest -q tests/test_gpu_kernels_fused.py``. Forward and backward
against the references at realistic widths, bf16 bounds measured against an fp64 ground truth, NaN
propagation, no host sync, the memory the fused loss saves, and the model under
``torch.compile(fullgraph=True)`` with the kernels installed.
"""

import copy
import os
from functools import partial

import pytest
import torch
import triton
import triton.language as tl
from e5m2_cases import e5m2_rounding_inputs

from model.config import ModelConfig
from model.decoder import IGNORE_INDEX, SigmaLM, rope_tables
from model.kernels import linear_ce, qk_norm_rope, rmsnorm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1",
                       reason="TRITON_INTERPRET=1 would interpret the kernels instead of compiling them"),
]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 comparisons need true fp32 matmuls; another test may have switched TF32 on."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = previous


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in fp64 (NaN if either holds a NaN)."""
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def assert_fp32_matches(got: tuple, want: tuple) -> None:
    """An fp32 kernel's (output, input gradient, weight gradient) against its reference's."""
    for name, a, b, bound in zip(("y", "dx", "dw"), got, want, (1e-6, 1e-5, 1e-5), strict=True):
        assert rel_err(a, b) < bound, name


# ---------------------------------------------------------------------- RMSNorm

RMS_SHAPES = [(4, 512, 768), (4, 512, 12, 64), (3, 100, 1000)]
RMS_IDS = ["block_124m", "heads_Hd64", "width_not_power_of_2"]


def rms_inputs(shape: tuple[int, ...], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    x = (3.0 * torch.randn(shape, device=CUDA)).to(dtype).requires_grad_()
    weight = (1.0 + 0.1 * torch.randn(shape[-1], device=CUDA)).to(dtype).requires_grad_()
    return x, weight


@pytest.mark.parametrize("shape", RMS_SHAPES, ids=RMS_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rms_norm_matches_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x, weight = rms_inputs(shape, dtype)
    y = rmsnorm.triton_impl(x, weight, 1e-6)
    y_ref = rmsnorm.reference(x, weight, 1e-6)
    dy = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, weight), dy)
    dx_ref, dw_ref = torch.autograd.grad(y_ref, (x, weight), dy)
    assert (y.dtype, dx.dtype, dw.dtype) == (dtype, dtype, dtype)
    if dtype == torch.float32:
        assert_fp32_matches((y, dx, dw), (y_ref, dx_ref, dw_ref))
    else:
        # Same rounding points as the reference: outputs differ only where rsqrt's last fp32 bit
        # flips a bf16 rounding. The backward keeps fp32 where the reference rounds to bf16.
        assert (y != y_ref).float().mean().item() < 1e-2
        assert rel_err(y, y_ref) < 4e-3
        assert rel_err(dx, dx_ref) < 1e-2
        assert rel_err(dw, dw_ref) < 1e-2


def test_rms_norm_under_compile_fullgraph() -> None:
    x, weight = rms_inputs((4, 256, 12, 64), torch.bfloat16)

    def f(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (rmsnorm.triton_impl(x * 2.0, weight, 1e-6).float() ** 2).sum()

    compiled = torch.compile(f, fullgraph=True)
    out, out_eager = compiled(x, weight), f(x, weight)
    grads = torch.autograd.grad(out, (x, weight))
    grads_eager = torch.autograd.grad(out_eager, (x, weight))
    assert rel_err(out, out_eager) < 1e-3
    for grad, grad_eager in zip(grads, grads_eager, strict=True):
        assert rel_err(grad, grad_eager) < 1e-2


def test_rms_norm_nan_row_stays_nan() -> None:
    x, weight = rms_inputs((8, 768), torch.bfloat16)
    with torch.no_grad():
        x[3, 100] = float("nan")
    y = rmsnorm.triton_impl(x, weight, 1e-6)
    assert torch.isnan(y[3]).all()
    assert torch.isfinite(y[torch.arange(8, device=CUDA) != 3]).all()


# ---------------------------------------------------------------------- QK norm + RoPE

QK_SHAPES = [(4, 512, 6, 128), (2, 256, 16, 64), (2, 100, 4, 96)]
QK_IDS = ["q_124m", "Hd64", "half_not_power_of_2"]


def qk_inputs(shape: tuple[int, ...], dtype: torch.dtype) -> tuple:
    torch.manual_seed(0)
    x = (3.0 * torch.randn(shape, device=CUDA)).to(dtype).requires_grad_()
    weight = (1.0 + 0.1 * torch.randn(shape[-1], device=CUDA)).to(dtype).requires_grad_()
    cos, sin = rope_tables(shape[-1], 4096, 1e6, CUDA)
    return x, weight, cos[: shape[1]], sin[: shape[1]]


@pytest.mark.parametrize("shape", QK_SHAPES, ids=QK_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_qk_norm_rope_matches_reference(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """dy laid out (B, heads, T, Hd), as the attention backward hands it over."""
    x, weight, cos, sin = qk_inputs(shape, dtype)
    y = qk_norm_rope.triton_impl(x, weight, cos, sin, 1e-6)
    y_ref = qk_norm_rope.reference(x, weight, cos, sin, 1e-6)
    B, T, N, Hd = shape
    dy = torch.randn(B, N, T, Hd, device=CUDA, dtype=dtype).transpose(1, 2)
    dx, dw = torch.autograd.grad(y, (x, weight), dy)
    dx_ref, dw_ref = torch.autograd.grad(y_ref, (x, weight), dy)
    assert (y.dtype, dx.dtype, dw.dtype) == (dtype, dtype, dtype)
    if dtype == torch.float32:
        assert_fp32_matches((y, dx, dw), (y_ref, dx_ref, dw_ref))
    else:
        # Against the same formula in fp64 from the same inputs: at least as close as the eager reference
        # (the kernel may fuse a RoPE product into its sum, one rounding fewer; its backward stays fp32).
        x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
        y64 = qk_norm_rope.reference(x64, w64, cos.double(), sin.double(), 1e-6)
        dx64, dw64 = torch.autograd.grad(y64, (x64, w64), dy.double())
        for name, got, want, exact in (("y", y, y_ref, y64), ("dx", dx, dx_ref, dx64), ("dw", dw, dw_ref, dw64)):
            assert rel_err(got, exact) <= 1.05 * rel_err(want, exact), name
            assert rel_err(got, exact) < 1e-2, name


def test_qk_norm_rope_under_compile_with_changing_shapes() -> None:
    """fullgraph compile with dynamic shapes: new batch sizes and lengths reuse the graph's kernels and
    still match the eager reference (only head_dim is specialised)."""
    def f(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return (qk_norm_rope.triton_impl(x * 2.0, weight, cos, sin, 1e-6).float() ** 2).sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for shape in [(2, 64, 4, 128), (3, 96, 4, 128), (1, 200, 2, 128)]:
        x, weight, cos, sin = qk_inputs(shape, torch.bfloat16)
        out, out_eager = compiled(x, weight, cos, sin), f(x, weight, cos, sin)
        grads = torch.autograd.grad(out, (x, weight))
        grads_eager = torch.autograd.grad(out_eager, (x, weight))
        assert rel_err(out, out_eager) < 1e-3, shape
        for grad, grad_eager in zip(grads, grads_eager, strict=True):
            assert rel_err(grad, grad_eager) < 1e-2, shape


def test_qk_norm_rope_nan_row_stays_nan() -> None:
    x, weight, cos, sin = qk_inputs((2, 64, 4, 128), torch.bfloat16)
    with torch.no_grad():
        x[1, 5, 2, 70] = float("nan")
    y = qk_norm_rope.triton_impl(x, weight, cos, sin, 1e-6)
    assert torch.isnan(y[1, 5, 2]).all()
    assert torch.isfinite(y).sum().item() == y.numel() - 128


# ---------------------------------------------------------------------- linear + cross-entropy


def ce_inputs(N: int, D: int, V: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    h = torch.randn(N, D, device=CUDA).to(dtype).requires_grad_()
    weight = (0.05 * torch.randn(V, D, device=CUDA)).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (N,), device=CUDA)
    targets[::16] = IGNORE_INDEX
    targets[1000:1100] = IGNORE_INDEX
    return h, weight, targets


def loss_and_grads(fn, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, **kwargs) -> list:
    loss = fn(h, weight, targets, **kwargs)
    return [loss, *torch.autograd.grad(loss, (h, weight))]


@pytest.mark.parametrize("vocab", [32768, 50304], ids=["one_pass_rows", "two_pass_rows"])
@pytest.mark.parametrize("chunk_rows", [None, 1000], ids=["default_chunks", "ragged_chunks"])
def test_linear_ce_fp32_matches_reference(chunk_rows: int | None, vocab: int) -> None:
    """At 32768 the row kernel holds each row in registers; past ``_ONE_PASS_MAX_V`` it reads it twice."""
    h, weight, targets = ce_inputs(8192, 768, vocab, torch.float32)
    ours = loss_and_grads(linear_ce.triton_impl, h, weight, targets, chunk_rows=chunk_rows)
    ref = loss_and_grads(linear_ce.reference, h, weight, targets)
    for name, a, b in zip(("loss", "grad_h", "grad_w"), ours, ref, strict=True):
        assert rel_err(a, b) < 1e-5, name


@pytest.mark.parametrize("chunk_rows", [None, 1000], ids=["default_chunks", "ragged_chunks"])
def test_linear_ce_bf16_as_accurate_as_reference(chunk_rows: int | None) -> None:
    """Both bf16 paths against fp64 maths on the same bf16 inputs: ours may not be the less accurate."""
    h, weight, targets = ce_inputs(8192, 768, 32768, torch.bfloat16)
    ours = loss_and_grads(linear_ce.triton_impl, h, weight, targets, chunk_rows=chunk_rows)
    ref = loss_and_grads(linear_ce.reference, h, weight, targets)
    h64 = h.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    truth = loss_and_grads(linear_ce.reference, h64, w64, targets)
    assert (ours[1].dtype, ours[2].dtype) == (torch.bfloat16, torch.bfloat16)
    assert rel_err(ours[0], ref[0]) < 1e-3
    for name, a, b, t in zip(("grad_h", "grad_w"), ours[1:], ref[1:], truth[1:], strict=True):
        assert rel_err(a, t) < 1e-2, name
        assert rel_err(a, t) <= 1.5 * rel_err(b, t), name


@pytest.mark.parametrize("chunk_rows", [None, 1000], ids=["default_chunks", "ragged_chunks"])
def test_linear_ce_fp8_within_its_error_bounds(chunk_rows: int | None) -> None:
    """The FP8 head on bf16 inputs against fp64 maths: the loss within 0.5%, grad_h and grad_W within 5%
    (e4m3 logits, e5m2 logit gradient), and its exact evaluation (no grad) the bf16 kernel's loss."""
    h, weight, targets = ce_inputs(8192, 768, 32768, torch.bfloat16)
    ours = loss_and_grads(linear_ce.triton_impl_fp8, h, weight, targets, chunk_rows=chunk_rows)
    bf16 = loss_and_grads(linear_ce.triton_impl, h, weight, targets, chunk_rows=chunk_rows)
    h64 = h.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    truth = loss_and_grads(linear_ce.reference, h64, w64, targets)
    errors = {name: (rel_err(a, t), rel_err(b, t))
              for name, a, b, t in zip(("loss", "grad_h", "grad_w"), ours, bf16, truth, strict=True)}
    print("fp8 vs bf16 relative errors against fp64:", errors)
    assert (ours[1].dtype, ours[2].dtype) == (torch.bfloat16, torch.bfloat16)
    assert errors["loss"][0] < 5e-3 and errors["grad_h"][0] < 5e-2 and errors["grad_w"][0] < 5e-2, errors
    assert errors["grad_h"][0] > errors["grad_h"][1], errors  # it is the FP8 path
    with torch.no_grad():
        assert torch.equal(linear_ce.triton_impl_fp8(h, weight, targets, chunk_rows=chunk_rows),
                           linear_ce.triton_impl(h, weight, targets, chunk_rows=chunk_rows))


@pytest.mark.parametrize("N, chunk_rows", [(8192, None), (8192, 1024), (8192 + 16 * 37, 1024)],
                         ids=["one_group", "groups", "short_last_group"])
def test_linear_ce_fp8_grad_w_within_its_error_bounds(N: int, chunk_rows: int | None, monkeypatch) -> None:
    """All three matmuls in FP8 (``triton_impl_fp8_grad_w``) on bf16 inputs against fp64 maths: the loss and
    grad_h are ``triton_impl_fp8``'s to rounding, grad_W within 5%; and against ``reference_fp8``'s arithmetic
    (fp32 matmuls of the same fp8 values) to accumulation order. Groups of 2 chunks in the last two cases."""
    monkeypatch.setattr(linear_ce, "_GRAD_W_GROUP_ELEMENTS", 32768 * 2048)
    h, weight, targets = ce_inputs(N, 768, 32768, torch.bfloat16)
    ours = loss_and_grads(linear_ce.triton_impl_fp8_grad_w, h, weight, targets, chunk_rows=chunk_rows)
    fp8 = loss_and_grads(linear_ce.triton_impl_fp8, h, weight, targets, chunk_rows=chunk_rows)
    emulated = loss_and_grads(partial(linear_ce.reference_fp8, fp8_grad_w=True), h, weight, targets)
    h64 = h.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    truth = loss_and_grads(linear_ce.reference, h64, w64, targets)
    errors = {"grad_w": (rel_err(ours[2], truth[2]), rel_err(fp8[2], truth[2])),
              "grad_w_vs_emulated": rel_err(ours[2], emulated[2]),
              "loss_vs_fp8": rel_err(ours[0], fp8[0]), "grad_h_vs_fp8": rel_err(ours[1], fp8[1])}
    print("fp8 grad_W vs bf16 grad_W, relative errors against fp64:", errors)
    # The row kernel runs two passes here (keep_logits) and one in triton_impl_fp8: the same maths, summed in
    # another order, so a gradient value can round to the neighbouring e5m2 value.
    assert errors["loss_vs_fp8"] < 1e-6 and errors["grad_h_vs_fp8"] < 1e-3, errors
    assert ours[2].dtype == torch.bfloat16
    assert errors["grad_w"][0] < 5e-2 and errors["grad_w_vs_emulated"] < 1e-2, errors
    assert errors["grad_w"][0] > errors["grad_w"][1], errors  # it is the FP8 path


def test_transpose_fp8_matches_torch() -> None:
    """The row kernel's e5m2 chunk into a column slice of the (V, rows) buffer, as the FP8 grad_W fills it."""
    src = torch.randint(0, 256, (4096, 32768), dtype=torch.uint8, device=CUDA).view(torch.float8_e5m2)
    dst = torch.zeros((32768, 3 * 4096), dtype=torch.uint8, device=CUDA).view(torch.float8_e5m2)
    linear_ce.transpose_fp8(src, dst[:, 4096:8192])
    want = torch.zeros((32768, 3 * 4096), dtype=torch.uint8, device=CUDA)
    want[:, 4096:8192] = src.view(torch.uint8).t()
    assert torch.equal(dst.view(torch.uint8), want)


@triton.jit
def _grad8_bits_of(x_ptr, out_ptr, N: tl.constexpr, CVT: tl.constexpr):
    cols = tl.arange(0, N)
    tl.store(out_ptr + cols, linear_ce._grad8_bits(tl.load(x_ptr + cols), CVT))


@pytest.mark.parametrize("cvt", [True, False], ids=["cvt_instruction", "integer_arithmetic"])
def test_e5m2_conversions_round_as_torch_casts_and_keep_nan(cvt: bool) -> None:
    """Both e5m2 conversions the row kernel can use, compiled for this GPU, on the inputs of ``e5m2_cases``:
    torch's cast bit for bit on the finite ones, NaN on the three NaNs."""
    x, n, n_nan = e5m2_rounding_inputs(linear_ce.GRAD8_SCALE)
    out = torch.empty(len(x), dtype=torch.uint8, device=CUDA)
    _grad8_bits_of[(1,)](x.to(CUDA), out, N=len(x), CVT=cvt)
    out = out.cpu()
    assert torch.equal(out[:n], x[:n].to(torch.float8_e5m2).view(torch.uint8))
    assert torch.isnan(out[n: n + n_nan].view(torch.float8_e5m2).float()).all()


@pytest.mark.parametrize("vocab", [32768, 50304, 400, 16], ids=["one_pass_rows", "two_pass_rows", "small", "tiny"])
def test_rows_kernel_fp8_copy_is_the_rounded_gradient(vocab: int) -> None:
    """On the GPU (the conversion instruction): the e5m2 copy is torch's cast of the rounded gradient times
    n_valid * GRAD8_SCALE, bit for bit; all zero on an ignored row; all NaN on a row holding a NaN. The
    small vocabularies give a thread one value (400: 512 columns over 16 warps) or a replicated layout
    (16), fewer than the four the conversion takes a call."""
    generator = torch.Generator(device=CUDA).manual_seed(5)
    logits = (4 * torch.randn(64, vocab, generator=generator, device=CUDA)).bfloat16()
    logits[7, 11] = float("nan")
    targets = torch.randint(0, vocab, (64,), generator=generator, device=CUDA)
    targets[4] = IGNORE_INDEX
    n_valid = (targets != IGNORE_INDEX).sum()
    work, loss = logits.clone(), torch.empty(64, device=CUDA)
    grad8 = torch.empty(64, vocab, dtype=torch.float8_e5m2, device=CUDA)
    linear_ce.cross_entropy_rows(work, targets, loss, n_valid, write_grad=True, grad8_CV=grad8)
    want = (work.float() * (n_valid * linear_ce.GRAD8_SCALE)).to(torch.float8_e5m2)
    rows = [r for r in range(64) if r != 7]
    assert torch.equal(grad8[rows].view(torch.uint8), want[rows].view(torch.uint8))
    assert torch.isnan(grad8[7].float()).all() and (grad8[4].float() == 0).all()


@pytest.mark.parametrize("fn", [linear_ce.triton_impl, linear_ce.triton_impl_fp8], ids=["bf16", "fp8"])
def test_linear_ce_nan_in_h_gives_nan_loss(fn) -> None:
    h, weight, targets = ce_inputs(4096, 256, 32768, torch.bfloat16)
    with torch.no_grad():
        h[2050, 7] = float("nan")
    targets[2050] = 3
    loss = fn(h, weight, targets, chunk_rows=1024)
    assert torch.isnan(loss)
    assert torch.isnan(torch.autograd.grad(loss, h)[0]).any()


def test_linear_ce_never_materialises_the_logits() -> None:
    """Forward + backward at N = 16384, V = 32768 stays far below the 2 GiB of fp32 logits."""
    N, V = 16384, 32768
    h, weight, targets = ce_inputs(N, 768, V, torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loss_and_grads(linear_ce.triton_impl, h, weight, targets)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < N * V * 4 // 2, f"{extra / 2**20:.0f} MiB above the inputs"


def test_kernels_do_not_sync_with_the_host() -> None:
    h, weight, targets = ce_inputs(4096, 256, 32768, torch.bfloat16)
    x, norm_weight = rms_inputs((4, 256, 768), torch.bfloat16)
    q, q_weight, cos, sin = qk_inputs((4, 256, 6, 128), torch.bfloat16)

    def step() -> None:
        loss_and_grads(linear_ce.triton_impl, h, weight, targets, chunk_rows=1024)
        loss_and_grads(linear_ce.triton_impl_fp8, h, weight, targets, chunk_rows=1024)
        y = rmsnorm.triton_impl(x, norm_weight, 1e-6)
        torch.autograd.grad(y, (x, norm_weight), torch.ones_like(y))
        y = qk_norm_rope.triton_impl(q, q_weight, cos, sin, 1e-6)
        torch.autograd.grad(y, (q, q_weight), torch.ones_like(y))

    step()  # compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---------------------------------------------------------------------- the model under torch.compile


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_compiled_model_with_kernels_matches_reference_model(dtype: torch.dtype) -> None:
    """SigmaLM + the kernels under compile(fullgraph=True): loss and gradients as the compiled reference."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=1024, n_layer=2, n_head=4, n_kv_head=2, d_model=256, d_ff=512, head_dim=64,
                      max_seq_len=256)
    ref_model = SigmaLM(cfg).to(CUDA, dtype)
    model = copy.deepcopy(ref_model).use_kernels(rms_norm=rmsnorm.triton_impl, linear_ce=linear_ce.triton_impl,
                                                 qk_norm_rope=qk_norm_rope.triton_impl)
    compiled, compiled_ref = torch.compile(model, fullgraph=True), torch.compile(ref_model, fullgraph=True)
    idx = torch.randint(0, 1024, (4, 256), device=CUDA)
    targets = torch.randint(0, 1024, (4, 256), device=CUDA)
    targets[:, :32] = IGNORE_INDEX
    loss, loss_ref = compiled(idx, targets), compiled_ref(idx, targets)
    loss.backward()
    loss_ref.backward()
    tol = {torch.float32: 1e-4, torch.bfloat16: 5e-2}[dtype]
    assert abs(loss.item() - loss_ref.item()) < tol * loss_ref.item()
    for (name, param), param_ref in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        assert rel_err(param.grad, param_ref.grad) < tol, name
    with torch.no_grad():  # evaluation: the fused loss skips its gradient work
        assert abs(compiled(idx, targets).item() - loss.item()) < tol * loss.item()


def test_compiled_model_with_fp8_head_close_to_reference_model() -> None:
    """The FP8 head under compile(fullgraph=True), its quantisation traced with the model: loss within 1%
    and every gradient within 10% of the compiled bf16 reference's."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=1024, n_layer=2, n_head=4, n_kv_head=2, d_model=256, d_ff=512, head_dim=64,
                      max_seq_len=256)
    ref_model = SigmaLM(cfg).to(CUDA, torch.bfloat16)
    model = copy.deepcopy(ref_model).use_kernels(linear_ce=linear_ce.triton_impl_fp8)
    compiled, compiled_ref = torch.compile(model, fullgraph=True), torch.compile(ref_model, fullgraph=True)
    idx = torch.randint(0, 1024, (4, 256), device=CUDA)
    targets = torch.randint(0, 1024, (4, 256), device=CUDA)
    loss, loss_ref = compiled(idx, targets), compiled_ref(idx, targets)
    loss.backward()
    loss_ref.backward()
    assert abs(loss.item() - loss_ref.item()) < 1e-2 * loss_ref.item()
    for (name, param), param_ref in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        assert rel_err(param.grad, param_ref.grad) < 0.1, name
