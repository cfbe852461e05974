"""CPU tests of the fused RMSNorm, QK-norm + RoPE and linear + CE Triton kernels (``TRITON_INTERPRET=1``).

Tiny shapes: the interpreter runs every program in numpy. Its fp32 -> bf16 casts truncate instead of
rounding to nearest, so bf16 results here are only checked loosely; tests/test_gpu_kernels_fused.py
holds the tight bf16 bounds on CUDA.
"""

import copy
import os
import re
from functools import partial

import pytest
import torch
from e5m2_cases import e5m2_rounding_inputs
from interpret import use_triton_interpreter
from sm90 import build_for_h100

if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("interpreter tests: on a CUDA machine tests/test_gpu_kernels_fused.py runs the kernels "
                "(set TRITON_INTERPRET=1 to run these anyway)", allow_module_level=True)
use_triton_interpreter()  # before any kernel module (or triton itself) is imported

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from model.config import PRESETS, ModelConfig  # noqa: E402
from model.decoder import IGNORE_INDEX, SigmaLM, rope_tables  # noqa: E402
from model.fp8 import E5M2  # noqa: E402
from model.kernels import linear_ce, qk_norm_rope, rmsnorm  # noqa: E402


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in fp64 (NaN if either holds a NaN)."""
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


# ---------------------------------------------------------------------- RMSNorm


@pytest.mark.parametrize(
    "shape",
    [(2, 5, 48), (2, 3, 4, 16), (3, 100, 16), (7, 130)],
    ids=["block_BTD", "heads_BTHHd", "several_backward_programs", "width_not_power_of_2"],
)
def test_rms_norm_fp32_matches_reference(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    weight = (1.0 + 0.1 * torch.randn(shape[-1])).requires_grad_()
    y = rmsnorm.triton_impl(x, weight, 1e-6)
    y_ref = rmsnorm.reference(x, weight, 1e-6)
    dy = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, weight), dy)
    dx_ref, dw_ref = torch.autograd.grad(y_ref, (x, weight), dy)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    assert rel_err(y, y_ref) < 1e-6
    assert rel_err(dx, dx_ref) < 1e-6
    assert rel_err(dw, dw_ref) < 1e-6


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32])
def test_rms_norm_bf16_input_close_to_reference(weight_dtype: torch.dtype) -> None:
    """bf16 activations with a bf16 weight (the GPU profile) or an fp32 one (output promoted to fp32)."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 64, dtype=torch.bfloat16, requires_grad=True)
    weight = (1.0 + 0.1 * torch.randn(64)).to(weight_dtype).requires_grad_()
    y = rmsnorm.triton_impl(x, weight, 1e-6)
    y_ref = rmsnorm.reference(x, weight, 1e-6)
    dy = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, weight), dy)
    dx_ref, dw_ref = torch.autograd.grad(y_ref, (x, weight), dy)
    assert (y.dtype, dx.dtype, dw.dtype) == (y_ref.dtype, torch.bfloat16, weight_dtype)
    # Interpreter truncation costs up to one bf16 ulp (2**-8 relative) per rounding.
    assert rel_err(y, y_ref) < 2e-2
    assert rel_err(dx, dx_ref) < 2e-2
    assert rel_err(dw, dw_ref) < 2e-2


def test_rms_norm_nan_row_stays_nan() -> None:
    x = torch.randn(4, 32)
    x[1, 3] = float("nan")
    y = rmsnorm.triton_impl(x, torch.ones(32), 1e-6)
    assert torch.isnan(y[1]).all()
    assert torch.isfinite(y[[0, 2, 3]]).all()


def test_rms_norm_rejects_mismatched_weight() -> None:
    with pytest.raises(ValueError, match="does not match rows of width 32"):
        rmsnorm.triton_impl(torch.randn(2, 32), torch.ones(16), 1e-6)


# ---------------------------------------------------------------------- QK norm + RoPE


