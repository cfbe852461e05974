"""Data: seed corpus, local files, packer and the pipeline (split, bootstrap, sharding, resume)."""

from __future__ import annotations

import doctest
import gzip
import itertools
import json
import logging
import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data.documents import DOMAINS, Document
from training.data.local import local_documents, validate_local_paths
from training.data.packer import Packer
from training.data.pipeline import DataConfig, DataPipeline, is_heldout
from training.data.seed_corpus import MAX_CHARS, MIN_CHARS, seed_document, seed_documents
from training.data.tokenizer import eos_id, train_tokenizer


def take(it, n: int) -> list:
    return list(itertools.islice(it, n))


@pytest.fixture(scope="module")
def tok():
    texts = [d.text for d in take(seed_documents(0), 300)]
    texts += [f"Document {i:04d}: marker text number {i}." for i in range(50)]
    return train_tokenizer(texts, vocab_size=512)


# ---------------------------------------------------------------------------------------------
# Seed corpus
# ---------------------------------------------------------------------------------------------


def test_seed_is_deterministic_and_resumable() -> None:
    first = take(seed_documents(7), 30)
    assert first == take(seed_documents(7), 30)
    assert take(seed_documents(7, start=12), 18) == first[12:]
    assert seed_document(7, 5) == first[5]
    assert take(seed_documents(8), 30) != first


def test_seed_domains_and_lengths() -> None:
    docs = take(seed_documents(0), 400)
    assert {d.domain for d in docs} == set(DOMAINS)
    assert all(d.source == "seed" for d in docs)
    assert all(MIN_CHARS <= len(d.text) <= MAX_CHARS for d in docs), [len(d.text) for d in docs]
    assert len({d.text for d in docs}) == len(docs)  # varied: no duplicates


_CALC = re.compile(r"^(?:Step \d+: .*?: |Check: )([-\d +*/()]+) = (-?\d+)$")


def test_seed_math_answers_are_correct() -> None:
    docs = [d for d in take(seed_documents(1), 800) if d.domain == "math"]
    n_problems = 0
    for doc in docs:
        for block in doc.text.split("\n\n"):
            lines = block.splitlines()
            assert lines[0].startswith("Problem: ") and lines[1] == "Solution:"
            step_results = []
            for line in lines[2:-1]:
                m = _CALC.match(line)
                assert m, line
                expr, value = m.group(1), int(m.group(2))
                assert eval(expr) == value, line  # expr is digits and operators only (regex above)
                if line.startswith("Step"):
                    step_results.append(value)
            answer = re.fullmatch(r"Answer: (-?\d+)", lines[-1])
            assert answer and int(answer.group(1)) == step_results[-1], block
            n_problems += 1
    assert n_problems > 300


def test_seed_code_compiles_and_its_examples_pass() -> None:
    docs = [d for d in take(seed_documents(2), 400) if d.domain == "code"]
    assert len(docs) == 100
    for doc in docs:
        code = compile(doc.text, "<seed>", "exec")
        namespace: dict = {}
        exec(code, namespace)
        for name, obj in namespace.items():
            if name.startswith("test_") and callable(obj):
                obj()  # the generated asserts hold
            elif callable(obj) and getattr(obj, "__doc__", None) and ">>>" in obj.__doc__:
                runner = doctest.DocTestRunner(verbose=False)
                for test in doctest.DocTestFinder().find(obj, name, globs=namespace):
                    runner.run(test)
                assert runner.failures == 0, doc.text


def test_seed_generation_speed() -> None:
    t0 = time.perf_counter()
    take(seed_documents(0), 2000)
    docs_per_s = 2000 / (time.perf_counter() - t0)
    assert docs_per_s > 2000, docs_per_s


def test_seed_corpus_is_learnable(tok) -> None:
    """Even a bigram model gets far below the uniform loss log(V) on held-out seed documents."""
    V = tok.get_vocab_size()

    def ids(docs: list[Document]) -> np.ndarray:
        return np.concatenate([np.asarray(e.ids + [0]) for e in tok.encode_batch([d.text for d in docs])])

    train, test = ids(take(seed_documents(0), 1500)), ids(take(seed_documents(0, start=5000), 200))
    counts = np.ones((V, V))  # add-one smoothing
    np.add.at(counts, (train[:-1], train[1:]), 1)
    logp = np.log(counts / counts.sum(1, keepdims=True))
    loss = -logp[test[:-1], test[1:]].mean()
    assert loss < 0.5 * math.log(V), (loss, math.log(V))


# ---------------------------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list, *, gz: bool = False) -> None:
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")


def write_parquet(path: Path, columns: dict[str, list]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=2)


