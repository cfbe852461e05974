"""A code task, its prompt, and how a program is pulled out of a model's completion."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from training.sandbox import Job


@dataclass
class Task:
    """One programming problem with hidden tests.

    io tests (`inputs` + `expected`) keep the expected outputs out of the sandbox entirely; assert
    tests (`tests`, a `check(candidate)` source as in HumanEval) run inside it.
    """

    task_id: str
    prompt: str
    """what the model sees (already formatted)."""
    entry_point: str
    inputs: list | None = None
    expected: list | None = None
    tests: str | None = None
    prefix: str = ""
    """code the completion continues (HumanEval's signature + docstring); prepended unless the
    completion defines the entry point itself."""
    family: str = ""
    difficulty: int = 0
    meta: dict = field(default_factory=dict)

    def job(self, completion: str) -> Job:
        return Job(code=extract_program(completion, prefix=self.prefix, entry_point=self.entry_point),
                   entry_point=self.entry_point, inputs=self.inputs, expected=self.expected, tests=self.tests)


_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_program(completion: str, *, prefix: str = "", entry_point: str = "") -> str:
    """The program in a completion: the first fenced code block holding `def entry_point` (or the
    first block), else the text before a closing fence (the prompt opened the block), else all of it."""
    head = completion.split("```", 1)[0]
    # "def ... ```": the prompt opened the block and the completion closes it.
    blocks = [] if "```" in completion and "def " in head else _FENCE.findall(completion)
    code = None
    for b in blocks:
        if entry_point and f"def {entry_point}" in b:
            code = b
            break
    if code is None and blocks:
        code = blocks[0]
    if code is None:
        code = completion.split("```", 1)[0]
    if prefix and not (entry_point and re.search(rf"^\s*def {re.escape(entry_point)}\b", code, re.MULTILINE)):
        code = prefix + code
    return code


def format_prompt(description: str, signature: str, examples: list[tuple[str, str]]) -> str:
    """A plain prompt a small model can follow; it ends inside an open ```python block."""
    lines = [f"Write a Python function `{signature}`. {description}", ""]
    if examples:
        lines.append("Examples:")
        for call, result in examples:
            lines += [f">>> {call}", result]
        lines.append("")
    lines += ["Answer with the complete function.", "```python", ""]
    return "\n".join(lines)
