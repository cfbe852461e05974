"""Data pipeline: document sources -> train/held-out split -> rank shard -> tokenize -> pack -> batches.

Shape legend: B = batch size, T = sequence length.

Flow for training batches:
1. The first `bootstrap_seed_batches` batches come from the embedded seed corpus (identical across
   runs with the same seed and tokenizer), then batches come from the configured backend. With
   backend "seed" both phases read one continuous seed stream.
2. Documents are read in a fixed order; raw document i goes to rank `i % world_size`.
3. A document is held out when a stable hash of its text falls in bucket 0 of `heldout_every`
   (content-based, so a held-out document stays held out in every epoch, under every rank count and
   for duplicates of it). Held-out documents never reach training batches.
4. Accepted documents are tokenized in chunks with `encode_batch` and packed (see `packer.py`).

Resume: `state_dict()` records, per source, the raw index of the next unread document and the
packer's leftover tokens, plus the batch counter; a pipeline restored with `load_state_dict` yields
exactly the batches the original would have yielded.

Adding a source (FineWeb, Cosmopedia, WET, ...): give it a name, make `_open_source` return an
iterator of `Document`s starting at a document index, and accept the name in `DataConfig.backend`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tokenizers import Tokenizer

from training.data.documents import DOMAINS, Document
from training.data.local import local_documents, validate_local_paths
from training.data.packer import Packer
from training.data.seed_corpus import seed_documents
from training.data.tokenizer import eos_id

BACKENDS: tuple[str, ...] = ("seed", "local")

# Documents tokenized per encode_batch call: big enough to use the Rust thread pool, small enough
# that the packer's leftovers (saved in every checkpoint) stay small.
_ENCODE_CHUNK_DOCS = 64
_ENCODE_CHUNK_CHARS = 1_000_000
# A stream that rejects this many documents in a row (all held out or on other ranks) cannot feed
# training; stop with an error instead of looping forever over a tiny corpus.
_MAX_REJECTED_IN_A_ROW = 20_000
# Share of the tokenizer sample taken from the seed corpus when bootstrap batches use it.
_SEED_SAMPLE_SHARE = 0.25

_STATE_VERSION = 1


@dataclass
class DataConfig:
    """Where training text comes from and how it is split."""

    backend: str = "seed"
    """Document source after the bootstrap batches: "seed" (embedded corpus) or "local" (files in `paths`)."""
    paths: list[str] = field(default_factory=list)
    """Files or directories for the "local" backend: .txt/.md/.py, .jsonl, .jsonl.gz, .parquet."""
    text_field: str = "text"
    """JSON/Parquet field holding the document text."""
    bootstrap_seed_batches: int = 0
    """Number of first batches drawn from the embedded seed corpus before the backend takes over."""
    heldout_every: int = 100
    """About one document in `heldout_every` (by a hash of its text) is held out for evaluation."""
    seed: int = 0
    """Seed of the embedded seed corpus."""

    def validate(self) -> None:
        """Raise ValueError naming the flag and the fix for every problem found."""
        problems: list[str] = []
        if self.backend not in BACKENDS:
            problems.append(f"--data-backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.backend == "local":
            problems += validate_local_paths(self.paths, text_field=self.text_field)
        if self.bootstrap_seed_batches < 0:
            problems.append(f"--bootstrap-seed-batches must be >= 0, got {self.bootstrap_seed_batches}")
        if self.heldout_every < 2:
            problems.append(
                f"--heldout-every must be >= 2 (1 would hold out everything), got {self.heldout_every}"
            )
        if not self.text_field:
            problems.append("--text-field must not be empty")
        if problems:
            raise ValueError("invalid data config:\n  " + "\n  ".join(problems))


@dataclass
class Batch:
    """One training or evaluation batch (CPU tensors; the trainer moves them to the device)."""

    inputs_BT: torch.Tensor
    """int64 [B, T] token ids."""
    targets_BT: torch.Tensor
    """int64 [B, T]: inputs shifted left by one (next-token targets)."""
    source: str
    """Source that produced the batch: "seed", "local", ..."""
    n_tokens: int
    """Number of target tokens (B * T)."""


def is_heldout(doc: Document, heldout_every: int) -> bool:
    """True when `doc` belongs to the held-out split (stable across runs, epochs, ranks and machines)."""
    # Python's hash() is salted per process; blake2b is stable and costs ~1 us per KB.
    digest = hashlib.blake2b(doc.text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % heldout_every == 0


class _Stream:
    """One source's training stream: document position + packer, with resumable state."""

    def __init__(self, name: str, pipeline: DataPipeline) -> None:
        self.name = name
        self._p = pipeline
        self.packer = Packer(pipeline.seq_len, eos_id=pipeline.eos_id)
        self.doc_index = 0  # raw index (before split/sharding) of the next unread document
        self._docs: Iterator[Document] | None = None  # opened lazily at doc_index

    def take_rows(self, n: int) -> np.ndarray:
        while self.packer.rows_available() < n:
            self._fill_chunk()
        return self.packer.pop_rows(n)

    def _fill_chunk(self) -> None:
        p = self._p
        if self._docs is None:
            self._docs = p._open_source(self.name, self.doc_index)
        texts: list[str] = []
        chars = 0
        rejected = 0
        while len(texts) < _ENCODE_CHUNK_DOCS and chars < _ENCODE_CHUNK_CHARS:
            doc = next(self._docs)
            i = self.doc_index
            self.doc_index += 1
            if i % p.world_size != p.rank or is_heldout(doc, p.cfg.heldout_every):
                rejected += 1
                if rejected > _MAX_REJECTED_IN_A_ROW:
                    raise RuntimeError(
                        f"data source {self.name!r} yielded {rejected} documents in a row that are held out or "
                        f"belong to other ranks; the corpus is too small for --heldout-every "
                        f"{p.cfg.heldout_every} and world size {p.world_size}"
                    )
                continue
            rejected = 0
            texts.append(doc.text)
            chars += len(doc.text)
        self.packer.add(p._encode(texts))

    def reset_to(self, doc_index: int, packer_state: dict) -> None:
        self.doc_index = doc_index
        self.packer.load_state_dict(packer_state)
        self._docs = None


