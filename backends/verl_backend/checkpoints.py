"""veRL's checkpoint tree -> occctl's ``checkpoints/final`` (HF weights with the MTP layer in the model's own layout).

veRL 0.9.1 (Megatron, ``use_mbridge=True``, no dist checkpointing) writes HF weights directly:

    <default_local_dir>/global_step_N/actor/model/huggingface/   config.json, *.safetensors, tokenizer
    <default_local_dir>/global_step_N/actor/ckpt_contents.json    written last: the checkpoint is complete

With ``mtp.enable=True`` the MTP layer stays in those weights, in the model's native HF layout, which is what
occctl exports from the TRL backend too and what ``occctl.models.load_checkpoint`` reads (``occctl.mtp_layouts``:
MiMo, DeepSeek-V3 / GLM-4.5, Qwen3-Next). ``collect`` checks, with the same code, that the layer fits occctl's head
for the host model (keys and shapes on a meta-device model: nothing is allocated, no tensor is read) and returns the
reason when it does not; the HF directory is collected either way.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from occctl.errors import RunError, SpecError

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
    """Copy (hard-link where possible) the newest HF checkpoint to ``final`` and check its MTP layer.

    Returns (veRL step, final directory, why occctl cannot read an MTP head from it, or None)."""
    step, hf = latest_checkpoint(root)
    if final.exists():
        raise RunError(f"{final} exists already; refusing to overwrite a collected checkpoint")
    shutil.copytree(hf, final, copy_function=_link_or_copy)
    note = check_mtp_layer(final)
    return step, final, note


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# --- the MTP layer -----------------------------------------------------------------------------------------------

def check_mtp_layer(directory: Path) -> str | None:
    """None when ``load_checkpoint`` will read the directory's native MTP layer as occctl's head; else why not."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from occctl.models import has_mtp_head
    from occctl.mtp_layouts import check_fits, find_native

    if not has_mtp_head(directory):
        return "no MTP layer in the exported weights (known layouts: MiMo, DeepSeek-V3/GLM-4.5, Qwen3-Next)"
    try:
        config = AutoConfig.from_pretrained(str(directory), trust_remote_code=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=True)
    except (OSError, ValueError, KeyError, ImportError) as e:
        return f"cannot build the host model on the meta device: {str(e).splitlines()[0] if str(e) else e}"
    try:
        check_fits(model, find_native(directory, config), directory)
    except SpecError as e:
        return e.message
    return None
