"""Streaming hybrid data: resumable HTTP under injected faults, WET parsing, mirrors, mixing, resume.

Every network test talks to `FaultServer`, an HTTP server on 127.0.0.1 that this file starts; WET
files are written by warcio from generated text, mirrors in the FineWeb-Edu / Cosmopedia schemas.
"""

from __future__ import annotations

import gzip
import io
import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from warcio.warcwriter import WARCWriter

from training.data import wet
from training.data.http import ContentChanged, HttpStream, RetryPolicy, SourceUnavailable, parse_retry_after
from training.data.pipeline import DataConfig, DataPipeline
from training.data.prefetch import Prefetcher
from training.data.quality import QualityConfig, quality_problem
from training.data.seed_corpus import seed_document
from training.data.sources import Mixer, WetReader
from training.data.tokenizer import train_tokenizer

FAST = RetryPolicy(connect_timeout=2, read_timeout=0.5, give_up_after=3, base_delay=0.01, max_delay=0.05)


def page(i: int) -> str:
    """An English page that passes the quality filters, with a unique marker."""
    for attempt in range(100):  # text-domain seed documents; skip the few with repeated lines
        body = "\n\n".join(seed_document(11 + attempt, 4 * i + k).text for k in (0, 2))
        text = f"Page {i:05d}: the story of the day.\n\n{body}"
        if quality_problem(text, QualityConfig()) is None:
            return text
    raise AssertionError("no clean page")


def make_wet(texts: list[str], *, junk: list[str] = ()) -> bytes:
    buf = io.BytesIO()
    w = WARCWriter(buf, gzip=True)
    w.write_record(w.create_warcinfo_record("test.warc.wet.gz", {"software": "eco_train tests"}))
    for i, text in enumerate([*texts, *junk]):
        rec = w.create_warc_record(f"http://example.com/{i}", "conversion", payload=io.BytesIO(text.encode()),
                                   warc_content_type="text/plain")
        w.write_record(rec)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Fault-injecting server


