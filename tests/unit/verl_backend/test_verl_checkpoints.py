"""veRL checkpoint tree -> occctl's checkpoints/final: the newest complete HF export with its native MTP layer
(DeepSeek-V3/GLM and MiMo layouts), checked by the code ``occctl.models.load_checkpoint`` reads it with."""

import pytest
import torch

from occctl.errors import RunError

from backends.verl_backend.checkpoints import collect, latest_checkpoint


def tiny_host(tmp_path):
    """A saved tiny Qwen2 (the MiMo architecture family) and a random occctl head for it."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from occctl.occ.mtp_head import MtpHead

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=False)
    model = Qwen2ForCausalLM(config)
    head = MtpHead.for_model(model)
    for p in head.parameters():
        torch.nn.init.normal_(p)
    return model, head


def hf_export(model, head, root, step, layout, drop=None, mtp=True):
    """What veRL writes: global_step_N/actor/{ckpt_contents.json, model/huggingface/} with the MTP layer inside."""
    from safetensors.torch import save_file

    hf = root / f"global_step_{step}" / "actor" / "model" / "huggingface"
    model.save_pretrained(hf)
    (hf.parents[1] / "ckpt_contents.json").write_text("{}")
    if not mtp:
        return hf
    state = {k: v.clone() for k, v in head.state_dict().items()}
    if layout == "deepseek":
        prefix, names = "model.layers.2.", {"enorm.weight": "enorm.weight", "hnorm.weight": "hnorm.weight",
                                            "eh_proj.weight": "eh_proj.weight",
                                            "final_norm.weight": "shared_head.norm.weight"}
    else:  # MiMo: [hidden ; embedding] in input_proj
        prefix, names = "model.mtp_layers.0.", {"enorm.weight": "token_layernorm.weight",
                                                "hnorm.weight": "hidden_layernorm.weight",
                                                "eh_proj.weight": "input_proj.weight",
                                                "final_norm.weight": "final_layernorm.weight"}
        w, h = state["eh_proj.weight"], head.eh_proj.weight.shape[0]
        state["eh_proj.weight"] = torch.cat([w[:, h:], w[:, :h]], dim=1)
    tensors = {prefix + (names.get(k) or k.removeprefix("block.")): v.contiguous() for k, v in state.items()}
    tensors[prefix + "embed_tokens.weight"] = torch.zeros(32, 16)  # shared with the main model: not the head's
    if drop:
        tensors.pop(prefix + drop)
    save_file(tensors, str(hf / "model-mtp.safetensors"))
    return hf


@pytest.mark.parametrize("layout", ["deepseek", "mimo"])
def test_collect_keeps_the_native_mtp_layer_that_load_checkpoint_reads(layout, tmp_path):
    from occctl.models import load_checkpoint

    model, head = tiny_host(tmp_path)
    root = tmp_path / "verl" / "checkpoints"
    hf_export(model, head, root, 2, layout)
    incomplete = root / "global_step_4" / "actor" / "model" / "huggingface"
    incomplete.mkdir(parents=True)
    (incomplete / "config.json").write_text("{}")  # no ckpt_contents.json: still being written
    step, final, note = collect(root, tmp_path / "checkpoints" / "final")
    assert step == 2 and note is None, note
    assert not (final / "mtp_head.safetensors").exists()  # no second copy: the native layer is read directly
    loaded = load_checkpoint(final, new_head_if_missing=False)
    for key, value in head.state_dict().items():
        assert torch.equal(loaded.mtp_head.state_dict()[key], value), key
    with pytest.raises(RunError, match="refusing to overwrite"):
        collect(root, final)


def test_a_layer_that_does_not_fit_occctls_head_is_reported(tmp_path):
    model, head = tiny_host(tmp_path)
    root = tmp_path / "ckpt"
    hf_export(model, head, root, 1, "deepseek", drop="mlp.down_proj.weight")
    _, final, note = collect(root, tmp_path / "final")
    assert "does not fit this model" in note and "model.layers.2.mlp.down_proj.weight" in note
    assert (final / "config.json").is_file()


def test_an_export_without_an_mtp_layer_is_reported(tmp_path):
    model, head = tiny_host(tmp_path)
    root = tmp_path / "ckpt"
    hf_export(model, head, root, 1, "deepseek", mtp=False)
    _, final, note = collect(root, tmp_path / "final")
    assert note.startswith("no MTP layer") and (final / "model.safetensors").is_file()


def test_no_complete_checkpoint_is_a_run_error(tmp_path):
    with pytest.raises(RunError, match="no complete veRL checkpoint"):
        latest_checkpoint(tmp_path)
