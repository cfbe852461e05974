"""CPU tests of the SigmaLM decoder and its config (tiny models built in-test)."""

import pytest
import torch
import torch.nn.functional as F

from model.config import PRESETS, ModelConfig, from_preset, num_params
from model.decoder import SigmaLM


def tiny_config(**overrides: object) -> ModelConfig:
    fields: dict = dict(
        vocab_size=97, n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_ff=64, head_dim=8, max_seq_len=16
    )
    fields.update(overrides)
    return ModelConfig(**fields).validate()


def tiny_model(seed: int = 0, **overrides: object) -> SigmaLM:
    torch.manual_seed(seed)
    return SigmaLM(tiny_config(**overrides))


# ---------------------------------------------------------------------- forward


def test_logits_shape_and_dtype() -> None:
    model = tiny_model()
    idx = torch.randint(0, 97, (3, 11))
    logits = model(idx)
    assert logits.shape == (3, 11, 97)
    assert logits.dtype == torch.float32


def test_loss_matches_cross_entropy_with_ignore_index() -> None:
    model = tiny_model()
    idx = torch.randint(0, 97, (2, 9))
    targets = torch.randint(0, 97, (2, 9))
    targets[0, :3] = -100
    loss = model(idx, targets)
    expected = F.cross_entropy(model(idx).reshape(-1, 97), targets.reshape(-1), ignore_index=-100)
    assert loss.ndim == 0
    torch.testing.assert_close(loss, expected)


def test_causality() -> None:
    model = tiny_model()
    idx = torch.randint(0, 97, (1, 12))
    changed = idx.clone()
    changed[0, 8:] = (changed[0, 8:] + 1) % 97
    a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_too_long_sequence_is_an_error() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_bf16_forward_and_rope_tables_stay_fp32() -> None:
    model = tiny_model().to(torch.bfloat16)
    assert model.rotary.cos_SHd.dtype == torch.float32
    idx = torch.randint(0, 97, (2, 7))
    logits = model(idx)
    loss = model(idx, idx)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert torch.isfinite(loss)
    # bf16 tracks fp32 loosely: same model, same input.
    fp32_loss = tiny_model()(idx, idx)
    assert abs(loss.item() - fp32_loss.item()) < 0.1


def test_backward_reaches_every_parameter() -> None:
    model = tiny_model(tie_embeddings=False)
    idx = torch.randint(0, 97, (2, 8))
    model(idx, idx).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


# ---------------------------------------------------------------------- init / determinism


def test_same_seed_same_model_and_logits() -> None:
    idx = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(1))
    a, b = tiny_model(seed=3), tiny_model(seed=3)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(a(idx), b(idx), rtol=0, atol=0)
    assert not torch.equal(tiny_model(seed=4)(idx), a(idx))


def test_init_weights_seed_overrides_global_rng() -> None:
    a, b = tiny_model(seed=1), tiny_model(seed=2)
    a.init_weights(seed=7)
    b.init_weights(seed=7)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_init_statistics() -> None:
    cfg = tiny_config(d_model=256, d_ff=512, n_layer=8)
    model = SigmaLM(cfg)
    model.init_weights(seed=0)
    assert torch.equal(model.norm.weight, torch.ones(256))
    assert torch.equal(model.layers[0].self_attn.q_norm.weight, torch.ones(8))
    std_q = model.layers[0].self_attn.q_proj.weight.std().item()
    std_o = model.layers[0].self_attn.o_proj.weight.std().item()
    assert abs(std_q - 0.02) < 0.002
    assert abs(std_o - 0.02 / 4.0) < 0.0005  # 1/sqrt(2 * 8 layers)


# ---------------------------------------------------------------------- optimizer roles


