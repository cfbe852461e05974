"""Entry point of a data worker process (see prefetch.py). Imports nothing heavy before it has to.

A worker builds its own `DataPipeline` as shard `w` of `W` (per rank), restores its state, and puts
`(rows, source, state)` for every batch into its own bounded queue, in order. It never imports torch.
"""

from __future__ import annotations

import os


def run_worker(spec: dict, out_queue, stop_event) -> None:  # noqa: ANN001 - multiprocessing objects
    # Share the cores: each worker's Rust tokenizer pool gets its slice instead of all of them.
    os.environ.setdefault("RAYON_NUM_THREADS", str(spec["rayon_threads"]))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    import queue

    from tokenizers import Tokenizer

    from training.data.pipeline import DataPipeline

    def put(item: object) -> bool:
        while not stop_event.is_set():
            try:
                out_queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    try:
        tok = Tokenizer.from_str(spec["tokenizer"])
        p = DataPipeline(spec["cfg"], tok, seq_len=spec["seq_len"], batch_size=spec["batch_size"],
                         rank=spec["rank"], world_size=spec["world_size"], worker=(spec["index"], spec["n"]),
                         dropped=spec["dropped"])
        if spec["state"] is not None:
            p.load_state_dict(spec["state"])
        while not stop_event.is_set():
            rows, source = p.next_rows()
            if not put(("batch", rows, source, p.state_dict())):
                return
    except BaseException as e:  # handed to the training process, which raises it
        import traceback

        put(("error", f"{type(e).__name__}: {e}", traceback.format_exc()))
