"""veRL's checkpoint tree -> occctl's ``checkpoints/final`` (HF weights + the MTP head beside them).

veRL 0.9.1 (Megatron, ``use_mbridge=True``, no dist checkpointing) writes HF weights directly:

    <default_local_dir>/global_step_N/actor/model/huggingface/   config.json, *.safetensors, tokenizer
    <default_local_dir>/global_step_N/actor/ckpt_contents.json    written last: the checkpoint is complete

With ``mtp.enable=True`` the MTP layer stays in those weights, in the model's own HF layout. occctl's eval reads
``mtp_head.safetensors`` + ``mtp_head.json`` (``occctl.models``); they are extracted when the layout is known
(DeepSeek-V3 / GLM-4.5 ``model.layers.<n_layers>.{enorm,hnorm,eh_proj,shared_head.norm}``, MiMo
``model.mtp_layers.0.{token_layernorm,hidden_layernorm,input_proj,final_layernorm}``) and the tensors match the
occctl head of the host model exactly (checked on a meta-device model; nothing is allocated); otherwise the HF
directory is collected alone and the reason is returned.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from occctl.errors import RunError

STEP_DIR = re.compile(r"^global_step_(\d+)$")


def latest_checkpoint(root: Path) -> tuple[int, Path]:
    """(step, HF directory) of the newest complete checkpoint under veRL's ``default_local_dir``."""
    found = []
    for child in root.iterdir() if root.is_dir() else ():
        match = STEP_DIR.match(child.name)
        hf = child / "actor" / "model" / "huggingface"
        if match and (child / "actor" / "ckpt_contents.json").is_file() and (hf / "config.json").is_file():
            found.append((int(match.group(1)), hf))
    if not found:
        raise RunError(f"no complete veRL checkpoint under {root} (expected global_step_N/actor/ckpt_contents.json "
                       f"and global_step_N/actor/model/huggingface/config.json)")
    return max(found)


def collect(root: Path, final: Path) -> tuple[int, Path, str | None]:
    """Copy (hard-link where possible) the newest HF checkpoint to ``final``; add the occctl MTP head.

    Returns (veRL step, final directory, why the MTP head was not written or None)."""
    step, hf = latest_checkpoint(root)
    if final.exists():
        raise RunError(f"{final} exists already; refusing to overwrite a collected checkpoint")
    shutil.copytree(hf, final, copy_function=_link_or_copy)
    note = write_mtp_head(final)
    return step, final, note


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# --- the MTP head ---------------------------------------------------------------------------------------------

# (prefix of the MTP layer's tensors, renames of the head's own tensors; the rest is the decoder block)
LAYOUTS = {
    "deepseek": ("model.layers.{n}.", {"enorm.weight": "enorm.weight", "hnorm.weight": "hnorm.weight",
                                        "eh_proj.weight": "eh_proj.weight",
                                        "shared_head.norm.weight": "final_norm.weight"}),
    "mimo": ("model.mtp_layers.0.", {"token_layernorm.weight": "enorm.weight",
                                     "hidden_layernorm.weight": "hnorm.weight", "input_proj.weight": "eh_proj.weight",
                                     "final_layernorm.weight": "final_norm.weight"}),
}
SHARED = ("embed_tokens.weight", "shared_head.head.weight")  # the main model's, not the head's


def mtp_head_state(weights: dict, config: dict) -> tuple[dict | None, str | None]:
    """The occctl MtpHead state dict from HF tensors (None + reason when no known layout matches)."""
    n_layers = config.get("num_hidden_layers")
    for name, (prefix, renames) in LAYOUTS.items():
        prefix = prefix.format(n=n_layers)
        own = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
        if not own or not all(k in own for k in renames):
            continue
        state = {}
        for key, tensor in own.items():
            if key in SHARED:
                continue
            state[renames.get(key, f"block.{key}")] = tensor
        if name == "mimo":  # MiMo concatenates [hidden ; embedding], occctl (and DeepSeek-V3) [embedding ; hidden]
            w = state["eh_proj.weight"]  # [H, 2H]
            state["eh_proj.weight"] = w.roll(-(w.shape[1] // 2), dims=1).contiguous()
        return state, None
    return None, "no MTP layer in a known HF layout (DeepSeek-V3/GLM-4.5 model.layers.<n>.eh_proj, MiMo " \
                  "model.mtp_layers.0.input_proj)"


def write_mtp_head(directory: Path) -> str | None:
    """Write ``mtp_head.safetensors`` + ``mtp_head.json`` beside the HF weights; the reason when it cannot."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from occctl.models import MTP_FORMAT, MTP_META, MTP_WEIGHTS

    config = json.loads((directory / "config.json").read_text())
    weights = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            weights.update({k: f.get_tensor(k) for k in f.keys() if "mtp" in k or _is_layer(k, config)})
    state, why = mtp_head_state(weights, config)
    if state is None:
        return why
    expected, why = expected_head(directory, config)
    if expected is None:
        return why
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        wrong = sorted(k for k in set(got) & set(expected) if got[k] != expected[k])
        return f"the MTP layer does not match occctl's head for this model (missing {missing[:3]}, unexpected " \
               f"{extra[:3]}, shape mismatch {wrong[:3]})"
    save_file({k: v.contiguous() for k, v in state.items()}, str(directory / MTP_WEIGHTS))
    meta = {"format": MTP_FORMAT, "depth": 1, "hidden_size": config.get("hidden_size"),
            "source": "verl HF export (model's own MTP layer)"}
    (directory / MTP_META).write_text(json.dumps(meta, indent=2) + "\n")
    return None


def _is_layer(key: str, config: dict) -> bool:
    return key.startswith(f"model.layers.{config.get('num_hidden_layers')}.")


def expected_head(directory: Path, config: dict) -> tuple[dict | None, str | None]:
    """Shapes of occctl's MtpHead for this model, built on the meta device (no memory, no download)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from backends.verl_backend.hooks import mtp_head_shapes

    try:
        cfg = AutoConfig.from_pretrained(str(directory), trust_remote_code=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True)
    except (OSError, ValueError, KeyError, ImportError) as e:
        return None, f"cannot build the host model on the meta device: {str(e).splitlines()[0] if str(e) else e}"
    return mtp_head_shapes(model), None
