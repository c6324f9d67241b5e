import math
import warnings

import pytest
import torch

from occctl.occ.calibration import Calibrator, lambda_from_sums, proxy_sums


def _lam(d_rl, d_mtp, mask=None, **kw):
    mask = torch.ones_like(d_rl) if mask is None else mask
    kw.setdefault("eps", 1e-8)
    return lambda_from_sums(proxy_sums(d_rl, d_mtp, mask, kw["eps"]), **kw)


def test_proportional_deltas_give_lambda_plus_over_a():
    d_rl = torch.tensor([[0.3, -0.1, 0.2], [0.05, 0.4, -0.25]])
    for a in (0.5, 2.0, -3.0):
        for est in ("ratio_of_sums", "mean_of_ratios"):
            lam = _lam(d_rl, a * d_rl, lambda_plus=0.7, estimator=est)
            assert lam == pytest.approx(0.7 / a, rel=1e-4)  # eps biases tiny tokens by ~1e-5


def test_matches_a_naive_loop_and_respects_the_mask():
    g = torch.Generator().manual_seed(0)
    d_rl, d_mtp = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mask = (torch.rand(3, 5, generator=g) > 0.4).float()
    c = v2 = r = n = 0.0
    for i in range(3):
        for j in range(5):
            if mask[i, j]:
                x, y = float(d_rl[i, j]), float(d_mtp[i, j])
                c, v2, r, n = c + x * y, v2 + y * y, r + x * y / (y * y + 1e-8), n + 1
    assert _lam(d_rl, d_mtp, mask, lambda_plus=2.0) == pytest.approx(2.0 * c / (v2 + 1e-8), rel=1e-9)
    assert _lam(d_rl, d_mtp, mask, estimator="mean_of_ratios") == pytest.approx(r / n, rel=1e-9)
    # garbage under the mask must not matter
    d_rl2 = d_rl.masked_fill(mask == 0, float("nan"))
    assert _lam(d_rl2, d_mtp, mask) == pytest.approx(c / (v2 + 1e-8), rel=1e-9)


def test_estimators_differ_on_heavy_tailed_input():
    # one token where the MTP head almost matches the old policy dominates the mean of ratios
    d_rl = torch.tensor([[0.1, 0.1, 0.1, 0.1]])
    d_mtp = torch.tensor([[1.0, 1.0, 1.0, 1e-3]])
    ros = _lam(d_rl, d_mtp)
    mor = _lam(d_rl, d_mtp, estimator="mean_of_ratios")
    assert ros == pytest.approx(0.3001 / 3.000001, rel=1e-6)  # ~0.1: the least-squares slope
    assert mor == pytest.approx((3 * 0.1 / (1 + 1e-8) + 1e-4 / (1e-6 + 1e-8)) / 4, rel=1e-6)  # ~25: one token dominates
    assert mor > 100 * ros


def test_clip_negative():
    d_rl = torch.tensor([[0.2, -0.3]])
    d_mtp = -d_rl
    assert _lam(d_rl, d_mtp) == pytest.approx(-1.0, rel=1e-6)
    assert _lam(d_rl, d_mtp, clip_negative=True) == 0.0
    assert _lam(d_rl, d_mtp, estimator="mean_of_ratios", clip_negative=True) == 0.0


def test_degenerate_inputs_stay_finite():
    cal = Calibrator()
    zeros = torch.zeros(2, 3)
    cal.begin_step()
    assert cal.observe(zeros, zeros, torch.ones(2, 3)).lam == 0.0  # v_hat2 = 0
    cal.begin_step()
    assert cal.observe(zeros, zeros, torch.zeros(2, 3)).lam == 0.0  # no response tokens
    for bad in (float("nan"), float("inf")):
        cal.begin_step()
        d = torch.tensor([[0.1, bad, 0.2]])
        with pytest.warns(RuntimeWarning, match="non-finite"):
            stats = cal.observe(d, d, torch.ones(1, 3))
        assert stats.lam == 0.0 and stats.fallback
    assert cal.nonfinite_count == 2


def test_accumulates_over_micro_batches_of_one_step():
    g = torch.Generator().manual_seed(1)
    d_rl, d_mtp = torch.randn(4, 6, generator=g), torch.randn(4, 6, generator=g)
    mask = torch.ones(4, 6)
    cal = Calibrator(lambda_plus=1.0)
    cal.begin_step()
    first = cal.observe(d_rl[:2], d_mtp[:2], mask[:2])
    second = cal.observe(d_rl[2:], d_mtp[2:], mask[2:])
    assert first.lam == pytest.approx(_lam(d_rl[:2], d_mtp[:2]), rel=1e-9)
    assert second.lam == pytest.approx(_lam(d_rl, d_mtp), rel=1e-9)  # whole step so far
    assert second.n_tokens == 24
    cal.begin_step()
    assert cal.observe(d_rl[2:], d_mtp[2:], mask[2:]).lam == pytest.approx(_lam(d_rl[2:], d_mtp[2:]), rel=1e-9)


def test_all_reduce_hook_sums_statistics_over_ranks():
    g = torch.Generator().manual_seed(2)
    rank0 = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    rank1 = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    mask = torch.ones(2, 3)
    other = proxy_sums(*rank1, mask)  # what rank 1 contributes to the all-reduce
    cal = Calibrator(all_reduce=lambda sums: sums + other)
    cal.begin_step()
    stats = cal.observe(*rank0, mask)
    both = _lam(torch.cat([rank0[0], rank1[0]]), torch.cat([rank0[1], rank1[1]]))
    assert stats.lam == pytest.approx(both, rel=1e-9)
    assert stats.n_tokens == 12


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="estimator"):
        Calibrator(estimator="median")
    with pytest.raises(ValueError, match="eps"):
        Calibrator(eps=0.0)
    assert math.isfinite(_lam(torch.zeros(1, 1), torch.zeros(1, 1)))


def test_oracle_geometry_on_a_linear_model():
    from occctl.occ.calibration import oracle_geometry

    w = torch.tensor([0.5, -1.0, 2.0], requires_grad=True)
    b = torch.tensor([1.0], requires_grad=True)
    x, y = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, 0.5, 4.0])
    loss_rl, loss_mtp = (w * x).sum() + b.sum(), (w * y).sum()  # g_RL = (x, 1), g_MTP = (y, 0)
    c, v2 = oracle_geometry(loss_rl, loss_mtp, [w, b])
    assert c == pytest.approx(float(x @ y)) and v2 == pytest.approx(float(y @ y))
    assert w.grad is None and b.grad is None  # nothing accumulated into .grad


def test_pearson_and_spearman():
    from occctl.correlation import pearson, ranks, spearman

    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert pearson(x, [2 * v + 1 for v in x]) == pytest.approx(1.0)
    assert pearson(x, [-v for v in x]) == pytest.approx(-1.0)
    assert spearman(x, [v**3 for v in x]) == pytest.approx(1.0)  # monotone, not linear
    assert pearson(x, [v**3 for v in x]) < 0.99
    assert ranks([3.0, 1.0, 3.0]) == [2.5, 1.0, 2.5]
    assert math.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
