"""Fused LM head + cross-entropy that never materialises the full ``(N, V)`` logits (SPEC §3).

Same result as :func:`model.decoder.linear_cross_entropy_reference` (mean fp32 cross-entropy of
``h @ W.T``, targets equal to ``IGNORE_INDEX`` skipped), but the reference holds the whole logits
matrix: at 32 x 2048 tokens and a 32768 vocabulary that is 4 GiB of bf16 logits plus 8 GiB in fp32,
and as much again for their gradient. Here the rows go through in chunks of ``C`` rows and the
backward is done during the forward, so only one ``(C, V)`` buffer in the weights' dtype is alive:

    logits_CV  = h_C @ W.T                                    cuBLAS, into the reused chunk buffer
    kernel     : per row logsumexp and loss, then overwrite the row in place with
                 dloss/dlogits = (softmax - onehot(target)) / n_valid   (0 for ignored rows)
    grad_h_C   = dlogits_CV @ W                               cuBLAS
    grad_W    += dlogits_CV.T @ h_C                           cuBLAS, accumulated in fp32

With the FP8 head (:func:`triton_impl_fp8`, :func:`triton_impl_fp8_grad_w`) the logits and ``grad_h`` are FP8
matmuls, the kernel also writes an e5m2 copy of the gradient, and ``grad_W`` is either the bf16 matmul above or
an FP8 one over groups of chunks from a transposed copy (see :func:`_linear_cross_entropy`).

The loss's backward then only scales the saved ``grad_h``/``grad_W`` by the incoming gradient (the
loss is a scalar, so that is exact). ``n_valid`` stays a device tensor: no host sync anywhere.

Numerics follow the reference: logits and their gradient in the weights' dtype (bf16 on the GPU
profile, as ``F.linear`` produces and autograd consumes them), logsumexp and loss in fp32.

Shape suffix legend:
    N  rows (tokens of the micro-batch)
    C  rows of one chunk
    D  d_model
    V  vocab_size
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from model.config import PRESETS
from model.decoder import IGNORE_INDEX, linear_cross_entropy_reference
from model.fp8 import E4M3, E5M2, FP8_DIM_MULTIPLE, fp8_supported, quantise_tensorwise

reference = linear_cross_entropy_reference

# Elements of one chunk's logits buffer: 2**27 = 256 MiB in bf16, i.e. 4096 rows at a 32768 vocabulary.
# The chunk's three matmuls then have M or K >= 4096 (cuBLAS near peak), and the fp32 read-modify-write
# of grad_W that each chunk costs (V x D x 8 bytes) stays small next to its 6 x C x V x D flops.
_CHUNK_ELEMENTS = 1 << 27
# Bytes of the transposed e5m2 gradient that FP8 grad_W gathers before each of its matmuls (1 GiB: 8 chunks at a
# 32768 vocabulary, so K = 32768 rows): long enough a K for the matmul to run near peak, and the fp32
# read-modify-write of grad_W (V x D x 8 bytes) once a group instead of once a chunk.
_GRAD_W_GROUP_ELEMENTS = 1 << 30
# Vocabulary columns per step of the two-pass row kernel, and its warps: 16 values a thread.
_BLOCK_V = 4096
_TWO_PASS_WARPS = 8
# Widest row the one-pass row kernel holds in registers, and its warps: 32768 fp32 values over 16 warps
# are 64 a thread.
_ONE_PASS_MAX_V = 32768
_ONE_PASS_WARPS = 16
# The launch when only the e5m2 copy is written (keep_logits, the FP8 weight gradient): two passes over 8192-wide
# blocks at 8 warps, the second read served from L2. On an H200 at a 4096 x 32768 chunk 171.0 us against 201.2
# for the one-pass default and 185.7-187.3 for two passes over 2048- or 4096-wide blocks (bench_ce_rows.py --fp8,
# docs/benchmarks/2026-11-28_issue7_session23/h200_ce_rows_sweep.json).
_FP8_ONLY_BLOCK_V = 8192
_FP8_ONLY_WARPS = 8
# Static scale of the fp8 (e5m2) copy of the logits' gradient: softmax - onehot lies in [-1, 1], so the
# copy's largest magnitude is 2**15 (e5m2's max is 57344) and e5m2's smallest normal, 2**-14, stands for
# 2**-29: softmax values smaller than that (they contribute < 2**-29 of a row's weight) become subnormal.
GRAD8_SCALE = 2.0**15


def _grad8_inv_scale(n_valid: torch.Tensor) -> torch.Tensor:
    """The matmul scale of the fp8 gradient copy: its rows hold (softmax - onehot) * GRAD8_SCALE, and the
    mean's 1/n_valid is folded in here (n_valid floored at 1: an all-ignored batch's copy is all zeros)."""
    return 1.0 / (GRAD8_SCALE * n_valid.clamp(min=1).float())


@triton.jit
def _e5m2_bits(x):
    """The float8_e5m2 bit patterns (uint8) of fp32 ``x``: rounded to nearest, ties to even; NaN stays NaN.

    The CPU interpreter's conversion (the GPU uses :func:`_e5m2_bits_cvt`, one instruction per two values).
    Written out rather than left to Triton's cast, which on the H100 turns NaN into -0 (a NaN logit
    would then leave no trace in grad_h) and in the CPU interpreter rounds without carrying into the
    exponent (1.99 becomes 1.0). ``|x|`` must stay below e5m2's largest finite value, 57344. Normal
    values (|x| >= 2**-14) keep 2 of fp32's 23 mantissa bits, subnormal ones become multiples of 2**-16;
    either is then exact in fp16, whose top byte is the e5m2 pattern.
    """
    bits = x.to(tl.int32, bitcast=True)
    sign = bits & -0x80000000  # -0x80000000 = 0x80000000
    normal = (bits + 0xFFFFF + ((bits >> 21) & 1)) & -0x200000  # drop 21 mantissa bits; -0x200000 = 0xFFE00000
    subnormal = ((tl.abs(x) + 192.0) - 192.0).to(tl.int32, bitcast=True) | sign  # 192's ulp is 2**-16
    rounded = tl.where(tl.abs(x) < 0.00006103515625, subnormal, normal).to(tl.float32, bitcast=True)  # 2**-14
    rounded = tl.where(x != x, x, rounded)  # the GPU's NaN, 0x7FFFFFFF, would carry into the sign: -0
    return (rounded.to(tl.float16).to(tl.int16, bitcast=True) >> 8).to(tl.uint8)


@triton.jit
def _e5m2_bits_cvt(x):
    """:func:`_e5m2_bits` by the GPU's own conversion (sm_89 and later; not in the CPU interpreter).

    ``cvt.rn.satfinite.e5m2x2.f32`` rounds two fp32 values to nearest even in one instruction and keeps
    NaN a NaN; ``satfinite`` only matters beyond e5m2's largest finite value, which the gradient copy
    never reaches. The written-out version costs ~20 integer operations a value, enough to make the
    bandwidth-bound row kernel issue-bound: 5.43 ms a 124m step on the H100, 4.22 with this one.
    """
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b16 lo, hi;
        cvt.rn.satfinite.e5m2x2.f32 lo, $2, $1;
        cvt.rn.satfinite.e5m2x2.f32 hi, $4, $3;
        mov.b32 $0, {lo, hi};
        }""",
        constraints="=r,r,r,r,r",  # four values a call: four fp32 in, their four bytes packed in one register
        args=[x],
        dtype=tl.uint8,
        is_pure=True,
        pack=4,
    )


