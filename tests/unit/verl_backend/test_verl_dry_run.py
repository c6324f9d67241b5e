"""``occctl run SPEC --dry-run`` for the veRL specs: every spec x regime composes against veRL's shipped config and
passes veRL's own checks on CPU; a nonexistent veRL key exits 2 with veRL's message and no traceback."""

import shlex
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

pytest.importorskip("verl")

from occctl.cli import app  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


def shipped_verl_specs() -> list[str]:
    """Every spec under specs/ whose ``backend`` is verl, as its path under specs/ without ``.yaml``: a new veRL
    spec is dry-run here without being listed."""
    root = REPO / "specs"
    return [p.relative_to(root).with_suffix("").as_posix() for p in sorted(root.rglob("*.yaml"))
            if (yaml.safe_load(p.read_text()) or {}).get("backend") == "verl"]


SPECS = shipped_verl_specs()
REGIMES = ["detach", "ce", "policy", "occ"]
runner = CliRunner()


pytestmark = pytest.mark.usefixtures("prompt_files")


def dry_run(spec: str, *sets: str):
    args = ["run", str(REPO / "specs" / f"{spec}.yaml"), "--dry-run"]
    for item in sets:
        args += ["--set", item]
    return runner.invoke(app, args)


def launch_overrides(stdout: str) -> dict[str, str]:
    """The printed command (one line, after the JSON) -> {key: value} of its veRL overrides."""
    line = next(line for line in stdout.splitlines() if " -m verl.trainer.main_ppo " in line)
    words = shlex.split(line)
    assert words[0] == "env" and "VERL_USE_EXTERNAL_MODULES=backends.verl_backend.plugin" in words
    start = words.index("verl.trainer.main_ppo") + 1
    return dict(word.split("=", 1) for word in words[start:])


def test_the_verl_specs_are_found():
    """An empty list would leave the parametrized dry runs below with nothing to run, silently."""
    assert SPECS and {"glm45air_occ", "mimo7b_dapo_occ", "mimo7b_gspo_occ"} <= set(SPECS), SPECS


@pytest.mark.parametrize("regime", REGIMES)
@pytest.mark.parametrize("spec", SPECS)
def test_dry_run_composes_and_validates(spec, regime, results_dir):
    result = dry_run(spec, f"mtp.regime={regime}")
    assert result.exit_code == 0, result.output
    assert '"validation": "passed"' in result.stdout and '"shape_check": "passed' in result.stdout
    assert '"verl_version": "0.9.1"' in result.stdout
    o = launch_overrides(result.stdout)
    assert o["model_engine"] == "megatron" and o["actor_rollout_ref.rollout.name"] == "sglang"
    assert o["actor_rollout_ref.model.mtp.enable"] == "true" and o["actor_rollout_ref.model.mtp.enable_train"] == "true"
    assert o["actor_rollout_ref.model.mtp.enable_rollout"] == "false"  # speculative decoding off by default
    assert o["actor_rollout_ref.model.mtp.detach_encoder"] == ("true" if regime == "detach" else "false")
    native = {"detach": "0.1", "ce": "0.0", "policy": "0.0", "occ": "0.0"}[regime]  # ce: the plugin's
    assert o["actor_rollout_ref.model.mtp.mtp_loss_scaling_factor"] == native
    assert o["+actor_rollout_ref.actor.profile.occctl_regime"] == regime
    gspo = spec == "mimo7b_gspo_occ"
    assert o["actor_rollout_ref.actor.policy_loss.loss_mode"] == ("occctl_gspo" if gspo else "occctl_vanilla")
    assert o["actor_rollout_ref.actor.loss_agg_mode"] == ("seq-mean-token-mean" if gspo else "token-mean")
    assert o["trainer.total_training_steps"] == "200" and o["data.train_batch_size"] == "128"
    assert o["actor_rollout_ref.actor.optim.lr"] == "1e-06" and o["actor_rollout_ref.rollout.temperature"] == "1.0"
    assert o["trainer.logger"] == "['console','mlflow']"
    assert o["+ray_kwargs.ray_init.runtime_env.env_vars.HF_HUB_DISABLE_TELEMETRY"] == "'1'"  # Ray: env values are str
    assert o["trainer.default_local_dir"] == str(results_dir / "runs" / spec / "verl" / "checkpoints")
    assert o["+ray_kwargs.ray_init.runtime_env.env_vars.MLFLOW_TRACKING_URI"] == \
        f"'sqlite:///{results_dir / 'mlflow.db'}'"
    assert o["reward.reward_manager.name"] == "dapo" and o["+reward.reward_kwargs.overlong_buffer_cfg.len"] == "4096"
    assert not (results_dir / "runs").exists(), "a dry run writes no run directory"


@pytest.mark.parametrize("spec", SPECS)
def test_reference_preset_dry_run_passes(spec, results_dir):
    result = dry_run(spec, "mtp.occ={preset: reference}")
    assert result.exit_code == 0, result.output
    assert '"validation": "passed"' in result.stdout and '"shape_check": "passed' in result.stdout
    o = launch_overrides(result.stdout)
    assert o["+actor_rollout_ref.actor.profile.occctl_dp_reduce"] == "false"
    assert o["actor_rollout_ref.actor.clip_ratio_c"] == "10.0"
    assert not any(key.endswith(".seed") or key.endswith("_seed") for key in o)  # veRL's own seeds


