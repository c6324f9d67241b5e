"""Proxy vs. oracle: how well c_hat, v_hat2 and lambda_t track the true gradient geometry (paper Fig. 8).

Reads the per-step metric history of a run with oracle mode (``mtp.occ.oracle_every``) and returns
Pearson / Spearman r. Besides the proxies the run trained with, oracle mode logs every estimator variant
on the same trajectory (``occ/probe_<baseline>_<quantity>_<scope>``), so variants compare paired.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

from scipy import stats

PROBE = re.compile(r"^occ/probe_(?P<baseline>main_old|mtp_old)_(?P<what>c|v2|lambda_\w+?)_(?P<scope>micro|step)$")


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson r; NaN when fewer than 3 pairs or a constant series."""
    if len(x) != len(y):
        raise ValueError("series differ in length")
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(stats.pearsonr(x, y).statistic)


def spearman(x: list[float], y: list[float]) -> float:
    if len(x) != len(y):
        raise ValueError("series differ in length")
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(x, y).statistic)


def rolling_mean(x: list[float], window: int) -> list[float]:
    return [sum(x[i - window + 1:i + 1]) / window for i in range(window - 1, len(x))]


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
    moved = [r for r in rows if (int(r["step"]) - 1) % steps_per_generation != 0]
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
        out[f"fidelity_pearson_c_smooth{window}"] = pearson(rolling_mean(x, window), rolling_mean(y, window))
    out["fidelity_variants"] = variant_fidelity(rows, moved)
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
