"""The SwiGLU MLP with its element-wise work inside the matmuls' epilogues (SPEC §3 "Triton kernels").

Same maths as :func:`model.decoder.swiglu_mlp_reference`, ``down(silu(gate(x)) * up(x))``. Compiled,
the reference is cuBLAS matmuls with Inductor's element-wise kernels between them, each of which moves
whole ``(M, F)`` activations through memory at the card's bandwidth:

    forward   gate/up matmuls write g and u; a kernel reads g, u and writes h = silu(g) * u
    backward  the down projection's input gradient writes dh; a kernel reads dh, g, u, writes dg, du

Here the first kernel computes the gate and up products of one output tile together (one read of the
x tile feeds both) and writes g, u and h from registers; the second computes dh for a tile and turns
it into dg and du in its epilogue, so dh never reaches memory. That saves two of the forward's five
activation passes and two of the backward's six. The other matmuls stay cuBLAS: ``y = h Wd^T``,
``dWd = dy^T h``, and with dg and du written side by side as one ``(M, 2F)`` tensor, ``dx = [dg du]
[Wg; Wu]`` and ``[dWg; dWu] = [dg du]^T x`` are one matmul each.

Rounding: g and u are rounded to the activations' dtype (the reference's matmul outputs), h is
computed in fp32 from them and rounded once. dh stays fp32 (the reference rounds it), so dg and du are
one rounding closer to exact than the reference's.

The fused path needs the reduction dims (d_model for the forward, d_model again for the backward's
dh) to be multiples of 16; :func:`triton_impl` falls back to the reference otherwise.

Shape suffix legend:
    M  rows (every leading dim of x flattened)
    D  d_model
    F  d_ff
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch.library import triton_op

from model.config import PRESETS
from model.decoder import swiglu_mlp_reference
from model.kernels.launch import launcher

reference = swiglu_mlp_reference

# Launch shapes (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) for the GPU; GROUP_M tiles of M share
# the weight tiles in L2. Not swept on the H100 yet.
FWD_CONFIG = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)
BWD_CONFIG = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=4)
GROUP_M = 8
# The CPU tests run the kernels in Triton's interpreter: small tiles, several of them at tiny shapes.
_INTERPRETER_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=1, num_stages=1)
_K_MULTIPLE = 16


@triton.jit
def _tile_coords(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Row and column tile of program ``pid``: GROUP_M row tiles walk the columns together (L2 reuse)."""
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(tiles_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_m, (pid % per_group) // group_m


@triton.jit
def _swiglu_fwd_kernel(x_ptr, wg_ptr, wu_ptr, g_ptr, u_ptr, h_ptr, M, F, K: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, ITERS: tl.constexpr,
                       FLATTEN: tl.constexpr):
    """g = x Wg^T, u = x Wu^T and h = silu(g) * u, tile by tile: (BLOCK_M, BLOCK_N) of each."""
    # ITERS tiles a program, strided by the grid; the last ones repeat the final tile (same values written).
    last = tl.cdiv(M, BLOCK_M) * tl.cdiv(F, BLOCK_N) - 1
    for i in tl.range(0, ITERS, flatten=FLATTEN):
        tile = tl.minimum(tl.program_id(0) + i * tl.num_programs(0), last)
        _swiglu_fwd_tile(tile, x_ptr, wg_ptr, wu_ptr, g_ptr, u_ptr, h_ptr, M, F, K, BLOCK_M, BLOCK_N, BLOCK_K,
                         GROUP_M, IEEE, UPCAST)


@triton.jit
def _swiglu_fwd_tile(tile, x_ptr, wg_ptr, wu_ptr, g_ptr, u_ptr, h_ptr, M, F, K: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    pid_m, pid_n = _tile_coords(tile, M, F, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    # Out-of-range rows and columns read wrapped-around addresses; their results are never stored.
    x_ptrs = x_ptr + (rows % M)[:, None].to(tl.int64) * K + ks[None, :]
    w_offsets = (cols % F)[None, :].to(tl.int64) * K + ks[:, None]  # the (BLOCK_K, BLOCK_N) tile of W^T
    wg_ptrs = wg_ptr + w_offsets
    wu_ptrs = wu_ptr + w_offsets
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    precision: tl.constexpr = "ieee" if IEEE else "tf32"
    for _ in range(0, K // BLOCK_K):
        a, bg, bu = tl.load(x_ptrs), tl.load(wg_ptrs), tl.load(wu_ptrs)
        if UPCAST:
            a, bg, bu = a.to(tl.float32), bg.to(tl.float32), bu.to(tl.float32)
        acc_g = tl.dot(a, bg, acc_g, input_precision=precision)
        acc_u = tl.dot(a, bu, acc_u, input_precision=precision)
        x_ptrs += BLOCK_K
        wg_ptrs += BLOCK_K
        wu_ptrs += BLOCK_K
    out_dtype = g_ptr.dtype.element_ty
    g = acc_g.to(out_dtype)
    u = acc_u.to(out_dtype)
    g32 = g.to(tl.float32)
    h = g32 * tl.sigmoid(g32) * u.to(tl.float32)
    offsets = rows[:, None].to(tl.int64) * F + cols[None, :]
    mask = (rows < M)[:, None] & (cols < F)[None, :]
    tl.store(g_ptr + offsets, g, mask=mask)
    tl.store(u_ptr + offsets, u, mask=mask)
    tl.store(h_ptr + offsets, h.to(out_dtype), mask=mask)


@triton.jit
def _swiglu_bwd_kernel(dy_ptr, wd_ptr, g_ptr, u_ptr, dgu_ptr, M, F, D: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, ITERS: tl.constexpr,
                       FLATTEN: tl.constexpr, PREFETCH: tl.constexpr):
    """dh = dy Wd, then dg and du from it into dgu = [dg du] (M, 2F), tile by tile: (BLOCK_M, BLOCK_N) of dh."""
    # ITERS tiles a program, strided by the grid; the last ones repeat the final tile (same values written).
    last = tl.cdiv(M, BLOCK_M) * tl.cdiv(F, BLOCK_N) - 1
    for i in tl.range(0, ITERS, flatten=FLATTEN):
        tile = tl.minimum(tl.program_id(0) + i * tl.num_programs(0), last)
        _swiglu_bwd_tile(tile, dy_ptr, wd_ptr, g_ptr, u_ptr, dgu_ptr, M, F, D, BLOCK_M, BLOCK_N, BLOCK_K,
                         GROUP_M, IEEE, UPCAST, PREFETCH)


@triton.jit
def _swiglu_bwd_tile(tile, dy_ptr, wd_ptr, g_ptr, u_ptr, dgu_ptr, M, F, D: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, PREFETCH: tl.constexpr):
    pid_m, pid_n = _tile_coords(tile, M, F, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offsets = rows[:, None].to(tl.int64) * F + cols[None, :]
    mask = (rows < M)[:, None] & (cols < F)[None, :]
    if PREFETCH:  # issue the epilogue's loads first, so they arrive while the tile's products run
        g_in = tl.load(g_ptr + offsets, mask=mask, other=0.0)
        u_in = tl.load(u_ptr + offsets, mask=mask, other=0.0)
    ks = tl.arange(0, BLOCK_K)
    dy_ptrs = dy_ptr + (rows % M)[:, None].to(tl.int64) * D + ks[None, :]
    wd_ptrs = wd_ptr + ks[:, None].to(tl.int64) * F + (cols % F)[None, :]  # Wd is (D, F), row-major
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    precision: tl.constexpr = "ieee" if IEEE else "tf32"
    for _ in range(0, D // BLOCK_K):
        a, b = tl.load(dy_ptrs), tl.load(wd_ptrs)
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=precision)
        dy_ptrs += BLOCK_K
        wd_ptrs += BLOCK_K * F
    if not PREFETCH:
        g_in = tl.load(g_ptr + offsets, mask=mask, other=0.0)
        u_in = tl.load(u_ptr + offsets, mask=mask, other=0.0)
    g = g_in.to(tl.float32)
    u = u_in.to(tl.float32)
    sig = tl.sigmoid(g)
    dg = acc * u * sig * (1.0 + g * (1.0 - sig))
    du = acc * g * sig
    out_dtype = dgu_ptr.dtype.element_ty
    dgu_offsets = rows[:, None].to(tl.int64) * (2 * F) + cols[None, :]
    tl.store(dgu_ptr + dgu_offsets, dg.to(out_dtype), mask=mask)
    tl.store(dgu_ptr + dgu_offsets + F, du.to(out_dtype), mask=mask)


def _launch_args(x: torch.Tensor, config: dict, K: int) -> dict:
    """The kernels' compile-time arguments for operands like ``x``: ``config`` on the GPU, small tiles in
    the interpreter (BLOCK_K shrinks to divide K), exact fp32 products for fp32 operands."""
    chosen = dict(config if x.device.type == "cuda" else _INTERPRETER_CONFIG)
    while K % chosen["BLOCK_K"]:
        chosen["BLOCK_K"] //= 2
    # The interpreter's tl.dot returns garbage on bf16 tiles (triton 3.6): it gets them as fp32 (exact).
    return dict(GROUP_M=GROUP_M, FLATTEN=False) | chosen | dict(IEEE=x.dtype == torch.float32,
                                                                 UPCAST=x.device.type != "cuda")


def _grid(M: int, F: int, args: dict, device: torch.device) -> tuple[tuple[int], int]:
    """``(grid, ITERS)``: one program per output tile, or with ``PROGRAMS_PER_SM`` that many per SM (or
    ``PROGRAMS`` in all; both taken out of ``args``), each looping over ITERS tiles."""
    tiles = triton.cdiv(M, args["BLOCK_M"]) * triton.cdiv(F, args["BLOCK_N"])
    per_sm, programs = args.pop("PROGRAMS_PER_SM", 0), args.pop("PROGRAMS", 0)
    if per_sm and device.type == "cuda":
        programs = per_sm * torch.cuda.get_device_properties(device).multi_processor_count
    programs = min(tiles, programs or tiles)
    return (programs,), triton.cdiv(tiles, programs)


def swiglu_forward(x_MD: torch.Tensor, wg_FD: torch.Tensor, wu_FD: torch.Tensor,
                   config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(g, u, h)`` for contiguous ``x_MD`` and weights; ``config`` overrides :data:`FWD_CONFIG` (sweeps)."""
    M, D = x_MD.shape
    F = wg_FD.shape[0]
    g, u, h = (torch.empty((M, F), dtype=x_MD.dtype, device=x_MD.device) for _ in range(3))
    args = _launch_args(x_MD, config or FWD_CONFIG, D)
    grid, args["ITERS"] = _grid(M, F, args, x_MD.device)
    launcher(_swiglu_fwd_kernel)[grid](x_MD, wg_FD, wu_FD, g, u, h, M, F, D, **args)
    return g, u, h


def swiglu_backward_dgu(dy_MD: torch.Tensor, wd_DF: torch.Tensor, g_MF: torch.Tensor, u_MF: torch.Tensor,
                        config: dict | None = None) -> torch.Tensor:
    """``[dg du]`` as one ``(M, 2F)`` tensor, from contiguous operands; ``config`` overrides :data:`BWD_CONFIG`."""
    M, D = dy_MD.shape
    F = wd_DF.shape[1]
    dgu = torch.empty((M, 2 * F), dtype=g_MF.dtype, device=g_MF.device)
    args = _launch_args(dy_MD, config or BWD_CONFIG, D)
    grid, args["ITERS"] = _grid(M, F, args, dy_MD.device)
    launcher(_swiglu_bwd_kernel)[grid](dy_MD, wd_DF, g_MF, u_MF, dgu, M, F, D, **{"PREFETCH": False} | args)
    return dgu


@triton_op("eco_train::swiglu_mlp", mutates_args=())
def _swiglu_mlp(x_MD: torch.Tensor, wg_FD: torch.Tensor, wu_FD: torch.Tensor,
                wd_DF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(y, g, u, h)``; g, u and h are what the backward needs."""
    g, u, h = swiglu_forward(x_MD, wg_FD, wu_FD)
    return torch.mm(h, wd_DF.t()), g, u, h


@triton_op("eco_train::swiglu_mlp_backward", mutates_args=())
def _swiglu_mlp_backward(dy_MD: torch.Tensor, x_MD: torch.Tensor, wg_FD: torch.Tensor, wu_FD: torch.Tensor,
                         wd_DF: torch.Tensor, g_MF: torch.Tensor, u_MF: torch.Tensor, h_MF: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx, dWg, dWu, dWd)``."""
    F = wg_FD.shape[0]
    dy_MD = dy_MD.contiguous()
    dgu_M2F = swiglu_backward_dgu(dy_MD, wd_DF, g_MF, u_MF)
    dx_MD = torch.mm(dgu_M2F, torch.cat((wg_FD, wu_FD)))
    dw_gu_2FD = torch.mm(dgu_M2F.t(), x_MD)
    return dx_MD, dw_gu_2FD[:F].clone(), dw_gu_2FD[F:].clone(), torch.mm(dy_MD.t(), h_MF)


def _setup_context(ctx, inputs, output) -> None:
    _, g, u, h = output
    ctx.save_for_backward(*inputs, g, u, h)


def _backward(ctx, dy, _dg, _du, _dh):
    return _swiglu_mlp_backward(dy, *ctx.saved_tensors)


_swiglu_mlp.register_autograd(_backward, setup_context=_setup_context)


def fusable(x: torch.Tensor, w_gate_FD: torch.Tensor, w_up_FD: torch.Tensor, w_down_DF: torch.Tensor) -> bool:
    """Whether :func:`triton_impl` takes the fused path for these operands (else it runs the reference)."""
    F, D = w_gate_FD.shape
    dtypes = {t.dtype for t in (x, w_gate_FD, w_up_FD, w_down_DF)}
    return (x.shape[-1] == D and w_up_FD.shape == (F, D) and w_down_DF.shape == (D, F)
            and D % _K_MULTIPLE == 0 and x.numel() > 0 and len(dtypes) == 1
            and dtypes <= {torch.bfloat16, torch.float16, torch.float32})


def triton_impl(x: torch.Tensor, w_gate_FD: torch.Tensor, w_up_FD: torch.Tensor,
                w_down_DF: torch.Tensor) -> torch.Tensor:
    """SwiGLU MLP with the signature and maths of :func:`model.decoder.swiglu_mlp_reference`.

    ``x`` is ``(..., D)``; the weights are the three linears' ``(F, D)``, ``(F, D)``, ``(D, F)``. Operands
    the kernels cannot take (see :func:`fusable`) go to the reference.
    """
    if not fusable(x, w_gate_FD, w_up_FD, w_down_DF):
        return reference(x, w_gate_FD, w_up_FD, w_down_DF)
    D = w_gate_FD.shape[1]
    y_MD, _, _, _ = _swiglu_mlp(x.reshape(-1, D).contiguous(), w_gate_FD.contiguous(), w_up_FD.contiguous(),
                                w_down_DF.contiguous())
    return y_MD.view(*x.shape[:-1], D)


def bench_cases(preset: str) -> list[dict]:
    """The MLP forward and forward+backward at ``preset``'s shapes: 32 x 2048 tokens, bf16."""
    cfg = PRESETS[preset]
    D, F = cfg["d_model"], cfg["d_ff"]

    def make(device: torch.device) -> tuple:
        x = torch.randn(32, 2048, D, device=device, dtype=torch.bfloat16, requires_grad=True)
        weights = [(torch.randn(shape, device=device) / shape[1] ** 0.5).to(torch.bfloat16).requires_grad_()
                   for shape in ((F, D), (F, D), (D, F))]
        return x, *weights

    return [{"name": f"swiglu_mlp_{preset}_{part}", "make_inputs": make, "triton": triton_impl,
             "reference": reference, "backward": backward}
            for part, backward in (("fwd", False), ("fwd_bwd", True))]


def sweep_inputs(preset: str, device: torch.device) -> Callable[[], tuple]:
    """Contiguous 2-D operands of both kernels at ``preset``'s shapes, for ``scripts/bench_swiglu.py``."""
    cfg = PRESETS[preset]
    D, F, M = cfg["d_model"], cfg["d_ff"], 32 * 2048

    def make() -> tuple:
        def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
            return (scale * torch.randn(shape, device=device)).to(torch.bfloat16)
        return (randn(M, D), randn(F, D, scale=D ** -0.5), randn(F, D, scale=D ** -0.5),
                randn(D, F, scale=F ** -0.5), randn(M, D))
    return make
