"""Data pipeline throughput alone: local mirrors -> filtered, mixed, tokenized, packed batches.

Writes FineWeb-Edu-schema parquet, Cosmopedia-schema jsonl and CommonCrawl-style WET files (gzip member
per record, written here without warcio) from the embedded seed corpus into a temporary folder, trains a
byte-level BPE tokenizer, then times `Prefetcher` over the hybrid backend for each worker count.
No network, no GPU. Prints one line per worker count and a JSON summary.

    .venv/bin/python scripts/bench_data.py                       # 1, 2, 4 workers
    python scripts/bench_data.py --workers 0 1 2 4 --seconds 20 --seq-len 1024 --batch-size 32
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.data.pipeline import DataConfig, DataPipeline  # noqa: E402
from training.data.prefetch import Prefetcher  # noqa: E402
from training.data.seed_corpus import seed_document  # noqa: E402
from training.data.tokenizer import train_tokenizer  # noqa: E402


def page(i: int) -> str:
    return "\n\n".join(seed_document(3, 4 * i + k).text for k in (0, 2, 1, 3))


def wet_record(i: int, text: str) -> bytes:
    body = text.encode()
    head = (f"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: http://example.com/{i}\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return gzip.compress(head + body + b"\r\n\r\n", compresslevel=6)


def write_mirrors(root: Path, n_docs: int) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fw = root / "fineweb" / "data"
    fw.mkdir(parents=True)
    for f in range(4):
        rows = [{"text": page(f * n_docs + i), "score": 3.5, "int_score": 4} for i in range(n_docs)]
        pq.write_table(pa.Table.from_pylist(rows), fw / f"{f:03d}_00000.parquet", row_group_size=1000)
    cp = root / "cosmopedia" / "data" / "stories"
    cp.mkdir(parents=True)
    for f in range(4):
        with open(cp / f"train-{f:05d}.jsonl", "w") as fh:
            for i in range(n_docs):
                fh.write(json.dumps({"prompt": "p", "text": page(10**6 + f * n_docs + i)}) + "\n")
    wet_dir = root / "wet"
    wet_dir.mkdir()
    listing = []
    for f in range(4):
        path = wet_dir / f"CC-{f:05d}.warc.wet.gz"
        with open(path, "wb") as fh:
            for i in range(n_docs):
                fh.write(wet_record(i, f"Page {f}-{i}: the day.\n\n" + page(2 * 10**6 + f * n_docs + i)))
        listing.append(str(path))
    (root / "wet.paths").write_text("\n".join(listing) + "\n")
    return {"fineweb_path": str(root / "fineweb"), "cosmopedia_path": str(root / "cosmopedia"),
            "cc_wet_paths": str(root / "wet.paths")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--seconds", type=float, default=15.0, help="timed seconds per worker count")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--vocab-size", type=int, default=32768)
    ap.add_argument("--docs-per-file", type=int, default=3000)
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="write the mirrors into DIR and keep them (prints the trainer flags that read them)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        mirrors = write_mirrors(Path(args.keep or tmp), args.docs_per_file)
        if args.keep:
            print("trainer flags: --data-backend hybrid " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in mirrors.items()), flush=True)
        tok = train_tokenizer([page(i) for i in range(3000)], args.vocab_size)
        print(f"mirrors + tokenizer ready in {time.perf_counter() - t0:.1f}s (cpus={os.cpu_count()})", flush=True)
        results = {}
        for w in args.workers:
            cfg = DataConfig(backend="hybrid", seed=1, workers=w, **mirrors)
            pf = Prefetcher(DataPipeline(cfg, tok, seq_len=args.seq_len, batch_size=args.batch_size),
                            pin_memory=False, depth=4)
            for _ in range(max(3, w * 2)):  # warm-up: worker start, first files opened
                pf.next_batch()
            n_tok, t_start = 0, time.perf_counter()
            while time.perf_counter() - t_start < args.seconds:
                n_tok += pf.next_batch().n_tokens
            rate = n_tok / (time.perf_counter() - t_start)
            stats = pf.stats()
            pf.close()
            results[w] = rate
            print(f"workers={w} tokens_per_s={rate:,.0f} (seq {args.seq_len} x batch {args.batch_size}; "
                  f"docs fineweb/cosmopedia/commoncrawl = {stats.get('data_source_fineweb_edu_docs')}/"
                  f"{stats.get('data_source_cosmopedia_docs')}/{stats.get('data_source_commoncrawl_docs')})",
                  flush=True)
        print(json.dumps({"tokens_per_s": results, "cpus": os.cpu_count(), "seq_len": args.seq_len,
                          "batch_size": args.batch_size, "vocab_size": args.vocab_size}))


if __name__ == "__main__":
    main()
