"""The authors' estimator (`mtp.occ.preset: reference`) against a port of their formula, with padding.

Their `loss_func` (MarkXCloud/RL-MTP, Megatron actor), per micro-batch, on the padded [B, R] response slice:
    dRL = log_prob - old_log_prob;  dMTP = lq - old_log_prob      (zero on padding slots, except the slot right
                                                                  after each response's end, which is real)
    lam = (mtp_loss_scaling_factor / K) * ((dMTP * dRL) / (dMTP**2 + 1e-8)).mean()   # over all B*R entries
    loss = policy_loss(old_log_prob, lq, A * lam, response_mask)  # vanilla: dual clip c, log-ratio clamp +-20
"""

import pytest
import torch

from occctl.occ.calibration import Calibrator, padded_mask
from occctl.occ.regimes import policy_loss

B, R = 4, 9
LENGTHS = [9, 5, 1, 3]  # one full row (no slot after its end), others padded


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, R)
    for i, n in enumerate(LENGTHS):
        mask[i, :n] = 1
    old = -torch.rand(B, R, generator=g, dtype=torch.float64) * 3
    main = old + 0.05 * torch.randn(B, R, generator=g, dtype=torch.float64)
    mtp = old + 0.5 * torch.randn(B, R, generator=g, dtype=torch.float64)
    return main, mtp, old, mask


def _their_lambda(main, mtp, old, mask, scaling_factor=0.1, num_mtp_heads=1):
    """Their arithmetic on tensors laid out as veRL has them: log-probs zeroed on padding except the slot after
    each response's end."""
    live = torch.zeros_like(mask)
    for i, n in enumerate(LENGTHS):
        live[i, :min(n + 1, R)] = 1
    d_rl = (main - old) * live
    d_mtp = (mtp - old) * live
    ratio = (d_mtp * d_rl) / (d_mtp ** 2 + 1e-8)
    return scaling_factor / num_mtp_heads * ratio.mean()


def test_padded_mask_adds_the_slot_after_each_end():
    _, _, _, mask = _batch()
    m = padded_mask(mask)
    assert m.sum(-1).tolist() == [9, 6, 2, 4]
    assert bool(m[1, 5]) and not bool(m[1, 6]) and bool(m[2, 1])


def test_reference_preset_lambda_matches_the_ported_formula_with_padding():
    for seed in range(5):
        main, mtp, old, mask = _batch(seed)
        cal = Calibrator(lambda_plus=0.1, estimator="mean_of_ratios", scope="micro_batch", mask="padded")
        cal.begin_step()
        # our tensors hold *real* (non-zero, garbage) values on padding, as TRL's do: they must not count
        lam = cal.observe(main - old, mtp - old, mask).lam
        assert lam == pytest.approx(float(_their_lambda(main, mtp, old, mask)), rel=1e-8, abs=1e-12)


def test_padding_shrinks_the_reference_lambda_but_not_the_paper_one():
    main, mtp, old, mask = _batch(1)
    wide = [torch.cat([t, torch.zeros(B, 7, dtype=t.dtype)], dim=1) for t in (main, mtp, old, mask)]
    for est, changes in (("mean_of_ratios", True), ("ratio_of_sums", False)):
        lams = []
        for m_, t_, o_, k_ in ((main, mtp, old, mask), wide):
            cal = Calibrator(estimator=est, scope="micro_batch", mask="padded")
            lams.append(cal.observe(m_ - o_, t_ - o_, k_).lam)
        assert (abs(lams[0] - lams[1]) > 1e-3 * abs(lams[0])) == changes


def _their_vanilla_loss(lq, old, adv, mask, clip_low=0.2, clip_high=0.28, clip_ratio_c=10.0):
    """veRL's compute_policy_loss_vanilla as the reference applies it to the MTP term (token-mean per micro-batch)."""
    neg_kl = torch.clamp(lq - old, min=-20.0, max=20.0)
    ratio = torch.exp(neg_kl)
    l1 = -adv * ratio
    l2 = -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clipped = torch.maximum(l1, l2)
    dual = torch.min(-adv * clip_ratio_c, clipped)
    per_token = torch.where(adv < 0, dual, clipped)
    return (per_token * mask).sum() / mask.sum()


def test_mtp_policy_term_matches_their_clipping():
    main, mtp, old, mask = _batch(3)
    mtp = mtp.clone()
    mtp[0, 0], mtp[1, 1], mtp[3, 2] = old[0, 0] + 30.0, old[1, 1] + 4.0, old[3, 2] - 25.0  # far-off ratios
    adv = torch.tensor([1.0, -2.0, 0.5, -1.0], dtype=torch.float64).unsqueeze(1).expand(B, R) * 0.37
    ours = policy_loss(mtp, old, adv, mask, dual_clip=10.0, log_ratio_clamp=20.0)
    assert float(ours) == pytest.approx(float(_their_vanilla_loss(mtp, old, adv, mask)), rel=1e-10)
    unclipped = policy_loss(mtp, old, adv, mask)
    assert abs(float(unclipped) - float(ours)) > 1.0  # the clamp and the dual clip matter on such tokens
