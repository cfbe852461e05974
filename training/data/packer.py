"""Concatenate-and-chunk packing of tokenized documents into fixed-length training rows.

Every document is followed by the end-of-text id, documents are concatenated into one stream, and the
stream is cut into rows of `seq_len + 1` tokens (inputs = row[:-1], targets = row[1:]).

Rows overlap by one token, nanoGPT style: row k is stream[k*T : k*T + T + 1] with T = seq_len, so the
last token of a row is the first token of the next. Every token of the stream is therefore predicted
exactly once (no target is lost at row boundaries) and
`rows[0] + rows[1][1:] + rows[2][1:] + ...` reproduces the stream. Documents may span rows; attention
is not masked at document boundaries (the eos token marks them), as in GPT-2/nanoGPT pre-training.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


class Packer:
    """Pack token-id lists into rows of `seq_len + 1` tokens, carrying leftovers to the next row."""

    def __init__(self, seq_len: int, *, eos_id: int) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.seq_len = seq_len
        self.eos_id = eos_id
        # Tokens not yet emitted. After a row is emitted its last token stays here (the 1-token overlap).
        self._buffer = np.empty(0, dtype=np.int64)

    def add(self, docs: Iterable[list[int]]) -> None:
        """Append documents (token-id lists, without eos) to the stream, each followed by eos."""
        flat: list[int] = []
        for ids in docs:
            flat.extend(ids)
            flat.append(self.eos_id)
        if flat:
            self._buffer = np.concatenate([self._buffer, np.asarray(flat, dtype=np.int64)])

    def rows_available(self) -> int:
        """Number of complete rows that `pop_rows` can emit now."""
        return max(0, (len(self._buffer) - 1) // self.seq_len)

    def pop_rows(self, n: int) -> np.ndarray:
        """Remove and return `n` rows as an int64 array [n, seq_len + 1]; needs `rows_available() >= n`."""
        if n > self.rows_available():
            raise ValueError(f"asked for {n} rows but only {self.rows_available()} are buffered")
        T = self.seq_len
        idx = np.arange(n)[:, None] * T + np.arange(T + 1)[None, :]
        rows = self._buffer[idx]
        # Keep the last emitted token: it is the first input of the next row.
        self._buffer = self._buffer[n * T :].copy()
        return rows

    def state_dict(self) -> dict:
        """Plain-JSON state: the leftover tokens."""
        return {"seq_len": self.seq_len, "buffer": self._buffer.tolist()}

    def load_state_dict(self, state: dict) -> None:
        """Restore leftovers saved by `state_dict` (seq_len must match)."""
        if state["seq_len"] != self.seq_len:
            raise ValueError(f"packer state has seq_len={state['seq_len']}, this packer has {self.seq_len}")
        self._buffer = np.asarray(state["buffer"], dtype=np.int64)
