"""BitNet 1.58: the fused Triton quantiser against the PyTorch reference, training, export, optimizer roles.

The kernel tests run where Triton runs: on the GPU when there is one, else on the CPU under
``TRITON_INTERPRET=1`` (set below, before the kernels are defined) on tiny shapes. "Equal" means
``torch.equal`` (so -0.0 == 0.0); ``model/kernels/bitnet.py`` says why the two agree bit for bit and
the one case (probability ~1e-5 per matrix) where the weight scale may not.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from interpret import use_triton_interpreter
from safetensors.torch import load_file
from sm90 import build_for_h100

from model.bitnet import BitLinear, absmean_scale, bitnet_quant_reference, int8_activation, ternary_weight
from model.config import from_preset
from model.decoder import SigmaLM
from model.hf_compat import BITNET_KEY, export_hf, load_hf
from training.optim import OptimizerPair, build_optimizers, split_params

if not torch.cuda.is_available():
    use_triton_interpreter()  # read when the kernels are decorated, on import
from model.kernels import bitnet as kb  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # where the Triton kernels run in these tests
DTYPES = [torch.float32, torch.bfloat16]
VOCAB, SEQ, BATCH = 256, 32, 8


def special_rows() -> torch.Tensor:
    """Rows that exercise the edge cases: exact ties, an all-zero row, huge and tiny magnitudes."""
    ties = torch.zeros(40)
    # amax 127 gives scale 1.0 exactly, so x * scale hits .5 ties: half-to-even gives 62, -62, 0, 2, 2.
    ties[:8] = torch.tensor([127.0, 62.5, -62.5, 0.5, 1.5, 2.5, -0.5, -1.5])
    zero = torch.zeros(40)
    huge = torch.linspace(-3e4, 3e4, 40)
    tiny = torch.linspace(-1e-7, 1e-7, 40)  # amax below QUANT_EPS: the floor of the scale applies
    return torch.stack([ties, zero, huge, tiny])


def test_reference_rounds_half_to_even() -> None:
    q = int8_activation(special_rows()[:1])[0, :8]
    assert q.tolist() == [127.0, 62.0, -62.0, 0.0, 2.0, 2.0, 0.0, -2.0]
    w = torch.tensor([[0.5, -0.5, 1.5, -1.5], [1.0, -1.0, 1.0, -1.0]])  # mean |w| = 1: 0.5 is a tie
    assert ternary_weight(w).tolist() == [[0.0, 0.0, 1.0, -1.0], [1.0, -1.0, 1.0, -1.0]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_quantiser_matches_reference(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    random = torch.randn(37, 40, generator=gen) * torch.logspace(-2, 2, 37).unsqueeze(1)
    # 41 rows (not a multiple of the rows per program) of width 40 (not a power of two).
    x = torch.cat([random, special_rows()]).to(DEVICE, dtype)
    x_q = kb.act_quant(x)
    assert x_q.dtype == dtype and x_q.shape == x.shape
    assert torch.equal(x_q, int8_activation(x))
    x_3d = x[:40].reshape(2, 20, 40)  # leading dims are flattened into rows
    assert torch.equal(kb.act_quant(x_3d), int8_activation(x_3d))
    # 8-bit: every row holds at most 256 distinct multiples of its step amax / 127.
    assert all(row.unique().numel() <= 256 for row in x_q)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(24, 40), (96, 200)])
def test_weight_quantiser_matches_reference(dtype: torch.dtype, shape: tuple[int, int]) -> None:
    w = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.02).to(DEVICE, dtype)
    w_q = kb.weight_quant(w)
    assert w_q.dtype == dtype and w_q.shape == w.shape
    assert torch.equal(w_q, ternary_weight(w))
    scale = absmean_scale(w).to(dtype)
    assert set(w_q.unique().tolist()) == {-scale.item(), 0.0, scale.item()}


def test_weight_quantiser_ties_and_many_partial_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    # Small tiles force several partial sums and a ragged last one, so the cross-program reduction runs.
    monkeypatch.setattr(kb, "_W_TILE", 16)
    w = torch.tensor([0.5, -0.5, 1.5, -1.5, 1.0, -1.0] * 15, device=DEVICE).reshape(10, 9)  # mean |w| = 1
    w_q = kb.weight_quant(w)
    assert torch.equal(w_q, ternary_weight(w))
    assert w_q[0, :4].tolist() == [0.0, 0.0, 1.0, -1.0]  # 0.5 ties round to even (0)
    zero = torch.zeros(5, 7, device=DEVICE)
    assert torch.equal(kb.weight_quant(zero), zero)  # QUANT_EPS keeps an all-zero matrix at zero


def test_nan_is_never_quantised_away() -> None:
    x = torch.randn(3, 16, device=DEVICE)
    x[1, 5] = float("nan")
    x_q = kb.act_quant(x)
    assert x_q[1].isnan().all() and not x_q[[0, 2]].isnan().any()  # the whole row, like the reference
    assert torch.equal(x_q.isnan(), int8_activation(x).isnan())
    w = torch.randn(8, 16, device=DEVICE)
    w[2, 3] = float("nan")
    assert kb.weight_quant(w).isnan().all() and ternary_weight(w).isnan().all()


def test_straight_through_gradients() -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, 24, generator=gen).to(DEVICE).requires_grad_()
    w = (torch.randn(16, 24, generator=gen) * 0.1).to(DEVICE).requires_grad_()
    grad_x, grad_w = (
        torch.randn(2, 5, 24, generator=gen).to(DEVICE),
        torch.randn(16, 24, generator=gen).to(DEVICE),
    )
    for quant in (kb.triton_impl, bitnet_quant_reference):
        x.grad = w.grad = None
        x_q, w_q = quant(x, w)
        torch.autograd.backward((x_q, w_q), (grad_x, grad_w))
        assert torch.equal(x.grad, grad_x) and torch.equal(w.grad, grad_w), quant

    # Through a BitLinear forward, both quantisers give the same output and the same gradients.
    results = []
    for quant in (kb.triton_impl, bitnet_quant_reference):
        x.grad = w.grad = None
        x_q, w_q = quant(x, w)
        y = F.linear(x_q, w_q)
        y.square().sum().backward()
        results.append((y.detach(), x.grad.clone(), w.grad.clone()))
    for ours, ref in zip(*results, strict=True):
        assert torch.equal(ours, ref)


def test_prequantized_weight_passes_through() -> None:
    w = ternary_weight(torch.randn(8, 16, device=DEVICE))
    for quant in (kb.triton_impl, bitnet_quant_reference):
        _, w_q = quant(torch.randn(2, 16, device=DEVICE), w, True)
        assert w_q is w


SM90_COMPILE = """
import json, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from model.kernels import bitnet as kb

