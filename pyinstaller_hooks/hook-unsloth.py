# unsloth (GRPO acceleration on CUDA; CPU fallback keeps TRL's Triton kernel off the CPU): it patches
# and re-reads source (inspect.getsource) of transformers/trl, and holds Triton kernels, so source is collected.
import os
import sys

from PyInstaller.utils.hooks import collect_data_files

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _eco_hooks import modules_from_files  # noqa: E402

hiddenimports = modules_from_files("unsloth")
datas = collect_data_files("unsloth", excludes=["**/tests/**", "**/__pycache__/**"])
module_collection_mode = "py"
warn_on_missing_hiddenimports = False
