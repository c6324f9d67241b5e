"""OCC's adaptive coefficient: log-probability proxies -> c_hat, v_hat2 -> lambda_t.

Paper Eq. 13:   lambda_t = lambda_plus * c_hat / (v_hat2 + eps)
                c_hat    = <delta_RL, delta_MTP>        (masked sum over response tokens)
                v_hat2   = ||delta_MTP||^2
with per-token log-probability changes

    delta_RL  = logp_main - logp_old                     (main head, current vs. rollout policy)
    delta_MTP = logp_mtp  - logp_base                    (MTP head vs. a baseline, see below)

The baseline of delta_MTP is the *main head's* old log-probabilities by default, as in the authors'
public code (no "old MTP head" exists there); a backend may pass the MTP head's own old log-probs.

Two estimators:
* ``ratio_of_sums`` (paper, default): the least-squares slope  sum(dRL*dMTP) / (sum(dMTP^2) + eps).
* ``mean_of_ratios`` (reference code): mean over tokens of dRL*dMTP / (dMTP^2 + eps).

Mask: ``mask="response"`` (default) sums over the response tokens only. ``mask="padded"`` reproduces the
authors' arithmetic on a padded [B, R] micro-batch: padding slots contribute zero (their log-probs are zeroed
there) *except* the first slot after each response's end, whose log-probs are real, and every one of the B*R
slots counts in the mean. So with ``mean_of_ratios`` lambda shrinks with the fraction of padding, as theirs does.

Scope: with ``scope="step"`` (default) statistics are accumulated over one optimizer step as running sums:
micro-batch k of a step is weighted with the statistics of micro-batches 1..k (only the last one sees the
whole step's Eq. 13 value); with ``scope="micro_batch"`` each micro-batch stands alone. When a
data-parallel ``all_reduce`` callable is given, they are summed over ranks before lambda is formed.
``ema`` > 0 smooths across steps: lambda is formed from ema * S_past + (1 - ema) * S_now, where S_past is
an exponential moving average of the completed steps' statistics.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

ESTIMATORS = ("ratio_of_sums", "mean_of_ratios")
SCOPES = ("step", "micro_batch")
MASKS = ("response", "padded")

AllReduce = Callable[[torch.Tensor], torch.Tensor]


def padded_mask(mask: torch.Tensor) -> torch.Tensor:  # [B, T] -> [B, T] bool
    """The response tokens plus the first slot after each response's end (the slot the authors' unmasked mean
    picks up with real log-probs; every other padding slot is zero there)."""
    m = mask.detach().to(torch.bool)
    positions = torch.arange(1, m.size(-1) + 1, device=m.device)  # [T]
    end = (positions * m).amax(-1)  # [B] one past each row's last response token (0: empty row)
    leak = torch.zeros_like(m)
    rows = torch.nonzero((end > 0) & (end < m.size(-1))).squeeze(-1)  # [b]
    leak[rows, end[rows]] = True
    return m | leak


def proxy_sums(
    delta_rl: torch.Tensor,  # [B, T]
    delta_mtp: torch.Tensor,  # [B, T]
    mask: torch.Tensor,  # [B, T], 1 on response tokens
    eps: float = 1e-8,
    padded: bool = False,
) -> torch.Tensor:  # [4] float64: sum dRL*dMTP, sum dMTP^2, sum of per-token ratios, n_tokens
    """Masked sufficient statistics of one micro-batch, for both estimators (``padded``: see the module doc)."""
    if delta_rl.shape != delta_mtp.shape or delta_rl.shape != mask.shape:
        raise ValueError(f"shape mismatch: delta_rl {tuple(delta_rl.shape)}, delta_mtp "
                         f"{tuple(delta_mtp.shape)}, mask {tuple(mask.shape)}")
    m = padded_mask(mask) if padded else mask.detach().to(torch.bool)
    d_rl = delta_rl.detach().double()[m]  # [N]
    d_mtp = delta_mtp.detach().double()[m]  # [N]
    product = d_rl * d_mtp
    count = m.numel() if padded else d_rl.numel()
    return torch.stack([
        product.sum(),
        (d_mtp * d_mtp).sum(),
        (product / (d_mtp * d_mtp + eps)).sum(),
        torch.tensor(float(count), dtype=torch.float64, device=d_rl.device),
    ])


def gap_sums(
    delta_mtp: torch.Tensor,  # [B, T] logp_mtp - logp_old (the default baseline)
    gap: torch.Tensor,  # [B, T] logp_mtp_old - logp_old: the heads' gap at the rollout parameters
    mask: torch.Tensor,  # [B, T]
) -> tuple[float, float]:  # sum gap^2, sum gap * delta_MTP over the response tokens
    """How much of the default baseline's delta_MTP = gap + (logp_mtp - logp_mtp_old) is the heads' gap: the
    first sum over sum delta_MTP^2 is the gap's share of v_hat2, the second its projection share."""
    m = mask.detach().to(torch.bool)
    g, d = gap.detach().double()[m], delta_mtp.detach().double()[m]  # [N]
    return float((g * g).sum()), float((g * d).sum())


