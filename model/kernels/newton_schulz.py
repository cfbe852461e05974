"""Newton–Schulz orthogonalization for Muon as Triton kernels (batched, bf16, symmetric products once).

``reference`` is :func:`training.optim.newton_schulz.zeropower_via_newtonschulz`; ``triton_impl`` has
the same signature ``fn(G, steps=, coefficients=, eps=)`` and the same maths: per matrix, transpose if
tall, divide by the Frobenius norm, then per step, with the step's ``(a, b, c)``,

    A  = X X^T                      (m, m)  symmetric      -> _gram_kernel, upper tiles only
    AA = b A + c A A                (m, m)  symmetric      -> _gram_kernel on A (A A = A A^T), fused epilogue
    X  = a X + AA X                 (m, n)                 -> _gemm_axpy_kernel, fused epilogue

Inputs and every intermediate are bf16 with fp32 accumulation, rounded where the reference rounds
(A, b A + c A^2 and the new X each once), so the two agree to bf16 accumulation-order noise.

The division by the norm is not a pass of its own, and neither is the norm: ``||X||_F^2`` is the
trace of the first step's ``X X^T``. That launch stores ``X X^T`` unscaled and each diagonal tile's
part of the trace (fp32, before rounding); the next turns the parts into ``s = 1 / max(||X||_F,
eps)`` and computes ``c s^4 A A + b s^2 A``, and the first new X is ``s (a X + AA X)``: the same
maths, with the norm in fp32 where the reference rounds it and ``X / ||X||`` to bf16. A non-finite
norm makes ``s`` NaN.

What it saves over the reference: X X^T and A^2 are symmetric, so ``_gram_kernel`` runs only the
programs of the upper-triangular tiles (j >= i) and writes each off-diagonal tile twice (itself and
its transpose): T(T+1)/2 of T^2 tile products, ~42% fewer FLOPs for the two Gram products at
T = 6 tiles (768 rows), and the ``b A`` and ``a X`` terms ride in the epilogues instead of separate
passes. Per step that is 2 m^2 n + m^3 (+ the mirrored halves) instead of 4 m^2 n + 2 m^3 FLOPs.

Muon's parameter update can ride in the last step (:func:`orthogonalize_and_apply`, which Muon
uses when its ``ns_fn`` offers it): ``_gemm_axpy_apply_kernel`` rounds each tile of the new X to
bf16 as the output would be, and writes ``p * decay + alpha * O`` into the parameter (transposed
for a tall one, found through a table of addresses) instead of storing O for a second pass.

NaN/inf propagate: a non-finite entry makes its matrix's norm non-finite, hence the whole output
matrix NaN, exactly like the reference (masked loads only fill out-of-range rows with 0).

Shapes: ``G`` is ``(..., m, n)``; leading dimensions are a batch of independent same-shape matrices
(Muon stacks each shape group into one call). Wrapped in ``torch.library.triton_op`` so
``torch.compile(fullgraph=True)`` sees one op and no graph break. CPU runs need ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton
from triton.runtime.interpreter import InterpretedFunction

from training.optim.newton_schulz import (
    DEFAULT_NS_COEFFICIENTS,
    DEFAULT_NS_EPS,
    DEFAULT_NS_STEPS,
    NSCoefficients,
    coefficient_schedule,
    zeropower_via_newtonschulz,
)

reference = zeropower_via_newtonschulz


@triton.jit
def _gram_kernel(
    X,  # (B, M, K) input
    C,  # (B, M, M) symmetric addend (read only when HAS_C)
    Out,  # (B, M, M) = alpha * X X^T + beta * C (with FROM_TRACE: see below)
    Scale,  # (B + B*T,) fp32 per-matrix scales, then trace parts (read or written with TRACE / FROM_TRACE)
    stride_xb,
    stride_xm,
    stride_cb,
    stride_ob,
    alpha,
    beta,
    M: tl.constexpr,
    K: tl.constexpr,
    HAS_C: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK: tl.constexpr,
    BLOCK_K: tl.constexpr,
    TRACE: tl.constexpr = False,
    FROM_TRACE: tl.constexpr = False,
    TILES_P2: tl.constexpr = 1,
    EPS: tl.constexpr = 1e-7,
    RESCUE: tl.constexpr = False,
    SAFE_SQ: tl.constexpr = 1e30,
):
    """One (BLOCK, BLOCK) tile (i, j), j >= i, of a symmetric product; the lower tile is its mirror.

    The first step's Frobenius norms come from its Gram matrix, ||X||^2 = tr(X X^T), with ``Scale``
    of ``B + B * T`` entries (T tiles per side): ``TRACE`` makes each diagonal tile store its part
    of the trace (fp32, before rounding) at ``Scale[B + b * T + i]``; ``FROM_TRACE`` (the next
    launch, ``b A + c A A`` on the unscaled A) sums them into ``s = 1 / max(||X||, EPS)`` (NaN for a
    non-finite norm), computes ``c s^4 A A + b s^2 A``, and tile (0, 0) stores ``s`` at ``Scale[b]``
    for the step's ``_gemm_axpy_kernel``. No atomics: every part has one writer.

    Unscaled, ``A A`` overflows fp32 once ``M ||X||^4`` nears its range (``||X||`` ~1e8 at M = 1024),
    where the reference, normalising first, does not. So a ``RESCUE`` launch follows ``FROM_TRACE``:
    its programs return at once unless ``||X||^2 > SAFE_SQ``, and then compute the tile again from
    ``s^2 A`` (rounded to bf16, as the reference rounds the normalised A), overwriting it.
    """
    pid_i = tl.program_id(0)
    pid_j = tl.program_id(1)
    if pid_j < pid_i:  # lower-triangular tile: written by its mirror (j, i)
        return
    bid = tl.program_id(2).to(tl.int64)
    rows_i = pid_i * BLOCK + tl.arange(0, BLOCK)
    rows_j = pid_j * BLOCK + tl.arange(0, BLOCK)
    if FROM_TRACE:
        tiles = tl.arange(0, TILES_P2)
        parts = tl.load(
            Scale + tl.num_programs(2) + bid * tl.num_programs(0) + tiles,
            mask=tiles < tl.num_programs(0),
            other=0.0,
        )
        square = tl.sum(parts, axis=0)
        norm = tl.sqrt(square)
        s = tl.where(norm < float("inf"), 1.0 / tl.maximum(norm, EPS), float("nan"))
        if RESCUE:  # noqa: SIM102 (RESCUE is a compile-time constant, the test a run-time one)
            if square <= SAFE_SQ:  # the FROM_TRACE launch's tile stands (NaN goes on: NaN either way)
                return
    rk = tl.arange(0, BLOCK_K)
    x_ptr = X + bid * stride_xb
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + rk
        xi = tl.load(
            x_ptr + rows_i[:, None] * stride_xm + ks[None, :],
            mask=(rows_i[:, None] < M) & (ks[None, :] < K),
            other=0.0,
        )
        xj = tl.load(
            x_ptr + rows_j[:, None] * stride_xm + ks[None, :],
            mask=(rows_j[:, None] < M) & (ks[None, :] < K),
            other=0.0,
        )
        if RESCUE:
            xi = (xi.to(tl.float32) * (s * s)).to(xi.dtype)
            xj = (xj.to(tl.float32) * (s * s)).to(xj.dtype)
        if UPCAST:
            xi, xj = xi.to(tl.float32), xj.to(tl.float32)
        acc = tl.dot(xi, tl.trans(xj), acc)
    if TRACE and pid_i == pid_j:
        diagonal = tl.sum(tl.sum(tl.where(rows_i[:, None] == rows_j[None, :], acc, 0.0), axis=1), axis=0)
        tl.store(Scale + tl.num_programs(2) + bid * tl.num_programs(0) + pid_i, diagonal)
    if FROM_TRACE:
        if RESCUE:
            acc = acc * alpha
        else:
            acc = acc * (alpha * s * s * s * s)
            if pid_i == 0 and pid_j == 0:
                tl.store(Scale + bid, s)
        beta = beta * s * s
    else:
        acc = acc * alpha
    in_tile = (rows_i[:, None] < M) & (rows_j[None, :] < M)
    if HAS_C:
        c = tl.load(C + bid * stride_cb + rows_i[:, None] * M + rows_j[None, :], mask=in_tile, other=0.0)
        acc += beta * c.to(tl.float32)
    out = acc.to(Out.dtype.element_ty)
    o_ptr = Out + bid * stride_ob
    tl.store(o_ptr + rows_i[:, None] * M + rows_j[None, :], out, mask=in_tile)
    if pid_j != pid_i:
        mirror = (rows_j[:, None] < M) & (rows_i[None, :] < M)
        tl.store(o_ptr + rows_j[:, None] * M + rows_i[None, :], tl.trans(out), mask=mirror)


@triton.jit
def _gemm_axpy_kernel(
    S,  # (B, M, M) left factor (b A + c A^2)
    X,  # (B, M, N)
    Out,  # (B, M, N) = S X + a X, times Scale[b] when SCALED
    Scale,  # (B,) fp32 per-matrix scale of X (read only when SCALED)
    stride_sb,
    stride_xb,
    stride_ob,
    a,
    M: tl.constexpr,
    N: tl.constexpr,
    SCALED: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """One (BLOCK_M, BLOCK_N) tile of ``S @ X + a * X`` (X rows are contiguous, row stride N)."""
    bid = tl.program_id(2).to(tl.int64)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = _axpy_tile(S + bid * stride_sb, X + bid * stride_xb, rm, rn, a, M, N, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)
    if SCALED:
        acc = acc * tl.load(Scale + bid)
    in_tile = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(
        Out + bid * stride_ob + rm[:, None] * N + rn[None, :], acc.to(Out.dtype.element_ty), mask=in_tile
    )


@triton.jit
def _axpy_tile(s_ptr, x_ptr, rm, rn, a, M: tl.constexpr, N: tl.constexpr, UPCAST: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):  # fmt: skip
    """The fp32 tile ``(S @ X + a * X)[rm, rn]`` of one matrix (S ``(M, M)``, X ``(M, N)``, both contiguous)."""
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, M, BLOCK_K):
        ks = k0 + rk
        s = tl.load(
            s_ptr + rm[:, None] * M + ks[None, :], mask=(rm[:, None] < M) & (ks[None, :] < M), other=0.0
        )
        x = tl.load(
            x_ptr + ks[:, None] * N + rn[None, :], mask=(ks[:, None] < M) & (rn[None, :] < N), other=0.0
        )
        if UPCAST:
            s, x = s.to(tl.float32), x.to(tl.float32)
        acc = tl.dot(s, x, acc)
    x_here = tl.load(x_ptr + rm[:, None] * N + rn[None, :], mask=(rm[:, None] < M) & (rn[None, :] < N), other=0.0)
    return acc + a * x_here.to(tl.float32)


@triton.jit
def _gemm_axpy_apply_kernel(
    S,  # (B, M, M) left factor (b A + c A^2) of the last step
    X,  # (B, M, N)
    Params,  # (B,) int64: each matrix's parameter, (M, N), or (N, M) where Tall
    Tall,  # (B,) int32: 1 where the parameter is the transpose of its wide update
    Alphas,  # (B,) fp32: -lr * the matrix's lr ratio
    Decay,  # () fp32: 1 - lr * weight_decay
    Scale,  # (B,) fp32 per-matrix scale of X (read only when SCALED: a one-step schedule)
    stride_sb,
    stride_xb,
    a,
    M: tl.constexpr,
    N: tl.constexpr,
    SCALED: tl.constexpr,
    UPCAST: tl.constexpr,
    PARAM_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The last step's tile of ``O = S @ X + a * X``, applied to its parameter: ``p <- p * decay + alpha * O``.

    O is rounded to bf16 first, as the output the separate update pass would read; the update is
    fp32 and rounds once into the parameter's dtype. Tall parameters take the tile transposed.
    """
    bid = tl.program_id(2).to(tl.int64)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = _axpy_tile(S + bid * stride_sb, X + bid * stride_xb, rm, rn, a, M, N, UPCAST, BLOCK_M, BLOCK_N, BLOCK_K)
    if SCALED:
        acc = acc * tl.load(Scale + bid)
    update = acc.to(tl.bfloat16).to(tl.float32) * tl.load(Alphas + bid)
    decay = tl.load(Decay)
    # The address comes from a table, so say what the host checked (16-byte aligned) and keep each
    # layout's load and store in its own branch: a pointer merged across the branches loses its
    # contiguity, and the accesses fall back to one element each.
    p_ptr = tl.load(Params + bid).to(tl.pointer_type(tl.float32 if PARAM_FP32 else tl.bfloat16))
    p_ptr = tl.multiple_of(p_ptr, 16)
    # (Names differ between the branches: Triton types a name assigned in both by its shape.)
    if tl.load(Tall + bid) != 0:  # the (N, M) parameter takes the tile transposed
        where_t = p_ptr + rn[:, None] * M + rm[None, :]
        in_tile_t = (rn[:, None] < N) & (rm[None, :] < M)
        p_t = tl.load(where_t, mask=in_tile_t, other=0.0).to(tl.float32)
        tl.store(where_t, (p_t * decay + tl.trans(update)).to(p_ptr.dtype.element_ty), mask=in_tile_t)
    else:
        where = p_ptr + rm[:, None] * N + rn[None, :]
        in_tile = (rm[:, None] < M) & (rn[None, :] < N)
        p = tl.load(where, mask=in_tile, other=0.0).to(tl.float32)
        tl.store(where, (p * decay + update).to(p_ptr.dtype.element_ty), mask=in_tile)


