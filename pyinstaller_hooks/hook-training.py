# eco_train's own `training` package: every module, collected as source as well as bytecode, since
# Triton's @jit and torch.compile read the source of the functions they compile (SPEC §5).
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _eco_hooks import modules_from_files  # noqa: E402

hiddenimports = modules_from_files("training", root=Path(__file__).resolve().parent.parent / "training")
module_collection_mode = "pyz+py"
