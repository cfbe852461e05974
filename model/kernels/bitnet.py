"""Fused BitNet 1.58 quantiser: int8 per-token activations and absmean-ternary weights in Triton.

Same signature and numerics as :func:`model.bitnet.bitnet_quant_reference` (read its module docstring
first): ``triton_impl(x, w, prequantized=False) -> (x_q, w_q)``, forward values quantised and
dequantised in fp32 and returned in the inputs' dtypes, backward straight-through.

Activations (one launch, one pass over memory): a program holds ``ROWS`` whole rows in registers,
reduces each row's absmax, quantises and dequantises it and writes it back, so ``x`` is read once and
``x_q`` written once. Weights (two launches, no host sync): the first writes fp64 partial sums of
``|w|`` per program, the second has every program reduce those few hundred partials itself (a cheap
redundant read from L2 instead of a third launch or a ``.item()``), then writes the ternary values.

Agreement with the reference, tested in ``tests/test_bitnet.py`` (CPU, ``TRITON_INTERPRET=1``) and
``tests/test_gpu_bitnet.py`` (H100, bf16): equal values (``torch.equal``, so -0.0 == 0.0). Every
activation step is an IEEE-rounded fp32 operation in the same order as the reference (the one division
per row with ``div_rn``: Triton's plain ``/`` is an approximate division), and the absmax is
order-independent. The weight scale is an fp64 sum rounded to fp32: the two summation orders give the
same fp32 scale except with probability ~1e-5 per matrix; then the scale is one fp32 ulp off, the
nonzero outputs move by one ulp and only entries with ``|w / s|`` within an ulp of 0.5 can flip
between 0 and ±1.

Rounding is round-half-to-even like ``torch.round``, written with ``floor`` and comparisons: libdevice's
``rint`` does not run under ``TRITON_INTERPRET=1``, and the ``+ 1.5 * 2**23`` trick can be contracted
into an FMA with the preceding multiply, which changes ties.

Both ops are ``torch.library.triton_op`` custom ops with a straight-through autograd formula, so
``torch.compile(fullgraph=True)`` traces them without a graph break and sees the kernels.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton
from triton.runtime.interpreter import InterpretedFunction

from model.bitnet import QUANT_EPS, bitnet_quant_reference
from model.config import PRESETS

reference = bitnet_quant_reference

_ACT_BLOCK = 4096  # elements per activation program: ROWS * next_pow2(D); whole rows stay in registers
_W_TILE = 4096  # elements per step of the weight kernels
_MAX_PARTIALS = 512  # cap on partial sums per matrix, i.e. on the second launch's redundant read


# ----------------------------------------------------------------------------- device helpers


@triton.jit
def _clamp(v, lo, hi):
    """``clamp`` that keeps NaN (``tl.clamp``'s NaN result is unspecified)."""
    v = tl.maximum(v, lo, propagate_nan=tl.PropagateNan.ALL)
    return tl.minimum(v, hi, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _div(a, b):
    """IEEE round-to-nearest fp32 division, broadcasting like ``/`` (``div_rn`` does not broadcast)."""
    a, b = tl.broadcast(a, b)
    return tl.math.div_rn(a, b)


@triton.jit
def _round_half_even(v):
    """``torch.round`` for fp32 of magnitude below 2**22: nearest integer, ties to even, sign kept."""
    a = tl.abs(v)
    f = tl.floor(a)
    half = f + 0.5
    f_is_odd = (f - 2.0 * tl.floor(f * 0.5)) == 1.0
    r = tl.where((a > half) | ((a == half) & f_is_odd), f + 1.0, f)
    return tl.where(v < 0, -r, r)


# ----------------------------------------------------------------------------- kernels


@triton.jit
def _act_quant_kernel(x_ptr, out_ptr, M, D, EPS: tl.constexpr, ROWS: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows ``[pid * ROWS, (pid + 1) * ROWS)`` of the (M, D) input: int8 absmax quantise + dequantise."""
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < M) & (cols[None, :] < D)
    offsets = rows[:, None].to(tl.int64) * D + cols[None, :]
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    # tl.max drops NaN, where torch's amax keeps it and the whole row comes out NaN. Counting NaN as
    # inf gives that same all-NaN row in one reduction: scale 127 / inf = 0, q = round(x * 0) = 0 or
    # NaN, then q * step = 0 * inf = NaN (an inf row goes the same way in the reference).
    amax = tl.maximum(tl.max(tl.where(x == x, tl.abs(x), float("inf")), axis=1, keep_dims=True), EPS)
    scale = _div(tl.full([ROWS, 1], 1.0, tl.float32), amax) * 127.0  # the reference's op order
    step = amax * (1.0 / 127.0)
    q = _clamp(_round_half_even(x * scale), -128.0, 127.0)
    tl.store(out_ptr + offsets, (q * step).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _absmean_partial_kernel(w_ptr, partial_ptr, n, CHUNK: tl.constexpr, TILE: tl.constexpr):
    """``partial[pid] = sum |w|`` over elements ``[pid * CHUNK, (pid + 1) * CHUNK)``, in fp64."""
    start = tl.program_id(0).to(tl.int64) * CHUNK
    acc = tl.zeros([TILE], dtype=tl.float64)
    for step in range(0, CHUNK, TILE):
        offsets = start + step + tl.arange(0, TILE)
        w = tl.load(w_ptr + offsets, mask=offsets < n, other=0.0)
        acc += tl.abs(w.to(tl.float32)).to(tl.float64)
    tl.store(partial_ptr + tl.program_id(0), tl.sum(acc, axis=0))


@triton.jit
def _ternary_kernel(
    w_ptr, partial_ptr, out_ptr, n, num_partials, EPS: tl.constexpr, P_BLOCK: tl.constexpr, TILE: tl.constexpr
):
    """Scale from the partial sums, then ``clamp(round(w / s), -1, 1) * s`` for one tile of ``w``."""
    p = tl.arange(0, P_BLOCK)
    total = tl.sum(tl.load(partial_ptr + p, mask=p < num_partials, other=0.0), axis=0)
    scale = tl.maximum((total / n).to(tl.float32), EPS, propagate_nan=tl.PropagateNan.ALL)
    offsets = tl.program_id(0).to(tl.int64) * TILE + tl.arange(0, TILE)
    mask = offsets < n
    w = tl.load(w_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    # Clamping to +-2 before rounding changes no result and keeps the rounding helper in range.
    q = _clamp(_round_half_even(_clamp(_div(w, scale), -2.0, 2.0)), -1.0, 1.0)
    tl.store(out_ptr + offsets, (q * scale).to(out_ptr.dtype.element_ty), mask=mask)


def _num_warps(block: int) -> int:
    return min(16, max(4, block // 512))


def _act_config(D: int) -> tuple[int, int, int]:
    """``(ROWS, BLOCK_D, num_warps)`` of the activation kernel for rows of width ``D``."""
    block_d = triton.next_power_of_2(D)
    rows = max(1, _ACT_BLOCK // block_d)
    return rows, block_d, _num_warps(rows * block_d)


def _weight_config(n: int) -> tuple[int, int]:
    """``(CHUNK, number of partial sums)`` of the weight kernels for a matrix of ``n`` entries."""
    chunk = max(_W_TILE, triton.next_power_of_2(triton.cdiv(n, _MAX_PARTIALS)))
    return chunk, triton.cdiv(n, chunk)


# Under TRITON_INTERPRET=1 ``triton.jit`` makes interpreted functions; two of its gaps need handling:
# * ``wrap_triton`` rejects them. The interpreter runs eagerly on the CPU, where nothing is compiled,
#   so the plain launch is equivalent there.
# * Its fp32 -> bf16 conversion truncates instead of rounding to nearest even (the GPU's ``cvt.rn``).
#   There the kernels store fp32 and torch rounds, so the CPU tests still check every step before that
#   final cast; the GPU tests check the cast.
_INTERPRETED = isinstance(_act_quant_kernel, InterpretedFunction)


def _launcher(kernel: triton.JITFunction | InterpretedFunction) -> object:
    """``wrap_triton(kernel)``, visible to torch.compile; the kernel itself when interpreted."""
    return kernel if _INTERPRETED else wrap_triton(kernel)


def _empty_output(like: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(like, dtype=torch.float32 if _INTERPRETED else like.dtype)


# ----------------------------------------------------------------------------- custom ops


@triton_op("eco_train::bitnet_act_quant", mutates_args=())
def act_quant(x: torch.Tensor) -> torch.Tensor:
    """:func:`model.bitnet.int8_activation` (per-row over the last dim) as one fused launch."""
    x = x.contiguous()
    out = _empty_output(x)
    if x.numel() == 0:
        return out.to(x.dtype)
    # int(): the launch configuration must be concrete. Under dynamic shapes this specialises (guards)
    # on the width, which is fixed per layer, instead of handing Inductor a symbolic num_warps.
    D = int(x.shape[-1])
    M = x.numel() // D
    rows, block_d, num_warps = _act_config(D)
    _launcher(_act_quant_kernel)[(triton.cdiv(M, rows),)](
        x, out, M, D, EPS=QUANT_EPS, ROWS=rows, BLOCK_D=block_d, num_warps=num_warps
    )
    return out.to(x.dtype)


@triton_op("eco_train::bitnet_weight_quant", mutates_args=())
def weight_quant(w: torch.Tensor) -> torch.Tensor:
    """:func:`model.bitnet.ternary_weight` as two launches (fp64 partial sums, then quantise)."""
    w = w.contiguous()
    out = _empty_output(w)
    n = int(w.numel())  # concrete launch configuration, as in act_quant
    if n == 0:
        return out.to(w.dtype)
    chunk, num_partials = _weight_config(n)
    partials = torch.empty(num_partials, dtype=torch.float64, device=w.device)
    _launcher(_absmean_partial_kernel)[(num_partials,)](
        w, partials, n, CHUNK=chunk, TILE=_W_TILE, num_warps=_num_warps(_W_TILE)
    )
    _launcher(_ternary_kernel)[(triton.cdiv(n, _W_TILE),)](
        w, partials, out, n, num_partials, EPS=QUANT_EPS, P_BLOCK=triton.next_power_of_2(num_partials),
        TILE=_W_TILE, num_warps=_num_warps(_W_TILE),
    )  # fmt: skip
    return out.to(w.dtype)


def _straight_through_backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
    """The gradient passes the quantiser unchanged (straight-through estimator)."""
    return grad


act_quant.register_autograd(_straight_through_backward)
weight_quant.register_autograd(_straight_through_backward)


def triton_impl(
    x: torch.Tensor, w: torch.Tensor, prequantized: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of :func:`model.bitnet.bitnet_quant_reference` (same arguments and results)."""
    return act_quant(x), w if prequantized else weight_quant(w)


# ----------------------------------------------------------------------------- benchmark cases

_BENCH_TOKENS = (32, 2048)  # (rows per micro-batch, sequence length)


def bench_cases(preset: str) -> list[dict]:
    """Quantiser forward + backward at the block-linear shapes of ``preset`` (``model/config.py``).

    One case per distinct weight shape of the block linears: the activation is the linear's bf16 input
    ``(32, 2048, d_in)``, the weight its ``(d_out, d_in)`` matrix in bf16 (the bf16 hardware profile
    keeps parameters in bf16, ``training/hardware.py``).
    """
    shape = PRESETS[preset]
    d, f = shape["d_model"], shape["d_ff"]
    q, kv = shape["n_head"] * shape["head_dim"], shape["n_kv_head"] * shape["head_dim"]
    linears = {
        "q": (q, d),
        "k": (kv, d),
        "v": (kv, d),
        "o": (d, q),
        "gate": (f, d),
        "up": (f, d),
        "down": (d, f),
    }
    names_by_shape: dict[tuple[int, int], list[str]] = {}
    for name, w_shape in linears.items():
        names_by_shape.setdefault(w_shape, []).append(name)

    def make_inputs_for(
        d_out: int, d_in: int
    ) -> Callable[[torch.device | str], tuple[torch.Tensor, torch.Tensor]]:
        def make_inputs(device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
            gen = torch.Generator(device=device).manual_seed(0)
            x = torch.randn(*_BENCH_TOKENS, d_in, device=device, dtype=torch.bfloat16, generator=gen)
            w = torch.randn(d_out, d_in, device=device, dtype=torch.bfloat16, generator=gen) * 0.02
            return x.requires_grad_(), w.requires_grad_()

        return make_inputs

    rows = _BENCH_TOKENS[0] * _BENCH_TOKENS[1]
    return [
        {"name": f"{'/'.join(names)} x({rows},{d_in}) w({d_out},{d_in})",
         "make_inputs": make_inputs_for(d_out, d_in), "triton": triton_impl, "reference": reference, "backward": True}
        for (d_out, d_in), names in names_by_shape.items()
    ]  # fmt: skip