# Under TRITON_INTERPRET=1 ``triton.jit`` makes interpreted functions; three of its gaps need handling:
# * ``wrap_triton`` rejects them. The interpreter runs eagerly on the CPU, where nothing is compiled,
#   so the plain launch is equivalent there.
# * Its ``tl.dot`` on bf16 tiles returns garbage (triton 3.6): the kernels take ``UPCAST`` and convert
#   the loaded bf16 tiles to fp32 first, which is exact, so the products are the same maths.
# * Its fp32 -> bf16 stores truncate instead of rounding to nearest even: the CPU tests' error bound
#   allows for that; the GPU tests check the real rounding.
_INTERPRETED = isinstance(_gram_kernel, InterpretedFunction)


def _launcher(kernel: triton.JITFunction | InterpretedFunction) -> object:
    """``wrap_triton(kernel)``, visible to torch.compile; the kernel itself when interpreted."""
    return kernel if _INTERPRETED else wrap_triton(kernel)


def _block(size: int) -> int:
    """Tile edge: 128 for the model shapes (multiples of 128 on H100 tensor cores), smaller for tiny ones.

    The small sizes keep the CPU interpreter tests fast while still running several tiles per matrix
    (so the mirrored writes are exercised); tl.dot needs at least 16. The matrix sizes themselves are
    compile-time constants (one compilation per shape group, a handful per model): fixed trip counts,
    which the CPU interpreter needs, and masks the compiler can drop when the sizes divide evenly.
    """
    return 128 if size >= 512 else 64 if size >= 128 else 16


