"""Text quality filters for web text (CommonCrawl WET), exact-duplicate removal, domain guessing.

Heuristics in the spirit of Gopher's rules (Rae et al. 2021) and C4, cheap enough to run on every
page (~10-30 us per KB in CPython) and needing no model download:
- `length`: too short (boilerplate, nav pages) or absurdly long (dumps);
- `charset`: too few letters among the non-space characters (tables, code dumps, binary junk);
- `repetition`: too many duplicated lines (menus, cookie banners, spam);
- `language`: the English check — enough common English function words among the words (a
  stop-word test: Gopher keeps documents with at least two of them; we also ask for a share);
- `duplicate`: an exact duplicate (after whitespace/case normalisation) of a page seen within the
  last `DEDUP_WINDOW` pages of this stream.

Every rejection is counted by reason, so the metrics show what each filter drops.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass

DEDUP_WINDOW = 8192
FILTERS: tuple[str, ...] = ("length", "charset", "repetition", "language", "duplicate")

_WORD = re.compile(r"[A-Za-z']+")
_SPACE = re.compile(r"\s+")
_STOPWORDS = frozenset({
    "the", "be", "to", "of", "and", "a", "in", "that", "have", "i", "it", "for", "not", "on", "with", "he",
    "as", "you", "do", "at", "this", "but", "his", "by", "from", "they", "we", "say", "her", "she", "or",
    "an", "will", "my", "one", "all", "would", "there", "their", "what", "so", "up", "out", "if", "about",
    "who", "get", "which", "go", "me", "is", "are", "was", "were", "has", "had", "been", "can",
})
_CODE_HINTS = re.compile(r"^\s*(def |class |import |from \S+ import|#include|public |function |var |let |const )"
                         r"|[{};]\s*$", re.M)
_MATH_HINTS = re.compile(r"\\frac|\\sum|\\int|\$[^$\n]+\$|\b\d+\s*[-+*/^=]\s*\d+|\bequation\b|\btheorem\b", re.I)


@dataclass
class QualityConfig:
    min_chars: int = 200
    max_chars: int = 200_000
    min_letter_share: float = 0.6
    """letters / non-space characters."""
    max_dup_line_share: float = 0.3
    """duplicated lines / lines."""
    language: str = "en"
    """'en': English stop-word check; 'any': no language check."""
    min_stopword_share: float = 0.06
    """English function words / words."""


def quality_problem(text: str, cfg: QualityConfig) -> str | None:
    """The first filter `text` fails ('length', 'charset', 'repetition', 'language'), or None."""
    n = len(text)
    if n < cfg.min_chars or n > cfg.max_chars:
        return "length"
    compact = _SPACE.sub("", text)
    if not compact or sum(c.isalpha() for c in compact) < cfg.min_letter_share * len(compact):
        return "charset"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and (len(lines) - len(set(lines))) > cfg.max_dup_line_share * len(lines):
        return "repetition"
    if cfg.language == "en":
        words = _WORD.findall(text)
        stop = sum(w.lower() in _STOPWORDS for w in words)
        if stop < 2 or stop < cfg.min_stopword_share * len(words):
            return "language"
    return None


def text_hash(text: str) -> int:
    """64-bit hash of the text after collapsing whitespace and case (exact-duplicate key)."""
    norm = _SPACE.sub(" ", text).strip().lower()
    return int.from_bytes(hashlib.blake2b(norm.encode("utf-8", "replace"), digest_size=8).digest(), "little")


class DedupWindow:
    """Exact-duplicate detector over the last `size` distinct texts (bounded memory, resumable)."""

    def __init__(self, size: int = DEDUP_WINDOW) -> None:
        self.size = size
        self._seen: OrderedDict[int, None] = OrderedDict()

    def seen_before(self, text: str) -> bool:
        """True if `text` is a duplicate within the window; otherwise remembers it."""
        h = text_hash(text)
        if h in self._seen:
            self._seen.move_to_end(h)
            return True
        self._seen[h] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)
        return False

    def state(self) -> list[int]:
        return list(self._seen)

    def load(self, hashes: list[int]) -> None:
        self._seen = OrderedDict.fromkeys(hashes[-self.size :])


def guess_domain(text: str, hint: str | None = None) -> str:
    """'code', 'math' or 'text' for a document: `hint` when given, else cheap pattern counts."""
    if hint in ("code", "math", "text"):
        return hint
    sample = text[:4000]
    lines = sample.count("\n") + 1
    if len(_CODE_HINTS.findall(sample)) >= max(3, lines // 5) or "```" in sample:
        return "code"
    if len(_MATH_HINTS.findall(sample)) >= max(3, len(sample) // 400):
        return "math"
    return "text"
