"""Triton's interpreter for the CPU kernel tests, switched on before anything defines a kernel.

``triton.jit`` decides between interpreter and compiler when a function is decorated, and ``import
triton`` already decorates Triton's own helpers (``tl.sum``, ``tl.max``, ...). So the switch has to come
before the first ``import triton`` of the whole pytest process: a test module collected earlier that
imports a kernel module at its top level breaks every interpreter test after it, each with "Cannot call
@triton.jit'd outside of the scope of a kernel". This helper names that cause instead.
"""

import os
import sys


def use_triton_interpreter() -> None:
    """Set ``TRITON_INTERPRET=1``; raise, naming the cause and the fix, if Triton was imported without it."""
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "triton was imported before TRITON_INTERPRET=1 was set (by a test module collected earlier, or "
            "something it imports at its top level), so Triton's own helpers would run compiled inside the "
            "interpreted kernels. Fix: import kernel modules inside the tests that need them, or run pytest "
            "with TRITON_INTERPRET=1 in the environment."
        )
    os.environ["TRITON_INTERPRET"] = "1"