def qk_inputs(B: int, T: int, N: int, Hd: int, dtype: torch.dtype = torch.float32) -> tuple:
    """Queries or keys, a QK-norm weight, and RoPE tables cut from longer ones (as the model's are)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, N, Hd, generator=generator).to(dtype).requires_grad_()
    weight = (1.0 + 0.1 * torch.randn(Hd, generator=generator)).to(dtype).requires_grad_()
    cos, sin = rope_tables(Hd, T + 5, 1e4)
    return x, weight, cos[:T], sin[:T]


def qk_outputs_and_grads(fn, x, weight, cos, sin, dy) -> tuple:
    y = fn(x, weight, cos, sin, 1e-6)
    return (y, *torch.autograd.grad(y, (x, weight), dy))


@pytest.mark.parametrize("dy_layout", ["contiguous", "heads_first"])
@pytest.mark.parametrize(
    "shape", [(2, 5, 3, 16), (2, 7, 2, 24), (1, 30, 4, 8)],
    ids=["BTNHd", "half_not_power_of_2", "several_backward_programs"],
)
def test_qk_norm_rope_fp32_matches_reference(shape, dy_layout: str, monkeypatch) -> None:
    """dy "heads_first" is laid out (B, N, T, Hd), as the attention backward hands it over."""
    monkeypatch.setattr(qk_norm_rope, "_TILE_ELEMENTS", 16)  # 4-row tiles: several tiles and programs
    monkeypatch.setattr(qk_norm_rope, "_BWD_ROWS_PER_PROGRAM", 8)
    x, weight, cos, sin = qk_inputs(*shape)
    B, T, N, Hd = shape
    dy = torch.randn(shape) if dy_layout == "contiguous" else torch.randn(B, N, T, Hd).transpose(1, 2)
    got = qk_outputs_and_grads(qk_norm_rope.triton_impl, x, weight, cos, sin, dy)
    want = qk_outputs_and_grads(qk_norm_rope.reference, x, weight, cos, sin, dy)
    assert got[0].shape == want[0].shape and got[0].dtype == want[0].dtype
    for name, a, b in zip(("y", "dx", "dweight"), got, want, strict=True):
        assert rel_err(a, b) < 1e-6, name


def test_qk_norm_rope_bf16_close_to_reference() -> None:
    x, weight, cos, sin = qk_inputs(2, 6, 2, 32, torch.bfloat16)
    dy = torch.randn(x.shape, dtype=torch.bfloat16)
    got = qk_outputs_and_grads(qk_norm_rope.triton_impl, x, weight, cos, sin, dy)
    want = qk_outputs_and_grads(qk_norm_rope.reference, x, weight, cos, sin, dy)
    assert [t.dtype for t in got] == [torch.bfloat16] * 3
    # Interpreter truncation costs up to one bf16 ulp (2**-8 relative) per rounding.
    for name, a, b in zip(("y", "dx", "dweight"), got, want, strict=True):
        assert rel_err(a, b) < 2e-2, name


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy meeting the NaN on purpose
def test_qk_norm_rope_nan_row_stays_nan() -> None:
    x, weight, cos, sin = qk_inputs(1, 4, 2, 8)
    with torch.no_grad():
        x[0, 1, 1, 3] = float("nan")
    y = qk_norm_rope.triton_impl(x, weight, cos, sin, 1e-6)
    assert torch.isnan(y[0, 1, 1]).all()
    assert torch.isfinite(y[0, 1, 0]).all() and torch.isfinite(y[0, [0, 2, 3]]).all()


def test_qk_norm_rope_rejects_bad_shapes() -> None:
    x, weight, cos, sin = qk_inputs(1, 4, 2, 8)
    with pytest.raises(ValueError, match="even head_dim"):
        qk_norm_rope.triton_impl(x[..., :7], weight[:7], cos[:, :7], sin[:, :7], 1e-6)
    with pytest.raises(ValueError, match="does not match head_dim 8"):
        qk_norm_rope.triton_impl(x, weight[:4], cos, sin, 1e-6)
    with pytest.raises(ValueError, match="RoPE tables"):
        qk_norm_rope.triton_impl(x, weight, cos[:3], sin[:3], 1e-6)
    with pytest.raises(ValueError, match="\\(B, T, heads, head_dim\\)"):
        qk_norm_rope.triton_impl(x[0], weight, cos, sin, 1e-6)


QK_SM90_COMPILE = """
import json
from model.kernels import qk_norm_rope as qk
from tests.sm90 import ptx_and_ptxas

