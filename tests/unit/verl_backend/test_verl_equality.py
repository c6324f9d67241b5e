"""One core, two backends: on the same synthetic micro-batches, the veRL plugin's MTP term and lambda_t equal the
TRL backend's (``MtpGRPOTrainer._mtp_term``, run for real on a stub trainer), and the veRL term's normalisation
equals veRL's own policy losses (``agg_loss`` with the step's global token / sequence counts).

veRL side: the data arrive in veRL's layout (nested full-sequence log-probs, the MTP head's at position P + j - 2,
a TensorDict with ``dp_size`` / ``batch_num_tokens`` / ``global_batch_size``) and the actor config is the one
``occctl run --dry-run`` composes from the shipped specs.
"""

from pathlib import Path

import pytest
import torch

pytest.importorskip("verl")
pytest.importorskip("trl")

from occctl.occ.regimes import token_logprobs  # noqa: E402
from occctl.spec import load_spec  # noqa: E402
from trl_stub import stub_trainer  # noqa: E402  (tests/, on sys.path via its conftest)

REPO = Path(__file__).resolve().parents[3]
V = 11  # vocabulary of the synthetic MTP logits
TOL = 1e-6


_COMPOSED = {}


def actor_config(spec, tmp_path, **changes):
    """veRL's McoreActorConfig exactly as the plan composes it for this spec (Hydra + dataclass; cached per spec)."""
    from omegaconf import OmegaConf
    from verl.utils.config import omega_conf_to_dataclass

    from backends.verl_backend.adapter import VerlBackend

    key = spec.model_dump_json()
    if key not in _COMPOSED:
        plan = VerlBackend().prepare(spec, tmp_path / "run")
        _COMPOSED[key] = plan.native_config["config"]["actor_rollout_ref"]["actor"]
    return omega_conf_to_dataclass(OmegaConf.create({**_COMPOSED[key], **changes}))


def make_step(seed, n_micro=3, batch=4, max_prompt=5, max_resp=7):
    """Micro-batches of one optimizer step: lengths, main/old log-probs, advantages, masks, MTP logits (leaf)."""
    g = torch.Generator().manual_seed(seed)
    micro = []
    for _ in range(n_micro):
        p = torch.randint(2, max_prompt + 1, (batch,), generator=g)
        r = torch.randint(2, max_resp + 1, (batch,), generator=g)
        width = int(r.max())
        mask = (torch.arange(width)[None, :] < r[:, None]).float()  # [B, R]
        mask[0, 1] = 0.0  # an interior masked token (e.g. a tool output)
        completion_ids = torch.randint(0, V, (batch, width), generator=g)
        logits = torch.randn(batch, width, V, generator=g, dtype=torch.float64).requires_grad_(True)  # [B, R, V]
        logp_old = -torch.rand(batch, width, generator=g, dtype=torch.float64) * 3  # [B, R]
        logp_main = logp_old + 0.05 * torch.randn(batch, width, generator=g, dtype=torch.float64)
        advantages = torch.randn(batch, generator=g, dtype=torch.float64)  # [B]
        micro.append(dict(p=p, r=r, mask=mask * (logp_old < 0), ids=completion_ids, logits=logits,
                          logp_old=logp_old * mask, logp_main=logp_main * mask, adv=advantages))
    return micro


# --- TRL: the real hook on a stub trainer ---------------------------------------------------------------------


def trl_losses(spec, micro, temperature):
    """(per-micro-batch MTP losses, the trainer's metric lists) from ``MtpGRPOTrainer._mtp_term``: one process, one
    optimizer step of len(micro) gradient-accumulation micro-batches generated together (steps_per_generation = ga)."""
    from backends.trl_backend.trainer import mtp_settings
    from backends.trl_backend.hooks import MtpGRPOTrainer

    settings = mtp_settings(spec)
    ga = len(micro)
    tokens = sum(float(m["mask"].sum()) for m in micro)
    losses, current = [], {}
    stub = stub_trainer(settings, ga, temperature, current)
    for m in micro:
        current["logits"] = m["logits"]
        b, width = m["mask"].shape
        inputs = {"prompt_ids": torch.zeros(b, 3, dtype=torch.long), "prompt_mask": torch.ones(b, 3),
                  "completion_ids": m["ids"], "completion_mask": m["mask"], "old_per_token_logps": m["logp_old"],
                  "advantages": m["adv"], "num_items_in_batch": torch.tensor(tokens)}
        kept = {"hidden": None, "position_ids": None}
        losses.append(MtpGRPOTrainer._mtp_term(stub, None, inputs, kept, m["logp_main"], None))
    return losses, stub._metrics["train"]


