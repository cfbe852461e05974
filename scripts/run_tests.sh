#!/usr/bin/env bash
# Set up (or reuse) the pinned venv, then lint and run the CPU test-suite.
#   scripts/run_tests.sh [pytest args...]
# With ECO_TRAIN_BIN=path/to/eco_train (set by .ci/run after ./build_exe.sh), the parity suite
# (CLI, training, checkpoint/resume, metrics + report, GRPO, binary-only tests) runs a second time against that
# frozen binary, so anything the source can do and the binary cannot fails here.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scripts/setup_env.sh
.venv/bin/ruff check .
bin=${ECO_TRAIN_BIN:-}
env -u ECO_TRAIN_BIN .venv/bin/python -m pytest -q "$@"
if [ -n "$bin" ] && [ $# -eq 0 ]; then
    echo "[run_tests] parity suite against the binary $bin"
    ECO_TRAIN_BIN="$bin" .venv/bin/python -m pytest -q tests/test_cli.py tests/test_train.py tests/test_exe.py \
        tests/test_checkpoint.py tests/test_metrics.py tests/test_grpo.py
fi
