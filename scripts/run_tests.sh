#!/usr/bin/env bash
# Set up (or reuse) the pinned venv, then lint and run the CPU test-suite.
#   scripts/run_tests.sh [pytest args...]
# With ECO_TRAIN_BIN=path/to/eco_train (set by .ci/run after ./build_exe.sh), the parity suite
# (CLI, training, checkpoint/resume, metrics + report, GRPO, binary-only tests) runs against that frozen
# binary, so anything the source can do and the binary cannot fails here. The CLI and training tests
# run both ways (they hold the source entry point and the README job); checkpoint/resume, metrics and
# GRPO run once, against the binary (their in-process tests are the same either way): the source
# suite took 17.9 min with them and 10.2 without, on a 2-core AMD EPYC (.ci/run has the totals).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scripts/setup_env.sh
.venv/bin/ruff check .
bin=${ECO_TRAIN_BIN:-}
binary_only=(tests/test_checkpoint.py tests/test_metrics.py tests/test_grpo.py)
if [ -n "$bin" ] && [ $# -eq 0 ]; then
    env -u ECO_TRAIN_BIN .venv/bin/python -m pytest -q "${binary_only[@]/#/--ignore=}"
    echo "[run_tests] parity suite against the binary $bin"
    ECO_TRAIN_BIN="$bin" .venv/bin/python -m pytest -q tests/test_cli.py tests/test_train.py tests/test_exe.py \
        "${binary_only[@]}"
else
    env -u ECO_TRAIN_BIN .venv/bin/python -m pytest -q "$@"
fi
