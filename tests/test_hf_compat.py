"""Export to / import from Hugging Face Qwen3 folders, checked against stock transformers on CPU."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.config import ModelConfig
from model.decoder import SigmaLM
from model.hf_compat import config_from_hf, config_to_hf, export_hf, load_hf

transformers = pytest.importorskip("transformers")


def tiny_model(tied: bool, seed: int = 0) -> SigmaLM:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=101, n_layer=2, n_head=4, n_kv_head=2, d_model=48, d_ff=96, head_dim=16,
        max_seq_len=32, rope_theta=1e6, tie_embeddings=tied,
    )  # fmt: skip
    model = SigmaLM(cfg)
    # Non-trivial norm weights, so a misplaced or dropped norm tensor shows up in the logits.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if model.param_roles()[name] == "norm":
                param.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_stock_transformers_matches_our_logits(tmp_path: Path, tied: bool) -> None:
    model = tiny_model(tied)
    export_hf(model, tmp_path, eos_token_id=0)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    hf_model.eval()
    assert type(hf_model).__name__ == "Qwen3ForCausalLM"
    assert hf_model.config.tie_word_embeddings is tied
    idx = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(idx)
        actual = hf_model(input_ids=idx).logits
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_export_writes_hf_names(tmp_path: Path, tied: bool) -> None:
    export_hf(tiny_model(tied), tmp_path)
    names = set(load_file(str(tmp_path / "model.safetensors")))
    assert "model.embed_tokens.weight" in names and "model.norm.weight" in names
    assert "model.layers.1.self_attn.q_norm.weight" in names
    assert "model.layers.0.post_attention_layernorm.weight" in names
    assert ("lm_head.weight" in names) is (not tied)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["head_dim"] == 16 and config["tie_word_embeddings"] is tied
    assert (tmp_path / "generation_config.json").is_file()


@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_is_exact(tmp_path: Path, tied: bool) -> None:
    model = tiny_model(tied)
    export_hf(model, tmp_path)
    loaded = load_hf(tmp_path)
    assert loaded.cfg == model.cfg
    assert loaded.param_roles() == model.param_roles()
    for (name, a), (_, b) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    idx = torch.randint(0, 101, (1, 12))
    torch.testing.assert_close(loaded(idx), model(idx), rtol=0, atol=0)


def test_load_hf_reads_sharded_folders(tmp_path: Path) -> None:
    model = tiny_model(tied=False)
    export_hf(model, tmp_path / "single")
    tensors = load_file(str(tmp_path / "single" / "model.safetensors"))
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((tmp_path / "single" / "config.json").read_text())
    names = sorted(tensors)
    weight_map = {}
    for shard, part in enumerate((names[::2], names[1::2])):
        file_name = f"model-0000{shard + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(sharded / file_name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, file_name))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    loaded = load_hf(sharded)
    for (name, a), (_, b) in zip(model.named_parameters(), loaded.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_export_bf16_and_tokenizer_copy(tmp_path: Path) -> None:
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_text("{}")
    (tok_dir / "tokenizer_config.json").write_text("{}")
    out = export_hf(tiny_model(tied=True), tmp_path / "out", tokenizer_dir=tok_dir, dtype=torch.bfloat16)
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert load_file(str(out / "model.safetensors"))["model.norm.weight"].dtype == torch.bfloat16
    assert load_hf(out, dtype=torch.bfloat16).embed_tokens.weight.dtype == torch.bfloat16


def test_load_hf_rejects_wrong_model_type(tmp_path: Path) -> None:
    export_hf(tiny_model(tied=True), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        load_hf(tmp_path)


def test_load_hf_reports_missing_tensors(tmp_path: Path) -> None:
    export_hf(tiny_model(tied=False), tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing \['model.layers.1.mlp.up_proj.weight'\]"):
        load_hf(tmp_path)


def test_config_translation_round_trip() -> None:
    cfg = tiny_model(tied=False).cfg
    assert config_from_hf(config_to_hf(cfg)) == cfg
    # Older configs keep rope_theta at the top level.
    legacy = config_to_hf(cfg)
    del legacy["rope_parameters"]
    assert config_from_hf(legacy).rope_theta == 1e6
    with pytest.raises(ValueError, match="rope_type"):
        config_from_hf({**config_to_hf(cfg), "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6}})


# ---------------------------------------------------------------------- the Llama layout (no QK norm)


def tiny_llama(tmp_path: Path, tied: bool) -> Path:
    """A random stock LlamaForCausalLM saved as a folder (with non-trivial norm weights)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=101, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=64, rope_theta=5e4, rms_norm_eps=1e-5,
        tie_word_embeddings=tied,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    model.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("tied", [True, False])
