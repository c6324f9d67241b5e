"""Spec -> the OCC core's keyword arguments, read the same way by every backend.

``occctl/occ/`` knows nothing of specs; the backends' hooks build their Calibrator and the MTP policy term's
clipping from these two functions, so a key means the same thing on TRL and on veRL.
"""

from __future__ import annotations

from typing import Any

from occctl.spec import Spec


GRADIENT_ESTIMATORS = ("oracle", "hidden_grad")  # lambda_t from gradients, not from the delta proxies


def uses_oracle_lambda(spec: Spec) -> bool:
    """Whether lambda_t comes from the exact gradient geometry rather than from the delta proxies."""
    return spec.mtp.occ.estimator == "oracle"


def uses_hidden_lambda(spec: Spec) -> bool:
    """Whether lambda_t comes from the two losses' gradients at the trunk's output (``hidden_grad``)."""
    return spec.mtp.occ.estimator == "hidden_grad"


def calibrator_kwargs(spec: Spec) -> dict[str, Any]:
    """``Calibrator(**calibrator_kwargs(spec), all_reduce=...)``. With ``estimator: oracle`` or ``hidden_grad`` the calibrator still
    forms the proxy lambda (paper estimator) for logging beside the applied oracle lambda. A backend passes
    ``all_reduce`` only when ``mtp.occ.dp_reduce`` is true."""
    occ = spec.mtp.occ
    return dict(lambda_plus=occ.lambda_plus, eps=occ.eps,
                estimator="ratio_of_sums" if occ.estimator in GRADIENT_ESTIMATORS else occ.estimator,
                clip_negative=occ.clip_negative, scope=occ.scope, ema=occ.ema, mask=occ.mask)


def policy_clip_kwargs(spec: Spec) -> dict[str, Any]:
    """The MTP policy term's extra clipping, as ``policy_loss`` keyword arguments."""
    clip = spec.mtp.policy_clip
    return dict(dual_clip=clip.dual_clip, log_ratio_clamp=clip.log_ratio_clamp)
