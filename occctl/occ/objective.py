"""One micro-batch's MTP objective: delta proxies -> calibrator -> the regime's loss term.

This is the glue every backend calls with its own tensors (the TRL trainer hook and the veRL plugin
alike), so both backends form delta_RL, delta_MTP, lambda_t and the MTP loss the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from occctl.occ.calibration import CalibrationStats, Calibrator
from occctl.occ.regimes import mtp_loss

BASELINES = ("main_old", "mtp_old")


@dataclass(frozen=True)
class MtpObjective:
    loss: torch.Tensor  # scalar: the MTP term to add to the RL loss (before gradient-accumulation scaling)
    coef: float  # the coefficient applied (coef, or lambda_t for occ)
    stats: CalibrationStats  # what lambda_t was formed from (computed in every regime, for logging)


def deltas(
    logp_main: torch.Tensor,  # [B, T] main head, current parameters
    logp_mtp: torch.Tensor,  # [B, T] MTP head, current parameters
    logp_old: torch.Tensor,  # [B, T] main head, rollout parameters
    logp_mtp_old: torch.Tensor | None = None,  # [B, T] MTP head, rollout parameters (baseline "mtp_old")
) -> tuple[torch.Tensor, torch.Tensor]:  # delta_RL, delta_MTP, both [B, T], detached
    """delta_RL = logp_main - logp_old; delta_MTP = logp_mtp - (logp_mtp_old, else logp_old).

    The authors' code measures delta_MTP against the main head's old log-probs ("main_old"); with the
    MTP head's own rollout-time log-probs ("mtp_old") delta_MTP is the change the updates made to the
    MTP head, the quantity Eq. 12 linearises.
    """
    base = logp_old if logp_mtp_old is None else logp_mtp_old
    return logp_main.detach() - logp_old, logp_mtp.detach() - base


def mtp_objective(
    regime: str,
    calibrator: Calibrator,
    *,
    logp_main: torch.Tensor,  # [B, T]
    logp_mtp: torch.Tensor,  # [B, T], with grad
    logp_old: torch.Tensor,  # [B, T]
    mask: torch.Tensor,  # [B, T]
    advantages: torch.Tensor,  # [B] or [B, T]
    coef: float,
    logp_mtp_old: torch.Tensor | None = None,  # [B, T]
    lam: float | None = None,
    **policy_kwargs,
) -> MtpObjective:
    """Observe this micro-batch's proxies, then build the regime's MTP loss with the resulting lambda_t.

    ``lam`` (occ only) replaces the proxies' lambda_t by one computed elsewhere (the oracle's, from the exact
    gradients); the proxies are still observed, so ``stats`` holds what the proxies would have applied.
    """
    delta_rl, delta_mtp = deltas(logp_main, logp_mtp, logp_old, logp_mtp_old)
    stats = calibrator.observe(delta_rl, delta_mtp, mask)
    out = mtp_loss(regime, logp_mtp, mask, coef=coef, lam=stats.lam if lam is None else lam, logp_old=logp_old,
                   advantages=advantages, **policy_kwargs)
    return MtpObjective(loss=out.loss, coef=out.coef, stats=stats)
