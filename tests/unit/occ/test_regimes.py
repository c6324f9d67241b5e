import math

import pytest
import torch

from occctl.occ.regimes import mtp_loss, policy_loss, token_logprobs


def _grad(logp_values, advantage, **kw):
    logp = torch.tensor([logp_values], requires_grad=True)
    loss = policy_loss(logp, torch.zeros(1, 2), torch.tensor([advantage]), torch.ones(1, 2), **kw)
    loss.backward()
    return loss.item(), logp.grad[0].tolist()


def test_policy_loss_gradient_matches_a_hand_computed_two_token_example():
    # ratios 1.1 (inside the clip range) and 1.5 (above 1 + 0.28), old log-probs 0, token mean over 2 tokens
    lp = [math.log(1.1), math.log(1.5)]
    loss, grad = _grad(lp, 1.0, clip_low=0.2, clip_high=0.28)
    assert loss == pytest.approx(-(1.1 + 1.28) / 2)
    assert grad == pytest.approx([-1.1 / 2, 0.0])  # clipped token gets no push-up
    loss, grad = _grad(lp, -1.0, clip_low=0.2, clip_high=0.28)
    assert loss == pytest.approx((1.1 + 1.5) / 2)  # pessimistic: unclipped ratio for A < 0
    assert grad == pytest.approx([1.1 / 2, 1.5 / 2])
    # veRL's dual clip caps the negative-advantage loss at -A * c
    loss, grad = _grad(lp, -1.0, clip_low=0.2, clip_high=0.28, dual_clip=1.2)
    assert loss == pytest.approx((1.1 + 1.2) / 2)
    assert grad == pytest.approx([1.1 / 2, 0.0])


