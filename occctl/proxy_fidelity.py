"""Proxy vs. oracle: how well c_hat, v_hat2 and lambda_t track the true gradient geometry (paper Fig. 8).

Reads the per-step metric history of a run with oracle mode (``mtp.occ.oracle_every_steps``) and returns
Pearson / Spearman r. Besides the proxies the run trained with, oracle mode logs every estimator variant
on the same trajectory (``occ/probe_<baseline>_<quantity>_<scope>``), so variants compare paired.
"""

from __future__ import annotations

import math
import re
from typing import Any

from occctl.correlation import fig8_correlations, pearson, running_mean, spearman

PROBE = re.compile(r"^occ/probe_(?P<baseline>main_old|mtp_old|hidden)_(?P<what>c|v2|lambda_\w+?)_(?P<scope>micro|step|full|prev)$")
FIG8_MIN_POINTS = 64  # below this a binned / smoothed r has too few independent points to mean anything


def within_generation_step(row: dict[str, float], steps_per_generation: int) -> int:
    """k = 1 .. steps_per_generation: the optimizer step's place in its generation round (k = 1: the policy has
    not moved since the rollout, so delta_RL and c_hat are 0)."""
    return (int(row["step"]) - 1) % steps_per_generation + 1


def _pair(rows: list[dict[str, float]], proxy: str, oracle: str) -> tuple[list[float], list[float]]:
    kept = [r for r in rows if proxy in r and oracle in r and math.isfinite(r[proxy]) and math.isfinite(r[oracle])]
    return [r[proxy] for r in kept], [r[oracle] for r in kept]


def fidelity(history: list[dict[str, float]], steps_per_generation: int = 1, window: int = 10) -> dict[str, Any]:
    """r between proxies and oracle over the steps that have both (empty without oracle mode).

    "moved" restricts to steps after the first one of each generation round, where the policy has
    moved and delta_RL is not identically 0. "abs" compares |c_hat| with |c| (the paper plots |c|).
    "trunk" uses the oracle over the trunk's parameters only (no embeddings, no lm_head).
    """
    rows = [r for r in history if "occ/oracle_c" in r and "occ/c_hat" in r]
    if not rows:
        return {}
    moved = [r for r in rows if within_generation_step(r, steps_per_generation) > 1]
    out: dict[str, Any] = {"oracle_steps": len(rows)}
    for name, proxy, oracle, subset, transform in (
        ("c", "occ/c_hat", "occ/oracle_c", rows, None),
        ("v2", "occ/v_hat2", "occ/oracle_v2", rows, None),
        ("abs_c", "occ/c_hat", "occ/oracle_c", rows, abs),
        ("c_moved", "occ/c_hat", "occ/oracle_c", moved, None),
        ("v2_moved", "occ/v_hat2", "occ/oracle_v2", moved, None),
        ("c_trunk", "occ/c_hat", "occ/oracle_c_trunk", rows, None),
        ("v2_trunk", "occ/v_hat2", "occ/oracle_v2_trunk", rows, None),
        ("lambda", "occ/proxy_lambda" if "occ/proxy_lambda" in rows[0] else "occ/lambda", "occ/oracle_lambda",
         rows, None),
    ):
        x, y = _pair(subset, proxy, oracle)
        if transform:
            x, y = [transform(v) for v in x], [transform(v) for v in y]
        out[f"fidelity_pearson_{name}"] = pearson(x, y)
        out[f"fidelity_spearman_{name}"] = spearman(x, y)
    x, y = _pair(rows, "occ/c_hat", "occ/oracle_c")
    if len(x) >= window + 2:
        out[f"fidelity_pearson_c_smooth{window}"] = pearson(running_mean(x, window), running_mean(y, window))
    out["fidelity_variants"] = variant_fidelity(rows, moved)
    out.update(per_k_fidelity(rows, steps_per_generation))
    out.update(gap_share(rows))
    for label, subset in (("", rows), ("_moved", moved)):
        out.update(fig8_fidelity(subset, label))
    return out


