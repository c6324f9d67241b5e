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

from occctl.errors import RunError
from occctl.occ.calibration import ESTIMATORS, Calibrator, lambda_from_sums, oracle_geometry, proxy_sums
from occctl.occ.mtp_head import draft_acceptance, mtp_logits
from occctl.occ.objective import deltas, mtp_objective
from occctl.occ.regimes import isolates_main_model, masked_mean, mtp_loss, token_logprobs


class NonFiniteLossError(RunError):
    """A NaN/Inf training loss: the run stops instead of training on garbage."""


@dataclass
class MtpSettings:
    regime: str
    coef: float
    calibrator: Calibrator
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    oracle_every: int = 0
    baseline: str = "main_old"  # delta_MTP against the main head's ("main_old") or the MTP head's old log-probs
    oracle_lambda: bool = False  # train occ with lambda_t from the exact gradient geometry of each micro-batch


class MtpGRPOTrainer(GRPOTrainer):
    """GRPOTrainer + an MTP head at ``model.mtp_head`` trained in one of the four regimes (None: plain GRPO)."""

    def __init__(self, *args: Any, mtp: MtpSettings | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mtp = mtp
        self._keep_logps = False
        self._kept_logps: torch.Tensor | None = None
        self._calibrated_step = -1
        self._mtp_old_chunks: list[torch.Tensor] | None = None  # collected at generation time (baseline mtp_old)
        self._probe_sums: dict[str, torch.Tensor] = {}  # oracle mode: step-cumulative sums per baseline

    def _generate_and_score_completions(self, inputs):
        if self.mtp is None or (self.mtp.baseline != "mtp_old" and not self.mtp.oracle_every):
            return super()._generate_and_score_completions(inputs)
        self._mtp_old_chunks = []
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            chunks, self._mtp_old_chunks = self._mtp_old_chunks, None
        if "old_per_token_logps" in output and chunks:  # same forward, same order as TRL's old log-probs
            output["old_mtp_logps"] = torch.cat(chunks, dim=0)
        return output

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        handle = None
        if self._mtp_old_chunks is not None and model is self.model:  # the rollout-time (old) forward of the
            # policy (not a reference model's): the MTP head rides along
            unwrapped = self.accelerator.unwrap_model(model)

            def mtp_old(module, f_args, f_kwargs, output):
                ids, attn = f_kwargs["input_ids"], f_kwargs["attention_mask"]
                logits = self._mtp_logits_for(unwrapped, output.last_hidden_state, ids, attn,
                                              f_kwargs.get("position_ids"), logits_to_keep, isolated=True)
                self._mtp_old_chunks.append(token_logprobs(logits, ids[:, -logits_to_keep:], self.temperature))

            handle = unwrapped.base_model.register_forward_hook(mtp_old, with_kwargs=True)
        try:
            out = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                             *args, **kwargs)
        finally:
            if handle is not None:
                handle.remove()
        if self._keep_logps:
            self._kept_logps = out[0]
        return out

    @staticmethod
    def _mtp_logits_for(unwrapped, hidden, input_ids, attention_mask, position_ids, completion_len: int,
                        isolated: bool) -> torch.Tensor:  # [B, C, V]
        p = input_ids.size(1) - completion_len
        return mtp_logits(unwrapped, unwrapped.mtp_head, hidden, input_ids, attention_mask,
                          slice(p - 2, p + completion_len - 2), position_ids, isolated=isolated)

    def _compute_loss(self, model, inputs):
        loss = self._compute_loss_with_mtp(model, inputs)
        if not torch.isfinite(loss):  # stop before the optimizer step: the last checkpoint stays clean
            raise NonFiniteLossError(
                f"the loss is {loss.item()} at optimizer step {self.state.global_step + 1}; training stopped "
                "before updating the weights", hint="rerunning the same command resumes from the last checkpoint "
                "(train.save_every); lower train.lr or check the rewards before you do")
        return loss

    def _compute_loss_with_mtp(self, model, inputs):
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
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)  # [B, P+C]
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        mask = inputs["completion_mask"] * inputs.get("tool_mask", 1)  # [B, C]
        mask = mask.to(logp_main.dtype)
        logits = self._mtp_logits_for(unwrapped, kept["hidden"], input_ids, attention_mask, kept["position_ids"],
                                      completion_ids.size(1), isolated=isolates_main_model(mtp.regime))  # [B, C, V]
        logp_mtp = token_logprobs(logits, completion_ids, self.temperature)  # [B, C]
        logp_old = inputs.get("old_per_token_logps")
        logp_old = logp_main.detach() if logp_old is None else logp_old  # [B, C]
        logp_mtp_old = inputs.get("old_mtp_logps") if mtp.baseline == "mtp_old" else None
        if mtp.baseline == "mtp_old" and logp_mtp_old is None:
            logp_mtp_old = logp_mtp.detach()  # no old log-probs: the policy has not moved, delta = 0

        if mode == "train" and self.state.global_step != self._calibrated_step:
            mtp.calibrator.begin_step()
            self._calibrated_step = self.state.global_step
            self._probe_sums = {}

        ga = self.current_gradient_accumulation_steps if mode == "train" else 1
        kwargs, scale = dict(mtp.policy_kwargs), 1.0 / ga
        if mtp.regime in ("policy", "occ") and kwargs.get("aggregation") == "token_mean":
            # DAPO: the same global token normaliser as TRL's main loss (already scaled for accumulation)
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                normalizer = normalizer * ga / self.args.steps_per_generation
            kwargs["normalizer"], scale = normalizer, 1.0
        oracle_every_step = mode == "train" and mtp.oracle_every and self.state.global_step % mtp.oracle_every == 0
        lam = None
        if mode == "train" and (mtp.oracle_lambda or oracle_every_step):
            unit = mtp_loss(mtp.regime, logp_mtp, mask, coef=1.0, lam=1.0, logp_old=logp_old,
                            advantages=inputs["advantages"], **kwargs).loss * scale
            slope = self._log_oracle(unwrapped, loss_rl, unit)
            if mtp.oracle_lambda:
                lam = mtp.calibrator.lambda_plus * (max(slope, 0.0) if mtp.calibrator.clip_negative else slope)
        out = mtp_objective(mtp.regime, mtp.calibrator, logp_main=logp_main, logp_mtp=logp_mtp, logp_old=logp_old,
                            mask=mask, advantages=inputs["advantages"], coef=mtp.coef, logp_mtp_old=logp_mtp_old,
                            lam=lam, **kwargs)
        stats = out.stats

        metrics = self._metrics[mode]
        metrics["mtp/loss"].append(out.loss.item())
        metrics["mtp/coef"].append(out.coef)
        metrics["mtp/nll"].append(-masked_mean(logp_mtp.detach(), mask).item())
        metrics["mtp/acc"].append(draft_acceptance(logits.detach(), completion_ids, mask))
        metrics["occ/lambda"].append(out.coef if mtp.regime == "occ" else stats.lam)  # the lambda_t applied
        metrics["occ/proxy_lambda"].append(stats.lam)  # what the delta proxies give (= occ/lambda unless oracle)
        metrics["occ/c_hat"].append(stats.c_hat)
        metrics["occ/v_hat2"].append(stats.v_hat2)
        metrics["occ/nonfinite"].append(float(mtp.calibrator.nonfinite_count))
        if oracle_every_step:
            self._log_probe(logp_main, logp_mtp, logp_old, inputs.get("old_mtp_logps"), mask)
        return out.loss * scale

    def _log_probe(self, logp_main, logp_mtp, logp_old, logp_mtp_old, mask) -> None:
        """Every estimator variant on the same trajectory, for the fidelity comparison (oracle mode only):
        both delta_MTP baselines x {this micro-batch, the step so far} x both estimators."""
        cal, metrics = self.mtp.calibrator, self._metrics["train"]
        for baseline, base in (("main_old", None), ("mtp_old", logp_mtp_old)):
            if baseline == "mtp_old" and base is None:
                continue
            micro = proxy_sums(*deltas(logp_main, logp_mtp, logp_old, base), mask, cal.eps)
            step = self._probe_sums[baseline] = self._probe_sums.get(baseline, torch.zeros_like(micro)) + micro
            for scope, sums in (("micro", micro), ("step", step)):
                metrics[f"occ/probe_{baseline}_c_{scope}"].append(float(sums[0]))
                metrics[f"occ/probe_{baseline}_v2_{scope}"].append(float(sums[1]))
                for estimator in ESTIMATORS:
                    lam = lambda_from_sums(sums, 1.0, cal.eps, estimator)
                    metrics[f"occ/probe_{baseline}_lambda_{estimator}_{scope}"].append(lam)

    def _log_oracle(self, unwrapped, loss_rl: torch.Tensor, loss_mtp_unit: torch.Tensor) -> float:
        """True c, v^2 over all main-model parameters and over the trunk alone (no embeddings, no lm_head);
        returns the oracle slope c / (v^2 + eps) over all main-model parameters."""
        head_ids = {id(p) for p in unwrapped.mtp_head.parameters()}
        shared_ids = {id(unwrapped.get_input_embeddings().weight), id(unwrapped.get_output_embeddings().weight)}
        main = [p for p in unwrapped.parameters() if p.requires_grad and id(p) not in head_ids]
        c, v2 = oracle_geometry(loss_rl, loss_mtp_unit, main)
        trunk = [i for i, p in enumerate(main) if id(p) not in shared_ids]
        metrics, eps = self._metrics["train"], self.mtp.calibrator.eps
        slopes = {}
        for suffix, idx in (("", range(len(main))), ("_trunk", trunk)):
            c_sum, v2_sum = sum(c[i] for i in idx), sum(v2[i] for i in idx)
            slopes[suffix] = c_sum / (v2_sum + eps)
            metrics[f"occ/oracle_c{suffix}"].append(c_sum)
            metrics[f"occ/oracle_v2{suffix}"].append(v2_sum)
            metrics[f"occ/oracle_lambda{suffix}"].append(slopes[suffix])
        return slopes[""]

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


CALIBRATOR_STATE = "occ_calibrator.pt"


class CalibratorCheckpoint(TrainerCallback):
    """Saves the OCC calibrator's state beside each TRL checkpoint (the trainer restores the rest)."""

    def __init__(self, calibrator: Calibrator) -> None:
        self.calibrator = calibrator

    def on_save(self, args, state, control, **kwargs):
        path = f"{args.output_dir}/checkpoint-{state.global_step}/{CALIBRATOR_STATE}"
        torch.save(self.calibrator.state_dict(), path)


class OnSave(TrainerCallback):
    """Calls ``commit(step)`` once a checkpoint is on disk (the runner then publishes metrics up to it)."""

    def __init__(self, commit: Callable[[int], None]) -> None:
        self.commit = commit

    def on_save(self, args, state, control, **kwargs):
        self.commit(state.global_step)


class PeriodicEval(TrainerCallback):
    """Calls ``evaluate(step)`` every ``every`` optimizer steps before the last (the last is evaluated anyway)."""

    def __init__(self, every: int, last_step: int, evaluate: Callable[[int], None]) -> None:
        self.every, self.last_step, self.evaluate = every, last_step, evaluate

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 and state.global_step < self.last_step:
            self.evaluate(state.global_step)