def build(fn, signature, constexprs, num_warps):
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["ptx"]

ptx = {}
for d in (768, 1024, 2048, 2816):  # the block-linear input widths of the 124m and 350m presets
    rows, block_d, warps = kb._act_config(d)
    signature = {"x_ptr": "*bf16", "out_ptr": "*bf16", "M": "i32", "D": "i32"}
    signature.update(EPS="constexpr", ROWS="constexpr", BLOCK_D="constexpr")
    constexprs = {"EPS": kb.QUANT_EPS, "ROWS": rows, "BLOCK_D": block_d}
    ptx[f"act {d}"] = build(kb._act_quant_kernel, signature, constexprs, warps)
for n in (768 * 768, 2816 * 1024):
    chunk, num_partials = kb._weight_config(n)
    warps = kb._num_warps(kb._W_TILE)
    signature = {"w_ptr": "*bf16", "partial_ptr": "*fp64", "n": "i32", "CHUNK": "constexpr", "TILE": "constexpr"}
    ptx[f"absmean {n}"] = build(kb._absmean_partial_kernel, signature, {"CHUNK": chunk, "TILE": kb._W_TILE}, warps)
    signature = {"w_ptr": "*bf16", "partial_ptr": "*fp64", "out_ptr": "*bf16", "n": "i32", "num_partials": "i32"}
    signature.update(EPS="constexpr", P_BLOCK="constexpr", TILE="constexpr")
    constexprs = {"EPS": kb.QUANT_EPS, "P_BLOCK": triton.next_power_of_2(num_partials), "TILE": kb._W_TILE}
    ptx[f"ternary {n}"] = build(kb._ternary_kernel, signature, constexprs, warps)