fwd_tile, bwd_tile = qk._tile(128, qk._FWD_PER_THREAD), qk._tile(128, qk._BWD_PER_THREAD)  # presets' head_dim
tiles = max(1, qk._BWD_ROWS_PER_PROGRAM // bwd_tile[0])
# The pointers (and their dtypes), then the strides; both kernels also take n_rows, T, N, HALF and eps.
kernels = {
    "fwd": (qk._qk_norm_rope_fwd_kernel, dict(x_ptr="*bf16", w_ptr="*bf16", cos_ptr="*fp32", sin_ptr="*fp32",
                                               y_ptr="*bf16"), {},
            dict(BLOCK_M=fwd_tile[0], BLOCK_H=fwd_tile[1]), fwd_tile[2]),
    "bwd": (qk._qk_norm_rope_bwd_kernel, dict(dy_ptr="*bf16", x_ptr="*bf16", w_ptr="*bf16", cos_ptr="*fp32",
                                               sin_ptr="*fp32", dx_ptr="*bf16", dw_partial_ptr="*fp32"),
            dict(s_b="i64", s_t="i64", s_n="i64"), dict(BLOCK_M=bwd_tile[0], BLOCK_H=bwd_tile[1], TILES=tiles),
            bwd_tile[2]),
}
out = {}
for name, (fn, pointers, strides, constexprs, warps) in kernels.items():
    sizes = dict(n_rows="i32", T="i32", N="i32", HALF="i32", eps="fp32")
    types = pointers | sizes | strides | dict.fromkeys(constexprs, "constexpr")
    # What the JIT sees at the presets' shapes: 16-byte aligned pointers; HALF and strides divisible by 16.
    params = list(types)
    attrs = {(params.index(p),): [["tt.divisibility", 16]] for p in [*pointers, "HALF", *strides]}
    out[name] = ptx_and_ptxas(fn, types, constexprs, attrs, warps)
print(json.dumps(out))
"""


def test_qk_norm_rope_compiles_for_the_h100_without_spilling() -> None:
    """Both kernels are bandwidth-bound: built for sm_90 at the presets' head_dim, they must neither spill
    registers nor fall back to narrow loads and stores of the activations."""
    for name, kernel in build_for_h100(QK_SM90_COMPILE).items():
        assert "0 bytes spill stores, 0 bytes spill loads" in kernel["ptxas"], (name, kernel["ptxas"])
        # Vector accesses (the forward's 4 bf16 a thread are 8-byte ones), never one bf16 at a time.
        assert "ld.global.v" in kernel["ptx"] and "st.global.v" in kernel["ptx"], name
        assert not re.search(r"(ld|st)\.global\.[bu]16", kernel["ptx"]), name


# ---------------------------------------------------------------------- linear + cross-entropy


def ce_inputs(N: int, D: int, V: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=generator).to(dtype).requires_grad_()
    weight = (0.3 * torch.randn(V, D, generator=generator)).to(dtype).requires_grad_()
    targets = torch.randint(0, V, (N,), generator=generator)
    return h, weight, targets


def loss_and_grads(fn, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, **kwargs) -> tuple:
    loss = fn(h, weight, targets, **kwargs)
    grad_h, grad_w = torch.autograd.grad(loss, (h, weight))
    return loss, grad_h, grad_w


# The row kernel's paths: (two-pass block width, widest one-pass row). 0 sends every vocabulary through
# the two-pass loop; the default sends the tests' small vocabularies through the one-pass path.
ROW_PATHS = {"two_pass_5_vocab_blocks": (64, 0), "two_pass_one_vocab_block": (linear_ce._BLOCK_V, 0),
             "one_pass": (linear_ce._BLOCK_V, linear_ce._ONE_PASS_MAX_V)}


@pytest.fixture(params=ROW_PATHS.values(), ids=ROW_PATHS.keys())
def row_path(request, monkeypatch) -> None:
    block_v, one_pass_max_v = request.param
    monkeypatch.setattr(linear_ce, "_BLOCK_V", block_v)
    monkeypatch.setattr(linear_ce, "_ONE_PASS_MAX_V", one_pass_max_v)


@pytest.mark.parametrize("chunk_rows", [7, 12, 64], ids=["ragged_last_chunk", "chunks", "one_chunk"])
def test_linear_ce_fp32_matches_reference(chunk_rows: int, row_path) -> None:
    """Ignored targets everywhere, including a chunk (rows 12..23 with chunk_rows=12) with none valid."""
    h, weight, targets = ce_inputs(N=40, D=24, V=300)
    targets[12:24] = IGNORE_INDEX
    targets[[0, 31]] = IGNORE_INDEX
    loss, grad_h, grad_w = loss_and_grads(linear_ce.triton_impl, h, weight, targets, chunk_rows=chunk_rows)
    loss_ref, grad_h_ref, grad_w_ref = loss_and_grads(linear_ce.reference, h, weight, targets)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert rel_err(loss, loss_ref) < 1e-6
    assert rel_err(grad_h, grad_h_ref) < 1e-5
    assert rel_err(grad_w, grad_w_ref) < 1e-5
    assert (grad_h[12:24] == 0).all()


def test_linear_ce_bf16_close_to_reference() -> None:
    h, weight, targets = ce_inputs(N=32, D=32, V=200, dtype=torch.bfloat16)
    targets[:5] = IGNORE_INDEX
    loss, grad_h, grad_w = loss_and_grads(linear_ce.triton_impl, h, weight, targets, chunk_rows=10)
    loss_ref, grad_h_ref, grad_w_ref = loss_and_grads(linear_ce.reference, h, weight, targets)
    assert (grad_h.dtype, grad_w.dtype) == (torch.bfloat16, torch.bfloat16)
    assert rel_err(loss, loss_ref) < 1e-3
    assert rel_err(grad_h, grad_h_ref) < 2e-2
    assert rel_err(grad_w, grad_w_ref) < 2e-2


def test_linear_ce_upstream_gradient_scales_saved_grads() -> None:
    h, weight, targets = ce_inputs(N=16, D=8, V=50)
    grads = torch.autograd.grad(3.0 * linear_ce.triton_impl(h, weight, targets, chunk_rows=5), (h, weight))
    grads_ref = torch.autograd.grad(3.0 * linear_ce.reference(h, weight, targets), (h, weight))
    for grad, grad_ref in zip(grads, grads_ref, strict=True):
        assert rel_err(grad, grad_ref) < 1e-5


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # 1/n_valid = inf, by design
def test_linear_ce_all_ignored_is_nan_like_reference() -> None:
    h, weight, targets = ce_inputs(N=8, D=8, V=50)
    targets[:] = IGNORE_INDEX
    loss, grad_h, grad_w = loss_and_grads(linear_ce.triton_impl, h, weight, targets, chunk_rows=3)
    loss_ref, grad_h_ref, grad_w_ref = loss_and_grads(linear_ce.reference, h, weight, targets)
    assert torch.isnan(loss) and torch.isnan(loss_ref)
    torch.testing.assert_close(grad_h, grad_h_ref)
    torch.testing.assert_close(grad_w, grad_w_ref)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy meeting the NaN on purpose
def test_linear_ce_nan_in_h_gives_nan_loss(row_path) -> None:
    h, weight, targets = ce_inputs(N=12, D=8, V=50)
    with torch.no_grad():
        h[5, 2] = float("nan")
    loss, grad_h, _ = loss_and_grads(linear_ce.triton_impl, h, weight, targets, chunk_rows=4)
    assert torch.isnan(loss)
    assert torch.isnan(grad_h[5]).all()


def test_linear_ce_target_out_of_range_gives_nan_loss(row_path) -> None:
    """The reference raises; the kernel cannot without a host sync, so the loss turns NaN instead."""
    h, weight, targets = ce_inputs(N=6, D=8, V=50)
    targets[2] = 50
    assert torch.isnan(linear_ce.triton_impl(h, weight, targets))


@pytest.mark.parametrize("one_pass", [False, True], ids=["two_pass", "one_pass"])
def test_rows_kernel_gives_cross_entropy_and_its_gradient(one_pass: bool) -> None:
    """The row kernel alone, as ``bench_ce_rows.py`` launches it: loss per row and d(mean loss)/dlogits."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(10, 300, generator=generator)
    targets = torch.randint(0, 300, (10,), generator=generator)
    targets[4] = IGNORE_INDEX
    work, loss = logits.clone(), torch.empty(10)
    linear_ce.cross_entropy_rows(work, targets, loss, (targets != IGNORE_INDEX).sum(), write_grad=True,
                                 one_pass=one_pass, num_warps=4)
    want = torch.nn.functional.cross_entropy(logits, targets, reduction="none", ignore_index=IGNORE_INDEX)
    assert rel_err(loss, want) < 1e-6
    logits.requires_grad_()
    torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX).backward()
    assert rel_err(work, logits.grad) < 1e-6 and (work[4] == 0).all()


