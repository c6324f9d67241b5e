"""Models: the built-in tiny preset (config + local tokenizer, no download) and HF checkpoints with an MTP head.

An occctl checkpoint is an HF directory (``save_pretrained`` of the base model and tokenizer) whose MTP head is
stored in the host family's native layout (``occctl.mtp_layouts``: ``model-mtp.safetensors`` and the config's
``num_nextn_predict_layers``), so inference engines can serve it as a draft. Hosts of other families, and
checkpoints written before native export, keep occctl's own format: ``mtp_head.safetensors`` + ``mtp_head.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from occctl import mtp_layouts
from occctl.errors import EnvError, SpecError
from occctl.safetensors_files import check_weights
from occctl.occ.mtp_head import MtpHead
from occctl.spec import TINY_CONTEXT, ModelSpec, TinyModelSpec

TINY_SYMBOLS = "0123456789+="
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
MTP_WEIGHTS, MTP_META = "mtp_head.safetensors", "mtp_head.json"
MTP_FORMAT = "occctl-mtp-head@1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: nn.Module  # HF causal LM
    tokenizer: Any  # HF tokenizer, left padding
    mtp_head: MtpHead | None


def build_tokenizer():
    """A 16-symbol character tokenizer; ``<bos>`` is prepended to every encoded text."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + list(TINY_SYMBOLS))}
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    raw.decoder = decoders.Fuse()
    raw.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="left")


def build_tiny(spec: TinyModelSpec, seed: int, tokenizer: Any = None, context: int = TINY_CONTEXT) -> LoadedModel:
    """The tiny preset: the character tokenizer and TINY_CONTEXT positions, or a given tokenizer and context (a
    dataset task's tokenizer trained on its data, ``occctl.tasks.tokenizer``)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tokenizer if tokenizer is not None else build_tokenizer()
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
        max_position_embeddings=context, tie_word_embeddings=False, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    _set_generation_ids(model, tok)
    return LoadedModel(model, tok, MtpHead.for_model(model))


def _set_generation_ids(model: nn.Module, tok: Any) -> None:
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id


def save_checkpoint(out_dir: Path, loaded: LoadedModel) -> Path:
    """Write an HF directory with the MTP head in the host family's native layout (occctl's own format for
    families without one)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = loaded.model
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("mtp_head.")}
    if loaded.mtp_head is not None:
        setattr(model.config, mtp_layouts.ZERO_FIRST_KEY, loaded.mtp_head.zero_first_position)
    model.save_pretrained(out_dir, state_dict=state)
    loaded.tokenizer.save_pretrained(out_dir)
    if loaded.mtp_head is not None:
        layout = mtp_layouts.layout_for(model.config)
        if layout is not None:
            mtp_layouts.write_native(out_dir, model, loaded.mtp_head, layout)
        else:
            _write_occctl_head(out_dir, model, loaded.mtp_head)
    return out_dir


def _write_occctl_head(out_dir: Path, model: nn.Module, head: MtpHead) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(out_dir / MTP_WEIGHTS))
    meta = {"format": MTP_FORMAT, "depth": 1, "hidden_size": model.config.hidden_size,
            "block_class": type(head.block).__name__}
    (out_dir / MTP_META).write_text(json.dumps(meta, indent=2) + "\n")


def load_checkpoint(path: str | Path, dtype: str = "float32", trust_remote_code: bool = False,
                    new_head_if_missing: bool = True) -> LoadedModel:
    """Load an HF model directory or hub id with its MTP head: occctl's own format, else the family's native MTP
    layer, else (``new_head_if_missing``) a new head built from a copy of the trunk's last layer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_weights(path)  # a truncated or damaged .safetensors: one line naming it, not a safetensors panic
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype],
                                                     trust_remote_code=trust_remote_code)
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, padding_side="left")
    except OSError as e:
        raise EnvError(f"cannot load model {path}: {str(e).splitlines()[0]}",
                       hint="pass a local HF directory, or a hub id on a machine with network access") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    _set_generation_ids(model, tok)
    directory = local_directory(path)
    head = None
    if (directory / MTP_WEIGHTS).is_file():
        head = _read_occctl_head(directory, model)
    elif (attached := _attached_head_state(directory)):
        head = MtpHead.for_model(model)
        head.load_state_dict(attached)
        head.zero_first_position = bool(getattr(model.config, mtp_layouts.ZERO_FIRST_KEY, False))
    elif (native := mtp_layouts.find_native(directory, model.config)) is not None:
        head = mtp_layouts.load_native(model, native, directory)
    elif new_head_if_missing:
        log.warning("%s has no MTP head: building a new one from a copy of the trunk's last layer", path)
        head = mtp_layouts.build_head(model, mtp_layouts.layout_for(model.config))
    return LoadedModel(model, tok, head)


ATTACHED_PREFIX = "mtp_head."  # a trainer checkpoint saves the head as the model's `mtp_head` submodule


def _attached_head_state(directory: Path) -> dict[str, torch.Tensor]:
    """The head's tensors in a trainer checkpoint (TRL's ``checkpoint-N``: the model with the head attached as its
    ``mtp_head`` submodule), without the prefix; {} for any other checkpoint."""
    from safetensors import safe_open

    state = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            state.update({k.removeprefix(ATTACHED_PREFIX): f.get_tensor(k) for k in f.keys()
                          if k.startswith(ATTACHED_PREFIX)})
    return state


def _read_occctl_head(directory: Path, model: nn.Module) -> MtpHead:
    from safetensors.torch import load_file

    meta = json.loads((directory / MTP_META).read_text())
    if meta.get("format") != MTP_FORMAT:
        raise SpecError(f"{directory}/{MTP_META}: unknown MTP head format {meta.get('format')!r}")
    head = MtpHead.for_model(model)
    head.load_state_dict(load_file(str(directory / MTP_WEIGHTS)))
    head.zero_first_position = bool(getattr(model.config, mtp_layouts.ZERO_FIRST_KEY, False))
    return head


def set_zero_first_position(loaded: LoadedModel, value: bool) -> None:
    """Train and run the head with (or without) the embedding zeroed at position 0 (``mtp.zero_first_position``);
    the model's config records it, so every checkpoint of the run, a trainer's included, loads the head that way."""
    if loaded.mtp_head is not None:
        loaded.mtp_head.zero_first_position = value
        setattr(loaded.model.config, mtp_layouts.ZERO_FIRST_KEY, value)


def local_directory(path: str | Path) -> Path:
    """The local directory of a model: the path itself, or the hub cache snapshot ``from_pretrained`` filled."""
    if Path(path).is_dir():
        return Path(path)
    from transformers.utils import cached_file

    return Path(cached_file(str(path), "config.json")).parent


def has_mtp_head(path: str | Path) -> bool:
    """Whether a local checkpoint carries an MTP head (occctl's format or a native MTP layer); no tensor is read."""
    directory = Path(path)
    check_weights(directory)  # its headers are read below: a damaged file is one line naming it
    if (directory / MTP_WEIGHTS).is_file():
        return True
    if not (directory / "config.json").is_file():
        return False
    config = json.loads((directory / "config.json").read_text())
    layers = config.get("num_hidden_layers", config.get("text_config", {}).get("num_hidden_layers", 0))
    return bool(mtp_layouts.mtp_like_keys(mtp_layouts.checkpoint_keys(directory), layers))


def load_model(spec: ModelSpec, seed: int) -> LoadedModel:
    if spec.path is not None:
        return load_checkpoint(spec.path, spec.dtype, spec.trust_remote_code)
    return build_tiny(spec.tiny, seed)
