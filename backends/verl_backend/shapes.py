"""The model's shape (its Hugging Face config) against the launch's parallel layout: what Megatron-core and veRL
refuse when the job starts on the cluster, found on CPU by the dry run.

The config comes from the model directory (``model.path/config.json``), from the local Hugging Face cache for a hub
id (nothing is downloaded), or from ``backend_options.model_shape`` (the config.json keys a spec was checked
against, for when the weights are not on this machine); when a spec carries one and the real config is here too,
they must agree. The rules are Megatron-core 0.16's (``TransformerConfig.__post_init__``,
``get_num_layers_to_build``) and veRL 0.9.1's (``check_mtp_config``, ``prepare_micro_batches``); the MTP term of
the occctl plugin adds two of its own (one MTP layer, in the last pipeline stage's postprocess).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from occctl.spec import Spec

from backends.verl_backend.options import VerlOptions, override_items

TRANSFORMER = "actor_rollout_ref.actor.megatron.override_transformer_config"
EXPERT_KEYS = ("n_routed_experts", "num_experts", "num_local_experts")  # DeepSeek/GLM, Qwen-MoE, Mixtral


@dataclass(frozen=True)
class ModelShape:
    source: str  # where the numbers come from, for messages
    attention_heads: int
    kv_heads: int  # Megatron's num_query_groups
    layers: int  # decoder layers, without the MTP layers
    mtp_layers: int
    experts: int | None  # routed experts per MoE layer; None: dense
    max_positions: int | None


def load_shape(spec: Spec, options: VerlOptions) -> tuple[ModelShape | None, list[str], str | None]:
    """(shape, problems, why there is no shape). Problems: an unreadable config, or the spec's
    ``backend_options.model_shape`` disagreeing with the model's own config.json."""
    declared = options.model_shape
    found, where = _config_file(spec.model.path)
    problems: list[str] = []
    if found is not None:
        try:
            actual = json.loads(found.read_text())
        except (OSError, ValueError) as e:
            return None, [f"model.path: cannot read {found}: {e}"], None
        for key, value in (declared or {}).items():
            if key in actual and actual[key] != value:
                problems.append(f"backend_options.model_shape.{key} = {value!r} but {where} says {actual[key]!r}")
        return _shape(actual, where), problems, None
    if declared:
        return _shape(declared, "backend_options.model_shape"), problems, None
    return None, problems, (f"no config.json for {spec.model.path} here (neither in a local model directory nor in "
                            f"the Hugging Face cache) and no backend_options.model_shape in the spec")


def _config_file(path: str | None) -> tuple[Path | None, str]:
    if path is None:
        return None, ""
    local = Path(path).expanduser()
    if local.is_dir():
        return (local / "config.json" if (local / "config.json").is_file() else None), f"{local}/config.json"
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(path, "config.json")
    return (Path(cached) if isinstance(cached, str) else None), f"{path}/config.json (Hugging Face cache)"


def _shape(raw: dict[str, Any], source: str) -> ModelShape:
    config = _hf_config(raw)
    heads = config.num_attention_heads
    experts = next((getattr(config, key) for key in EXPERT_KEYS if getattr(config, key, None)), None)
    return ModelShape(source=source, attention_heads=heads,
                      kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                      layers=config.num_hidden_layers, mtp_layers=_mtp_layers(config), experts=experts,
                      max_positions=getattr(config, "max_position_embeddings", None))


def _hf_config(raw: dict[str, Any]):
    """The transformers config class of the model type (its defaults), or a plain one for remote-code models."""
    from transformers import AutoConfig, PretrainedConfig

    fields = {k: v for k, v in raw.items() if k != "model_type"}
    try:
        return AutoConfig.for_model(raw.get("model_type", ""), **fields)
    except ValueError:  # a model type transformers does not ship (e.g. MiMo: remote code)
        return PretrainedConfig(**raw)


def _mtp_layers(config) -> int:
    """MTP layer count, read as veRL's ``megatron_utils._get_mtp_num_layers`` reads it."""
    for owner in (config, getattr(config, "text_config", None)):
        for key in ("num_nextn_predict_layers", "mtp_num_hidden_layers"):
            if (getattr(owner, key, 0) or 0) > 0:
                return getattr(owner, key)
    return 0


