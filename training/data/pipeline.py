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

Backend "hybrid" (SPEC §3): one mixed stream of FineWeb-Edu, Cosmopedia and CommonCrawl WET
documents (`sources.py`: readers, quality filters, the weighted `Mixer`); its state is the mixer's
(slot counter, dropped sources, each reader's file/row/byte position, dedup window) plus the packer.
Sources are probed concurrently when the pipeline is built; an unreachable one is dropped (or waited
for, or fatal) per `on_source_failure`, and with none left the stream serves the seed corpus.

Sharding: a pipeline is shard `k` of `n`; `n` = world size x data workers (`prefetch.py` runs one
pipeline per worker process). Seed/local streams keep raw document i when i % n == k; hybrid readers
shard by file or row (see `sources.py`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from tokenizers import Tokenizer

from training.data.documents import DOMAINS, Document
from training.data.local import local_documents, validate_local_paths
from training.data.packer import Packer
from training.data.seed_corpus import seed_documents
from training.data.tokenizer import eos_id

if TYPE_CHECKING:  # torch is imported lazily: data worker processes never load it
    import torch

BACKENDS: tuple[str, ...] = ("seed", "local", "hybrid")
FAILURE_POLICIES: tuple[str, ...] = ("wait", "drop", "fail")
DEFAULT_MIX: dict[str, float] = {"fineweb_edu": 0.5, "cosmopedia": 0.3, "commoncrawl": 0.2}

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
    """Seed of the embedded seed corpus and of the hybrid mixer."""
    workers: int = 0
    """Background worker processes producing batches (0: one thread in the training process)."""
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    """hybrid: source -> weight (fineweb_edu, cosmopedia, commoncrawl); weights renormalise over live sources."""
    fineweb_path: str | None = None
    """hybrid: local FineWeb-Edu mirror (parquet/jsonl in the dataset's schema); None streams the Hub."""
    fineweb_config: str = "sample-10BT"
    """hybrid: FineWeb-Edu config streamed from the Hub."""
    fineweb_min_score: float = 3.0
    """hybrid: keep FineWeb-Edu rows with `score` >= this."""
    cosmopedia_path: str | None = None
    """hybrid: local Cosmopedia mirror (subset folders of parquet/jsonl); None streams the Hub."""
    cosmopedia_subsets: tuple[str, ...] = ("web_samples_v2", "stanford", "stories", "auto_math_text", "khanacademy",
                                           "wikihow", "openstax", "web_samples_v1")
    """hybrid: Cosmopedia subsets (Hub configs, or folder names in the mirror)."""
    cc_crawl: str | None = "CC-MAIN-2024-51"
    """hybrid: CommonCrawl crawl whose wet.paths.gz lists the WET files (when cc_wet_paths is None)."""
    cc_wet_paths: str | None = None
    """hybrid: a file (local or URL, optionally .gz) listing WET URLs or local paths, one per line."""
    cc_base_url: str = "https://data.commoncrawl.org"
    """hybrid: where crawl listings and relative WET paths are fetched from (a mirror may replace it)."""
    cc_language: str = "en"
    """hybrid: WET language check: 'en' (stop-word test) or 'any'."""
    source_timeout: float = 60.0
    """hybrid: seconds a remote source may stay unreachable before on_source_failure applies."""
    on_source_failure: str = "drop"
    """hybrid: wait (retry forever, logging), drop (renormalise the mix; seed corpus if none left), fail."""

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
        if self.workers < 0:
            problems.append(f"--data-workers must be >= 0, got {self.workers}")
        if self.on_source_failure not in FAILURE_POLICIES:
            problems.append(f"--on-source-failure must be one of {', '.join(FAILURE_POLICIES)}")
        if self.backend == "hybrid":
            bad = sorted(set(self.mix) - set(DEFAULT_MIX))
            if bad or not self.mix or any(w < 0 for w in self.mix.values()) or sum(self.mix.values()) <= 0:
                problems.append(f"--mix {self.mix} is invalid: give name=weight pairs of {', '.join(DEFAULT_MIX)} "
                                "with weights >= 0 and a positive sum")
            for flag, path in (("--fineweb-path", self.fineweb_path), ("--cosmopedia-path", self.cosmopedia_path)):
                if path is not None and not _mirror_files(path):
                    problems.append(f"{flag} {path!r} holds no .parquet/.jsonl files")
            if self.cc_wet_paths is None and not self.cc_crawl and self.mix.get("commoncrawl", 0) > 0:
                problems.append("commoncrawl needs --cc-crawl or --cc-wet-paths (or weight 0 in --mix)")
            if self.source_timeout <= 0:
                problems.append(f"--source-timeout must be > 0, got {self.source_timeout}")
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
    """Source that produced the batch: "seed", "local", "hybrid"."""
    n_tokens: int
    """Number of target tokens (B * T)."""


def is_heldout(doc: Document, heldout_every: int) -> bool:
    """True when `doc` belongs to the held-out split (stable across runs, epochs, ranks and machines)."""
    # Python's hash() is salted per process; blake2b is stable and costs ~1 us per KB.
    digest = hashlib.blake2b(doc.text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % heldout_every == 0


def _mirror_files(path: str) -> list:
    from training.data.sources import list_mirror_files

    try:
        return list_mirror_files(path)
    except OSError:
        return []


# Sources found unreachable in this process recently are not probed again (the tokenizer sampler,
# the held-out set and the training pipeline are built one after another at start-up).
_PROBE_MEMO: dict[str, tuple[float, dict[str, str]]] = {}
_PROBE_MEMO_S = 600.0


def _say(message: str) -> None:
    from training import console

    console.say(message)


class _Stream:
    """One source's training stream: document position + packer, with resumable state."""

    def __init__(self, name: str, pipeline: DataPipeline) -> None:
        self.name = name
        self._p = pipeline
        self.packer = Packer(pipeline.seq_len, eos_id=pipeline.eos_id)
        self.doc_index = 0  # raw index (before split/sharding) of the next unread document
        self._docs: Iterator[Document] | None = None  # opened lazily at doc_index
        self.mixer = pipeline._make_mixer(pipeline.shard) if name == "hybrid" else None
        self.tokens: dict[str, int] = {}  # tokens packed per document source (eos included)

    def take_rows(self, n: int) -> np.ndarray:
        while self.packer.rows_available() < n:
            self._fill_chunk()
        return self.packer.pop_rows(n)

    def _next_doc(self) -> tuple[Document, bool]:
        """The next document and whether this shard keeps it (hybrid readers shard by themselves)."""
        p = self._p
        if self.mixer is not None:
            return next(self.mixer), True
        if self._docs is None:
            self._docs = p._open_source(self.name, self.doc_index)
        doc = next(self._docs)
        i = self.doc_index
        self.doc_index += 1
        k, n = p.shard
        return doc, i % n == k

    def _fill_chunk(self) -> None:
        p = self._p
        texts: list[str] = []
        sources: list[str] = []
        chars = 0
        rejected = 0
        while len(texts) < _ENCODE_CHUNK_DOCS and chars < _ENCODE_CHUNK_CHARS:
            doc, mine = self._next_doc()
            if not mine or is_heldout(doc, p.cfg.heldout_every):
                rejected += 1
                if rejected > _MAX_REJECTED_IN_A_ROW:
                    raise RuntimeError(
                        f"data source {self.name!r} yielded {rejected} documents in a row that are held out or "
                        f"belong to other shards; the corpus is too small for --heldout-every "
                        f"{p.cfg.heldout_every}, world size {p.world_size} and {p.cfg.workers} data workers"
                    )
                continue
            rejected = 0
            texts.append(doc.text)
            sources.append(doc.source)
            chars += len(doc.text)
        ids = p._encode(texts)
        for src, toks in zip(sources, ids, strict=True):
            self.tokens[src] = self.tokens.get(src, 0) + len(toks) + 1
        self.packer.add(ids)

    def state(self) -> dict:
        st = {"doc_index": self.doc_index, "packer": self.packer.state_dict(), "tokens": dict(self.tokens)}
        if self.mixer is not None:
            st["mixer"] = self.mixer.state()
        return st

    def reset_to(self, state: dict) -> None:
        self.doc_index = state["doc_index"]
        self.packer.load_state_dict(state["packer"])
        self.tokens = dict(state.get("tokens", {}))
        self._docs = None
        if self.mixer is not None:
            self.mixer.load(state["mixer"])


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
        worker: tuple[int, int] | None = None,
        dropped: dict[str, str] | None = None,
    ) -> None:
        """`worker=(w, W)` makes this the pipeline of data worker w of W (see prefetch.py); `dropped`
        pre-marks hybrid sources as unavailable (a worker inherits the training process's probe)."""
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
        self.worker = worker
        w, n_w = worker or (0, 1)
        self.shard = (rank * n_w + w, world_size * n_w)
        self.batches_done = 0
        self._dropped = dict(dropped) if dropped is not None else None
        if cfg.backend == "hybrid" and self._dropped is None:
            self._dropped = self._probe()
        # With backend "seed" the bootstrap and the backend share one stream, so it continues
        # where the bootstrap stopped instead of repeating it.
        self._streams: dict[str, _Stream] = {cfg.backend: _Stream(cfg.backend, self)}
        if cfg.bootstrap_seed_batches > 0 and "seed" not in self._streams:
            self._streams["seed"] = _Stream("seed", self)
        self._heldout_cache: dict[str | None, list[Batch]] = {}
        self._external_stats: dict | None = None
        # Worker-mode state (prefetch.py): per-worker pipeline states and the next worker to read.
        self.worker_states: dict | None = None

    # -- sources and tokenization -------------------------------------------------------------

    def _make_mixer(self, shard: tuple[int, int]):
        from training.data import sources as S
        from training.data.http import RetryPolicy
        from training.data.quality import QualityConfig

        cfg = self.cfg
        log = _say
        policy = RetryPolicy(give_up_after=S.inf_if_wait(cfg.on_source_failure, cfg.source_timeout),
                             read_timeout=min(30.0, cfg.source_timeout), connect_timeout=min(10.0, cfg.source_timeout))
        readers: dict[str, object] = {}
        if cfg.mix.get("fineweb_edu", 0) > 0:
            to_doc = S.fineweb_row_to_doc(cfg.fineweb_min_score)
            if cfg.fineweb_path:
                readers["fineweb_edu"] = S.MirrorReader("fineweb_edu", S.list_mirror_files(cfg.fineweb_path),
                                                        shard=shard, columns=["text", "score", "int_score"],
                                                        to_doc=to_doc)
            else:
                readers["fineweb_edu"] = S.HubReader("fineweb_edu", S.FINEWEB_REPO, (cfg.fineweb_config,),
                                                     shard=shard, policy=policy, to_doc=to_doc, log=log)
        if cfg.mix.get("cosmopedia", 0) > 0:
            to_doc = S.cosmopedia_row_to_doc(cfg.cosmopedia_subsets)
            if cfg.cosmopedia_path:
                files = S.list_mirror_files(cfg.cosmopedia_path, cfg.cosmopedia_subsets)
                files = files or S.list_mirror_files(cfg.cosmopedia_path)  # a flat mirror has no subset folders
                readers["cosmopedia"] = S.MirrorReader("cosmopedia", files, shard=shard, columns=["text"],
                                                       to_doc=to_doc)
            else:
                readers["cosmopedia"] = S.HubReader("cosmopedia", S.COSMOPEDIA_REPO, tuple(cfg.cosmopedia_subsets),
                                                    shard=shard, policy=policy, to_doc=to_doc, log=log)
        if cfg.mix.get("commoncrawl", 0) > 0:
            locations = S.wet_locations(crawl=cfg.cc_crawl, paths_file=cfg.cc_wet_paths, base_url=cfg.cc_base_url,
                                        policy=policy, log=log)
            readers["commoncrawl"] = S.WetReader(locations=locations, shard=shard, policy=policy,
                                                 quality=QualityConfig(language=cfg.cc_language), log=log)
        return S.Mixer(readers, dict(cfg.mix), seed=cfg.seed, shard=shard, on_failure=cfg.on_source_failure,
                       log=log, dropped=self._dropped)

    def _probe(self) -> dict[str, str]:
        """Open every hybrid source once (concurrently); the unreachable ones, with reasons."""
        key = repr(sorted((k, v) for k, v in vars(self.cfg).items() if k not in ("workers", "bootstrap_seed_batches")))
        memo = _PROBE_MEMO.get(key)
        if memo is not None and time.monotonic() - memo[0] < _PROBE_MEMO_S:
            return dict(memo[1])
        self._dropped = {}
        mixer = self._make_mixer((0, 1))
        t0 = time.perf_counter()
        mixer.probe()
        up = mixer.live()
        _say(f"data sources: up={','.join(up) or '-'} down={','.join(mixer.dropped) or '-'} "
             f"(probed in {time.perf_counter() - t0:.1f}s)")
        if not up:
            _say("WARNING: no remote data source is reachable: training on the embedded seed corpus "
                 "(point --fineweb-path / --cosmopedia-path / --cc-wet-paths at local mirrors)")
        _PROBE_MEMO[key] = (time.monotonic(), dict(mixer.dropped))
        return dict(mixer.dropped)

    def _open_source(self, name: str, start: int, *, cycle: bool = True) -> Iterator[Document]:
        """Documents of source `name` from raw index `start` (hybrid: a fresh mixed stream of shard 0 of 1)."""
        if name == "seed":
            return seed_documents(self.cfg.seed, start)
        if name == "local":
            return local_documents(self.cfg.paths, text_field=self.cfg.text_field, start=start, cycle=cycle)
        if name == "hybrid":
            mixer = self._make_mixer((0, 1))
            for _ in range(start):
                next(mixer)
            return mixer
        raise ValueError(f"unknown data source {name!r}")

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        # encode_batch runs in the Rust thread pool; the "fast" variant skips offset tracking.
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def _to_batch(self, rows: np.ndarray, source: str) -> Batch:
        import torch

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

    def next_rows(self) -> tuple[np.ndarray, str]:
        """The next training batch as int64 rows [batch_size, seq_len + 1] and its source (no torch)."""
        name = self.current_source()
        rows = self._streams[name].take_rows(self.batch_size)
        self.batches_done += 1
        return rows, name

    def next_batch(self) -> Batch:
        """Return the next training batch ([batch_size, seq_len] inputs and targets)."""
        rows, name = self.next_rows()
        return self._to_batch(rows, name)

    # -- held-out set -------------------------------------------------------------------------

    def heldout_batches(self, n_batches: int, *, domain: str | None = None) -> list[Batch]:
        """A fixed held-out set of `n_batches` batches from held-out documents of the backend.

        Identical on every call, every rank and every run with the same config and tokenizer (it is
        not sharded by rank; for hybrid, it comes from the sources reachable at start-up). `domain`
        restricts it to one of `DOMAINS` (per-domain evaluation). If the held-out documents hold
        fewer tokens than needed they are repeated in order.
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

    # -- metrics ------------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Flat, JSON-able data metrics as of the last batch handed out.

        Per source: `data_source_<name>_up` (1/0), `data_source_<name>_docs` (documents read),
        `data_tokens_<name>` (tokens packed), `data_<name>_filtered_<reason>` and other drop counts;
        `data_fallback_seed` (1 while no remote source is left) and `data_workers`.
        """
        if self._external_stats is not None:
            return dict(self._external_stats)
        return stats_from_state(self.state_dict(), self.cfg)

    def set_stats(self, stats: dict) -> None:
        """Used by the Prefetcher: stats of the worker processes as of the last batch taken."""
        self._external_stats = dict(stats)

    # -- checkpoint state -----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Plain-JSON state: batch counter and, per source, document position and packer leftovers
        (hybrid: the mixer's full state); with data workers, each worker pipeline's state."""
        state = {
            "version": _STATE_VERSION,
            "batches_done": self.batches_done,
            "rank": self.rank,
            "world_size": self.world_size,
            "streams": {name: s.state() for name, s in self._streams.items()},
        }
        if self.worker_states is not None:
            state["workers"] = self.worker_states
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from `state_dict`; later batches equal those the saved pipeline would give."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"data state version {state.get('version')} is not {_STATE_VERSION}")
        if (state["rank"], state["world_size"]) != (self.rank, self.world_size):
            raise ValueError(
                f"data state was saved by rank {state['rank']} of {state['world_size']}, "
                f"this is rank {self.rank} of {self.world_size}; resume with the same world size"
            )
        workers = state.get("workers")
        saved_w = workers["n"] if workers else 0
        if workers is not None and saved_w != self.cfg.workers:
            raise ValueError(f"data state was saved with --data-workers {saved_w}, this run has "
                             f"{self.cfg.workers}; fix: resume with --data-workers {saved_w}")
        for name, s in state["streams"].items():
            if name not in self._streams:
                raise ValueError(
                    f"data state has source {name!r}, this pipeline reads {sorted(self._streams)}"
                )
            self._streams[name].reset_to(s)
        self.batches_done = state["batches_done"]
        self.worker_states = workers
        self._external_stats = None


def stats_from_state(state: dict, cfg: DataConfig) -> dict:
    """The flat metrics of `DataPipeline.stats` computed from a (possibly multi-worker) state."""
    states = [state]
    if state.get("workers"):
        states += [w for w in state["workers"]["states"] if w is not None]
    out: dict[str, object] = {"data_workers": cfg.workers, "data_batches": state["batches_done"]}

    def add(key: str, v: object) -> None:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = out.get(key, 0) + v  # type: ignore[operator]

    any_hybrid = False
    fallback = []
    for st in states:
        for stream in st["streams"].values():
            for src, n in stream.get("tokens", {}).items():
                add(f"data_tokens_{src}", n)
            mixer = stream.get("mixer")
            if mixer is None:
                continue
            any_hybrid = True
            for name, pos in mixer["sources"].items():
                add(f"data_source_{name}_docs", mixer["docs"].get(name, 0))
                for key, v in pos.get("counts", {}).items():
                    add(f"data_{name}_{key}", v)
            add("data_seed_fallback_docs", mixer["docs"].get("seed_fallback", 0))
            fallback.append(not [n for n in mixer["sources"] if n not in mixer["dropped"] and cfg.mix.get(n, 0) > 0])
            for name in mixer["sources"]:
                key = f"data_source_{name}_up"
                out[key] = min(int(out.get(key, 1)), int(name not in mixer["dropped"]))  # type: ignore[arg-type]
    if any_hybrid:
        out["data_fallback_seed"] = int(any(fallback))
    return out
