"""CommonCrawl WET files: gzip members -> WARC `conversion` records -> plain-text documents.

A `.warc.wet.gz` file is a concatenation of gzip members, one per WARC record (CommonCrawl and
warcio both write it so). Reading member by member gives three things a plain `gzip.open` cannot:
- a byte offset for every record (the start of its member), so a stream resumes mid-file with one
  HTTP Range request instead of re-reading the file;
- a record is emitted only when its member decompressed completely (zlib reports end-of-stream):
  a member cut by a truncated download or damaged by corruption is dropped and counted, never
  half-emitted; after corruption the reader resynchronises at the next gzip header;
- bounded memory: one record at a time.

Records are parsed with warcio (`ArchiveIterator`) when it is installed, else with the small WARC
header parser below (same result on well-formed records; tests compare both), so WET works on
machines that carry no warcio wheel.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

try:  # optional at run time (the GPU machines do not carry it); required by the lock file
    from warcio.archiveiterator import ArchiveIterator as _WarcioIterator
except ImportError:  # pragma: no cover - exercised on machines without warcio
    _WarcioIterator = None

_GZIP_MAGIC = b"\x1f\x8b\x08"
_READ_BLOCK = 1 << 18
# A single record larger than this is treated as corrupt (a WET page is tens of KB).
MAX_MEMBER_BYTES = 64 << 20


@dataclass
class WetRecord:
    uri: str
    text: str


@dataclass
class Member:
    """One gzip member: where it starts in the file, and its bytes (None when cut or corrupt)."""

    offset: int
    payload: bytes | None
    problem: str | None = None
    """'truncated' (file ended inside it) or 'corrupt' (zlib error / oversized)."""


def iter_members(fh: BinaryIO, start: int = 0) -> Iterator[Member]:
    """Yield the gzip members of `fh` (already positioned at byte `start`), in order.

    `Member.offset` is the absolute byte offset of the member's first byte. After a corrupt member
    the reader skips to the next gzip header (resynchronises); a member that the end of the file
    cuts is reported as truncated.
    """
    buf = b""
    base = start  # absolute offset of buf[0]
    eof = False

    def fill() -> bool:
        nonlocal buf, eof
        if eof:
            return False
        chunk = fh.read(_READ_BLOCK)
        if not chunk:
            eof = True
            return False
        buf += chunk
        return True

    in_garbage = False  # inside a run of bytes that is no gzip member (counted once per run)
    while True:
        if len(buf) < 3 and fill():
            continue
        if not buf:
            return
        if eof and len(buf) < len(_GZIP_MAGIC) and _GZIP_MAGIC.startswith(buf):
            yield Member(base, None, "truncated")  # the file ends inside the next member's magic bytes
            return
        if not buf.startswith(_GZIP_MAGIC):
            nxt = buf.find(_GZIP_MAGIC, 1)
            if not in_garbage:
                yield Member(base, None, "corrupt")
                in_garbage = True
            if nxt < 0:
                drop = len(buf) - 2 if len(buf) > 2 else len(buf)
                buf, base = buf[drop:], base + drop
                if not fill():
                    return
            else:
                buf, base = buf[nxt:], base + nxt
            continue
        d = zlib.decompressobj(wbits=31)
        out: list[bytes] = []
        size = 0
        used = 0  # bytes of buf consumed by this member so far
        problem = None
        while True:
            try:
                piece = d.decompress(buf[used:])
            except zlib.error:
                problem = "corrupt"
                break
            size += len(piece)
            out.append(piece)
            if size > MAX_MEMBER_BYTES:
                problem = "corrupt"
                break
            if d.eof:
                used = len(buf) - len(d.unused_data)
                break
            used = len(buf)
            if not fill():
                problem = "truncated"
                break
        if problem is None:
            in_garbage = False
            yield Member(base, b"".join(out))
            buf, base = buf[used:], base + used
            continue
        if not in_garbage:
            yield Member(base, None, problem)
        if problem == "truncated":
            return
        # Corrupt: resume the scan just after this member's header.
        in_garbage = True
        buf, base = buf[1:], base + 1


def parse_records(payload: bytes) -> list[WetRecord]:
    """The `conversion` records in one decompressed member (usually exactly one record)."""
    if _WarcioIterator is not None:
        return _parse_warcio(payload)
    return parse_records_plain(payload)


def _parse_warcio(payload: bytes) -> list[WetRecord]:
    records = []
    for rec in _WarcioIterator(io.BytesIO(payload)):
        if rec.rec_type != "conversion":
            continue
        body = rec.content_stream().read()
        declared = rec.rec_headers.get_header("Content-Length")
        if declared is not None and declared.isdigit() and len(body) != int(declared):
            continue  # a short body is a cut record: never emit half of it
        uri = rec.rec_headers.get_header("WARC-Target-URI") or ""
        records.append(WetRecord(uri, body.decode("utf-8", "replace")))
    return records


def parse_records_plain(payload: bytes) -> list[WetRecord]:
    """Minimal WARC parser: header block, blank line, Content-Length bytes of body, repeat."""
    records = []
    pos = 0
    n = len(payload)
    while pos < n:
        while payload.startswith(b"\r\n", pos):
            pos += 2
        if pos >= n:
            break
        end = payload.find(b"\r\n\r\n", pos)
        if end < 0 or not payload.startswith(b"WARC/", pos):
            break
        headers: dict[str, str] = {}
        for line in payload[pos:end].split(b"\r\n")[1:]:
            key, _, value = line.decode("utf-8", "replace").partition(":")
            headers[key.strip().lower()] = value.strip()
        length = headers.get("content-length", "")
        if not length.isdigit():
            break
        body_start = end + 4
        body = payload[body_start : body_start + int(length)]
        if len(body) != int(length):
            break
        pos = body_start + int(length)
        if headers.get("warc-type") == "conversion":
            records.append(WetRecord(headers.get("warc-target-uri", ""), body.decode("utf-8", "replace")))
    return records