@pytest.fixture
def mixed_dir(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("plain text file")
    write_jsonl(
        d / "b.jsonl",
        [
            {"text": "json one"},
            "{broken json",
            {"text": "json two", "domain": "math"},
            {"body": "no text"},
            [1],
        ],
    )
    write_jsonl(d / "c.jsonl.gz", [{"text": "gz one"}, {"text": "gz two", "domain": "code"}], gz=True)
    write_parquet(
        d / "sub" / "d.parquet", {"text": ["pq one", "pq two", "pq three"], "domain": ["text", None, "x"]}
    )
    (d / "sub" / "e.py").write_text("def f():\n    return 1\n")
    (d / "notes.csv").write_text("ignored,file\n")
    return d


def test_local_reads_all_formats_in_sorted_order(mixed_dir: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        docs = take(local_documents([str(mixed_dir)]), 10)
    assert [(d.text, d.domain) for d in docs] == [
        ("plain text file", "text"),
        ("json one", "text"),
        ("json two", "math"),
        ("gz one", "text"),
        ("gz two", "code"),
        ("pq one", "text"),
        ("pq two", "text"),
        ("pq three", "text"),  # unknown domain value -> guessed from the extension
        ("def f():\n    return 1\n", "code"),
        ("plain text file", "text"),  # second epoch
    ]
    assert all(d.source == "local" for d in docs)
    assert "skipped 3 malformed line(s)" in caplog.text and "b.jsonl" in caplog.text


def test_local_cycles_and_resumes(mixed_dir: Path) -> None:
    stream = take(local_documents([str(mixed_dir)]), 40)
    for start in (0, 3, 9, 25):
        assert take(local_documents([str(mixed_dir)], start=start), 10) == stream[start : start + 10]
    assert len(list(local_documents([str(mixed_dir)], cycle=False))) == 9


def test_local_jsonl_lone_surrogates_are_replaced(tmp_path: Path) -> None:
    (tmp_path / "s.jsonl").write_text('{"text": "ok \\ud800 end"}\n')
    (doc,) = local_documents([str(tmp_path)], cycle=False)
    assert doc.text == "ok ? end"


def test_local_text_field_and_big_txt_chunks(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "x.jsonl", [{"content": "hello"}])
    assert take(local_documents([str(tmp_path / "x.jsonl")], text_field="content"), 1)[0].text == "hello"
    big = tmp_path / "big.txt"
    paragraphs = [f"paragraph {i} " + "word " * 200 for i in range(60)]
    big.write_text("\n\n".join(paragraphs))
    chunks = list(local_documents([str(big)], cycle=False))
    assert len(chunks) > 1 and all(len(c.text) <= 20_000 for c in chunks)
    assert "".join(c.text for c in chunks) == big.read_text()


def test_validate_local_paths(tmp_path: Path, mixed_dir: Path) -> None:
    assert validate_local_paths([str(mixed_dir)]) == []
    (tmp_path / "empty").mkdir()
    (tmp_path / "data.csv").write_text("a,b\n")
    write_parquet(tmp_path / "p.parquet", {"body": ["x"]})
    problems = validate_local_paths(
        [
            str(tmp_path / "missing"),
            str(tmp_path / "empty"),
            str(tmp_path / "data.csv"),
            str(tmp_path / "p.parquet"),
        ]
    )
    assert len(problems) == 4
    assert "does not exist" in problems[0] and "missing" in problems[0]
    assert "no supported data files" in problems[1]
    assert "unsupported data file extension" in problems[2]
    assert "no column 'text'" in problems[3]
    assert validate_local_paths([]) and "no local data paths" in validate_local_paths([])[0]


# ---------------------------------------------------------------------------------------------
# Packer
# ---------------------------------------------------------------------------------------------


def test_packer_rows_reproduce_stream() -> None:
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, 100, size=int(rng.integers(1, 30))).tolist() for _ in range(40)]
    T, EOS = 16, 0
    packer = Packer(T, eos_id=EOS)
    rows: list[list[int]] = []
    for i in range(0, len(docs), 7):
        packer.add(docs[i : i + 7])
        n = packer.rows_available()
        if n:
            rows += packer.pop_rows(n).tolist()
    assert rows and all(len(r) == T + 1 for r in rows)
    stream = [t for d in docs for t in [*d, EOS]]
    joined = rows[0] + [t for r in rows[1:] for t in r[1:]]  # rows overlap by one token
    assert joined == stream[: len(joined)]
    # The leftover is exactly the rest of the stream, starting at the last emitted token.
    assert packer.state_dict()["buffer"] == stream[len(joined) - 1 :]