# Tile settings by kernel ("gram" or "gemm"), set by scripts/tune_newton_schulz.py while it sweeps;
# empty in normal use, where launch_config's defaults apply.
LAUNCH_OVERRIDES: dict[str, dict[str, int]] = {}


def launch_config(kernel: str, m: int, n: int) -> dict[str, int]:
    """Tile sizes, warps and pipeline stages of ``kernel`` for a ``(m, n)``, ``m <= n`` batch.

    From ``scripts/tune_newton_schulz.py`` on an H200 at the 124m and 350m shape groups
    (``docs/benchmarks/2026-11-26_issue7_session2/h200_ns_tuning.log``): 4 warps for the Gram
    kernel (its ``A A`` launch 0.085 -> 0.064 ms at 48 x 768^2), and 128 x 256 tiles with 4 stages
    for the ``S X`` product once both sides are large (0.816 -> 0.758 ms at 72 x (1024, 2816)).
    """
    block, block_k = _block(m), 64 if m >= 64 else 16
    if kernel == "gram":
        config = {"BLOCK": block, "BLOCK_K": block_k, "num_warps": 4, "num_stages": 3}
    elif m >= 768 and n >= 1024:
        config = {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "num_warps": 8, "num_stages": 4}
    else:
        warps = 8 if block == 128 else 4
        config = {"BLOCK_M": block, "BLOCK_N": _block(n), "BLOCK_K": block_k, "num_warps": warps, "num_stages": 3}
    config.update(LAUNCH_OVERRIDES.get(kernel, {}))
    return config


