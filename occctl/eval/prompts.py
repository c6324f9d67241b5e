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
