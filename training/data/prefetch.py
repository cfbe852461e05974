"""Background batch production, so reading and tokenizing text overlaps the GPU's work.

Measured on an H100 (scripts/bench_throughput.py, 124m preset, 64K tokens/step): producing batches
on the training thread cost ~22% of wall time (369k effective vs 472k compute-only tokens/s).
One worker thread suffices: the tokenizer's batch encoder runs in Rust without the GIL.

The worker runs the pipeline strictly in order, so the batches are exactly those of the plain
pipeline; each batch travels with the pipeline state right after it, and `state_dict()` returns the
state after the last batch the loop *took* — what a checkpoint must store to resume at the next
batch, however far the worker has read ahead.
"""

from __future__ import annotations

import queue
import threading

from training.data.pipeline import Batch, DataPipeline


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """Wraps a DataPipeline: `next_batch()` / `state_dict()` as the pipeline, `depth` batches ahead."""

    def __init__(self, pipeline: DataPipeline, *, depth: int = 2, pin_memory: bool = False):
        self.pipeline = pipeline
        self.pin_memory = pin_memory
        self._state = pipeline.state_dict()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="eco_train-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self.pipeline.next_batch()
                if self.pin_memory:  # page-locked memory lets the host-to-device copy run async
                    batch.inputs_BT = batch.inputs_BT.pin_memory()
                    batch.targets_BT = batch.targets_BT.pin_memory()
                self._put((batch, self.pipeline.state_dict()))
        except BaseException as e:  # handed to the training thread, which raises it
            self._put(_Failure(e))

    def next_batch(self) -> Batch:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("the data prefetch thread stopped without a batch or an error") from None
        if isinstance(item, _Failure):
            raise RuntimeError(f"producing a batch failed: {item.error!r}") from item.error
        batch, self._state = item
        return batch

    def state_dict(self) -> dict:
        """Pipeline state after the last batch handed out (not after what is queued)."""
        return self._state

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
