# unsloth_zoo (unsloth's companion): like unsloth, kernels and source patching need .py files.
import os
import sys

from PyInstaller.utils.hooks import collect_data_files

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _eco_hooks import modules_from_files  # noqa: E402

hiddenimports = modules_from_files("unsloth_zoo")
datas = collect_data_files("unsloth_zoo", excludes=["**/tests/**", "**/__pycache__/**"])
module_collection_mode = "py"
warn_on_missing_hiddenimports = False
