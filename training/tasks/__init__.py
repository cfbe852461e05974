"""Code tasks for the GRPO stage: a procedural generator, a JSONL loader and a HumanEval loader."""

from training.tasks.base import Task, chat_prompt, extract_program, format_prompt
from training.tasks.generator import FAMILIES, TaskGenerator
from training.tasks.loaders import load_humaneval, load_jsonl

__all__ = ["FAMILIES", "Task", "TaskGenerator", "chat_prompt", "extract_program", "format_prompt", "load_humaneval",
           "load_jsonl"]