ROWS_SM90_COMPILE = """
import itertools, json, triton
from model.kernels import linear_ce as lc
from tests.sm90 import ptx_and_ptxas

out = {}
# The benchmarks' vocabulary (one pass) and Qwen's (two passes); each without and with the fp8 copy, and with
# the fp8 copy alone (keep_logits, as the FP8 weight gradient runs it).
cases = [(v, g, True) for v, g in itertools.product((32768, 151936), (0.0, lc.GRAD8_SCALE))]
for vocab, grad8_scale, write_bf16 in cases + [(32768, lc.GRAD8_SCALE, False)]:
    one_pass = vocab <= lc._ONE_PASS_MAX_V and write_bf16  # the fp8-only launch is two-pass at any vocabulary
    block = triton.next_power_of_2(vocab) if one_pass else lc._BLOCK_V if write_bf16 else lc._FP8_ONLY_BLOCK_V
    ce = dict(V=vocab, WRITE_GRAD=True, BLOCK_V=block, ONE_PASS=one_pass, GRAD8_SCALE=grad8_scale,
              GRAD8_CVT=bool(grad8_scale),  # the GPU's conversion instruction, as a CUDA launch picks
              WRITE_BF16=write_bf16)
    signature = {"logits_ptr": "*bf16", "stride_row": "i32", "targets_ptr": "*i64", "loss_ptr": "*fp32",
                 "n_valid_ptr": "*i64", "ignore_index": "i32", "grad8_ptr": "*u8" if grad8_scale else "*fp32"}
    signature |= dict.fromkeys(ce, "constexpr")
    aligned = {(i,): [["tt.divisibility", 16]] for i in (0, 1, 2, 3, 4, 6)}  # as the JIT sees real launches
    warps = lc._ONE_PASS_WARPS if one_pass else lc._TWO_PASS_WARPS if write_bf16 else lc._FP8_ONLY_WARPS
    out[f"V={vocab} fp8={bool(grad8_scale)}" + ("" if write_bf16 else " fp8 only")] = ptx_and_ptxas(lc._cross_entropy_rows_kernel, signature, ce,
                                                               aligned, warps)
print(json.dumps(out))
"""


