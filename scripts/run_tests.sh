#!/usr/bin/env bash
# Set up (or reuse) the pinned venv, then lint and run the CPU test-suite.
#   scripts/run_tests.sh [pytest args...]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scripts/setup_env.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest -q "$@"
