"""The spec's ``backend_options`` for veRL: a strict model (unknown keys are errors), owned by this adapter.

Everything here is about *how* to run (cluster shape, parallelism, memory, the rollout engine) or about veRL
features the backend-neutral spec does not model (overlong reward shaping, dynamic sampling, validation).
Defaults are veRL 0.9.1's own, or "off", so that an option left out never changes a result silently.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from occctl.errors import SpecError
from occctl.spec import StrictModel, describe_error

# A Hydra override as veRL's CLI takes it: [+|++|~]dotted.key=value
OVERRIDE_PATTERN = re.compile(r"^(\+\+|\+|~)?([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*)(=.*)?$", re.S)


class ParallelOptions(StrictModel):
    """Megatron parallelism of the actor (the reference model, when one is needed, copies it)."""

    tp: int = Field(1, ge=1, description="tensor parallel")
    pp: int = Field(1, ge=1, description="pipeline parallel")
    vpp: int | None = Field(None, ge=1, description="virtual pipeline stages per rank")
    cp: int = Field(1, ge=1, description="context parallel")
    ep: int = Field(1, ge=1, description="expert parallel (MoE)")
    etp: int | None = Field(None, ge=1, description="expert tensor parallel (MoE); null: veRL default")
    sequence_parallel: bool = True


class OffloadOptions(StrictModel):
    param: bool = False
    optimizer: bool = False


class RolloutOptions(StrictModel):
    engine: Literal["sglang"] = "sglang"
    tp: int = Field(1, ge=1, description="tensor parallel of each SGLang engine")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    max_num_batched_tokens: int = Field(8192, ge=1)
    enable_chunked_prefill: bool = True
    speculative: bool = Field(False, description="MTP speculative decoding in SGLang (EAGLE with the model's MTP "
                              "layer); off as in the paper and the authors' script")


class OverlongBufferOptions(StrictModel):
    """DAPO's overlong reward shaping (veRL's ``dapo`` reward manager)."""

    enabled: bool = False
    tokens: int = Field(4096, ge=1, description="buffer length before max_new_tokens where the penalty ramps")
    penalty_factor: float = Field(1.0, ge=0)


class DynamicSamplingOptions(StrictModel):
    """DAPO's dynamic sampling: drop groups whose samples all have the same outcome."""

    enabled: bool = False
    metric: Literal["acc", "score", "reward"] = Field("acc", description="acc/score: the scorer's fields; "
                                                        "reward: the shaped reward")
    max_inflight_gen_batches: int = Field(1, ge=1)


class MicroBatchOptions(StrictModel):
    log_prob_sequences_per_gpu: int = Field(1, ge=1, description="micro-batch of the forward-only log-prob pass")
    dynamic: bool = Field(False, description="token-budget micro-batches (veRL use_dynamic_bsz)")
    max_tokens_per_gpu: int | None = Field(None, ge=1, description="training token budget (dynamic only)")
    log_prob_max_tokens_per_gpu: int | None = Field(None, ge=1, description="log-prob token budget (dynamic only)")

    @model_validator(mode="after")
    def _budgets_need_dynamic(self) -> "MicroBatchOptions":
        if not self.dynamic and (self.max_tokens_per_gpu or self.log_prob_max_tokens_per_gpu):
            raise ValueError("token budgets (max_tokens_per_gpu, log_prob_max_tokens_per_gpu) need dynamic: true")
        if self.dynamic and not (self.max_tokens_per_gpu and self.log_prob_max_tokens_per_gpu):
            raise ValueError("dynamic: true needs max_tokens_per_gpu and log_prob_max_tokens_per_gpu")
        return self