class DataPipeline:
    """Deterministic, resumable stream of packed batches plus a fixed held-out set."""

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer: Tokenizer | None,
        *,
        seq_len: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        cfg.validate()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len}, {batch_size}")
        self.cfg = cfg
        self.tokenizer = tokenizer
        # No tokenizer yet is fine for sample_texts(), which feeds tokenizer training.
        self.eos_id = eos_id(tokenizer) if tokenizer is not None else -1
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.batches_done = 0
        # With backend "seed" the bootstrap and the backend share one stream, so it continues
        # where the bootstrap stopped instead of repeating it.
        self._streams: dict[str, _Stream] = {cfg.backend: _Stream(cfg.backend, self)}
        if cfg.bootstrap_seed_batches > 0 and "seed" not in self._streams:
            self._streams["seed"] = _Stream("seed", self)
        self._heldout_cache: dict[str | None, list[Batch]] = {}

    # -- sources and tokenization -------------------------------------------------------------

    def _open_source(self, name: str, start: int, *, cycle: bool = True) -> Iterator[Document]:
        """Documents of source `name` from raw index `start` (remote sources will plug in here)."""
        if name == "seed":
            return seed_documents(self.cfg.seed, start)
        if name == "local":
            return local_documents(self.cfg.paths, text_field=self.cfg.text_field, start=start, cycle=cycle)
        raise ValueError(f"unknown data source {name!r}")

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        # encode_batch runs in the Rust thread pool; the "fast" variant skips offset tracking.
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def _to_batch(self, rows: np.ndarray, source: str) -> Batch:
        rows_BT1 = torch.from_numpy(rows)
        return Batch(
            inputs_BT=rows_BT1[:, :-1].contiguous(),
            targets_BT=rows_BT1[:, 1:].contiguous(),
            source=source,
            n_tokens=rows.shape[0] * self.seq_len,
        )

    # -- training batches ---------------------------------------------------------------------

    def current_source(self) -> str:
        """Source of the next training batch."""
        return "seed" if self.batches_done < self.cfg.bootstrap_seed_batches else self.cfg.backend

    def next_batch(self) -> Batch:
        """Return the next training batch ([batch_size, seq_len] inputs and targets)."""
        name = self.current_source()
        rows = self._streams[name].take_rows(self.batch_size)
        self.batches_done += 1
        return self._to_batch(rows, name)

    # -- held-out set -------------------------------------------------------------------------

    def heldout_batches(self, n_batches: int, *, domain: str | None = None) -> list[Batch]:
        """A fixed held-out set of `n_batches` batches from held-out documents of the backend.

        Identical on every call, every rank and every run with the same config and tokenizer (it is
        not sharded by rank). `domain` restricts it to one of `DOMAINS` (per-domain evaluation). If
        the held-out documents hold fewer tokens than needed they are repeated in order.
        """
        if domain is not None and domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS} or None, got {domain!r}")
        cached = self._heldout_cache.get(domain, [])
        if len(cached) >= n_batches:
            return cached[:n_batches]
        packer = Packer(self.seq_len, eos_id=self.eos_id)
        docs = self._open_source(self.cfg.backend, 0)
        need_rows = n_batches * self.batch_size
        rejected = 0
        while packer.rows_available() < need_rows:
            # Held-out documents are sparse: gather about as many characters as tokens are still
            # missing (a token is at least one character for most text), then encode them together.
            missing = (need_rows - packer.rows_available()) * self.seq_len + 1
            texts: list[str] = []
            chars = 0
            while len(texts) < _ENCODE_CHUNK_DOCS and chars < missing:
                doc = next(docs)
                if is_heldout(doc, self.cfg.heldout_every) and (domain is None or doc.domain == domain):
                    texts.append(doc.text)
                    chars += len(doc.text)
                    rejected = 0
                    continue
                rejected += 1
                if rejected > _MAX_REJECTED_IN_A_ROW:
                    raise RuntimeError(
                        f"found no held-out document{f' of domain {domain!r}' if domain else ''} in "
                        f"{rejected} documents of {self.cfg.backend!r}; lower --heldout-every or add data"
                    )
            packer.add(self._encode(texts))
        rows = packer.pop_rows(need_rows).reshape(n_batches, self.batch_size, self.seq_len + 1)
        batches = [self._to_batch(r, self.cfg.backend) for r in rows]
        self._heldout_cache[domain] = batches
        return list(batches)

    # -- tokenizer sample -----------------------------------------------------------------------

    def sample_texts(self, max_chars: int) -> list[str]:
        """A deterministic sample of training documents (about `max_chars` characters in all).

        Taken from the start of the training stream(s) without consuming them: the backend, plus a
        share from the seed corpus when bootstrap batches use it. Held-out documents are excluded;
        the sample is the same on every rank, so every rank trains the same tokenizer. A local corpus
        smaller than the budget is returned whole.
        """
        budgets: list[tuple[str, int]] = [(self.cfg.backend, max_chars)]
        if self.cfg.bootstrap_seed_batches > 0 and self.cfg.backend != "seed":
            seed_chars = int(max_chars * _SEED_SAMPLE_SHARE)
            budgets = [("seed", seed_chars), (self.cfg.backend, max_chars - seed_chars)]
        texts: list[str] = []
        for name, budget in budgets:
            used = 0
            for doc in self._open_source(name, 0, cycle=False):
                if used >= budget:
                    break
                if is_heldout(doc, self.cfg.heldout_every):
                    continue
                text = doc.text[: budget - used]
                texts.append(text)
                used += len(text)
        return texts

    # -- checkpoint state -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Plain-JSON state: batch counter and, per source, next document index and packer leftovers."""
        return {
            "version": _STATE_VERSION,
            "batches_done": self.batches_done,
            "rank": self.rank,
            "world_size": self.world_size,
            "streams": {
                name: {"doc_index": s.doc_index, "packer": s.packer.state_dict()}
                for name, s in self._streams.items()
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from `state_dict`; later batches equal those the saved pipeline would give."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"data state version {state.get('version')} is not {_STATE_VERSION}")
        if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
            raise ValueError(
                f"data state was saved by rank {state['rank']} of {state['world_size']}, "
                f"this is rank {self.rank} of {self.world_size}; resume with the same world size"
            )
        for name, s in state["streams"].items():
            if name not in self._streams:
                raise ValueError(
                    f"data state has source {name!r}, this pipeline reads {sorted(self._streams)}"
                )
            self._streams[name].reset_to(s["doc_index"], s["packer"])
        self.batches_done = state["batches_done"]