def test_packer_state_round_trip() -> None:
    a = Packer(8, eos_id=0)
    a.add([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]])
    a.pop_rows(1)
    state = json.loads(json.dumps(a.state_dict()))
    b = Packer(8, eos_id=0)
    b.load_state_dict(state)
    for p in (a, b):
        p.add([[12, 13, 14, 15, 16, 17, 18, 19]])
    assert np.array_equal(a.pop_rows(a.rows_available()), b.pop_rows(b.rows_available()))
    with pytest.raises(ValueError, match="rows"):
        a.pop_rows(5)


# ---------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------

N_LOCAL_DOCS = 300


def marker_text(i: int) -> str:
    return f"Document {i:04d}: " + " ".join(["marker text"] * (i % 7 + 1))


@pytest.fixture
def local_corpus(tmp_path: Path) -> Path:
    """Documents with a unique marker each, so batches can be traced back to documents."""
    rows = [{"text": marker_text(i)} for i in range(N_LOCAL_DOCS)]
    write_jsonl(tmp_path / "docs.jsonl", rows)
    return tmp_path / "docs.jsonl"


def doc_markers(tok, batches) -> set[int]:
    """Document numbers whose marker appears in consecutive batches (rows rejoined, so none is cut)."""
    stream: list[int] = []
    for b in batches:
        for row in torch.cat([b.inputs_BT, b.targets_BT[:, -1:]], dim=1).tolist():
            stream += row if not stream else row[1:]  # consecutive rows overlap by one token
    return {int(m) for m in re.findall(r"Document (\d{4}):", tok.decode(stream))}


def heldout_numbers(every: int) -> set[int]:
    return {i for i in range(N_LOCAL_DOCS) if is_heldout(Document(marker_text(i), "text", "local"), every)}


def make(tok, cfg: DataConfig, **kw) -> DataPipeline:
    return DataPipeline(cfg, tok, seq_len=kw.pop("seq_len", 32), batch_size=kw.pop("batch_size", 4), **kw)


def test_batch_shapes_and_targets(tok) -> None:
    b = make(tok, DataConfig(backend="seed")).next_batch()
    assert b.inputs_BT.shape == b.targets_BT.shape == (4, 32)
    assert b.inputs_BT.dtype == b.targets_BT.dtype == torch.int64
    assert torch.equal(b.inputs_BT[:, 1:], b.targets_BT[:, :-1])
    assert b.n_tokens == 128 and b.source == "seed"


def test_bootstrap_batches_identical_then_backend(tok, local_corpus: Path) -> None:
    cfg = DataConfig(backend="local", paths=[str(local_corpus)], bootstrap_seed_batches=3, heldout_every=5)
    a, b = make(tok, cfg), make(tok, cfg)
    ba, bb = [a.next_batch() for _ in range(5)], [b.next_batch() for _ in range(5)]
    assert [x.source for x in ba] == ["seed"] * 3 + ["local"] * 2
    for x, y in zip(ba, bb, strict=True):
        assert torch.equal(x.inputs_BT, y.inputs_BT) and torch.equal(x.targets_BT, y.targets_BT)
    assert not doc_markers(tok, ba[:3]) and doc_markers(tok, ba[3:])


def test_heldout_never_trained_on(tok, local_corpus: Path) -> None:
    cfg = DataConfig(backend="local", paths=[str(local_corpus)], heldout_every=5)
    held = heldout_numbers(5)
    assert 20 < len(held) < 120  # sanity: the hash split is roughly 1 in 5
    p = make(tok, cfg)
    seen = doc_markers(tok, [p.next_batch() for _ in range(120)])  # > 1 epoch of the corpus
    assert seen == set(range(N_LOCAL_DOCS)) - held
    held_batches = p.heldout_batches(3)
    assert doc_markers(tok, held_batches) <= held
    assert all(b.source == "local" for b in held_batches)


def test_heldout_set_is_fixed(tok, local_corpus: Path) -> None:
    cfg = DataConfig(backend="local", paths=[str(local_corpus)], heldout_every=5)
    p = make(tok, cfg)
    first = p.heldout_batches(4)
    p.next_batch()
    again, other = p.heldout_batches(4), make(tok, cfg).heldout_batches(4)
    smaller = make(tok, cfg).heldout_batches(2)
    for x, y, z in zip(first, again, other, strict=True):
        assert torch.equal(x.inputs_BT, y.inputs_BT) and torch.equal(x.inputs_BT, z.inputs_BT)
    assert all(torch.equal(x.inputs_BT, y.inputs_BT) for x, y in zip(smaller, first[:2], strict=True))


def test_heldout_by_domain_on_seed(tok) -> None:
    p = make(tok, DataConfig(backend="seed", heldout_every=10))
    for domain in DOMAINS:
        (batch,) = p.heldout_batches(1, domain=domain)
        assert batch.inputs_BT.shape == (4, 32)


