"""CPU tests of the Triton Newton–Schulz kernel (``TRITON_INTERPRET=1``), against the PyTorch reference.

Tiny shapes with 16-wide tiles, so every matrix spans several tiles and the mirrored writes of the
symmetric products run. The interpreter's fp32 -> bf16 stores truncate instead of rounding to nearest,
so bf16 results are checked loosely here; tests/test_gpu_optim.py holds the tight bound on CUDA.
"""

import os
import re

import pytest
import torch
from interpret import use_triton_interpreter
from sm90 import build_for_h100

if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "interpreter tests: on a CUDA machine tests/test_gpu_optim.py runs the kernel "
        "(set TRITON_INTERPRET=1 to run these anyway)",
        allow_module_level=True,
    )
use_triton_interpreter()  # before any kernel module (or triton itself) is imported

from torch import nn  # noqa: E402

from model.kernels import newton_schulz as ns  # noqa: E402
from training.optim import (  # noqa: E402
    POLAR_EXPRESS_COEFFICIENTS,
    Muon,
    check_instant_inversion,
    instant_inversion_selftest,
    ns_coefficient_set,
)
from training.optim.newton_schulz import DEFAULT_NS_COEFFICIENTS  # noqa: E402


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in fp64 (NaN if either holds a NaN)."""
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


@pytest.mark.parametrize(
    ("shape", "coefficients"),
    [
        ((2, 32, 64), DEFAULT_NS_COEFFICIENTS),
        ((2, 32, 64), POLAR_EXPRESS_COEFFICIENTS),
        ((3, 40, 24), DEFAULT_NS_COEFFICIENTS),  # tall (transposed to 24 x 40) and 40 not a tile multiple
    ],
)
def test_matches_reference(shape: tuple[int, int, int], coefficients: object) -> None:
    G = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    out = ns.triton_impl(G, steps=5, coefficients=coefficients)
    assert out.shape == G.shape and out.dtype == G.dtype
    exact = ns.reference(G, steps=5, coefficients=coefficients, dtype=torch.float32)
    bf16 = ns.reference(G, steps=5, coefficients=coefficients)
    # The bf16 reference itself is ~2% off the fp32 one; the kernel may be ~2.5x that here, because
    # the interpreter truncates each bf16 store (a biased error Polar Express's large first step
    # amplifies). Measured: 1.9% (muon), 4.2% (polar_express); a wrong tile or coefficient is >50%.
    assert rel_err(out, exact) < 3 * rel_err(bf16, exact), (rel_err(out, exact), rel_err(bf16, exact))


def test_gram_kernel_computes_the_full_symmetric_product() -> None:
    """Upper tiles computed, lower tiles mirrored, the ragged edge masked: equals X X^T (fp32, exact maths)."""
    X = torch.randn(2, 40, 24, generator=torch.Generator().manual_seed(1))  # 3 x 3 tiles of 16, last ragged
    out = torch.full((2, 40, 40), float("nan"))
    scale = torch.full((2 * (1 + 3),), float("nan"))  # read only by the first step's launches
    ns._gram_kernel[(3, 3, 2)](
        X, X, out, scale, X.stride(0), X.stride(1), 0, out.stride(0), 2.0, 0.0,
        M=40, K=24, HAS_C=False, UPCAST=True, BLOCK=16, BLOCK_K=16,
    )  # fmt: skip
    torch.testing.assert_close(out, 2 * X @ X.mT, rtol=1e-5, atol=1e-5)
    # With the addend: c A A^T + b A for a symmetric A, the second product of every step.
    A = out / 2
    poly = torch.full_like(A, float("nan"))
    ns._gram_kernel[(3, 3, 2)](
        A, A, poly, scale, A.stride(0), A.stride(1), A.stride(0), poly.stride(0), 0.5, -3.0,
        M=40, K=40, HAS_C=True, UPCAST=True, BLOCK=16, BLOCK_K=16,
    )  # fmt: skip
    torch.testing.assert_close(poly, 0.5 * A @ A - 3.0 * A, rtol=1e-5, atol=1e-3)


def test_first_step_takes_the_norm_from_the_gram_trace() -> None:
    """TRACE: each diagonal tile stores its part of tr(X X^T); FROM_TRACE: the next launch turns the
    parts into s = 1 / ||X||_F, scales ``c A A + b A`` by s^4 and s^2, and stores s for the X update."""
    X = torch.randn(2, 40, 24, generator=torch.Generator().manual_seed(3))
    X[1] *= 7.0
    scale = torch.full((2 * (1 + 3),), float("nan"))  # 2 scales, then 2 x 3 trace parts
    gram = torch.full((2, 40, 40), float("nan"))
    norm_args = dict(TILES_P2=4, EPS=1e-7, UPCAST=True, BLOCK=16, BLOCK_K=16)
    ns._gram_kernel[(3, 3, 2)](
        X, X, gram, scale, X.stride(0), X.stride(1), 0, gram.stride(0), 1.0, 0.0,
        M=40, K=24, HAS_C=False, TRACE=True, **norm_args,
    )  # fmt: skip
    torch.testing.assert_close(gram, X @ X.mT, rtol=1e-4, atol=1e-3)  # unscaled (one matrix 49x larger)
    torch.testing.assert_close(scale[2:].view(2, 3).sum(1), X.square().sum((1, 2)), rtol=1e-5, atol=1e-4)
    poly = torch.full_like(gram, float("nan"))
    ns._gram_kernel[(3, 3, 2)](
        gram, gram, poly, scale, gram.stride(0), gram.stride(1), gram.stride(0), poly.stride(0), 0.5, -3.0,
        M=40, K=40, HAS_C=True, FROM_TRACE=True, **norm_args,
    )  # fmt: skip
    s = 1 / X.norm(dim=(1, 2))
    torch.testing.assert_close(scale[:2], s, rtol=1e-5, atol=0)
    A = s[:, None, None] ** 2 * (X @ X.mT)
    torch.testing.assert_close(poly, 0.5 * A @ A - 3.0 * A, rtol=1e-4, atol=1e-4)


def test_large_finite_inputs_come_out_as_the_reference_does() -> None:
    """Newton–Schulz is scale-invariant, and the reference normalises first. The kernel forms the
    first A A from the unscaled A, which overflows fp32 once ||X|| nears 1e8 here; its rescue launch
    redoes those matrices from the normalised A, so huge finite momenta still give finite updates."""
    G = torch.randn(3, 32, 64, generator=torch.Generator().manual_seed(5))
    base = ns.triton_impl(G, steps=3)
    for factor in (1e4, 1e9, 1e16):  # 1e9 and up overflowed without the rescue
        big = G.clone()
        big[1] *= factor  # one matrix of the batch: the others keep the fast launch's tiles
        out = ns.triton_impl(big, steps=3)
        assert out.isfinite().all(), factor
        assert rel_err(out, base) < 0.03, factor


def test_non_finite_propagates_and_zero_stays_zero() -> None:
    G = torch.randn(3, 32, 48, generator=torch.Generator().manual_seed(2))
    G[1, 3, 5] = float("nan")
    G[2, 0, 0] = float("inf")
    G[0] = 0.0
    out = ns.triton_impl(G, steps=2)
    assert torch.equal(out[0], torch.zeros_like(out[0]))  # Muon's skipped step relies on NS(0) == 0
    assert out[1].isnan().all() and out[2].isnan().all()  # never a silent finite result


def test_muon_with_triton_kernel_matches_reference_kernel() -> None:
    """The kernel behind Muon's stacked (B, m, n) buckets: one step lands where the reference's does."""
    shapes = [(32, 16), (32, 16), (16, 32)]
    gen = torch.Generator().manual_seed(3)
    start = [torch.randn(s, generator=gen) for s in shapes]
    grads = [torch.randn(s, generator=gen) for s in shapes]
    results = []
    for kernel in (ns.triton_impl, ns.reference):
        params = [nn.Parameter(w.clone()) for w in start]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        Muon(params, lr=0.1, weight_decay=0.0, ns_fn=kernel).step()
        results.append([(p.detach() - w) for p, w in zip(params, start, strict=True)])
    for ours, ref in zip(*results, strict=True):
        assert rel_err(ours, ref) < 0.06


@pytest.mark.parametrize(("dtype", "aligned"), [(torch.float32, True), (torch.bfloat16, True), (torch.float32, False)])
def test_compiled_muon_applies_in_the_kernel_as_the_separate_pass_does(dtype: torch.dtype, aligned: bool) -> None:
    """compile=True with the Triton kernel: its last step writes the parameters (tall ones transposed)
    instead of an output Muon's compiled update pass reads back; the parameters land where that pass
    puts them. Parameters that are not 16-byte aligned (views into a buffer) take the separate pass."""
    shapes = [(32, 16), (32, 16), (16, 32), (24, 24)]
    gen = torch.Generator().manual_seed(4)
    start = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [[torch.randn(s, generator=gen).to(dtype) for s in shapes] for _ in range(2)]

    def parameter(w: torch.Tensor) -> nn.Parameter:
        if aligned:
            return nn.Parameter(w.clone())
        buffer = torch.empty(w.numel() + 1, dtype=w.dtype)
        buffer[1:] = w.view(-1)
        return nn.Parameter(buffer[1:].view(w.shape))  # 4 bytes past an aligned address

    def separate(G: torch.Tensor, **kw: object) -> torch.Tensor:  # the kernel, without the fused update
        return ns.triton_impl(G, **kw)  # type: ignore[arg-type]

    results = []
    for kernel in (ns.triton_impl, separate):
        params = [parameter(w) for w in start]
        opt = Muon(params, lr=0.05, weight_decay=0.1, ns_fn=kernel, compile=True)
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            opt.step()
        results.append([p.detach().float() for p in params])
    # bf16: the interpreter's stores truncate where Inductor's pass rounds to nearest, so up to one
    # bf16 ulp per step (2^-7 relative) may differ here; tests/test_gpu_optim.py is the tight check.
    tol = {"rtol": 0, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 2 * 2**-7, "atol": 1e-2}
    for fused, apart in zip(*results, strict=True):
        torch.testing.assert_close(fused, apart, **tol)
    assert not torch.equal(results[0][0], start[0].float())  # it did move


def test_orthogonalize_and_apply_rejects_what_it_cannot_write() -> None:
    G = torch.randn(2, 16, 32)
    good = [torch.zeros(16, 32), torch.zeros(32, 16)]
    alphas, decay = torch.full((2,), -0.1), torch.tensor(1.0)
    with pytest.raises(ValueError, match="does not match"):
        ns.orthogonalize_and_apply(G, good, [False, False], alphas, decay)
    with pytest.raises(ValueError, match="contiguous"):
        ns.orthogonalize_and_apply(G, [good[0], torch.zeros(16, 32).mT.contiguous().mT], [False, False], alphas, decay)
    with pytest.raises(ValueError, match="wide"):
        ns.orthogonalize_and_apply(G.mT, good, [False, True], alphas, decay)
    with pytest.raises(ValueError, match="aligned"):
        ns.orthogonalize_and_apply(G, [good[0], torch.zeros(16 * 32 + 1)[1:].view(32, 16)], [False, True], alphas, decay)
    ns.orthogonalize_and_apply(G, good, [False, True], alphas, decay)  # zeros: p = 0 * 1 - 0.1 * O
    torch.testing.assert_close(good[1].mT, -0.1 * ns.triton_impl(G)[1], rtol=0, atol=1e-6)


def test_bench_cases_cover_the_real_shape_groups() -> None:
    assert ns.muon_shape_groups("124m") == {(768, 768): 48, (2048, 768): 24, (768, 2048): 12}
    assert ns.muon_shape_groups("350m") == {
        (1024, 1024): 48,
        (512, 1024): 48,
        (2816, 1024): 48,
        (1024, 2816): 24,
    }
    for case in ns.bench_cases("124m"):
        assert {"name", "make_inputs", "triton", "reference", "backward"} <= set(case)
        assert case["backward"] is False
    (G,) = ns.bench_cases("124m")[0]["make_inputs"]("cpu")
    assert G.shape == (48, 768, 768) and G.dtype == torch.bfloat16


@pytest.mark.parametrize(("name", "expected"), [("muon", 0.187), ("polar_express", 0.094)])
def test_instant_inversion_selftest_with_the_kernel(name: str, expected: float) -> None:
    """The start-up self-test with the Triton kernel lands where the reference does (0.184 / 0.094 measured)."""
    result = instant_inversion_selftest(
        steps=5,
        coefficients=ns_coefficient_set(name),
        dtype=torch.bfloat16,
        device="cpu",
        ns_fn=ns.triton_impl,
    )
    check_instant_inversion(result)
    assert abs(result["instant_inversion_rel_residual"] - expected) < 0.02


SM90_COMPILE = """
import json, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from model.kernels import newton_schulz as ns