@triton_op("eco_train::newton_schulz_iterate", mutates_args=())
def _ns_iterate(X: Tensor, eps: float, coefficients: list[float]) -> Tensor:
    """Run the quintic steps on a contiguous ``(B, m, n)`` bf16 batch with ``m <= n``.

    The first step normalises: its X X^T is stored unscaled with each matrix's trace (its squared
    Frobenius norm), the next launch turns that into the scale ``1 / max(||X||, eps)`` and applies
    it, and the first new X takes it in its epilogue (see ``_gram_kernel``).
    ``coefficients`` is the flattened per-step schedule ``[a0, b0, c0, a1, b1, c1, ...]``.
    """
    return _run_steps(X, eps, coefficients, _launcher)


def _run_steps(X: Tensor, eps: float, coefficients: list[float], launch: Callable,
               last_step: Callable | None = None) -> Tensor:  # fmt: skip
    """The loop of :func:`_ns_iterate`; ``last_step(poly, X, scale, a, scaled, grid, config)``, if
    given, replaces the last step's ``_gemm_axpy_kernel`` launch (and the result is then the input of
    that step)."""
    batch, m, n = X.shape
    gram = torch.empty((batch, m, m), dtype=X.dtype, device=X.device)
    poly = torch.empty_like(gram)
    gram_cfg, gemm_cfg = launch_config("gram", m, n), launch_config("gemm", m, n)
    tiles = triton.cdiv(m, gram_cfg["BLOCK"])
    scale = torch.empty(batch * (1 + tiles), dtype=torch.float32, device=X.device)  # scales, then traces
    gram_grid = (tiles, tiles, batch)
    gemm_grid = (triton.cdiv(m, gemm_cfg["BLOCK_M"]), triton.cdiv(n, gemm_cfg["BLOCK_N"]), batch)
    # Every constexpr is passed, defaults too: under torch.compile the op's wrapper matches arguments
    # by count and Inductor's launcher takes them all.
    # SAFE_SQ: ||X||^2 below which the unscaled A A stays well inside fp32 (M ||X||^4 < 1e38).
    norm_args = {"TILES_P2": triton.next_power_of_2(tiles), "EPS": float(eps), "SAFE_SQ": (1e38 / m) ** 0.5}
    for i in range(0, len(coefficients), 3):
        a, b, c = coefficients[i], coefficients[i + 1], coefficients[i + 2]
        first = i == 0  # X is not normalised yet: see the docstring
        # A = X X^T
        launch(_gram_kernel)[gram_grid](
            X, X, gram, scale, X.stride(0), X.stride(1), 0, gram.stride(0), 1.0, 0.0, M=m, K=n,
            HAS_C=False, UPCAST=_INTERPRETED, TRACE=first, FROM_TRACE=False, RESCUE=False, **norm_args,
            **gram_cfg,
        )  # fmt: skip
        # b A + c A A  (A symmetric, so A A = A A^T: the same kernel with A as input)
        for rescue in (False, True) if first else (False,):  # the rescue: see _gram_kernel
            launch(_gram_kernel)[gram_grid](
                gram, gram, poly, scale, gram.stride(0), gram.stride(1), gram.stride(0), poly.stride(0), c, b,
                M=m, K=m, HAS_C=True, UPCAST=_INTERPRETED, TRACE=False, FROM_TRACE=first,
                RESCUE=rescue, **norm_args, **gram_cfg,
            )  # fmt: skip
        if last_step is not None and i + 3 == len(coefficients):
            last_step(poly, X, scale, a, first, gemm_grid, gemm_cfg)
            return X
        # a X + (b A + c A A) X
        out = torch.empty_like(X)
        launch(_gemm_axpy_kernel)[gemm_grid](
            poly, X, out, scale, poly.stride(0), X.stride(0), out.stride(0), a, M=m, N=n, SCALED=first,
            UPCAST=_INTERPRETED, **gemm_cfg,
        )  # fmt: skip
        X = out
    return X