@pytest.mark.parametrize("tied", [True, False])
def test_param_roles_cover_every_parameter_once(tied: bool) -> None:
    model = tiny_model(tie_embeddings=tied)
    roles = model.param_roles()
    names = [name for name, _ in model.named_parameters()]
    assert sorted(roles) == sorted(names) and len(names) == len(set(names))
    assert set(roles.values()) <= {"matrix", "embedding", "head", "norm"}
    assert roles["embed_tokens.weight"] == "embedding"
    assert ("lm_head.weight" in roles) is (not tied)
    if not tied:
        assert roles["lm_head.weight"] == "head"
    matrices = {n for n, r in roles.items() if r == "matrix"}
    expected = {
        f"layers.{i}.{m}.weight"
        for i in range(2)
        for m in (
            "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
        )
    }  # fmt: skip
    assert matrices == expected
    norms = {n for n, r in roles.items() if r == "norm"}
    assert "norm.weight" in norms and "layers.1.self_attn.k_norm.weight" in norms
    assert len(norms) == 2 * 4 + 1
    # Element counts add up to the config's formula.
    assert sum(p.numel() for p in model.parameters()) == model.cfg.num_params()
    assert sum(p.numel() for n, p in model.named_parameters() if roles[n] == "matrix") == (
        model.cfg.block_matrix_params()
    )


def test_param_roles_reject_unknown_parameter() -> None:
    model = tiny_model()
    model.register_parameter("mystery", torch.nn.Parameter(torch.zeros(3)))
    with pytest.raises(ValueError, match="mystery"):
        model.param_roles()


def test_tied_head_shares_storage() -> None:
    model = tiny_model(tie_embeddings=True)
    assert model.lm_head.weight is model.embed_tokens.weight
    untied = tiny_model(tie_embeddings=False)
    assert untied.lm_head.weight is not untied.embed_tokens.weight


# ---------------------------------------------------------------------- generate / flops


def test_generate_shape_and_determinism() -> None:
    model = tiny_model()
    prompt = torch.randint(0, 97, (2, 5))
    out1 = model.generate(prompt, 20, temperature=0.8, top_k=10, generator=torch.Generator().manual_seed(0))
    out2 = model.generate(prompt, 20, temperature=0.8, top_k=10, generator=torch.Generator().manual_seed(0))
    assert out1.shape == (2, 25)  # longer than max_seq_len=16: the context is cropped
    assert torch.equal(out1[:, :5], prompt)
    assert torch.equal(out1, out2)
    greedy = model.generate(prompt, 3, temperature=0)
    assert torch.equal(greedy[:, 5], model(prompt)[:, -1].argmax(-1))


def test_generate_top_k_one_is_greedy() -> None:
    model = tiny_model()
    prompt = torch.randint(0, 97, (1, 4))
    sampled = model.generate(prompt, 6, top_k=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(sampled, model.generate(prompt, 6, temperature=0))


def test_flops_per_token() -> None:
    model = tiny_model()
    cfg = model.cfg
    matmul_params = sum(
        p.numel() for n, p in model.named_parameters() if model.param_roles()[n] in ("matrix", "embedding")
    )  # tied: the head matmul uses the embedding matrix
    expected = 6 * matmul_params + 12 * cfg.n_layer * cfg.n_head * cfg.head_dim * 16
    assert model.flops_per_token(16) == expected


# ---------------------------------------------------------------------- config


def test_presets_parameter_counts() -> None:
    counts = {name: num_params(from_preset(name, vocab_size=50304, max_seq_len=1024)) for name in PRESETS}
    assert 1.0e6 < num_params(from_preset("tiny", vocab_size=4096, max_seq_len=256)) < 3.0e6
    assert 115e6 < counts["124m"] < 130e6
    assert 300e6 < counts["350m"] < 380e6
    assert 0.75e9 < counts["1b"] < 1.1e9
    untied = from_preset("124m", vocab_size=50304, max_seq_len=1024, tie_embeddings=False)
    assert num_params(untied) == counts["124m"] + 50304 * 768


def test_tiny_preset_builds_and_counts_match() -> None:
    cfg = from_preset("tiny", vocab_size=4096, max_seq_len=64)
    model = SigmaLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == cfg.num_params()


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="tiny"):
        from_preset("huge", vocab_size=10, max_seq_len=8)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(n_head=4, n_kv_head=3), "n_kv_head"),
        (dict(head_dim=7), "head_dim"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(rms_eps=0.0), "rms_eps"),
        (dict(max_seq_len=-1), "max_seq_len"),
    ],
)
def test_validate_errors_name_the_field(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_dict_round_trip() -> None:
    cfg = tiny_config(rope_theta=1e6, tie_embeddings=False)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="bogus"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
