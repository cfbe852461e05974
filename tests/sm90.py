"""Build Triton kernels for the H100 (sm_90) on a machine without one, for the compile tests.

Compiling needs no GPU, only running does. Each test passes a script that builds its kernels with
``triton.compile(..., target=GPUTarget("cuda", 90, 32))`` and prints one JSON line last. It runs in a
child process without ``TRITON_INTERPRET``: the interpreter, once a kernel module is imported under
it, would hand back Python functions instead of compilable kernels.
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