def triton_impl(
    G: Tensor,
    steps: int = DEFAULT_NS_STEPS,
    coefficients: NSCoefficients = DEFAULT_NS_COEFFICIENTS,
    eps: float = DEFAULT_NS_EPS,
) -> Tensor:
    """Triton twin of :func:`reference` (bf16 compute, returns ``G.dtype``); see the module doc."""
    if G.ndim < 2:
        raise ValueError(f"Newton-Schulz needs matrices (..., m, n); got shape {tuple(G.shape)}")
    schedule = coefficient_schedule(coefficients, steps)
    X = G.to(torch.bfloat16)
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    batch_shape = X.shape
    X = X.reshape(-1, batch_shape[-2], batch_shape[-1]).contiguous()  # a copy only for tall input
    X = _ns_iterate(X, float(eps), [float(v) for triple in schedule for v in triple])
    X = X.reshape(batch_shape)
    if transposed:
        X = X.mT
    return X.to(G.dtype)


def orthogonalize_and_apply(
    G: Tensor,
    params: list[Tensor],
    tall: list[bool],
    alphas: Tensor,
    decay: Tensor,
    steps: int = DEFAULT_NS_STEPS,
    coefficients: NSCoefficients = DEFAULT_NS_COEFFICIENTS,
    eps: float = DEFAULT_NS_EPS,
) -> None:
    """Orthogonalize the wide ``(B, m, n)`` batch ``G`` and apply it: ``params[b] <- params[b] * decay
    + alphas[b] * O[b]`` (``O[b]`` transposed where ``tall[b]``), the last step writing the parameters.

    What ``triton_impl`` then Muon's update pass do, without the output the pass would read back.
    ``alphas``: ``(B,)`` fp32 on the device (``-lr * ratio``); ``decay``: 0-dim fp32. Parameters are
    contiguous, 16-byte aligned, bf16 or fp32 (all one dtype). Eager only: it writes the parameters,
    so it is not a functional op ``torch.compile`` could trace.
    """
    if G.ndim != 3 or G.size(-2) > G.size(-1):
        raise ValueError(f"orthogonalize_and_apply needs a wide (B, m, n) batch, m <= n; got {tuple(G.shape)}")
    if len(params) != G.size(0) or len(tall) != G.size(0):
        raise ValueError(f"{G.size(0)} matrices but {len(params)} parameters and {len(tall)} flags")
    dtypes = {p.dtype for p in params}
    if len(dtypes) != 1 or not dtypes <= {torch.bfloat16, torch.float32} or not all(p.is_contiguous() for p in params):
        raise ValueError(f"parameters must be contiguous and all bf16 or all fp32; got {sorted(map(str, dtypes))}")
    _, m, n = G.shape
    for p, is_tall in zip(params, tall, strict=True):
        if tuple(p.shape) != ((n, m) if is_tall else (m, n)):
            raise ValueError(f"parameter of shape {tuple(p.shape)} does not match a {(m, n)} update (tall={is_tall})")
    table, flags = _param_tables(params, tall)
    X = G.to(torch.bfloat16).contiguous()
    schedule = coefficient_schedule(coefficients, steps)

    def last_step(poly: Tensor, X: Tensor, scale: Tensor, a: float, scaled: bool, grid: tuple, cfg: dict) -> None:
        _gemm_axpy_apply_kernel[grid](
            poly, X, table, flags, alphas, decay, scale, poly.stride(0), X.stride(0), a, M=m, N=n,
            SCALED=scaled, UPCAST=_INTERPRETED, PARAM_FP32=params[0].dtype == torch.float32, **cfg,
        )  # fmt: skip

    _run_steps(X, float(eps), [float(v) for triple in schedule for v in triple], lambda k: k, last_step)


