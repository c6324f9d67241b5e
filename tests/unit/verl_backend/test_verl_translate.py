"""Spec -> veRL overrides and the adapter's checks (no veRL needed: these run in every environment). A test whose
check reads the prompt files uses the ``prompt_files`` fixture (conftest.py), never ../shared/data: CI has none."""

from pathlib import Path

import pytest

from occctl.errors import SpecError
from occctl.spec import load_spec

from backends.verl_backend.adapter import VerlBackend
from backends.verl_backend.options import override_key, parse_options
from backends.verl_backend.translate import format_value, verl_overrides

REPO = Path(__file__).resolve().parents[3]


def overrides_of(spec, run_dir=Path("/runs/x"), uri="sqlite:////r/mlflow.db") -> dict[str, str]:
    items = verl_overrides(spec, parse_options(spec.backend_options), run_dir, uri)
    return dict(item.split("=", 1) for item in items)


def spec_with(*sets, name="mimo7b_dapo_occ"):
    return load_spec(REPO / "specs" / f"{name}.yaml", list(sets))


@pytest.mark.parametrize("regime,ce_gradient,detach,native_coef,plugin", [
    ("detach", "whole_model", "true", "0.1", "false"),
    ("ce", "whole_model", "false", "0.0", "true"),  # the paper's CE: the plugin's, into the lm_head too
    ("ce", "verl_native_no_lm_head", "false", "0.1", "false"),  # veRL's native CE (output layer detached)
    ("policy", "whole_model", "false", "0.0", "true"), ("occ", "whole_model", "false", "0.0", "true")])
def test_regimes_map_to_verl_mtp_keys(regime, ce_gradient, detach, native_coef, plugin):
    o = overrides_of(spec_with(f"mtp.regime={regime}", "mtp.coef=0.1", f"backend_options.ce_gradient={ce_gradient}"))
    assert o["actor_rollout_ref.model.mtp.enable"] == "true" and o["actor_rollout_ref.model.mtp.enable_train"] == "true"
    assert o["actor_rollout_ref.model.mtp.detach_encoder"] == detach
    assert o["actor_rollout_ref.model.mtp.mtp_loss_scaling_factor"] == native_coef
    assert o["+actor_rollout_ref.actor.profile.occctl_regime"] == regime
    assert o["+actor_rollout_ref.actor.profile.occctl_coef"] == "0.1"
    assert o["+actor_rollout_ref.actor.profile.occctl_plugin_term"] == plugin
    assert o["actor_rollout_ref.actor.policy_loss.loss_mode"] == "occctl_vanilla"  # fails loudly without the plugin
    assert o["+ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES"] == "backends.verl_backend.plugin"


def test_mtp_disabled_is_plain_verl():
    o = overrides_of(spec_with("mtp.enabled=false"))
    assert o["actor_rollout_ref.model.mtp.enable"] == "false"
    assert o["actor_rollout_ref.actor.policy_loss.loss_mode"] == "vanilla"
    assert not any("occctl" in k or "VERL_USE_EXTERNAL_MODULES" in k for k in o)


@pytest.mark.parametrize("algorithm,mode,agg,clip", [("dapo", "occctl_vanilla", "token-mean", ("0.2", "0.28")),
                                                     ("grpo", "occctl_vanilla", "seq-mean-token-mean", ("0.2", "0.2")),
                                                     ("gspo", "occctl_gspo", "seq-mean-token-mean",
                                                      ("0.0003", "0.0004"))])
def test_algorithms(algorithm, mode, agg, clip):
    o = overrides_of(spec_with(f"algorithm={{name: {algorithm}, samples_per_prompt: 16}}"))
    assert o["actor_rollout_ref.actor.policy_loss.loss_mode"] == mode
    assert o["actor_rollout_ref.actor.loss_agg_mode"] == agg
    assert (o["actor_rollout_ref.actor.clip_ratio_low"], o["actor_rollout_ref.actor.clip_ratio_high"]) == clip
    assert o["algorithm.adv_estimator"] == "grpo" and o["actor_rollout_ref.actor.use_kl_loss"] == "false"


