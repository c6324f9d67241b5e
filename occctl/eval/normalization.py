"""Answer normalisation and equality as DeepScaleR grades (Hendrycks MATH strings, then a guarded sympy check).

Written from the description of DeepScaleR's ``math_utils`` (see ``shared/notes/data_and_grading.md`` §4), not
copied from it. Two checks, either suffices:

* ``mathd_equal``: Hendrycks-style string normalisation (``\\text{}``/``\\left``/units/degrees stripped,
  ``dfrac``->``frac``, ``\\frac12``->``\\frac{1}{2}``, ``0.5``->``\\frac{1}{2}``, ``a/b``->``\\frac{a}{b}``, short
  ``x=`` prefixes dropped) followed by string equality;
* ``sympy_equal``: a second normalisation (``$``/``%``/unit words removed, LaTeX rendered as plain text,
  lower-cased), then element-wise comparison of tuples/intervals (same brackets, count and order), where two
  fractions must match exactly, an integer needs an integer, and everything else goes through
  ``sympy.simplify(gold - pred) == 0`` unless the expression has more than two distinct letters or a ``^{``/``^(``.

sympy can hang on hostile input: call these only inside the grading pool (``occctl.eval.pool``).
"""

from __future__ import annotations

import re
import unicodedata

# ---- Hendrycks (mathd) normalisation ---------------------------------------------------------------------


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{72}`` -> ``\\frac{1}{72}``."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{") or len(part) < 2:
            out += part
            continue
        a, b, rest = part[0], part[1], part[2:]
        if b == "{":
            out += "{" + a + "}" + b + rest
        else:
            out += "{" + a + "}{" + b + "}" + rest
    return out


def _fix_a_slash_b(s: str) -> str:
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else s