def lambda_from_sums(
    sums: torch.Tensor,  # [4], as returned by proxy_sums (possibly summed over micro-batches / ranks)
    lambda_plus: float = 1.0,
    eps: float = 1e-8,
    estimator: str = "ratio_of_sums",
    clip_negative: bool = False,
) -> float:
    """lambda_t from accumulated statistics; NaN when the statistics are not finite."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
    c_hat, v_hat2, ratio_sum, n_tokens = (float(x) for x in sums)
    if estimator == "ratio_of_sums":
        return lambda_from_geometry(c_hat, v_hat2, lambda_plus, eps, clip_negative)
    raw = ratio_sum / n_tokens if n_tokens > 0 else 0.0
    if clip_negative:  # Table 4 "OCC-Clip": max(0, c_hat) / v_hat2
        raw = max(raw, 0.0)
    return lambda_plus * raw


def lambda_from_geometry(c: float, v2: float, lambda_plus: float = 1.0, eps: float = 1e-8,
                         clip_negative: bool = False) -> float:
    """Eq. 13 from one (c, v^2) pair: the proxies' sums (``ratio_of_sums``) or the oracle's exact gradients."""
    raw = c / (v2 + eps)
    if clip_negative:  # Table 4 "OCC-Clip": max(0, c) / v^2
        raw = max(raw, 0.0)
    return lambda_plus * raw


@dataclass(frozen=True)
class CalibrationStats:
    """What one micro-batch's lambda was computed from (step-cumulative, all-reduced)."""

    lam: float
    c_hat: float
    v_hat2: float
    n_tokens: int
    fallback: bool  # True when the statistics were not finite and lambda fell back to 0


