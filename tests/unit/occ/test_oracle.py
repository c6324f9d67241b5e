"""The oracle's applied MTP gradient for a negative lambda: lambda * g_MTP(+1) with loss_scale, not with advantage."""

import pytest
import torch

from occctl.occ.oracle import oracle_mtp_term
from occctl.occ.regimes import mtp_loss


def _grads(lam, negative):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, generator=g, requires_grad=True)  # the MTP head's log-probs before log-softmax
    logp_mtp = torch.log_softmax(logits, dim=-1)  # [B, T] stand-in log-probs
    logp_old = logp_mtp.detach() + 0.5 * torch.randn(4, 6, generator=g)  # far from 1: clipping binds
    advantages, mask = torch.randn(4, generator=g), torch.ones(4, 6)

    def loss_at(scale):
        return mtp_loss("occ", logp_mtp, mask, coef=0.0, lam=scale, logp_old=logp_old, advantages=advantages,
                        dual_clip=3.0).loss

    unit = torch.autograd.grad(loss_at(1.0), logits, retain_graph=True)[0]
    applied = torch.autograd.grad(oracle_mtp_term(lam, loss_at(1.0), loss_at, negative), logits)[0]
    return unit, applied


@pytest.mark.parametrize("lam", [-0.7, 0.4])
def test_loss_scale_applies_lambda_times_the_unit_gradient(lam):
    unit, applied = _grads(lam, "loss_scale")
    assert torch.allclose(applied, lam * unit, atol=1e-7)


def test_the_advantage_scaled_surrogate_is_not_lambda_times_g_for_negative_lambda():
    unit, applied = _grads(-0.7, "advantage")
    assert not torch.allclose(applied, -0.7 * unit, atol=1e-4)  # what the oracle used to apply where c < 0
    unit, flipped = _grads(-0.7, "flip")
    assert torch.allclose(flipped, 0.7 * _grads(-1.0, "advantage")[1], atol=1e-7)
    unit, positive = _grads(0.4, "advantage")
    assert torch.allclose(positive, 0.4 * unit, atol=1e-7)  # positive lambda: the modes agree


def test_unknown_mode_is_an_error():
    with pytest.raises(ValueError, match="oracle_negative"):
        oracle_mtp_term(-1.0, torch.tensor(1.0), lambda s: torch.tensor(s), "nope")
