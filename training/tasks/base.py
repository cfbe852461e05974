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


_FENCE = re.compile(r"```[ \t]*(?:python3?|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_program(completion: str, *, prefix: str = "", entry_point: str = "") -> str:
    """The program in a completion, for both prompt styles.

    A fenced block that defines `entry_point` wins (an instruct model's answer: prose, then a
    ```python block, then more prose; the prose may name the function too). Otherwise, when the text
    before the first fence defines something, the prompt opened the block and the completion closes
    it: that text is the program. Otherwise the first fenced block, else the whole completion.
    """
    blocks = _FENCE.findall(completion)
    code = next((b for b in blocks if entry_point and re.search(rf"^\s*def {re.escape(entry_point)}\b", b,
                                                                    re.MULTILINE)), None)
    if code is None:
        head = completion.split("```", 1)[0]
        code = blocks[0] if blocks and not re.search(r"^\s*def ", head, re.MULTILINE) else head
    if prefix and not (entry_point and re.search(rf"^\s*def {re.escape(entry_point)}\b", code, re.MULTILINE)):
        code = prefix + code
    return code


def chat_prompt(prompt: str) -> str:
    """`prompt` as a chat user message for an instruct model, which answers in its own fenced block.

    Plain prompts end inside an open ```python block so that a base model continues with code; in a
    chat that open fence would sit in the user's turn, so an empty trailing one is dropped and one
    holding code (HumanEval's signature) is closed.
    """
    body = prompt.rstrip()
    if body.count("```") % 2 == 0:
        return body
    head, _, tail = body.rpartition("```")
    if tail.strip() in ("", "python", "py"):
        return head.rstrip() + " Put it in a Python code block."
    return body + "\n```"


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
