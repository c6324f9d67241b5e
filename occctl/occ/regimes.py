"""The four MTP regimes of the paper -> the MTP loss term a backend adds to its RL loss.

* ``detach``: cross-entropy of the MTP head on the sampled response tokens, x ``coef``. The backend computes
  the MTP log-probs with ``isolated=True`` (trunk hidden states, token embeddings *and* the shared lm_head
  weight detached), so no MTP gradient reaches any main-model parameter.
* ``ce``: the same cross-entropy, not detached, x ``coef``.
* ``policy``: the RL policy loss of the main head (same clip range, ratio level and aggregation) applied to the
  MTP head's log-probs, with the advantages scaled by the fixed ``coef``. The backends add veRL's dual clip and
  its +-20 log-ratio clamp to this term (``mtp.policy_clip``), as the authors' code gets them from veRL's
  vanilla policy loss; the MTP ratio q/pi_old compares two different predictors and is often far from 1.
* ``occ``: the same policy loss with the advantages scaled by the adaptive lambda_t (``calibration.py``).

A *draft loss* (``mtp.draft_loss``) can be added to any regime to keep the head a good drafter; it is computed on
MTP logits with every main-model input detached (as ``detach``), so it moves the head only:

* ``ce``: cross-entropy of the MTP head on the sampled response tokens.
* ``soft_ce``: cross-entropy of the MTP head toward the main head's detached distribution for the same target
  token (SkyRL's decoupled draft loss): the head learns to draft what the policy would sample.

Scaling the *advantage* (not the loss) is what the authors' code does; for a positive coefficient the two
are identical, for a negative lambda_t the clipped surrogate stays pessimistic for the flipped advantage.
The importance ratio of the MTP head is taken against ``logp_old`` = the main head's rollout log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

REGIMES = ("detach", "ce", "policy", "occ")
DRAFT_LOSSES = ("none", "ce", "soft_ce")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean")
IS_LEVELS = ("token", "sequence")


def isolates_main_model(regime: str) -> bool:
    """Whether the regime must compute MTP log-probs with every main-model input detached."""
    return regime == "detach"


def token_logprobs(
    logits: torch.Tensor,  # [B, T, V]
    tokens: torch.Tensor,  # [B, T]
    temperature: float = 1.0,
) -> torch.Tensor:  # [B, T]
    """log softmax(logits / temperature) gathered at ``tokens`` (float32)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def policy_loss(
    logp: torch.Tensor,  # [B, T] current log-probs (with grad)
    logp_old: torch.Tensor,  # [B, T] rollout-policy log-probs
    advantages: torch.Tensor,  # [B] or [B, T]
    mask: torch.Tensor,  # [B, T]
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    level: str = "token",
    aggregation: str = "token_mean",
    normalizer: torch.Tensor | float | None = None,
    dual_clip: float | None = None,
    log_ratio_clamp: float | None = None,
    token_weights: torch.Tensor | None = None,  # [B, T] or [B, 1], no grad
) -> torch.Tensor:  # scalar
    """PPO-clip surrogate, as GRPO / DAPO / GSPO compute it.

    ``level="sequence"`` is GSPO's length-normalised sequence importance ratio. ``aggregation``:
    ``token_mean`` = sum over tokens / ``normalizer`` (default: the number of masked tokens; DAPO passes a
    global token count), ``seq_mean_token_mean`` = mean over sequences of per-sequence token means (GRPO,
    GSPO). ``dual_clip`` (veRL's ``clip_ratio_c``) caps the loss of negative-advantage tokens at -A*c;
    ``log_ratio_clamp`` clamps the per-token log-ratio to +-that value before anything else (veRL: 20).
    ``token_weights`` multiply the clipped per-token loss before aggregation: TRL's vLLM importance-sampling
    correction (``importance_sampling_ratio``, trainer over vLLM's sampling probabilities, truncated or masked),
    applied to the MTP term exactly as TRL applies it to the main head's.
    """
    if level not in IS_LEVELS:
        raise ValueError(f"unknown importance-sampling level {level!r}; expected one of {IS_LEVELS}")
    mask = mask.to(logp.dtype)
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)  # [B, 1]
    log_ratio = logp - logp_old  # [B, T]
    if log_ratio_clamp is not None:
        log_ratio = torch.clamp(log_ratio, -log_ratio_clamp, log_ratio_clamp)
    if level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)  # [B, 1]
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = -torch.min(ratio * advantages, clipped * advantages)  # [B, T] or [B, 1]
    if dual_clip is not None:
        per_token = torch.where(advantages < 0, torch.min(per_token, -advantages * dual_clip), per_token)
    if token_weights is not None:
        per_token = per_token * token_weights.detach()
    per_token = per_token.expand_as(mask)
    if aggregation == "token_mean":
        denom = mask.sum().clamp(min=1.0) if normalizer is None else normalizer
        return (per_token * mask).sum() / denom
    if aggregation == "seq_mean_token_mean":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    raise ValueError(f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS}")