# --- veRL: the plugin's term on veRL's layout ---------------------------------------------------------------


def verl_batch(m, temperature, dp_size, batch_num_tokens, global_batch_size, junk_seed=0, is_weights=None):
    """(model_output, data) as veRL's ppo_loss receives them for micro-batch ``m`` (``is_weights`` [B, R]: veRL's
    rollout-correction weights, when its rollout correction is on)."""
    from tensordict import NonTensorData, TensorDict

    g = torch.Generator().manual_seed(junk_seed)
    logp_mtp = token_logprobs(m["logits"], m["ids"], temperature)  # [B, R], graph to the logits leaf
    main_rows, mtp_rows = [], []
    for i, (p, r) in enumerate(zip(m["p"].tolist(), m["r"].tolist())):
        length = p + r
        main = torch.randn(length, generator=g, dtype=torch.float64)  # junk outside the response slice
        main = torch.cat([main[:p - 1], m["logp_main"][i, :r], main[p - 1 + r:]])  # position P + j - 1
        junk = torch.randn(length, generator=g, dtype=torch.float64)
        mtp = torch.cat([junk[:p - 2], logp_mtp[i, :r], junk[p - 2 + r:]])  # position P + j - 2
        main_rows.append(main)
        mtp_rows.append(mtp)
    nested = lambda rows: torch.nested.as_nested_tensor(rows, layout=torch.jagged)  # noqa: E731
    ids = lambda lens: nested([torch.zeros(n, dtype=torch.long) for n in lens.tolist()])  # noqa: E731
    model_output = {"log_probs": nested(main_rows), "mtp_log_probs": nested(mtp_rows)}
    b = m["mask"].shape[0]
    data = TensorDict({"prompts": ids(m["p"]), "responses": ids(m["r"]), "response_mask": m["mask"].bool(),
                       "old_log_probs": m["logp_old"], "advantages": m["adv"][:, None].expand_as(m["mask"]).clone()},
                      batch_size=[b])
    if is_weights is not None:
        data["rollout_is_weights"] = is_weights
    data["dp_size"] = NonTensorData(dp_size)
    data["batch_num_tokens"] = NonTensorData(batch_num_tokens)
    data["global_batch_size"] = NonTensorData(global_batch_size)
    return model_output, data, logp_mtp


def verl_losses(spec, config, micro, temperature):
    from backends.verl_backend.hooks import OccSettings, mtp_term

    settings = OccSettings.from_profile(config.profile)
    calibrator = settings.calibrator()
    calibrator.begin_step()
    tokens = int(sum(float(m["mask"].sum()) for m in micro))
    sequences = sum(m["mask"].shape[0] for m in micro)
    losses, lambdas = [], []
    for n, m in enumerate(micro):
        model_output, data, _ = verl_batch(m, temperature, 1, tokens, sequences, junk_seed=n)
        term = mtp_term(settings, calibrator, config, model_output, data)
        losses.append(term.loss)
        lambdas.append(term.metrics["occ/lambda"])
    return losses, lambdas


CASES = [("mimo7b_dapo_occ", "occ"), ("mimo7b_dapo_occ", "policy"), ("mimo7b_gspo_occ", "occ"),
         ("mimo7b_gspo_occ", "policy"), ("glm45air_occ", "occ"), ("mimo7b_dapo_occ", "grpo-occ")]