print(json.dumps(ptx))
"""


def test_kernels_compile_for_the_h100() -> None:
    """Triton's bundled ptxas builds the kernels for sm_90 at the 124m/350m launch configurations, here
    on the CPU (compiling needs no GPU, only running does), and the IEEE divisions the bit-exactness rests
    on survive into the PTX as ``div.rn`` (Triton's plain ``/`` would be the approximate ``div.full``)."""
    ptx = build_for_h100(SM90_COMPILE)
    assert len(ptx) == 8
    for name, text in ptx.items():
        assert ".target sm_90" in text, name
        assert "div.full" not in text and "div.approx" not in text, name
        assert ("div.rn.f32" in text) is not name.startswith("absmean"), name


# ----------------------------------------------------------------------------- the model


def bitnet_model(n_layer: int = 4) -> SigmaLM:
    """The ``tiny`` preset (optionally fewer layers) with BitNet on, seeded."""
    cfg = from_preset("tiny", vocab_size=VOCAB, max_seq_len=SEQ)
    cfg.bitnet, cfg.n_layer = True, n_layer
    torch.manual_seed(0)
    return SigmaLM(cfg.validate())


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(3))
    return tokens[:, :-1], tokens[:, 1:]


def optimizers(model: SigmaLM) -> OptimizerPair:
    return build_optimizers(
        model, lr=3e-3, muon_lr=0.02, weight_decay=0.0, betas=(0.9, 0.95), c3o_state_dtype=torch.float32,
        c3o_cautious=True, muon_momentum=0.95, ns_steps=5,
    )  # fmt: skip


def train(model: SigmaLM, steps: int) -> list[float]:
    pair, (idx, targets) = optimizers(model), batch()
    device = model.embed_tokens.weight.device
    losses = []
    for _ in range(steps):
        loss = model(idx.to(device), targets.to(device))
        loss.backward()
        pair.step()
        pair.zero_grad()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="module")
def trained() -> tuple[SigmaLM, list[float]]:
    model = bitnet_model(n_layer=2)
    return model, train(model, 15)


def test_every_block_linear_is_bitlinear_and_muon_owns_them() -> None:
    model = bitnet_model()
    bit = {f"{name}.weight" for name, m in model.named_modules() if isinstance(m, BitLinear)}
    assert len(bit) == 7 * model.cfg.n_layer  # q, k, v, o, gate, up, down
    assert not isinstance(model.lm_head, BitLinear)  # embedding, head and norms stay full precision
    roles = model.param_roles()
    assert {name for name, role in roles.items() if role == "matrix"} == bit
    assert {name for name, _ in split_params(model).muon} == bit
    pair = optimizers(model)
    assert pair.muon is not None and sum(len(g["params"]) for g in pair.muon.param_groups) == len(bit)


def test_tiny_bitnet_model_learns(trained: tuple[SigmaLM, list[float]]) -> None:
    _, losses = trained
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses


