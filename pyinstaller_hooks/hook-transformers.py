# transformers, replacing pyinstaller-hooks-contrib's hook (whose metadata copying is kept below).
# transformers resolves `from transformers import X` lazily (`_LazyModule`), so static analysis sees
# almost nothing: every module outside `transformers.models` is listed, plus the model families
# eco_train exports to / loads from and the ones TRL/PEFT/unsloth reach for by default. Source is
# collected too ("pyz+py"): unsloth patches transformers by re-reading its source.
import contextlib
import os
import sys

from PyInstaller.utils.hooks import copy_metadata, get_module_attribute, is_module_satisfies, logger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _eco_hooks import modules_from_files  # noqa: E402

MODEL_FAMILIES = ("auto", "qwen3", "qwen2", "llama", "gpt2", "mistral", "gemma", "gemma3", "phi3")

hiddenimports = [m for m in modules_from_files("transformers")
                 if not m.startswith("transformers.models.")
                 or m.split(".")[2] in MODEL_FAMILIES]
hiddenimports.append("transformers.models")
module_collection_mode = "py"
warn_on_missing_hiddenimports = False

# transformers checks its dependencies' versions through importlib.metadata at import time.
datas = copy_metadata("transformers")
try:
    dependencies = get_module_attribute("transformers.dependency_versions_table", "deps")
except Exception:
    logger.warning("hook-transformers: failed to read transformers.dependency_versions_table.deps", exc_info=True)
    dependencies = {}
for dependency_name, dependency_req in dependencies.items():
    if not is_module_satisfies(dependency_req):
        continue
    with contextlib.suppress(Exception):  # a dependency installed without metadata
        datas += copy_metadata(dependency_name)