@pytest.mark.parametrize("backend", ["seed", "local"])
def test_state_dict_resume_is_exact(tok, local_corpus: Path, backend: str) -> None:
    cfg = DataConfig(backend=backend, paths=[str(local_corpus)], bootstrap_seed_batches=2, heldout_every=5)
    ref = make(tok, cfg)
    for _ in range(3):
        ref.next_batch()
    state = json.loads(json.dumps(ref.state_dict()))  # must survive JSON (checkpoint metadata)
    expected = [ref.next_batch() for _ in range(25)]
    resumed = make(tok, cfg)
    resumed.load_state_dict(state)
    got = [resumed.next_batch() for _ in range(25)]
    for x, y in zip(expected, got, strict=True):
        assert x.source == y.source
        assert torch.equal(x.inputs_BT, y.inputs_BT) and torch.equal(x.targets_BT, y.targets_BT)


def test_resume_inside_bootstrap(tok, local_corpus: Path) -> None:
    cfg = DataConfig(backend="local", paths=[str(local_corpus)], bootstrap_seed_batches=4, heldout_every=5)
    ref = make(tok, cfg)
    ref.next_batch()
    state = ref.state_dict()
    expected = [ref.next_batch().source for _ in range(5)]
    resumed = make(tok, cfg)
    resumed.load_state_dict(state)
    assert [resumed.next_batch().source for _ in range(5)] == expected == ["seed"] * 3 + ["local"] * 2


def test_ranks_see_disjoint_documents(tok, local_corpus: Path) -> None:
    cfg = DataConfig(backend="local", paths=[str(local_corpus)], heldout_every=5)
    seen = [
        doc_markers(tok, [make(tok, cfg, rank=r, world_size=2).next_batch() for _ in range(12)])
        for r in (0, 1)
    ]
    assert seen[0] and seen[1] and not seen[0] & seen[1]
    assert seen[0] | seen[1] <= set(range(N_LOCAL_DOCS)) - heldout_numbers(5)
    state = make(tok, cfg, rank=0, world_size=2).state_dict()
    with pytest.raises(ValueError, match="same world size"):
        make(tok, cfg, rank=1, world_size=2).load_state_dict(state)


def test_sample_texts(tok, local_corpus: Path) -> None:
    cfg = DataConfig(backend="local", paths=[str(local_corpus)], bootstrap_seed_batches=1, heldout_every=5)
    p = make(tok, cfg)
    sample = p.sample_texts(20_000)
    assert sample == make(tok, cfg).sample_texts(20_000)
    assert sum(map(len, sample)) <= 20_000
    assert any(t.startswith("Document ") for t in sample) and any(
        not t.startswith("Document ") for t in sample
    )
    sampled = {int(m) for t in sample for m in re.findall(r"Document (\d{4}):", t)}
    assert not sampled & heldout_numbers(5)
    # Sampling does not consume the training stream.
    assert torch.equal(p.next_batch().inputs_BT, make(tok, cfg).next_batch().inputs_BT)
    # A corpus smaller than the budget comes back whole (minus held-out documents), once.
    whole = make(tok, DataConfig(backend="local", paths=[str(local_corpus)], heldout_every=5)).sample_texts(
        10**9
    )
    assert len(whole) == N_LOCAL_DOCS - len(heldout_numbers(5))


def test_config_validation(tmp_path: Path) -> None:
    DataConfig().validate()
    with pytest.raises(ValueError, match="--data-backend"):
        DataConfig(backend="web").validate()
    with pytest.raises(ValueError, match="no local data paths"):
        DataConfig(backend="local").validate()
    with pytest.raises(ValueError, match="does not exist"):
        DataConfig(backend="local", paths=[str(tmp_path / "nope")]).validate()
    with pytest.raises(ValueError, match="--heldout-every"):
        DataConfig(heldout_every=1).validate()
    with pytest.raises(ValueError, match="--bootstrap-seed-batches"):
        DataConfig(bootstrap_seed_batches=-1).validate()


def test_tiny_corpus_all_heldout_fails_loudly(tok, tmp_path: Path) -> None:
    texts = [f"doc {i}" for i in range(200)]
    held = next(t for t in texts if is_heldout(Document(t, "text", "local"), 50))
    write_jsonl(tmp_path / "one.jsonl", [{"text": held}])
    p = make(tok, DataConfig(backend="local", paths=[str(tmp_path / "one.jsonl")], heldout_every=50))
    with pytest.raises(RuntimeError, match="too small"):
        p.next_batch()
    assert eos_id(tok) == 0