def test_aggregations_and_sequence_level():
    logp = torch.tensor([[-0.1, -0.2, -0.3], [-0.4, -0.5, 0.0]])
    old = torch.tensor([[-0.15, -0.2, -0.25], [-0.4, -0.45, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([0.5, -1.0])
    r = torch.exp(logp - old)
    per_tok = -torch.min(r * adv[:, None], r.clamp(0.8, 1.2) * adv[:, None])
    tok_mean = (per_tok * mask).sum() / 5
    seq_mean = ((per_tok * mask).sum(-1) / mask.sum(-1)).mean()
    kw = dict(clip_low=0.2, clip_high=0.2)
    assert policy_loss(logp, old, adv, mask, **kw).item() == pytest.approx(tok_mean.item())
    assert policy_loss(logp, old, adv, mask, normalizer=10.0, **kw).item() == pytest.approx(tok_mean.item() / 2)
    assert policy_loss(logp, old, adv, mask, aggregation="seq_mean_token_mean", **kw).item() == pytest.approx(
        seq_mean.item())
    # GSPO: one length-normalised ratio per sequence
    s = torch.exp(((logp - old) * mask).sum(-1) / mask.sum(-1))
    gspo = -torch.min(s * adv, s.clamp(0.8, 1.2) * adv).mean()
    got = policy_loss(logp, old, adv, mask, level="sequence", aggregation="seq_mean_token_mean", **kw)
    assert got.item() == pytest.approx(gspo.item())


def test_regime_losses():
    logp = torch.tensor([[-0.5, -1.0, -2.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    for regime in ("detach", "ce"):
        out = mtp_loss(regime, logp, mask, coef=0.1)
        assert out.loss.item() == pytest.approx(0.1 * 0.75) and out.coef == 0.1
    old, adv = torch.zeros(1, 3), torch.tensor([1.0])
    base = policy_loss(logp, old, adv * 0.3, mask)
    assert mtp_loss("policy", logp, mask, coef=0.3, logp_old=old, advantages=adv).loss.item() == pytest.approx(
        base.item())
    occ = mtp_loss("occ", logp, mask, coef=0.3, lam=-0.02, logp_old=old, advantages=adv)
    assert occ.coef == -0.02
    assert occ.loss.item() == pytest.approx(policy_loss(logp, old, adv * -0.02, mask).item())
    with pytest.raises(ValueError, match="lam"):
        mtp_loss("occ", logp, mask, coef=0.1, logp_old=old, advantages=adv)
    with pytest.raises(ValueError, match="regime"):
        mtp_loss("sft", logp, mask, coef=0.1)


def test_token_logprobs_uses_temperature():
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    tokens = torch.tensor([[0]])
    for temp in (1.0, 0.5):
        expected = torch.log_softmax(logits / temp, -1)[0, 0, 0]
        assert token_logprobs(logits, tokens, temp).item() == pytest.approx(expected.item())


def test_draft_loss_soft_ce_is_ce_for_a_one_hot_target_and_trains_only_the_head():
    from occctl.occ.regimes import draft_loss

    logits_mtp = torch.tensor([[[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]]], requires_grad=True)  # [1, 2, 3]
    logits_main = torch.tensor([[[0.0, 0.0, 60.0], [60.0, 0.0, 0.0]]], requires_grad=True)  # ~one-hot: 2, 0
    tokens, mask = torch.tensor([[2, 0]]), torch.tensor([[1.0, 1.0]])
    soft = draft_loss("soft_ce", logits_mtp, tokens, mask, logits_main)
    hard = draft_loss("ce", logits_mtp, tokens, mask)
    by_hand = -(torch.log_softmax(logits_mtp, -1)[0, 0, 2] + torch.log_softmax(logits_mtp, -1)[0, 1, 0]) / 2
    torch.testing.assert_close(hard, by_hand)
    torch.testing.assert_close(soft, hard)
    soft.backward()
    assert logits_main.grad is None and logits_mtp.grad.abs().sum() > 0
    masked = draft_loss("soft_ce", logits_mtp, tokens, torch.tensor([[1.0, 0.0]]), logits_main)
    torch.testing.assert_close(masked, -torch.log_softmax(logits_mtp, -1)[0, 0, 2])


def test_token_weights_multiply_the_clipped_per_token_loss_as_trls_vllm_correction():
    """TRL's vLLM importance-sampling factor ([B, T] per token or [B, 1] per sequence) weighs each token's clipped
    loss before aggregation; no gradient flows into it."""
    logp = torch.tensor([[-0.1, -0.2, -0.3], [-0.4, -0.5, 0.0]], requires_grad=True)
    old = torch.tensor([[-0.15, -0.2, -0.25], [-0.4, -0.45, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([0.5, -1.0])
    r = torch.exp(logp.detach() - old)
    per_tok = -torch.min(r * adv[:, None], r.clamp(0.8, 1.28) * adv[:, None])  # [2, 3]
    token_w = torch.tensor([[1.0, 0.5, 3.0], [0.0, 2.0, 7.0]], requires_grad=True)
    got = policy_loss(logp, old, adv, mask, token_weights=token_w)
    assert got.item() == pytest.approx(((per_tok * token_w.detach() * mask).sum() / 5).item())
    seq_w = torch.tensor([[2.0], [0.0]])  # sequence_mask: the second sequence masked out
    got_seq = policy_loss(logp, old, adv, mask, aggregation="seq_mean_token_mean", token_weights=seq_w)
    assert got_seq.item() == pytest.approx((2.0 * per_tok[0].mean() / 2).item())
    got.backward()
    assert token_w.grad is None
    ones = policy_loss(logp, old, adv, mask, token_weights=torch.ones(2, 1))
    assert ones.item() == pytest.approx(policy_loss(logp, old, adv, mask).item())
    occ = mtp_loss("occ", logp, mask, coef=0.1, lam=0.3, logp_old=old, advantages=adv, token_weights=token_w)
    assert occ.loss.item() == pytest.approx(policy_loss(logp, old, adv * 0.3, mask, token_weights=token_w).item())
