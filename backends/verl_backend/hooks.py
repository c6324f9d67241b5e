"""The veRL backend's only contact with the OCC core: veRL's micro-batch layout -> ``mtp_objective``.

veRL hands its actor loss (``verl.workers.utils.losses.ppo_loss``) the model output as *nested* full-sequence
tensors (prompt + response, no padding) and the rollout data as a TensorDict; the global normalisers of the
optimizer step arrive as ``dp_size``, ``batch_num_tokens`` and ``global_batch_size``. This module maps them onto
the core's inputs so that the MTP term and lambda_t are exactly the TRL backend's (tested on CPU):

* the main head's log-prob of response token j sits at sequence position P + j - 1 (it predicts token i + 1);
  the MTP head (depth 1) predicts token i + 2, so its log-prob of response token j sits at P + j - 2;
* ``loss_agg_mode`` token-mean -> the core's ``token_mean`` with the step's global token count per DP rank as
  normaliser (= veRL's ``agg_loss``); seq-mean-token-mean -> ``seq_mean_token_mean`` rescaled from this
  micro-batch's sequences to the step's ``global_batch_size`` (= veRL's ``agg_loss``);
* c_hat and v_hat2 are accumulated over the optimizer step (or per micro-batch: ``mtp.occ.scope``) and summed over
  data-parallel ranks (the Calibrator's ``all_reduce``), so every rank applies the same lambda_t; without
  ``mtp.occ.dp_reduce`` each rank forms its own, as the authors' code does;
* regime ce: the MTP head's cross-entropy, a token mean over the step's response tokens, with its gradient
  into trunk, embeddings, lm_head and MTP block (veRL's native MTP loss detaches the lm_head).

Imports torch and the OCC core only; veRL objects are duck-typed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from occctl.occ.calibration import Calibrator
from occctl.occ.mtp_head import MtpHead
from occctl.occ.objective import MtpObjective, mtp_objective
from occctl.occ.regimes import masked_mean

PROFILE_PREFIX = "occctl_"
LOSS_PREFIX = "occctl_"
AGGREGATIONS = {"token-mean": "token_mean", "seq-mean-token-mean": "seq_mean_token_mean"}
POLICY_REGIMES = ("policy", "occ")


@dataclass(frozen=True)
class OccSettings:
    """The spec's MTP/OCC settings as they reach a worker (``actor.profile.occctl_*``; hashable)."""

    regime: str
    coef: float
    plugin_term: bool  # the plugin adds the MTP term (ce over the whole model, policy, occ); else veRL's native
    calibrator_kwargs: tuple[tuple[str, Any], ...]  # occctl.mtp_config.calibrator_kwargs(spec)
    policy_clip: tuple[tuple[str, Any], ...]  # occctl.mtp_config.policy_clip_kwargs(spec)
    dp_reduce: bool  # sum c_hat, v_hat2 over data-parallel ranks (one lambda_t everywhere)
    padded_width: int  # mask "padded": the statistics run over [B, padded_width] (the authors' padded batch)

    @classmethod
    def from_profile(cls, profile: Mapping[str, Any] | None) -> "OccSettings | None":
        if not profile or f"{PROFILE_PREFIX}regime" not in profile:
            return None
        get = lambda name: profile[f"{PROFILE_PREFIX}{name}"]  # noqa: E731
        items = lambda name: tuple(sorted(dict(get(name)).items()))  # noqa: E731
        return cls(regime=str(get("regime")), coef=float(get("coef")), plugin_term=bool(get("plugin_term")),
                   calibrator_kwargs=items("calibrator"), policy_clip=items("policy_clip"),
                   dp_reduce=bool(get("dp_reduce")), padded_width=int(get("padded_width")))

    def calibrator(self, all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Calibrator:
        return Calibrator(**dict(self.calibrator_kwargs), all_reduce=all_reduce if self.dp_reduce else None)


def base_loss_mode(loss_mode: str) -> str:
    """``occctl_gspo`` -> ``gspo``: the veRL policy loss the main head uses."""
    return loss_mode[len(LOSS_PREFIX):] if loss_mode.startswith(LOSS_PREFIX) else loss_mode


def policy_kwargs(actor_config: Any) -> dict[str, Any]:
    """The core policy loss's arguments from veRL's actor config: the main head's clip range, ratio level
    (GSPO: sequence) and aggregation. The dual clip and log-ratio clamp come from ``mtp.policy_clip`` (the
    launch derives veRL's ``clip_ratio_c`` from the same key, so both heads share it)."""
    mode = actor_config.loss_agg_mode
    if mode not in AGGREGATIONS:
        raise ValueError(f"occctl: loss_agg_mode {mode!r} is not supported for the MTP policy term; "
                         f"expected one of {sorted(AGGREGATIONS)}")
    level = "sequence" if base_loss_mode(actor_config.policy_loss.loss_mode) == "gspo" else "token"
    return dict(clip_low=float(actor_config.clip_ratio_low), clip_high=float(actor_config.clip_ratio_high),
                level=level, aggregation=AGGREGATIONS[mode])


def dp_all_reduce(group: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Sum over the data-parallel group (the statistics of every rank, for one lambda_t everywhere)."""

    def all_reduce(t: torch.Tensor) -> torch.Tensor:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM, group=group)
        return t

    return all_reduce


def sequence_lengths(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt lengths [B], response lengths [B]) of veRL's no-padding batch, as ``no_padding_2_padding``."""
    prompts, responses = data["prompts"], data["responses"]
    if prompts.is_nested:
        return prompts.offsets().diff(), responses.offsets().diff()
    attention = data["attention_mask"]
    p = prompts.shape[1]
    return attention[:, :p].sum(dim=1), attention[:, p:].sum(dim=1)


def response_values(
    values: torch.Tensor,  # [N] flat, or nested [B, j]: one value per sequence position
    prompt_lens: torch.Tensor,  # [B]
    response_lens: torch.Tensor,  # [B]
    width: int,  # padded response length R
    lag: int,  # 1: the main head (position i predicts token i+1); 2: MTP depth 1 (predicts i+2)
) -> tuple[torch.Tensor, torch.Tensor]:  # values [B, R], valid [B, R] (False where the position is off the sequence)
    """The value of response token j at flat position ``start + P + j - lag``; zero-padded to R."""
    flat = values.values() if values.is_nested else values
    starts = torch.cat([prompt_lens.new_zeros(1), (prompt_lens + response_lens).cumsum(0)[:-1]])
    rows, valid_rows = [], []
    for start, p, r in zip(starts.tolist(), prompt_lens.tolist(), response_lens.tolist(), strict=True):
        first = p - lag  # position (within the sequence) holding response token 0
        idx = torch.arange(first, first + r, device=flat.device)
        ok = idx >= 0
        picked = flat[(start + idx.clamp(min=0))] * ok
        rows.append(torch.nn.functional.pad(picked, (0, width - r)))
        valid_rows.append(torch.nn.functional.pad(ok, (0, width - r)))
    return torch.stack(rows), torch.stack(valid_rows)


# Metrics whose per-micro-batch values are shares of the optimizer step's value (veRL's normalisation), so they are
# summed over the step's micro-batches, as veRL sums its own ``pg_loss`` (``Metric(aggregation=SUM)``): ``mtp/loss``
# is then the step's MTP term, the same quantity for every algorithm and regime and on both backends.
SUMMED_METRICS = frozenset({"mtp/loss"})


@dataclass(frozen=True)
class MtpTerm:
    loss: torch.Tensor  # scalar, veRL's normalisation (the actor loss it is added to)
    objective: MtpObjective  # the core's output (loss before veRL's rescaling, coef, stats)
    metrics: dict[str, float]


def mtp_term(settings: OccSettings, calibrator: Calibrator, actor_config: Any, model_output: Mapping[str, Any],
             data: Any) -> MtpTerm:
    """This micro-batch's MTP term (regimes ce / policy / occ, computed by the plugin) in veRL's normalisation.

    ce: the MTP head's cross-entropy x coef, a token mean over the optimizer step's response tokens (the step's
    global count, as veRL's token-mean), into every parameter it depends on (the paper's CE). policy / occ: the
    main head's policy loss on the MTP log-probs, with veRL's rollout-correction weights (``rollout_is_weights``,
    when veRL computes them) on each token's loss, as veRL's own losses and the authors' code apply them.
    """
    if not settings.plugin_term:
        raise ValueError(f"occctl: regime {settings.regime!r} uses veRL's native MTP loss, not this term")
    if "mtp_log_probs" not in model_output:
        raise RuntimeError("occctl: the model output has no 'mtp_log_probs': the occctl Megatron patch did not run "
                           "in this worker (is megatron importable, and was backends.verl_backend.plugin loaded via "
                           "VERL_USE_EXTERNAL_MODULES?)")
    names = ("response_mask", "old_log_probs", "advantages") + (
        ("rollout_is_weights",) if "rollout_is_weights" in data.keys() else ())
    fields = data.select(*names).to_padded_tensor()
    response_mask = fields["response_mask"].bool()  # [B, R]
    logp_old, advantages = fields["old_log_probs"], fields["advantages"]  # [B, R], [B, R]
    if "rollout_is_weights" in fields.keys():
        advantages = advantages * fields["rollout_is_weights"]  # [B, R]; = weighting each token's loss (w >= 0)
    prompt_lens, response_lens = sequence_lengths(data)
    width = response_mask.shape[1]
    logp_main, _ = response_values(model_output["log_probs"], prompt_lens, response_lens, width, lag=1)  # [B, R]
    logp_mtp, reachable = response_values(model_output["mtp_log_probs"], prompt_lens, response_lens, width,
                                          lag=2)  # [B, R], with grad
    mask = (response_mask & reachable).to(logp_old.dtype)  # [B, R]
    if calibrator.mask == "padded" and settings.padded_width > width:  # zero slots, as the authors' batch has them
        pad = lambda t: torch.nn.functional.pad(t, (0, settings.padded_width - width))  # noqa: E731  [B, W]
        logp_main, logp_mtp, logp_old, advantages, mask = map(pad, (logp_main, logp_mtp, logp_old, advantages, mask))

    dp_size = int(data["dp_size"])
    tokens_per_rank = float(data["batch_num_tokens"]) / dp_size  # the step's response tokens per DP rank
    kwargs = {**policy_kwargs(actor_config), **dict(settings.policy_clip)} \
        if settings.regime in POLICY_REGIMES else {}
    if kwargs.get("aggregation") == "token_mean":
        kwargs["normalizer"] = tokens_per_rank  # veRL agg_loss: sum / N * dp_size
    out = mtp_objective(settings.regime, calibrator, logp_main=logp_main.detach(), logp_mtp=logp_mtp,
                        logp_old=logp_old, mask=mask, advantages=advantages, coef=settings.coef, **kwargs)
    loss = out.loss
    if settings.regime == "ce":  # core: this micro-batch's token mean; veRL: the step's
        loss = loss * (mask.sum() / tokens_per_rank)
    elif kwargs["aggregation"] == "seq_mean_token_mean":
        # core: mean over this micro-batch's B sequences; veRL: sum over them / global_batch_size * dp_size
        loss = loss * (mask.shape[0] * dp_size / float(data["global_batch_size"]))
    stats = out.stats
    metrics = {
        "mtp/loss": float(loss.detach()),  # this micro-batch's share of the step's term: SUMMED_METRICS
        "mtp/coef": out.coef,
        "mtp/nll": float(-masked_mean(logp_mtp.detach(), mask)),
        "occ/lambda": stats.lam,
        "occ/proxy_lambda": stats.lam,  # as on TRL (where an oracle lambda_t may replace the proxies')
        "occ/c_hat": stats.c_hat,
        "occ/v_hat2": stats.v_hat2,
        "occ/nonfinite": float(calibrator.nonfinite_count),
    }
    return MtpTerm(loss=loss, objective=out, metrics=metrics)


def mtp_head_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of occctl's MTP head for ``model`` (a meta-device model: nothing is allocated)."""
    with torch.device("meta"):
        head = MtpHead.for_model(model)
    return {k: tuple(v.shape) for k, v in head.state_dict().items()}
