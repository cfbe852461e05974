#!/usr/bin/env bash
# Build the eco_train binary (Linux twin of build_exe.bat):
#   1. venv + pinned lock (scripts/setup_env.sh: creates or reuses the venv, upgrades pip, installs
#      requirements-py313-cu128.txt, links .venv)
#   2. scripts/verify_runtime.py: every required package and symbol imports, or stop here
#   3. PyInstaller with eco_train.spec -> dist/eco_train/eco_train (one folder)
#   4. smoke test of the built binary: --version, --help, a bad flag (exit 2), Python mode, quack
#      (--fused-mlp) and FlashAttention 4 (--flash-attention) on Linux x86-64, and a few CPU training steps;
#      any failure fails the build.
#
#   ./build_exe.sh                  build (skipped when nothing that goes into the binary changed)
#   ./build_exe.sh --force          rebuild even if up to date
#   ./build_exe.sh --smoke-only     only smoke-test the existing dist/eco_train
#   ./build_exe.sh --system-python  use $PYTHON (default python3) as it is: no venv, no lock, no
#                                   verifier (a machine with its own stack, e.g. the GPU machine)
#   ECO_TRAIN_ONEFILE=1 ./build_exe.sh   one self-extracting file dist/eco_train instead
#
# Re-running is incremental: the venv is reused while the lock is unchanged, and the PyInstaller
# step is skipped while a stamp of every input (sources, spec, hooks, lock, Python) matches.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$repo"

force=0 smoke_only=0 system_python=0
for a in "$@"; do
    case "$a" in
        --force) force=1 ;;
        --smoke-only) smoke_only=1 ;;
        --system-python) system_python=1 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "[build_exe] error: unknown option $a; fix: see ./build_exe.sh --help" >&2; exit 2 ;;
    esac
done

if [ "${ECO_TRAIN_ONEFILE:-0}" = 1 ]; then bin=dist/eco_train; else bin=dist/eco_train/eco_train; fi
t0=$SECONDS

if [ "$smoke_only" = 0 ]; then
    if [ "$system_python" = 1 ]; then
        py=${PYTHON:-python3}
        echo "[build_exe] --system-python: using $py as is (no lock install, no runtime verifier)"
    else
        echo "[build_exe] 1/4 venv + pinned lock"
        scripts/setup_env.sh  # also runs scripts/verify_runtime.py; fails fast
        py=.venv/bin/python
        echo "[build_exe] 2/4 runtime verifier"
        "$py" scripts/verify_runtime.py >/dev/null 2>&1 || "$py" scripts/verify_runtime.py
    fi

    # The stamp: every file that goes into the binary, plus the interpreter and the build mode.
    stamp=$( { "$py" -c 'import sys; print(sys.version)'; echo "onefile=${ECO_TRAIN_ONEFILE:-0}";
               git ls-files -co --exclude-standard -- '*.py' '*.spec' '*.txt' 'pyinstaller_hooks' \
                   | grep -v '^tests/' | sort | xargs sha256sum; } | sha256sum | cut -c1-16)
    stamp_file=build/eco_train.stamp
    if [ "$force" = 0 ] && [ -x "$bin" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ]; then
        echo "[build_exe] 3/4 $bin is up to date (stamp $stamp); --force rebuilds"
    else
        echo "[build_exe] 3/4 PyInstaller (a few minutes; output in dist/, work files in build/)"
        rm -f "$stamp_file"
        "$py" -m PyInstaller --noconfirm --log-level WARN eco_train.spec
        mkdir -p build && echo "$stamp" >"$stamp_file"
        echo "[build_exe] built $bin in $((SECONDS - t0)) s; size $(du -sh "$(dirname "$bin")" | cut -f1)"
    fi
fi

# ---------------------------------------------------------------------------------------------
# 4. Smoke test: the binary must do the basics, from another folder, with no Python on PATH.
echo "[build_exe] 4/4 smoke test of $bin"
[ -x "$bin" ] || { echo "[build_exe] error: $bin does not exist; fix: run ./build_exe.sh" >&2; exit 1; }
exe=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "[build_exe] SMOKE FAILED: $1" >&2; exit 1; }
nopy() { (cd "$work" && env -i HOME="$work" PATH=/usr/bin:/bin LANG=C.UTF-8 "$exe" "$@"); }

out=$(nopy --version) || fail "--version exited $?"
[[ "$out" == "eco_train "* ]] || fail "--version printed '$out'"
nopy --help | grep -q -- "--model-preset" || fail "--help does not list the flags"
set +e
err=$(nopy --steps zero 2>&1 >/dev/null); rc=$?
set -e
[ "$rc" = 2 ] && [[ "$err" == *"argument --steps"* ]] || fail "bad input: exit $rc, '$err' (want exit 2 naming --steps)"
out=$(nopy -I -c 'import sys, math, json; print(json.dumps(math.isqrt(49)), sys.argv[1:])' a b) \
    || fail "Python mode (-c) exited $?"
[ "$out" = "7 ['a', 'b']" ] || fail "Python mode printed '$out'"
if [ "$(uname -sm)" = "Linux x86_64" ]; then  # quack ships in the side site-packages (eco_train.spec)
    # ... and the fused MLP's shipped tuned configs are in the bundle and refile into a quack cache there
    shipped=$(find model/kernels/quack_tuned -name '*.autotune.json' | wc -l)
    out=$(nopy -c 'import sys, tempfile, pathlib, quack, quack.mlp, quack.epilogue.library, cutlass.cute
from quack.gemm_runtime import identity
from model.kernels.swiglu_mlp import TUNED_DIR, seed_tuned_configs
assert identity._is_extern_function(cutlass.cute.jit), "quack does not count cutlass as a fixed library"
seeded = 0
for gpu in sorted(p.name for p in TUNED_DIR.iterdir() if p.is_dir()):  # each GPU model shipped
    with tempfile.TemporaryDirectory() as cache:
        seeded += seed_tuned_configs(pathlib.Path(cache), gpu)
assert seeded == int(sys.argv[1]), f"{seeded} of {sys.argv[1]} tuned configs seeded"
print("quack", quack.__version__)' "$shipped") || fail "quack (--fused-mlp) or its tuned configs fail in the binary: exit $?"
    [[ "$out" == "quack "* ]] || fail "quack import printed '$out'"
    # FlashAttention 4 (--flash-attention) ships beside it and imports on the same compiler
    out=$(nopy -c 'import flash_attn.cute.interface as i; print("flash_attn", callable(i._flash_attn_fwd))') \
        || fail "FlashAttention 4 (--flash-attention) fails to import in the binary: exit $?"
    [ "$out" = "flash_attn True" ] || fail "FlashAttention 4 import printed '$out'"
fi
nopy --device cpu --model-preset tiny --steps 3 --seq-len 32 --batch-size 2 --vocab-size 512 \
    --tokenizer-train-chars 20000 --log-every 1 --eval-every 3 --eval-batches 1 --sample-every 3 \
    --output-dir "$work/run" --checkpoint-dir "$work/ck" >"$work/train.log" 2>&1 \
    || { tail -30 "$work/train.log" >&2; fail "3 training steps on the CPU"; }
grep -q '"event": "end"' "$work/run/metrics.jsonl" || fail "no end record in metrics.jsonl"
echo "[build_exe] ok: $bin passed the smoke test ($((SECONDS - t0)) s in all)"
