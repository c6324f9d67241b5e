"""Eval results as a rich table (terminal) and as markdown (the run directory). Every table names its grader."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _title(r: dict[str, Any]) -> str:
    s = r["sampling"]
    limit = f", first {r['limit']} per benchmark" if r.get("limit") else ""
    return (f"{r['suite_label']} · grader {r['grader']} · k={s['k']} T={s['temperature']:g} top-p={s['top_p']:g} "
            f"max_new={r.get('effective', {}).get('max_new_tokens', s['max_new_tokens'])}{limit}")


def _rows(r: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, b in r["benchmarks"].items():
        rows.append([name, str(b["n_problems"]), _pct(b["avg_at_k"]), _pct(b["pass_at_k"]),
                     _pct(b.get("mtp_acceptance")), str(b.get("timeouts", 0)), str(b.get("worker_replacements", 0))])
    if r.get("average") and len(r["benchmarks"]) > 1:
        rows.append([f"mean ({len(r['benchmarks'])} benchmarks, unweighted)", "", _pct(r["average"]["avg_at_k"]),
                     _pct(r["average"]["pass_at_k"]), _pct(r.get("mtp_acceptance")), "", ""])
    return rows


def _header(r: dict[str, Any]) -> list[str]:
    k = r["sampling"]["k"]
    return ["benchmark", "problems", f"avg@{k} %", f"pass@{k} %", "MTP accept %", "timeouts", "workers replaced"]


def results_table(r: dict[str, Any]) -> Table:
    table = Table(title=_title(r), title_justify="left")
    for i, col in enumerate(_header(r)):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in _rows(r):
        table.add_row(*row)
    return table


def results_markdown(r: dict[str, Any]) -> str:
    lines = [f"# {_title(r)}", "", f"model: `{r['model']}`" + (f" (run `{r['run']}`)" if r.get("run") else ""), ""]
    header = _header(r)
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(r)]
    timeouts = sum(b.get("timeouts", 0) for b in r["benchmarks"].values())
    replaced = sum(b.get("worker_replacements", 0) for b in r["benchmarks"].values())
    if timeouts or replaced:
        lines += ["", f"**Warning:** {timeouts} answers hit the {r.get('grade_timeout_s', '?')} s grading deadline "
                      f"and count as incorrect; {replaced} grading workers were replaced. Rerun with a larger "
                      "`--grade-timeout` to regrade them."]
    eff = r.get("effective")
    if eff and eff.get("prompts_truncated"):
        lines += ["", f"Model context {eff['context_length']} tokens: max_new_tokens {eff['max_new_tokens']}, "
                      f"{eff['prompts_truncated']} prompts left-truncated to {eff['prompt_room']} tokens."]
    if r.get("run_summary"):
        s = r["run_summary"]
        lines += ["", f"Run summary: heldout_acc_after {s['heldout_acc_after']} (k={s['heldout_k']}); "
                      f"{'matches' if s['matches'] else 'differs'}."]
    lines += ["", f"Scores are percentages, graded by `{r['grader']}`; files: `{r.get('cache', '')}`.", ""]
    return "\n".join(lines)


def selfcheck_table(result: dict[str, Any]) -> Table:
    graders = list(result["graders"])
    table = Table(title=f"selfcheck {result['suite']}: gold answers graded against themselves", title_justify="left")
    table.add_column("benchmark")
    table.add_column("answers", justify="right")
    for g in graders:
        table.add_column(f"{g} agree %", justify="right")
    benchmarks = list(result["graders"][graders[0]]["benchmarks"]) if graders else []
    for name in benchmarks:
        cells = [name, str(result["graders"][graders[0]]["benchmarks"][name]["answers"])]
        for g in graders:
            b = result["graders"][g]["benchmarks"][name]
            cells.append(f"{100 * b['agreement']:.1f} ({b['agree']})")
        table.add_row(*cells)
    table.add_row("time", str(result["answers"]), *(f"{result['graders'][g]['seconds']:.1f} s" for g in graders))
    return table
