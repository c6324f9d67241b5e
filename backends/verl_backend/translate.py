"""Spec -> the list of veRL 0.9.1 overrides for ``python -m verl.trainer.main_ppo`` (Megatron + SGLang).

Pure: no veRL import. One spec means one experiment: every value below comes from the spec or from
``backend_options``; a raw override may only set a key this module does not.

Units: occctl counts *optimizer* steps; a veRL step is one generation round (``data.train_batch_size`` prompts)
followed by ``optimizer_steps_per_generation`` mini-batch updates, so veRL steps = train.steps / that number.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from occctl.mtp_config import calibrator_kwargs, policy_clip_kwargs
from occctl.spec import Spec

from backends.verl_backend.options import VerlOptions, override_key

PLUGIN_MODULE = "backends.verl_backend.plugin"
PLUGIN_ENV = "VERL_USE_EXTERNAL_MODULES"  # imported by `import verl` in every process; import errors are raised
LOSS_PREFIX = "occctl_"  # policy-loss modes the plugin registers (unknown to veRL without it: a loud failure)
PROFILE = "actor_rollout_ref.actor.profile"  # McoreActorConfig.profile (dict[str, Any]): carries the OCC settings

# algorithm -> (veRL policy loss, loss_agg_mode); the same aggregation the TRL backend uses for it
ALGORITHMS = {
    "dapo": ("vanilla", "token-mean"),
    "grpo": ("vanilla", "seq-mean-token-mean"),
    "gspo": ("gspo", "seq-mean-token-mean"),
}
TEMPLATE_SOURCES = {"dapo": "math_dapo", "deepscaler": "HuggingFaceH4/MATH-500"}  # veRL's scorer routing key


def verl_steps(spec: Spec) -> int:
    return spec.train.steps // spec.train.optimizer_steps_per_generation


def verl_overrides(spec: Spec, options: VerlOptions, run_dir: Path, tracking_uri: str | None) -> list[str]:
    """Everything veRL needs, as ``key=value`` overrides (plus the spec's raw overrides, last)."""
    t, a, o = spec.train, spec.algorithm, options
    loss_mode, agg = ALGORITHMS[a.name]
    steps = verl_steps(spec)
    mini = t.prompts_per_generation // t.optimizer_steps_per_generation  # prompts per optimizer step
    items: dict[str, Any] = {
        "model_engine": "megatron",
        # data
        "data.train_files": str(run_dir / "data" / "train.parquet") if not _is_parquet(o.data.train) else o.data.train,
        "data.val_files": str(run_dir / "data" / "val.parquet") if not _is_parquet(o.data.val) else o.data.val,
        "data.prompt_key": "prompt",
        "data.truncation": "left",
        "data.max_prompt_length": o.data.max_prompt_tokens,
        "data.max_response_length": t.max_new_tokens,
        "data.train_batch_size": t.prompts_per_generation,
        "data.trust_remote_code": spec.model.trust_remote_code,
        # model
        "actor_rollout_ref.model.path": spec.model.path,
        "actor_rollout_ref.model.trust_remote_code": spec.model.trust_remote_code,
        **mtp_items(spec, options),
        # algorithm
        "algorithm.adv_estimator": "grpo",
        "algorithm.use_kl_in_reward": False,
        "algorithm.filter_groups.enable": o.dynamic_sampling.enabled,
        **({"algorithm.filter_groups.metric": o.dynamic_sampling.metric,
            "algorithm.filter_groups.max_inflight_gen_batches": o.dynamic_sampling.max_inflight_gen_batches}
           if o.dynamic_sampling.enabled else {}),
        # actor: loss
        "actor_rollout_ref.actor.policy_loss.loss_mode": (LOSS_PREFIX + loss_mode) if spec.mtp.enabled else loss_mode,
        "actor_rollout_ref.actor.loss_agg_mode": agg,
        "actor_rollout_ref.actor.clip_ratio_low": a.clip_low,
        "actor_rollout_ref.actor.clip_ratio_high": a.clip_high,
        **main_dual_clip(spec),
        "actor_rollout_ref.actor.use_kl_loss": False,
        "actor_rollout_ref.actor.entropy_coeff": 0,
        "actor_rollout_ref.actor.ppo_epochs": 1,
        # actor: batches
        "actor_rollout_ref.actor.ppo_mini_batch_size": mini,
        "actor_rollout_ref.actor.use_dynamic_bsz": o.micro_batch.dynamic,
        # actor: optimizer
        "actor_rollout_ref.actor.optim.lr": t.lr,
        "actor_rollout_ref.actor.optim.weight_decay": t.weight_decay,
        "actor_rollout_ref.actor.optim.clip_grad": t.max_grad_norm,
        # actor: Megatron
        **megatron_items(spec, options),
        # rollout
        "actor_rollout_ref.rollout.name": o.rollout.engine,
        "actor_rollout_ref.rollout.tensor_model_parallel_size": o.rollout.tp,
        "actor_rollout_ref.rollout.gpu_memory_utilization": o.rollout.gpu_memory_utilization,
        "actor_rollout_ref.rollout.max_num_batched_tokens": o.rollout.max_num_batched_tokens,
        "actor_rollout_ref.rollout.enable_chunked_prefill": o.rollout.enable_chunked_prefill,
        "actor_rollout_ref.rollout.n": a.samples_per_prompt,
        "actor_rollout_ref.rollout.temperature": t.temperature,
        "actor_rollout_ref.rollout.top_p": 1.0,
        "actor_rollout_ref.rollout.top_k": -1,
        "actor_rollout_ref.rollout.dtype": _dtype(spec),
        "actor_rollout_ref.rollout.val_kwargs.temperature": o.validation.temperature,
        "actor_rollout_ref.rollout.val_kwargs.top_p": o.validation.top_p,
        "actor_rollout_ref.rollout.val_kwargs.n": o.validation.samples_per_problem,
        "actor_rollout_ref.rollout.val_kwargs.do_sample": o.validation.temperature > 0,
        **micro_batch_items(spec, options),
        **seed_items(spec),
        # reward
        **reward_items(spec, options),
        # trainer
        "trainer.total_training_steps": steps,
        "trainer.total_epochs": 100000,  # steps decide; enough passes over any prompt set
        "trainer.project_name": spec.tracking.experiment,
        "trainer.experiment_name": spec.name,
        "trainer.logger": ["console", "mlflow"] if spec.tracking.mlflow else ["console"],
        "trainer.nnodes": o.nnodes,
        "trainer.n_gpus_per_node": o.gpus_per_node,
        "trainer.save_freq": (t.save_every_steps // t.optimizer_steps_per_generation) if t.save_every_steps else steps,
        "trainer.test_freq": o.validation.every_steps or -1,
        "trainer.val_before_train": o.validation.before_train,
        "trainer.log_val_generations": 0,
        "trainer.default_local_dir": str(run_dir / "verl" / "checkpoints"),
        "trainer.resume_mode": "disable",
        # Ray: the plugin and the tracking store must reach every worker, on this node or a cluster's
        **ray_items(spec, options, tracking_uri),
    }
    return [format_override(k, v) for k, v in items.items()] + list(o.overrides)


def main_dual_clip(spec: Spec) -> dict[str, Any]:
    """veRL's dual clip of the main loss (``clip_ratio_c``, vanilla loss only) is ``mtp.policy_clip.dual_clip``, the
    MTP policy term's: one value for both heads. veRL cannot switch it off (null is refused by the adapter's
    check for algorithms with veRL's vanilla loss; GSPO's loss has none, so veRL's default stays there)."""
    dual = spec.mtp.policy_clip.dual_clip
    return {} if dual is None else {"actor_rollout_ref.actor.clip_ratio_c": dual}


def plugin_term(spec: Spec, options: VerlOptions) -> bool:
    """Whether the occctl plugin computes the MTP term (policy, occ, and ce over the whole model) rather than
    veRL's native MTP loss (detach, and ce with ``ce_gradient: verl_native_no_lm_head``)."""
    m = spec.mtp
    return m.enabled and (m.regime in ("policy", "occ") or (m.regime == "ce" and options.ce_gradient == "whole_model"))


def mtp_items(spec: Spec, options: VerlOptions) -> dict[str, Any]:
    """``actor_rollout_ref.model.mtp.*`` per regime, and the OCC settings the plugin reads in the workers.

    detach: veRL's isolated path (``detach_encoder``; the plugin also detaches the shared output layer);
    ce: the plugin's cross-entropy into the whole model (or veRL's native one, ``ce_gradient``); policy / occ:
    the plugin adds the regime's policy loss on the MTP head's log-probs. Native CE off (factor 0) whenever the
    plugin computes the term.
    """
    key = "actor_rollout_ref.model.mtp"
    if not spec.mtp.enabled:
        return {f"{key}.enable": False}
    items = {
        f"{key}.enable": True,  # also keeps the MTP layer in the exported HF checkpoints
        f"{key}.enable_train": True,
        f"{key}.enable_rollout": options.rollout.speculative,
        f"{key}.detach_encoder": spec.mtp.regime == "detach",
        f"{key}.mtp_loss_scaling_factor": 0.0 if plugin_term(spec, options) else spec.mtp.coef,
    }
    for name, value in worker_profile(spec, options).items():
        if isinstance(value, dict):
            items.update({f"+{PROFILE}.{name}.{sub}": v for sub, v in value.items()})
        else:
            items[f"+{PROFILE}.{name}"] = value
    return items


def worker_profile(spec: Spec, options: VerlOptions) -> dict[str, Any]:
    """What the plugin reads in every worker (``actor.profile``, see ``hooks.OccSettings``): the regime, whether
    the MTP term is the plugin's, and the OCC core's arguments as ``occctl.mtp_config`` gives them."""
    m = spec.mtp
    return {
        "occctl_regime": m.regime,
        "occctl_coef": m.coef,
        "occctl_plugin_term": plugin_term(spec, options),
        "occctl_dp_reduce": m.occ.dp_reduce,
        "occctl_padded_width": spec.train.max_new_tokens,  # mask "padded": the authors' [B, max response length]
        "occctl_calibrator": calibrator_kwargs(spec),
        "occctl_policy_clip": policy_clip_kwargs(spec),
    }


def megatron_items(spec: Spec, options: VerlOptions) -> dict[str, Any]:
    key, p = "actor_rollout_ref.actor.megatron", options.parallel
    items: dict[str, Any] = {
        f"{key}.tensor_model_parallel_size": p.tp,
        f"{key}.pipeline_model_parallel_size": p.pp,
        f"{key}.context_parallel_size": p.cp,
        f"{key}.expert_model_parallel_size": p.ep,
        f"{key}.sequence_parallel": p.sequence_parallel,
        f"{key}.param_offload": options.offload.param,
        f"{key}.optimizer_offload": options.offload.optimizer,
        f"{key}.dtype": _dtype(spec),
        f"{key}.use_mbridge": True,  # HF checkpoints are written directly (global_step_N/actor/model/huggingface)
    }
    if p.vpp is not None:
        items[f"{key}.virtual_pipeline_model_parallel_size"] = p.vpp
    if p.etp is not None:
        items[f"{key}.expert_tensor_parallel_size"] = p.etp
    return items


SEED_KEYS = ("data.seed", "actor_rollout_ref.actor.megatron.seed", "actor_rollout_ref.rollout.seed",
             "actor_rollout_ref.actor.data_loader_seed")


def seed_items(spec: Spec) -> dict[str, Any]:
    """veRL's own seeds (data.seed null: torch's default generator; megatron, rollout and data loader 42), as the
    paper's runs had them, unless the spec sets ``train.seed``: then it seeds all four."""
    if "seed" not in spec.train.model_fields_set:
        return {}
    return dict.fromkeys(SEED_KEYS, spec.train.seed)


def micro_batch_items(spec: Spec, options: VerlOptions) -> dict[str, Any]:
    m = options.micro_batch
    if m.dynamic:
        return {"actor_rollout_ref.actor.ppo_max_token_len_per_gpu": m.max_tokens_per_gpu,
                "actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu": m.log_prob_max_tokens_per_gpu}
    return {"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": micro_batch_sequences(spec, options),
            "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": m.log_prob_sequences_per_gpu}


def micro_batch_sequences(spec: Spec, options: VerlOptions) -> int:
    """Sequences per micro-batch on one GPU: an optimizer step's completions over data-parallel ranks, then over
    ``train.micro_batches_per_step`` (gradient-accumulation micro-batches on each rank)."""
    per_rank = spec.completions_per_step // max(options.data_parallel, 1)
    return max(per_rank // spec.train.micro_batches_per_step, 1)


def reward_items(spec: Spec, options: VerlOptions) -> dict[str, Any]:
    """veRL's reward manager (naive, or dapo with the overlong buffer) and, for a dataset task graded by an occctl
    grader, veRL's custom reward function calling it (``occctl.tasks.verl_reward``); ``verl_math_dapo@1`` keeps
    veRL's own math_dapo scorer."""
    return {**manager_items(spec, options), **grader_items(spec)}


def grader_items(spec: Spec) -> dict[str, Any]:
    from occctl.tasks import grader_of

    grader = grader_of(spec.task)
    if spec.task.name != "dataset" or grader.startswith("verl_"):
        return {}
    from occctl.tasks import verl_reward

    return {"reward.custom_reward_function.path": verl_reward.__file__,
            "reward.custom_reward_function.name": "compute_score",
            "+reward.custom_reward_function.reward_kwargs.grader": grader}


def manager_items(spec: Spec, options: VerlOptions) -> dict[str, Any]:
    ob = options.overlong_buffer
    if not ob.enabled:
        return {"reward.reward_manager.name": "naive"}
    key = "+reward.reward_kwargs"
    return {
        "reward.reward_manager.name": "dapo",
        f"{key}.overlong_buffer_cfg.enable": True,
        f"{key}.overlong_buffer_cfg.len": ob.tokens,
        f"{key}.overlong_buffer_cfg.penalty_factor": ob.penalty_factor,
        f"{key}.overlong_buffer_cfg.log": False,
        f"{key}.max_resp_len": spec.train.max_new_tokens,
    }


def ray_items(spec: Spec, options: VerlOptions, tracking_uri: str | None) -> dict[str, Any]:
    env = "+ray_kwargs.ray_init.runtime_env.env_vars"
    items: dict[str, Any] = {}
    if options.ray_address:
        items["+ray_kwargs.ray_init.address"] = options.ray_address
    if options.worker_python:
        items["ray_kwargs.ray_init.runtime_env.py_executable"] = options.worker_python
    for name, value in launch_env(spec, tracking_uri).items():
        items[f"{env}.{name}"] = value
    return items


def launch_env(spec: Spec, tracking_uri: str | None) -> dict[str, str]:
    """Environment of the launch (driver) and, through Ray's runtime_env, of every worker."""
    env = {"HF_HUB_DISABLE_TELEMETRY": "1"}
    if spec.mtp.enabled:
        env[PLUGIN_ENV] = PLUGIN_MODULE
    if spec.tracking.mlflow and tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def managed_keys(spec: Spec, options: VerlOptions) -> set[str]:
    """Every key occctl models for this spec, including those only emitted when a feature is switched on (a raw
    override must not switch on, or half-configure, a feature behind the spec's back)."""
    full = options.model_copy(update={
        "overrides": [], "ray_address": "auto", "worker_python": "python",
        "parallel": options.parallel.model_copy(update={"vpp": 2, "etp": 1}),
        "micro_batch": options.micro_batch.model_copy(update={"dynamic": True, "max_tokens_per_gpu": 1,
                                                              "log_prob_max_tokens_per_gpu": 1}),
        "overlong_buffer": options.overlong_buffer.model_copy(update={"enabled": True}),
        "dynamic_sampling": options.dynamic_sampling.model_copy(update={"enabled": True}),
    })
    keys = set()
    for opts in (options.model_copy(update={"overrides": []}), full):
        seeded = spec.model_copy(update={"train": spec.train.model_copy(update={"seed": spec.train.seed})})
        for variant in (seeded, seeded.model_copy(update={"mtp": spec.mtp.model_copy(update={"enabled": True})})):
            items = verl_overrides(variant, opts, Path("/run"), "sqlite:///x")
            keys |= {key for key in map(override_key, items) if key}
    return keys


def _is_parquet(path: str) -> bool:
    return path.endswith(".parquet")


def _dtype(spec: Spec) -> str:
    return spec.model.dtype


_PLAIN = re.compile(r"^[A-Za-z0-9_./@-]+$")


def format_override(key: str, value: Any) -> str:
    """``key=value`` in Hydra's override grammar (strings quoted unless plainly safe)."""
    return f"{key}={format_value(value)}"


def format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):  # strings quoted inside: ['console','mlflow']
        return "[" + ",".join(_quote(v) if isinstance(v, str) else format_value(v) for v in value) + "]"
    text = str(value)
    return text if _PLAIN.match(text) and not _reads_as_other_type(text) else _quote(text)


def _reads_as_other_type(text: str) -> bool:
    """Whether Hydra would read this string as a number, bool or null (env vars must stay strings for Ray)."""
    if text.lower() in ("null", "true", "false", "nan", "inf", "-inf"):
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
