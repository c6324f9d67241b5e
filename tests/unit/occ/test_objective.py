"""mtp_objective on degenerate inputs: everything stays finite, lambda falls back to 0 and is counted."""

import math

import pytest
import torch

from occctl.occ.calibration import Calibrator
from occctl.occ.objective import mtp_objective

B, T = 3, 5


def _inputs(mask=None, logp_main=None):
    g = torch.Generator().manual_seed(0)
    logp_old = -torch.rand(B, T, generator=g)
    return dict(logp_main=logp_old + 0.01 if logp_main is None else logp_main,
                logp_mtp=(-torch.rand(B, T, generator=g)).requires_grad_(),
                logp_old=logp_old, mask=torch.ones(B, T) if mask is None else mask,
                advantages=torch.tensor([1.0, -0.5, 0.0]), coef=0.1)


@pytest.mark.parametrize("regime", ["detach", "ce", "policy", "occ"])
def test_no_response_tokens_gives_a_finite_zero_loss(regime):
    cal = Calibrator()
    cal.begin_step()
    out = mtp_objective(regime, cal, **_inputs(mask=torch.zeros(B, T)))
    assert math.isfinite(out.loss.item()) and out.loss.item() == 0.0
    assert out.stats.lam == 0.0 and out.stats.n_tokens == 0 and not out.stats.fallback
    out.loss.backward()  # and the graph is still usable


def test_zero_deltas_give_lambda_zero():
    cal = Calibrator()
    cal.begin_step()
    inputs = _inputs()
    inputs["logp_main"] = inputs["logp_old"].clone()  # the policy has not moved
    out = mtp_objective("occ", cal, **inputs)
    assert out.stats.lam == 0.0 and out.coef == 0.0 and math.isfinite(out.loss.item())


def test_nan_inputs_fall_back_to_zero_with_a_warning_and_a_count():
    cal = Calibrator()
    cal.begin_step()
    inputs = _inputs()
    inputs["logp_main"] = inputs["logp_main"].clone()
    inputs["logp_main"][0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="non-finite"):
        out = mtp_objective("occ", cal, **inputs)
    assert out.stats.lam == 0.0 and out.stats.fallback and cal.nonfinite_count == 1
    assert math.isfinite(out.loss.item())  # lambda 0: the MTP term is 0, not NaN
