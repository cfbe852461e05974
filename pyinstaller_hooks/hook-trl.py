# TRL (GRPO/DPO trainers): lazy `_LazyModule` imports static analysis cannot see, chat_templates/*.jinja data,
# and Triton kernels (`@triton.jit` reads source), so its modules also go in as .py files (SPEC §5).
import os
import sys

from PyInstaller.utils.hooks import collect_data_files

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _eco_hooks import modules_from_files  # noqa: E402

hiddenimports = modules_from_files("trl")
datas = collect_data_files("trl", excludes=["**/tests/**", "**/__pycache__/**"])
module_collection_mode = "py"
warn_on_missing_hiddenimports = False
