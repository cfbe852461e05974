# accelerate (used by trl/peft): commands and utils imported lazily; its data files.
import os
import sys

from PyInstaller.utils.hooks import collect_data_files

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _eco_hooks import modules_from_files  # noqa: E402

hiddenimports = modules_from_files("accelerate")
datas = collect_data_files("accelerate", excludes=["**/tests/**", "**/__pycache__/**"])
module_collection_mode = "py"
warn_on_missing_hiddenimports = False