def _fix_sqrt(s: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``."""
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def _strip_units(s: str) -> str:
    """Hendrycks drops everything from ``\\text{ `` (a unit written after a space) onwards."""
    return s.split("\\text{ ")[0] if "\\text{ " in s else s


def mathd_normalize(answer: str | None) -> str | None:
    if answer is None:
        return None
    s = answer.strip()
    m = re.fullmatch(r"\\text\{(.+?)\}", s)
    if m:
        s = m.group(1).strip()
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    s = _strip_units(s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if s.count("=") == 1 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def mathd_equal(pred: str | None, gold: str) -> bool:
    return pred is not None and mathd_normalize(pred) == mathd_normalize(gold)


# ---- LaTeX -> plain text (what the sympy check parses) ---------------------------------------------------

_SYMBOLS = {
    "infty": "inf", "cup": "U", "cdot": "*", "times": "*", "div": "/", "le": "<=", "leq": "<=",
    "ge": ">=", "geq": ">=", "ne": "!=", "neq": "!=", "pm": "+-", "circ": "", "degree": "", "quad": " ",
    "qquad": " ", "cdots": "...", "ldots": "...", "dots": "...", "lfloor": " floor(", "rfloor": ")",
    "lceil": " ceiling(", "rceil": ")", "left": "", "right": "", "displaystyle": "", "mid": "|", "in": " in ",
    "emptyset": "{}",
}
# Greek letters become one character each, as DeepScaleR's renderer (pylatexenc) writes them, so that they count
# as one letter in the sympy guard and parse as one symbol; π is parsed as the constant pi (DeepScaleR: a symbol)
_GREEK = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
          "upsilon phi chi psi omega").split()
_GREEK_VARIANTS = {"varepsilon": "\N{GREEK LUNATE EPSILON SYMBOL}", "vartheta": "\N{GREEK THETA SYMBOL}",
                   "varphi": "\N{GREEK PHI SYMBOL}", "varrho": "\N{GREEK RHO SYMBOL}",
                   "varsigma": "\N{GREEK SMALL LETTER FINAL SIGMA}", "varkappa": "\N{GREEK KAPPA SYMBOL}",
                   "varpi": "\N{GREEK PI SYMBOL}"}
_SYMPY_NAMES = ("sqrt", "frac", "floor", "ceiling", "pi")  # the guard counts none as letters (pi: as one)


def greek_letter(name: str) -> str | None:
    """``omega`` -> ω, ``Omega`` -> Ω, ``varphi`` -> ϕ; None for any other macro name."""
    if name in _GREEK_VARIANTS:
        return _GREEK_VARIANTS[name]
    if name.lower() not in _GREEK:
        return None
    case = "CAPITAL" if name[0].isupper() else "SMALL"
    return unicodedata.lookup(f"GREEK {case} LETTER {name.upper().replace('LAMBDA', 'LAMDA')}")
_UNWRAP = {"text", "textbf", "textit", "mathrm", "mathbf", "mathit", "operatorname", "mbox", "boxed", "overline",
           "hat", "vec", "bar", "mathbb", "textrm", "rm", "bf"}
_MAX_LATEX_DEPTH = 50


def _group(s: str, i: int) -> tuple[str, int]:
    """The argument at ``s[i:]``: a ``{...}`` group or a single character; returns (content, next index)."""
    while i < len(s) and s[i] == " ":
        i += 1
    if i >= len(s):
        return "", i
    if s[i] != "{":
        if s[i] == "\\":
            m = re.match(r"\\[A-Za-z]+", s[i:])
            if m:
                return m.group(0), i + len(m.group(0))
        return s[i], i + 1
    depth = 0
    for j in range(i, len(s)):
        depth += {"{": 1, "}": -1}.get(s[j], 0)
        if depth == 0:
            return s[i + 1:j], j + 1
    return s[i + 1:], len(s)  # unbalanced: take the rest


def latex_to_text(s: str, _depth: int = 0) -> str:
    """A small LaTeX renderer: ``\\frac{a}{b}`` -> ``(a)/(b)`` (``a/b`` for plain numbers, so mixed numbers keep
    working), ``\\sqrt{x}`` -> ``sqrt(x)``, symbols as ASCII, formatting macros unwrapped, braces kept."""
    if _depth > _MAX_LATEX_DEPTH:
        raise ValueError("LaTeX nested too deeply")
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        m = re.match(r"\\([A-Za-z]+)", s[i:])
        if not m:  # \{ \} \, \; \! \  \%
            nxt = s[i + 1:i + 2]
            out.append({"{": "{", "}": "}", "%": "%", "$": "$"}.get(nxt, " " if nxt in ",;: " else ""))
            i += 2
            continue
        name = m.group(1)
        i += len(m.group(0))
        if name in ("frac", "dfrac", "tfrac", "binom", "dbinom"):
            num, i = _group(s, i)
            den, i = _group(s, i)
            num, den = latex_to_text(num, _depth + 1).strip(), latex_to_text(den, _depth + 1).strip()
            if name.endswith("binom"):
                out.append(f"binomial({num},{den})")
            elif re.fullmatch(r"-?\d+", num) and re.fullmatch(r"\d+", den):
                out.append(f" {num}/{den}")
            else:
                out.append(f" ({num})/({den})")
        elif name == "sqrt":
            index = None
            if s[i:i + 1] == "[":
                end = s.find("]", i)
                index, i = (s[i + 1:end], end + 1) if end > 0 else (None, i)
            arg, i = _group(s, i)
            arg = latex_to_text(arg, _depth + 1)
            out.append(f"sqrt({arg})" if index is None else f"({arg})^(1/({latex_to_text(index, _depth + 1)}))")
        elif name in _UNWRAP:
            arg, i = _group(s, i)
            out.append(latex_to_text(arg, _depth + 1))
        elif name in _SYMBOLS:
            out.append(_SYMBOLS[name])
        elif greek_letter(name) is not None:
            out.append(greek_letter(name))
        else:
            out.append(name)  # \alpha -> alpha, \sin -> sin
    return "".join(out)


# ---- the sympy check -------------------------------------------------------------------------------------

_UNIT_WORDS = ("degree", "cm", "centimeter", "meter", "mile", "second", "minute", "hour", "day", "week", "month",
               "year", "foot", "feet", "inch", "yard")
_BRACKETS = "()[]"


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def _strip_thousands(s: str) -> str:
    """``1,234,567`` -> ``1234567``; tuple commas (``(1,2)``) stay."""
    while True:
        new = re.sub(r"(\d),(\d\d\d)($|\D)", r"\1\2\3", s)
        if new == s:
            return s
        s = new


def _str_is_int(s: str) -> bool:
    try:
        x = float(_strip_thousands(s))
    except ValueError:
        return False
    return abs(x - round(x)) <= 1e-7 if abs(x) < 1e300 else False


def sympy_normalize(expr: str | None) -> str | None:
    if expr is None:
        return None
    m = re.fullmatch(r"\\text\{(.+?)\}", expr)
    if m:
        expr = m.group(1)
    expr = expr.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
    expr = expr.replace(" or ", " , ").replace(" and ", " , ")
    for word, power in (("million", 6), ("billion", 9), ("trillion", 12)):
        expr = expr.replace(word, f"*10^{power}")
    for unit in _UNIT_WORDS:
        expr = re.sub(rf"{unit}(es)?(s)? *(\^[0-9]+)?", "", expr)
    expr = re.sub(r"\^ *\\circ", "", expr)
    if expr.startswith("{") and expr.endswith("}"):
        expr = expr[1:-1]
    expr = re.sub(r",\\! *", "", expr)
    if _is_float(expr) and _str_is_int(expr):
        expr = str(int(round(float(expr))))
    if "\\" in expr:
        try:
            expr = latex_to_text(expr.replace("\\tfrac", "\\frac").replace("\\dfrac", "\\frac")).strip()
        except ValueError:
            pass
    expr = re.sub(r"- *", "-", expr)
    expr = re.sub(r"([0-9]) +([0-9])", r"\1+\2", expr)  # a mixed number: "7 3/4" -> "7+3/4"
    expr = expr.replace(" ", "").replace("{", "").replace("}", "").lower()
    if _str_is_int(expr):
        expr = str(int(float(_strip_thousands(expr))))
    return expr


def _is_frac(s: str) -> bool:
    return bool(re.fullmatch(r"-?[0-9]+.?/0*[1-9][0-9]*.?", s))


def _split_tuple(expr: str) -> list[str]:
    expr = _strip_thousands(expr)
    if not expr:
        return []
    if (len(expr) > 2 and expr[0] in _BRACKETS and expr[-1] in _BRACKETS
            and all(ch not in expr[1:-1] for ch in _BRACKETS)):
        return [e.strip() for e in expr[1:-1].split(",")]
    return [expr]


def _allow_eval(expr: str) -> bool:
    for name in _SYMPY_NAMES:
        expr = expr.replace(name, "π" if name == "pi" else "")
    letters = {c for c in expr if c.isalpha()}
    if len(letters) > 2 or "^{" in expr or "^(" in expr:
        return False
    return not (re.search(r"\^[0-9]+\^", expr) or re.search(r"\^[0-9][0-9]+", expr))


def _sympy_zero_difference(gold: str, pred: str) -> bool:
    expr = f"({gold})-({pred})"
    if not _allow_eval(expr):
        return False
    import sympy
    from sympy.parsing import sympy_parser

    transformations = sympy_parser.standard_transformations + (sympy_parser.implicit_multiplication_application,)
    try:
        diff = sympy_parser.parse_expr(expr.replace("^", "**"), transformations=transformations,
                                       local_dict={"π": sympy.pi})
        return bool(sympy.simplify(diff) == 0)
    except Exception:  # noqa: BLE001 - unparsable text is simply "not equal"
        return False


def sympy_equal(pred: str | None, gold: str) -> bool:
    gold_n, pred_n = sympy_normalize(gold), sympy_normalize(pred)
    if gold_n is None or pred_n is None:
        return False
    if gold_n == pred_n:
        return True
    if not pred_n:
        return False
    gold_elems, pred_elems = _split_tuple(gold_n), _split_tuple(pred_n)
    if len(gold_elems) > 1 and (gold_n[0] != pred_n[0] or gold_n[-1] != pred_n[-1]):
        return False
    if len(gold_elems) != len(pred_elems):
        return False
    for g, p in zip(gold_elems, pred_elems):
        if _is_frac(g) and _is_frac(p):
            ok = g == p  # an unreduced fraction is not accepted
        elif _str_is_int(g) != _str_is_int(p):
            ok = False
        else:
            ok = _sympy_zero_difference(g, p)
        if not ok:
            return False
    return True
