"""Hugging Face compatibility: export SigmaLM as a stock transformers folder and load one back.

Two layouts: with ``qk_norm`` (SigmaLM's own) the folder is a ``Qwen3ForCausalLM``; without it the
decoder is exactly a ``LlamaForCausalLM`` (no biases, SiLU MLP, default RoPE), which is how
pretrained Llama-family models such as SmolLM2 come in through ``--init-from``. SigmaLM's module
names are Hugging Face's minus the ``model.`` prefix (see ``model/decoder.py``), so the weight
mapping is a prefix rename. The exported folder loads with
``transformers.AutoModelForCausalLM.from_pretrained(out_dir)``: no remote code, no custom classes.
"""

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.bitnet import BitLinear
from model.config import ModelConfig
from model.decoder import SigmaLM

SUPPORTED_MODEL_TYPES = ("qwen3", "llama")
BITNET_KEY = "eco_train_bitnet_1_58"  # config.json marker of a BitNet 1.58 export
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


# ---------------------------------------------------------------------- config translation


def config_to_hf(cfg: ModelConfig, *, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The ``config.json`` dict of the stock model with the same shape and numerics as ``cfg``.

    ``cfg.qk_norm`` -> ``Qwen3ForCausalLM``; no QK norm -> ``LlamaForCausalLM`` (Qwen3 always has one).
    """
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"unsupported export dtype {dtype}; use one of {list(_DTYPE_NAMES)}")
    common = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.rms_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        # transformers >= 5 reads rope_parameters; the top-level rope_theta serves older readers
        # (transformers 4.x, vLLM, llama.cpp converters).
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "rope_theta": float(cfg.rope_theta),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_cache": True,
        "dtype": _DTYPE_NAMES[dtype],
        # Only a BitNet export carries this key: its block weights are ternary-valued already.
        **({BITNET_KEY: True} if cfg.bitnet else {}),
    }
    if not cfg.qk_norm:
        # LlamaConfig defaults bos/eos to 1/2; null them so only the run's tokenizer decides (export_hf
        # fills them in when it knows them).
        return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", **common, "mlp_bias": False,
                "pretraining_tp": 1, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", **common, "use_sliding_window": False,
            "sliding_window": None, "max_window_layers": cfg.n_layer}


def config_from_hf(hf_config: dict[str, Any]) -> ModelConfig:
    """Translate a Qwen3 or Llama ``config.json`` dict into a validated :class:`ModelConfig`.

    Llama has no QK norm (``qk_norm=False``). Raises ``ValueError`` for model types or features
    SigmaLM does not implement (biases, sliding window, RoPE scaling, activations other than SiLU,
    Llama's tensor-parallel ``pretraining_tp`` split), rather than silently computing something else.
    """
    model_type = hf_config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unsupported model_type {model_type!r}: load_hf reads {list(SUPPORTED_MODEL_TYPES)} folders only"
        )
    name = {"qwen3": "Qwen3", "llama": "Llama"}[model_type]
    for flag in ("attention_bias", "mlp_bias"):
        if hf_config.get(flag, False):
            raise ValueError(f"unsupported {name} config: {flag}=true (SigmaLM has no biases)")
    if hf_config.get("use_sliding_window", False):
        raise ValueError(f"unsupported {name} config: use_sliding_window=true (SigmaLM uses full attention)")
    if hf_config.get("pretraining_tp", 1) != 1:
        raise ValueError(f"unsupported {name} config: pretraining_tp={hf_config['pretraining_tp']} (SigmaLM "
                         "computes each projection as one matmul); fix: set it to 1, the maths is the same")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {hf_config['hidden_act']!r}; SigmaLM uses silu")
    rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"unsupported rope_type {rope_type!r}; SigmaLM implements only default RoPE")
    rope_theta = rope.get("rope_theta", hf_config.get("rope_theta", 10000.0))

    n_head = hf_config["num_attention_heads"]
    d_model = hf_config["hidden_size"]
    return ModelConfig(
        vocab_size=hf_config["vocab_size"],
        n_layer=hf_config["num_hidden_layers"],
        n_head=n_head,
        n_kv_head=hf_config.get("num_key_value_heads") or n_head,
        d_model=d_model,
        d_ff=hf_config["intermediate_size"],
        head_dim=hf_config.get("head_dim") or d_model // n_head,
        max_seq_len=hf_config["max_position_embeddings"],
        rope_theta=float(rope_theta),
        rms_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        init_std=float(hf_config.get("initializer_range", 0.02)),
        qk_norm=model_type == "qwen3",
        bitnet=bool(hf_config.get(BITNET_KEY, False)),
    ).validate()


# ---------------------------------------------------------------------- weight names


def _to_hf_name(name: str) -> str:
    return name if name == "lm_head.weight" else f"model.{name}"


def _from_hf_name(name: str) -> str:
    return name.removeprefix("model.")


# ---------------------------------------------------------------------- export / load


def export_hf(
    model: SigmaLM,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    dtype: torch.dtype = torch.float32,
    *,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face Qwen3ForCausalLM (Llama without QK norm) folder; return its path.

    Files: ``config.json``, ``model.safetensors`` (tensors cast to ``dtype``; a tied head is stored
    once, as the embedding, which transformers re-ties from ``tie_word_embeddings``),
    ``generation_config.json`` and, when ``tokenizer_dir`` is given, its tokenizer files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg

    hf_config = config_to_hf(cfg, dtype=dtype)
    special = {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id}
    hf_config.update({k: v for k, v in special.items() if v is not None})
    (out / "config.json").write_text(json.dumps(hf_config, indent=2, sort_keys=True) + "\n")

    # named_parameters() yields a tied weight once, so no two saved tensors share storage (which
    # save_file refuses); .contiguous() on a fresh CPU copy satisfies its layout requirement.
    # A BitNet model exports what its forward uses: the ternary-valued block weights.
    baked = {f"{name}.weight": module.export_weight() for name, module in model.named_modules()
             if isinstance(module, BitLinear)}
    tensors = {
        _to_hf_name(name): baked.get(name, param).detach().to(device="cpu", dtype=dtype).contiguous()
        for name, param in model.named_parameters()
    }
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})

    generation_config: dict[str, Any] = {"_from_model_config": True, "do_sample": True}
    generation_config.update({k: v for k, v in special.items() if v is not None})
    (out / "generation_config.json").write_text(json.dumps(generation_config, indent=2) + "\n")

    if tokenizer_dir is not None:
        src = Path(tokenizer_dir)
        if not (src / "tokenizer.json").is_file():
            raise ValueError(f"tokenizer_dir {src} has no tokenizer.json to export")
        for file_name in TOKENIZER_FILES:
            if (src / file_name).is_file():
                shutil.copyfile(src / file_name, out / file_name)
    return out


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder: a single model.safetensors or shards listed in its index."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shard_names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [path / shard for shard in shard_names]
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    else:
        raise ValueError(f"{path} has neither model.safetensors nor model.safetensors.index.json")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(str(file)))  # safetensors: no pickle, no code execution
    return tensors


@torch.no_grad()
def load_hf(path: str | Path, *, dtype: torch.dtype = torch.float32) -> SigmaLM:
    """Load a Hugging Face Qwen3 or Llama folder (config.json + safetensors, sharded or not) into a SigmaLM.

    The model is built on the CPU in ``dtype``. Raises ``ValueError`` for an unsupported config, a
    missing, unexpected or wrongly shaped tensor.
    """
    folder = Path(path)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{folder} has no config.json; expected a Hugging Face model folder")
    hf_config = json.loads(config_file.read_text())
    cfg = config_from_hf(hf_config)
    tensors = {_from_hf_name(name): t for name, t in _read_safetensors(folder).items()}
    if cfg.tie_embeddings:
        # Some writers store the tied head as well; it is the same matrix as the embedding.
        tensors.pop("lm_head.weight", None)

    model = SigmaLM(cfg).to(dtype)
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"{folder}: tensors do not match a {hf_config['model_type']} model of this config; "
            f"missing {[_to_hf_name(n) for n in missing]}, unexpected {[_to_hf_name(n) for n in unexpected]}"
        )
    for name, param in params.items():
        tensor = tensors[name]
        if tensor.shape != param.shape:
            raise ValueError(
                f"{folder}: tensor {_to_hf_name(name)} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(param.shape)}"
            )
        param.copy_(tensor)
    for module in model.modules():
        if isinstance(module, BitLinear):
            module.prequantized = True  # the weights are ternary-valued already (see export_hf)
    return model
