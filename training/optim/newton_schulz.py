"""Newton–Schulz "instant inversion": the orthogonal polar factor of a matrix in a few matmuls.

For G = U S V^T (SVD), Muon wants the polar factor U V^T = G (G^T G)^-1/2. An SVD is slow on GPUs;
the quintic Newton–Schulz iteration X <- a X + (b A + c A^2) X with A = X X^T gets there with
``steps`` pairs of matmuls. Muon's coefficients (3.4445, -4.775, 2.0315) are tuned for the largest
slope at zero, so small singular values grow fast, at the price of never converging exactly: after
5 steps the singular values of the output lie roughly in [0.7, 1.2] instead of at 1. That is
harmless for training (Jordan et al. 2024) and is why the self-test below has a loose bound.

``zeropower_via_newtonschulz`` is pure tensor code with no host syncs or data-dependent Python
branches on values, so ``torch.compile`` (or a Triton kernel with the same signature) can wrap it
from outside. On a single matrix it is bit-identical to ``torch.optim.Muon``'s kernel (torch 2.10:
bf16, ``addmm`` form), which the tests check.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

DEFAULT_NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.775, 2.0315)
DEFAULT_NS_STEPS = 5
DEFAULT_NS_EPS = 1e-7

# Bound on instant_inversion_rel_residual = ||O - U V^T||_F / ||U V^T||_F for the probe below.
# Muon's quintic deliberately does NOT converge to U V^T: its fixed points are spread over roughly
# [0.7, 1.2], so even a perfect kernel leaves a residual of about 0.2. Measured on CPU for the
# 256x128 probe (condition number 10), default coefficients, bf16 (fp32 agrees to 1e-3):
#   5 steps (default) 0.187 (seeds 0-3: 0.187-0.188); 3 steps 0.175; 6-10 steps 0.21-0.22 (the
#   quintic's band, where more steps settle).
# A broken kernel lands far above: 1 step 0.77, 2 steps 0.45, the classic cubic (1.5, -0.5, 0)
# 0.58, a flipped sign on b -> overflow -> NaN. 0.30 leaves >50% headroom for bf16 rounding
# differences between devices/kernels and for configs with more steps, and still catches those.
# If the kernel or coefficients change on purpose, re-measure (tests/test_optim.py prints it).
INSTANT_INVERSION_MAX_RESIDUAL = 0.30

NSFn = Callable[..., Tensor]
"""Signature of an orthogonalization kernel: ``fn(G, steps=, coefficients=, eps=) -> Tensor``."""


def zeropower_via_newtonschulz(
    G: Tensor,
    steps: int = DEFAULT_NS_STEPS,
    coefficients: tuple[float, float, float] = DEFAULT_NS_COEFFICIENTS,
    eps: float = DEFAULT_NS_EPS,
    dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    """Approximate the orthogonal polar factor of each matrix in ``G`` (shape ``(..., m, n)``).

    Per matrix: transpose if tall (so the Gram matrix ``X X^T`` is the small ``min(m, n)`` square),
    divide by the Frobenius norm (an upper bound on the spectral norm, so all singular values start in
    (0, 1]), run ``steps`` quintic iterations in ``dtype``, and transpose back. Returns ``G.dtype``.
    Leading dimensions are a batch of independent same-shape matrices: one batched matmul per step
    instead of a Python loop over parameters.
    """
    if G.ndim < 2:
        raise ValueError(f"Newton-Schulz needs matrices (..., m, n); got shape {tuple(G.shape)}")
    if len(coefficients) != 3:
        raise ValueError(f"Newton-Schulz needs 3 coefficients (a, b, c); got {coefficients}")
    a, b, c = coefficients
    X = G.to(dtype)
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    batch_shape = X.shape
    X = X.reshape(-1, batch_shape[-2], batch_shape[-1])  # (B, m, n) with m <= n
    # Per-matrix Frobenius norm, computed in `dtype` exactly as torch.optim.Muon does.
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        A = X @ X.mT  # (B, m, m) Gram matrix
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2, one rounding (matches addmm)
        X = torch.baddbmm(X, B, X, beta=a)  # a X + B X
    X = X.reshape(batch_shape)
    if transposed:
        X = X.mT
    return X.to(G.dtype)


# ---------------------------------------------------------------------------- start-up self-test


def _probe_matrix(shape: tuple[int, int], seed: int, condition: float = 10.0) -> Tensor:
    """A fixed, well-conditioned float64 probe ``U diag(s) V^T`` with s log-spaced in [1/condition, 1].

    The spectrum is set explicitly (not left to a Gaussian draw) so the residual measures the
    iteration, not luck with tiny singular values the quintic cannot lift in a few steps.
    """
    m, n = shape
    k = min(m, n)
    gen = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    s = torch.logspace(0.0, -math.log10(condition), k, dtype=torch.float64)
    return (U * s) @ V.T


def instant_inversion_selftest(
    *,
    steps: int,
    coefficients: tuple[float, float, float],
    dtype: torch.dtype,
    device: torch.device | str,
    shape: tuple[int, int] = (256, 128),
    seed: int = 0,
    ns_fn: NSFn | None = None,
) -> dict[str, float | int]:
    """Run the configured Newton–Schulz kernel on a fixed probe and compare to the exact polar factor.

    The exact factor ``U V^T`` comes from an SVD in float64 on CPU. ``ns_fn`` defaults to
    :func:`zeropower_via_newtonschulz` (with ``dtype``); pass the training kernel (e.g. a compiled or
    Triton one) to test exactly what will run. Returns ``{"instant_inversion_iters": steps,
    "instant_inversion_rel_residual": ||O - U V^T||_F / ||U V^T||_F}``. The ``.item()`` is a host
    sync, fine once at start-up.
    """
    probe = _probe_matrix(shape, seed)
    U, _, Vh = torch.linalg.svd(probe, full_matrices=False)
    polar = U @ Vh
    G = probe.to(device=device, dtype=torch.float32)
    if ns_fn is None:
        ortho = zeropower_via_newtonschulz(G, steps=steps, coefficients=coefficients, dtype=dtype)
    else:
        ortho = ns_fn(G, steps=steps, coefficients=coefficients, eps=DEFAULT_NS_EPS)
    ortho = ortho.to(device="cpu", dtype=torch.float64)
    residual = (torch.linalg.matrix_norm(ortho - polar) / torch.linalg.matrix_norm(polar)).item()
    return {"instant_inversion_iters": steps, "instant_inversion_rel_residual": residual}


def check_instant_inversion(
    result: dict[str, float | int], max_residual: float = INSTANT_INVERSION_MAX_RESIDUAL
) -> None:
    """Raise ``RuntimeError`` if the self-test residual is NaN/inf or above ``max_residual``."""
    residual = float(result["instant_inversion_rel_residual"])
    iters = result["instant_inversion_iters"]
    if not math.isfinite(residual):
        raise RuntimeError(
            f"Instant inversion self-test failed: Newton-Schulz ({iters} iterations) produced a "
            f"non-finite residual ({residual}). The orthogonalization kernel is broken (NaN/inf); "
            "check the kernel, its dtype and --ns-steps before training."
        )
    if residual > max_residual:
        raise RuntimeError(
            f"Instant inversion self-test failed: relative residual {residual:.4f} against the exact "
            f"polar factor exceeds the bound {max_residual} ({iters} iterations). Too few Newton-Schulz "
            "steps, wrong coefficients or a broken kernel; use the defaults (5 steps, "
            f"{DEFAULT_NS_COEFFICIENTS}) or fix the kernel."
        )
