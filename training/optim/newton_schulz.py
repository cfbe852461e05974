"""Newton–Schulz "instant inversion": the orthogonal polar factor of a matrix in a few matmuls.

For G = U S V^T (SVD), Muon wants the polar factor U V^T = G (G^T G)^-1/2. An SVD is slow on GPUs;
the quintic Newton–Schulz iteration X <- a X + (b A + c A^2) X with A = X X^T gets there with
``steps`` pairs of matmuls. Two coefficient sets (``--ns-coefficients``, :func:`ns_coefficient_set`):

* ``"muon"``: one triple (3.4445, -4.775, 2.0315) repeated every step, tuned for the largest slope at
  zero, so small singular values grow fast, at the price of never converging exactly: after 5 steps
  the singular values of the output lie roughly in [0.7, 1.2] instead of at 1. That is harmless for
  training (Jordan et al. 2024) and is why the self-test below has a loose bound.
* ``"polar_express"``: a different triple per step, each the minimax-optimal quintic for the interval
  the previous steps leave the singular values in (Amsel, Persson, Musco, Gower 2025, "The Polar
  Express: Optimal Matrix Sign Methods and Their Application to the Muon Algorithm",
  arXiv:2505.16932). Same cost per step, and 5 steps land about twice as close to U V^T.

Coefficients are either one ``(a, b, c)`` triple (used for every step) or a sequence of triples, one
per step; a sequence shorter than ``steps`` repeats its last triple (as the authors' reference does).

``zeropower_via_newtonschulz`` is pure tensor code with no host syncs or data-dependent Python
branches on values, so ``torch.compile`` (or a Triton kernel with the same signature) can wrap it
from outside. On a single matrix it is bit-identical to ``torch.optim.Muon``'s kernel (torch 2.10:
bf16, ``addmm`` form), which the tests check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

Triple = tuple[float, float, float]
NSCoefficients = Triple | Sequence[Triple]
"""One ``(a, b, c)`` triple for every step, or one triple per step."""

DEFAULT_NS_COEFFICIENTS: Triple = (3.4445, -4.775, 2.0315)
DEFAULT_NS_STEPS = 5
DEFAULT_NS_EPS = 1e-7

# Polar Express, 5 steps, verbatim from the authors' generator: optimal_composition(l=1e-3,
# num_iters=5, safety_factor_eps=2e-2, cushion=0.02) in github.com/NoahAmsel/PolarExpress
# (polar_express.py; rerun here, it reproduces these digits), the set nanochat (karpathy/nanochat,
# nanochat/optim.py) and modded-nanogpt ship. l=1e-3 is the smallest normalised singular value
# the schedule is designed to lift; the 2% safety factor, baked into all but the last triple,
# keeps a singular value pushed slightly above 1 by bf16 rounding from growing. The authors'
# reference also divides by 1.01 * ||X||_F instead of ||X||_F; on the self-test probe that changes
# the residual by < 0.001 (measured), so we keep Muon's normalisation for both sets.
POLAR_EXPRESS_COEFFICIENTS: tuple[Triple, ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

NS_COEFFICIENT_SETS: dict[str, NSCoefficients] = {
    "muon": DEFAULT_NS_COEFFICIENTS,
    "polar_express": POLAR_EXPRESS_COEFFICIENTS,
}


def ns_coefficient_set(name: str) -> NSCoefficients:
    """The coefficients behind ``--ns-coefficients name`` (``"muon"`` or ``"polar_express"``)."""
    if name not in NS_COEFFICIENT_SETS:
        raise ValueError(f"--ns-coefficients must be one of {sorted(NS_COEFFICIENT_SETS)}; got {name!r}")
    return NS_COEFFICIENT_SETS[name]


def coefficient_schedule(coefficients: NSCoefficients, steps: int) -> tuple[Triple, ...]:
    """The ``(a, b, c)`` triple of each of the ``steps`` iterations.

    One triple is repeated; a per-step sequence is cut to ``steps`` or, when shorter, extended with
    its last triple. Raises ``ValueError`` for anything that is not triples of numbers.
    """
    if steps < 1:
        raise ValueError(f"Newton-Schulz needs at least 1 step; got {steps}")
    seq = list(coefficients)
    if len(seq) == 3 and all(isinstance(x, (int, float)) for x in seq):
        seq = [tuple(seq)]

    def is_triple(t: object) -> bool:
        return isinstance(t, Sequence) and len(t) == 3 and all(isinstance(x, (int, float)) for x in t)

    if not seq or not all(is_triple(t) for t in seq):
        raise ValueError(
            f"Newton-Schulz coefficients must be one (a, b, c) triple or a sequence of triples; got {coefficients}"
        )
    seq = [tuple(float(x) for x in t) for t in seq]
    return tuple(seq[:steps] + [seq[-1]] * (steps - len(seq)))  # type: ignore[return-value]


# Bound on instant_inversion_rel_residual = ||O - U V^T||_F / ||U V^T||_F for the probe below.
# Muon's quintic deliberately does NOT converge to U V^T: its fixed points are spread over roughly
# [0.7, 1.2], so even a perfect kernel leaves a residual of about 0.2. Measured on CPU for the
# 256x128 probe (condition number 10), bf16 (fp32 agrees to 1e-3):
#   "muon": 5 steps (default) 0.187 (seeds 0-3: 0.187-0.188); 3 steps 0.175; 6-10 steps 0.21-0.22
#   (the quintic's band, where more steps settle).
#   "polar_express": 5 steps 0.094 (seeds 0-3: 0.0935-0.0938); 6 steps 0.076; 8 steps 0.052
#   (past 5 the last triple repeats); 4 steps 0.36, 3 steps 0.61 (the early triples overshoot on
#   purpose and only the later ones pull the singular values in, so a cut schedule fails loudly).
# A broken kernel lands far above: 1 step 0.77, 2 steps 0.45, the classic cubic (1.5, -0.5, 0)
# 0.58, a flipped sign on b -> overflow -> NaN. 0.30 leaves >50% headroom over "muon" for bf16
# rounding differences between devices/kernels and for configs with more steps, and still catches
# those. If the kernel or coefficients change on purpose, re-measure (tests/test_optim.py prints it).
INSTANT_INVERSION_MAX_RESIDUAL = 0.30

NSFn = Callable[..., Tensor]
"""Signature of an orthogonalization kernel: ``fn(G, steps=, coefficients=, eps=) -> Tensor``."""


def zeropower_via_newtonschulz(
    G: Tensor,
    steps: int = DEFAULT_NS_STEPS,
    coefficients: NSCoefficients = DEFAULT_NS_COEFFICIENTS,
    eps: float = DEFAULT_NS_EPS,
    dtype: torch.dtype = torch.bfloat16,
) -> Tensor:
    """Approximate the orthogonal polar factor of each matrix in ``G`` (shape ``(..., m, n)``).

    Per matrix: transpose if tall (so the Gram matrix ``X X^T`` is the small ``min(m, n)`` square),
    divide by the Frobenius norm (an upper bound on the spectral norm, so all singular values start in
    (0, 1]), run ``steps`` quintic iterations in ``dtype`` with the per-step triples of
    :func:`coefficient_schedule`, and transpose back. Returns ``G.dtype``. Leading dimensions are a
    batch of independent same-shape matrices: one batched matmul per step instead of a Python loop
    over parameters. A zero matrix maps to zero; NaN/inf in a matrix make its output NaN.
    """
    if G.ndim < 2:
        raise ValueError(f"Newton-Schulz needs matrices (..., m, n); got shape {tuple(G.shape)}")
    schedule = coefficient_schedule(coefficients, steps)
    X = G.to(dtype)
    transposed = G.size(-2) > G.size(-1)
    if transposed:
        X = X.mT
    batch_shape = X.shape
    X = X.reshape(-1, batch_shape[-2], batch_shape[-1])  # (B, m, n) with m <= n
    # Per-matrix Frobenius norm, computed in `dtype` exactly as torch.optim.Muon does.
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for a, b, c in schedule:
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
    coefficients: NSCoefficients,
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
            "steps, wrong coefficients or a broken kernel; use 5 steps with --ns-coefficients muon or "
            "polar_express, or fix the kernel."
        )
