"""Optimizer tests: Muon vs torch.optim.Muon, C3O vs torch.optim.AdamW, the strict split,
stochastic rounding, cautious masking, instant-inversion self-test (both coefficient sets), the
sync-free ok-guard, convergence and resume. All CPU, a few seconds in total.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from training.optim import (
    C3O,
    INSTANT_INVERSION_MAX_RESIDUAL,
    POLAR_EXPRESS_COEFFICIENTS,
    Muon,
    OptimizerPair,
    build_optimizers,
    check_instant_inversion,
    instant_inversion_selftest,
    ns_coefficient_set,
    split_params,
    stochastic_round_to_bf16,
    zeropower_via_newtonschulz,
)
from training.optim import c3o as c3o_module
from training.optim.c3o import _hash32, _hash_noise16, _mix32, _round_with_noise, _runs, cautious_mask_
from training.optim.newton_schulz import DEFAULT_NS_COEFFICIENTS, coefficient_schedule

# ---------------------------------------------------------------------------- helpers

# Several shapes, with repeats (batched orthogonalization) and a tall and a wide matrix.
MUON_SHAPES = [(16, 8), (8, 16), (16, 8), (12, 12), (16, 8), (12, 12), (24, 5)]


def _params(shapes: list[tuple[int, ...]], seed: int = 0) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(*s, generator=gen)) for s in shapes]


def _run(opt: torch.optim.Optimizer, params: list[nn.Parameter], steps: int, seed: int = 1) -> None:
    """Deterministic fake gradients, identical for any optimizer given the same params and seed."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        opt.step()


