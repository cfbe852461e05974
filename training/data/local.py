"""Local document source: txt / py / md files, JSON Lines (optionally gzipped) and Parquet.

Files are found by walking the given paths (directories recursively) and sorting, so the document
order, and therefore every batch, is the same on every run and machine. The stream cycles through
the files forever (epochs) so training never runs dry; `start` skips documents for resume.

Formats:
- `.txt`, `.md`, `.py`: one document per file; files over `TXT_CHUNK_CHARS` characters are split
  into chunks at paragraph (or line) boundaries so one huge file does not become one huge document.
- `.jsonl`, `.jsonl.gz`: one JSON object per line with the text in `text_field`; malformed lines
  (bad JSON, not an object, missing/non-string text) are skipped, counted and reported with one
  warning per file, never fatal.
- `.parquet`: read one row-group batch at a time (bounded memory) from column `text_field`.

Domain: a row's `domain` field when it is one of `DOMAINS`, else `.py` files are "code", else "text".
"""

from __future__ import annotations

import gzip
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from training.data.documents import DOMAINS, Document

logger = logging.getLogger(__name__)

TXT_CHUNK_CHARS = 20_000
_TEXT_SUFFIXES = (".txt", ".md", ".py")
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
_PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES: tuple[str, ...] = _TEXT_SUFFIXES + _JSONL_SUFFIXES + _PARQUET_SUFFIXES

# Rows read per Parquet batch: large enough to amortise Arrow overhead, small enough for huge files.
_PARQUET_BATCH_ROWS = 1024


def _is_supported(path: Path) -> bool:
    return path.name.endswith(SUPPORTED_SUFFIXES)


def list_local_files(paths: list[str]) -> list[Path]:
    """Expand files and directories (recursively) into the sorted list of supported files.

    Order: the given paths in order; inside a directory, files sorted by relative path. Hidden files
    and directories (names starting with ".") are skipped.
    """
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = []
            for root, dirs, names in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [Path(root) / n for n in names if not n.startswith(".") and _is_supported(Path(n))]
            files += sorted(found, key=lambda f: f.relative_to(path).as_posix())
        elif path.is_file() and _is_supported(path):
            files.append(path)
    return files


def validate_local_paths(paths: list[str], *, text_field: str = "text") -> list[str]:
    """Return human-readable problems with `paths` (empty list when usable).

    Checks: at least one path; each path exists; files have a supported extension; directories
    contain at least one supported file; Parquet files have the `text_field` column.
    """
    problems: list[str] = []
    if not paths:
        return ["no local data paths given: pass --data-path FILE_OR_DIR (txt, jsonl, jsonl.gz, parquet)"]
    for p in paths:
        path = Path(p)
        if not path.exists():
            problems.append(f"data path does not exist: {p}")
        elif path.is_dir():
            if not list_local_files([p]):
                problems.append(
                    f"directory has no supported data files ({', '.join(SUPPORTED_SUFFIXES)}): {p}"
                )
        elif not _is_supported(path):
            problems.append(
                f"unsupported data file extension: {p} (supported: {', '.join(SUPPORTED_SUFFIXES)})"
            )
    for f in list_local_files([p for p in paths if Path(p).exists()]):
        if f.name.endswith(_PARQUET_SUFFIXES):
            problem = _check_parquet(f, text_field)
            if problem:
                problems.append(problem)
    return problems


def _check_parquet(path: Path, text_field: str) -> str | None:
    import pyarrow.parquet as pq

    try:
        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as e:  # any reader failure is a reported problem, not a crash
        return f"cannot read parquet file {path}: {e}"
    if text_field not in names:
        return f"parquet file {path} has no column {text_field!r} (columns: {names}); set --text-field"
    return None


