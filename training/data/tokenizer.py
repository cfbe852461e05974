"""Byte-level BPE tokenizer: train on a text sample, save in a form stock `transformers` loads, load back.

Byte-level means every byte string is encodable (no unknown token) and decode(encode(x)) == x for
any text. Special tokens come first, so their ids are fixed: `<|endoftext|>` = 0, `<|pad|>` = 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOS_TOKEN = "<|endoftext|>"  # document separator; also the end-of-sequence token for generation
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, PAD_TOKEN)

TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE tokenizer with `vocab_size` entries (special tokens and 256 bytes included).

    Deterministic for the same input texts in the same order.
    """
    min_vocab = len(SPECIAL_TOKENS) + 256
    if vocab_size < min_vocab:
        raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs at least {min_vocab}")
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: the text is encoded exactly as given, so concatenated documents and
    # decoded outputs round-trip without a stray leading space.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact; the post-processor adds no tokens.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer from a `tokenizer.json` file or a directory containing one (e.g. an HF model dir)."""
    p = Path(path)
    if p.is_dir():
        p = p / TOKENIZER_FILE
        if not p.is_file():
            raise FileNotFoundError(
                f"no {TOKENIZER_FILE} in directory {path}; pass a tokenizer.json or an HF dir"
            )
    elif not p.is_file():
        raise FileNotFoundError(f"tokenizer path does not exist: {path}")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # the Rust loader raises a bare Exception on bad JSON or unknown models
        raise ValueError(f"{p} is not a valid tokenizers JSON file: {e}") from e
    if tok.token_to_id(EOS_TOKEN) is None:
        raise ValueError(
            f"tokenizer {p} has no {EOS_TOKEN} token, which eco_train uses as document separator"
        )
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: str | Path) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`.

    The directory loads with `transformers.AutoTokenizer.from_pretrained(out_dir)` (no custom code).
    Returns the path of tokenizer.json.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / TOKENIZER_FILE))
    specials = {"bos_token": EOS_TOKEN, "eos_token": EOS_TOKEN, "unk_token": EOS_TOKEN}
    if tok.token_to_id(PAD_TOKEN) is not None:
        specials["pad_token"] = PAD_TOKEN
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    return out / TOKENIZER_FILE


def eos_id(tok: Tokenizer) -> int:
    """Return the id of `<|endoftext|>` (the document separator)."""
    i = tok.token_to_id(EOS_TOKEN)
    if i is None:
        raise ValueError(f"tokenizer has no {EOS_TOKEN} token")
    return i


def pad_id(tok: Tokenizer) -> int:
    """Return the id of `<|pad|>`, falling back to the eos id for tokenizers without one."""
    i = tok.token_to_id(PAD_TOKEN)
    return eos_id(tok) if i is None else i