def test_load_hf_reads_llama_with_matching_logits(tmp_path: Path, tied: bool) -> None:
    folder = tiny_llama(tmp_path / "llama", tied)
    ours = load_hf(folder)
    assert ours.cfg.qk_norm is False and ours.cfg.tie_embeddings is tied and ours.cfg.rope_theta == 5e4
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    idx = torch.randint(0, 101, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf_model(input_ids=idx).logits, atol=1e-5, rtol=1e-5)

    # ... and back out: a Llama folder again, which stock transformers reads to the same logits.
    export_hf(ours, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert type(again).__name__ == "LlamaForCausalLM"
    assert not any("q_norm" in name for name in load_file(str(tmp_path / "out" / "model.safetensors")))
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=idx).logits, ours(idx), atol=1e-5, rtol=1e-5)


def test_smollm2_config_translates() -> None:
    """SmolLM2-135M's config.json (as the GGUF import writes it) maps onto the Llama layout."""
    smollm2 = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "head_dim": 64, "hidden_act": "silu", "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
        "rope_parameters": {"rope_theta": 100000.0, "rope_type": "default"}, "tie_word_embeddings": True,
        "attention_bias": False, "mlp_bias": False, "pretraining_tp": 1, "bos_token_id": 1, "eos_token_id": 2,
    }  # fmt: skip
    cfg = config_from_hf(smollm2)
    assert (cfg.vocab_size, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.d_ff) == (
        49152, 576, 30, 9, 3, 64, 1536)
    assert cfg.rope_theta == 1e5 and cfg.rms_eps == 1e-5 and cfg.tie_embeddings and not cfg.qk_norm
    assert 134e6 < cfg.num_params() < 135e6  # SmolLM2-135M: 134,515,008 parameters
    assert config_from_hf(config_to_hf(cfg)) == cfg


@pytest.mark.parametrize(("change", "message"), [
    ({"attention_bias": True}, "attention_bias=true"),
    ({"mlp_bias": True}, "mlp_bias=true"),
    ({"hidden_act": "gelu"}, "unsupported hidden_act 'gelu'"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}, "rope_type 'llama3'"),
    ({"pretraining_tp": 2}, "pretraining_tp=2"),
])  # fmt: skip
def test_llama_features_sigmalm_lacks_are_rejected(change: dict, message: str) -> None:
    cfg = config_to_hf(ModelConfig(vocab_size=101, n_layer=1, n_head=2, n_kv_head=1, d_model=32, d_ff=64,
                                   head_dim=16, max_seq_len=16, qk_norm=False))
    with pytest.raises(ValueError, match=message):
        config_from_hf({**cfg, **change})


# ---------------------------------------------------------------------- scripts/import_gguf.py (no gguf needed)


def test_import_gguf_reassembles_split_parts_in_order(tmp_path: Path) -> None:
    from scripts.import_gguf import reassemble

    blob = b"GGUF" + bytes(range(256)) * 40
    for i, start in enumerate(range(0, len(blob), 3000)):  # like `split -b 3000 model.gguf part_`
        (tmp_path / f"part_a{chr(97 + i)}").write_bytes(blob[start:start + 3000])
    out = reassemble([str(tmp_path / "part_*")], tmp_path / "joined.gguf")
    assert out.read_bytes() == blob
    with pytest.raises(SystemExit, match="out of order or incomplete"):
        reassemble([str(tmp_path / "part_ab"), str(tmp_path / "part_aa")], tmp_path / "wrong.gguf")
    with pytest.raises(SystemExit, match="matched no file"):
        reassemble([str(tmp_path / "nothing_*")], tmp_path / "none.gguf")


def test_import_gguf_without_the_gguf_package_says_how_to_fix(tmp_path: Path, monkeypatch) -> None:
    import scripts.import_gguf as import_gguf

    real = import_gguf.importlib.util.find_spec
    monkeypatch.setattr(import_gguf.importlib.util, "find_spec", lambda name: None if name == "gguf" else real(name))
    with pytest.raises(SystemExit, match=r"pip install gguf==0\.19\.0"):
        import_gguf.main([str(tmp_path / "model.gguf"), "--out", str(tmp_path / "out")])
