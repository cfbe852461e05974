"""The hybrid backend's sources and their mixer.

Sources (each a resumable iterator of `Document`s with a JSON `position()`):
- `fineweb_edu`: FineWeb-Edu rows with `score >= min_score`; a local mirror (parquet/jsonl in the
  dataset's own schema) or the Hub through `datasets` streaming.
- `cosmopedia`: Cosmopedia rows of the configured subsets; mirror or Hub, as above.
- `commoncrawl`: WET files (a crawl's `wet.paths.gz` listing, or a file of URLs/paths), streamed
  with resumable HTTP, parsed record by record, quality-filtered and deduplicated.

Sharding: a reader is shard `k` of `n` (n = ranks x data workers). With at least `n` files each shard
reads its own files (file i -> shard i % n); with fewer it reads every file and keeps rows whose
running index is k mod n (reading is repeated, tokenization is not).

`Mixer` interleaves the live sources by weight: document slot j goes to the source picked by a hash
of (seed, shard, j) — deterministic and resumable from j alone. A source that fails for good is
dropped per policy and the weights renormalise; with no remote source left, the mixer serves the
embedded seed corpus (`fallback_seed`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from training.data.documents import Document
from training.data.http import ContentChanged, HttpError, RetryPolicy, SourceUnavailable, open_binary
from training.data.quality import DedupWindow, QualityConfig, guess_domain, quality_problem
from training.data.seed_corpus import seed_document
from training.data.wet import iter_members, parse_records

REMOTE_SOURCES: tuple[str, ...] = ("fineweb_edu", "cosmopedia", "commoncrawl")
FINEWEB_REPO = "HuggingFaceFW/fineweb-edu"
COSMOPEDIA_REPO = "HuggingFaceTB/cosmopedia"
COSMOPEDIA_SUBSETS = ("auto_math_text", "khanacademy", "openstax", "stanford", "stories", "web_samples_v1",
                      "web_samples_v2", "wikihow")
_MATH_SUBSETS = {"auto_math_text", "khanacademy"}
_MIRROR_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".json")
_PARQUET_BATCH_ROWS = 1024
_MAX_EMPTY_SCAN = 200_000  # rows rejected in a row before a mirror counts as unusable

Log = Callable[[str], None]


def _noop(msg: str) -> None:
    pass


# ---------------------------------------------------------------------------------------------
# Local mirrors: parquet / jsonl rows in the dataset's own schema


def list_mirror_files(path: str, subsets: tuple[str, ...] = ()) -> list[Path]:
    """Sorted parquet/jsonl files under `path`; with `subsets`, only files under a folder of that name."""
    root = Path(path)
    if root.is_file():
        return [root]
    files = sorted((p for p in root.rglob("*") if p.is_file() and p.name.endswith(_MIRROR_SUFFIXES)
                    and not any(part.startswith(".") for part in p.relative_to(root).parts)),
                   key=lambda p: p.relative_to(root).as_posix())
    if subsets:
        files = [f for f in files if set(f.relative_to(root).parts[:-1]) & set(subsets)]
    return files


def _rows(path: Path, start: int, columns: list[str]) -> Iterator[dict]:
    """Rows of one mirror file from row `start` (parquet: whole row groups before it are skipped unread)."""
    if path.name.endswith(".parquet"):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        names = set(pf.schema_arrow.names)
        cols = [c for c in columns if c in names]
        first = 0
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if first + n <= start:
                first += n
                continue
            table = pf.read_row_group(g, columns=cols)
            data = {c: table.column(c).to_pylist() for c in cols}
            for i in range(max(0, start - first), n):
                yield {c: data[c][i] for c in cols}
            first += n
        return
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh):
            if i < start:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            yield row if isinstance(row, dict) else {}


class MirrorReader:
    """Rows of a local mirror, cycling forever, keeping rows `accept(row)` approves; resumable."""

    def __init__(self, name: str, files: list[Path], *, shard: tuple[int, int], columns: list[str],
                 to_doc: Callable[[dict, Path], Document | str]) -> None:
        if not files:
            raise SourceUnavailable(f"{name}: the local mirror holds no parquet/jsonl files")
        self.name = name
        k, n = shard
        self.by_file = len(files) >= n
        self.files = [f for i, f in enumerate(files) if i % n == k] if self.by_file else files
        self.k, self.n = k, n
        self.columns = columns
        self.to_doc = to_doc
        self.pos = {"file": 0, "row": 0, "seen": 0}
        self.counts: dict[str, int] = {}
        self._it: Iterator[dict] | None = None

    def open(self) -> None:
        pass  # local files: nothing to probe

    def position(self) -> dict:
        return {**self.pos, "counts": dict(self.counts)}

    def load(self, pos: dict) -> None:
        self.pos = {k: pos[k] for k in ("file", "row", "seen")}
        self.counts = dict(pos.get("counts", {}))
        self._it = None

    def __iter__(self) -> MirrorReader:
        return self

    def __next__(self) -> Document:
        rejected = 0
        while True:
            if self._it is None:
                self._it = _rows(self.files[self.pos["file"]], self.pos["row"], self.columns)
            row = next(self._it, None)
            if row is None:  # end of file: next file (cycling)
                self.pos = {"file": (self.pos["file"] + 1) % len(self.files), "row": 0, "seen": self.pos["seen"]}
                self._it = None
                rejected += 1
                if rejected > _MAX_EMPTY_SCAN:
                    raise SourceUnavailable(f"{self.name}: no usable row in the local mirror")
                continue
            self.pos["row"] += 1
            mine = self.by_file or self.pos["seen"] % self.n == self.k
            self.pos["seen"] += 1
            if not mine:
                continue
            doc = self.to_doc(row, self.files[self.pos["file"]])
            if isinstance(doc, str):  # a filter's reason
                self.counts[f"filtered_{doc}"] = self.counts.get(f"filtered_{doc}", 0) + 1
                rejected += 1
                if rejected > _MAX_EMPTY_SCAN:
                    raise SourceUnavailable(f"{self.name}: {rejected} rows in a row were filtered out ({doc})")
                continue
            return doc


# ---------------------------------------------------------------------------------------------
# The Hub through `datasets` streaming (only where no mirror is given)


class HubReader:
    """Rows of Hub dataset configs streamed with `datasets`, round-robin over configs; resumable by row count.

    Resume re-streams with `.skip(rows)` (the skipped rows are downloaded again: cheap next to a run).
    Failures are retried with backoff for `policy.give_up_after` seconds, then `SourceUnavailable`.
    """

    def __init__(self, name: str, repo: str, configs: tuple[str | None, ...], *, shard: tuple[int, int],
                 policy: RetryPolicy, to_doc: Callable[[dict, str | None], Document | str], log: Log) -> None:
        self.name, self.repo, self.configs = name, repo, configs
        self.shard, self.policy, self.to_doc, self.log = shard, policy, to_doc, log
        self.rows = [0] * len(configs)
        self.turn = 0
        self.counts: dict[str, int] = {}
        self._its: list[Iterator[dict] | None] = [None] * len(configs)
        self._rng = random.Random(0)

    def _stream(self, i: int) -> Iterator[dict]:
        import datasets  # heavy: imported only when the Hub is actually used
        from datasets.distributed import split_dataset_by_node

        ds = datasets.load_dataset(self.repo, name=self.configs[i], split="train", streaming=True)
        k, n = self.shard
        if n > 1:
            ds = split_dataset_by_node(ds, rank=k, world_size=n)
        return iter(ds.skip(self.rows[i]) if self.rows[i] else ds)

    def _next_row(self, i: int) -> dict:
        t0 = time.monotonic()
        t_log = t0
        attempt = 0
        while True:
            try:
                if self._its[i] is None:
                    self._its[i] = self._stream(i)
                row = next(self._its[i])
                self.rows[i] += 1
                return row
            except StopIteration:
                self.rows[i] = 0  # an exhausted config starts over (epochs)
                self._its[i] = None
            except Exception as e:  # noqa: BLE001 - network/library errors are retried, then reported
                self._its[i] = None
                waited = time.monotonic() - t0
                if waited >= self.policy.give_up_after:
                    raise SourceUnavailable(f"{self.name}: {self.repo} unreachable for {waited:.0f}s: {e!r}") from e
                if time.monotonic() - t_log >= 30:
                    t_log = time.monotonic()
                    self.log(f"{self.name}: still retrying {self.repo} after {waited:.0f}s ({e!r})")
                time.sleep(min(self.policy.backoff(attempt, self._rng), self.policy.give_up_after - waited + 0.01))
                attempt += 1

    def open(self) -> None:
        self._its[0] = None
        for i in range(len(self.configs)):
            if self._its[i] is None:
                self._its[i] = self._stream(i)

    def position(self) -> dict:
        return {"rows": list(self.rows), "turn": self.turn, "counts": dict(self.counts)}

    def load(self, pos: dict) -> None:
        self.rows, self.turn = list(pos["rows"]), pos["turn"]
        self.counts = dict(pos.get("counts", {}))
        self._its = [None] * len(self.configs)

    def __iter__(self) -> HubReader:
        return self

    def __next__(self) -> Document:
        while True:
            i = self.turn
            self.turn = (self.turn + 1) % len(self.configs)
            doc = self.to_doc(self._next_row(i), self.configs[i])
            if isinstance(doc, str):
                self.counts[f"filtered_{doc}"] = self.counts.get(f"filtered_{doc}", 0) + 1
                continue
            return doc


# ---------------------------------------------------------------------------------------------
# CommonCrawl WET


class WetReader:
    """Documents from WET files (URLs or local paths), resumable at gzip-member byte offsets.

    Position: file index, byte offset of the next member, records of that member already used, the
    running record count (row sharding), records used in this file (restart after a content
    change), the dedup window and the filter counts.
    """

    def __init__(self, *, locations: Callable[[], list[str]], shard: tuple[int, int], policy: RetryPolicy,
                 quality: QualityConfig, log: Log) -> None:
        self.name = "commoncrawl"
        self._locations = locations
        self.files: list[str] | None = None
        self.shard, self.policy, self.quality, self.log = shard, policy, quality, log
        self.pos = {"file": 0, "offset": 0, "skip": 0, "seen": 0, "file_records": 0}
        self.dedup = DedupWindow()
        self.counts: dict[str, int] = {}
        self._records: Iterator[tuple[int, int, str]] | None = None

    def _count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n

    def open(self) -> None:
        if self.files is None:
            files = self._locations()
            if not files:
                raise SourceUnavailable("commoncrawl: the WET file list is empty")
            k, n = self.shard
            self.by_file = len(files) >= n
            self.files = [f for i, f in enumerate(files) if i % n == k] if self.by_file else files
            if self.pos["file"] == 0 and self.pos["offset"] == 0:
                self._probe(self.files[0])

    def _probe(self, location: str) -> None:
        fh = open_binary(location, policy=self.policy, log=self.log)
        try:
            fh.read(1)
        finally:
            fh.close()

    def position(self) -> dict:
        return {**self.pos, "dedup": self.dedup.state(), "counts": dict(self.counts)}

    def load(self, pos: dict) -> None:
        self.pos = {k: pos[k] for k in ("file", "offset", "skip", "seen", "file_records")}
        self.dedup.load(pos.get("dedup", []))
        self.counts = dict(pos.get("counts", {}))
        self._records = None

    def _file_records(self, location: str, offset: int, skip: int) -> Iterator[tuple[int, int, str]]:
        """(member offset, record number inside the member, text) from `offset`, skipping `skip` records."""
        fh = open_binary(location, start=offset, policy=self.policy, log=self.log)
        try:
            for member in iter_members(fh, offset):
                if member.payload is None:
                    self._count(f"{member.problem}_records")
                    continue
                try:
                    records = parse_records(member.payload)
                except Exception:  # noqa: BLE001 - a malformed record is counted and skipped
                    self._count("corrupt_records")
                    continue
                for j, rec in enumerate(records):
                    if member.offset == offset and j < skip:
                        continue
                    yield member.offset, j, rec.text
                if not records:
                    yield member.offset, -1, ""  # a non-conversion member: still advances the offset
        finally:
            events = getattr(fh, "events", None)
            if events:
                for k, v in events.items():
                    if v:
                        self._count(f"http_{k}", v)
            fh.close()

    def __iter__(self) -> WetReader:
        return self

    def __next__(self) -> Document:
        self.open()
        assert self.files is not None
        k, n = self.shard
        restarts = 0
        files_without_doc = 0
        while True:
            if self._records is None:
                self._records = self._file_records(self.files[self.pos["file"]], self.pos["offset"], self.pos["skip"])
            try:
                item = next(self._records, None)
            except ContentChanged as e:
                # Never splice two versions: read the new one from byte 0, skipping the records used.
                self.log(f"commoncrawl: {e}; restarting the file")
                self._count("content_changed_restarts")
                restarts += 1
                if restarts > 3:
                    raise SourceUnavailable(f"commoncrawl: {self.files[self.pos['file']]} keeps changing") from e
                used = self.pos["file_records"]
                self._records = self._skip_records(self._file_records(self.files[self.pos["file"]], 0, 0), used)
                self.pos.update(offset=0, skip=0, file_records=0)
                continue
            except HttpError as e:
                self.log(f"commoncrawl: skipping {self.files[self.pos['file']]}: {e}")
                self._count("files_failed")
                item = None
            if item is None:  # end of this file
                self.pos.update(file=(self.pos["file"] + 1) % len(self.files), offset=0, skip=0, file_records=0)
                self._records = None
                files_without_doc += 1
                if files_without_doc > len(self.files):  # a whole pass kept nothing: never loop forever
                    raise SourceUnavailable("commoncrawl: a full pass over the WET files kept no document "
                                            f"(filter counts: {self.counts})")
                continue
            offset, j, text = item
            if j < 0:  # member without a conversion record (warcinfo): move past it
                continue
            self.pos.update(offset=offset, skip=j + 1, file_records=self.pos["file_records"] + 1)
            mine = self.by_file or self.pos["seen"] % n == k
            self.pos["seen"] += 1
            if not mine:
                continue
            problem = quality_problem(text, self.quality)
            if problem is None and self.dedup.seen_before(text):
                problem = "duplicate"
            if problem is not None:
                self._count(f"filtered_{problem}")
                continue
            return Document(text=text, domain=guess_domain(text), source=self.name)

    def _skip_records(self, records: Iterator[tuple[int, int, str]], n: int) -> Iterator[tuple[int, int, str]]:
        for item in records:
            if item[1] >= 0 and n > 0:
                n -= 1
                self.pos["file_records"] += 1
                continue
            yield item


def wet_locations(*, crawl: str | None, paths_file: str | None, base_url: str, policy: RetryPolicy,
                  log: Log) -> Callable[[], list[str]]:
    """A loader of the WET file list: a local/remote list file, else the crawl's `wet.paths.gz`."""

    def load() -> list[str]:
        if paths_file:
            lines = _read_list(paths_file, policy, log)
        else:
            lines = _read_list(f"{base_url.rstrip('/')}/crawl-data/{crawl}/wet.paths.gz", policy, log)
        out = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not line.startswith(("http://", "https://", "/", "file://")) and not os.path.exists(line):
                line = f"{base_url.rstrip('/')}/{line}"  # a listing's relative crawl-data/... path
            out.append(line)
        return out

    return load