def build(fn, signature, constexprs, config):
    # What the JIT assumes of real launches: 16-byte aligned pointers, strides divisible by 16; the
    # tiles, warps and stages of ns.launch_config, as the launches use them.
    aligned = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(signature.values()) if t != "fp32"}
    options = {k: config.pop(k) for k in ("num_warps", "num_stages")}
    constexprs = constexprs | config
    signature = {**signature, **dict.fromkeys(constexprs, "constexpr")}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned)
    c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    return {"ptx": c.asm["ptx"], "shared": c.metadata.shared}

out = {}
gram = dict.fromkeys(("X", "C", "Out"), "*bf16") | {"Scale": "*fp32"}
gram |= dict.fromkeys(("stride_xb", "stride_xm", "stride_cb", "stride_ob"), "i32")
gram |= {"alpha": "fp32", "beta": "fp32"}
gemm = dict.fromkeys(("S", "X", "Out"), "*bf16") | {"Scale": "*fp32"}
gemm |= dict.fromkeys(("stride_sb", "stride_xb", "stride_ob"), "i32") | {"a": "fp32"}
apply = dict.fromkeys(("S", "X"), "*bf16") | {"Params": "*i64", "Tall": "*i32"}
apply |= dict.fromkeys(("Alphas", "Decay", "Scale"), "*fp32") | dict.fromkeys(("stride_sb", "stride_xb"), "i32")
apply |= {"a": "fp32"}
for m, n in [(768, 768), (768, 2048), (512, 1024), (1024, 1024), (1024, 2816)]:  # the 124m/350m groups, m <= n
    tiles_p2 = triton.next_power_of_2(triton.cdiv(m, ns._block(m)))
    launches = ((False, n, True, False), (False, n, False, False), (True, m, True, False), (True, m, True, True),
                (True, m, False, False))  # as _run_steps: has_c, k, first step, rescue
    for has_c, k, first, rescue in launches:
        c = dict(M=m, K=k, HAS_C=has_c, UPCAST=False, TRACE=first and not has_c,
                 FROM_TRACE=first and has_c, TILES_P2=tiles_p2, EPS=1e-7, RESCUE=rescue, SAFE_SQ=(1e38 / m) ** 0.5)
        config = ns.launch_config("gram", m, n)
        out[f"gram {m}x{k} {has_c} {first} {rescue}"] = build(ns._gram_kernel, gram, c, config)
    for scaled in (True, False):
        c = dict(M=m, N=n, SCALED=scaled, UPCAST=False)
        out[f"gemm {m}x{n} {scaled}"] = build(ns._gemm_axpy_kernel, gemm, c, ns.launch_config("gemm", m, n))
    for fp32 in (False, True):
        c = dict(M=m, N=n, SCALED=False, UPCAST=False, PARAM_FP32=fp32)
        config = ns.launch_config("gemm", m, n)
        out[f"gemm+apply {m}x{n} {fp32}"] = build(ns._gemm_axpy_apply_kernel, apply, c, config)
print(json.dumps(out))
"""


def test_kernels_compile_for_the_h100() -> None:
    """Triton builds both kernels for sm_90 at every 124m/350m shape group with the launch configuration
    ``_ns_iterate`` uses (here on the CPU: compiling needs no GPU): on Hopper tensor cores (``wgmma``),
    with the K loop software-pipelined (``cp.async`` prefetch into shared-memory stages) and within
    the 227 KiB of shared memory a block may use."""
    built = build_for_h100(SM90_COMPILE)
    # 10 GEMMs (first step scaled or not), 10 GEMMs that apply the last step (bf16 or fp32
    # parameters), 19 distinct Gram configurations (first step or not, the first A^2's rescue; the
    # A^2 ones repeat per m)
    assert len(built) == 39
    for name, kernel in built.items():
        assert ".target sm_90" in kernel["ptx"] and "wgmma.mma_async" in kernel["ptx"], name
        assert "cp.async" in kernel["ptx"], name
        assert 64 * 1024 <= kernel["shared"] <= 227 * 1024, name
        if name.startswith("gemm+apply"):  # the parameters are read and written 16 bytes at a time
            assert "st.global.v4" in kernel["ptx"] and not re.search(r"st\.global\.b(16|32)\b", kernel["ptx"]), name
