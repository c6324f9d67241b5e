"""`occctl report --fidelity`: proxy fidelity (r of the delta proxies against the oracle) across a study's cells.

Reads the summary (``fidelity_*`` keys, oracle mode) and spec of every finished cell of the groups, and writes ``table.md`` (one row per cell: task, factor, the Pearson / Spearman r of c_hat vs c, v_hat2
vs v^2 and lambda_t vs c/v^2 with their 95 % intervals) and ``fidelity_vs_factor.png`` (r of c_hat against each
factor's levels, one panel per factor, one line per task).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from occctl.errors import SpecError
from occctl.rundir import RunDir, RunFileError, results_root, write_text_atomic
from occctl.spec import Spec

STATS = (("c", "ĉ vs c"), ("v2", "v̂² vs v²"), ("lambda", "λ_t vs c/v²"))
THRESHOLD = 0.5


@dataclass(frozen=True)
class FidelityCell:
    name: str
    task: str
    factor: str
    setting: str  # the cell's values that differ from the base, e.g. "hidden 128"
    oracle_steps: int
    r: dict[str, tuple[float, float]]  # stat -> (pearson, spearman)
    heldout_before: float
    heldout_after: float
    lambda_mean: float


def interval(r: float, n: int) -> tuple[float, float]:
    """95 % interval of a Pearson r by Fisher's z (nan when undefined)."""
    if not math.isfinite(r) or n < 4 or abs(r) >= 1:
        return float("nan"), float("nan")
    z, half = math.atanh(r), 1.96 / math.sqrt(n - 3)
    return math.tanh(z - half), math.tanh(z + half)


def collect(groups: list[str], root: Path | None = None) -> list[FidelityCell]:
    """The finished cells of ``groups`` that ran with oracle mode, in the order of their names."""
    cells = []
    for path in sorted((root or results_root()).joinpath("runs").glob("*")):
        run = RunDir(path)
        if not run.is_finished():
            continue
        try:
            spec, summary = run.read_spec(), run.read_summary()
        except RunFileError:
            continue  # `occctl ls` reports broken runs
        if spec.group not in groups or not summary.get("oracle_steps"):
            continue
        cell = spec.cell
        cells.append(FidelityCell(
            name=run.name, task=str(cell.get("task", spec.task.name)),
            factor=str(cell.get("factor", cell.get("variant", "base"))), setting=describe(spec),
            oracle_steps=int(summary["oracle_steps"]),
            r={s: (summary.get(f"fidelity_pearson_{s}", float("nan")), summary.get(f"fidelity_spearman_{s}",
                                                                                   float("nan"))) for s, _ in STATS},
            heldout_before=summary.get("heldout_acc_before", float("nan")),
            heldout_after=summary.get("heldout_acc_after", float("nan")),
            lambda_mean=summary.get("lambda_mean", float("nan"))))
    return cells


def describe(spec: Spec) -> str:
    m, t = spec.model.tiny, spec.train
    return (f"h{m.hidden_size} L{m.num_layers}, {t.optimizer} lr {t.lr:g}, {t.optimizer_steps_per_generation} "
            f"steps/gen, {t.prompts_per_generation} prompts, {t.micro_batches_per_step} micro-batch(es)")


def _r(value: float) -> str:
    return "–" if not math.isfinite(value) else f"{value:+.2f}"


def to_markdown(cells: list[FidelityCell], title: str, groups: list[str]) -> str:
    head = ["task", "factor", "setting", "oracle steps"] + [f"r({label}) P [95% CI] / S" for _, label in STATS] + [
        "mean λ_t", "held-out before → after"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        stats = []
        for s, _ in STATS:
            p, sp = c.r[s]
            lo, hi = interval(p, c.oracle_steps)
            mark = "**" if math.isfinite(p) and p > THRESHOLD else ""
            stats.append(f"{mark}{_r(p)}{mark} [{_r(lo)}, {_r(hi)}] / {_r(sp)}")
        lines.append("| " + " | ".join([c.task, c.factor, c.setting, str(c.oracle_steps), *stats,
                                        f"{c.lambda_mean:.4f}", f"{c.heldout_before:.3f} → {c.heldout_after:.3f}"]) + " |")
    above = [f"{c.task}/{c.factor}" for c in cells if c.r["c"][0] > THRESHOLD]
    lines += ["", f"Bold: Pearson r > {THRESHOLD}. Cells with r(ĉ, c) > {THRESHOLD}: "
              + (", ".join(above) if above else "none") + ".",
              "", f"Produced by `occctl report --fidelity --group {','.join(groups)}`."]
    return "\n".join(lines) + "\n"


# factor -> its levels in plotting order (the cell's `factor` names; "base" is the embedded default)
FACTOR_AXES = {
    "width": ["base", "h128", "h256"],
    "depth": ["base", "l8"],
    "learning rate": ["lr1e-5", "lr5e-5", "base"],
    "optimizer": ["base", "sgd"],
    "steps / generation": ["spg2", "base", "spg8"],
    "tokens / step": ["base", "tok4x"],
}


def plot(cells: list[FidelityCell], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FACTOR_AXES), figsize=(3.2 * len(FACTOR_AXES), 3.2), sharey=True)
    by_key = {(c.task, c.factor): c for c in cells}
    for ax, (factor, levels) in zip(axes, FACTOR_AXES.items()):
        for task in sorted({c.task for c in cells}):
            for stat, style in (("c", "-o"), ("lambda", "--s")):
                ys = [by_key[(task, lv)].r[stat][0] if (task, lv) in by_key else float("nan") for lv in levels]
                ax.plot(range(len(levels)), ys, style, label=f"{task}: r({'ĉ,c' if stat == 'c' else 'λ,c/v²'})")
        ax.axhline(THRESHOLD, color="grey", lw=0.8, ls=":")
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xticks(range(len(levels)), ["default" if lv == "base" else lv for lv in levels], rotation=30)
        ax.set_title(factor)
        ax.set_ylim(-1, 1)
    axes[0].set_ylabel("Pearson r vs oracle")
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_fidelity_report(groups: list[str], out_dir: Path, title: str | None = None) -> Path:
    cells = collect(groups)
    if not cells:
        raise SpecError(f"no finished oracle-mode runs in group(s) {', '.join(groups)}",
                        hint="run the study first, e.g. occctl run specs/fidelity_scale.yaml")
    write_text_atomic(out_dir / "table.md", to_markdown(cells, title or f"Proxy fidelity: {', '.join(groups)}", groups))
    plot(cells, out_dir / "fidelity_vs_factor.png")
    return out_dir