class DataOptions(StrictModel):
    """Training / validation prompts: an occctl JSONL (``problem``, ``answer``) under the data root, converted to
    veRL's parquet at launch, or a ready veRL ``.parquet`` (absolute path) used as is."""

    train: str = Field(..., description="e.g. math6/train/dapo_math_17k.jsonl")
    val: str = Field(..., description="e.g. math6/aime24.jsonl (veRL always builds a validation set)")
    prompt_template: Literal["dapo", "deepscaler"] = Field(
        "dapo", description="dapo: DAPO-Math's 'Answer: $Answer' prompt + math_dapo scorer; deepscaler: "
        "'\\boxed{}' instruction + math scorer")
    max_prompt_tokens: int = Field(2048, ge=1)


class ValidationOptions(StrictModel):
    every_steps: int = Field(0, ge=0, description="veRL steps between validations (0: only if before_train)")
    before_train: bool = False
    samples_per_problem: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(0.7, gt=0, le=1)


class VerlOptions(StrictModel):
    nnodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(8, ge=1)
    ray_address: str | None = Field(None, description="null: start a local Ray; 'auto' or 'ray://host:10001': join a "
                                    "running cluster (occctl must be installed in the same venv on every node)")
    worker_python: str | None = Field(None, description="interpreter of the Ray workers (runtime_env.py_executable)")
    parallel: ParallelOptions = ParallelOptions()
    offload: OffloadOptions = OffloadOptions()
    rollout: RolloutOptions = RolloutOptions()
    micro_batch: MicroBatchOptions = MicroBatchOptions()
    data: DataOptions
    validation: ValidationOptions = ValidationOptions()
    overlong_buffer: OverlongBufferOptions = OverlongBufferOptions()
    dynamic_sampling: DynamicSamplingOptions = DynamicSamplingOptions()
    ce_gradient: Literal["whole_model", "verl_native_no_lm_head"] = Field(
        "whole_model", description="regime ce: whole_model = the paper's CE, computed by the occctl plugin, its "
        "gradient into trunk, embeddings, lm_head and MTP block; verl_native_no_lm_head = veRL's native MTP loss, "
        "whose Megatron path detaches the output layer (lm_head)")
    model_shape: dict[str, Any] | None = Field(
        None, description="the model's Hugging Face config.json keys the parallel layout is "
        "checked against when the weights are not on this machine (num_attention_heads, num_key_value_heads, "
        "num_hidden_layers, num_nextn_predict_layers, n_routed_experts, max_position_embeddings, model_type); "
        "must agree with the real config.json where that is here")
    overrides: list[str] = Field(default_factory=list, description="raw veRL overrides (key=value) for keys occctl "
                                 "does not model; a key occctl sets is refused")

    @property
    def world_size(self) -> int:
        return self.nnodes * self.gpus_per_node

    @property
    def data_parallel(self) -> int:
        """Data-parallel size of the dense part (experts are sharded inside it)."""
        p = self.parallel
        return self.world_size // (p.tp * p.pp * p.cp)


def parse_options(raw: dict[str, Any], source: str = "backend_options") -> VerlOptions:
    """Validate the spec's backend_options; every problem at once, one line each (SpecError, exit 2)."""
    try:
        return VerlOptions.model_validate(raw)
    except ValidationError as e:
        raise SpecError("\n".join(f"{source}.{describe_error(err, VerlOptions)}" for err in e.errors())) from None


def override_key(item: str) -> str | None:
    """The dotted key of a Hydra override (without +/++/~), or None when it is not one."""
    match = OVERRIDE_PATTERN.match(item.strip())
    if match is None or (match.group(1) != "~" and match.group(3) is None):
        return None
    return match.group(2)


def override_items(overrides: list[str], prefix: str = "") -> dict[str, Any]:
    """Raw overrides under ``prefix`` -> {key below prefix: value, read as YAML} (deletions ``~key`` left out)."""
    items = {}
    for item in overrides:
        match = OVERRIDE_PATTERN.match(item.strip())
        if match is None or match.group(3) is None or not match.group(2).startswith(prefix):
            continue
        try:
            value = yaml.safe_load(match.group(3)[1:])
        except yaml.YAMLError:
            value = match.group(3)[1:]
        items[match.group(2)[len(prefix):]] = value
    return items
