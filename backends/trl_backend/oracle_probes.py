"""The oracle and probe diagnostics ``MtpGRPOTrainer`` logs (oracle mode, ``mtp.occ.oracle_every_steps``; the
oracle and hidden lambdas): the true gradient geometry c, v^2 of a micro-batch, at the parameters or at the trunk's
output, and every delta-proxy estimator variant on the same trajectory. Each function appends to ``metrics``, the
trainer's ``_metrics["train"]`` (TRL averages every key over the step's micro-batches)."""

from __future__ import annotations

import torch

from occctl.occ.calibration import (ESTIMATORS, gap_sums, lambda_from_geometry, lambda_from_sums, oracle_geometry,
                                    proxy_sums)
from occctl.occ.objective import deltas


def log_probe(metrics, step_sums: dict[str, torch.Tensor], prev_sums: dict[str, torch.Tensor], logp_main, logp_mtp,
              logp_old, logp_mtp_old, mask, eps: float, last_micro_batch: bool) -> None:
    """Every estimator variant on the same trajectory, for the fidelity comparison (oracle mode only):
    both delta_MTP baselines x {this micro-batch, the step's running sums} x both estimators; and, for
    the step-scope decision, lambda from the whole step's sums (``_full``, logged once, at the step's last
    micro-batch) and from the previous step's complete sums (``_prev``). ``step_sums`` (this step's, per baseline)
    gains this micro-batch's sums."""
    if logp_mtp_old is not None:
        gap_sq, gap_dot = gap_sums(logp_mtp.detach() - logp_old, logp_mtp_old - logp_old, mask)
        metrics["occ/probe_gap_sq"].append(gap_sq)
        metrics["occ/probe_gap_dot"].append(gap_dot)
    for baseline, base in (("main_old", None), ("mtp_old", logp_mtp_old)):
        if baseline == "mtp_old" and base is None:
            continue
        micro = proxy_sums(*deltas(logp_main, logp_mtp, logp_old, base), mask, eps)
        step = step_sums[baseline] = step_sums.get(baseline, torch.zeros_like(micro)) + micro
        scopes = [("micro", micro), ("step", step)]
        if last_micro_batch:
            scopes.append(("full", step))
        if baseline in prev_sums:
            scopes.append(("prev", prev_sums[baseline]))
        for scope, sums in scopes:
            metrics[f"occ/probe_{baseline}_c_{scope}"].append(float(sums[0]))
            metrics[f"occ/probe_{baseline}_v2_{scope}"].append(float(sums[1]))
            for estimator in ESTIMATORS:
                lam = lambda_from_sums(sums, 1.0, eps, estimator)
                metrics[f"occ/probe_{baseline}_lambda_{estimator}_{scope}"].append(lam)


def log_applied_residual(metrics, unwrapped, applied: torch.Tensor, unit_loss: torch.Tensor, lam: float) -> None:
    """|g_applied - lam * g_MTP(+1)| / |lam * g_MTP(+1)| on the MTP head's parameters: 0 where the oracle
    applies exactly the gradient its slope was measured for (``oracle_negative: loss_scale``, or lam >= 0)."""
    head = [p for p in unwrapped.mtp_head.parameters() if p.requires_grad]
    g_applied = torch.autograd.grad(applied, head, retain_graph=True, allow_unused=True)
    g_unit = torch.autograd.grad(unit_loss, head, retain_graph=True, allow_unused=True)
    diff = sq = 0.0
    for a, u in zip(g_applied, g_unit):
        if a is None and u is None:
            continue
        a, u = (torch.zeros_like(u) if a is None else a), (torch.zeros_like(a) if u is None else u)
        diff += (a - lam * u).double().pow(2).sum().item()
        sq += (lam * u).double().pow(2).sum().item()
    metrics["occ/oracle_applied_residual"].append((diff / sq) ** 0.5 if sq > 0 else 0.0)


def log_oracle(metrics, unwrapped, loss_rl: torch.Tensor, loss_mtp_unit: torch.Tensor,
               eps: float) -> tuple[float, float]:
    """True c, v^2 over all main-model parameters and over the trunk alone (no embeddings, no lm_head), each
    logged with its slope; returns (c, v^2) over all main-model parameters."""
    head_ids = {id(p) for p in unwrapped.mtp_head.parameters()}
    shared_ids = {id(unwrapped.get_input_embeddings().weight), id(unwrapped.get_output_embeddings().weight)}
    main = [p for p in unwrapped.parameters() if p.requires_grad and id(p) not in head_ids]
    c, v2 = oracle_geometry(loss_rl, loss_mtp_unit, main)
    trunk = [i for i, p in enumerate(main) if id(p) not in shared_ids]
    totals = {}
    for suffix, idx in (("", range(len(main))), ("_trunk", trunk)):
        c_sum, v2_sum = totals[suffix] = sum(c[i] for i in idx), sum(v2[i] for i in idx)
        metrics[f"occ/oracle_c{suffix}"].append(c_sum)
        metrics[f"occ/oracle_v2{suffix}"].append(v2_sum)
        metrics[f"occ/oracle_lambda{suffix}"].append(lambda_from_geometry(c_sum, v2_sum, 1.0, eps))
    return totals[""]


def hidden_geometry(metrics, loss_rl: torch.Tensor, loss_mtp_unit: torch.Tensor, hidden: torch.Tensor, eps: float,
                    log: bool) -> tuple[float, float]:
    """<dL_RL/dh, dL_MTP/dh> and ||dL_MTP/dh||^2 at the trunk's output h [B, T, H]: each loss's gradient
    through its own head only (lm_head; the MTP layer), no backward through the trunk. With dtheta = J^T dh,
    c = dh_RL^T (J J^T) dh_MTP: the slope c_h / v_h^2 is the oracle's where J J^T is isotropic. ``log``:
    logged as the ``hidden`` probe (``occ/probe_hidden_*_micro``) beside the oracle's."""
    (c,), (v2,) = oracle_geometry(loss_rl, loss_mtp_unit, [hidden])
    if log:
        metrics["occ/probe_hidden_c_micro"].append(c)
        metrics["occ/probe_hidden_v2_micro"].append(v2)
        metrics["occ/probe_hidden_lambda_ratio_of_sums_micro"].append(lambda_from_geometry(c, v2, 1.0, eps))
    return c, v2
