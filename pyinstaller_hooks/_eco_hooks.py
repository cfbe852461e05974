"""Shared helpers for eco_train's PyInstaller hooks (not a hook: the name does not start with `hook-`).

`modules_from_files` lists a package's modules from its installed files instead of importing them
(PyInstaller's `collect_submodules` imports every subpackage, which for trl/unsloth means importing
transformers, torch and more in a child process: minutes on 2 cores). Static analysis of each
listed module still follows their imports, and modules whose optional dependencies are not
installed are only reported as missing, as for any optional import.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def modules_from_files(package: str, *, root: Path | None = None,
                       skip: tuple[str, ...] = ("tests", "test", "examples")) -> list[str]:
    """Every `package.x.y` that has a .py file (or an __init__.py) under the package's folder
    (`root`, default: where the installed package is found)."""
    root = root or package_dir(package)
    if root is None:
        return []
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if any(p in skip or not p.isidentifier() for p in parts[:-1]) or not parts[-1].isidentifier():
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out.append(".".join([package, *parts]))
    return out