def test_units_batches_and_paths():
    o = overrides_of(spec_with(), run_dir=Path("/runs/mimo"))
    assert o["trainer.total_training_steps"] == "200"  # 800 optimizer steps / 4 per generation round
    assert o["data.train_batch_size"] == "128" and o["actor_rollout_ref.rollout.n"] == "16"
    assert o["actor_rollout_ref.actor.ppo_mini_batch_size"] == "32"  # prompts per optimizer step
    assert o["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"] == "2"  # 512 / 16 DP ranks / 16 micro-batches
    assert o["trainer.save_freq"] == "200"  # save_every_steps 0: the final checkpoint only
    assert o["trainer.default_local_dir"] == "/runs/mimo/verl/checkpoints"
    assert o["data.train_files"] == "/runs/mimo/data/train.parquet"
    assert o["trainer.logger"] == "['console','mlflow']" and o["trainer.project_name"] == "occ-mimo7b"
    assert o["+ray_kwargs.ray_init.runtime_env.env_vars.MLFLOW_TRACKING_URI"] == "'sqlite:////r/mlflow.db'"
    assert o["actor_rollout_ref.actor.megatron.tensor_model_parallel_size"] == "2"
    assert o["actor_rollout_ref.actor.megatron.context_parallel_size"] == "2"
    assert o["actor_rollout_ref.rollout.tensor_model_parallel_size"] == "4"
    assert o["+reward.reward_kwargs.max_resp_len"] == "8192" and o["reward.reward_manager.name"] == "dapo"
    assert o["actor_rollout_ref.actor.optim.lr_warmup_steps"] == "10"  # the spec's raw override, last
    o = overrides_of(spec_with("train.save_every_steps=40", "tracking.mlflow=false"))
    assert o["trainer.save_freq"] == "10" and o["trainer.logger"] == "['console']"
    assert not any("MLFLOW" in k for k in o)


def test_dynamic_sampling_and_speculative_rollout_switch():
    o = overrides_of(spec_with("backend_options.dynamic_sampling={enabled: true, max_inflight_gen_batches: 2}",
                               "backend_options.rollout.speculative=true"))
    assert o["algorithm.filter_groups.enable"] == "true" and o["algorithm.filter_groups.metric"] == "acc"
    assert o["algorithm.filter_groups.max_inflight_gen_batches"] == "2"
    assert o["actor_rollout_ref.model.mtp.enable_rollout"] == "true"


def test_seeds_are_verls_own_unless_the_spec_sets_one(tmp_path, prompt_files):
    from backends.verl_backend.translate import SEED_KEYS

    o = overrides_of(spec_with())  # the shipped specs leave train.seed out, as the paper's runs used veRL's
    assert not any(key in o for key in SEED_KEYS)
    o = overrides_of(spec_with("train.seed=3"))
    assert [o[key] for key in SEED_KEYS] == ["3"] * 4
    explicit = tmp_path / "seeded.yaml"
    explicit.write_text((REPO / "specs" / "mimo7b_dapo_occ.yaml").read_text().replace("  lr: 1.0e-6\n",
                                                                                        "  lr: 1.0e-6\n  seed: 0\n"))
    assert overrides_of(load_spec(explicit))["actor_rollout_ref.actor.megatron.seed"] == "0"  # 0 written is set
    problems = VerlBackend().check(spec_with("backend_options.overrides=[data.seed=5]"))
    assert any("data.seed is set by occctl from the spec" in line for line in problems), problems


def test_values_keep_their_type_in_hydra_grammar():
    assert format_value(True) == "true" and format_value(None) == "null" and format_value(1e-6) == "1e-06"
    assert format_value("1") == "'1'" and format_value("true") == "'true'"  # strings stay strings (Ray env vars)
    assert format_value("sqlite:////a/b.db") == "'sqlite:////a/b.db'" and format_value("a/b-c.d") == "a/b-c.d"
    assert format_value(["console", "mlflow"]) == "['console','mlflow']"
    assert override_key("+a.b=1") == "a.b" and override_key("~a.b") == "a.b" and override_key("a.b") is None