def shape_problems(spec: Spec, options: VerlOptions, shape: ModelShape, plugin_regime: bool) -> list[str]:
    """Every launch-time refusal of this layout for this model, one line each, with the numbers.
    ``plugin_regime``: the occctl plugin computes the MTP term (it needs the MTP block in the last stage)."""
    p, m = options.parallel, shape
    of = f"of {spec.model.path} ({m.source})"
    problems = []
    for what, size in (("parallel.tp", p.tp), ("rollout.tp", options.rollout.tp)):
        if m.attention_heads % size:
            problems.append(f"backend_options.{what} = {size} must divide the {m.attention_heads} attention heads {of}")
    if m.kv_heads % p.tp:
        problems.append(f"backend_options.parallel.tp = {p.tp} must divide the {m.kv_heads} key-value heads "
                        f"(Megatron's num_query_groups) {of}")
    problems += _pipeline_problems(options, m, of)
    if m.experts is None and p.ep > 1:
        problems.append(f"backend_options.parallel.ep = {p.ep} needs experts; the config {of} has none (dense model)")
    elif m.experts is not None and m.experts % p.ep:
        problems.append(f"backend_options.parallel.ep = {p.ep} must divide the {m.experts} routed experts {of}")
    if spec.mtp.enabled:
        if m.mtp_layers == 0:
            problems.append(f"mtp.enabled: the config {of} declares no MTP layer (num_nextn_predict_layers / "
                            f"mtp_num_hidden_layers); veRL refuses mtp.enable on it")
        elif plugin_regime and m.mtp_layers != 1:
            problems.append(f"mtp.regime = {spec.mtp.regime}: the occctl MTP term supports one MTP layer; the "
                            f"config {of} declares {m.mtp_layers}")
    problems += _length_problems(spec, options, m, of)
    return problems


def _pipeline_problems(options: VerlOptions, m: ModelShape, of: str) -> list[str]:
    """Megatron's split of the decoder layers over pipeline ranks and virtual stages (MTP layers not counted:
    Megatron places them after the last decoder layer, in the last stage's postprocess)."""
    p = options.parallel
    vpp = p.vpp if p.vpp and p.pp > 1 else 1
    raw = override_items(options.overrides, prefix=TRANSFORMER + ".")
    first, last = raw.get("num_layers_in_first_pipeline_stage"), raw.get("num_layers_in_last_pipeline_stage")
    layout = raw.get("pipeline_model_parallel_layout")
    if layout is not None:
        return []  # refused for the plugin's regimes (adapter.override_problems); Megatron checks it at start
    if first is None and last is None:
        layers = m.layers + bool(raw.get("account_for_embedding_in_pipeline_split")) \
            + bool(raw.get("account_for_loss_in_pipeline_split"))
        if layers % p.pp:
            return [f"backend_options.parallel.pp = {p.pp} must divide the {layers} decoder layers {of}"]
        if (layers // p.pp) % vpp:
            return [f"backend_options.parallel.vpp = {vpp} must divide the {layers // p.pp} layers of each of the "
                    f"{p.pp} pipeline ranks (the {layers} decoder layers {of})"]
        return []
    middle_layers, middle_ranks = m.layers, p.pp
    for name, count in (("first", first), ("last", last)):
        if count is None:
            continue
        if not isinstance(count, int) or count <= 0 or count % vpp:
            return [f"{TRANSFORMER}.num_layers_in_{name}_pipeline_stage = {count!r} must be a positive multiple of "
                    f"parallel.vpp = {vpp}"]
        middle_layers, middle_ranks = middle_layers - count, middle_ranks - 1
    if bool(middle_layers) != bool(middle_ranks) or middle_layers < 0 or (
            middle_ranks and (middle_layers % middle_ranks or (middle_layers // middle_ranks) % vpp)):
        return [f"the {m.layers} decoder layers {of} minus the first/last pipeline stages' ({first}, {last}) leave "
                f"{middle_layers} layers, which do not split into {middle_ranks} middle pipeline ranks of "
                f"parallel.vpp = {vpp} virtual stages each"]
    return []


def _length_problems(spec: Spec, options: VerlOptions, m: ModelShape, of: str) -> list[str]:
    """A whole sequence (prompt + response) must fit the model's positions and, with token-budget micro-batches,
    one micro-batch: veRL's budget is max_tokens_per_gpu x context-parallel size (``prepare_micro_batches``)."""
    longest = options.data.max_prompt_tokens + spec.train.max_new_tokens
    told = f"backend_options.data.max_prompt_tokens + train.max_new_tokens = {options.data.max_prompt_tokens} + " \
           f"{spec.train.max_new_tokens} = {longest}"
    problems = []
    if m.max_positions is not None and longest > m.max_positions:
        problems.append(f"{told} exceeds max_position_embeddings = {m.max_positions} {of}")
    mb, cp = options.micro_batch, options.parallel.cp
    if mb.dynamic:
        for name, budget in (("max_tokens_per_gpu", mb.max_tokens_per_gpu),
                             ("log_prob_max_tokens_per_gpu", mb.log_prob_max_tokens_per_gpu)):
            if budget is not None and budget * cp < longest:
                problems.append(f"backend_options.micro_batch.{name} = {budget} x parallel.cp = {cp} is "
                                f"{budget * cp} tokens, less than one sequence of {told}")
    return problems
