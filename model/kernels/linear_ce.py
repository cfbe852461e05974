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

from collections.abc import Callable

import torch
import triton
import triton.language as tl

from model.config import PRESETS
from model.decoder import IGNORE_INDEX, linear_cross_entropy_reference

reference = linear_cross_entropy_reference

# Elements of one chunk's logits buffer: 2**27 = 256 MiB in bf16, i.e. 4096 rows at a 32768 vocabulary.
# The chunk's three matmuls then have M or K >= 4096 (cuBLAS near peak), and the fp32 read-modify-write
# of grad_W that each chunk costs (V x D x 8 bytes) stays small next to its 6 x C x V x D flops.
_CHUNK_ELEMENTS = 1 << 27
# Vocabulary columns per step of the two-pass row kernel, and its warps: 16 values a thread.
_BLOCK_V = 4096
_TWO_PASS_WARPS = 8
# Widest row the one-pass row kernel holds in registers, and its warps: 32768 fp32 values over 16 warps
# are 64 a thread.
_ONE_PASS_MAX_V = 32768
_ONE_PASS_WARPS = 16


@triton.jit
def _cross_entropy_rows_kernel(logits_ptr, stride_row, targets_ptr, loss_ptr, n_valid_ptr, ignore_index,
                               V: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr,
                               ONE_PASS: tl.constexpr):
    """One program per row: loss = logsumexp(row) - row[target]; optionally row <- dloss/drow.

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
        if ONE_PASS:  # the row is still in registers (e, cols, col_ok from the first branch)
            grad = (e * (1.0 / s) - (cols == target).to(tl.float32)) * scale
            tl.store(row_ptr + cols, grad.to(logits_ptr.dtype.element_ty), mask=col_ok)
        else:
            for start in range(0, V, BLOCK_V):
                cols = start + tl.arange(0, BLOCK_V)
                col_ok = cols < V
                x = tl.load(row_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
                grad = (tl.exp(x - lse) - (cols == target).to(tl.float32)) * scale
                tl.store(row_ptr + cols, grad.to(logits_ptr.dtype.element_ty), mask=col_ok)


def cross_entropy_rows(logits_CV: torch.Tensor, targets_C: torch.Tensor, loss_C: torch.Tensor,
                       n_valid: torch.Tensor, *, write_grad: bool, one_pass: bool | None = None,
                       num_warps: int | None = None) -> None:
    """Launch :func:`_cross_entropy_rows_kernel` over the rows of ``logits_CV`` (contiguous rows).

    ``one_pass`` and ``num_warps`` default to what ``scripts/bench_ce_rows.py`` measured fastest on the
    H100; the benchmark passes them to compare.
    """
    C, V = logits_CV.shape
    if one_pass is None:
        one_pass = V <= _ONE_PASS_MAX_V
    block_v = triton.next_power_of_2(V) if one_pass else min(_BLOCK_V, triton.next_power_of_2(V))
    if num_warps is None:
        num_warps = _ONE_PASS_WARPS if one_pass else _TWO_PASS_WARPS
    _cross_entropy_rows_kernel[(C,)](
        logits_CV, logits_CV.stride(0), targets_C, loss_C, n_valid, IGNORE_INDEX,
        V=V, WRITE_GRAD=write_grad, BLOCK_V=block_v, ONE_PASS=one_pass, num_warps=num_warps,
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, grad_h, grad_W)``: the mean loss and its gradients for an upstream gradient of 1.

    A gradient that is not needed comes back as an empty tensor and costs nothing. An opaque custom
    op (not a ``triton_op``): compile cannot then re-plan the chunk loop's in-place buffer reuse or swap
    the cuBLAS calls for its own templates, and one dispatch per step costs nothing.
    """
    N, D = h_ND.shape
    V = weight_VD.shape[0]
    h_ND, weight_VD, targets_N = h_ND.contiguous(), weight_VD.contiguous(), targets_N.contiguous()
    n_valid = (targets_N != IGNORE_INDEX).sum()  # stays on the device: no .item(), no sync
    loss_N = torch.empty(N, dtype=torch.float32, device=h_ND.device)
    grad_h_ND = torch.empty_like(h_ND) if need_grad_h else h_ND.new_empty(0)
    grad_w_VD = torch.zeros((V, D), dtype=torch.float32, device=h_ND.device) if need_grad_w else None
    logits_CV = torch.empty((min(chunk_rows, N), V), dtype=h_ND.dtype, device=h_ND.device)
    for start in range(0, N, chunk_rows):
        end = min(start + chunk_rows, N)
        h_CD, chunk_CV = h_ND[start:end], logits_CV[: end - start]
        torch.mm(h_CD, weight_VD.t(), out=chunk_CV)
        cross_entropy_rows(chunk_CV, targets_N[start:end], loss_N[start:end], n_valid,
                           write_grad=need_grad_h or need_grad_w)
        if need_grad_h:
            torch.mm(chunk_CV, weight_VD, out=grad_h_ND[start:end])
        if need_grad_w:
            _accumulate_mm(grad_w_VD, chunk_CV.t(), h_CD)
    # An all-ignored batch gives 0/0 = NaN, as the reference does.
    loss = loss_N.sum() / n_valid
    grad_w = grad_w_VD.to(weight_VD.dtype) if need_grad_w else weight_VD.new_empty(0)
    return loss, grad_h_ND, grad_w


@_linear_cross_entropy.register_fake
def _(h_ND, weight_VD, targets_N, chunk_rows, need_grad_h, need_grad_w):
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
        None,
        None,
        None,
        None,
    )


_linear_cross_entropy.register_autograd(_backward, setup_context=_setup_context)


def default_chunk_rows(vocab_size: int) -> int:
    """Rows per chunk: as many as fit :data:`_CHUNK_ELEMENTS` logits (4096 at a 32768 vocabulary)."""
    return max(1, _CHUNK_ELEMENTS // vocab_size)


def triton_impl(
    h_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor, *, chunk_rows: int | None = None
) -> torch.Tensor:
    """Fused linear + cross-entropy, signature of :func:`model.decoder.linear_cross_entropy_reference`.

    ``chunk_rows`` overrides :func:`default_chunk_rows` (tests use small chunks; benchmarks compare).
    Gradients are computed in the forward only when autograd will ask for them.
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
    loss, _, _ = _linear_cross_entropy(
        h_ND,
        weight_VD,
        targets_N,
        chunk_rows or default_chunk_rows(weight_VD.shape[0]),
        grad and h_ND.requires_grad,
        grad and weight_VD.requires_grad,
    )
    return loss


def bench_cases(preset: str) -> list[dict]:
    """Forward+backward at ``preset``'s d_model: N = 32 x 2048 tokens, V = 32768, bf16.

    The default chunk and two others, so the benchmark table shows what the chunk size buys.
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
    ]
