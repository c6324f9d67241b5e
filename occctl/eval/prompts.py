"""Prompts as DeepScaleR builds them: one user message, the problem plus the boxed-answer instruction, rendered
through the tokenizer's chat template when it has one (``chat``), else as plain text (``plain``)."""

from __future__ import annotations

from typing import Any

from occctl.errors import SpecError
from occctl.eval.suites import INSTRUCTION

PROMPT_MODES = ("auto", "chat", "plain")


def resolve_mode(tokenizer: Any, mode: str) -> str:
    if mode not in PROMPT_MODES:
        raise SpecError(f"unknown prompt mode {mode!r}; valid: {', '.join(PROMPT_MODES)}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "chat" and not has_template:
        raise SpecError("--prompt chat: this tokenizer has no chat template", hint="use --prompt plain (or auto)")
    if mode == "auto":
        return "chat" if has_template else "plain"
    return mode


# Training prompt formats (``task.prompt``): the user message around a problem. ``deepscaler`` is what ``occctl
# eval`` asks (the problem, a space, INSTRUCTION); ``dapo`` is DAPO-Math-17k's (veRL's DAPO recipe, the authors'
# script), graded on its last "Answer:" line by veRL's math_dapo and by math-verify.
DAPO_TEMPLATE = ("Solve the following math problem step by step. The last line of your response should be of the "
                 "form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{problem}\n\n"
                 "Remember to put your answer on its own line after \"Answer:\".")
TEMPLATES = {"dapo": DAPO_TEMPLATE, "deepscaler": "{problem} " + INSTRUCTION.replace("{}", "{{}}"), "raw": "{problem}"}


def render_task_prompt(tokenizer: Any, problem: str, template: str, mode: str = "auto") -> str:
    """A training prompt in the format ``template`` (``TEMPLATES``), through the chat template when it has one."""
    return render_prompt(tokenizer, TEMPLATES[template].format(problem=problem), resolve_mode(tokenizer, mode),
                         instruction="")


def render_prompt(tokenizer: Any, problem: str, mode: str, instruction: str = INSTRUCTION) -> str:
    """The prompt text; ``mode`` is a resolved mode (``chat`` or ``plain``)."""
    content = f"{problem} {instruction}" if instruction else problem
    if mode == "chat":
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                             add_generation_prompt=True)
    return content


def encode_prompt(tokenizer: Any, text: str, mode: str) -> list[int]:
    """Token ids of a rendered prompt (a chat template already holds its special tokens)."""
    return list(tokenizer(text, add_special_tokens=(mode != "chat"))["input_ids"])


def fit_prompt(ids: list[int], room: int, bos_id: int | None) -> tuple[list[int], bool]:
    """Left-truncate ``ids`` to ``room`` tokens (a leading BOS is kept); returns (ids, truncated)."""
    if len(ids) <= room:
        return ids, False
    if bos_id is not None and ids and ids[0] == bos_id and room > 1:
        return [ids[0]] + ids[len(ids) - room + 1:], True
    return ids[len(ids) - room:], True
