"""Both graders on real answer pairs (trusted input, called in-process), extraction, and the registry."""

import pytest

from occctl.errors import SpecError
from occctl.eval.graders import (after_think, boxed_response, grade_answer, grader_slug, last_boxed, resolve_grader,
                                 strip_math_delimiters)


def respond(answer: str) -> str:
    return f"<think>some reasoning</think>The answer is $\\boxed{{{answer}}}$."


# (gold, prediction, DeepScaleR verdict, math-verify verdict); the first block is the table measured against the
# original graders in shared/notes/data_and_grading.md §4
PAIRS = [
    ("\\frac{1}{2}", "0.5", True, True),
    ("025", "25", True, True),
    ("142.0", "142", True, True),
    ("\\frac{14}{3}", "4.666667", False, True),
    ("3\\sqrt{3}", "5.196152", False, True),
    ("1,3,5", "5,3,1", False, True),
    ("\\frac{2}{4}", "\\frac{1}{2}", False, True),
    ("50\\%", "50", True, True),
    ("9.6", "9.6 \\AA", False, False),
    ("9.6", "9.6 \\text{ \\AA}", True, True),
    ("8.7 \\times 10^{8}", "870000000", False, False),
    ("[2,5)", "(2,5)", False, False),
    ("x=2", "2", True, True),
    ("\\text{(C)}", "C", True, True),
    ("$69$,$84$", "69", False, False),
    # fractions in their spellings
    ("\\frac{3}{56}", "\\dfrac{3}{56}", True, True),
    ("\\frac{3}{4}", "\\frac34", True, True),
    ("\\frac{3}{4}", "3/4", True, True),
    ("\\frac{3}{4}", "\\tfrac{3}{4}", True, True),
    ("\\frac{3}{4}", "\\frac{4}{3}", False, False),
    ("-\\frac{1}{3}", "\\frac{1}{3}", False, False),
    # degrees, money, text answers
    ("90^\\circ", "90", True, True),
    ("30^\\circ", "30^{\\circ}", True, True),
    ("\\$18.90", "18.90", True, True),
    ("\\text{Evelyn}", "Evelyn", True, True),
    ("\\text{Evelyn}", "Bob", False, False),
    # radicals, pi, symbolic
    ("3\\sqrt{13}", "3\\sqrt{13}", True, True),
    ("3\\sqrt{13}", "\\sqrt{117}", True, True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", True, True),
    ("p - q", "p-q", True, True),
    ("p - q", "q-p", False, False),
    # tuples, intervals, sets
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True, True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{3})", False, False),
    ("(-\\infty, 0) \\cup\\{1\\}", "(-\\infty,0)\\cup\\{1\\}", True, True),
    ("[-2, 7]", "[-2,7]", True, True),
    ("[-2, 7]", "(-2,7)", False, False),
    # matrices
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix}1\\\\2\\end{pmatrix}", True, True),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}",
     False, False),
    # integers with thousands separators, large numbers
    ("2220", "2,220", True, True),
    ("10", "11", False, False),
]


@pytest.mark.parametrize("gold,pred,deepscaler,math_verify", PAIRS)
def test_graders_on_answer_pairs(gold, pred, deepscaler, math_verify):
    assert grade_answer("deepscaler@2", respond(pred), [gold]).correct is deepscaler
    assert grade_answer("math_verify@1", respond(pred), [gold]).correct is math_verify


def test_any_reference_counts_and_the_main_one_is_not_special():
    answers = ("0.01", "0.02")  # a Minerva row with two accepted values
    for grader in ("deepscaler@2", "math_verify@1"):
        assert grade_answer(grader, respond("0.02"), answers).correct
        assert grade_answer(grader, respond("0.01"), answers).correct
        assert not grade_answer(grader, respond("0.03"), answers).correct


def test_dollar_wrapped_gold_with_a_trailing_period_is_read_by_math_verify():
    # olympiadbench-076: the pitfall from the notes (gold `$...$.`); unwrapped gold is mis-parsed
    gold = "$(-\\infty, 0) \\cup\\{1\\}$."
    assert grade_answer("math_verify@1", respond("(-\\infty,0)\\cup\\{1\\}"), [gold]).correct
    assert not grade_answer("math_verify@1", respond("(-\\infty,0)"), [gold]).correct


def test_deepscaler_reads_only_the_last_box_and_needs_one():
    assert grade_answer("deepscaler@2", "\\boxed{7} no wait \\boxed{204}", ["204"]).correct
    assert not grade_answer("deepscaler@2", "\\boxed{204} no wait \\boxed{7}", ["204"]).correct
    assert not grade_answer("deepscaler@2", "The final answer is 204.", ["204"]).correct
    # math-verify also reads unboxed final answers (more lenient: a documented difference)
    assert grade_answer("math_verify@1", "The final answer is 204.", ["204"]).correct


def test_think_handling():
    # default: text after the first </think> when present; a box inside the thinking does not count
    assert not grade_answer("deepscaler@2", "<think>\\boxed{5}</think> so \\boxed{6}", ["5"]).correct
    assert grade_answer("deepscaler@2", "no think tags \\boxed{5}", ["5"]).correct
    # DeepScaleR's own format rule is a separate grader
    assert not grade_answer("deepscaler_think@2", "no think tags \\boxed{5}", ["5"]).correct
    assert grade_answer("deepscaler_think@2", "<think>hmm</think>\\boxed{5}", ["5"]).correct
    assert not grade_answer("deepscaler_think@2", "<think>hmm \\boxed{5}", ["5"]).correct


def test_extraction_helpers():
    assert last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{1} \\boxed{{2}+{3}}") == "{2}+{3}"
    assert last_boxed("\\fbox{3}") is None
    assert last_boxed("\\boxed 5") is None
    assert last_boxed("\\boxed{unclosed") is None
    assert last_boxed("nothing here") is None
    assert after_think("<think>a</think>b</think>c") == "b</think>c"
    assert strip_math_delimiters("$x^2$.") == "x^2"
    assert strip_math_delimiters("$69$,$84$") == "$69$,$84$"
    assert boxed_response("$2n$") == "<think>ok</think> The final answer is $\\boxed{2n}$."


def test_registry_names_and_errors():
    assert resolve_grader("math_verify@1") == "math_verify@1"
    assert resolve_grader("math-verify") == "math_verify@1"
    assert resolve_grader("deepscaler") == "deepscaler@2"
    assert grader_slug("math_verify@1") == "math_verify_v1"
    with pytest.raises(SpecError, match="did you mean 'deepscaler@2'"):
        resolve_grader("deepscaler@3")
    with pytest.raises(SpecError, match="deepscaler_think@1 was retired.*use deepscaler_think@2"):
        resolve_grader("deepscaler_think@1")
    with pytest.raises(SpecError, match="valid graders"):
        resolve_grader("llm_judge")
