"""FP8 linear layer for Hopper/Ada GPUs: ``F.linear(x, weight)`` (no bias) with FP8 tensor-core matmuls.

What it is for: a drop-in replacement of the bf16 matmuls of a linear layer in training, to find out
whether FP8 (roughly twice the bf16 tensor-core throughput on an H100) speeds up our step at our shapes
(``scripts/bench_fp8.py`` measures that). Nothing in the model uses it unless a caller swaps it in.

Precision (tensorwise dynamic scaling, one fp32 scale per tensor, recomputed on every call):
    forward   y = x @ W^T          x and W quantised to float8_e4m3fn (3 mantissa bits, max 448)
    backward  grad_x = g @ W       g (the output gradient) quantised to float8_e5m2 (2 mantissa bits,
              grad_W = g^T @ x     max 57344: more range, less precision); W and x are the forward's fp8
                                   copies, so each matmul reads fp8 operands only
Each tensor t is quantised as ``clamp(t * s, -max, max).to(fp8)`` with ``s = max / amax(|t|)`` (amax
floored at ``AMAX_EPS`` so that an all-zero tensor stays zero), and ``torch._scaled_mm`` multiplies the
fp32-accumulated product by the two inverse scales before rounding to the output dtype. The relative
error of an output is a few per cent (e4m3 rounds each operand by up to 2**-4 relative); a NaN or inf
anywhere in an operand makes its amax NaN/inf and hence the whole product NaN, never a silent wrong
number. Only the fp8 operands and their inverse scales are kept for the backward (half the memory of
the bf16 ones). All the scaling arithmetic is plain tensor code, so under ``torch.compile`` Inductor
fuses the amax reduction, scale and cast into a couple of kernels around each ``_scaled_mm``.

When FP8 is not used: ``_scaled_mm`` on CUDA needs the inner dimension and both dimensions of its
second operand to be multiples of 16. Across the three matmuls above (inner dims K, N and M) that means
M (the number of rows of x, all leading dims flattened), K and N must all be multiples of 16 and
non-zero; x and weight must also share one floating dtype (bf16, fp16 or fp32). Any other call falls
back to plain ``F.linear`` with ordinary autograd, exact in the input dtype. The GPU must support FP8
(compute capability 8.9 or later, see :func:`fp8_supported`); that is the caller's check, made once.

Shape suffix legend (as in ``model/decoder.py``):
    M  rows of x (product of all but its last dim)
    K  in_features
    N  out_features
"""

import torch
import torch.nn.functional as F

E4M3 = torch.float8_e4m3fn  # forward operands: x and weight
E5M2 = torch.float8_e5m2  # backward operand: the output gradient
E4M3_MAX = torch.finfo(E4M3).max  # 448.0
E5M2_MAX = torch.finfo(E5M2).max  # 57344.0
AMAX_EPS = 1e-12  # floor of amax: an all-zero tensor gets a finite scale and stays zero
FP8_DIM_MULTIPLE = 16  # _scaled_mm's alignment requirement on the dims it checks
_FP8_IO_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def fp8_supported(device: torch.device | str) -> bool:
    """Whether ``device`` can run :func:`fp8_linear`'s FP8 path: a CUDA GPU of compute capability >= 8.9.

    CPU runs tensorwise ``_scaled_mm`` too (slowly; the tests use it) but gets ``False`` here, as FP8
    brings no speed there.
    """
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def quantise_tensorwise(t: torch.Tensor, fp8_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(t_fp8, inv_scale)``: ``t`` scaled so that its amax maps to the fp8 max, then cast.

    ``inv_scale`` is a one-element fp32 tensor with ``t ~= t_fp8.float() * inv_scale``; ``t_fp8`` is
    contiguous (row-major), as ``_scaled_mm`` wants its first operand. Computes in fp32.
    """
    fp8_max = E4M3_MAX if fp8_dtype == E4M3 else E5M2_MAX
    amax = t.abs().amax().float().clamp(min=AMAX_EPS)  # NaN stays NaN (clamp propagates it)
    scale = fp8_max / amax
    t_fp8 = (t.float() * scale).clamp(-fp8_max, fp8_max).to(fp8_dtype).contiguous()
    return t_fp8, scale.reciprocal()


class _Fp8LinearFunction(torch.autograd.Function):
    """``x_MK @ w_NK^T`` with e4m3 operands forward and an e5m2 output gradient backward (2-D only)."""

    @staticmethod
    def forward(ctx, x_MK: torch.Tensor, w_NK: torch.Tensor) -> torch.Tensor:
        x_fp8_MK, x_inv_scale = quantise_tensorwise(x_MK, E4M3)
        w_fp8_NK, w_inv_scale = quantise_tensorwise(w_NK, E4M3)
        # _scaled_mm(a row-major, b column-major): w_fp8_NK.t() is (K, N) column-major, no copy.
        y_MN = torch._scaled_mm(x_fp8_MK, w_fp8_NK.t(), x_inv_scale, w_inv_scale, out_dtype=x_MK.dtype)
        ctx.save_for_backward(x_fp8_MK, x_inv_scale, w_fp8_NK, w_inv_scale)
        ctx.x_dtype = x_MK.dtype
        ctx.w_dtype = w_NK.dtype
        return y_MN

    @staticmethod
    def backward(ctx, g_MN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_fp8_MK, x_inv_scale, w_fp8_NK, w_inv_scale = ctx.saved_tensors
        g_fp8_MN, g_inv_scale = quantise_tensorwise(g_MN, E5M2)
        # grad_x = g @ W: b must be W as (N, K) column-major, i.e. the transpose of a row-major (K, N).
        w_fp8_KN = w_fp8_NK.t().contiguous()
        grad_x_MK = torch._scaled_mm(g_fp8_MN, w_fp8_KN.t(), g_inv_scale, w_inv_scale, out_dtype=ctx.x_dtype)
        # grad_W = g^T @ x: a = g^T row-major (N, M); b = x as (M, K) column-major.
        g_fp8_NM = g_fp8_MN.t().contiguous()
        x_fp8_KM = x_fp8_MK.t().contiguous()
        grad_w_NK = torch._scaled_mm(g_fp8_NM, x_fp8_KM.t(), g_inv_scale, x_inv_scale, out_dtype=ctx.w_dtype)
        return grad_x_MK, grad_w_NK


def fp8_qualifies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`fp8_linear` takes the FP8 path for these operands (see the module docstring)."""
    N, K = weight.shape
    if K == 0 or x.shape[-1] != K:
        return False
    M = x.numel() // K
    dims_ok = all(d > 0 and d % FP8_DIM_MULTIPLE == 0 for d in (M, K, N))
    return dims_ok and x.dtype == weight.dtype and x.dtype in _FP8_IO_DTYPES


def fp8_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)`` (no bias) computed with FP8 matmuls forward and backward.

    ``x`` is ``(..., K)``, ``weight`` ``(N, K)``, both of one dtype (bf16 in training); returns
    ``(..., N)`` in that dtype, and the gradients come back in the inputs' dtypes. Shapes or dtypes that
    ``_scaled_mm`` cannot take (see :func:`fp8_qualifies`) fall back to ``F.linear``. Works under
    ``torch.compile(fullgraph=True)``.
    """
    if not fp8_qualifies(x, weight):
        return F.linear(x, weight)
    N, K = weight.shape
    y_MN = _Fp8LinearFunction.apply(x.reshape(-1, K), weight)
    return y_MN.reshape(*x.shape[:-1], N)
