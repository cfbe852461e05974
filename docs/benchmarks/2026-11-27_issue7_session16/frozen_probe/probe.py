# ruff: noqa  (kept byte-for-byte as it was frozen and run, apart from this line; see cpu_frozen_probe.txt)
"""Does quack (and the CuTe-DSL compiler under it) import, and fingerprint its epilogues, inside a PyInstaller bundle?"""
import sys

import torch  # noqa: F401  (collected the normal way; quack needs it)

import quack
import quack.epilogue.library  # noqa: F401  (builds epilogue mods at import: the fingerprint that failed outside site-packages)
import quack.mlp  # noqa: F401
from quack.gemm_runtime import identity
import cutlass.cute

print("quack", quack.__version__, "from", quack.__file__, "frozen:", getattr(sys, "frozen", False))
print("cutlass.cute.jit counted as a fixed library:", identity._is_extern_function(cutlass.cute.jit))
import cutlass._mlir._mlir_libs as libs
print("compiler module:", sys.modules.get("cutlass._mlir._mlir_libs._cutlass_ir"))
