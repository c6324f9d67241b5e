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
    assert sum(c) == pytest.approx(float(x @ y)) and sum(v2) == pytest.approx(float(y @ y))
    assert c[1] == 0.0 and v2[1] == 0.0  # per parameter: b gets no MTP gradient
    assert w.grad is None and b.grad is None  # nothing accumulated into .grad


def test_pearson_and_spearman():
    from occctl.correlation import pearson, spearman

    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert pearson(x, [2 * v + 1 for v in x]) == pytest.approx(1.0)
    assert pearson(x, [-v for v in x]) == pytest.approx(-1.0)
    assert spearman(x, [v**3 for v in x]) == pytest.approx(1.0)  # monotone, not linear
    assert pearson(x, [v**3 for v in x]) < 0.99
    assert math.isnan(pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_fidelity_of_a_history_with_probe_variants():
    from occctl.proxy_fidelity import fidelity

    history = []
    for step in range(1, 25):
        c = float(step % 7) - 3.0
        history.append({"step": step, "occ/oracle_c": c, "occ/oracle_v2": 1.0 + step, "occ/c_hat": 2 * c + 1,
                        "occ/v_hat2": float(step % 5), "occ/lambda": 0.1, "occ/oracle_lambda": c / (1.0 + step),
                        "occ/probe_mtp_old_c_micro": -c, "occ/probe_main_old_c_step": float(step % 3)})
    history.append({"step": 25, "reward": 0.5})  # no oracle on this step
    out = fidelity(history, steps_per_generation=4)
    assert out["oracle_steps"] == 24
    assert out["fidelity_pearson_c"] == pytest.approx(1.0) and out["fidelity_pearson_c_moved"] == pytest.approx(1.0)
    assert abs(out["fidelity_pearson_v2"]) < 0.5 and math.isnan(out["fidelity_pearson_lambda"])  # constant lambda
    assert out["fidelity_variants"]["mtp_old/micro"]["pearson_c"] == pytest.approx(-1.0)
    assert set(out["fidelity_variants"]) == {"mtp_old/micro", "main_old/step"}
    assert fidelity([{"step": 1, "reward": 0.1}]) == {}


def _batch(seed, n=6):
    g = torch.Generator().manual_seed(seed)
    d_rl, d_mtp = torch.randn(2, n, generator=g), torch.randn(2, n, generator=g)
    return d_rl, d_mtp, torch.ones(2, n)


def test_micro_batch_scope_forgets_earlier_micro_batches():
    step, micro = Calibrator(scope="step"), Calibrator(scope="micro_batch")
    a, b = _batch(1), _batch(2)
    for cal in (step, micro):
        cal.begin_step()
        cal.observe(*a)
    lam_step, lam_micro = step.observe(*b).lam, micro.observe(*b).lam
    alone = Calibrator()
    alone.begin_step()
    assert lam_micro == pytest.approx(alone.observe(*b).lam)
    both = torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]]), torch.cat([a[2], b[2]])
    alone.begin_step()
    assert lam_step == pytest.approx(alone.observe(*both).lam) and lam_step != pytest.approx(lam_micro)


def test_ema_blends_completed_steps():
    cal = Calibrator(ema=0.5)
    a, b = _batch(3), _batch(4)
    cal.begin_step()
    first = cal.observe(*a)
    assert first.lam == pytest.approx(lambda_from_sums(proxy_sums(*a)))  # no past yet
    cal.begin_step()
    second = cal.observe(*b)
    expected = lambda_from_sums(0.5 * proxy_sums(*a) + 0.5 * proxy_sums(*b))
    assert second.lam == pytest.approx(expected)
    with pytest.raises(ValueError):
        Calibrator(ema=1.0)
    with pytest.raises(ValueError):
        Calibrator(scope="epoch")


def test_state_dict_round_trip_gives_the_same_lambdas():
    a, b, c = _batch(5), _batch(6), _batch(7)
    ref = Calibrator(ema=0.3)
    for x in (a, b):
        ref.begin_step()
        ref.observe(*x)
    copy = Calibrator(ema=0.3)
    copy.load_state_dict(ref.state_dict())
    for cal in (ref, copy):
        cal.begin_step()
    assert copy.observe(*c).lam == ref.observe(*c).lam
