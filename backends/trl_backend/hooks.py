"""The TRL backend's only contact with the OCC core: a GRPOTrainer that adds the regime's MTP loss.

One gradient-carrying forward per micro-batch, as in plain GRPO: a forward hook on the trunk keeps its
last hidden state, TRL's own per-token log-probs of the main head are kept on the way through, and the
MTP head runs on the kept hidden state. TRL's GRPO/DAPO/GSPO loss, clipping and metrics stay TRL's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from occctl.occ.calibration import Calibrator, oracle_geometry
from occctl.occ.mtp_head import draft_acceptance, mtp_logits
from occctl.occ.regimes import isolates_main_model, masked_mean, mtp_loss, token_logprobs


@dataclass
class MtpSettings:
    regime: str
    coef: float
    calibrator: Calibrator
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    oracle_every: int = 0


class MtpGRPOTrainer(GRPOTrainer):
    """GRPOTrainer + an MTP head at ``model.mtp_head`` trained in one of the four regimes (None: plain GRPO)."""

    def __init__(self, *args: Any, mtp: MtpSettings | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mtp = mtp
        self._keep_logps = False
        self._kept_logps: torch.Tensor | None = None
        self._calibrated_step = -1

    def _get_per_token_logps_and_entropies(self, *args: Any, **kwargs: Any):
        out = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._keep_logps:
            self._kept_logps = out[0]
        return out

    def _compute_loss(self, model, inputs):
        if self.mtp is None:
            return super()._compute_loss(model, inputs)
        unwrapped = self.accelerator.unwrap_model(model)
        kept: dict[str, Any] = {}

        def keep_hidden(module, args, kwargs, output):
            kept["hidden"] = output.last_hidden_state
            kept["position_ids"] = kwargs.get("position_ids")

        handle = unwrapped.base_model.register_forward_hook(keep_hidden, with_kwargs=True)
        self._keep_logps = True
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            handle.remove()
            self._keep_logps = False
        logp_main, self._kept_logps = self._kept_logps, None
        return loss + self._mtp_term(unwrapped, inputs, kept, logp_main, loss)

    def _mtp_term(self, unwrapped, inputs, kept: dict[str, Any], logp_main: torch.Tensor,
                  loss_rl: torch.Tensor) -> torch.Tensor:
        mtp, mode = self.mtp, ("train" if self.model.training else "eval")
        prompt_ids, completion_ids = inputs["prompt_ids"], inputs["completion_ids"]
        p, c = prompt_ids.size(1), completion_ids.size(1)
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+C]
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)  # [B, C]
        mask = mask.to(logp_main.dtype)
        logits = mtp_logits(unwrapped, unwrapped.mtp_head, kept["hidden"], input_ids, attention_mask,
                            slice(p - 2, p + c - 2), kept["position_ids"],
                            isolated=isolates_main_model(mtp.regime))  # [B, C, V]
        logp_mtp = token_logprobs(logits, completion_ids, self.temperature)  # [B, C]
        logp_old = inputs.get("old_per_token_logps")
        logp_old = logp_main.detach() if logp_old is None else logp_old  # [B, C]

        if mode == "train" and self.state.global_step != self._calibrated_step:
            mtp.calibrator.begin_step()
            self._calibrated_step = self.state.global_step
        stats = mtp.calibrator.observe(logp_main.detach() - logp_old, logp_mtp.detach() - logp_old, mask)

        ga = self.current_gradient_accumulation_steps if mode == "train" else 1
        kwargs, scale = dict(mtp.policy_kwargs), 1.0 / ga
        if mtp.regime in ("policy", "occ") and kwargs.get("aggregation") == "token_mean":
            # DAPO: the same global token normaliser as TRL's main loss (already scaled for accumulation)
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                normalizer = normalizer * ga / self.args.steps_per_generation
            kwargs["normalizer"], scale = normalizer, 1.0
        out = mtp_loss(mtp.regime, logp_mtp, mask, coef=mtp.coef, lam=stats.lam, logp_old=logp_old,
                       advantages=inputs["advantages"], **kwargs)

        metrics = self._metrics[mode]
        metrics["mtp/loss"].append(out.loss.item())
        metrics["mtp/coef"].append(out.coef)
        metrics["mtp/nll"].append(-masked_mean(logp_mtp.detach(), mask).item())
        metrics["mtp/acc"].append(draft_acceptance(logits.detach(), completion_ids, mask))
        metrics["occ/lambda"].append(stats.lam)
        metrics["occ/c_hat"].append(stats.c_hat)
        metrics["occ/v_hat2"].append(stats.v_hat2)
        metrics["occ/nonfinite"].append(float(mtp.calibrator.nonfinite_count))
        if mode == "train" and mtp.oracle_every and self.state.global_step % mtp.oracle_every == 0:
            unit = mtp_loss(mtp.regime, logp_mtp, mask, coef=1.0, lam=1.0, logp_old=logp_old,
                            advantages=inputs["advantages"], **kwargs).loss * scale
            head_ids = {id(p) for p in unwrapped.mtp_head.parameters()}
            main = [p for p in unwrapped.parameters() if p.requires_grad and id(p) not in head_ids]
            c, v2 = oracle_geometry(loss_rl, unit, main)
            metrics["occ/oracle_c"].append(c)
            metrics["occ/oracle_v2"].append(v2)
            metrics["occ/oracle_lambda"].append(c / v2 if v2 > 0 else 0.0)
        return out.loss * scale

    def _clip_grad_norm(self, model):
        """In ``detach`` the MTP head is clipped on its own, so its gradient cannot rescale the main model's."""
        if self.mtp is None or not isolates_main_model(self.mtp.regime):
            return super()._clip_grad_norm(model)
        head = list(self.accelerator.unwrap_model(model).mtp_head.parameters())
        head_ids = {id(p) for p in head}
        main = [p for p in model.parameters() if id(p) not in head_ids]
        norm = self.accelerator.clip_grad_norm_(main, self.args.max_grad_norm)
        self.accelerator.clip_grad_norm_(head, self.args.max_grad_norm)
        return norm


class MetricsCallback(TrainerCallback):
    """Hands every numeric log entry (per optimizer step) to ``sink(step, metrics)``."""

    def __init__(self, sink: Callable[[int, dict[str, float]], None]) -> None:
        self.sink = sink

    def on_log(self, args, state, control, logs=None, **kwargs):
        numeric = {k: float(v) for k, v in (logs or {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if numeric:
            self.sink(state.global_step, numeric)
