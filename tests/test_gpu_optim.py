"""GPU tests of the optimizer stack: Triton Newton–Schulz vs the reference at the 124M shapes, the
sync-free ok-guard under ``torch.cuda.set_sync_debug_mode("error")``, and the compiled elementwise
updates (``build_optimizers(compile=True)``).

Skipped without CUDA. Run on the GPU machine:
    python -m pytest -q tests/test_gpu_optim.py
"""

import copy
import os

import pytest
import torch

# Skip before importing the kernel module: importing it here would fix triton.jit to the compiler for
# the whole session, and the interpreter tests (tests/test_kernels_ns.py) need it interpreted.
if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("needs a CUDA GPU and compiled (not interpreted) Triton kernels", allow_module_level=True)
pytestmark = pytest.mark.gpu

from model.config import from_preset  # noqa: E402
from model.decoder import SigmaLM  # noqa: E402
from model.kernels import newton_schulz as ns  # noqa: E402
from training.optim import (  # noqa: E402
    POLAR_EXPRESS_COEFFICIENTS,
    Muon,
    OptimizerPair,
    build_optimizers,
    check_instant_inversion,
    instant_inversion_selftest,
    ns_coefficient_set,
)
from training.optim.newton_schulz import DEFAULT_NS_COEFFICIENTS  # noqa: E402

DEVICE = torch.device("cuda")


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


# ---------------------------------------------------------------------------- Triton Newton-Schulz


@pytest.mark.parametrize("coefficients", [DEFAULT_NS_COEFFICIENTS, POLAR_EXPRESS_COEFFICIENTS])
@pytest.mark.parametrize("case", ns.bench_cases("124m"), ids=lambda c: c["name"])
def test_triton_newton_schulz_matches_reference_at_124m(case: dict, coefficients: object) -> None:
    (G,) = case["make_inputs"](DEVICE)
    out = ns.triton_impl(G, steps=5, coefficients=coefficients)
    assert out.shape == G.shape and out.dtype == G.dtype
    exact = ns.reference(G.float(), steps=5, coefficients=coefficients, dtype=torch.float32)
    bf16 = ns.reference(G, steps=5, coefficients=coefficients)
    # Both run bf16 with fp32 accumulation and round at the same places; only accumulation order
    # differs, so the kernel is as close to the fp32 result as the bf16 reference is, within 50%.
    assert rel_err(out, exact) < 1.5 * rel_err(bf16, exact) + 1e-3, (
        rel_err(out, exact),
        rel_err(bf16, exact),
    )


def test_triton_newton_schulz_nan_and_compile() -> None:
    G = torch.randn(4, 768, 2048, device=DEVICE, dtype=torch.bfloat16)
    G[1, 7, 9] = float("nan")
    G[2, 0, 0] = float("inf")
    out = ns.triton_impl(G)
    assert out[0].isfinite().all() and out[3].isfinite().all()
    assert out[1].isnan().all() and out[2].isnan().all()
    # One custom op to torch.compile: fullgraph works and is as accurate as eager. (Not bitwise:
    # Inductor compiles the op's torch prologue, the Frobenius normalisation, with its own reduction
    # order, and five bf16 iterations turn that last-bit difference into ~1% -- the same size as the
    # kernel's distance from the bf16 reference.)
    compiled = torch.compile(
        lambda x: ns.triton_impl(x, steps=5, coefficients=POLAR_EXPRESS_COEFFICIENTS), fullgraph=True
    )
    G[1, 7, 9] = G[2, 0, 0] = 0.0
    eager = ns.triton_impl(G, steps=5, coefficients=POLAR_EXPRESS_COEFFICIENTS)
    exact = ns.reference(G.float(), steps=5, coefficients=POLAR_EXPRESS_COEFFICIENTS, dtype=torch.float32)
    assert rel_err(compiled(G), exact) < 1.5 * rel_err(eager, exact) + 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_last_step_applies_the_update_as_the_separate_pass_does(dtype: torch.dtype) -> None:
    """Muon with the Triton kernel writes the parameters from the last Newton–Schulz step (tall ones
    transposed); at the 124m MLP and attention shapes they land where the compiled update pass puts
    them: fp32 to rounding, bf16 to one ulp per step (the two round ``p * decay + alpha * O``
    differently now and then) with almost every element identical."""
    shapes = [(2048, 768), (2048, 768), (768, 2048), (768, 768), (768, 768)]
    gen = torch.Generator(device=DEVICE).manual_seed(5)
    start = [torch.randn(s, device=DEVICE, generator=gen).mul(0.02).to(dtype) for s in shapes]
    grads = [[torch.randn(s, device=DEVICE, generator=gen).to(dtype) for s in shapes] for _ in range(3)]

    def separate(G: torch.Tensor, **kw: object) -> torch.Tensor:  # the kernel without the fused update
        return ns.triton_impl(G, **kw)  # type: ignore[arg-type]

    results = []
    try:
        for kernel in (ns.triton_impl, separate):
            params = [torch.nn.Parameter(w.clone()) for w in start]
            opt = Muon(params, lr=0.02, weight_decay=0.1, ns_fn=kernel, compile=True)
            for step_grads in grads:
                for p, g in zip(params, step_grads, strict=True):
                    p.grad = g.clone()
                opt.step()
            results.append([p.detach() for p in params])
    finally:  # Muon's compiled passes are cached per code object: leave the other tests their limit
        torch._dynamo.reset()
    for fused, apart, w in zip(*results, start, strict=True):
        assert not torch.equal(fused, w)
        if dtype == torch.float32:
            torch.testing.assert_close(fused, apart, rtol=1e-5, atol=1e-7)
        else:
            # atol: where p * decay and alpha * O (~1e-2) cancel, the bound is their ulp, not the result's
            torch.testing.assert_close(fused.float(), apart.float(), rtol=len(grads) * 2**-7, atol=2**-13)
            assert (fused == apart).float().mean().item() > 0.99


