"""A resumable, fault-tolerant HTTP byte stream (standard library only).

`HttpStream(url)` is a read-only file object over one remote file, read front to back:
- connect and read timeouts are separate (`RetryPolicy.connect_timeout`, `.read_timeout`);
- a failed attempt (connection error, timeout, 429/5xx) is retried with exponential backoff and full
  jitter, waiting at least what the server's `Retry-After` asks;
- a body that drops mid-file (reset, timeout, fewer bytes than Content-Length) is continued with a
  `Range: bytes=<pos>-` request from the last byte received, so the bytes handed out are exactly the
  file's bytes, never duplicated or spliced;
- a server that ignores Range (200 instead of 206) is read again from byte 0 and the first `pos`
  bytes are discarded (only if its ETag/length still match);
- an ETag (or total length) that changes mid-file raises `ContentChanged`: the caller restarts that
  file cleanly instead of splicing two versions;
- a file that cannot be fetched for `RetryPolicy.give_up_after` seconds raises `SourceUnavailable`
  (a waiting loop says so every `LOG_EVERY_S` seconds, so nothing hangs silently); 4xx other than
  408/429 raises `HttpError` at once (retrying cannot fix a missing file).

Costs: one TCP connection per file, reused for the whole body; reconnects only on faults.
"""

from __future__ import annotations

import contextlib
import email.utils
import http.client
import io
import random
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

LOG_EVERY_S = 30.0
_MAX_REDIRECTS = 5
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_USER_AGENT = "eco_train-data/1 (+streaming; resumable)"


class HttpError(Exception):
    """A definitive HTTP failure (404, 403, ...): retrying will not help."""


class SourceUnavailable(Exception):
    """A remote file or source could not be reached for longer than the allowed time."""


class ContentChanged(Exception):
    """The remote file changed (ETag or length) while it was being read."""


