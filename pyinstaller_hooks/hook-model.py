# eco_train's own `model` package: every module, collected as source as well as bytecode, since
# Triton's @jit and torch.compile read the source of the functions they compile (SPEC §5); and the fused
# MLP's tuned configs (model/kernels/quack_tuned, JSON files read at start by model.kernels.swiglu_mlp).
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _eco_hooks import modules_from_files  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
hiddenimports = modules_from_files("model", root=ROOT / "model")
datas = [(str(f), str(f.parent.relative_to(ROOT))) for f in sorted((ROOT / "model/kernels/quack_tuned").rglob("*.json"))]
module_collection_mode = "pyz+py"
