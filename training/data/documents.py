"""The unit every data source yields: one document of raw text with a domain tag.

Sources (the embedded seed corpus, local files, and later the streamed remote sources) all produce
`Document`s; the pipeline tokenizes, packs and splits them without knowing where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass

# Domain tags used by Hydra's per-domain adapters. Every document carries exactly one.
DOMAINS: tuple[str, ...] = ("text", "code", "math")


@dataclass(frozen=True)
class Document:
    """One training document.

    text: the raw text (no special tokens; the packer appends the end-of-text token).
    domain: one of `DOMAINS` ("text" | "code" | "math").
    source: where it came from ("seed", "local", ...), for logging and metrics.
    """

    text: str
    domain: str
    source: str
