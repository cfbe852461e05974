"""Per-head QK RMSNorm and rotary embedding in one Triton kernel, forward and backward (SPEC §3).

Same maths as :func:`model.decoder.qk_norm_rope_reference`, i.e. ``apply_rope(rms_norm(x))`` on
queries or keys laid out as ``(B, T, heads, Hd)``. Compiled, the reference is two kernels each way
on the H100: the forward is one fused pass, but the backward splits at the norm, whose weight
gradient is a reduction over every row, into a RoPE pass (read dy, write d(normed)) and a norm pass
(read d(normed) and x, write dx). Here one pass reads ``dy`` and ``x`` and writes ``dx``, and the
weight gradient comes out as per-program partial rows that a ``sum`` finishes (deterministic, no
atomics). Nothing is saved for the backward but ``x``: its per-row ``rstd`` is recomputed from the
row the backward reads anyway.

Rounding follows the reference in the activations' dtype: the normalised row is cast before the
weight multiply (HF Qwen3RMSNorm), and the weighted row and the RoPE sum are rounded as the
reference's ops round them. Each RoPE product is rounded too, unless the compiler contracts it with
the sum into one fused multiply-add (as Triton does on the H100 by default, and Inductor's kernel for
the reference may as well); the result is then one rounding closer to exact than eager PyTorch's, and
~17% of the bf16 outputs differ from eager's by one unit in the last place (~2e-6 with fusion off).
The backward computes in fp32 throughout.

A row is handled as its two halves, the pairs that rotate together (HF/GPT-NeoX RoPE: element ``i``
with ``i + Hd/2``). With ``n = w * cast(x * rstd)`` and ``y = n * cos + rotate_half(n) * sin``:
    forward   y1 = n1 * cos1 - n2 * sin1        y2 = n2 * cos2 + n1 * sin2
    backward  dn1 = dy1 * cos1 + dy2 * sin2     dn2 = dy2 * cos2 - dy1 * sin1
              dw = sum over rows of dn * cast(x * rstd);   then the RMSNorm backward for dx

Both are ``torch.library.triton_op`` s, so ``torch.compile(fullgraph=True)`` traces the launches.
The output gradient may arrive with any row strides (the attention backward's layout); only the last
dim must be contiguous, else it is copied once.

Shape suffix legend:
    B  batch, T  positions, N  heads (query or key/value), Hd  head_dim (HALF in the kernels: Hd / 2)
    M  rows (B x T x N)
    P  programs of the backward kernel (partial weight-gradient rows)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from model.config import PRESETS
from model.decoder import qk_norm_rope_reference, rope_tables
from model.kernels.launch import launcher

reference = qk_norm_rope_reference

# Elements of one (BLOCK_M, BLOCK_H) half-row tile, and of each half a thread holds: forward and
# backward. Swept on the H100 at the 124m queries, (32, 2048, 6, 128) bf16, against a 71.6 us copy of
# the same bytes: the forward takes 73.8 us at 16 rows x 8 warps (75.4 at 32 x 8); the backward 123.6 us
# at 16 rows x 4 warps (149.5 at 32 x 8, where 114 registers a thread left 2 blocks an SM), against
# Inductor's 81 us forward and ~176 us for its two backward kernels in the training step's profile.
_TILE_ELEMENTS = 1024
_FWD_PER_THREAD = 4
_BWD_PER_THREAD = 8
# Rows per backward program: each writes one fp32 partial row of dw (1/256 of the x and dy traffic at
# Hd = 128), and the 124m/350m shapes still launch >= 1024 programs (~8 an H100 SM).
_BWD_ROWS_PER_PROGRAM = 256
_MAX_HEAD_DIM = 1024


@triton.jit
def _rows(rows, T, N, s_b, s_t, s_n):
    """Element offsets of rows ``rows`` (flattened b, t, n) under strides (s_b, s_t, s_n), and their t."""
    n = rows % N
    t = (rows // N) % T
    b = rows // (N * T)
    return b.to(tl.int64) * s_b + t.to(tl.int64) * s_t + n.to(tl.int64) * s_n, t


@triton.jit
def _qk_norm_rope_fwd_kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, y_ptr, n_rows, T, N, HALF, eps,
                             BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_H)
    row_ok = rows < n_rows
    col_ok = cols < HALF
    mask = row_ok[:, None] & col_ok[None, :]
    x_dtype = x_ptr.dtype.element_ty
    y_dtype = y_ptr.dtype.element_ty
    offsets = rows[:, None].to(tl.int64) * (2 * HALF) + cols[None, :]  # x and y are contiguous
    x1 = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + offsets + HALF, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * HALF) + eps)
    w1 = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + HALF + cols, mask=col_ok, other=0.0).to(tl.float32)
    n1 = (w1[None, :] * (x1 * rstd[:, None]).to(x_dtype).to(tl.float32)).to(y_dtype).to(tl.float32)
    n2 = (w2[None, :] * (x2 * rstd[:, None]).to(x_dtype).to(tl.float32)).to(y_dtype).to(tl.float32)
    # The tables are fp32 (T, Hd); the reference casts them to the output dtype first.
    t = (rows // N) % T
    table = t[:, None].to(tl.int64) * (2 * HALF) + cols[None, :]
    cos1 = tl.load(cos_ptr + table, mask=mask, other=0.0).to(y_dtype).to(tl.float32)
    cos2 = tl.load(cos_ptr + table + HALF, mask=mask, other=0.0).to(y_dtype).to(tl.float32)
    sin1 = tl.load(sin_ptr + table, mask=mask, other=0.0).to(y_dtype).to(tl.float32)
    sin2 = tl.load(sin_ptr + table + HALF, mask=mask, other=0.0).to(y_dtype).to(tl.float32)
    y1 = (n1 * cos1).to(y_dtype).to(tl.float32) - (n2 * sin1).to(y_dtype).to(tl.float32)
    y2 = (n2 * cos2).to(y_dtype).to(tl.float32) + (n1 * sin2).to(y_dtype).to(tl.float32)
    tl.store(y_ptr + offsets, y1.to(y_dtype), mask=mask)
    tl.store(y_ptr + offsets + HALF, y2.to(y_dtype), mask=mask)


@triton.jit
def _qk_norm_rope_bwd_kernel(dy_ptr, x_ptr, w_ptr, cos_ptr, sin_ptr, dx_ptr, dw_partial_ptr, n_rows, T, N,
                             HALF, eps, s_b, s_t, s_n,
                             BLOCK_M: tl.constexpr, BLOCK_H: tl.constexpr, TILES: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < HALF
    x_dtype = x_ptr.dtype.element_ty
    w1 = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    w2 = tl.load(w_ptr + HALF + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw1 = tl.zeros((BLOCK_M, BLOCK_H), dtype=tl.float32)
    dw2 = tl.zeros((BLOCK_M, BLOCK_H), dtype=tl.float32)
    for tile in range(0, TILES):  # constexpr trip count (the interpreter cannot loop to runtime bounds)
        rows = (pid * TILES + tile) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        offsets = rows[:, None].to(tl.int64) * (2 * HALF) + cols[None, :]  # x and dx are contiguous
        dy_rows, t = _rows(rows, T, N, s_b, s_t, s_n)
        dy_offsets = dy_rows[:, None] + cols[None, :]
        x1 = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + offsets + HALF, mask=mask, other=0.0).to(tl.float32)
        dy1 = tl.load(dy_ptr + dy_offsets, mask=mask, other=0.0).to(tl.float32)
        dy2 = tl.load(dy_ptr + dy_offsets + HALF, mask=mask, other=0.0).to(tl.float32)
        table = t[:, None].to(tl.int64) * (2 * HALF) + cols[None, :]
        y_dtype = dy_ptr.dtype.element_ty
        cos1 = tl.load(cos_ptr + table, mask=mask, other=0.0).to(y_dtype).to(tl.float32)
        cos2 = tl.load(cos_ptr + table + HALF, mask=mask, other=0.0).to(y_dtype).to(tl.float32)
        sin1 = tl.load(sin_ptr + table, mask=mask, other=0.0).to(y_dtype).to(tl.float32)
        sin2 = tl.load(sin_ptr + table + HALF, mask=mask, other=0.0).to(y_dtype).to(tl.float32)
        dn1 = dy1 * cos1 + dy2 * sin2
        dn2 = dy2 * cos2 - dy1 * sin1
        rstd = tl.rsqrt((tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * HALF) + eps)
        xhat1 = x1 * rstd[:, None]
        xhat2 = x2 * rstd[:, None]
        dw1 += dn1 * xhat1.to(x_dtype).to(tl.float32)
        dw2 += dn2 * xhat2.to(x_dtype).to(tl.float32)
        dxhat1 = dn1 * w1[None, :]
        dxhat2 = dn2 * w2[None, :]
        mean = (tl.sum(dxhat1 * xhat1, axis=1) + tl.sum(dxhat2 * xhat2, axis=1)) / (2 * HALF)
        dx1 = (dxhat1 - xhat1 * mean[:, None]) * rstd[:, None]
        dx2 = (dxhat2 - xhat2 * mean[:, None]) * rstd[:, None]
        tl.store(dx_ptr + offsets, dx1.to(dx_ptr.dtype.element_ty), mask=mask)
        tl.store(dx_ptr + offsets + HALF, dx2.to(dx_ptr.dtype.element_ty), mask=mask)
    partial = dw_partial_ptr + pid * (2 * HALF)
    tl.store(partial + cols, tl.sum(dw1, axis=0), mask=col_ok)
    tl.store(partial + HALF + cols, tl.sum(dw2, axis=0), mask=col_ok)


def _tile(head_dim: int, per_thread: int) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_H, num_warps)``: whole half-rows, ~_TILE_ELEMENTS a half-tile, ``per_thread``
    elements of each half a thread."""
    block_h = triton.next_power_of_2(head_dim // 2)
    block_m = max(1, _TILE_ELEMENTS // block_h)
    num_warps = min(16, max(1, block_m * block_h // (32 * per_thread)))
    return block_m, block_h, num_warps


@triton_op("eco_train::qk_norm_rope", mutates_args=())
def _qk_norm_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  eps: float) -> torch.Tensor:
    B, T, N, _ = x.shape
    Hd = int(x.shape[-1])  # concrete launch configuration under dynamic shapes (specialises on head_dim)
    x = x.contiguous()
    y = torch.empty(x.shape, dtype=torch.result_type(weight, x), device=x.device)
    block_m, block_h, num_warps = _tile(Hd, _FWD_PER_THREAD)
    M = B * T * N
    launcher(_qk_norm_rope_fwd_kernel)[(triton.cdiv(M, block_m),)](
        x, weight, cos, sin, y, M, T, N, Hd // 2, eps, BLOCK_M=block_m, BLOCK_H=block_h, num_warps=num_warps
    )
    return y


@triton_op("eco_train::qk_norm_rope_backward", mutates_args=())
def _qk_norm_rope_backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor,
                           sin: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    B, T, N, _ = x.shape
    Hd = int(x.shape[-1])
    x = x.contiguous()
    if dy.stride(-1) != 1:
        dy = dy.contiguous()
    dx = torch.empty_like(x)
    block_m, block_h, num_warps = _tile(Hd, _BWD_PER_THREAD)
    M = B * T * N
    tiles = max(1, _BWD_ROWS_PER_PROGRAM // block_m)
    P = triton.cdiv(M, block_m * tiles)
    dw_partial_PHd = torch.empty((P, Hd), dtype=torch.float32, device=x.device)
    launcher(_qk_norm_rope_bwd_kernel)[(P,)](
        dy, x, weight, cos, sin, dx, dw_partial_PHd, M, T, N, Hd // 2, eps,
        dy.stride(0), dy.stride(1), dy.stride(2),
        BLOCK_M=block_m, BLOCK_H=block_h, TILES=tiles, num_warps=num_warps,
    )
    return dx, dw_partial_PHd.sum(0).to(weight.dtype)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, cos, sin, eps = inputs
    ctx.save_for_backward(x, weight, cos, sin)
    ctx.eps = eps


def _backward(ctx, dy):
    x, weight, cos, sin = ctx.saved_tensors
    dx, dw = _qk_norm_rope_backward(dy, x, weight, cos, sin, ctx.eps)
    return dx, dw, None, None, None


_qk_norm_rope.register_autograd(_backward, setup_context=_setup_context)


def triton_impl(x_BTNHd: torch.Tensor, weight_Hd: torch.Tensor, cos_THd: torch.Tensor, sin_THd: torch.Tensor,
                eps: float) -> torch.Tensor:
    """Fused QK RMSNorm + RoPE with the signature and numerics of :func:`qk_norm_rope_reference`."""
    if x_BTNHd.dim() != 4:
        raise ValueError(f"qk_norm_rope expects x as (B, T, heads, head_dim), got shape {tuple(x_BTNHd.shape)}")
    Hd = x_BTNHd.shape[-1]
    if Hd % 2 or Hd > _MAX_HEAD_DIM:
        raise ValueError(f"qk_norm_rope needs an even head_dim of at most {_MAX_HEAD_DIM}, got {Hd}; "
                         "use --kernels torch for this model")
    if weight_Hd.shape != (Hd,):
        raise ValueError(f"QK norm weight of shape {tuple(weight_Hd.shape)} does not match head_dim {Hd}")
    T = x_BTNHd.shape[1]
    if cos_THd.shape != (T, Hd) or sin_THd.shape != (T, Hd):
        raise ValueError(f"RoPE tables of shapes {tuple(cos_THd.shape)} / {tuple(sin_THd.shape)} do not match "
                         f"(T, head_dim) = ({T}, {Hd})")
    return _qk_norm_rope(x_BTNHd, weight_Hd, cos_THd.float().contiguous(), sin_THd.float().contiguous(), eps)


def bench_cases(preset: str) -> list[dict]:
    """Forward+backward on the queries and on the keys at ``preset``'s shapes: 32 x 2048 tokens, bf16."""
    cfg = PRESETS[preset]
    T, Hd = 2048, cfg["head_dim"]

    def inputs(n_heads: int) -> Callable:
        def make(device: torch.device) -> tuple:
            x = torch.randn(32, T, n_heads, Hd, device=device, dtype=torch.bfloat16, requires_grad=True)
            weight = (1.0 + 0.1 * torch.randn(Hd, device=device)).to(torch.bfloat16).requires_grad_()
            cos, sin = rope_tables(Hd, T, cfg.get("rope_theta", 1e6), device)
            return x, weight, cos, sin, 1e-6
        return make

    heads = {"q": cfg["n_head"]} if cfg["n_head"] == cfg["n_kv_head"] else {"q": cfg["n_head"], "k": cfg["n_kv_head"]}
    return [{"name": f"qk_norm_rope_{preset}_{name}_fwd_bwd", "make_inputs": inputs(n), "triton": triton_impl,
             "reference": reference, "backward": True} for name, n in heads.items()]
