"""The report's figures (matplotlib, no display): curves over steps per row, and the Fig. 8 scatter."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import matplotlib

from occctl.eval.suites import SUITES, training_eval_key

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Series = list[tuple[int, float]]  # (step, value)

# metric -> (file stem, title, transform): the paper's Fig. 1, 2, 4 and 6 analogues
CURVES: dict[str, tuple[str, str, Callable[[float], float] | None]] = {
    **{training_eval_key(s.name, "avg_at_k"): (f"fig1_heldout_accuracy{'' if s.name == 'tiny' else '_' + s.name}",
                                               "Held-out avg@k over training (Fig. 1)", None)
       for s in SUITES.values() if s.kind == "task"},
    "reward": ("fig6_reward", "Training reward (Fig. 6)", None),
    "occ/c_hat": ("fig2_abs_c_hat", "|ĉ| (Fig. 2)", abs),
    "occ/v_hat2": ("fig2_v_hat2", "v̂² (Fig. 2)", None),
    "occ/lambda": ("fig4_lambda", "λ_t (Fig. 4)", None),
    "mtp/acc": ("mtp_acceptance", "MTP draft acceptance on training rollouts", None),
    "spec/mean_accept_len": ("spec_mean_accept_len", "Tokens per main-model forward, speculative rollouts", None),
}


def _smooth(values: list[float], window: int) -> list[float]:
    if window <= 1:
        return values
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_curves(by_row: dict[str, list[Series]], title: str, path: Path,
                transform: Callable[[float], float] | None = None, window: int = 1) -> Path | None:
    """Mean over seeds per row (steps every seed has), shaded between the seeds' min and max."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    drawn = False
    for row, series in by_row.items():
        per_seed = [{s: (transform(v) if transform else v) for s, v in seed if math.isfinite(v)} for seed in series]
        per_seed = [s for s in per_seed if s]
        if not per_seed:
            continue
        steps = sorted(set.intersection(*(set(s) for s in per_seed)))
        if not steps:
            continue
        columns = [[s[t] for s in per_seed] for t in steps]
        mean = _smooth([sum(c) / len(c) for c in columns], window)
        low, high = _smooth([min(c) for c in columns], window), _smooth([max(c) for c in columns], window)
        (line,) = ax.plot(steps, mean, label=f"{row} (n={len(per_seed)})")
        if len(per_seed) > 1:
            ax.fill_between(steps, low, high, alpha=0.15, color=line.get_color())
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_title(title + (f", moving mean over {window} steps" if window > 1 else ""), fontsize=10)
    ax.set_xlabel("optimizer step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_fidelity(pairs: dict[str, list[tuple[float, float]]], path: Path) -> Path | None:
    """Fig. 8 analogue: proxy against oracle, one panel per quantity."""
    pairs = {k: v for k, v in pairs.items() if v}
    if not pairs:
        return None
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.8), squeeze=False)
    for ax, (name, points) in zip(axes[0], pairs.items()):
        ax.scatter([p[1] for p in points], [p[0] for p in points], s=6, alpha=0.5)
        ax.set_xlabel(f"oracle {name}")
        ax.set_ylabel(f"proxy {name}")
        ax.grid(alpha=0.3)
    fig.suptitle("Proxy vs. oracle gradient geometry (Fig. 8)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
