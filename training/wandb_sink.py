"""Mirror of metrics.jsonl to Weights & Biases (`--wandb offline|online`).

`offline` writes a run folder under `<output-dir>/wandb/` with no network (`wandb sync` uploads it
later); `online` streams. Any failure of W&B is reported once by MetricsWriter and the sink is
dropped; training and metrics.jsonl go on.
"""

from __future__ import annotations

import os
from pathlib import Path

from training import faults


class WandbSink:
    def __init__(self, *, mode: str, run_dir: Path, run_id: str, config: dict):
        if faults.active("wandb", 0):
            raise RuntimeError("W&B failure injected by ECO_TRAIN_FAULTS")
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self._wandb = wandb
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "eco_train"), mode=mode, dir=str(run_dir),
                              id=run_id, name=run_id, resume="allow", config=config)

    def log(self, record: dict) -> None:
        if faults.active("wandb", record["step"]):
            raise RuntimeError("W&B failure injected by ECO_TRAIN_FAULTS")
        event = record["event"]
        data = {f"{event}/{k}": v for k, v in record.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("time",)}
        if data:
            self.run.log(data)

    def close(self) -> None:
        self.run.finish()