@pytest.mark.parametrize("name", ["muon", "polar_express"])
def test_instant_inversion_selftest_with_triton_kernel(name: str) -> None:
    """What the trainer runs at start-up with --kernels triton, for both coefficient sets."""
    result = instant_inversion_selftest(
        steps=5,
        coefficients=ns_coefficient_set(name),
        dtype=torch.bfloat16,
        device=DEVICE,
        ns_fn=ns.triton_impl,
    )
    print(name, result)
    check_instant_inversion(result)


# ---------------------------------------------------------------------------- the optimizer step


def _model_and_pair(
    *, triton: bool, compile: bool, coefficients: str = "muon"
) -> tuple[SigmaLM, OptimizerPair]:
    torch.manual_seed(0)
    model = SigmaLM(from_preset("tiny", vocab_size=4096, max_seq_len=64)).to(DEVICE)
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)  # the bf16 profile: bf16 params, bf16 C3O state
    pair = build_optimizers(
        model,
        lr=3e-3,
        muon_lr=0.02,
        weight_decay=0.1,
        betas=(0.9, 0.95),
        c3o_state_dtype=torch.bfloat16,
        c3o_cautious=True,
        muon_momentum=0.95,
        ns_steps=5,
        ns_coefficients=coefficients,
        ns_fn=ns.triton_impl if triton else None,
        compile=compile,
    )
    return model, pair


def _grads(model: SigmaLM, seed: int, poison: bool = False) -> None:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, device=DEVICE, dtype=p.dtype, generator=gen)
    if poison:
        next(iter(model.parameters())).grad.view(-1)[0] = float("nan")


def _flat_state(model: SigmaLM, pair: OptimizerPair) -> list[torch.Tensor]:
    out = [p.detach().clone() for p in model.parameters()]
    for sd in pair.state_dict().values():
        for entry in (sd or {"state": {}})["state"].values():
            out += [v.detach().clone() for _, v in sorted(entry.items())]
    return out


@pytest.mark.parametrize(("triton", "compile"), [(False, False), (True, True)])
def test_step_with_ok_has_no_host_sync(triton: bool, compile: bool) -> None:
    model, pair = _model_and_pair(triton=triton, compile=compile)
    loss = torch.ones((), device=DEVICE)
    for step in range(3):  # warm-up: buckets, compilation, autotuning may sync
        _grads(model, step)
        pair.step(torch.isfinite(loss) & torch.isfinite(loss))
        pair.zero_grad(set_to_none=True)
    _grads(model, 10, poison=True)
    grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.float().norm() for p in model.parameters()]))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ok = torch.isfinite(loss) & torch.isfinite(grad_norm)  # False: a NaN gradient
        pair.step(ok)
        pair.zero_grad(set_to_none=True)
        _grads(model, 11)
        pair.step(torch.isfinite(loss) & torch.isfinite(loss))
        pair.zero_grad(set_to_none=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize(("triton", "compile"), [(False, False), (True, True)])
def test_skipped_step_is_bit_identical_on_gpu(triton: bool, compile: bool) -> None:
    model, pair = _model_and_pair(triton=triton, compile=compile, coefficients="polar_express")
    for step in range(2):
        _grads(model, step)
        pair.step(torch.tensor(True, device=DEVICE))
    before = _flat_state(model, pair)
    _grads(model, 5, poison=True)
    pair.step(torch.tensor(False, device=DEVICE))
    after = _flat_state(model, pair)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8))


def test_compiled_optimizers_match_eager() -> None:
    """compile=True: same maths and hashed noise; only where intermediates round (fp32 vs bf16) differs.

    With bf16 parameters an update near half an ulp rounds either way, so compare what the three
    steps moved each tensor by: a wrong scale or sign would be off by ~100%, rounding by a few %.
    """
    eager_model, eager = _model_and_pair(triton=False, compile=False)
    compiled_model = copy.deepcopy(eager_model)
    compiled = build_optimizers(
        compiled_model, lr=3e-3, muon_lr=0.02, weight_decay=0.1, betas=(0.9, 0.95),
        c3o_state_dtype=torch.bfloat16, c3o_cautious=True, muon_momentum=0.95, ns_steps=5, compile=True,
    )  # fmt: skip
    start = [p.detach().float().clone() for p in eager_model.parameters()]
    for step in range(3):
        for model, pair in ((eager_model, eager), (compiled_model, compiled)):
            _grads(model, step)
            pair.step()
    for w, a, b in zip(start, eager_model.parameters(), compiled_model.parameters(), strict=True):
        assert rel_err(b.float() - w, a.float() - w) < 0.1


def test_hash_is_the_same_on_the_gpu_eager_and_compiled() -> None:
    # C3O's rounding noise relies on int32 products wrapping mod 2^32: on the GPU, eager and through
    # Inductor's Triton code, the hash must give the CPU's bits (and so the same noise everywhere).
    from training.optim.c3o import _hash32

    key, start = torch.tensor(0xDEADBEEF), (1 << 31) - 70_000
    cpu = _hash32(100_000, key, 12_345)
    assert torch.equal(_hash32(100_000, key.to(DEVICE), 12_345).cpu(), cpu)
    compiled = torch.compile(_hash32, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(100_000, key.to(DEVICE), 12_345).cpu(), cpu)
    assert torch.equal(compiled(100_000, key.to(DEVICE), start).cpu(), _hash32(100_000, key, start))