@dataclass(frozen=True)
class MtpLossOutput:
    loss: torch.Tensor  # scalar, the term to add to the RL loss (before gradient-accumulation scaling)
    coef: float  # the coefficient applied: coef for detach/ce/policy, lambda_t for occ


def mtp_loss(
    regime: str,
    logp_mtp: torch.Tensor,  # [B, T] MTP-head log-probs of the sampled response tokens (with grad)
    mask: torch.Tensor,  # [B, T]
    *,
    coef: float,
    lam: float | None = None,
    logp_old: torch.Tensor | None = None,  # [B, T], policy / occ only
    advantages: torch.Tensor | None = None,  # [B] or [B, T], policy / occ only
    **policy_kwargs,
) -> MtpLossOutput:
    """The regime's MTP loss term. ``policy_kwargs`` are those of :func:`policy_loss`."""
    if regime in ("detach", "ce"):
        nll = -masked_mean(logp_mtp, mask.to(logp_mtp.dtype))
        return MtpLossOutput(loss=coef * nll, coef=coef)
    if regime in ("policy", "occ"):
        if logp_old is None or advantages is None:
            raise ValueError(f"regime {regime!r} needs logp_old and advantages")
        scale = coef if regime == "policy" else lam
        if scale is None:
            raise ValueError("regime 'occ' needs lam (from the Calibrator)")
        loss = policy_loss(logp_mtp, logp_old, advantages * scale, mask, **policy_kwargs)
        return MtpLossOutput(loss=loss, coef=float(scale))
    raise ValueError(f"unknown regime {regime!r}; expected one of {REGIMES}")


def draft_loss(
    kind: str,
    logits_mtp: torch.Tensor,  # [B, T, V] MTP logits computed with every main-model input detached
    tokens: torch.Tensor,  # [B, T] the sampled response tokens
    mask: torch.Tensor,  # [B, T]
    logits_main: torch.Tensor | None = None,  # [B, T, V] the main head's logits for the same tokens (soft_ce)
    temperature: float = 1.0,
) -> torch.Tensor:  # scalar
    """The decoupled draft loss (see the module docstring), a masked token mean."""
    mask = mask.to(torch.float32)
    if kind == "ce":
        return -masked_mean(token_logprobs(logits_mtp, tokens, temperature), mask)
    if kind == "soft_ce":
        if logits_main is None:
            raise ValueError("draft loss 'soft_ce' needs the main head's logits")
        target = torch.softmax(logits_main.detach().float() / temperature, dim=-1)  # [B, T, V]
        logq = torch.log_softmax(logits_mtp.float() / temperature, dim=-1)  # [B, T, V]
        return masked_mean(-(target * logq).sum(-1), mask)
    raise ValueError(f"unknown draft loss {kind!r}; expected one of {DRAFT_LOSSES[1:]}")
