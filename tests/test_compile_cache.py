"""The persisted compile cache (training/compile_cache.py) on the CPU: what a warm start reuses.

The trainer compiles only on a GPU; these tests drive :class:`CompileCache` directly, each start in its own
process with its own empty Inductor cache, as a restart on a fresh machine has.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# One start: load the persisted artifacts if any, compile a graph that holds a custom autograd.Function (as
# quack's fused MLP puts in the model's graph), run its forward and backward, persist, print the cache counts.
START = """
import json, sys
from pathlib import Path
import torch
from training.compile_cache import CompileCache, counts

class Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * g * x

cache = CompileCache(Path(sys.argv[1]))
loaded = cache.load()
step = torch.compile(lambda x, w: Square.apply(x @ w).sum())
x, w = torch.randn(16, 16, requires_grad=True), torch.randn(16, 16, requires_grad=True)
step(x, w).backward()
cache.save()
print(json.dumps({"loaded": loaded, "saved": cache.saved, **counts()}))
"""


def start(tmp_path: Path, name: str) -> dict:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor_{name}"), "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", START, str(tmp_path / "ck" / "cache.bin")], capture_output=True,
                       text=True, timeout=300, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_a_warm_start_reuses_the_traced_graph_of_a_custom_autograd_function(tmp_path):
    """AOTAutograd's cache holds graphs with custom autograd.Functions too, so a warm start skips tracing them."""
    cold = start(tmp_path, "cold")
    assert not cold["loaded"] and cold["saved"]
    assert cold["compile_aot_cache_misses"] == 1 and cold["compile_aot_cache_bypasses"] == 0, cold
    warm = start(tmp_path, "warm")
    assert warm["loaded"]
    assert warm["compile_aot_cache_hits"] == 1 and warm["compile_aot_cache_misses"] == 0, warm
    assert warm["compile_aot_cache_bypasses"] == 0, warm