def test_rows_kernel_compiles_for_the_h100_without_spilling() -> None:
    """The one-pass row kernel holds a 32768-wide row in registers (64 fp32 values a thread at 16 warps);
    spilling them to local memory would quietly cost more than the second read it saves. Built for
    sm_90 by Triton's bundled ptxas, here on the CPU, at the launches ``cross_entropy_rows`` makes."""
    built = build_for_h100(ROWS_SM90_COMPILE)
    assert len(built) == 5
    for launch, kernel in built.items():
        assert "0 bytes spill stores, 0 bytes spill loads" in kernel["ptxas"], (launch, kernel["ptxas"])
        # 16-byte accesses: the row is read and written in 8-value vectors (not written with the fp8 copy only).
        assert "ld.global.v4" in kernel["ptx"], launch
        assert ("st.global.v4" in kernel["ptx"]) == ("fp8 only" not in launch), launch
        if "fp8=True" in launch:  # and its fp8 copy in 8-byte vectors, rounded by the hardware conversion
            assert "st.global.v2.b32" in kernel["ptx"], launch
            assert "cvt.rn.satfinite.e5m2x2.f32" in kernel["ptx"], launch


def test_linear_ce_without_grad_gives_the_same_loss() -> None:
    h, weight, targets = ce_inputs(N=10, D=8, V=50)
    with torch.no_grad():
        loss = linear_ce.triton_impl(h, weight, targets, chunk_rows=4)
    assert not loss.requires_grad
    assert rel_err(loss, linear_ce.reference(h, weight, targets)) < 1e-6


def test_linear_ce_compiles_without_graph_breaks() -> None:
    """fullgraph compile (aot_eager on the CPU) traces the op through its fake and autograd rules."""
    h, weight, targets = ce_inputs(N=20, D=8, V=50)
    compiled = torch.compile(lambda *a: 2.0 * linear_ce.triton_impl(*a, chunk_rows=6), fullgraph=True,
                             backend="aot_eager")
    loss, grad_h, grad_w = loss_and_grads(compiled, h, weight, targets)
    reference = lambda *a: 2.0 * linear_ce.reference(*a)
    loss_ref, grad_h_ref, grad_w_ref = loss_and_grads(reference, h, weight, targets)
    assert rel_err(loss, loss_ref) < 1e-6
    assert rel_err(grad_h, grad_h_ref) < 1e-5
    assert rel_err(grad_w, grad_w_ref) < 1e-5


def test_linear_ce_rejects_bad_shapes_and_mixed_dtypes() -> None:
    h, weight, targets = ce_inputs(N=4, D=8, V=50)
    with pytest.raises(ValueError, match="h \\(N, D\\) and weight \\(V, D\\)"):
        linear_ce.triton_impl(h, weight[:, :4], targets)
    with pytest.raises(ValueError, match="one target per row"):
        linear_ce.triton_impl(h, weight, targets[:3])
    with pytest.raises(ValueError, match="one dtype"):
        linear_ce.triton_impl(h, weight.to(torch.bfloat16), targets)


# ---------------------------------------------------------------------- linear + CE with FP8 matmuls


def test_linear_ce_fp8_computes_what_it_says(row_path) -> None:
    """Against the same arithmetic written out in PyTorch (``reference_fp8``): e4m3 h and W with dynamic
    scales for the logits, the e5m2 copy of their gradient for grad_h, the exact gradient for grad_W.
    It is the FP8 path: further from the exact reference than the fp32 kernel is, within FP8's error."""
    h, weight, targets = ce_inputs(N=40, D=32, V=200)
    targets[::7] = IGNORE_INDEX
    loss, grad_h, grad_w = loss_and_grads(linear_ce.triton_impl_fp8, h, weight, targets, chunk_rows=16)
    loss_em, grad_h_em, grad_w_em = loss_and_grads(linear_ce.reference_fp8, h, weight, targets)
    assert rel_err(loss, loss_em) < 1e-5
    assert rel_err(grad_h, grad_h_em) < 1e-3  # accumulation order can flip an e5m2 rounding
    assert rel_err(grad_w, grad_w_em) < 1e-5
    loss_ref, grad_h_ref, grad_w_ref = loss_and_grads(linear_ce.reference, h, weight, targets)
    assert 1e-5 < rel_err(loss, loss_ref) < 1e-2
    assert 1e-3 < rel_err(grad_h, grad_h_ref) < 0.1
    assert 1e-4 < rel_err(grad_w, grad_w_ref) < 0.05


@pytest.mark.parametrize("N, group_chunks", [(48, 2), (48, 8), (40, 2)],
                         ids=["groups_and_a_short_last_one", "one_group", "rows_not_a_multiple_of_16"])
