"""Build Triton kernels for the H100 (sm_90) on a machine without one, for the compile tests.

Compiling needs no GPU, only running does. Each test passes a script that builds its kernels with
``triton.compile(..., target=GPUTarget("cuda", 90, 32))`` (or :func:`ptx_and_ptxas`, importable there as
``tests.sm90``) and prints one JSON line last. It runs in a child process without ``TRITON_INTERPRET``:
the interpreter, once a kernel module is imported under it, would hand back Python functions instead of
compilable kernels.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def build_for_h100(script: str):
    """Run ``script`` from the repository root and return its last output line, parsed as JSON."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compile real kernels
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def ptx_and_ptxas(fn, signature: dict, constexprs: dict, attrs: dict, num_warps: int) -> dict:
    """Inside a build script: ``{"ptx", "ptxas"}`` for ``fn`` built for sm_90, ``ptxas`` being the report
    (registers, spills) of Triton's bundled ptxas for sm_90a."""
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["ptx"]
    ptxas = Path(triton.__path__[0]) / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(ptx)
        f.flush()
        report = subprocess.run([str(ptxas), "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"],
                                capture_output=True, text=True, check=True).stderr
    return {"ptx": ptx, "ptxas": report}