def _read_list(location: str, policy: RetryPolicy, log: Log) -> list[str]:
    import gzip
    import io

    fh = open_binary(location, policy=policy, log=log)
    try:
        data = fh.read()
    except HttpError as e:
        raise SourceUnavailable(f"commoncrawl: cannot read the WET list {location}: {e}") from e
    finally:
        fh.close()
    if location.endswith(".gz"):
        data = gzip.GzipFile(fileobj=io.BytesIO(data)).read()
    return data.decode("utf-8", "replace").splitlines()


# ---------------------------------------------------------------------------------------------
# Row -> Document for the two Hub datasets


def fineweb_row_to_doc(min_score: float) -> Callable[[dict, object], Document | str]:
    def to_doc(row: dict, _where: object) -> Document | str:
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            return "empty"
        score = row.get("score", row.get("int_score"))
        if not isinstance(score, (int, float)) or score < min_score:
            return "score"
        return Document(text=text, domain=guess_domain(text), source="fineweb_edu")

    return to_doc


def cosmopedia_row_to_doc(subsets: tuple[str, ...]) -> Callable[[dict, object], Document | str]:
    def to_doc(row: dict, where: object) -> Document | str:
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            return "empty"
        subset = where if isinstance(where, str) else next(
            (p for p in reversed(Path(str(where)).parts[:-1]) if p in subsets or p in COSMOPEDIA_SUBSETS), None)
        hint = "math" if subset in _MATH_SUBSETS else None
        return Document(text=text, domain=guess_domain(text, hint), source="cosmopedia")

    return to_doc


