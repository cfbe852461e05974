"""torch.compile's cache, kept next to the checkpoints so a restart or a resume compiles fast.

The first start of a run spends tens of seconds in Dynamo, AOTAutograd, Inductor and Triton
autotuning. Inductor keeps its results in a machine-local folder (``/tmp/torchinductor_$USER``),
which is gone on a fresh machine or container, exactly where long runs resume. After the first
compiled step (and again at the end, when the evaluation graphs exist too) we write
``torch.compiler.save_cache_artifacts()`` to ``<checkpoint dir>/compile_cache/<key>.bin``; the next
start with the same key hot-loads it before compiling.

The key hashes everything that changes the generated code: torch and Triton versions, the GPU
model, the model config, sequence length, micro-batch, the kernel selection and quack's version. A
file for another key is ignored, never loaded.

Graphs that hold a custom ``torch.autograd.Function`` (quack's fused MLP, ``--fused-mlp``) are kept too.
AOTAutograd's cache leaves them out by default, and then a warm start traces and partitions the whole
forward and backward again (on the H100 the 124m warm start's compile grew from 18.6 to 35.6 s with the
fused MLP on; PERFORMANCE.md, "Compile cache"). Dynamo traces each Function's forward and backward into
subgraphs, and the cache key pickles the graph module with its subgraphs' code, so a changed Function is
a changed key; a :class:`CompileCache` turns that cache on (``autograd_cache_allow_custom_autograd_functions``).
The startup record counts each cache's hits, misses and bypasses (:func:`counts`).

The artifact is torch's own serialisation (pickle-based), so it is not part of a checkpoint folder
(which holds only safetensors and JSON) and is loaded only from the run's own checkpoint directory.
``--compile-cache off`` disables both reading and writing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch._functorch.config

from training import console
from training.metrics import package_version

CACHE_DIR = "compile_cache"


class CompileCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved = False
        torch._functorch.config.autograd_cache_allow_custom_autograd_functions = True  # see the module's doc

    @classmethod
    def for_run(cls, cfg, model, hw) -> CompileCache:
        """The cache file of this run's compile key under its checkpoint directory."""
        key_fields = {
            "torch": torch.__version__,
            "triton": _triton_version(),
            "device": torch.cuda.get_device_name(hw.device) if hw.device.type == "cuda" else "cpu",
            "model": model.cfg.to_dict(),
            "seq_len": cfg.model.seq_len,
            "batch_size": cfg.loop.batch_size,
            "kernels": cfg.hardware.kernels,
            "fp8_lm_head": cfg.hardware.fp8_lm_head,
            "fused_mlp": cfg.hardware.fused_mlp,
            "quack": package_version("quack-kernels") if cfg.hardware.fused_mlp != "off" else None,
            "flash_attention": cfg.hardware.flash_attention,
            "flash_attn_4": package_version("flash-attn-4") if cfg.hardware.flash_attention != "off" else None,
            "dtype": str(hw.param_dtype),
        }
        key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
        return cls(Path(cfg.checkpoint.dir) / CACHE_DIR / f"{key}.bin")

    def load(self) -> bool:
        """Hot-load the artifacts if this key has some; a broken file is reported and skipped."""
        if not self.path.is_file():
            return False
        try:
            torch.compiler.load_cache_artifacts(self.path.read_bytes())
        except Exception as e:  # a stale or truncated cache only costs a cold compile
            console.say(f"WARNING: compile cache {self.path} could not be loaded ({e!r}); compiling from scratch")
            return False
        console.say(f"compile cache loaded from {self.path}")
        return True

    def save(self) -> None:
        """Write everything compiled so far (atomically: temp file, fsync, rename)."""
        try:
            artifacts = torch.compiler.save_cache_artifacts()
        except Exception as e:
            console.say(f"WARNING: compile cache not saved ({e!r})")
            return
        if not artifacts:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(artifacts[0])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.saved = True


# startup-record field -> (torch._dynamo counter group, counter): AOTAutograd's cache (a hit skips tracing the
# joint graph) and Inductor's FX graph cache (a hit skips code generation), each as hits, misses and bypasses
COUNTERS = {f"compile_{name}_cache_{plural}": (group, f"{prefix}_cache_{kind}")
            for name, group, prefix in (("aot", "aot_autograd", "autograd"), ("fx", "inductor", "fxgraph"))
            for kind, plural in (("hit", "hits"), ("miss", "misses"), ("bypass", "bypasses"))}


def counts() -> dict[str, int]:
    """How this process's compiles used the caches so far (:data:`COUNTERS`)."""
    from torch._dynamo.utils import counters

    return {field: int(counters[group][counter]) for field, (group, counter) in COUNTERS.items()}


def _triton_version() -> str | None:
    try:
        import triton

        return triton.__version__
    except Exception:
        return None
