"""Fused RMSNorm forward and backward in Triton (SPEC §3 "Triton kernels").

Same maths as :func:`model.decoder.rms_norm_reference`: normalise each row over the last dim in fp32,
cast back to the input dtype, *then* multiply by the weight (HF Qwen3RMSNorm order). Works on any
leading shape: the block norms see ``(B, T, D)``, the per-head q/k norms ``(B, T, H, Hd)``; both are
flattened to ``(M, D)`` rows.

* Forward: one pass, a tile of ``BLOCK_M`` rows per program, stores the output and the per-row
  ``rstd`` (4 bytes a row) so the backward need not recompute the reduction.
* Backward: one pass over ``x`` and ``dy`` that writes ``dx`` and accumulates the weight gradient in
  fp32 registers; each program covers ~128 rows and writes one partial row of ``dw``, and a ``sum``
  over those partial rows finishes it (deterministic, no atomics).

Both are ``torch.library.triton_op`` s: ``torch.compile(fullgraph=True)`` traces the launches into its
graph (no graph break, no custom-op dispatch per call), and eager calls launch the kernels directly.

Shape suffix legend:
    M  rows (every leading dim flattened)
    D  normalised width (d_model, or head_dim for the q/k norms)
    P  programs of the backward kernel (partial weight-gradient rows)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from model.config import PRESETS
from model.decoder import rms_norm_reference
from model.kernels.launch import launcher

reference = rms_norm_reference

# Elements of one (BLOCK_M, BLOCK_D) tile: 8 fp32 values a thread at 8 warps. ptxas (sm_90) then
# gives the backward ~95-130 registers a thread without spills (2 blocks, 16 warps an SM), where
# 4096-element tiles needed ~190 (1 block an SM). Not tuned on the GPU yet: see bench_cases.
_TILE_ELEMENTS = 2048
# Rows per backward program: each writes one fp32 partial row of dw, so the partials cost 1/128 of the
# x and dy traffic, while the 124m/350m shapes still launch >= 512 programs (4 per H100 SM).
_BWD_ROWS_PER_PROGRAM = 128
# One tile holds a whole row; wider rows would spill registers (the presets' widest is 2048).
_MAX_WIDTH = 16384


@triton.jit
def _rms_norm_fwd_kernel(x_ptr, w_ptr, y_ptr, rstd_ptr, n_rows, D, eps,
                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_D)
    row_ok = rows < n_rows
    col_ok = cols < D
    mask = row_ok[:, None] & col_ok[None, :]
    offsets = rows[:, None].to(tl.int64) * D + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / D + eps)  # rsqrt, like the reference
    # The cast to the input dtype before the weight multiply is the reference's rounding point.
    normed = (x * rstd[:, None]).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    tl.store(y_ptr + offsets, (normed * w[None, :]).to(y_ptr.dtype.element_ty), mask=mask)
    tl.store(rstd_ptr + rows, rstd, mask=row_ok)


@triton.jit
def _rms_norm_bwd_kernel(dy_ptr, x_ptr, w_ptr, rstd_ptr, dx_ptr, dw_partial_ptr, n_rows, D,
                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, TILES: tl.constexpr):
    # With n = x * rstd and y = w * n:  dn = dy * w,  dx = rstd * (dn - n * mean(dn * n)),
    # dw = sum over rows of dy * cast(n). Each program handles TILES consecutive row tiles and writes
    # its share of dw as one partial row.
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    dw_acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for tile in range(0, TILES):  # constexpr trip count (the interpreter cannot loop to runtime bounds)
        rows = (pid * TILES + tile) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        mask = row_ok[:, None] & col_ok[None, :]
        offsets = rows[:, None].to(tl.int64) * D + cols[None, :]
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
        rstd = tl.load(rstd_ptr + rows, mask=row_ok, other=0.0)
        normed = x * rstd[:, None]
        dw_acc += dy * normed.to(x_ptr.dtype.element_ty).to(tl.float32)
        dn = dy * w[None, :]
        mean_dn_n = tl.sum(dn * normed, axis=1) / D
        dx = (dn - normed * mean_dn_n[:, None]) * rstd[:, None]
        tl.store(dx_ptr + offsets, dx.to(dx_ptr.dtype.element_ty), mask=mask)
    tl.store(dw_partial_ptr + pid * D + cols, tl.sum(dw_acc, axis=0), mask=col_ok)


def _tile(D: int) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_D, num_warps)`` for rows of width ``D``: whole rows, ~_TILE_ELEMENTS a tile."""
    if D > _MAX_WIDTH:
        raise ValueError(f"the Triton RMSNorm handles rows up to {_MAX_WIDTH} wide, got {D}; "
                         "use --kernels torch for wider models")
    block_d = triton.next_power_of_2(D)
    block_m = max(1, _TILE_ELEMENTS // block_d)
    num_warps = min(32, max(4, block_m * block_d // 256))
    return block_m, block_d, num_warps


@triton_op("eco_train::rms_norm", mutates_args=())
def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    D = int(x.shape[-1])  # concrete launch configuration under dynamic shapes (specialises on the width)
    x_MD = x.reshape(-1, D).contiguous()
    M = x_MD.shape[0]
    y_MD = torch.empty(x_MD.shape, dtype=torch.result_type(weight, x), device=x.device)
    rstd_M = torch.empty(M, dtype=torch.float32, device=x.device)
    block_m, block_d, num_warps = _tile(D)
    launcher(_rms_norm_fwd_kernel)[(triton.cdiv(M, block_m),)](
        x_MD, weight, y_MD, rstd_M, M, D, eps, BLOCK_M=block_m, BLOCK_D=block_d, num_warps=num_warps
    )
    return y_MD.view(x.shape), rstd_M


@triton_op("eco_train::rms_norm_backward", mutates_args=())
def _rms_norm_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, rstd_M: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    D = int(x.shape[-1])  # concrete launch configuration under dynamic shapes (specialises on the width)
    x_MD = x.reshape(-1, D).contiguous()
    dy_MD = dy.reshape(-1, D).contiguous()
    M = x_MD.shape[0]
    dx_MD = torch.empty_like(x_MD)
    block_m, block_d, num_warps = _tile(D)
    tiles = max(1, _BWD_ROWS_PER_PROGRAM // block_m)
    P = triton.cdiv(M, block_m * tiles)
    dw_partial_PD = torch.empty((P, D), dtype=torch.float32, device=x.device)
    launcher(_rms_norm_bwd_kernel)[(P,)](
        dy_MD, x_MD, weight, rstd_M, dx_MD, dw_partial_PD, M, D,
        BLOCK_M=block_m, BLOCK_D=block_d, TILES=tiles, num_warps=num_warps,
    )
    return dx_MD.view(x.shape), dw_partial_PD.sum(0).to(weight.dtype)


def _setup_context(ctx, inputs, output) -> None:
    x, weight, _ = inputs
    _, rstd_M = output
    ctx.save_for_backward(x, weight, rstd_M)


def _backward(ctx, dy, _drstd):
    x, weight, rstd_M = ctx.saved_tensors
    dx, dw = _rms_norm_backward(dy, x, weight, rstd_M)
    return dx, dw, None


_rms_norm.register_autograd(_backward, setup_context=_setup_context)


def triton_impl(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Triton RMSNorm with the signature and numerics of :func:`model.decoder.rms_norm_reference`."""
    if weight.shape != (x.shape[-1],):
        raise ValueError(f"RMSNorm weight of shape {tuple(weight.shape)} does not match rows of width "
                         f"{x.shape[-1]} (input shape {tuple(x.shape)})")
    y, _ = _rms_norm(x, weight, eps)
    return y


def bench_cases(preset: str) -> list[dict]:
    """Benchmark cases at ``preset``'s shapes: 32 sequences of 2048 tokens, bf16.

    The block norm over ``(32, 2048, d_model)`` forward-only and forward+backward, and the per-head
    q and k norms over ``(32, 2048, heads, head_dim)`` forward+backward (one case when they coincide).
    """
    cfg = PRESETS[preset]
    eps = 1e-6

    def inputs(*shape: int) -> Callable:
        def make(device: torch.device) -> tuple:
            x = torch.randn(shape, device=device, dtype=torch.bfloat16, requires_grad=True)
            weight = (1.0 + 0.1 * torch.randn(shape[-1], device=device)).to(torch.bfloat16).requires_grad_()
            return x, weight, eps
        return make

    block = (32, 2048, cfg["d_model"])
    heads = {"q_norm": cfg["n_head"]} if cfg["n_head"] == cfg["n_kv_head"] else {
        "q_norm": cfg["n_head"], "k_norm": cfg["n_kv_head"]}
    cases = [
        {"name": f"rms_norm_{preset}_block_fwd", "make_inputs": inputs(*block), "triton": triton_impl,
         "reference": reference, "backward": False},
        {"name": f"rms_norm_{preset}_block_fwd_bwd", "make_inputs": inputs(*block), "triton": triton_impl,
         "reference": reference, "backward": True},
    ]
    for name, n_heads in heads.items():
        cases.append({"name": f"rms_norm_{preset}_{name}_fwd_bwd",
                      "make_inputs": inputs(32, 2048, n_heads, cfg["head_dim"]),
                      "triton": triton_impl, "reference": reference, "backward": True})
    return cases
