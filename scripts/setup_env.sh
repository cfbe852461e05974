#!/usr/bin/env bash
# Create (or reuse) the Python 3.13 venv for eco_train, install the strict lock, verify the runtime.
#
# The venv lives outside the checkout (it is ~8 GB) under $ECO_TRAIN_VENV_ROOT
# (default ~/.cache/eco_train), keyed by the lock file's hash, so a fresh clone reuses it.
# The checkout gets a `.venv` symlink to it, so `.venv/bin/eco_train` works from the repo root.
#
#   PYTHON=/path/to/python3.13 scripts/setup_env.sh     # choose the interpreter
#   scripts/setup_env.sh --print-venv                   # print the venv path and exit
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
lock="$repo/requirements-py313-cu128.txt"

is_py313() { "$1" -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1; }

if [ -n "${PYTHON:-}" ]; then
    if ! is_py313 "$PYTHON"; then
        echo "[setup] error: PYTHON=$PYTHON is not a working Python 3.13." >&2
        echo "[setup] fix: point PYTHON at a python3.13 executable, or unset it to search for one." >&2
        exit 1
    fi
    py=$PYTHON
else
    py=
    # A pyenv shim on PATH may exist without 3.13 being selected, so every candidate is tried.
    for c in python3.13 "$HOME"/.pyenv/versions/3.13*/bin/python3.13 /usr/local/bin/python3.13 /usr/bin/python3.13; do
        if command -v "$c" >/dev/null 2>&1 && is_py313 "$c"; then
            py=$(command -v "$c")
            break
        fi
    done
    if [ -z "$py" ]; then
        echo "[setup] error: Python 3.13 not found (looked on PATH, in ~/.pyenv/versions, /usr/local/bin, /usr/bin)." >&2
        echo "[setup] fix: install Python 3.13 (e.g. 'pyenv install 3.13.0') or set PYTHON=/path/to/python3.13." >&2
        exit 1
    fi
fi

hash=$(sha256sum "$lock" | cut -c1-16)
venv="${ECO_TRAIN_VENV_ROOT:-$HOME/.cache/eco_train}/venv-py313-$hash"
if [ "${1:-}" = "--print-venv" ]; then
    echo "$venv"
    exit 0
fi

# One set-up at a time per venv: a second caller waits here instead of deleting a venv being built.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9

if [ ! -f "$venv/.eco_train_complete" ]; then
    echo "[setup] creating $venv with $py (lock hash $hash)"
    rm -rf "$venv"
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet --no-cache-dir -r "$lock"
    touch "$venv/.eco_train_complete"
else
    echo "[setup] reusing $venv"
fi

# Point the venv's `eco_train` console script at this checkout (cheap; redone every time so the
# shared venv always runs the checkout that called setup).
"$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$repo"
ln -sfn "$venv" "$repo/.venv"
"$venv/bin/python" "$repo/scripts/verify_runtime.py"
