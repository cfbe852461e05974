"""How a kernel module launches its ``triton.jit`` kernels from inside a ``torch.library.triton_op``."""

from torch.library import wrap_triton
from triton.runtime.jit import JITFunction


def launcher(kernel):
    """``wrap_triton(kernel)``, which lets torch.compile trace the launch into its graph.

    Under ``TRITON_INTERPRET=1`` (the CPU tests) ``triton.jit`` returns an interpreter object that
    ``wrap_triton`` rejects; those run eagerly anyway, so they are launched as they are.
    """
    return wrap_triton(kernel) if isinstance(kernel, JITFunction) else kernel