def local_documents(
    paths: list[str], *, text_field: str = "text", start: int = 0, cycle: bool = True
) -> Iterator[Document]:
    """Yield documents from local files, from document index `start`, cycling forever if `cycle`.

    Document indices count across epochs (index `n + k` is document `k` of the second epoch when an
    epoch has `n` documents). Skipping to `start` reads the files but builds no documents, and once
    one epoch has been counted it jumps straight to `start mod n`. Raises ValueError when the paths
    hold no supported file or an epoch yields no document (which would otherwise loop forever).
    """
    files = list_local_files(paths)
    if not files:
        raise ValueError(f"no supported data files under {paths}; supported: {', '.join(SUPPORTED_SUFFIXES)}")
    to_skip = start
    while True:
        n_epoch = 0
        for f in files:
            for doc in _read_file(f, text_field):
                n_epoch += 1
                if to_skip > 0:
                    to_skip -= 1
                    continue
                yield doc
        if n_epoch == 0:
            raise ValueError(f"local data files under {paths} contain no documents")
        if not cycle:
            return
        # After one counted epoch, skipping whole epochs needs no reading.
        to_skip %= n_epoch


def _read_file(path: Path, text_field: str) -> Iterator[Document]:
    name = path.name
    if name.endswith(_TEXT_SUFFIXES):
        yield from _read_text(path)
    elif name.endswith(_JSONL_SUFFIXES):
        yield from _read_jsonl(path, text_field)
    elif name.endswith(_PARQUET_SUFFIXES):
        yield from _read_parquet(path, text_field)


def _default_domain(path: Path) -> str:
    return "code" if path.name.endswith(".py") else "text"


def _domain(value: object, path: Path) -> str:
    return value if isinstance(value, str) and value in DOMAINS else _default_domain(path)


def split_text(text: str, max_chars: int = TXT_CHUNK_CHARS) -> list[str]:
    """Split `text` into chunks of at most `max_chars`, preferring paragraph, then line boundaries."""
    chunks: list[str] = []
    while len(text) > max_chars:
        cut = text.rfind("\n\n", max_chars // 2, max_chars)
        if cut < 0:
            cut = text.rfind("\n", max_chars // 2, max_chars)
        cut = max_chars if cut < 0 else cut + 1
        chunks.append(text[:cut])
        text = text[cut:]
    if text.strip():
        chunks.append(text)
    return chunks


def _read_text(path: Path) -> Iterator[Document]:
    # errors="replace": one bad byte in a big text dump should not stop training.
    text = path.read_text(encoding="utf-8", errors="replace")
    domain = _default_domain(path)
    for chunk in split_text(text):
        yield Document(text=chunk, domain=domain, source="local")


def _read_jsonl(path: Path, text_field: str) -> Iterator[Document]:
    opener = gzip.open if path.name.endswith(".gz") else open
    bad = 0
    first_bad = 0
    with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            text = row.get(text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                bad += 1
                first_bad = first_bad or line_no
                continue
            if "\\u" in line:
                text = _drop_lone_surrogates(text)
            if text:
                yield Document(text=text, domain=_domain(row.get("domain"), path), source="local")
    if bad:
        logger.warning(
            "skipped %d malformed line(s) in %s (first at line %d): each line must be a JSON object "
            "with a string field %r",
            bad,
            path,
            first_bad,
            text_field,
        )


def _drop_lone_surrogates(text: str) -> str:
    """Replace lone UTF-16 surrogates (from JSON escapes like "\\ud800") that the tokenizer rejects."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def _read_parquet(path: Path, text_field: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise ValueError(f"parquet file {path} has no column {text_field!r} (columns: {names})")
    columns = [text_field] + (["domain"] if "domain" in names and text_field != "domain" else [])
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=columns):
        texts = batch.column(text_field).to_pylist()
        domains = batch.column("domain").to_pylist() if "domain" in columns else [None] * len(texts)
        for text, dom in zip(texts, domains, strict=True):
            if isinstance(text, str) and text:
                yield Document(text=text, domain=_domain(dom, path), source="local")
