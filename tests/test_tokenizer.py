"""Tokenizer: training, determinism, save/load round trip, transformers compatibility."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from training.data.seed_corpus import seed_documents
from training.data.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    SPECIAL_TOKENS,
    eos_id,
    load_tokenizer,
    pad_id,
    save_tokenizer,
    train_tokenizer,
)

SAMPLES = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "  leading spaces, trailing spaces  \n\ttabs and\r\nnewlines\n",
    "Grüße aus Köln — naïve café, 你好世界, Здравствуйте, emoji 🙂🚀 and math ∑x² ≤ ∞",
    "def f(x):\n    return x ** 2  # comment\n",
    "",
]


@pytest.fixture(scope="module")
def tok():
    texts = [d.text for d in itertools.islice(seed_documents(0), 400)]
    return train_tokenizer(texts, vocab_size=600)


def test_special_token_ids(tok) -> None:
    assert SPECIAL_TOKENS == (EOS_TOKEN, PAD_TOKEN)
    assert eos_id(tok) == 0 and tok.token_to_id(EOS_TOKEN) == 0
    assert pad_id(tok) == 1 and tok.token_to_id(PAD_TOKEN) == 1
    assert tok.get_vocab_size() <= 600


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False).ids
    assert tok.decode(ids) == text


def test_special_token_encodes_as_one_id(tok) -> None:
    ids = tok.encode(f"a{EOS_TOKEN}b", add_special_tokens=False).ids
    assert eos_id(tok) in ids


def test_training_is_deterministic() -> None:
    texts = [d.text for d in itertools.islice(seed_documents(3), 200)]
    a = train_tokenizer(texts, vocab_size=500)
    b = train_tokenizer(texts, vocab_size=500)
    assert a.to_str() == b.to_str()


def test_vocab_too_small_is_rejected() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=100)


def test_save_load_round_trip(tok, tmp_path: Path) -> None:
    path = save_tokenizer(tok, tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    for target in (tmp_path / "tok", path):  # a directory or the file itself
        loaded = load_tokenizer(target)
        assert loaded.to_str() == tok.to_str()
    cfg = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert cfg["eos_token"] == EOS_TOKEN and cfg["pad_token"] == PAD_TOKEN


def test_transformers_loads_saved_dir(tok, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    save_tokenizer(tok, tmp_path)
    for hf in (
        transformers.AutoTokenizer.from_pretrained(tmp_path),
        transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json")),
    ):
        text = SAMPLES[2]
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert ids == tok.encode(text, add_special_tokens=False).ids
        assert hf.decode(ids) == text
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert auto.eos_token == EOS_TOKEN and auto.eos_token_id == 0
    assert auto.pad_token == PAD_TOKEN and auto.pad_token_id == 1


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a valid"):
        load_tokenizer(bad)
