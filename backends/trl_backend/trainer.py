"""How the TRL backend builds its trainer: the MTP settings of a spec, the task's training rows as a dataset, and
an ``MtpGRPOTrainer`` on them; used by training (``adapter.py``) and by the benchmarks (``bench.py``)."""

from __future__ import annotations

import os
from typing import Any

from occctl.errors import RunError
from occctl.spec import Spec

from backends.trl_backend.translate import policy_loss_kwargs


def quiet_libraries() -> None:
    """No HF progress bars or telemetry, and no FutureWarning TRL causes by calling a deprecated transformers name
    (named below, one by one: any other warning, ours above all, stays visible); MLflow is ours, not the HF
    integration's."""
    for key, value in (("HF_HUB_DISABLE_TELEMETRY", "1"), ("TRL_EXPERIMENTAL_SILENCE", "1"),
                       ("DISABLE_MLFLOW_INTEGRATION", "TRUE")):
        os.environ.setdefault(key, value)
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    # TRL 1.16's unwrap_model_for_generation (every generation round) still reads transformers 5's deprecated alias
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning,
                            module="transformers")


def mtp_settings(spec: Spec, oracle_every_steps: int | None = None):
    """The trainer's MTP settings for the spec (None: plain GRPO without an MTP head)."""
    from occctl.mtp_config import calibrator_kwargs, uses_hidden_lambda, uses_oracle_lambda
    from occctl.occ.calibration import Calibrator

    from backends.trl_backend.hooks import MtpSettings

    if not spec.mtp.enabled:
        return None
    occ = spec.mtp.occ
    return MtpSettings(regime=spec.mtp.regime, coef=spec.mtp.coef, policy_kwargs=policy_loss_kwargs(spec),
                       oracle_every_steps=occ.oracle_every_steps if oracle_every_steps is None else oracle_every_steps,
                       calibrator=Calibrator(**calibrator_kwargs(spec)), baseline=occ.baseline,
                       oracle_lambda=uses_oracle_lambda(spec), hidden_lambda=uses_hidden_lambda(spec),
                       oracle_negative=occ.oracle_negative, draft_loss=spec.mtp.draft_loss,
                       draft_coef=spec.mtp.draft_coef)


def build_trainer(spec: Spec, native_config: dict[str, Any], loaded, mtp, callbacks: list[Any], reward: Any = None,
                  progress: Any = None):
    """An MtpGRPOTrainer on the task's training prompts, rewarded by the task's grader (``reward``: a
    ``TaskReward``, built here when not given); the MTP head becomes a submodule of the model so TRL's optimizer
    and device placement include it (``detach_head`` undoes that before saving)."""
    import torch
    from transformers import PrinterCallback
    from trl import GRPOConfig

    from occctl.tasks.rewards import TaskReward

    from backends.trl_backend.hooks import MtpGRPOTrainer

    model = loaded.model
    if native_config.get("vllm_mode") == "colocate":
        vllm_model_dir(loaded, native_config["output_dir"])
    if loaded.mtp_head is not None and mtp is not None:
        model.mtp_head = loaded.mtp_head
    dataset = train_dataset(spec, loaded.tokenizer, progress)
    config = GRPOConfig(**{**installed_names(native_config, GRPOConfig), "use_cpu": not torch.cuda.is_available()})
    trainer = MtpGRPOTrainer(model=model, reward_funcs=reward or TaskReward(spec.task, spec.train.max_new_tokens),
                             args=config, train_dataset=dataset, processing_class=loaded.tokenizer,
                             callbacks=callbacks, mtp=mtp, speculative=spec.train.speculative)
    trainer.remove_callback(PrinterCallback)
    return trainer


def vllm_model_dir(loaded, output_dir: str) -> None:
    """Colocated vLLM builds its ``vllm.LLM`` from ``model.name_or_path``. A model from a hub id keeps it; one built
    from a config or loaded from a local folder (a warm start, whose MTP layout vLLM need not read) is saved first,
    main model only, to ``<output_dir>/vllm_model`` and named by it. The weights there are the start's; TRL pushes
    the policy's before every generation."""
    from dataclasses import replace
    from pathlib import Path

    from occctl.models import save_checkpoint

    source = loaded.model.name_or_path
    if source and not Path(source).expanduser().exists():
        return
    folder = save_checkpoint(Path(output_dir) / "vllm_model", replace(loaded, mtp_head=None))
    loaded.model.name_or_path = loaded.model.config._name_or_path = str(folder)  # the model keeps its own copy


def train_dataset(spec: Spec, tokenizer: Any, progress: Any = None):
    """The task's training rows as TRL's ``prompt`` (rendered in the task's format) and ``answer`` columns (a
    dataset row: its list of answers). Prompts over ``task.max_prompt_tokens`` are dropped (DAPO's
    filter_overlong_prompts) and counted; when none is left that is a RunError."""
    from datasets import Dataset

    from occctl.tasks import get_task

    task = get_task(spec.task)
    problems = task.train_problems(spec.task, seed=spec.train.seed)
    prompts = [task.prompt_text(spec.task, tokenizer, p) for p in problems]
    answers: list[Any] = [p.answer for p in problems]
    if not task.generated:
        lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
        keep = [i for i, n in enumerate(lengths) if n <= spec.task.max_prompt_tokens]
        if not keep:
            raise RunError(f"task.train {spec.task.train}: every prompt is longer than task.max_prompt_tokens = "
                           f"{spec.task.max_prompt_tokens} tokens (the shortest has {min(lengths)})")
        if progress is not None and len(keep) < len(prompts):
            progress.console.print(f"task.train: {len(prompts) - len(keep)} of {len(prompts)} prompts are longer "
                                   f"than task.max_prompt_tokens = {spec.task.max_prompt_tokens}: dropped",
                                   markup=False, highlight=False)
        prompts = [prompts[i] for i in keep]
        answers = [list(problems[i].answers) for i in keep]
    return Dataset.from_dict({"prompt": prompts, "answer": answers})


def detach_head(loaded) -> None:
    """The MTP head is saved beside the HF weights, not inside them."""
    if "mtp_head" in dict(loaded.model.named_children()):
        del loaded.model.mtp_head


def installed_names(native_config: dict[str, Any], config_class: type) -> dict[str, Any]:
    """The translated config with the key names the installed transformers knows: ``activation_checkpointing`` is
    transformers 5.2x's name, ``gradient_checkpointing`` the older one (the vLLM venv's 5.19) and its alias."""
    fields = getattr(config_class, "__dataclass_fields__", {})
    if "activation_checkpointing" in native_config and "activation_checkpointing" not in fields:
        native_config = dict(native_config)
        native_config["gradient_checkpointing"] = native_config.pop("activation_checkpointing")
    return native_config