def test_check_reports_every_problem(results_dir, prompt_files):
    spec = spec_with("train.steps=802", "mtp.occ.baseline=mtp_old", "mtp.occ.oracle_every_steps=5",
                     "backend_options.parallel.tp=3",
                     "backend_options.overrides=[actor_rollout_ref.actor.optim.lr=1, not an override, "
                     "algorithm.filter_groups.enable=true, '+ray_kwargs.ray_init.address=auto']")
    problems = VerlBackend().check(spec)
    text = "\n".join(problems)
    assert "train.steps = 802 must be a multiple of train.optimizer_steps_per_generation = 4" in text
    assert "mtp.occ.baseline" in text and "oracle_every_steps" in text
    assert "parallel.tp x parallel.pp x parallel.cp = 12 must divide the 128 GPUs" in text
    assert "actor_rollout_ref.actor.optim.lr is set by occctl from the spec" in text
    assert "'not an override' is not a veRL override" in text
    assert "algorithm.filter_groups.enable is set by occctl" in text  # use backend_options.dynamic_sampling
    assert "ray_kwargs.ray_init.address is set by occctl" in text  # use backend_options.ray_address


def test_what_veRL_cannot_honour_is_refused(prompt_files):
    text = "\n".join(VerlBackend().check(spec_with("mtp.occ.estimator=oracle")))
    assert "mtp.occ.estimator: oracle (lambda_t from each micro-batch's exact gradients) is TRL-only" in text
    text = "\n".join(VerlBackend().check(spec_with("mtp.policy_clip.dual_clip=null")))
    assert "mtp.policy_clip.dual_clip: null cannot hold on veRL: the dapo loss of the main head" in text
    assert VerlBackend().check(spec_with("mtp.policy_clip.dual_clip=null", name="mimo7b_gspo_occ")) == []
    o = overrides_of(spec_with("mtp.policy_clip.dual_clip=4.5"))
    assert o["actor_rollout_ref.actor.clip_ratio_c"] == "4.5"  # the main head's dual clip is the MTP term's
    assert o["+actor_rollout_ref.actor.profile.occctl_policy_clip.dual_clip"] == "4.5"
    problems = VerlBackend().check(spec_with("backend_options.overrides=[actor_rollout_ref.actor.clip_ratio_c=3.0]"))
    assert any("clip_ratio_c is set by occctl from the spec" in line for line in problems), problems


def test_reference_preset_reaches_the_workers():
    o = overrides_of(spec_with("mtp.occ={preset: reference}"))
    profile = "+actor_rollout_ref.actor.profile.occctl_"
    assert o[profile + "dp_reduce"] == "false" and o[profile + "calibrator.mask"] == "padded"
    assert o[profile + "calibrator.estimator"] == "mean_of_ratios" and o[profile + "calibrator.scope"] == "micro_batch"
    assert o[profile + "calibrator.lambda_plus"] == "0.1" and o[profile + "padded_width"] == "8192"
    assert overrides_of(spec_with())[profile + "dp_reduce"] == "true"


def test_check_needs_a_model_path_and_data(monkeypatch, tmp_path):
    monkeypatch.setenv("OCCCTL_DATA_DIR", str(tmp_path))
    spec = load_spec(REPO / "specs" / "tiny_occ.yaml", ["backend=verl", "backend_options={data: {train: math6/x.jsonl, "
                                                        "val: /nonexistent/v.parquet}}"])
    text = "\n".join(VerlBackend().check(spec))
    assert "needs model.path" in text
    assert "backend_options.data.train: math6 data not found" in text
    assert "backend_options.data.val: no such file: /nonexistent/v.parquet" in text


def test_unknown_backend_option_is_a_spec_error_with_a_suggestion():
    with pytest.raises(SpecError, match=r"backend_options.rolout: unknown key \(did you mean 'rollout'\?\)"):
        parse_options({"rolout": {}, "data": {"train": "a/b.jsonl", "val": "a/c.jsonl"}})
    with pytest.raises(SpecError, match="backend_options.data: Field required"):
        parse_options({})


def test_dry_run_without_verl_prints_the_command_and_says_so(monkeypatch, results_dir, capsys):
    from backends.verl_backend import validation

    monkeypatch.setattr(validation, "verl_version", lambda: None)
    plan = VerlBackend().prepare(spec_with(), results_dir / "runs" / "x")
    assert plan.native_config["validation"].startswith("skipped: veRL is not installed")
    assert plan.native_config["config"] is None
    assert "verl.trainer.main_ppo" in plan.command and "model_engine=megatron" in plan.command
    assert "validation skipped" in capsys.readouterr().err
    from occctl.errors import EnvError

    with pytest.raises(EnvError, match="veRL is not installed"):
        VerlBackend().train(plan, lambda step, metrics: None)