def test_verls_native_ce_stays_available(results_dir):
    result = dry_run("glm45air_occ", "mtp.regime=ce", "backend_options.ce_gradient=verl_native_no_lm_head")
    assert result.exit_code == 0, result.output
    o = launch_overrides(result.stdout)
    assert o["actor_rollout_ref.model.mtp.mtp_loss_scaling_factor"] == "0.1"
    assert o["+actor_rollout_ref.actor.profile.occctl_plugin_term"] == "false"


def test_nonexistent_verl_key_exits_2_with_verls_message(results_dir):
    result = dry_run("mimo7b_dapo_occ", "backend_options.overrides=[actor_rollout_ref.actor.no_such_key=1]")
    assert result.exit_code == 2
    assert "rejected the config" in result.stderr and "Could not override 'actor_rollout_ref.actor.no_such_key'" \
        in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("spec,sets,message", [
    ("mimo7b_dapo_occ", ["backend_options.parallel={tp: 64, pp: 1, cp: 1}"],
     "backend_options.parallel.tp = 64 must divide the 32 attention heads of XiaomiMiMo/MiMo-7B-RL"),
    ("glm45air_occ", ["backend_options.parallel.tp=16"],
     "backend_options.parallel.tp = 16 must divide the 8 key-value heads"),
    ("mimo7b_gspo_occ", ["backend_options.parallel.pp=8"],
     "backend_options.parallel.pp = 8 must divide the 36 decoder layers"),
    ("glm45air_occ", ["backend_options.overrides=[actor_rollout_ref.actor.clip_ratio_c=abc]"],
     "actor_rollout_ref.actor.clip_ratio_c is set by occctl from the spec"),  # mtp.policy_clip.dual_clip
    ("glm45air_occ", ["backend_options.overrides=[actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=abc]"],
     "lr_warmup_steps_ratio = 'abc': veRL takes float there (veRL's McoreOptimizerConfig.lr_warmup_steps_ratio)"),
    ("mimo7b_dapo_occ", ["backend_options.overrides=[actor_rollout_ref.actor.optim.lr_warmup_steps=ten]"],
     "lr_warmup_steps = 'ten': veRL takes Optional[int] there (veRL's McoreOptimizerConfig.lr_warmup_steps)"),
    ("mimo7b_gspo_occ", ["mtp.occ.estimator=oracle"],
     "mtp.occ.estimator: oracle (lambda_t from each micro-batch's exact gradients) is TRL-only"),
    ("mimo7b_gspo_occ", ["mtp.zero_first_position=true"], "mtp.zero_first_position: TRL-only for now"),
    ("mimo7b_dapo_occ", ["backend_options.overrides=[trainer.val_only=1]"],
     "trainer.val_only = 1: veRL takes bool there (default False in veRL's _generated_ppo_megatron_trainer.yaml)"),
])
def test_launches_that_cannot_run_exit_2_with_the_numbers(spec, sets, message, results_dir):
    result = dry_run(spec, *sets)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert not (results_dir / "runs").exists()


def test_well_typed_raw_overrides_pass(results_dir):
    result = dry_run("mimo7b_dapo_occ", "backend_options.overrides=[actor_rollout_ref.actor.optim.lr_warmup_steps=10, "
                     "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio=0, trainer.val_only=false, "
                     "data.image_key=2024]")
    assert result.exit_code == 0, result.output  # an int where veRL declares a float, a number for a string
    assert launch_overrides(result.stdout)["actor_rollout_ref.actor.optim.lr_warmup_steps_ratio"] == "0"


def test_bad_value_is_caught_by_verls_dataclasses(results_dir):
    """Hydra accepts any value; veRL's RolloutConfig refuses the removed synchronous rollout mode."""
    result = dry_run("glm45air_occ", "backend_options.overrides=[actor_rollout_ref.rollout.mode=sync]")
    assert result.exit_code == 2, result.output
    assert "building actor_rollout_ref.rollout" in result.stderr and "'sync' has been removed" in result.stderr


def test_verls_batch_checks_run(results_dir):
    """validate_config: mini-batch sequences must split over data-parallel ranks x micro-batch size."""
    result = dry_run("mimo7b_dapo_occ", "backend_options.micro_batch.log_prob_sequences_per_gpu=4",
                     "backend_options.overrides=[actor_rollout_ref.rollout.log_prob_micro_batch_size=8]")
    assert result.exit_code == 2, result.output
    assert "log_prob_micro_batch_size" in result.stderr


@pytest.mark.parametrize("template,response", [("dapo", "so\nAnswer: 42"), ("deepscaler", "so $\\boxed{42}$")])
def test_converted_prompts_route_to_verls_scorers(template, response, tmp_path):
    """The parquet the launch writes: veRL's dataset columns, and its scorer accepts the template's answer format."""
    import datasets
    from verl.utils.reward_score import default_compute_score

    from backends.verl_backend.prompts import write_parquet

    source = tmp_path / "p.jsonl"
    source.write_text('{"problem": "6 x 7?", "answer": "42"}\n')
    write_parquet(source, tmp_path / "p.parquet", template, "train")
    row = datasets.load_dataset("parquet", data_files=str(tmp_path / "p.parquet"))["train"][0]
    assert row["prompt"][0]["role"] == "user" and "6 x 7?" in row["prompt"][0]["content"]
    truth = row["reward_model"]["ground_truth"]
    score = lambda text: default_compute_score(row["data_source"], text, truth)  # noqa: E731
    value = lambda s: s["score"] if isinstance(s, dict) else s  # noqa: E731
    assert value(score(response)) == 1.0 and value(score(response.replace("42", "41"))) < 1.0