triton_impl.orthogonalize_and_apply = orthogonalize_and_apply  # what Muon looks for on its ns_fn

# (data pointers, tall flags, device) -> the device tables of orthogonalize_and_apply: built when a
# parameter moves, not every step (a host-to-device copy per step would cost a launch and a wait).
_TABLES: dict[tuple, tuple[Tensor, Tensor]] = {}


def _param_tables(params: list[Tensor], tall: list[bool]) -> tuple[Tensor, Tensor]:
    """The ``(B,)`` int64 parameter addresses and int32 tall flags on the parameters' device."""
    key = (tuple(p.data_ptr() for p in params), tuple(tall), params[0].device)
    if key not in _TABLES:
        if any(ptr % 16 for ptr in key[0]):  # the kernel's vector loads and stores assume it
            raise ValueError("orthogonalize_and_apply needs 16-byte aligned parameters")
        if len(_TABLES) >= 64:  # parameters reallocated again and again: forget the old addresses
            _TABLES.clear()
        device = params[0].device
        _TABLES[key] = (torch.tensor(key[0], dtype=torch.int64, device=device),
                        torch.tensor([int(t) for t in tall], dtype=torch.int32, device=device))  # fmt: skip
    return _TABLES[key]


# ---------------------------------------------------------------------------- benchmark cases