class FakeModel(nn.Module):
    """Tiny stand-in for the real model: embedding -> 2 block matrices -> norm -> tied/untied head."""

    def __init__(self, vocab: int = 11, dim: int = 8, tied: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.block = nn.ModuleDict(
            {"up": nn.Linear(dim, 2 * dim, bias=False), "down": nn.Linear(2 * dim, dim, bias=False)}
        )
        self.norm = nn.RMSNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        if tied:
            self.head.weight = self.embed.weight
        self.roles_override: dict[str, str] | None = None

    def param_roles(self) -> dict[str, str]:
        if self.roles_override is not None:
            return dict(self.roles_override)
        roles = {"block.up.weight": "matrix", "block.down.weight": "matrix", "norm.weight": "norm"}
        roles["embed.weight"] = "embedding"
        if self.head.weight is not self.embed.weight:
            roles["head.weight"] = "head"
        return roles

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.block["down"](torch.relu(self.block["up"](h)))
        return self.head(self.norm(h))


# ---------------------------------------------------------------------------- Muon


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust_lr_fn", [None, "original", "match_rms_adamw"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_muon_matches_torch_muon(nesterov: bool, adjust_lr_fn: str | None, weight_decay: float) -> None:
    ours_p = _params(MUON_SHAPES)
    ref_p = [nn.Parameter(p.detach().clone()) for p in ours_p]
    kwargs = dict(
        lr=0.02, weight_decay=weight_decay, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust_lr_fn
    )
    _run(Muon(ours_p, **kwargs), ours_p, steps=5)
    _run(torch.optim.Muon(ref_p, **kwargs), ref_p, steps=5)
    for a, b in zip(ours_p, ref_p, strict=True):
        # Same bf16 kernel, batched or not: bit-identical on CPU.
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_muon_defaults_match_torch() -> None:
    ours = Muon(_params([(4, 4)])).defaults
    ref = torch.optim.Muon(_params([(4, 4)])).defaults
    for key in ("lr", "weight_decay", "momentum", "nesterov", "eps", "ns_steps", "adjust_lr_fn"):
        assert ours[key] == ref[key], key
    assert tuple(ours["ns_coefficients"]) == tuple(ref["ns_coefficients"]) == DEFAULT_NS_COEFFICIENTS


def test_muon_rejects_non_matrix() -> None:
    with pytest.raises(ValueError, match="2-D"):
        Muon([nn.Parameter(torch.zeros(4))])


def test_batched_newton_schulz_equals_per_matrix() -> None:
    G = torch.randn(5, 20, 12)
    batched = zeropower_via_newtonschulz(G)
    single = torch.stack([zeropower_via_newtonschulz(g) for g in G])
    torch.testing.assert_close(batched, single, rtol=0, atol=0)
    assert batched.dtype == G.dtype


def test_muon_update_is_orthogonal() -> None:
    """The applied update is U S' V^T for the gradient's SVD U S V^T, with S' in the quintic's band."""
    grad = torch.randn(32, 16)
    p = nn.Parameter(torch.zeros(32, 16))
    opt = Muon([p], lr=1.0, weight_decay=0.0, nesterov=False, momentum=0.0)  # update = NS(grad)
    p.grad = grad.clone()
    opt.step()
    update = -p.detach() / math.sqrt(32 / 16)  # undo the "original" lr adjustment
    s = torch.linalg.svdvals(update)
    assert s.min() > 0.5 and s.max() < 1.5, s
    # Same singular vectors as the gradient: U^T O V is diagonal (off-diagonal only bf16 noise).
    U, _, Vh = torch.linalg.svd(grad, full_matrices=False)
    core = U.T @ update @ Vh.T
    off_diag = core - torch.diag(torch.diagonal(core))
    assert off_diag.abs().max() < 0.05, off_diag.abs().max()
    # fp32 with more steps: still in the band, and ortho^T ortho ~ I within the band's width.
    ortho = zeropower_via_newtonschulz(grad, steps=10, dtype=torch.float32)
    s32 = torch.linalg.svdvals(ortho)
    assert s32.min() > 0.6 and s32.max() < 1.3, s32
    torch.testing.assert_close(ortho.T @ ortho, torch.eye(16), atol=0.5, rtol=0)


def test_muon_custom_ns_fn_is_called_once_per_shape() -> None:
    calls: list[tuple[int, ...]] = []

    def spy(G: torch.Tensor, **kw: object) -> torch.Tensor:
        calls.append(tuple(G.shape))
        return zeropower_via_newtonschulz(G, **kw)  # type: ignore[arg-type]

    params = _params(MUON_SHAPES)
    _run(Muon(params, ns_fn=spy), params, steps=1)
    assert sorted(calls) == sorted([(3, 16, 8), (1, 8, 16), (2, 12, 12), (1, 24, 5)])


def test_compiled_muon_joins_transposed_shapes_in_one_call_and_matches_eager() -> None:
    """compile=True: (16, 8) and (8, 16) updates share one Newton–Schulz call; values equal the eager path.

    Every call gets its batch normalised and wide (``prenormalized=True``), so the tall (24, 5) comes as (5, 24).
    """
    calls: list[tuple[int, ...]] = []

    def spy(G: torch.Tensor, **kw: object) -> torch.Tensor:
        calls.append(tuple(G.shape))
        return zeropower_via_newtonschulz(G, **kw)  # type: ignore[arg-type]

    eager_params, compiled_params = _params(MUON_SHAPES), _params(MUON_SHAPES)
    _run(Muon(eager_params, weight_decay=0.1, adjust_lr_fn="original"), eager_params, steps=2)
    opt = Muon(compiled_params, weight_decay=0.1, adjust_lr_fn="original", ns_fn=spy, compile=True)
    _run(opt, compiled_params, steps=2)
    assert sorted(calls) == sorted([(4, 8, 16), (2, 12, 12), (1, 5, 24)] * 2)
    for e, c in zip(eager_params, compiled_params, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- instant inversion


# Measured residuals (see INSTANT_INVERSION_MAX_RESIDUAL): muon 0.187, polar_express 0.094.
@pytest.mark.parametrize(("name", "low", "high"), [("muon", 0.15, 0.22), ("polar_express", 0.07, 0.12)])
def test_instant_inversion_default_config_passes(name: str, low: float, high: float) -> None:
    result = instant_inversion_selftest(
        steps=5, coefficients=ns_coefficient_set(name), dtype=torch.bfloat16, device="cpu"
    )
    print(
        f"{name}: instant_inversion_rel_residual={result['instant_inversion_rel_residual']:.4f} "
        f"(bound {INSTANT_INVERSION_MAX_RESIDUAL})"
    )
    assert result["instant_inversion_iters"] == 5
    assert low < result["instant_inversion_rel_residual"] < high
    check_instant_inversion(result)


@pytest.mark.parametrize(
    ("name", "steps"), [("muon", 1), ("muon", 2), ("polar_express", 3), ("polar_express", 4)]
)
def test_instant_inversion_too_few_steps_fails(name: str, steps: int) -> None:
    result = instant_inversion_selftest(
        steps=steps, coefficients=ns_coefficient_set(name), dtype=torch.bfloat16, device="cpu"
    )
    with pytest.raises(RuntimeError, match="exceeds the bound"):
        check_instant_inversion(result)


def test_coefficient_sets_and_schedule() -> None:
    assert ns_coefficient_set("muon") == DEFAULT_NS_COEFFICIENTS
    assert ns_coefficient_set("polar_express") == POLAR_EXPRESS_COEFFICIENTS
    assert len(POLAR_EXPRESS_COEFFICIENTS) == 5
    with pytest.raises(ValueError, match="--ns-coefficients"):
        ns_coefficient_set("cubic")
    assert coefficient_schedule(DEFAULT_NS_COEFFICIENTS, 3) == (DEFAULT_NS_COEFFICIENTS,) * 3
    pe = POLAR_EXPRESS_COEFFICIENTS
    assert coefficient_schedule(pe, 2) == pe[:2]
    assert coefficient_schedule(pe, 7) == (*pe, pe[-1], pe[-1])  # past its length the last triple repeats
    for bad in [(1.0, 2.0), [(1.0, 2.0, 3.0), (1.0, 2.0)], []]:
        with pytest.raises(ValueError, match="triple"):
            coefficient_schedule(bad, 5)  # type: ignore[arg-type]


def test_newton_schulz_per_step_coefficients() -> None:
    """A per-step sequence applies triple i at step i: equal to chaining one-step calls by hand."""
    G = torch.randn(3, 12, 20)
    pe = POLAR_EXPRESS_COEFFICIENTS
    out = zeropower_via_newtonschulz(G, steps=5, coefficients=pe, dtype=torch.float32)
    X = G / G.norm(dim=(-2, -1), keepdim=True)
    for a, b, c in pe:
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    torch.testing.assert_close(out, X, rtol=1e-4, atol=1e-5)
    # The repeated triple and its explicit 5-fold sequence are the same thing.
    one = zeropower_via_newtonschulz(G, coefficients=DEFAULT_NS_COEFFICIENTS)
    seq = zeropower_via_newtonschulz(G, coefficients=[DEFAULT_NS_COEFFICIENTS] * 5)
    assert torch.equal(one, seq)
    assert torch.equal(zeropower_via_newtonschulz(torch.zeros(2, 4, 6)), torch.zeros(2, 4, 6))


def test_instant_inversion_nan_fails() -> None:
    def nan_kernel(G: torch.Tensor, **kw: object) -> torch.Tensor:
        return zeropower_via_newtonschulz(G * float("nan"), **kw)  # type: ignore[arg-type]

    result = instant_inversion_selftest(
        steps=5, coefficients=DEFAULT_NS_COEFFICIENTS, dtype=torch.bfloat16, device="cpu", ns_fn=nan_kernel
    )
    with pytest.raises(RuntimeError, match="non-finite"):
        check_instant_inversion(result)


def test_instant_inversion_wrong_coefficients_fail() -> None:
    result = instant_inversion_selftest(
        steps=5, coefficients=(1.5, -0.5, 0.0), dtype=torch.float32, device="cpu"
    )
    with pytest.raises(RuntimeError):
        check_instant_inversion(result)


# ---------------------------------------------------------------------------- C3O


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_c3o_equals_adamw(weight_decay: float) -> None:
    shapes = [(7, 5), (5,), (3, 4, 2)]
    ours_p = _params(shapes)
    ref_p = [nn.Parameter(p.detach().clone()) for p in ours_p]
    kwargs = dict(lr=3e-3, betas=(0.8, 0.95), eps=1e-7, weight_decay=weight_decay)
    _run(C3O(ours_p, cautious=False, state_dtype=torch.float32, **kwargs), ours_p, steps=20)
    _run(torch.optim.AdamW(ref_p, **kwargs), ref_p, steps=20)
    for a, b in zip(ours_p, ref_p, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_stochastic_rounding_is_unbiased() -> None:
    # A value a quarter of the way between two bf16 neighbours: round-to-nearest always rounds down.
    lo = torch.tensor(1.0, dtype=torch.bfloat16).float()
    ulp = 2.0**-7
    x = torch.full((200_000,), float(lo) + 0.25 * ulp)
    gen = torch.Generator().manual_seed(0)
    sr = stochastic_round_to_bf16(x, gen).float()
    assert set(sr.unique().tolist()) == {1.0, 1.0 + ulp}
    assert abs(sr.mean().item() - x[0].item()) < 0.01 * ulp
    assert x.to(torch.bfloat16).float().mean().item() == 1.0  # nearest: biased by -0.25 ulp
    # Negative values and specials.
    neg = stochastic_round_to_bf16(-x, gen).float()
    assert abs(neg.mean().item() + x[0].item()) < 0.01 * ulp
    special = torch.tensor([float("inf"), float("-inf"), 0.0, -0.0])
    assert torch.equal(stochastic_round_to_bf16(special, gen).float(), special)
    assert stochastic_round_to_bf16(torch.tensor([float("nan")]), gen).isnan().all()


def _least_squares(opt_factory, steps: int = 300, param_dtype: torch.dtype = torch.float32) -> float:
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(64, 16, generator=gen)
    w_true = torch.randn(16, 1, generator=gen)
    y = A @ w_true
    w = nn.Parameter(torch.zeros(16, 1, dtype=param_dtype))
    opt = opt_factory([w])
    for _ in range(steps):
        loss = ((A @ w.float() - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ((A @ w.float() - y) ** 2).mean().item()


def test_c3o_bf16_state_tracks_fp32() -> None:
    kw = dict(lr=0.03, betas=(0.9, 0.999), weight_decay=0.0)
    start = _least_squares(lambda p: C3O(p, **kw), steps=0)
    fp32 = _least_squares(lambda p: C3O(p, state_dtype=torch.float32, **kw))
    bf16 = _least_squares(lambda p: C3O(p, state_dtype=torch.bfloat16, **kw))
    # bf16 params too (SR on the parameter write-back): still converges.
    bf16_params = _least_squares(
        lambda p: C3O(p, state_dtype=torch.bfloat16, **kw), param_dtype=torch.bfloat16
    )
    assert fp32 < 1e-3 * start
    assert bf16 < max(5 * fp32, 1e-4 * start), (fp32, bf16)
    assert bf16_params < 1e-2 * start, bf16_params


def test_c3o_bf16_param_sr_keeps_small_updates() -> None:
    """A bf16 parameter nudged by less than half an ulp per step: nearest rounding would never move it."""
    p = nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    opt = C3O([p], lr=1e-3, weight_decay=0.0, state_dtype=torch.bfloat16)  # Adam step ~ lr << ulp(1)/2
    for _ in range(50):
        p.grad = torch.ones_like(p)
        opt.step()
    moved = 1.0 - p.float().mean().item()
    assert moved == pytest.approx(50 * 1e-3, rel=0.1)
    # Round-to-nearest would lose every one of those steps: 1 - 1e-3 rounds back to 1 in bf16.
    assert torch.tensor(1.0 - 1e-3).to(torch.bfloat16).item() == 1.0


def test_cautious_mask_zeroes_disagreeing_components() -> None:
    update = torch.tensor([1.0, -2.0, 3.0, -4.0])
    grad = torch.tensor([0.5, 1.0, 2.0, -1.0])  # agrees at 0, 2, 3
    out = cautious_mask_(update.clone(), grad)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0, 3.0, -4.0]) / 0.75)
    # All disagree: everything zero, no division blow-up.
    assert torch.equal(cautious_mask_(update.clone(), -update), torch.zeros(4))


def test_c3o_cautious_bucket_equals_per_tensor_reference() -> None:
    # Interleaved sizes, as a model lists its norm gains: the bucket reorders them (largest first) and
    # masks whole runs of equal size at once; every tensor must still get its own kept fraction.
    shapes = [(6,), (4, 3), (6,), (2,), (4, 3), (6,), (2,)]
    ours_p = _params(shapes)
    ref_p = [p.detach().clone() for p in ours_p]
    lr, (beta1, beta2), eps, wd = 1e-2, (0.9, 0.95), 1e-8, 0.1
    opt = C3O(ours_p, lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=wd, cautious=True)
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in ref_p]
    gen = torch.Generator().manual_seed(1)
    for t in range(1, 4):
        grads = [torch.randn(p.shape, generator=gen) for p in ours_p]
        for p, g in zip(ours_p, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for p, g, (m, v) in zip(ref_p, grads, moments, strict=True):
            p.mul_(1 - lr * wd)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            update = m / ((v.sqrt() / math.sqrt(1 - beta2**t)) + eps)
            p.add_(cautious_mask_(update, g), alpha=-lr / (1 - beta1**t))
    for a, b in zip(ours_p, ref_p, strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=0, atol=1e-6)


def test_c3o_segments_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Large tensors are updated alone and the small ones joined; the arithmetic and the rounding noise
    # of every element must be what one flat pass over the whole bucket gives, bit for bit.
    def run(min_numel: int) -> list[torch.Tensor]:
        monkeypatch.setattr(c3o_module, "_SEGMENT_MIN_NUMEL", min_numel)
        params = _params([(40, 8), (6,), (2,), (30, 8), (6,)])
        for p in params:
            p.data = p.data.bfloat16()
        opt = C3O(params, lr=1e-2, weight_decay=0.1, cautious=True, state_dtype=torch.bfloat16, seed=3)
        _run(opt, params, steps=3)
        return [p.detach().clone() for p in params] + [t for s in opt.state.values() for t in s.values()]

    monkeypatch.setattr(c3o_module, "_SEGMENT_MIN_NUMEL", 100)
    assert c3o_module._segments([320, 240, 6, 6, 2]) == [(0, 1, 0), (1, 2, 320), (2, 5, 560)]
    assert c3o_module._segments([6, 320, 2, 6]) == [(0, 1, 0), (1, 2, 6), (2, 4, 326)]
    one_piece, segmented = run(1 << 30), run(100)
    assert all(torch.equal(a, b) for a, b in zip(one_piece, segmented, strict=True))


def test_c3o_runs_of_equal_sizes() -> None:
    assert _runs([12, 6, 6, 6, 2, 2]) == [(1, 12), (3, 6), (2, 2)]
    assert _runs([6, 2, 6]) == [(1, 6), (1, 2), (1, 6)]  # correct in any order, just more blocks


def test_c3o_cautious_skips_disagreeing_coordinates() -> None:
    p = nn.Parameter(torch.zeros(2))
    opt = C3O([p], lr=0.1, weight_decay=0.0, cautious=True)
    p.grad = torch.tensor([1.0, 1.0])
    opt.step()
    before = p.detach().clone()
    p.grad = torch.tensor([1.0, -1e-3])  # second coordinate: momentum still positive, grad negative
    opt.step()
    assert p[0] < before[0]
    assert p[1] == before[1]


# ---------------------------------------------------------------------------- split


def test_split_groups_and_counts() -> None:
    model = FakeModel()
    split = split_params(model)
    assert [n for n, _ in split.muon] == ["block.up.weight", "block.down.weight"]
    assert {n for n, _ in split.c3o} == {
        "embed.weight",
        "norm.weight",
        "head.weight",
    }  # 2-D embedding/head -> C3O
    assert split.summary == {"muon_params": 2, "c3o_params": 3, "muon_numel": 256, "c3o_numel": 88 + 8 + 88}


def test_split_tied_head_counted_once() -> None:
    model = FakeModel(tied=True)
    split = split_params(model)
    assert [n for n, _ in split.c3o] == ["embed.weight", "norm.weight"]
    assert split.aliases == {"embed.weight": ["head.weight"]}
    assert split.c3o_numel == 88 + 8
    # Declaring the alias too is fine while the roles agree on the optimizer.
    model.roles_override = {**model.param_roles(), "head.weight": "head"}
    assert split_params(model).roles["embed.weight"] == "embedding"


def test_split_errors_name_the_parameter() -> None:
    model = FakeModel()
    base = model.param_roles()
    model.roles_override = {**base, "norm.weight": "matrix"}
    with pytest.raises(ValueError, match=r"'norm.weight'.*'matrix'.*1-D"):
        split_params(model)
    model.roles_override = {k: v for k, v in base.items() if k != "block.down.weight"}
    with pytest.raises(ValueError, match=r"'block.down.weight'.*no entry in param_roles"):
        split_params(model)
    model.roles_override = {**base, "ghost.weight": "norm"}
    with pytest.raises(ValueError, match=r"'ghost.weight'.*not a parameter"):
        split_params(model)
    model.roles_override = {**base, "head.weight": "bias"}
    with pytest.raises(ValueError, match=r"'head.weight'.*unknown role 'bias'"):
        split_params(model)
    tied = FakeModel(tied=True)
    tied.roles_override = {**tied.param_roles(), "head.weight": "matrix"}
    with pytest.raises(ValueError, match=r"'embed.weight'.*tied"):
        split_params(tied)


def test_split_skips_frozen() -> None:
    model = FakeModel()
    model.norm.weight.requires_grad_(False)
    split = split_params(model)
    assert "norm.weight" not in {n for n, _ in split.c3o}


def test_build_optimizers_weight_decay_groups() -> None:
    kwargs = dict(lr=1e-3, muon_lr=0.02, weight_decay=0.1, betas=(0.9, 0.95), c3o_state_dtype=torch.float32,
                  c3o_cautious=False, muon_momentum=0.95, ns_steps=5)
    pair = build_optimizers(FakeModel(), **kwargs)
    assert pair.muon is not None and pair.c3o is not None
    assert pair.muon.param_groups[0]["weight_decay"] == 0.1
    wd = {g["name"]: (g["weight_decay"], len(g["params"])) for g in pair.c3o.param_groups}
    assert wd == {"c3o_decay": (0.1, 1), "c3o_no_decay": (0.0, 2)}  # head decayed; embedding, norm not
    pair.set_lr_multiplier(0.5, momentum=0.9)
    assert pair.lrs() == {"muon": 0.01, "c3o_decay": 5e-4, "c3o_no_decay": 5e-4}
    assert pair.muon.param_groups[0]["momentum"] == 0.9
    assert pair.muon.param_groups[0]["ns_coefficients"] == DEFAULT_NS_COEFFICIENTS
    pe = build_optimizers(FakeModel(), **kwargs, ns_coefficients="polar_express")
    assert pe.muon is not None and pe.muon.param_groups[0]["ns_coefficients"] == POLAR_EXPRESS_COEFFICIENTS


# ---------------------------------------------------------------------------- convergence and resume


def _build(
    model: nn.Module, state_dtype: torch.dtype = torch.float32, cautious: bool = False
) -> OptimizerPair:
    return build_optimizers(
        model,
        lr=1e-2,
        muon_lr=0.02,
        weight_decay=0.01,
        betas=(0.9, 0.95),
        c3o_state_dtype=state_dtype,
        c3o_cautious=cautious,
        muon_momentum=0.95,
        ns_steps=5,
    )


def _train(model: nn.Module, pair: OptimizerPair, steps: int, start: int = 0) -> list[float]:
    losses = []
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(step)
        x = torch.randint(0, 11, (16, 6), generator=gen)
        y = (x * 3 + 1) % 11  # a learnable token map
        loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        pair.zero_grad(set_to_none=True)
        loss.backward()
        pair.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("cautious", [False, True])
def test_muon_c3o_reduce_loss(cautious: bool) -> None:
    torch.manual_seed(0)
    model = FakeModel(dim=16)
    losses = _train(model, _build(model, cautious=cautious), steps=60)
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16])
def test_state_dict_round_trip_is_bit_identical(state_dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    straight = FakeModel()
    resumed = copy.deepcopy(straight)

    pair = _build(straight, state_dtype)
    _train(straight, pair, 6)

    first = _build(resumed, state_dtype)
    _train(resumed, first, 3)
    saved = copy.deepcopy(first.state_dict())
    fresh = _build(resumed, state_dtype)
    fresh.load_state_dict(saved)
    if state_dtype == torch.bfloat16:
        assert fresh.c3o is not None
        assert all(s["exp_avg"].dtype == torch.bfloat16 for s in fresh.c3o.state.values())
    _train(resumed, fresh, 3, start=3)

    for (name, a), (_, b) in zip(straight.named_parameters(), resumed.named_parameters(), strict=True):
        assert torch.equal(a, b), name


# ---------------------------------------------------------------------------- stacked state, old format


def test_muon_state_is_per_parameter_and_loads_torch_muon_state() -> None:
    """state_dict keeps one momentum per parameter (views of the stacked buffer); torch's own loads."""
    ours_p = _params(MUON_SHAPES)
    ref_p = [nn.Parameter(p.detach().clone()) for p in ours_p]
    ref = torch.optim.Muon(ref_p, lr=0.02, momentum=0.9)
    _run(ref, ref_p, steps=3)
    ours = Muon(ours_p, lr=0.02, momentum=0.9)
    for a, b in zip(ours_p, ref_p, strict=True):
        a.data.copy_(b)
    ours.load_state_dict(copy.deepcopy(ref.state_dict()))  # the pre-bucket, per-parameter format
    _run(ours, ours_p, steps=3, seed=7)
    _run(ref, ref_p, steps=3, seed=7)
    for a, b in zip(ours_p, ref_p, strict=True):
        assert torch.equal(a, b)
    state = ours.state_dict()["state"]
    # The Newton-Schulz settings are this run's, not the checkpoint's.
    pe = Muon(ours_p, ns_coefficients=POLAR_EXPRESS_COEFFICIENTS)
    pe.load_state_dict(ours.state_dict())
    assert pe.param_groups[0]["ns_coefficients"] == POLAR_EXPRESS_COEFFICIENTS
    for i, p in enumerate(ours_p):
        assert state[i]["momentum_buffer"].shape == p.shape
        assert torch.equal(state[i]["momentum_buffer"], ref.state_dict()["state"][i]["momentum_buffer"])


def test_c3o_state_is_per_parameter() -> None:
    params = _params([(7, 5), (5,), (3, 4, 2)])
    opt = C3O(params, state_dtype=torch.bfloat16)
    _run(opt, params, steps=2)
    state = opt.state_dict()["state"]
    for i, p in enumerate(params):
        assert state[i]["exp_avg"].shape == p.shape and state[i]["exp_avg"].dtype == torch.bfloat16
        assert float(state[i]["step"]) == 2.0


# ---------------------------------------------------------------------------- hashed stochastic rounding


def test_hashed_noise_rounding_is_unbiased_and_keyed() -> None:
    lo = torch.tensor(1.0, dtype=torch.bfloat16).float()
    ulp = 2.0**-7
    x = torch.full((200_000,), float(lo) + 0.25 * ulp)
    key = torch.tensor(12345)
    noise = _hash_noise16(x.numel(), key)
    assert noise.min() >= 0 and noise.max() < 1 << 16
    # Uniform to within sampling error: mean (2^16 - 1) / 2, every 1/16th of the range about equally full.
    assert abs(noise.float().mean().item() / 32767.5 - 1) < 0.01
    counts = torch.bincount(noise >> 12, minlength=16).float()
    assert (counts / counts.mean() - 1).abs().max() < 0.05
    sr = _round_with_noise(x, noise).float()
    assert set(sr.unique().tolist()) == {1.0, 1.0 + ulp}
    assert abs(sr.mean().item() - x[0].item()) < 0.01 * ulp
    neg = _round_with_noise(-x, noise).float()
    assert abs(neg.mean().item() + x[0].item()) < 0.01 * ulp
    # Same key, same noise; another key, different noise.
    assert torch.equal(noise, _hash_noise16(x.numel(), key))
    assert not torch.equal(noise, _hash_noise16(x.numel(), torch.tensor(12346)))


@pytest.mark.parametrize("key", [777, 0x9E3779B9, 0xFFFFFFFF])
def test_hash_in_int32_lanes_equals_the_64_bit_hash(key: int) -> None:
    # Same bits as lowbias32 in int64 lanes, for keys and indices past 2^31 too.
    key_t = torch.tensor(key)
    for start in (0, (1 << 31) - 5000):
        ref = _mix32(torch.arange(start, start + 10_000, dtype=torch.int64) ^ key_t)
        assert torch.equal(_hash32(10_000, key_t, start).to(torch.int64) & 0xFFFFFFFF, ref)
    assert _mix32(key) == int(_mix32(torch.tensor(key)))  # the Python-int path agrees with the tensor path


def test_hash_compiled_equals_eager() -> None:
    # Inductor's C++ code must wrap int32 products as eager does (Triton's: tests/test_gpu_optim.py).
    key = torch.tensor(0xDEADBEEF)
    compiled = torch.compile(_hash32, fullgraph=True, dynamic=False)
    assert torch.equal(compiled(50_000, key, 12_345), _hash32(50_000, key, 12_345))


def test_hash_halves_are_uniform_and_unrelated() -> None:
    # The two moments round with the two halves of one hash: each half uniform, the halves uncorrelated.
    bits = _hash32(200_000, torch.tensor(777), start=5)
    high, low = ((bits >> 16) & 0xFFFF).float(), (bits & 0xFFFF).float()
    for half in (high, low):
        counts = torch.bincount(half.long() >> 12, minlength=16).float()
        assert (counts / counts.mean() - 1).abs().max() < 0.05
    assert abs(torch.corrcoef(torch.stack([high, low]))[0, 1].item()) < 0.01
    assert torch.equal(bits[10:20], _hash32(10, torch.tensor(777), start=15))  # a slice draws the same


def test_c3o_bf16_noise_depends_on_seed_only_through_the_seed() -> None:
    def run(seed: int) -> list[torch.Tensor]:
        params = _params([(64, 16), (16,)])
        _run(C3O(params, lr=1e-2, state_dtype=torch.bfloat16, seed=seed), params, steps=3)
        return [p.detach().clone() for p in params]

    a, b, c = run(0), run(0), run(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


# ---------------------------------------------------------------------------- sync-free ok-guard


def _pair_and_model(state_dtype: torch.dtype, param_dtype: torch.dtype) -> tuple[nn.Module, OptimizerPair]:
    torch.manual_seed(0)
    model = FakeModel(dim=16)
    for p in model.parameters():
        p.data = p.data.to(param_dtype)
    pair = build_optimizers(
        model,
        lr=1e-2,
        muon_lr=0.02,
        weight_decay=0.1,
        betas=(0.9, 0.95),
        c3o_state_dtype=state_dtype,
        c3o_cautious=True,
        muon_momentum=0.95,
        ns_steps=5,
    )
    # An untied head puts a parameter in the decayed C3O group too.
    return model, pair


def _fake_grads(model: nn.Module, step: int, poison: bool = False) -> None:
    gen = torch.Generator().manual_seed(1000 + step)
    for i, p in enumerate(model.parameters()):
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        if poison:
            p.grad.view(-1)[i % p.numel()] = float("nan") if i % 2 else float("inf")


def _snapshot(
    model: nn.Module, pair: OptimizerPair
) -> tuple[list[torch.Tensor], list[tuple[str, torch.Tensor]]]:
    params = [p.detach().clone() for p in model.parameters()]
    state = []
    for key, sd in pair.state_dict().items():
        for pid, entry in sorted((sd or {"state": {}})["state"].items()):
            for name, value in sorted(entry.items()):
                state.append((f"{key}/{pid}/{name}", value.detach().clone()))
    return params, state


def _assert_bit_identical(a: tuple, b: tuple) -> None:
    for x, y in zip(a[0], b[0], strict=True):
        assert torch.equal(x.view(-1).view(torch.uint8), y.view(-1).view(torch.uint8))
    assert [k for k, _ in a[1]] == [k for k, _ in b[1]]
    for (k, x), (_, y) in zip(a[1], b[1], strict=True):
        assert x.dtype == y.dtype and torch.equal(
            x.view(-1).view(torch.uint8), y.view(-1).view(torch.uint8)
        ), k


DTYPES = [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)]


@pytest.mark.parametrize(("state_dtype", "param_dtype"), DTYPES)
def test_skipped_step_changes_nothing(state_dtype: torch.dtype, param_dtype: torch.dtype) -> None:
    model, pair = _pair_and_model(state_dtype, param_dtype)
    _fake_grads(model, 0, poison=True)
    pair.step(ok=torch.tensor(False))  # a skipped very first step: state created, nothing moved
    for step in range(1, 3):
        _fake_grads(model, step)
        pair.step()
    before = _snapshot(model, pair)
    _fake_grads(model, 3, poison=True)
    pair.step(ok=torch.tensor(False))
    _assert_bit_identical(before, _snapshot(model, pair))


@pytest.mark.parametrize(("state_dtype", "param_dtype"), DTYPES)
def test_ok_true_equals_unguarded_and_skip_equals_absence(
    state_dtype: torch.dtype, param_dtype: torch.dtype
) -> None:
    """step(ok=True) == step(); and a skipped step in the middle == the same run without it."""
    plain_model, plain = _pair_and_model(state_dtype, param_dtype)
    guarded_model, guarded = _pair_and_model(state_dtype, param_dtype)
    for step in range(4):
        _fake_grads(plain_model, step)
        plain.step()
        if step == 2:
            _fake_grads(guarded_model, 99, poison=True)
            guarded.step(ok=torch.tensor(False))
        _fake_grads(guarded_model, step)
        guarded.step(ok=torch.tensor(True))
    _assert_bit_identical(_snapshot(plain_model, plain), _snapshot(guarded_model, guarded))