class FaultServer:
    """Serves `files` (path -> bytes) with Range/ETag support and per-path fault scripts.

    faults[path] is a list consumed one request at a time; each entry is a dict:
      {"drop_at": n}        send n bytes of the body (of the requested range), then close
      {"stall_at": n, "s": t} send n bytes, then sleep t seconds (client read timeout fires)
      {"status": 503, "retry_after": "1"}   answer with that status
      {"ignore_range": True}                answer 200 with the whole file
      {"short": k}           declare the full Content-Length, send k bytes fewer, close
      {"swap": bytes}        from now on serve these bytes with a new ETag
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.faults: dict[str, list[dict]] = {}
        self.requests: list[tuple[str, str | None, float]] = []
        self.down = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # keep test output quiet
                pass

            def do_GET(self):  # noqa: N802
                server.requests.append((self.path, self.headers.get("Range"), time.monotonic()))
                if server.down:
                    self.connection.close()
                    return
                fault = server.faults.get(self.path, [])
                fault = fault.pop(0) if fault else {}
                if "swap" in fault:
                    server.files[self.path] = fault["swap"]
                    server.etags[self.path] = f'"v{len(server.requests)}"'
                if "status" in fault:
                    self.send_response(fault["status"])
                    if "retry_after" in fault:
                        self.send_header("Retry-After", fault["retry_after"])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                rng = self.headers.get("Range")
                start = int(rng.split("=")[1].split("-")[0]) if rng and not fault.get("ignore_range") else 0
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("ETag", server.etags.setdefault(self.path, '"v0"'))
                self.end_headers()
                n = len(body) - fault.get("short", 0)
                n = min(n, fault.get("drop_at", n), fault.get("stall_at", n))
                try:
                    self.wfile.write(body[:n])
                    self.wfile.flush()
                    if "stall_at" in fault:
                        time.sleep(fault["s"])
                except OSError:
                    pass
                if n < len(body):
                    self.close_connection = True

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # clients hang up on purpose here
                pass

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = FaultServer()
    yield s
    s.close()


def fetch(server: FaultServer, path: str, policy: RetryPolicy = FAST) -> tuple[bytes, HttpStream]:
    s = HttpStream(server.url(path), policy=policy)
    out = b""
    while chunk := s.read(777):
        out += chunk
    return out, s


BLOB = random.Random(0).randbytes(50_000)


def test_http_clean_download(server):
    server.files["/f"] = BLOB
    data, s = fetch(server, "/f")
    assert data == BLOB and s.events["retries"] == 0


@pytest.mark.parametrize("seed", range(5))
def test_http_drop_at_random_byte_resumes_with_range(server, seed):
    server.files["/f"] = BLOB
    cuts = sorted(random.Random(seed).sample(range(1, len(BLOB)), 3))
    server.faults["/f"] = [{"drop_at": cuts[0]}, {"drop_at": cuts[1] - cuts[0]}, {"drop_at": cuts[2] - cuts[1]}]
    data, s = fetch(server, "/f")
    assert data == BLOB
    assert s.events["range_resumes"] == 3
    assert [r[1] for r in server.requests] == [None] + [f"bytes={c}-" for c in cuts]


def test_http_stalled_server_read_timeout_fires(server):
    server.files["/f"] = BLOB
    server.faults["/f"] = [{"stall_at": 1000, "s": 2.0}]
    data, s = fetch(server, "/f")
    assert data == BLOB and s.events["timeouts"] >= 1 and s.events["range_resumes"] == 1


def test_http_stalled_for_good_gives_up(server):
    server.files["/f"] = BLOB
    server.faults["/f"] = [{"stall_at": 10, "s": 3.0}] * 20
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailable):
        fetch(server, "/f", RetryPolicy(read_timeout=0.3, give_up_after=1.0, base_delay=0.01, max_delay=0.05))
    assert time.monotonic() - t0 < 6


def test_http_429_503_honour_retry_after(server):
    server.files["/f"] = BLOB
    server.faults["/f"] = [{"status": 429, "retry_after": "1"}, {"status": 503, "retry_after": "1"}]
    data, s = fetch(server, "/f")
    assert data == BLOB and s.events["retries"] == 2
    times = [r[2] for r in server.requests]
    assert times[1] - times[0] >= 0.95 and times[2] - times[1] >= 0.95
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0 and parse_retry_after("7") == 7.0


def test_http_server_ignoring_range_restarts_cleanly(server):
    server.files["/f"] = BLOB
    server.faults["/f"] = [{"drop_at": 12_345}, {"ignore_range": True}]
    data, s = fetch(server, "/f")
    assert data == BLOB and s.events["range_ignored"] == 1


def test_http_short_content_length_resumes(server):
    server.files["/f"] = BLOB
    server.faults["/f"] = [{"short": 999}]
    data, s = fetch(server, "/f")
    assert data == BLOB and s.events["range_resumes"] == 1


def test_http_etag_change_mid_file_raises(server):
    server.files["/f"] = BLOB
    server.faults["/f"] = [{"drop_at": 5000}, {"swap": BLOB[::-1]}]
    with pytest.raises(ContentChanged):
        fetch(server, "/f")


# ---------------------------------------------------------------------------------------------
# WET parsing


PAGES = [page(i) for i in range(40)]
JUNK = ["short", "1234 5678 " * 80, ("buy now\n" * 60), "Der Hund und die Katze " * 30, PAGES[3]]


def test_wet_members_parse_with_warcio_and_plain_parser():
    data = make_wet(PAGES)
    members = list(wet.iter_members(io.BytesIO(data)))
    assert all(m.payload is not None for m in members) and len(members) == len(PAGES) + 1
    via_warcio = [r.text for m in members for r in wet.parse_records(m.payload)]
    plain = [r.text for m in members for r in wet.parse_records_plain(m.payload)]
    assert via_warcio == plain == PAGES


def test_quality_filters_and_dedup_count_drops(tmp_path):
    cfg = QualityConfig()
    assert [quality_problem(t, cfg) for t in JUNK[:4]] == ["length", "charset", "repetition", "language"]
    (tmp_path / "a.warc.wet.gz").write_bytes(make_wet(PAGES[:10], junk=JUNK))
    r = WetReader(locations=lambda: [str(tmp_path / "a.warc.wet.gz")], shard=(0, 1), policy=FAST,
                  quality=cfg, log=print)
    texts = [next(r).text for _ in range(10)]
    assert texts == PAGES[:10]
    with pytest.raises(SourceUnavailable, match="kept no document"):
        next(r)  # the second pass holds only duplicates: reported, not looped over forever
    assert all(r.counts[f"filtered_{f}"] >= 2 for f in ("length", "charset", "repetition", "language"))
    assert r.counts["filtered_duplicate"] == 12  # PAGES[3] in the junk, then the 10 pages and it again


def test_gzip_cut_at_100_random_offsets_emits_only_whole_records():
    data = make_wet(PAGES)
    boundaries = {m.offset for m in wet.iter_members(io.BytesIO(data))} | {len(data)}
    # 100 random cuts, plus cuts inside each member's first bytes (the magic), which random cuts rarely hit
    edge_cuts = [b + k for b in sorted(boundaries) for k in (1, 2) if b + k < len(data)]
    for cut in [*random.Random(1).sample(range(1, len(data)), 100), *edge_cuts]:
        members = list(wet.iter_members(io.BytesIO(data[:cut])))
        texts = [r.text for m in members if m.payload for r in wet.parse_records(m.payload)]
        assert texts == PAGES[: len(texts)]  # whole records, in order, nothing half-emitted
        truncated = sum(m.problem == "truncated" for m in members)
        assert truncated == (0 if cut in boundaries else 1)


def test_corrupt_member_is_skipped_and_counted():
    data = bytearray(make_wet(PAGES[:5]))
    offsets = [m.offset for m in wet.iter_members(io.BytesIO(bytes(data)))]
    data[offsets[2] + 30] ^= 0xFF  # damage record 1's deflate stream
    members = list(wet.iter_members(io.BytesIO(bytes(data))))
    texts = [r.text for m in members if m.payload for r in wet.parse_records(m.payload)]
    assert texts == [PAGES[0], *PAGES[2:5]]
    assert sum(m.problem == "corrupt" for m in members) == 1


def test_wet_over_http_with_drops_equals_clean_read(server, tmp_path):
    data = make_wet(PAGES)
    server.files["/a.warc.wet.gz"] = data
    server.faults["/a.warc.wet.gz"] = [{"drop_at": 7000}, {"drop_at": 9000}, {"short": 500}]
    r = WetReader(locations=lambda: [server.url("/a.warc.wet.gz")], shard=(0, 1), policy=FAST,
                  quality=QualityConfig(), log=print)
    r.open()
    assert [next(r).text for _ in range(len(PAGES))] == PAGES
    assert r.counts.get("http_range_resumes", 0) >= 0  # counted when the file closes


def test_wet_etag_change_restarts_file_without_splicing(server):
    v1, v2 = make_wet(PAGES[:20]), make_wet([p.replace("Page", "PAGE") for p in PAGES[:20]])
    server.files["/a.warc.wet.gz"] = v1
    server.faults["/a.warc.wet.gz"] = [{}, {"drop_at": len(v1) // 2}, {"swap": v2}]
    logs = []
    r = WetReader(locations=lambda: [server.url("/a.warc.wet.gz")], shard=(0, 1), policy=FAST,
                  quality=QualityConfig(), log=logs.append)
    r.open()
    texts = [next(r).text for _ in range(20)]
    n_old = sum(t.startswith("Page") for t in texts)
    assert 0 < n_old < 20 and r.counts["content_changed_restarts"] == 1
    assert texts[:n_old] == PAGES[:n_old]
    assert texts[n_old:] == [p.replace("Page", "PAGE") for p in PAGES[n_old:20]]


# ---------------------------------------------------------------------------------------------
# Mirrors, mixing, failure policies, resume


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer([page(i) for i in range(60)], 600)


@pytest.fixture
def mirrors(tmp_path, server):
    fw = tmp_path / "fineweb" / "data" / "CC-MAIN-2024-10"
    fw.mkdir(parents=True)
    for f in range(2):
        rows = [{"text": f"FineWeb {f}-{i}. " + page(100 + 50 * f + i), "id": f"<urn:{f}:{i}>", "dump": "CC",
                 "url": "http://x", "score": 2.0 + (i % 3) * 0.8, "int_score": 2 + i % 3, "language": "en"}
                for i in range(50)]
        pq.write_table(pa.Table.from_pylist(rows), fw / f"00{f}_00000.parquet", row_group_size=16)
    cp = tmp_path / "cosmopedia" / "data" / "auto_math_text"
    cp.mkdir(parents=True)
    with gzip.open(cp / "train-00000.jsonl.gz", "wt") as fh:
        for i in range(80):
            fh.write(json.dumps({"prompt": "p", "text": f"Cosmo {i}. " + page(300 + i), "token_length": 9,
                                 "audience": "students", "format": "textbook", "seed_data": "x"}) + "\n")
    for f in range(2):
        server.files[f"/w{f}.warc.wet.gz"] = make_wet(
            [*JUNK[:2], *(f"Web {f}-{i}. " + page(400 + 40 * f + i) for i in range(40))])
    listing = tmp_path / "wet.paths"
    listing.write_text("".join(server.url(f"/w{f}.warc.wet.gz") + "\n" for f in range(2)))
    return {"fineweb_path": str(tmp_path / "fineweb"), "cosmopedia_path": str(tmp_path / "cosmopedia"),
            "cc_wet_paths": str(listing)}


def hybrid_cfg(mirrors, **kw) -> DataConfig:
    return DataConfig(**{"backend": "hybrid", "seed": 5, "heldout_every": 50, "source_timeout": 2.0, **mirrors, **kw})


def make(tok, cfg, **kw) -> DataPipeline:
    return DataPipeline(cfg, tok, seq_len=64, batch_size=4, **kw)


def test_hybrid_mixes_sources_by_weight_with_domains_and_stats(tok, mirrors):
    p = make(tok, hybrid_cfg(mirrors))
    batches = [p.next_batch() for _ in range(30)]
    assert all(b.source == "hybrid" and b.inputs_BT.shape == (4, 64) for b in batches)
    st = p.stats()
    docs = {n: st[f"data_source_{n}_docs"] for n in ("fineweb_edu", "cosmopedia", "commoncrawl")}
    total = sum(docs.values())
    assert 0.35 < docs["fineweb_edu"] / total < 0.65 and docs["commoncrawl"] > 0
    assert st["data_fineweb_edu_filtered_score"] > 0  # score 2.0 rows are dropped by min score 3
    assert st["data_commoncrawl_filtered_length"] > 0 and st["data_commoncrawl_filtered_charset"] > 0
    assert all(st[f"data_source_{n}_up"] == 1 for n in docs) and st["data_fallback_seed"] == 0
    assert sum(st[f"data_tokens_{n}"] for n in docs) >= 30 * 4 * 64
    json.dumps(st)
    text = tok.decode(torch.cat([b.inputs_BT.flatten() for b in batches]).tolist())
    assert "FineWeb" in text and "Cosmo" in text and "Web " in text
    # Score filter: FineWeb rows kept have score >= 3 (i % 3 == 2 -> score 3.6)
    kept = {int(m.split("-")[1]) for m in __import__("re").findall(r"FineWeb \d-\d+", text)}
    assert kept and all(i % 3 == 2 for i in kept)


def test_source_down_for_good_is_dropped_and_run_continues(tok, mirrors, server, capsys):
    server.files.clear()  # every WET URL 404s... make it unreachable instead:
    server.down = True
    p = make(tok, hybrid_cfg(mirrors, source_timeout=1.0))
    [p.next_batch() for _ in range(5)]
    st = p.stats()
    assert st["data_source_commoncrawl_up"] == 0 and st["data_source_fineweb_edu_up"] == 1
    assert st["data_fallback_seed"] == 0
    assert "data source commoncrawl dropped" in capsys.readouterr().out


def test_all_remote_sources_down_falls_back_to_seed(tok, tmp_path, server, capsys):
    server.down = True
    cfg = DataConfig(backend="hybrid", seed=5, source_timeout=1.0, fineweb_config="none",
                     cc_wet_paths=server.url("/wet.paths"))
    import training.data.sources as S

    def no_hub(*a, **k):
        raise ConnectionError("offline")

    S_hub = S.HubReader._stream
    S.HubReader._stream = lambda self, i: no_hub()
    try:
        p = make(tok, cfg)
        b = p.next_batch()
    finally:
        S.HubReader._stream = S_hub
    st = p.stats()
    assert st["data_fallback_seed"] == 1 and b.inputs_BT.shape == (4, 64)
    assert all(st[f"data_source_{n}_up"] == 0 for n in ("fineweb_edu", "cosmopedia", "commoncrawl"))
    out = capsys.readouterr().out
    assert "no remote data source is reachable" in out


def test_on_source_failure_fail_stops(tok, mirrors, server):
    server.down = True
    with pytest.raises(SourceUnavailable, match="--on-source-failure fail"):
        make(tok, hybrid_cfg(mirrors, source_timeout=1.0, on_source_failure="fail"))


def take(pf, n):
    return [pf.next_batch() for _ in range(n)]


def same(a, b):
    return len(a) == len(b) and all(torch.equal(x.inputs_BT, y.inputs_BT) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_twice_equals_uninterrupted(tok, mirrors, workers):
    cfg = hybrid_cfg(mirrors, workers=workers, bootstrap_seed_batches=2)
    ref_p = Prefetcher(make(tok, cfg), pin_memory=False)
    ref = take(ref_p, 14)
    ref_p.close()
    got = []
    state = None
    for n in (5, 4, 5):  # run, stop, resume, stop, resume
        p = make(tok, cfg)
        if state is not None:
            p.load_state_dict(json.loads(json.dumps(state)))
        pf = Prefetcher(p, pin_memory=False)
        got += take(pf, n)
        state = pf.state_dict()
        pf.close()
    assert same(got, ref)
    assert [b.source for b in ref[:3]] == ["seed", "seed", "hybrid"]


def test_resume_with_other_worker_count_is_refused(tok, mirrors):
    p = make(tok, hybrid_cfg(mirrors, workers=2))
    pf = Prefetcher(p, pin_memory=False)
    take(pf, 2)
    state = pf.state_dict()
    pf.close()
    with pytest.raises(ValueError, match="--data-workers 2"):
        make(tok, hybrid_cfg(mirrors, workers=1)).load_state_dict(state)


def test_mixer_is_deterministic_per_seed():
    class Fake:
        def __init__(self, name):
            self.name, self.n = name, 0

        def __next__(self):
            self.n += 1
            return self.name

        def position(self):
            return {}

    def picks(seed):
        m = Mixer({"a": Fake("a"), "b": Fake("b")}, {"a": 0.7, "b": 0.3}, seed=seed, shard=(0, 1),
                  on_failure="drop", log=print)
        return [next(m) for _ in range(200)]

    assert picks(1) == picks(1) != picks(2)
    assert 110 < picks(1).count("a") < 170
