"""Graders: a response + the reference answers -> correct or not. Versioned: ``<name>@<version>``.

A grader key fixes its behaviour forever; a change gets a new version, so scores from different graders never
share a column (nor a grade cache). Graders can hang on hostile input (sympy), so the runner calls them only
through ``occctl.eval.pool`` (worker processes with a hard per-answer timeout); calling ``grade_answer`` directly is
for tests and trusted input.

* ``math_verify@1`` (default): HF math-verify on the response (after the first ``</think>`` when present); each
  reference is wrapped as ``\\boxed{...}`` (outer ``$...$`` and a trailing period removed) before parsing, since
  bare LaTeX gold is mis-parsed; correct if any reference verifies.
* ``deepscaler@2``: DeepScaleR's reward (``rllm``'s ``math_reward`` without the format rule): the text between the
  first and a second ``</think>`` when present (``response.split("</think>")[1]``), its last ``\\boxed{}`` (never
  an ``\\fbox``), then Hendrycks string equality or the guarded sympy check against
  any reference.
* ``deepscaler_think@2``: as ``deepscaler@2`` with DeepScaleR's format rule: the response must contain ``<think>``
  and ``</think>``.

Retired: ``deepscaler@1`` / ``deepscaler_think@1`` graded the text after the first ``</think>`` (a second one
included), rendered Greek letters as words (so the sympy check was skipped), dropped floor/ceiling brackets and
let a later ``\\fbox`` hide a ``\\boxed``.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import Callable

from occctl.errors import SpecError, did_you_mean
from occctl.eval.normalization import mathd_equal, sympy_equal

DEFAULT_GRADER = "math_verify@1"


@dataclass(frozen=True)
class Grade:
    correct: bool
    pred: str | None  # what the grader read as the answer (None: nothing extracted)


# ---- extraction ------------------------------------------------------------------------------------------


def after_think(response: str) -> str:
    """The text after the first ``</think>``, or the whole response when there is none (math-verify)."""
    return response.split("</think>", 1)[1] if "</think>" in response else response


def think_segment(response: str) -> str:
    """DeepScaleR's answer text: ``response.split("</think>")[1]``, i.e. after the first ``</think>`` and before a
    second one; the whole response when there is none."""
    return response.split("</think>")[1] if "</think>" in response else response


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces matched), as in DeepScaleR: ``\\boxed 5`` or an unclosed
    box give None, and so does ``\\fbox{..}`` (DeepScaleR falls back to the last ``\\fbox`` only when there is no
    ``\\boxed``, then cannot unwrap it), so a later ``\\fbox`` never hides a ``\\boxed``."""
    start = text.rfind("\\boxed")
    if start < 0 or not text.startswith("\\boxed{", start):
        return None
    depth = 0
    for i in range(start + len("\\boxed"), len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start + len("\\boxed{"):i]
    return None


def strip_math_delimiters(answer: str) -> str:
    """``$x$`` / ``$x$.`` -> ``x``; several ``$a$,$b$`` segments stay as they are (math-verify reads them)."""
    s = answer.strip()
    m = re.fullmatch(r"\$([^$]*)\$\s*\.?", s)
    return m.group(1).strip() if m else s


def boxed_response(answer: str) -> str:
    """A synthetic model response whose final answer is ``answer`` (used by selfcheck)."""
    return f"<think>ok</think> The final answer is $\\boxed{{{strip_math_delimiters(answer)}}}$."


# ---- math-verify -----------------------------------------------------------------------------------------


def _quiet_math_verify() -> None:
    # it warns on every call that we disabled its (signal-based, main-thread-only) timeouts: the pool has ours
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "math_verify.utils"):
        logging.getLogger(name).setLevel(logging.ERROR)


@functools.lru_cache(maxsize=4096)
def _parse_gold(answer: str):
    from math_verify import LatexExtractionConfig, parse

    return parse(f"\\boxed{{{strip_math_delimiters(answer)}}}", extraction_config=[LatexExtractionConfig()],
                 parsing_timeout=None)


def grade_math_verify(response: str, answers: tuple[str, ...]) -> Grade:
    from math_verify import parse, verify

    _quiet_math_verify()
    pred = parse(after_think(response), parsing_timeout=None)
    if not pred:
        return Grade(False, None)
    shown = str(pred[1] if len(pred) > 1 else pred[0])
    for answer in answers:
        gold = _parse_gold(answer)
        if gold and verify(gold, pred, timeout_seconds=None):
            return Grade(True, shown)
    return Grade(False, shown)


# ---- DeepScaleR ------------------------------------------------------------------------------------------


def _deepscaler(response: str, answers: tuple[str, ...], require_think: bool) -> Grade:
    if require_think and ("<think>" not in response or "</think>" not in response):
        return Grade(False, None)
    pred = last_boxed(think_segment(response))
    if pred is None:
        return Grade(False, None)
    for answer in answers:
        gold = last_boxed(answer) if "\\boxed" in answer else answer
        if gold is not None and (mathd_equal(pred, gold) or sympy_equal(pred, gold)):
            return Grade(True, pred)
    return Grade(False, pred)


def grade_deepscaler(response: str, answers: tuple[str, ...]) -> Grade:
    return _deepscaler(response, answers, require_think=False)


def grade_deepscaler_think(response: str, answers: tuple[str, ...]) -> Grade:
    return _deepscaler(response, answers, require_think=True)


# ---- registry --------------------------------------------------------------------------------------------

GRADERS: dict[str, Callable[[str, tuple[str, ...]], Grade]] = {
    "math_verify@1": grade_math_verify,
    "deepscaler@2": grade_deepscaler,
    "deepscaler_think@2": grade_deepscaler_think,
}
RETIRED = {"deepscaler@1": "deepscaler@2", "deepscaler_think@1": "deepscaler_think@2"}  # see the module docstring


def resolve_grader(name: str) -> str:
    """A full key (``deepscaler@2``), or a bare name / ``math-verify`` spelling meaning its latest version."""
    if name in GRADERS:
        return name
    if name in RETIRED:
        raise SpecError(f"grader {name} was retired: it differed from the original grader (see the README's "
                        f"graders section); use {RETIRED[name]}")
    bare = name.replace("-", "_")
    versions = sorted((k for k in GRADERS if k.split("@")[0] == bare), key=lambda k: int(k.split("@")[1]))
    if versions:
        return versions[-1]
    hint = did_you_mean(name, GRADERS)
    raise SpecError(f"unknown grader {name!r}{hint}; valid graders: {', '.join(GRADERS)}")


def grader_slug(key: str) -> str:
    """``math_verify@1`` -> ``math_verify_v1`` (MLflow metric names and file names cannot hold ``@``)."""
    name, version = key.split("@")
    return f"{name}_v{version}"


def grade_answer(grader: str, response: str, answers: tuple[str, ...] | list[str]) -> Grade:
    return GRADERS[grader](response, tuple(answers))