class Calibrator:
    """Accumulates the delta proxies over an optimizer step and turns them into lambda_t.

    Usage per optimizer step: ``begin_step()``, then ``observe(...)`` once per micro-batch (each
    returns the lambda to apply to that micro-batch, built from everything seen so far in the step).
    """

    def __init__(
        self,
        lambda_plus: float = 1.0,
        eps: float = 1e-8,
        estimator: str = "ratio_of_sums",
        clip_negative: bool = False,
        all_reduce: AllReduce | None = None,
        scope: str = "step",
        ema: float = 0.0,
        mask: str = "response",
    ) -> None:
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; expected one of {SCOPES}")
        if mask not in MASKS:
            raise ValueError(f"unknown mask {mask!r}; expected one of {MASKS}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0; got {eps}")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1); got {ema}")
        self.lambda_plus = lambda_plus
        self.eps = eps
        self.estimator = estimator
        self.clip_negative = clip_negative
        self.all_reduce = all_reduce
        self.scope = scope
        self.ema = ema
        self.mask = mask
        self.nonfinite_count = 0  # how many times lambda fell back to 0
        self._sums = torch.zeros(4, dtype=torch.float64)  # this step (or micro-batch)
        self._past: torch.Tensor | None = None  # EMA over completed steps (ema > 0 only)

    def begin_step(self) -> None:
        if self.ema > 0 and float(self._sums[3]) > 0 and torch.isfinite(self._sums).all():
            done = self._sums.cpu()
            self._past = done if self._past is None else self.ema * self._past + (1.0 - self.ema) * done
        self._sums = torch.zeros(4, dtype=torch.float64)

    def state_dict(self) -> dict[str, object]:
        """What a resumed run needs to form the same lambdas (plain values and CPU tensors)."""
        return {"sums": self._sums.cpu().clone(), "past": None if self._past is None else self._past.clone(),
                "nonfinite_count": self.nonfinite_count}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._sums = torch.as_tensor(state["sums"], dtype=torch.float64).clone()
        past = state.get("past")
        self._past = None if past is None else torch.as_tensor(past, dtype=torch.float64).clone()
        self.nonfinite_count = int(state.get("nonfinite_count", 0))

    def observe(
        self,
        delta_rl: torch.Tensor,  # [B, T]
        delta_mtp: torch.Tensor,  # [B, T]
        mask: torch.Tensor,  # [B, T]
    ) -> CalibrationStats:
        sums = proxy_sums(delta_rl, delta_mtp, mask, self.eps, padded=self.mask == "padded")
        if self.all_reduce is not None:
            sums = self.all_reduce(sums)
        if self.scope == "micro_batch":
            self._sums = torch.zeros_like(sums)
        self._sums = self._sums.to(sums.device) + sums
        used = self._sums
        if self._past is not None:
            used = self.ema * self._past.to(used.device) + (1.0 - self.ema) * used
        lam = lambda_from_sums(used, self.lambda_plus, self.eps, self.estimator, self.clip_negative)
        c_hat, v_hat2, _, n_tokens = (float(x) for x in used)
        fallback = not math.isfinite(lam)
        if fallback:
            self.nonfinite_count += 1
            warnings.warn(
                f"OCC: non-finite proxy statistics (c_hat={c_hat}, v_hat2={v_hat2}); lambda set to 0 "
                f"for this micro-batch ({self.nonfinite_count} so far)",
                RuntimeWarning,
                stacklevel=2,
            )
            lam = 0.0
        return CalibrationStats(lam=lam, c_hat=c_hat, v_hat2=v_hat2, n_tokens=int(n_tokens), fallback=fallback)


def oracle_geometry(
    loss_rl: torch.Tensor,  # scalar, the main head's RL loss
    loss_mtp: torch.Tensor,  # scalar, the MTP loss at coefficient 1
    params: list[torch.Tensor],  # the main model's parameters
) -> tuple[list[float], list[float]]:
    """The true c = <g_RL, g_MTP> and v^2 = ||g_MTP||^2, per parameter of ``params`` (sum them for the
    totals; summing a subset gives the geometry over that subset, e.g. the trunk without embeddings).

    What the delta proxies estimate; expensive (two extra backward passes), for fidelity checks only.
    Gradients are returned by ``torch.autograd.grad`` (the graph is retained), so ``.grad`` and the
    training step are untouched.
    """
    g_rl = torch.autograd.grad(loss_rl, params, retain_graph=True, allow_unused=True)
    g_mtp = torch.autograd.grad(loss_mtp, params, retain_graph=True, allow_unused=True)
    c, v2 = [], []
    for a, b in zip(g_rl, g_mtp):
        b64 = None if b is None else b.double()
        v2.append(0.0 if b64 is None else float((b64 * b64).sum()))
        c.append(0.0 if a is None or b64 is None else float((a.double() * b64).sum()))
    return c, v2
