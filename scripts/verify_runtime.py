"""Check that every package and symbol the eco_train runtime needs imports, and list all that don't.

Run by scripts/setup_env.sh (and the EXE build) right after installing the lock, so a broken
environment fails in seconds with the full list of problems instead of hours into a run.

    python scripts/verify_runtime.py          # exit 0 when all good, 1 with the list otherwise
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import traceback

# (module, [attributes that must exist on it]). Order matters: unsloth patches transformers/trl
# and wants to be imported before them (SPEC §5).
REQUIRED: list[tuple[str, list[str]]] = [
    ("numpy", []),
    ("torch", ["optim.Muon", "optim.AdamW", "nn.functional.scaled_dot_product_attention", "compile"]),
    ("triton", ["jit"]),
    ("unsloth", []),
    ("unsloth_zoo", []),
    ("transformers", ["AutoModelForCausalLM", "Qwen3Config", "Qwen3ForCausalLM", "PreTrainedTokenizerFast"]),
    ("datasets", ["load_dataset", "IterableDataset"]),
    ("trl", ["GRPOConfig", "GRPOTrainer", "DPOConfig", "DPOTrainer"]),
    ("peft", ["LoraConfig", "get_peft_model", "PeftModel"]),
    ("accelerate", ["Accelerator"]),
    ("tokenizers", ["Tokenizer", "models.BPE", "trainers.BpeTrainer", "pre_tokenizers.ByteLevel"]),
    ("safetensors", []),
    ("safetensors.torch", ["save_file", "load_file"]),
    ("pyarrow.parquet", ["ParquetFile"]),
    ("warcio", ["ArchiveIterator"]),
    ("warcio.warcwriter", ["WARCWriter"]),
    ("wandb", ["init"]),
    ("psutil", ["cpu_percent", "virtual_memory"]),
    ("pynvml", ["nvmlInit", "nvmlDeviceGetUtilizationRates"]),
    ("PyInstaller", []),
    ("pytest", []),
]
if sys.platform == "linux" and platform.machine() == "x86_64":  # the lock's markers: quack's compiler is Linux x86-64
    REQUIRED.append(("quack.mlp", ["mlp_func"]))  # --fused-mlp; imports the CuTe-DSL compiler too
    REQUIRED.append(("flash_attn.cute.interface", ["_flash_attn_fwd", "_flash_attn_bwd"]))  # --flash-attention


def _resolve(obj: object, dotted: str) -> object:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def check(required: list[tuple[str, list[str]]] = REQUIRED) -> list[str]:
    """Import each module and look up each symbol; return one line per problem (empty when all good)."""
    problems = []
    for module_name, attrs in required:
        try:
            module = importlib.import_module(module_name)
        except Exception as e:  # any failure on import is a broken package, not only ImportError
            last = traceback.format_exception_only(type(e), e)[-1].strip()
            problems.append(f"{module_name}: import failed: {last}")
            continue
        for attr in attrs:
            try:
                _resolve(module, attr)
            except AttributeError:
                version = getattr(module, "__version__", "?")
                problems.append(f"{module_name}.{attr}: missing (installed {module_name} {version})")
    return problems


def main() -> int:
    # unsloth refuses to import on a machine without a GPU unless it may fall back to the CPU.
    os.environ.setdefault("UNSLOTH_DISABLE_CPU_FALLBACK", "0")
    problems = check()
    if problems:
        print(f"[verify_runtime] FAILED: {len(problems)} problem(s) with the Python runtime {sys.executable}:",
              file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        print("[verify_runtime] fix: reinstall the lock (scripts/setup_env.sh) or repair the packages above.",
              file=sys.stderr)
        return 1
    import torch

    print(f"[verify_runtime] ok: {len(REQUIRED)} modules on Python {sys.version.split()[0]}, "
          f"torch {torch.__version__} (CUDA {torch.version.cuda}), cuda_available={torch.cuda.is_available()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