@pytest.mark.parametrize("spec_name,regime", CASES)
def test_verl_mtp_term_and_lambda_equal_trl(spec_name, regime, tmp_path, results_dir):
    overrides = [f"mtp.regime={regime.removeprefix('grpo-')}"]
    if regime.startswith("grpo-"):
        overrides += ["algorithm.name=grpo"]
    spec = load_spec(REPO / "specs" / f"{spec_name}.yaml", overrides)
    config = actor_config(spec, tmp_path)
    micro = make_step(seed=len(spec_name) + len(regime))

    trl, trl_metrics = trl_losses(spec, micro, spec.train.temperature)
    trl_lams = trl_metrics["occ/lambda"]
    trl_grads = torch.autograd.grad(sum(trl), [m["logits"] for m in micro])
    verl, verl_lams = verl_losses(spec, config, micro, spec.train.temperature)
    verl_grads = torch.autograd.grad(sum(verl), [m["logits"] for m in micro])

    assert len(set(round(x, 12) for x in trl_lams)) == len(micro), "lambda_t must move within the step"
    for a, b in zip(trl_lams, verl_lams):
        assert abs(a - b) <= TOL * max(1.0, abs(a)), (trl_lams, verl_lams)
    for a, b in zip(trl, verl):
        assert abs(a.item() - b.item()) <= TOL, (a.item(), b.item())
    assert any(abs(a.item()) > 1e-4 for a in trl), "the synthetic losses must not be trivially zero"
    for a, b in zip(trl_grads, verl_grads):
        assert torch.allclose(a, b, atol=TOL, rtol=0), (a - b).abs().max()


def verl_logged(micro_metrics: list[dict]) -> dict[str, float]:
    """What veRL logs for one optimizer step from its micro-batches' loss metrics, one DP rank: the engine's
    ``postprocess_batch_func`` (``append_to_dict``), ``TrainingWorker.train_mini_batch`` (``Metric.aggregate_dp``)
    and the trainer's ``reduce_metrics``."""
    from verl.utils.metric import Metric
    from verl.utils.metric.utils import reduce_metrics
    from verl.utils.py_functional import append_to_dict

    step = {}
    for metrics in micro_metrics:
        append_to_dict(step, metrics)
    step = {k: Metric.aggregate_dp([v]) if isinstance(v, Metric) else v for k, v in step.items()}
    return reduce_metrics({k: v if isinstance(v, list) else [v] for k, v in step.items()})


@pytest.mark.parametrize("spec_name,regime", [("mimo7b_dapo_occ", "occ"), ("mimo7b_dapo_occ", "policy"),
                                              ("mimo7b_gspo_occ", "occ"), ("mimo7b_dapo_occ", "grpo-occ"),
                                              ("mimo7b_dapo_occ", "ce"), ("mimo7b_gspo_occ", "ce")])
def test_logged_mtp_loss_is_the_steps_mtp_term_on_both_backends(spec_name, regime, tmp_path, results_dir,
                                                                 monkeypatch):
    """``mtp/loss`` is the optimizer step's MTP term (the sum of what its micro-batches add to the loss), for
    every algorithm and regime: on veRL summed over micro-batches as veRL sums its ``pg_loss`` (DAPO's token-mean
    shares used to be averaged, i.e. divided by the micro-batch count), on TRL the mean of per-micro-batch values
    over the step; both backends log the same number where their terms agree (policy / occ)."""
    import verl.workers.utils.losses as losses

    from backends.verl_backend import plugin

    overrides = [f"mtp.regime={regime.removeprefix('grpo-')}"] + (["algorithm.name=grpo"] if "grpo" in regime else [])
    spec = load_spec(REPO / "specs" / f"{spec_name}.yaml", overrides)
    config = actor_config(spec, tmp_path)
    micro = make_step(seed=13, n_micro=3)
    tokens, sequences = int(sum(float(m["mask"].sum()) for m in micro)), sum(m["mask"].shape[0] for m in micro)
    regime_name = overrides[0].split("=")[1]
    for name, value in (("calibrators", {}), ("engine_patched", True), ("regime", regime_name), ("step", 1)):
        monkeypatch.setattr(plugin._State, name, value)
    terms, logged = [], []
    for n, m in enumerate(micro):
        model_output, data, _ = verl_batch(m, spec.train.temperature, 1, tokens, sequences, junk_seed=n)
        base, _ = losses.ppo_loss.__wrapped__(config, model_output, data)
        total, metrics = losses.ppo_loss(config, model_output, data)
        terms.append((total - base).item())
        logged.append(metrics)
    verl = verl_logged(logged)["mtp/loss"]
    assert abs(verl - sum(terms)) <= TOL, (verl, sum(terms), terms)
    assert abs(verl) > 1e-4 and len(set(round(t, 9) for t in terms)) == len(micro)

    trl, trl_metrics = trl_losses(spec, micro, spec.train.temperature)
    trl_logged = sum(trl_metrics["mtp/loss"]) / len(trl_metrics["mtp/loss"])  # TRL's log(): the mean of the lists
    assert abs(trl_logged - float(sum(trl))) <= TOL, (trl_logged, float(sum(trl)))
    if regime != "ce":  # ce: veRL's token mean over the step, TRL's mean of micro-batch token means
        assert abs(trl_logged - verl) <= TOL, (trl_logged, verl)


