"""Writes checkpoint snapshots, in the foreground or on a background thread, then applies retention.

A failed save (a full disk, say) is reported loudly and recorded; the previous checkpoint stays
valid and training goes on, so the next save gets another chance. At most one save is in flight:
a new one first waits for the last.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from training import console
from training.checkpoint import Snapshot, apply_retention, checkpoint_step, is_disk_full, write_checkpoint


class Saver:
    def __init__(self, root: Path, *, keep: int, async_save: bool, protect: Path | None):
        self.root = root
        self.keep = keep
        self.async_save = async_save
        self.protect = {protect} if protect else set()
        """never deleted by retention in this run: the checkpoint it resumed from."""
        self.last_valid: Path | None = None
        self.submitted_step: int | None = None
        self.last_error: BaseException | None = None
        self._results: list[dict] = []
        self._thread: threading.Thread | None = None

    def submit(self, snap: Snapshot, *, stall_s: float) -> None:
        self.wait()
        self.submitted_step = snap.step
        if self.async_save:
            self._thread = threading.Thread(target=self._write, args=(snap, stall_s), name="eco_train-save")
            self._thread.start()
        else:
            self._write(snap, stall_s)

    def _write(self, snap: Snapshot, stall_s: float) -> None:
        t0 = time.perf_counter()
        try:
            path = write_checkpoint(self.root, snap)
        except Exception as e:  # the run goes on; the previous checkpoint is still valid
            self.last_error = e
            hint = " (disk full: free space or move --checkpoint-dir)" if is_disk_full(e) else ""
            console.say(f"WARNING: saving the checkpoint of step {snap.step} failed: {e!r}{hint}; "
                        f"the last valid checkpoint is still {self.last_valid}")
            self._results.append({"step": snap.step, "ok": False, "error": repr(e), "stall_s": stall_s})
            return
        self.last_valid = path
        deleted = apply_retention(self.root, self.keep, protect=self.protect | {path})
        self._results.append({"step": snap.step, "ok": True, "path": str(path), "stall_s": stall_s,
                              "write_s": time.perf_counter() - t0, "deleted": [p.name for p in deleted]})

    @property
    def last_valid_step(self) -> int | None:
        return checkpoint_step(self.last_valid) if self.last_valid else None

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def pop_results(self) -> list[dict]:
        out, self._results = self._results, []
        return out

    def close(self) -> None:
        self.wait()