def per_k_fidelity(rows: list[dict[str, float]], steps_per_generation: int) -> dict[str, float]:
    """Per within-generation step k: r(c_hat, c), r(|c_hat|, |c|), and the mean |c_hat| and |c| (with the default
    baseline |c_hat| grows with k while |c| need not: the proxy measures the displacement, not the geometry)."""
    out: dict[str, float] = {}
    for k in range(1, steps_per_generation + 1):
        subset = [r for r in rows if within_generation_step(r, steps_per_generation) == k]
        x, y = _pair(subset, "occ/c_hat", "occ/oracle_c")
        out[f"fidelity_pearson_c_k{k}"] = pearson(x, y)
        out[f"fidelity_pearson_abs_c_k{k}"] = pearson([abs(v) for v in x], [abs(v) for v in y])
        out[f"fidelity_abs_c_hat_mean_k{k}"] = sum(map(abs, x)) / len(x) if x else float("nan")
        out[f"fidelity_abs_c_mean_k{k}"] = sum(map(abs, y)) / len(y) if y else float("nan")
    return out


def gap_share(rows: list[dict[str, float]]) -> dict[str, float]:
    """How much of delta_MTP (default baseline) is the gap between the heads at the rollout, g = log q_old -
    log pi_old: its share of v_hat2 (sum g^2 / sum delta_MTP^2) and delta_MTP's projection on it
    (sum g*delta_MTP / sum delta_MTP^2); logged in oracle mode when the MTP head's old log-probs exist."""
    kept = [r for r in rows if "occ/probe_gap_sq" in r and "occ/probe_main_old_v2_micro" in r]
    if not kept:
        return {}
    total = sum(r["occ/probe_main_old_v2_micro"] for r in kept)
    if not total > 0:
        return {}
    return {"fidelity_gap_share_v2": sum(r["occ/probe_gap_sq"] for r in kept) / total,
            "fidelity_gap_share_delta_mtp": sum(r["occ/probe_gap_dot"] for r in kept) / total}


def fig8_fidelity(rows: list[dict[str, float]], label: str = "") -> dict[str, float]:
    """Fig. 8's r(|c_hat|, |c|) per step, binned, smoothed and detrended, each beside its shuffle control (the
    pairing destroyed, the trend kept; ``occctl.correlation``); empty below ``FIG8_MIN_POINTS`` points."""
    x, y = _pair(rows, "occ/c_hat", "occ/oracle_c")
    if len(x) < FIG8_MIN_POINTS:
        return {}
    out: dict[str, float] = {}
    for way, res in fig8_correlations([abs(v) for v in x], [abs(v) for v in y]).items():
        out[f"fidelity_fig8{label}_{way}"] = res.r
        out[f"fidelity_fig8{label}_{way}_shuffled"] = res.shuffled
        out[f"fidelity_fig8{label}_{way}_shuffled_hi"] = res.shuffled_hi
    return out


def variant_fidelity(rows: list[dict[str, float]], moved: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per estimator variant (baseline x scope): r of c, v2 and each estimator's lambda against the oracle."""
    table: dict[str, dict[str, float]] = {}
    keys = sorted({k for r in rows for k in r if PROBE.match(k)})
    for key in keys:
        m = PROBE.match(key)
        variant = f"{m['baseline']}/{m['scope']}"
        oracle = {"c": "occ/oracle_c", "v2": "occ/oracle_v2"}.get(m["what"], "occ/oracle_lambda")
        for label, subset in (("", rows), ("_moved", moved)):
            x, y = _pair(subset, key, oracle)
            table.setdefault(variant, {})[f"pearson_{m['what']}{label}"] = pearson(x, y)
            table[variant][f"spearman_{m['what']}{label}"] = spearman(x, y)
    return table