@pytest.mark.parametrize("spec_name", ["mimo7b_dapo_occ", "mimo7b_gspo_occ"])
@pytest.mark.parametrize("dp_size", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_verl_term_normalisation_matches_verl_policy_loss(spec_name, dp_size, weighted, tmp_path, results_dir):
    """Regime policy with coef 1 is veRL's own main-head loss on the MTP log-probs: same value for token-mean
    (DAPO, with the dual clip veRL's clip_ratio_c and the MTP term share) and seq-mean-token-mean (GSPO, whose veRL
    loss has no dual clip) under veRL's global normalisers, also with dp_size 2, and with veRL's
    rollout-correction weights applied per token as veRL applies them to the main loss."""
    from verl.trainer.ppo.core_algos import get_policy_loss_fn

    from backends.verl_backend.hooks import OccSettings, base_loss_mode, mtp_term

    gspo = spec_name == "mimo7b_gspo_occ"
    spec = load_spec(REPO / "specs" / f"{spec_name}.yaml",
                     ["mtp.regime=policy", "mtp.coef=1.0"] + (["mtp.policy_clip.dual_clip=null"] if gspo else []))
    config = actor_config(spec, tmp_path)
    assert gspo or config.clip_ratio_c == spec.mtp.policy_clip.dual_clip == 10.0  # one dual clip for both heads
    settings = OccSettings.from_profile(config.profile)
    m = make_step(seed=7, n_micro=1)[0]
    m["logp_old"] = m["logp_old"] - 5.0 * m["mask"] * (torch.arange(m["mask"].shape[1]) % 3 == 0)  # [B, R]: some
    # tokens the MTP head finds far likelier than the rollout policy did (ratio > 10): the dual clip binds
    tokens, sequences = 3 * int(m["mask"].sum()), 3 * m["mask"].shape[0]  # this micro-batch is one of several
    weights = torch.rand(m["mask"].shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 \
        if weighted else None  # [B, R], truncated-IS-like values in [0, 2)
    model_output, data, logp_mtp = verl_batch(m, 1.0, dp_size, tokens, sequences, is_weights=weights)
    ours = mtp_term(settings, settings.calibrator(), config, model_output, data).loss
    unweighted = mtp_term(settings, settings.calibrator(), config, *verl_batch(m, 1.0, dp_size, tokens, sequences)[:2])
    assert (abs(ours.item() - unweighted.loss.item()) > 1e-4) == weighted, "the weights must change the term"

    reference_config = actor_config(spec, tmp_path)
    reference_config.global_batch_info.update(dp_size=dp_size, batch_num_tokens=tokens, global_batch_size=sequences,
                                              loss_scale_factor=None)
    loss_fn = get_policy_loss_fn(base_loss_mode(config.policy_loss.loss_mode))
    theirs, _ = loss_fn(old_log_prob=m["logp_old"], log_prob=logp_mtp, advantages=data["advantages"],
                        response_mask=m["mask"].bool(), loss_agg_mode=config.loss_agg_mode, config=reference_config,
                        rollout_is_weights=weights)
    assert abs(ours.item() - theirs.item()) <= TOL, (ours.item(), theirs.item())
    if not gspo:
        no_dual_clip = actor_config(spec, tmp_path, clip_ratio_c=1e9)
        no_dual_clip.global_batch_info.update(reference_config.global_batch_info)
        unclipped, _ = loss_fn(old_log_prob=m["logp_old"], log_prob=logp_mtp, advantages=data["advantages"],
                               response_mask=m["mask"].bool(), loss_agg_mode=config.loss_agg_mode,
                               config=no_dual_clip, rollout_is_weights=weights)
        assert abs(unclipped.item() - theirs.item()) > 1e-3, "the dual clip must bind in this test"
    g_ours, = torch.autograd.grad(ours, m["logits"], retain_graph=True)
    g_theirs, = torch.autograd.grad(theirs, m["logits"])
    # GSPO with per-token weights: veRL differentiates GSPO-token (each token's loss through its own log-prob, the
    # sequence ratio held fixed); the core's sequence ratio spreads each token's weight over the whole sequence.
    # Equal gradients without weights (or with one weight per sequence); with token weights only the value matches.
    gspo_token_weights = weighted and config.policy_loss.loss_mode == "occctl_gspo"
    assert torch.allclose(g_ours, g_theirs, atol=TOL, rtol=0) != gspo_token_weights


@pytest.mark.parametrize("dp_size", [1, 2])
def test_verl_ce_term_is_verls_token_mean_of_the_mtp_nll(dp_size, tmp_path, results_dir):
    """Regime ce (the plugin's): coef x veRL's token-mean ``agg_loss`` of the MTP head's NLL under the step's
    global token count, for any algorithm (GSPO's seq-mean-token-mean included); no importance weights."""
    from verl.trainer.ppo.core_algos import agg_loss

    from backends.verl_backend.hooks import OccSettings, mtp_term

    spec = load_spec(REPO / "specs" / "mimo7b_gspo_occ.yaml", ["mtp.regime=ce", "mtp.coef=0.3"])
    config = actor_config(spec, tmp_path)
    settings = OccSettings.from_profile(config.profile)
    assert settings.plugin_term
    m = make_step(seed=11, n_micro=1)[0]
    tokens, sequences = 3 * int(m["mask"].sum()), 3 * m["mask"].shape[0]
    weights = torch.full(m["mask"].shape, 0.5, dtype=torch.float64)
    model_output, data, logp_mtp = verl_batch(m, 1.0, dp_size, tokens, sequences, is_weights=weights)
    ours = mtp_term(settings, settings.calibrator(), config, model_output, data).loss
    theirs = 0.3 * agg_loss(loss_mat=-logp_mtp, loss_mask=m["mask"].bool(), loss_agg_mode="token-mean",
                            dp_size=dp_size, batch_num_tokens=tokens, global_batch_size=sequences)
    assert abs(ours.item() - theirs.item()) <= TOL, (ours.item(), theirs.item())
    g_ours, = torch.autograd.grad(ours, m["logits"], retain_graph=True)
    g_theirs, = torch.autograd.grad(theirs, m["logits"])
    assert torch.allclose(g_ours, g_theirs, atol=TOL, rtol=0)


def test_reference_preset_is_the_authors_lambda_per_rank_and_micro_batch(tmp_path, results_dir):
    """``mtp.occ.preset: reference`` on veRL: no all-reduce over data-parallel ranks, each micro-batch alone, and
    lambda = 0.1 x the mean over the padded [B, max_response_length] batch of dRL dMTP / (dMTP^2 + eps), as the
    authors' legacy actor pads it (the slot after each response's end is zero here: veRL computes no old
    log-prob there)."""
    from backends.verl_backend.hooks import OccSettings, mtp_term

    spec = load_spec(REPO / "specs" / "mimo7b_dapo_occ.yaml", ["mtp.occ={preset: reference}"])
    config = actor_config(spec, tmp_path)
    settings = OccSettings.from_profile(config.profile)

    def no_all_reduce(t):
        raise AssertionError("the reference preset must not all-reduce over data-parallel ranks")

    calibrator = settings.calibrator(no_all_reduce)
    micro = make_step(seed=5, n_micro=3)
    tokens, sequences = int(sum(float(m["mask"].sum()) for m in micro)), sum(m["mask"].shape[0] for m in micro)
    calibrator.begin_step()
    lambdas = []
    for n, m in enumerate(micro):
        model_output, data, logp_mtp = verl_batch(m, 1.0, 2, tokens, sequences, junk_seed=n)
        lam = mtp_term(settings, calibrator, config, model_output, data).metrics["occ/lambda"]
        d_rl = (m["logp_main"] - m["logp_old"]) * m["mask"]  # [B, R]
        d_mtp = (logp_mtp.detach() - m["logp_old"]) * m["mask"]
        theirs = 0.1 * float((d_rl * d_mtp / (d_mtp ** 2 + 1e-8)).sum()) / (m["mask"].shape[0] * 8192)
        assert lam == pytest.approx(theirs, rel=1e-9, abs=1e-15)
        lambdas.append(lam)
    assert len(set(lambdas)) == len(micro) and all(lam != 0 for lam in lambdas)


def test_response_slices_match_verl_no_padding_2_padding():
    """The main head's slice (lag 1) is veRL's own ``no_padding_2_padding``; the MTP head's sits one earlier."""
    from tensordict import TensorDict
    from verl.workers.utils.padding import no_padding_2_padding

    from backends.verl_backend.hooks import response_values

    lens_p, lens_r = torch.tensor([3, 2, 6]), torch.tensor([4, 1, 2])
    values = torch.nested.as_nested_tensor([torch.arange(float(p + r)) + 100 * i for i, (p, r)
                                            in enumerate(zip(lens_p.tolist(), lens_r.tolist()))], layout=torch.jagged)
    ids = lambda lens: torch.nested.as_nested_tensor([torch.zeros(n, dtype=torch.long) for n in lens.tolist()],  # noqa
                                                     layout=torch.jagged)
    data = TensorDict({"prompts": ids(lens_p), "responses": ids(lens_r)}, batch_size=[3])
    theirs = no_padding_2_padding(values, data)
    ours, valid = response_values(values, lens_p, lens_r, 4, lag=1)
    assert torch.equal(ours, theirs) and valid[0].all()
    mtp, reachable = response_values(values, lens_p, lens_r, 4, lag=2)
    assert mtp[0].tolist() == [1.0, 2.0, 3.0, 4.0]  # P=3: response token j at position 1 + j
    assert mtp[1].tolist()[:1] == [100.0 + 0.0]  # P=2: token 0 predicted at position 0
    assert reachable[1, 0] and not reachable[1, 1:].any()  # padding beyond the response stays invalid


def test_plugin_actor_loss_adds_the_term_in_training_steps_only(tmp_path, results_dir, monkeypatch):
    """veRL's actor loss as the plugin wraps it: PPO loss + the MTP term (regime occ), loud without the engine
    patch, and lambda_t's statistics restart with each optimizer step."""
    import verl.workers.utils.losses as losses

    from backends.verl_backend import hooks, plugin

    spec = load_spec(REPO / "specs" / "mimo7b_dapo_occ.yaml", ["mtp.regime=occ"])
    config = actor_config(spec, tmp_path)
    micro = make_step(seed=3, n_micro=2)
    tokens, sequences = int(sum(float(m["mask"].sum()) for m in micro)), 2 * micro[0]["mask"].shape[0]
    model_output, data, _ = verl_batch(micro[0], 1.0, 1, tokens, sequences)
    wrapped, original = losses.ppo_loss, losses.ppo_loss.__wrapped__
    monkeypatch.setattr(plugin._State, "calibrators", {})

    monkeypatch.setattr(plugin._State, "engine_patched", False)
    monkeypatch.setattr(plugin._State, "regime", "occ")
    with pytest.raises(RuntimeError, match="Megatron engine patch"):
        wrapped(config, model_output, data)

    monkeypatch.setattr(plugin._State, "engine_patched", True)
    monkeypatch.setattr(plugin._State, "regime", None)  # e.g. an evaluation pass with a loss
    base, _ = original(config, model_output, data)
    plain, metrics = wrapped(config, model_output, data)
    assert torch.equal(plain, base) and "occ/lambda" not in metrics

    monkeypatch.setattr(plugin._State, "regime", "occ")
    monkeypatch.setattr(plugin._State, "step", 1)
    total, metrics = wrapped(config, model_output, data)
    settings = hooks.OccSettings.from_profile(config.profile)
    alone = hooks.mtp_term(settings, settings.calibrator(), config, model_output, data)
    assert abs((total - base).item() - alone.loss.item()) <= TOL
    assert metrics["occ/lambda"] == alone.metrics["occ/lambda"] and metrics["mtp/coef"] == alone.metrics["mtp/coef"]
    _, second = wrapped(config, model_output, data)  # same step: statistics accumulate (sums double)
    assert abs(second["occ/c_hat"] - 2 * metrics["occ/c_hat"]) <= 1e-9 * max(1.0, abs(metrics["occ/c_hat"]))
    monkeypatch.setattr(plugin._State, "step", 2)  # the next optimizer step starts afresh
    _, third = wrapped(config, model_output, data)
    assert third["occ/c_hat"] == metrics["occ/c_hat"]