def test_model_with_triton_quantiser_trains_identically() -> None:
    # One layer: the interpreter takes ~0.1 s per launch.
    reference_model, triton_model = bitnet_model(n_layer=1).to(DEVICE), bitnet_model(n_layer=1).to(DEVICE)
    triton_model.use_kernels(bitnet_quant=kb.triton_impl)
    triton_losses, reference_losses = train(triton_model, 2), train(reference_model, 2)
    if DEVICE == "cpu":
        assert triton_losses == reference_losses
    else:  # CUDA's attention backward accumulates with atomics: step 2 may move in the last bits
        assert triton_losses[0] == reference_losses[0]
        torch.testing.assert_close(triton_losses, reference_losses, rtol=1e-4, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_export_round_trip_reproduces_the_quantised_forward(
    trained: tuple[SigmaLM, list[float]], tmp_path: Path, dtype: torch.dtype
) -> None:
    model, _ = trained
    export_hf(model, tmp_path, dtype=dtype)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    block = [t for name, t in tensors.items() if name.endswith("_proj.weight")]
    assert len(block) == 7 * model.cfg.n_layer
    for t in block:  # ternary-valued: {-s, 0, s}
        values = t.unique()
        assert values.numel() <= 3 and torch.equal(values, -values.flip(0)), values

    loaded = load_hf(tmp_path, dtype=dtype)
    assert loaded.cfg.bitnet and all(m.prequantized for m in loaded.modules() if isinstance(m, BitLinear))
    idx, _ = batch()
    with torch.no_grad():
        expected, actual = model(idx), loaded(idx)
    if dtype == torch.float32:
        assert torch.equal(actual, expected)  # the exported weights are exactly the forward's W_q
    else:
        # bf16 weights (scale rounded to bf16) and a bf16 forward: within bf16 noise (0.7 % measured).
        assert (actual - expected).norm() / expected.norm() < 0.02
        assert (actual.argmax(-1) == expected.argmax(-1)).float().mean() > 0.95
    assert BITNET_KEY in (tmp_path / "config.json").read_text()


def test_training_continues_from_an_export(trained: tuple[SigmaLM, list[float]], tmp_path: Path) -> None:
    model, _ = trained
    export_hf(model, tmp_path)
    loaded = load_hf(tmp_path)
    idx, targets = batch()
    with torch.no_grad():
        exported_logits = loaded(idx)
    for module in loaded.modules():
        if isinstance(module, BitLinear):
            module.make_trainable_()
    assert not any(m.prequantized for m in loaded.modules() if isinstance(m, BitLinear))
    with torch.no_grad():
        latent_logits = loaded(idx)
    # The same forward up to the last bit of each scale, which can flip a rare int8 activation tie.
    assert (latent_logits - exported_logits).norm() / exported_logits.norm() < 1e-3
    with torch.no_grad():
        trained_loss = model(idx, targets).item()
    resumed = train(loaded, 3)
    assert resumed[0] == pytest.approx(trained_loss, rel=1e-3) and resumed[-1] < resumed[0]


def test_stock_transformers_runs_the_export_without_activation_quantisation(
    trained: tuple[SigmaLM, list[float]], tmp_path: Path
) -> None:
    """Stock Qwen3 multiplies by the same ternary weights but skips the 8-bit activation rounding, so its
    logits are close to, not equal to, the quantised forward (0.5 % relative on this model)."""
    transformers = pytest.importorskip("transformers")
    model, _ = trained
    export_hf(model, tmp_path)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    idx, _ = batch()
    with torch.no_grad():
        ours, theirs = model(idx), hf_model(input_ids=idx).logits
    assert (theirs - ours).norm() / ours.norm() < 0.03
    assert (theirs.argmax(-1) == ours.argmax(-1)).float().mean() > 0.95


@pytest.mark.slow  # ~25 s of inductor compilation on a 2-core CPU
def test_bitlinear_compiles_on_cpu_reference_path() -> None:
    torch.manual_seed(4)
    layer = BitLinear(32, 24)
    x = torch.randn(2, 6, 32, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True)
    y_eager, y_compiled = layer(x), compiled(x)
    # Inductor may reorder the fp32 arithmetic (e.g. the reciprocal), so allow a quantisation step.
    torch.testing.assert_close(y_compiled, y_eager, atol=1e-2, rtol=1e-2)
    (g_eager,) = torch.autograd.grad(y_eager.sum(), x)
    (g_compiled,) = torch.autograd.grad(y_compiled.sum(), x)
    torch.testing.assert_close(g_compiled, g_eager)


def test_bench_cases_cover_the_block_linears() -> None:
    cases = kb.bench_cases("tiny")
    shapes = set()
    for case in cases:
        assert {"name", "make_inputs", "triton", "reference", "backward"} <= set(case)
        x, w = case["make_inputs"]("cpu")
        assert x.shape[:2] == (32, 2048) and x.dtype == w.dtype == torch.bfloat16 and x.requires_grad
        assert x.shape[-1] == w.shape[1]
        shapes.add(tuple(w.shape))
    cfg = from_preset("tiny", vocab_size=VOCAB, max_seq_len=SEQ)
    model_shapes = {
        tuple(m.weight.shape) for m in SigmaLM(cfg).layers.modules() if isinstance(m, torch.nn.Linear)
    }
    assert shapes == model_shapes and len(cases) == len(shapes)
