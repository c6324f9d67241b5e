"""``deepscaler@2`` against DeepScaleR's original grader, one class at a time, and the documented deviations.

Each class has self-contained cases; the Greek-letter golds of Minerva and the floor/ceiling golds of OlympiadBench
are also read from the math6 data when it is present (skipped otherwise). The predictions are written here.
"""

import re

import pytest

from occctl.eval.graders import boxed_response, grade_answer, last_boxed, think_segment

DS, DS_THINK = "deepscaler@2", "deepscaler_think@2"


def ds(response: str, gold: str, grader: str = DS) -> bool:
    return grade_answer(grader, response, [gold]).correct


def ds_box(pred: str, gold: str) -> bool:
    return ds(boxed_response(pred), gold)


# ---- 1. two </think>: the segment between the first and the second ------------------------------------------


def test_a_second_think_end_closes_the_graded_segment():
    response = "<think>try 40</think>Checking: \\boxed{48}.</think> then I wrote \\boxed{50}"
    assert think_segment(response) == "Checking: \\boxed{48}."
    for grader in (DS, DS_THINK):
        assert ds(response, "48", grader)
        assert not ds(response, "50", grader)
    # nothing boxed between the two: no answer, even though one follows the second </think>
    assert not ds("<think>a</think> so the answer is 7 </think> \\boxed{7}", "7")
    # a single </think>: the text after it, as before
    assert ds("<think>\\boxed{3}</think> \\boxed{4}", "4") and not ds("<think>\\boxed{3}</think> \\boxed{4}", "3")


# ---- 2. Greek letters: one symbol each, so the sympy check runs ---------------------------------------------


@pytest.mark.parametrize("gold,pred,verdict", [
    ("2\\mu+\\lambda", "\\lambda + 2 \\mu", True),
    ("\\lambda+\\mu", "\\lambda + 2 \\mu", False),
    ("\\frac{\\theta}{2}", "\\frac{1}{2}\\theta", True),
    ("k^{2}-\\beta^{2}", "(k-\\beta)(k+\\beta)", True),
    ("k^{2}-\\beta^{2}", "(k-\\beta)^{2}", False),
    ("\\varphi", "\\phi", False),  # distinct symbols, as in the original
    ("\\pi r^{2}", "r^2 \\pi", True),
])
def test_greek_letters_are_single_symbols(gold, pred, verdict):
    assert ds_box(pred, gold) is verdict


# ---- 3. floor and ceiling are kept (wrong answers without them are rejected) --------------------------------


@pytest.mark.parametrize("gold,pred,verdict", [
    ("\\lfloor \\frac{k}{3} \\rfloor", "\\frac{k}{3}", False),
    ("\\lceil 2m/5 \\rceil - 1", "\\frac{2m}{5}-1", False),
    ("\\lceil x \\rceil", "\\lfloor x \\rfloor", False),
    ("\\lfloor \\frac{k}{3} \\rfloor", "\\left\\lfloor \\frac{k}{3} \\right\\rfloor", True),
    ("\\lfloor \\frac{k}{3} \\rfloor", "\\lfloor k/3 \\rfloor", True),
])
def test_floor_and_ceiling(gold, pred, verdict):
    assert ds_box(pred, gold) is verdict


# ---- 4. a later \fbox does not hide a \boxed --------------------------------------------------------------------


def test_a_later_fbox_does_not_replace_the_boxed_answer():
    assert last_boxed("so \\boxed{12}; in a frame: \\fbox{13}") == "12"
    assert ds("\\boxed{12} and again \\fbox{13}", "12")
    assert not ds("\\boxed{12} and again \\fbox{13}", "13")
    assert not ds("only a frame \\fbox{13}", "13")  # DeepScaleR cannot unwrap an \fbox: a format error


# ---- deviations kept on purpose (occctl is more correct than the original here) --------------------------------


def test_documented_deviations():
    # \frac{a+b}{c} is (a+b)/c, not a+b/c as the original renders it
    assert ds_box("\\frac{1+y}{4}", "\\frac{y+1}{4}")
    assert not ds_box("y+\\frac{1}{4}", "\\frac{y+1}{4}")
    # the index of \sqrt[n]{} is kept (the original drops it)
    assert not ds_box("\\sqrt{5}", "\\sqrt[3]{5}")
    assert ds_box("\\sqrt[3]{5}", "\\sqrt[3]{5}")
    # floor / ceiling are sympy functions, so a reordered sum is equal (the original cannot parse them)
    assert ds_box("1+\\lceil t/2 \\rceil", "\\lceil t/2 \\rceil + 1")
    # \pi is the constant, so `pi` typed as text is the same number
    assert ds_box("2 pi", "2\\pi") and not ds_box("2", "2\\pi")


# ---- the math6 golds of these classes (when the data is present) ------------------------------------------------

GREEK = re.compile(r"\\(alpha|beta|gamma|delta|epsilon|theta|lambda|mu|rho|sigma|tau|omega|Delta)(?![A-Za-z])")
# id -> (an equivalent answer, a wrong one), written here for Minerva golds with Greek letters
MINERVA_GREEK = {
    "minerva-073": ("\\omega^2 + s^2", "s^2 - \\omega^2"),
    "minerva-087": ("2\\pi/\\omega", "\\frac{\\pi}{\\omega}"),
    "minerva-092": ("\\frac{1}{-\\omega^2+4}", "\\frac{1}{4+\\omega^{2}}"),
    "minerva-262": ("\\alpha", "\\beta"),
}


def _rows(name: str) -> dict[str, tuple[str, ...]]:
    from occctl.errors import SpecError
    from occctl.eval.suites import get_suite, load_benchmarks

    try:
        problems = load_benchmarks(get_suite("math6"), [name])[name]
    except SpecError as e:
        pytest.skip(f"math6 data not available: {e.message}")
    return {p.id: p.answers for p in problems}


def test_minerva_greek_golds():
    rows = _rows("minerva")
    greek = {pid: answers for pid, answers in rows.items() if any(GREEK.search(a) for a in answers)}
    assert len(greek) >= 15  # the data has 18 such problems
    for pid, answers in greek.items():
        assert grade_answer(DS, boxed_response(answers[0]), answers).correct, pid
    for pid, (right, wrong) in MINERVA_GREEK.items():
        assert grade_answer(DS, boxed_response(right), rows[pid]).correct, pid
        assert not grade_answer(DS, boxed_response(wrong), rows[pid]).correct, pid


def test_olympiadbench_floor_and_ceiling_golds():
    rows = _rows("olympiadbench")
    brackets = re.compile(r"\\(left|right)?\\?(lfloor|rfloor|lceil|rceil)")
    golds = {pid: answers for pid, answers in rows.items() if any(brackets.search(a) for a in answers)}
    assert len(golds) == 6
    for pid, answers in golds.items():
        assert grade_answer(DS, boxed_response(answers[0]), answers).correct, pid
        without = brackets.sub("", answers[0])  # the same expression with its floor / ceiling dropped: wrong
        assert not grade_answer(DS, boxed_response(without), answers).correct, (pid, without)