def test_linear_ce_fp8_grad_w_computes_what_it_says(N: int, group_chunks: int, row_path, monkeypatch) -> None:
    """``triton_impl_fp8_grad_w`` against ``reference_fp8(fp8_grad_w=True)``: grad_W from the e5m2 gradient and
    h's e4m3 copy, gathered over groups of chunks (two chunks a group here, so 48 rows make a full group and a
    half one). The loss and grad_h are exactly ``triton_impl_fp8``'s here: at V = 200 the fp8-only row kernel's
    two passes cover the row in one block, so it sums as the one-pass kernel does (on the GPU, at V = 32768, a few
    e5m2 roundings differ; tests/test_gpu_kernels_fused.py bounds them). Rows that are not a multiple of 16 fall
    back to the bf16 grad_W, i.e. exactly ``triton_impl_fp8``."""
    h, weight, targets = ce_inputs(N=N, D=32, V=200)
    targets[::7] = IGNORE_INDEX
    monkeypatch.setattr(linear_ce, "_GRAD_W_GROUP_ELEMENTS", 200 * 16 * group_chunks)
    loss, grad_h, grad_w = loss_and_grads(linear_ce.triton_impl_fp8_grad_w, h, weight, targets, chunk_rows=16)
    loss8, grad_h8, grad_w8 = loss_and_grads(linear_ce.triton_impl_fp8, h, weight, targets, chunk_rows=16)
    assert torch.equal(loss, loss8) and torch.equal(grad_h, grad_h8)
    if N % 16:
        assert torch.equal(grad_w, grad_w8)
        return
    _, _, grad_w_em = loss_and_grads(partial(linear_ce.reference_fp8, fp8_grad_w=True), h, weight, targets)
    assert rel_err(grad_w, grad_w_em) < 1e-5
    _, _, grad_w_ref = loss_and_grads(linear_ce.reference, h, weight, targets)
    assert rel_err(grad_w8, grad_w_ref) < rel_err(grad_w, grad_w_ref) < 0.1  # e5m2 x e4m3 is further off


