"""How tests start eco_train: the source entry point, or the frozen binary when ECO_TRAIN_BIN is set.

The parity switch: `ECO_TRAIN_BIN=dist/eco_train/eco_train pytest tests/test_cli.py tests/test_train.py`
runs the same CLI and training tests against the binary, so anything the source can do and the
binary cannot is a failing test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BINARY = os.environ.get("ECO_TRAIN_BIN")


def eco_train_cmd() -> list[str]:
    if BINARY:
        return [str(Path(BINARY).resolve())]
    return [sys.executable, str(REPO / "train_sigma.py")]


def run_eco_train(*args: str, cwd: Path = REPO, timeout: float = 300,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run eco_train as a user would: a real process with a real exit code."""
    return subprocess.run([*eco_train_cmd(), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)
