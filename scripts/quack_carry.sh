#!/usr/bin/env bash
# quack (quack-kernels) and its CuTe-DSL compiler as two carries for the GPU machine (Python 3.12, no internet).
#   scripts/quack_carry.sh          # fills .quack/a and .quack/b (both ignored), then:
#   scripts/gpu_figures.sh OUT quack_stage   (carry .quack/a)   and next, on the same warm machine,
#   scripts/gpu_figures.sh OUT quack         (carry .quack/b)
# Why two: a device call carries at most 64 MiB, and the compiler's two libraries alone are ~230 MB
# (~64 MB with xz -9). .quack/a holds the wheels and the compiler (_cutlass_ir), .quack/b the CUDA 13
# wheel without its libraries and the runtime library (libcute_dsl_runtime), each xz-compressed.
set -eu
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-.venv/bin/python}
dsl=4.8.1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$tmp" quack-kernels==0.6.5 "nvidia-cutlass-dsl-libs-base==$dsl" "nvidia-cutlass-dsl-libs-core==$dsl" \
    "nvidia-cutlass-dsl-libs-cu13==$dsl" apache-tvm-ffi==0.1.15.post2 torch-c-dlpack-ext==0.1.5
"$PYTHON" -m pip download -q --no-deps --pre -d "$tmp" flash-attn-4==4.0.0b36  # FlashAttention 4, same compiler
rm -rf .quack && mkdir -p .quack/a .quack/b
cu13=$(ls "$tmp"/nvidia_cutlass_dsl_libs_cu13-*.whl)
ir=nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so
rt=nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so
unzip -p "$cu13" "$ir" | xz -T2 -9 > .quack/a/ir.so.xz
unzip -p "$cu13" "$rt" | xz -T2 -9 > .quack/b/rt.so.xz
zip -q -d "$cu13" "$ir" "$rt"
mv "$cu13" .quack/b/
mv "$tmp"/*.whl .quack/a/
du -sh .quack/a .quack/b
