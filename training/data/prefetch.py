"""Background batch production, so reading, filtering and tokenizing overlap the GPU's work.

Two modes, one API (`next_batch()`, `state_dict()`, `stats()`, `close()`):
- `cfg.workers == 0`: one thread runs the pipeline in order (measured on an H100 with the 124m
  preset, producing batches on the training thread cost ~22% of wall time; the thread hides it).
  The batches are exactly those of the plain pipeline.
- `cfg.workers == W >= 1`: W worker processes (`worker.py`), worker w running its own pipeline as
  shard w of W (per rank). Batch i after the bootstrap comes from worker i % W, so the stream is
  deterministic for a given W. The bootstrap seed batches are made by the thread in this process
  while the workers start. Each worker's queue is bounded (`depth` batches).

Exact resume: every batch travels with the state of the pipeline that made it right after it;
`state_dict()` combines the states as of the last batch *taken* — what a checkpoint must store to
resume at the next batch, however far the workers have read ahead. A waiting `next_batch()` prints
a line every 30 s, so a stalled source never hangs the loop silently.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import queue
import threading
import time

from training.data.pipeline import Batch, DataPipeline, stats_from_state

WAIT_LOG_S = 30.0


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher:
    """Wraps a DataPipeline: `next_batch()` / `state_dict()` as the pipeline, produced ahead in the background."""

    def __init__(self, pipeline: DataPipeline, *, depth: int = 2, pin_memory: bool = False):
        self.pipeline = pipeline
        self.pin_memory = pin_memory
        self.n_workers = pipeline.cfg.workers
        self._state = pipeline.state_dict()
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._procs: list = []
        self._worker_queues: list = []
        if self.n_workers > 0:
            self._start_workers(depth)
        self._thread = threading.Thread(target=self._work, name="eco_train-prefetch", daemon=True)
        self._thread.start()

    # -- worker processes --------------------------------------------------------------------------

    def _start_workers(self, depth: int) -> None:
        from training.data.worker import run_worker

        p = self.pipeline
        W = self.n_workers
        saved = p.worker_states or {"n": W, "next": 0, "states": [None] * W}
        self._next_worker = saved["next"]
        self._worker_state_list = list(saved["states"])
        ctx = mp.get_context("spawn")  # fork is unsafe once torch/CUDA threads exist
        self._mp_stop = ctx.Event()
        dropped = dict(p._dropped or {})
        for w in range(W):
            q = ctx.Queue(maxsize=depth)
            spec = {
                # Workers make no bootstrap batches: this process does, while they start.
                "cfg": dataclasses.replace(p.cfg, bootstrap_seed_batches=0), "tokenizer": p.tokenizer.to_str(), "seq_len": p.seq_len, "batch_size": p.batch_size,
                "rank": p.rank, "world_size": p.world_size, "index": w, "n": W, "dropped": dropped,
                "state": self._worker_state_list[w], "rayon_threads": max(1, (os.cpu_count() or 1) // W),
            }
            proc = ctx.Process(target=run_worker, args=(spec, q, self._mp_stop), name=f"eco_train-data-{w}",
                               daemon=True)
            proc.start()
            self._procs.append(proc)
            self._worker_queues.append(q)

    def _from_worker(self) -> tuple:
        w = self._next_worker
        q, proc = self._worker_queues[w], self._procs[w]
        while not self._stop.is_set():
            try:
                item = q.get(timeout=0.5)
            except queue.Empty:
                if not proc.is_alive():
                    raise RuntimeError(
                        f"data worker {w} exited (code {proc.exitcode}) without a batch or an error") from None
                continue
            if item[0] == "error":
                raise RuntimeError(f"data worker {w} failed: {item[1]}\n{item[2]}")
            _, rows, source, state = item
            return w, rows, source, state
        raise RuntimeError("prefetcher closed")

    # -- producer thread ---------------------------------------------------------------------------

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        p = self.pipeline
        try:
            while not self._stop.is_set():
                if self.n_workers == 0 or p.current_source() == "seed" and p.cfg.backend != "seed":
                    rows, source = p.next_rows()
                    if self.n_workers > 0:
                        p.worker_states = self._worker_states()
                    state = p.state_dict()
                else:
                    w, rows, source, wstate = self._from_worker()
                    self._worker_state_list[w] = wstate
                    self._next_worker = (w + 1) % self.n_workers
                    p.batches_done += 1
                    p.worker_states = self._worker_states()
                    state = p.state_dict()
                batch = p._to_batch(rows, source)
                if self.pin_memory:  # page-locked memory lets the host-to-device copy run async
                    batch.inputs_BT = batch.inputs_BT.pin_memory()
                    batch.targets_BT = batch.targets_BT.pin_memory()
                self._put((batch, state))
        except BaseException as e:  # handed to the training thread, which raises it
            self._put(_Failure(e))

    def _worker_states(self) -> dict:
        return {"n": self.n_workers, "next": self._next_worker, "states": list(self._worker_state_list)}

    # -- consumer API ----------------------------------------------------------------------------------

    def next_batch(self) -> Batch:
        t0 = t_log = time.monotonic()
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("the data prefetch thread stopped without a batch or an error") from None
                if time.monotonic() - t_log >= WAIT_LOG_S:
                    t_log = time.monotonic()
                    from training import console

                    console.say(f"waiting for data: no batch for {t_log - t0:.0f}s "
                                f"(sources: {self._source_summary()})")
        if isinstance(item, _Failure):
            raise RuntimeError(f"producing a batch failed: {item.error!r}") from item.error
        batch, self._state = item
        self.pipeline.set_stats(stats_from_state(self._state, self.pipeline.cfg))
        return batch

    def _source_summary(self) -> str:
        st = self.pipeline.stats()
        ups = [f"{k[len('data_source_'):-3]}={'up' if v else 'down'}" for k, v in st.items()
               if k.startswith("data_source_") and k.endswith("_up")]
        return ", ".join(ups) or self.pipeline.cfg.backend

    def state_dict(self) -> dict:
        """Pipeline state after the last batch handed out (not after what is queued)."""
        return self._state

    def stats(self) -> dict:
        """`DataPipeline.stats()` as of the last batch handed out."""
        return self.pipeline.stats()

    def close(self) -> None:
        self._stop.set()
        if self._procs:
            self._mp_stop.set()
        self._thread.join(timeout=5)
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=2)
        for q in self._worker_queues:
            q.cancel_join_thread()
            q.close()
