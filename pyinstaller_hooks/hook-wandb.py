# wandb (optional logging): vendored packages and data files; imported lazily by trl/transformers.
import os
import sys

from PyInstaller.utils.hooks import collect_data_files

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _eco_hooks import modules_from_files  # noqa: E402

hiddenimports = modules_from_files("wandb")
datas = collect_data_files("wandb", excludes=["**/tests/**", "**/__pycache__/**"])
module_collection_mode = "py"
warn_on_missing_hiddenimports = False