@dataclass
class RetryPolicy:
    """Timeouts and backoff for one remote source."""

    connect_timeout: float = 10.0
    """seconds to establish a TCP/TLS connection."""
    read_timeout: float = 30.0
    """seconds without a byte from an open connection before it counts as dropped."""
    give_up_after: float = 60.0
    """seconds of failed attempts without progress before `SourceUnavailable` (--source-timeout); inf waits forever."""
    base_delay: float = 0.5
    """first backoff delay; doubles each failed attempt (full jitter), capped at `max_delay`."""
    max_delay: float = 30.0

    def backoff(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Delay before retry number `attempt` (0-based): jittered exponential, at least Retry-After."""
        delay = rng.uniform(0.0, min(self.max_delay, self.base_delay * 2**attempt))
        if retry_after is not None:
            delay = max(delay, min(retry_after, 300.0))  # the server knows best, within reason
        return delay


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class HttpStream(io.RawIOBase):
    """Sequential reader of one URL from byte `start`, reconnecting with Range requests on faults."""

    def __init__(
        self,
        url: str,
        *,
        start: int = 0,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        log: Callable[[str], None] | None = None,
        expect_etag: str | None = None,
    ) -> None:
        super().__init__()
        self.url = url
        self.pos = start
        self.policy = policy or RetryPolicy()
        self.rng = rng or random.Random(0)
        self.log = log or (lambda msg: None)
        self.etag: str | None = expect_etag
        self.size: int | None = None
        self.events: dict[str, int] = {"retries": 0, "range_resumes": 0, "range_ignored": 0, "timeouts": 0}
        self._conn: http.client.HTTPConnection | None = None
        self._resp: http.client.HTTPResponse | None = None

    # -- io.RawIOBase ------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # noqa: ANN001 - buffer protocol
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        """Up to `n` bytes (all remaining for n < 0); b"" only at the true end of the file."""
        if n is None or n < 0:
            chunks = []
            while chunk := self.read(1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        if n == 0 or (self.size is not None and self.pos >= self.size):
            return b""
        failures = 0
        t_stall = time.monotonic()
        t_log = t_stall
        while True:
            try:
                if self._resp is None:
                    self._open()
                    if self.size is not None and self.pos >= self.size:
                        return b""
                assert self._resp is not None
                data = self._resp.read(n)
                if data:
                    self.pos += len(data)
                    return data
                if self.size is None or self.pos >= self.size:
                    return b""  # clean end (length unknown: chunked or close-delimited)
                raise ConnectionError(f"connection closed at byte {self.pos} of {self.size}")
            except (HttpError, ContentChanged):
                self._close_conn()
                raise
            except (OSError, http.client.HTTPException, _RetryableStatus) as e:
                self._close_conn()
                if isinstance(e, (TimeoutError, socket.timeout)):
                    self.events["timeouts"] += 1
                stalled = time.monotonic() - t_stall
                if stalled >= self.policy.give_up_after:
                    raise SourceUnavailable(
                        f"{self.url}: no progress for {stalled:.0f}s ({failures + 1} attempts; last: {e!r})"
                    ) from e
                retry_after = e.retry_after if isinstance(e, _RetryableStatus) else None
                delay = self.policy.backoff(failures, self.rng, retry_after)
                delay = min(delay, max(0.0, self.policy.give_up_after - stalled) + 0.01)
                failures += 1
                self.events["retries"] += 1
                if time.monotonic() - t_log >= LOG_EVERY_S:
                    t_log = time.monotonic()
                    self.log(f"still retrying {self.url} after {stalled:.0f}s (last error: {e!r})")
                time.sleep(delay)

    def close(self) -> None:
        self._close_conn()
        super().close()

    # -- connection handling -------------------------------------------------------------------

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.close()
        self._conn = None
        self._resp = None

    def _connect(self, url: str) -> http.client.HTTPConnection:
        parts = urlsplit(url)
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=self.policy.connect_timeout, context=ssl.create_default_context()
            )
        elif parts.scheme == "http":
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.policy.connect_timeout)
        else:
            raise HttpError(f"unsupported URL scheme in {url!r} (http or https)")
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(self.policy.read_timeout)  # connect timeout done; now the per-read one
        return conn

    def _open(self) -> None:
        """Send one GET (following redirects) positioned at self.pos; raise on failure."""
        url = self.url
        for _ in range(_MAX_REDIRECTS + 1):
            conn = self._connect(url)
            parts = urlsplit(url)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
            if self.pos > 0:
                headers["Range"] = f"bytes={self.pos}-"
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            if resp.status in (301, 302, 303, 307, 308) and resp.getheader("Location"):
                url = urljoin(url, resp.getheader("Location"))
                conn.close()
                continue
            self._conn = conn
            self._accept(resp)
            return
        raise HttpError(f"{self.url}: more than {_MAX_REDIRECTS} redirects")

    def _accept(self, resp: http.client.HTTPResponse) -> None:
        status = resp.status
        if status in _RETRY_STATUS:
            retry_after = parse_retry_after(resp.getheader("Retry-After"))
            resp.close()
            raise _RetryableStatus(status, retry_after)
        if status == 416 and self.size is not None and self.pos >= self.size:
            resp.close()
            self._resp = None
            return
        if status not in (200, 206):
            resp.close()
            raise HttpError(f"{self.url}: HTTP {status} {resp.reason}")
        etag = resp.getheader("ETag")
        total = _total_size(resp)
        if self.etag is not None and etag is not None and etag != self.etag:
            resp.close()
            raise ContentChanged(f"{self.url}: ETag changed from {self.etag} to {etag} at byte {self.pos}")
        if self.size is not None and total is not None and total != self.size:
            resp.close()
            raise ContentChanged(f"{self.url}: size changed from {self.size} to {total} at byte {self.pos}")
        self.etag = etag or self.etag
        self.size = total if total is not None else self.size
        if status == 206:
            first = _range_start(resp)
            if first != self.pos:
                resp.close()
                raise ContentChanged(f"{self.url}: asked for byte {self.pos}, server sent from {first}")
            if self.pos > 0:
                self.events["range_resumes"] += 1
            self._resp = resp
            return
        # 200: the whole file. If we already had bytes, the server ignored Range: skip what we have.
        self._resp = resp
        if self.pos > 0:
            self.events["range_ignored"] += 1
            to_skip = self.pos
            while to_skip > 0:
                chunk = resp.read(min(to_skip, 1 << 20))
                if not chunk:
                    raise ConnectionError(f"connection closed while skipping to byte {self.pos}")
                to_skip -= len(chunk)


class _RetryableStatus(Exception):
    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}" + (f" (Retry-After {retry_after:.1f}s)" if retry_after is not None else ""))
        self.status = status
        self.retry_after = retry_after


def _total_size(resp: http.client.HTTPResponse) -> int | None:
    cr = resp.getheader("Content-Range")
    if resp.status == 206 and cr and "/" in cr:
        total = cr.rsplit("/", 1)[1].strip()
        return int(total) if total.isdigit() else None
    cl = resp.getheader("Content-Length")
    return int(cl) if resp.status == 200 and cl and cl.isdigit() else None


def _range_start(resp: http.client.HTTPResponse) -> int | None:
    cr = resp.getheader("Content-Range") or ""
    try:
        return int(cr.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def open_binary(location: str, *, start: int = 0, policy: RetryPolicy | None = None,
                log: Callable[[str], None] | None = None) -> io.RawIOBase | io.BufferedReader:
    """A URL (http/https) as an `HttpStream`, or a local path opened and positioned at `start`."""
    if location.startswith(("http://", "https://")):
        return HttpStream(location, start=start, policy=policy, log=log)
    fh = open(location[7:] if location.startswith("file://") else location, "rb")  # noqa: SIM115 - caller closes
    fh.seek(start)
    return fh