def test_default_chunk_rows_are_multiples_of_16() -> None:
    """So that the FP8 weight gradient's matmul (K = a group of chunks) takes any vocabulary the FP8 head does."""
    assert linear_ce.default_chunk_rows(32768) == 4096
    for vocab in (96, 2400, 50304, 151936):
        rows = linear_ce.default_chunk_rows(vocab)
        assert rows % 16 == 0 and rows <= linear_ce._CHUNK_ELEMENTS // vocab < rows + 16, vocab
    assert linear_ce.default_chunk_rows(linear_ce._CHUNK_ELEMENTS // 3) == 3


def test_transpose_fp8_into_a_column_slice() -> None:
    """``dst[:, a:b] = src.t()`` with ragged tiles on both sides, the rest of ``dst`` untouched; bad layouts refused."""
    generator = torch.Generator().manual_seed(5)
    src = torch.randint(0, 256, (37, 70), dtype=torch.uint8, generator=generator).view(E5M2)
    dst = torch.zeros((70, 50), dtype=torch.uint8).view(E5M2)
    linear_ce.transpose_fp8(src, dst[:, 5:42], block_r=16, block_c=32, num_warps=1)
    want = torch.zeros((70, 50), dtype=torch.uint8)
    want[:, 5:42] = src.view(torch.uint8).t()
    assert torch.equal(dst.view(torch.uint8), want)
    with pytest.raises(ValueError, match="transpose_fp8"):
        linear_ce.transpose_fp8(src, dst[:, 5:42].t().contiguous().t())  # columns of dst not contiguous
    with pytest.raises(ValueError, match="transpose_fp8"):
        linear_ce.transpose_fp8(src, dst[:, :36])


def test_rows_kernel_can_write_only_the_fp8_copy() -> None:
    """``keep_logits``: the same e5m2 copy and losses, the logits left as they were; it needs the copy."""
    generator = torch.Generator().manual_seed(6)
    logits = 4 * torch.randn(6, 300, generator=generator)
    targets = torch.randint(0, 300, (6,), generator=generator)
    n_valid = (targets != IGNORE_INDEX).sum()
    outs = []
    for keep in (False, True):
        work, loss, grad8 = logits.clone(), torch.empty(6), torch.empty(6, 300, dtype=E5M2)
        linear_ce.cross_entropy_rows(work, targets, loss, n_valid, write_grad=True, grad8_CV=grad8, keep_logits=keep,
                                     num_warps=4)
        outs.append((work, loss, grad8.view(torch.uint8)))
    assert torch.equal(outs[1][0], logits) and not torch.equal(outs[0][0], logits)
    assert torch.equal(outs[0][1], outs[1][1]) and torch.equal(outs[0][2], outs[1][2])
    with pytest.raises(ValueError, match="keep_logits"):
        linear_ce.cross_entropy_rows(logits.clone(), targets, torch.empty(6), n_valid, write_grad=True,
                                     keep_logits=True)


@triton.jit
def _e5m2_bits_of(x_ptr, out_ptr, N: tl.constexpr):
    cols = tl.arange(0, N)
    tl.store(out_ptr + cols, linear_ce._e5m2_bits(tl.load(x_ptr + cols)))


def test_e5m2_bits_round_as_torch_casts_and_keep_nan() -> None:
    """Every e5m2 value, the midpoints between neighbours and the points either side of them, both signs,
    subnormals included (``e5m2_cases``): the same bits as torch's cast. NaN stays NaN in both of its fp32
    forms, numpy's and the GPU's."""
    x, n, n_nan = e5m2_rounding_inputs(linear_ce.GRAD8_SCALE)
    out = torch.empty(len(x), dtype=torch.uint8)
    _e5m2_bits_of[(1,)](x, out, N=len(x))
    assert torch.equal(out[:n], x[:n].to(E5M2).view(torch.uint8))
    assert torch.isnan(out[n: n + n_nan].view(E5M2).float()).all()


@pytest.mark.parametrize("one_pass", [False, True], ids=["two_pass", "one_pass"])
def test_rows_kernel_fp8_copy_is_the_rounded_gradient(one_pass: bool) -> None:
    """The e5m2 copy is the row's gradient times n_valid * GRAD8_SCALE, rounded as torch's cast rounds,
    bit for bit: to nearest (the target's entry, close to -GRAD8_SCALE, rounds up into the next binade;
    tiny probabilities round to e5m2's subnormals), 0 on ignored rows, NaN where the row holds a NaN."""
    generator = torch.Generator().manual_seed(4)
    logits = 4 * torch.randn(10, 300, generator=generator)
    logits[7, 11] = float("nan")
    targets = torch.randint(0, 300, (10,), generator=generator)
    targets[4] = IGNORE_INDEX
    n_valid = (targets != IGNORE_INDEX).sum()
    work, loss, grad8 = logits.clone(), torch.empty(10), torch.empty(10, 300, dtype=E5M2)
    linear_ce.cross_entropy_rows(work, targets, loss, n_valid, write_grad=True, grad8_CV=grad8,
                                 one_pass=one_pass, num_warps=4)
    scaled = work * n_valid * linear_ce.GRAD8_SCALE
    want = scaled.to(E5M2)
    assert ((scaled.abs() < 2**-14) & (scaled != 0)).sum() > 10  # the subnormal range is exercised
    assert torch.isnan(grad8[7].float()).all() and torch.isnan(want[7].float()).all()
    rows = [0, 1, 2, 3, 4, 5, 6, 8, 9]
    assert torch.equal(grad8[rows].view(torch.uint8), want[rows].view(torch.uint8))
    assert (grad8[4].float() == 0).all() and grad8[rows].float().abs().max() == linear_ce.GRAD8_SCALE
    with pytest.raises(ValueError, match="grad8_CV"):
        linear_ce.cross_entropy_rows(logits.clone(), targets, loss, n_valid, write_grad=False, grad8_CV=grad8)


def test_linear_ce_fp8_evaluates_exactly_and_handles_all_ignored() -> None:
    """Without gradients (evaluation) the FP8 variant gives the exact loss; a batch whose targets are all
    ignored gives a NaN loss, as the reference does, and zero gradients rather than NaN ones."""
    h, weight, targets = ce_inputs(N=12, D=16, V=64)
    with torch.no_grad():
        assert torch.equal(linear_ce.triton_impl_fp8(h, weight, targets, chunk_rows=5),
                           linear_ce.triton_impl(h, weight, targets, chunk_rows=5))
        assert torch.equal(linear_ce.reference_fp8(h, weight, targets), linear_ce.reference(h, weight, targets))
    targets[:] = IGNORE_INDEX
    for fp8 in (partial(linear_ce.triton_impl_fp8, chunk_rows=5), linear_ce.reference_fp8):
        loss, grad_h, grad_w = loss_and_grads(fp8, h, weight, targets)
        assert torch.isnan(loss)
        assert (grad_h == 0).all() and (grad_w == 0).all()


def test_fp8_lm_head_auto_runs_it_only_where_fp8_tensor_cores_run_the_fused_kernel() -> None:
    """``--fp8-lm-head auto`` (the default) is off on the CPU, where the kernel only runs interpreted, even with
    the fused kernel chosen; ``on`` and ``off`` are taken as given (``apply_to_model`` checks ``on``)."""
    from model import kernels

    dims = dict(n_layer=1, n_head=2, n_kv_head=1, d_model=32, d_ff=64, head_dim=16, max_seq_len=16)
    model = SigmaLM(ModelConfig(vocab_size=96, **dims))
    torch_only = dict.fromkeys(kernels.KERNELS, "torch")
    with_kernel = {**torch_only, "linear_ce": "triton"}
    assert kernels.fp8_lm_head_problem(model, with_kernel) is None
    assert "fused linear + CE kernel" in kernels.fp8_lm_head_problem(model, torch_only)
    assert not kernels.fp8_lm_head_wanted("auto", model, with_kernel)
    assert not kernels.fp8_lm_head_wanted("auto", model, torch_only)
    assert kernels.fp8_lm_head_wanted("on", model, torch_only)
    assert not kernels.fp8_lm_head_wanted("off", model, with_kernel)
    with pytest.raises(ValueError, match="--fp8-lm-head must be one of"):
        kernels.fp8_lm_head_wanted("yes", model, with_kernel)


def test_fp8_lm_head_needs_the_fused_kernel_and_trains() -> None:
    """``apply_to_model(fp8_lm_head=True)`` refuses without the linear + CE kernel, and for a vocabulary
    FP8 matmuls cannot take, naming the fix; otherwise a tiny model's loss falls over a few AdamW steps."""
    from model import kernels

    torch.manual_seed(0)
    dims = dict(n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=64, head_dim=8, max_seq_len=16)
    model = SigmaLM(ModelConfig(vocab_size=96, **dims))
    torch_only = dict.fromkeys(kernels.KERNELS, "torch")
    with_kernel = {**torch_only, "linear_ce": "triton"}
    with pytest.raises(RuntimeError, match="fused linear \\+ CE kernel.*--fp8-lm-head off"):
        kernels.apply_to_model(model, torch_only, fp8_lm_head=True)
    with pytest.raises(RuntimeError, match="multiples of 16; this model has 97 and 32"):
        kernels.apply_to_model(SigmaLM(ModelConfig(vocab_size=97, **dims)), with_kernel, fp8_lm_head=True)
    kernels.apply_to_model(model, with_kernel, fp8_lm_head=True)
    assert model.linear_ce is linear_ce.triton_impl_fp8_grad_w  # all three of the head's matmuls in FP8
    idx, targets = torch.randint(0, 96, (4, 16)), torch.randint(0, 96, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss = model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


# ---------------------------------------------------------------------- model tie-in and benchmarks


@pytest.mark.parametrize("qk_norm", [True, False])
def test_model_with_kernels_matches_reference_model(qk_norm: bool) -> None:
    """SigmaLM with the three kernels installed: same loss and gradients (tied head included) as the
    reference. Without a QK norm the QK-norm + RoPE kernel is not used, and RoPE stays the reference's."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=64, head_dim=8,
                      max_seq_len=16, qk_norm=qk_norm)
    ref_model = SigmaLM(cfg)
    model = copy.deepcopy(ref_model).use_kernels(rms_norm=rmsnorm.triton_impl, linear_ce=linear_ce.triton_impl,
                                                 qk_norm_rope=qk_norm_rope.triton_impl)
    idx = torch.randint(0, 97, (2, 12))
    targets = torch.randint(0, 97, (2, 12))
    targets[0, :4] = IGNORE_INDEX
    loss, loss_ref = model(idx, targets), ref_model(idx, targets)
    loss.backward()
    loss_ref.backward()
    assert rel_err(loss, loss_ref) < 1e-6
    for (name, param), param_ref in zip(model.named_parameters(), ref_model.parameters(), strict=True):
        assert rel_err(param.grad, param_ref.grad) < 1e-5, name


@pytest.mark.parametrize("preset", ["124m", "350m"])
def test_bench_cases_shapes(preset: str) -> None:
    """Every case builds its inputs (on the meta device: no memory) at the benchmark shapes."""
    d_model = {"124m": 768, "350m": 1024}[preset]
    cases = rmsnorm.bench_cases(preset) + linear_ce.bench_cases(preset) + qk_norm_rope.bench_cases(preset)
    assert len({case["name"] for case in cases}) == len(cases)
    for case in cases:
        assert set(case) == {"name", "make_inputs", "triton", "reference", "backward"}
        inputs = case["make_inputs"](torch.device("meta"))
        assert inputs[0].dtype == torch.bfloat16 and inputs[0].requires_grad
        if case["name"].startswith("linear_ce"):
            assert inputs[0].shape == (32 * 2048, d_model) and inputs[1].shape == (32768, d_model)
            assert case["backward"]
        elif case["name"].startswith("qk_norm_rope"):
            assert inputs[0].shape[:2] == (32, 2048) and inputs[0].shape[-1] == PRESETS[preset]["head_dim"]
            assert inputs[2].shape == inputs[3].shape == (2048, PRESETS[preset]["head_dim"])
            assert case["backward"]
        else:
            assert inputs[0].shape[:2] == (32, 2048) and inputs[0].shape[-1] in (d_model, PRESETS[preset]["head_dim"])