def muon_shape_groups(preset: str, vocab_size: int = 32768) -> dict[tuple[int, int], int]:
    """``{(rows, cols): count}`` of the Muon matrices of a SigmaLM preset (built on the meta device)."""
    from model.config import from_preset
    from model.decoder import SigmaLM
    from training.optim.split import split_params

    with torch.device("meta"):
        model = SigmaLM(from_preset(preset, vocab_size=vocab_size, max_seq_len=2048))
    groups: dict[tuple[int, int], int] = {}
    for _, p in split_params(model).muon:
        shape = (p.shape[0], p.shape[1])
        groups[shape] = groups.get(shape, 0) + 1
    return groups


def bench_cases(preset: str) -> list[dict]:
    """One case per Muon shape group of ``preset``: the whole group orthogonalized in one call."""
    cases = []
    for (rows, cols), count in muon_shape_groups(preset).items():

        def make_inputs(
            device: torch.device | str, shape: tuple[int, int, int] = (count, rows, cols)
        ) -> tuple:
            gen = torch.Generator(device=device).manual_seed(0)
            return (torch.randn(shape, device=device, generator=gen, dtype=torch.bfloat16),)

        cases.append(
            {
                "name": f"newton_schulz {preset} {count}x({rows},{cols})",
                "make_inputs": make_inputs,
                "triton": triton_impl,
                "reference": reference,
                "backward": False,
            }
        )
    return cases