@triton.jit
def _grad8_bits(x, CVT: tl.constexpr):
    """e5m2 bits of ``x`` by :func:`_e5m2_bits_cvt` (``CVT``) or :func:`_e5m2_bits`."""
    if CVT:
        return _e5m2_bits_cvt(x)
    return _e5m2_bits(x)


@triton.jit
def _cross_entropy_rows_kernel(logits_ptr, stride_row, targets_ptr, loss_ptr, n_valid_ptr, ignore_index,
                               grad8_ptr, V: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
                               ONE_PASS: tl.constexpr, GRAD8_SCALE: tl.constexpr, GRAD8_CVT: tl.constexpr,
                               WRITE_BF16: tl.constexpr):
    """One program per row: loss = logsumexp(row) - row[target]; optionally row <- dloss/drow.

    With ``GRAD8_SCALE`` non-zero the gradient also goes, as ``(softmax - onehot) * GRAD8_SCALE``
    (without the 1/n_valid, which the caller folds into the matmul's scale), to the contiguous e5m2 rows
    at ``grad8_ptr`` (a uint8 view); 0 for ignored rows. ``GRAD8_CVT`` rounds it with the GPU's conversion
    instruction (:func:`_e5m2_bits_cvt`), otherwise in integer arithmetic (:func:`_e5m2_bits`). Without
    ``WRITE_BF16`` only that copy is written and the logits are left as they are (all three of the head's
    matmuls then read the copy): the same e5m2 values, a third less traffic.

    ``V`` is a compile-time constant (one compilation per vocabulary): the loops' trip counts are then
    fixed, which the CPU interpreter needs. The kernel is bandwidth-bound. With ``ONE_PASS``
    (``BLOCK_V >= V``) the whole row is held in registers and read from memory once; otherwise it is
    read twice (max/sum, then gradient), half as much traffic again.
    """
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    target = tl.load(targets_ptr + row)
    if ONE_PASS:
        cols = tl.arange(0, BLOCK_V)
        col_ok = cols < V
        x = tl.load(row_ptr + cols, mask=col_ok, other=float("-inf")).to(tl.float32)
        m = tl.max(x, axis=0)
        e = tl.exp(x - m)  # x is dead from here: the row lives in registers once
        s = tl.sum(e, axis=0)
    else:
        # Online logsumexp: running max m and running sum s of exp(x - m).
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.full((), 0.0, tl.float32)
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            x = tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
    lse = m + tl.log(s)  # NaN anywhere in the row makes s, and so the loss, NaN
    valid = target != ignore_index
    in_range = (target >= 0) & (target < V)
    target_logit = tl.load(row_ptr + target, mask=valid & in_range, other=0.0).to(tl.float32)
    # A target outside [0, V) that is not ignore_index is a data bug: the reference raises (a device
    # assert on CUDA); raising here would need a host sync, so the row's loss becomes NaN instead.
    loss = tl.where(valid, tl.where(in_range, lse - target_logit, float("nan")), 0.0)
    tl.store(loss_ptr + row, loss)
    if WRITE_GRAD:
        # 1/n_valid is inf when every target is ignored; no row is valid then, so scale is 0 everywhere.
        scale = tl.where(valid, 1.0 / tl.load(n_valid_ptr).to(tl.float32), 0.0)
        # The fp8 copy is made from the rounded gradient, grad * n_valid * GRAD8_SCALE (0 on ignored rows):
        # from the fp32 values, both outputs would hold the row's 64 fp32 values a thread at once and spill.
        ratio8 = tl.where(valid, GRAD8_SCALE * tl.load(n_valid_ptr).to(tl.float32), 0.0)
        grad8_row_ptr = grad8_ptr + row * V
        if ONE_PASS:  # the row is still in registers (e, cols, col_ok from the first branch)
            grad = ((e * (1.0 / s) - (cols == target).to(tl.float32)) * scale).to(logits_ptr.dtype.element_ty)
            if WRITE_BF16:
                tl.store(row_ptr + cols, grad, mask=col_ok)
            if GRAD8_SCALE != 0.0:
                # Contiguity claimed no wider than the bf16 row's 16-byte (8-value) accesses, so that this
                # store keeps their register layout rather than converting all 64 values a thread to another.
                tl.store(grad8_row_ptr + tl.max_contiguous(cols, 8),
                         _grad8_bits(grad.to(tl.float32) * ratio8, GRAD8_CVT), mask=col_ok)
        else:
            for start in range(0, V, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V)
                col_ok = cols < V
                x = tl.load(row_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
                grad = ((tl.exp(x - lse) - (cols == target).to(tl.float32)) * scale).to(logits_ptr.dtype.element_ty)
                if WRITE_BF16:
                    tl.store(row_ptr + cols, grad, mask=col_ok)
                if GRAD8_SCALE != 0.0:
                    tl.store(grad8_row_ptr + tl.max_contiguous(cols, 8),  # as in the one-pass branch
                             _grad8_bits(grad.to(tl.float32) * ratio8, GRAD8_CVT), mask=col_ok)


def _gpu_cvt(t: torch.Tensor) -> bool:
    """Whether a kernel on ``t`` compiles for a GPU that has the fp8 conversion instruction (sm_89 and later;
    not the interpreter, which cannot run PTX)."""
    return fp8_supported(t.device) and os.environ.get("TRITON_INTERPRET") != "1"


def cross_entropy_rows(logits_CV: torch.Tensor, targets_C: torch.Tensor, loss_C: torch.Tensor,
                       n_valid: torch.Tensor, *, write_grad: bool, grad8_CV: torch.Tensor | None = None,
                       keep_logits: bool = False, one_pass: bool | None = None, num_warps: int | None = None,
                       block_v: int | None = None) -> None:
    """Launch :func:`_cross_entropy_rows_kernel` over the rows of ``logits_CV`` (contiguous rows).

    ``grad8_CV`` (contiguous, e5m2, the shape of ``logits_CV``; needs ``write_grad``) also receives the
    gradient times ``n_valid * GRAD8_SCALE``; with ``keep_logits`` it is the only gradient written and
    ``logits_CV`` is left unchanged. ``one_pass``, ``num_warps`` and the two-pass kernel's ``block_v``
    default to what ``scripts/bench_ce_rows.py`` measured fastest: on the H100, and for ``keep_logits`` (first
    measured in session 23, when no H100 was lent) on an H200; the benchmark passes them to compare.
    """
    C, V = logits_CV.shape
    if keep_logits and one_pass is None:
        one_pass, block_v, num_warps = False, block_v or _FP8_ONLY_BLOCK_V, num_warps or _FP8_ONLY_WARPS
    if one_pass is None:
        one_pass = V <= _ONE_PASS_MAX_V
    block_v = triton.next_power_of_2(V) if one_pass else min(block_v or _BLOCK_V, triton.next_power_of_2(V))
    if num_warps is None:
        num_warps = _ONE_PASS_WARPS if one_pass else _TWO_PASS_WARPS
    if grad8_CV is not None and not (write_grad and grad8_CV.shape == logits_CV.shape and grad8_CV.is_contiguous()
                                     and grad8_CV.dtype == E5M2):
        raise ValueError("grad8_CV must be contiguous float8_e5m2 shaped like logits_CV, and needs write_grad")
    if keep_logits and grad8_CV is None:
        raise ValueError("keep_logits writes the gradient to grad8_CV only: pass grad8_CV")
    _cross_entropy_rows_kernel[(C,)](
        logits_CV, logits_CV.stride(0), targets_C, loss_C, n_valid, IGNORE_INDEX,
        loss_C if grad8_CV is None else grad8_CV.view(torch.uint8),  # unused when there is no fp8 copy
        V=V, WRITE_GRAD=write_grad, BLOCK_V=block_v, ONE_PASS=one_pass,
        GRAD8_SCALE=0.0 if grad8_CV is None else GRAD8_SCALE, GRAD8_CVT=grad8_CV is not None and _gpu_cvt(logits_CV),
        WRITE_BF16=not keep_logits, num_warps=num_warps,
    )


@triton.jit
def _transpose_bytes_kernel(src_ptr, dst_ptr, R, C, dst_stride, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """``dst[c, r] = src[r, c]`` for the contiguous (R, C) bytes at ``src_ptr``; rows of dst ``dst_stride`` apart.

    One (BLOCK_R, BLOCK_C) tile a program, read along src's rows and written along dst's, so that both sides
    move whole runs of bytes (Triton stages the transposition through shared memory).
    """
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    rows = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask = (rows[:, None] < R) & (cols[None, :] < C)
    tile = tl.load(src_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], mask=mask)
    tl.store(dst_ptr + cols[None, :].to(tl.int64) * dst_stride + rows[:, None], tile, mask=mask)


# The transposition's tile (rows x columns of the source) and warps: on an H200, a 4096 x 32768 chunk into a
# column slice of the (V, 8 chunks) buffer took 77.3 us (3.47 TB/s counting one read and one write) at 128 x 128
# and 8 warps, 80.0-84.0 us at the five other tiles tried, and 788.5 us by torch's strided copy_
# (scripts/bench_ce_rows.py --fp8; docs/benchmarks/2026-11-28_issue7_session23/).
_TRANSPOSE_BLOCK_R = 128
_TRANSPOSE_BLOCK_C = 128
_TRANSPOSE_WARPS = 8


def transpose_fp8(src_CV: torch.Tensor, dst_VC: torch.Tensor, *, block_r: int | None = None,
                  block_c: int | None = None, num_warps: int | None = None) -> None:
    """``dst_VC.copy_(src_CV.t())`` for a contiguous fp8 ``src_CV`` and an fp8 ``dst_VC`` whose last dim is
    contiguous (a column slice of a wider buffer is fine). The tile arguments are for the benchmark."""
    C, V = src_CV.shape
    if dst_VC.shape != (V, C) or dst_VC.stride(1) != 1 or not src_CV.is_contiguous() or src_CV.element_size() != 1 \
            or dst_VC.element_size() != 1:
        raise ValueError(f"transpose_fp8 needs a contiguous one-byte (C, V) source and a (V, C) destination with "
                         f"contiguous rows; got {tuple(src_CV.shape)} -> {tuple(dst_VC.shape)}, strides "
                         f"{dst_VC.stride()}")
    block_r, block_c = block_r or _TRANSPOSE_BLOCK_R, block_c or _TRANSPOSE_BLOCK_C
    _transpose_bytes_kernel[(triton.cdiv(V, block_c), triton.cdiv(C, block_r))](
        src_CV.view(torch.uint8), dst_VC.view(torch.uint8), C, V, dst_VC.stride(0),
        BLOCK_R=block_r, BLOCK_C=block_c, num_warps=num_warps or _TRANSPOSE_WARPS,
    )


def _accumulate_mm(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """``acc += a @ b`` for an fp32 ``acc``, accumulating in fp32 across calls.

    Summing per-chunk bf16 products in bf16 would round ``grad_W`` once per chunk. On CUDA, cuBLAS adds
    a bf16 product straight into the fp32 ``acc`` (``out_dtype``, torch >= 2.8), at no extra traffic;
    that overload does not exist on the CPU, where the operands are upcast instead.
    """
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif acc.is_cuda:
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    else:
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


@torch.library.custom_op("eco_train::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy(
    h_ND: torch.Tensor,
    weight_VD: torch.Tensor,
    targets_N: torch.Tensor,
    chunk_rows: int,
    need_grad_h: bool,
    need_grad_w: bool,
    fp8_h_ND: torch.Tensor | None,
    fp8_w_VD: torch.Tensor | None,
    fp8_w_DV: torch.Tensor | None,
    h_inv_scale: torch.Tensor | None,
    w_inv_scale: torch.Tensor | None,
    fp8_h_DN: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, grad_h, grad_W)``: the mean loss and its gradients for an upstream gradient of 1.

    A gradient that is not needed comes back as an empty tensor and costs nothing. An opaque custom
    op (not a ``triton_op``): compile cannot then re-plan the chunk loop's in-place buffer reuse or swap
    the cuBLAS calls for its own templates, and one dispatch per step costs nothing.

    With the ``fp8_*`` operands (e4m3 copies of h and of W in both layouts, with their inverse scales;
    see :func:`triton_impl`) the logits and ``grad_h`` come from FP8 matmuls; ``grad_W`` stays bf16 unless
    ``fp8_h_DN`` (h's e4m3 copy transposed) is given too: then the row kernel writes only the gradient's e5m2
    copy, :func:`transpose_fp8` turns each chunk of it into a (V, rows) buffer of up to
    :data:`_GRAD_W_GROUP_ELEMENTS` bytes, and one FP8 matmul a group of chunks (K = its rows) adds into
    ``grad_W`` in fp32.
    """
    N, D = h_ND.shape
    V = weight_VD.shape[0]
    h_ND, weight_VD, targets_N = h_ND.contiguous(), weight_VD.contiguous(), targets_N.contiguous()
    n_valid = (targets_N != IGNORE_INDEX).sum()  # stays on the device: no .item(), no sync
    loss_N = torch.empty(N, dtype=torch.float32, device=h_ND.device)
    grad_h_ND = torch.empty_like(h_ND) if need_grad_h else h_ND.new_empty(0)
    rows = min(chunk_rows, N)
    logits_CV = torch.empty((rows, V), dtype=h_ND.dtype, device=h_ND.device)
    fp8 = fp8_h_ND is not None
    grad8_CV = torch.empty((rows, V), dtype=E5M2, device=h_ND.device) if fp8 and need_grad_h else None
    if grad8_CV is not None:
        g_inv_scale = _grad8_inv_scale(n_valid)
    # _scaled_mm wants K = a group's rows to be a multiple of 16; otherwise grad_W stays bf16.
    fp8_grad_w = (grad8_CV is not None and need_grad_w and fp8_h_DN is not None and N % FP8_DIM_MULTIPLE == 0
                  and chunk_rows % FP8_DIM_MULTIPLE == 0)
    if fp8_grad_w:
        group_rows = min(N, max(1, _GRAD_W_GROUP_ELEMENTS // (V * chunk_rows)) * chunk_rows)  # whole chunks
        grad8_VG = torch.empty((V, group_rows), dtype=E5M2, device=h_ND.device)
        group_start = 0
    grad_w_VD = torch.zeros((V, D), dtype=torch.float32, device=h_ND.device) if need_grad_w and not fp8_grad_w \
        else None
    for start in range(0, N, chunk_rows):
        end = min(start + chunk_rows, N)
        h_CD, chunk_CV = h_ND[start:end], logits_CV[: end - start]
        if fp8:
            torch._scaled_mm(fp8_h_ND[start:end], fp8_w_VD.t(), h_inv_scale, w_inv_scale,
                             out_dtype=h_ND.dtype, out=chunk_CV)
        else:
            torch.mm(h_CD, weight_VD.t(), out=chunk_CV)
        grad8_chunk = None if grad8_CV is None else grad8_CV[: end - start]
        cross_entropy_rows(chunk_CV, targets_N[start:end], loss_N[start:end], n_valid,
                           write_grad=need_grad_h or need_grad_w, grad8_CV=grad8_chunk, keep_logits=fp8_grad_w)
        if grad8_chunk is not None:
            torch._scaled_mm(grad8_chunk, fp8_w_DV.t(), g_inv_scale, w_inv_scale,
                             out_dtype=h_ND.dtype, out=grad_h_ND[start:end])
        elif need_grad_h:
            torch.mm(chunk_CV, weight_VD, out=grad_h_ND[start:end])
        if fp8_grad_w:
            transpose_fp8(grad8_chunk, grad8_VG[:, start - group_start: end - group_start])
            if end - group_start == group_rows or end == N:  # the group is full: grad_W += its rows' share
                share_VD = torch._scaled_mm(grad8_VG[:, : end - group_start], fp8_h_DN[:, group_start:end].t(),
                                            g_inv_scale, h_inv_scale, out_dtype=torch.float32)
                grad_w_VD = share_VD if grad_w_VD is None else grad_w_VD.add_(share_VD)
                group_start = end
        elif need_grad_w:
            _accumulate_mm(grad_w_VD, chunk_CV.t(), h_CD)
    # An all-ignored batch gives 0/0 = NaN, as the reference does.
    loss = loss_N.sum() / n_valid
    grad_w = grad_w_VD.to(weight_VD.dtype) if need_grad_w else weight_VD.new_empty(0)
    return loss, grad_h_ND, grad_w


@_linear_cross_entropy.register_fake
def _(h_ND, weight_VD, targets_N, chunk_rows, need_grad_h, need_grad_w, fp8_h_ND, fp8_w_VD, fp8_w_DV, h_inv_scale,
      w_inv_scale, fp8_h_DN):
    grad_h = h_ND.new_empty(h_ND.shape) if need_grad_h else h_ND.new_empty(0)
    grad_w = weight_VD.new_empty(weight_VD.shape) if need_grad_w else weight_VD.new_empty(0)
    return h_ND.new_empty((), dtype=torch.float32), grad_h, grad_w


def _setup_context(ctx, inputs, output) -> None:
    _, grad_h, grad_w = output
    ctx.save_for_backward(grad_h, grad_w)
    ctx.need_grad_h, ctx.need_grad_w = inputs[4], inputs[5]


def _backward(ctx, grad_loss, _grad_grad_h, _grad_grad_w):
    grad_h, grad_w = ctx.saved_tensors
    return (
        grad_h * grad_loss if ctx.need_grad_h else None,
        grad_w * grad_loss if ctx.need_grad_w else None,
        *([None] * 10),
    )


_linear_cross_entropy.register_autograd(_backward, setup_context=_setup_context)


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk: as many as fit :data:`_CHUNK_ELEMENTS` logits (4096 at a 32768 vocabulary), rounded down
    to a multiple of 16 where there are that many, so that the FP8 weight gradient's groups of chunks stay
    multiples of 16 rows, as its matmul needs."""
    rows = _CHUNK_ELEMENTS // vocab_size
    return rows - rows % FP8_DIM_MULTIPLE if rows >= FP8_DIM_MULTIPLE else max(1, rows)


def triton_impl(
    h_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor, *, chunk_rows: int | None = None,
    fp8: bool = False, fp8_grad_w: bool = False,
) -> torch.Tensor:
    """Fused linear + cross-entropy, signature of :func:`model.decoder.linear_cross_entropy_reference`.

    ``chunk_rows`` overrides :func:`default_chunk_rows` (tests use small chunks; benchmarks compare).
    Gradients are computed in the forward only when autograd will ask for them.

    ``fp8`` (see :func:`triton_impl_fp8`): when ``grad_h`` is wanted (training), h and W are quantised
    to e4m3 with one dynamic scale each (plain tensor code, which ``torch.compile`` fuses into the
    producers) and the op computes the logits and ``grad_h`` with FP8 matmuls; ``grad_W`` stays a bf16
    matmul accumulated in fp32. Without ``grad_h`` (evaluation) it computes as without ``fp8``.
    ``fp8_grad_w`` (with ``fp8``; see :func:`triton_impl_fp8_grad_w`) makes ``grad_W`` an FP8 matmul as well.
    """
    if h_ND.dim() != 2 or weight_VD.dim() != 2 or h_ND.shape[1] != weight_VD.shape[1]:
        raise ValueError(f"linear_ce expects h (N, D) and weight (V, D); got {tuple(h_ND.shape)} and "
                         f"{tuple(weight_VD.shape)}")
    if targets_N.shape != h_ND.shape[:1]:
        raise ValueError(f"linear_ce expects one target per row of h: {tuple(targets_N.shape)} targets "
                         f"for {h_ND.shape[0]} rows")
    if h_ND.dtype != weight_VD.dtype:
        raise ValueError(f"linear_ce expects h and weight in one dtype, got {h_ND.dtype} and "
                         f"{weight_VD.dtype}; cast h to the weight's dtype (autocast does not reach this op)")
    grad = torch.is_grad_enabled()
    need_grad_h, need_grad_w = grad and h_ND.requires_grad, grad and weight_VD.requires_grad
    fp8_operands: tuple = (None,) * 6
    if fp8 and need_grad_h:  # FP8 is for training speed; an evaluation (no grad_h) gets the exact loss
        h8_ND, h_inv_scale = quantise_tensorwise(h_ND.detach(), E4M3)
        w8_VD, w_inv_scale = quantise_tensorwise(weight_VD.detach(), E4M3)
        h8_DN = h8_ND.t().contiguous() if fp8_grad_w and need_grad_w else None
        fp8_operands = (h8_ND, w8_VD, w8_VD.t().contiguous(), h_inv_scale, w_inv_scale, h8_DN)
    loss, _, _ = _linear_cross_entropy(
        h_ND,
        weight_VD,
        targets_N,
        chunk_rows or default_chunk_rows(weight_VD.shape[0]),
        need_grad_h,
        need_grad_w,
        *fp8_operands,
    )
    return loss


class _ReferenceFp8(torch.autograd.Function):
    """:func:`triton_impl_fp8`'s arithmetic in plain PyTorch, over the whole (N, V) logits at once; with
    ``fp8_grad_w``, :func:`triton_impl_fp8_grad_w`'s."""

    @staticmethod
    def forward(ctx, h_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor,
                fp8_grad_w: bool) -> torch.Tensor:
        h8_ND, h_inv_scale = quantise_tensorwise(h_ND, E4M3)
        w8_VD, w_inv_scale = quantise_tensorwise(weight_VD, E4M3)
        logits_NV = ((h8_ND.float() @ w8_VD.float().t()) * (h_inv_scale * w_inv_scale)).to(h_ND.dtype).float()
        loss = F.cross_entropy(logits_NV, targets_N, ignore_index=IGNORE_INDEX)
        valid_N = targets_N != IGNORE_INDEX
        n_valid = valid_N.sum()
        # (softmax - onehot) / n_valid on valid rows, 0 on ignored ones, rounded as the kernel writes it
        grad_logits_NV = torch.softmax(logits_NV, dim=-1)
        grad_logits_NV[valid_N, targets_N[valid_N]] -= 1.0
        grad_logits_NV = (grad_logits_NV * (valid_N[:, None] / n_valid.clamp(min=1))).to(h_ND.dtype).float()
        grad8_NV = (grad_logits_NV * (n_valid * GRAD8_SCALE)).to(E5M2)
        g_inv_scale = _grad8_inv_scale(n_valid)
        grad_h_ND = ((grad8_NV.float() @ w8_VD.float()) * (g_inv_scale * w_inv_scale)).to(h_ND.dtype)
        if fp8_grad_w:  # the same e5m2 copy against h's e4m3 one
            grad_w_VD = (grad8_NV.float().t() @ h8_ND.float()) * (g_inv_scale * h_inv_scale)
        else:
            grad_w_VD = grad_logits_NV.t() @ h_ND.float()
        grad_w_VD = grad_w_VD.to(weight_VD.dtype)
        ctx.save_for_backward(grad_h_ND, grad_w_VD)
        return loss

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_h_ND, grad_w_VD = ctx.saved_tensors
        return grad_h_ND * grad_loss, grad_w_VD * grad_loss, None, None


def reference_fp8(h_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor, *,
                  fp8_grad_w: bool = False) -> torch.Tensor:
    """:func:`triton_impl_fp8` written out in plain PyTorch (it materialises the full logits): e4m3 h and W
    with dynamic scales for the logits, the e5m2 copy of their gradient for grad_h, the exact gradient for
    grad_W (``fp8_grad_w``: that e5m2 copy against h's e4m3 one, as :func:`triton_impl_fp8_grad_w`); the
    exact loss when no gradient is wanted. For the tests, and for fast FP8 runs on the CPU
    (``scripts/bench_fp8_head_quality.py``)."""
    if not (torch.is_grad_enabled() and h_ND.requires_grad):
        return reference(h_ND, weight_VD, targets_N)
    return _ReferenceFp8.apply(h_ND, weight_VD, targets_N, fp8_grad_w)


def triton_impl_fp8(
    h_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor, *, chunk_rows: int | None = None
) -> torch.Tensor:
    """:func:`triton_impl` with FP8 matmuls for the logits (e4m3 x e4m3) and ``grad_h`` (e5m2 x e4m3).

    Two of the head's three matmuls at FP8 tensor-core rate, for a precision cost: the logits carry
    e4m3's rounding of h and W (a few per cent relative per logit, ``scripts/bench_fp8.py``) and
    ``grad_h`` e5m2's of the logits' gradient. Needs an FP8 GPU (:func:`model.fp8.fp8_supported`);
    the CPU runs it slowly, for the tests. ``--fp8-lm-head on`` selects it.
    """
    return triton_impl(h_ND, weight_VD, targets_N, chunk_rows=chunk_rows, fp8=True)


def triton_impl_fp8_grad_w(
    h_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor, *, chunk_rows: int | None = None
) -> torch.Tensor:
    """:func:`triton_impl_fp8` with ``grad_W`` an FP8 matmul too (e5m2 gradient x e4m3 h): all three of the head's
    matmuls on FP8 tensor cores.

    FP8 matmuls want their reduction dimension contiguous in both operands, and ``grad_W = dlogits^T @ h``
    reduces over the rows, so the gradient's e5m2 copy is transposed (:func:`transpose_fp8`, one byte read
    and one written an element); in exchange the row kernel no longer writes the bf16 gradient (two bytes an
    element). ``grad_W`` then carries e5m2's rounding of the gradient and e4m3's of h, like ``grad_h``.
    Falls back to :func:`triton_impl_fp8`'s bf16 ``grad_W`` where the rows or the chunk are not a multiple of 16.
    """
    return triton_impl(h_ND, weight_VD, targets_N, chunk_rows=chunk_rows, fp8=True, fp8_grad_w=True)


def bench_cases(preset: str) -> list[dict]:
    """Forward+backward at ``preset``'s d_model: N = 32 x 2048 tokens, V = 32768, bf16.

    The default chunk and two others, so the benchmark table shows what the chunk size buys, and the
    default chunk with the FP8 matmuls (:func:`triton_impl_fp8`, and :func:`triton_impl_fp8_grad_w`, the
    FP8 head the trainer runs), compiled as the model would run it so that the quantisation of h and W is
    fused as it is in training.
    """
    N, D, V = 32 * 2048, PRESETS[preset]["d_model"], 32768

    def make_inputs(device: torch.device) -> tuple:
        h = torch.randn(N, D, device=device, dtype=torch.bfloat16).requires_grad_()
        weight = (0.02 * torch.randn(V, D, device=device)).to(torch.bfloat16).requires_grad_()
        targets = torch.randint(0, V, (N,), device=device)
        targets[::16] = IGNORE_INDEX  # some ignored rows, as prompt masking or padding produce
        return h, weight, targets

    def with_chunk(rows: int) -> Callable:
        return lambda h, weight, targets: triton_impl(h, weight, targets, chunk_rows=rows)

    default = default_chunk_rows(V)
    return [
        {"name": f"linear_ce_{preset}_chunk{rows}", "make_inputs": make_inputs,
         "triton": with_chunk(rows), "reference": reference, "backward": True}
        for rows in (default, default // 2, default * 2)
    ] + [
        {"name": f"linear_ce_{preset}_{name}_chunk{default}", "make_inputs": make_inputs,
         "triton": torch.compile(fn, dynamic=False), "reference": reference, "backward": True}
        for name, fn in (("fp8", triton_impl_fp8), ("fp8_grad_w", triton_impl_fp8_grad_w))
    ]