# ---------------------------------------------------------------------------------------------
# The mixer


def _uniform(seed: int, shard: int, slot: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{shard}:{slot}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


class Mixer:
    """Weighted, deterministic interleaving of source readers with drop/fallback handling."""

    def __init__(self, readers: dict[str, object], weights: dict[str, float], *, seed: int, shard: tuple[int, int],
                 on_failure: str, log: Log, dropped: dict[str, str] | None = None) -> None:
        self.readers = readers
        self.weights = weights
        self.seed, self.shard, self.on_failure, self.log = seed, shard, on_failure, log
        self.slot = 0
        self.fallback_index = 0  # documents served from the seed corpus since every source was lost
        self.dropped: dict[str, str] = dict(dropped or {})  # name -> reason
        self.docs: dict[str, int] = {}

    # -- availability ----------------------------------------------------------------------------

    def probe(self) -> None:
        """Open every live source concurrently (bounded by its timeout) and drop those that fail."""
        errors: dict[str, BaseException] = {}

        def run(name: str) -> None:
            try:
                self.readers[name].open()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors[name] = e

        threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in self.live()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name, e in errors.items():
            self._lost(name, e)

    def live(self) -> list[str]:
        return [n for n in self.readers if n not in self.dropped and self.weights.get(n, 0) > 0]

    @property
    def fallback(self) -> bool:
        return not self.live()

    def _lost(self, name: str, error: BaseException) -> None:
        if self.on_failure == "fail":
            raise SourceUnavailable(f"data source {name} is unreachable ({error}); --on-source-failure fail "
                                    "stops the run; fix: point it at a local mirror or use --on-source-failure drop")
        self.dropped[name] = str(error)[:300]
        left = self.live()
        self.log(f"WARNING: data source {name} dropped: {error}; "
                 + (f"mixing {', '.join(left)} with renormalised weights" if left else
                    "no remote data source left: training continues on the embedded seed corpus"))

    # -- stream ------------------------------------------------------------------------------------

    def __iter__(self) -> Mixer:
        return self

    def __next__(self) -> Document:
        while True:
            live = self.live()
            if not live:
                k, n = self.shard
                doc = seed_document(self.seed, k + n * self.fallback_index)
                self.fallback_index += 1
                self.docs["seed_fallback"] = self.docs.get("seed_fallback", 0) + 1
                return doc
            total = sum(self.weights[s] for s in live)
            u = _uniform(self.seed, self.shard[0], self.slot) * total
            name = live[-1]
            for s in live:
                u -= self.weights[s]
                if u < 0:
                    name = s
                    break
            try:
                doc = next(self.readers[name])
            except SourceUnavailable as e:
                self._lost(name, e)
                continue  # same slot, renormalised weights
            self.slot += 1
            self.docs[name] = self.docs.get(name, 0) + 1
            return doc

    def state(self) -> dict:
        return {
            "slot": self.slot, "fallback_index": self.fallback_index, "dropped": dict(self.dropped),
            "docs": dict(self.docs),
            "sources": {n: r.position() for n, r in self.readers.items()},
        }

    def load(self, state: dict) -> None:
        self.slot, self.fallback_index = state["slot"], state["fallback_index"]
        self.dropped = dict(state["dropped"])
        self.docs = dict(state.get("docs", {}))
        for name, pos in state["sources"].items():
            if name in self.readers:
                self.readers[name].load(pos)

    def stats(self) -> dict:
        out: dict[str, object] = {}
        for name, r in self.readers.items():
            out[f"data_source_{name}_up"] = int(name not in self.dropped)
            out[f"data_source_{name}_docs"] = self.docs.get(name, 0)
            for key, v in getattr(r, "counts", {}).items():
                out[f"data_{name}_{key}"] = v
        out["data_fallback_seed"] = int(self.fallback)
        out["data_seed_fallback_docs"] = self.docs.get("seed_fallback", 0)
        return out


def inf_if_wait(on_failure: str, timeout: float) -> float:
    return math.inf if on_failure == "wait" else timeout
