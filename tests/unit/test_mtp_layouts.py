"""Native MTP layers of MiMo, DeepSeek-V3, GLM-4.5 and Qwen3-Next on config-built tiny hosts (no download).

The native tensors are written under their real key names by ``tests/native_mtp.py`` (the block's names are taken
from the host's own ``save_pretrained`` output, i.e. per-expert MoE tensors as on disk). The reference forward below is written from the
engines' source (vLLM ``mimo_mtp.py``, ``deepseek_mtp.py``, ``qwen3_next_mtp.py``), not from occctl's head: its own
norms, concat order, output head and MoE expert packing.
"""

import json
import logging

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from occctl.errors import SpecError
from occctl.models import build_tokenizer, has_mtp_head, load_checkpoint, save_checkpoint
from occctl.occ.mtp_head import MtpHead, mtp_logits

from native_mtp import H, host_model, native_names, write_native_checkpoint  # tests/, on sys.path via its conftest


def reference_logits(model, family, tensors, ids):  # [B, T] -> [B, T-1, V], position i predicts token i+2
    """The engine's MTP forward, from its source: vLLM <family>_mtp.py, position i = (h_i, emb(x_{i+1}))."""
    n = model.config.num_hidden_layers
    own, block_prefix, template, copies = native_names(family, n)
    zero_centred = family == "qwen3_next"

    def norm(x, w):
        y = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + model.config.rms_norm_eps)
        return (y * ((1 + w) if zero_centred else w)).to(x.dtype)

    with torch.no_grad():
        h = model.model(input_ids=ids).last_hidden_state[:, :-1]  # [B, T-1, H]
        emb_w = tensors[copies["embed"]] if copies else model.get_input_embeddings().weight
        e = F.embedding(ids[:, 1:], emb_w)  # [B, T-1, H]
        if family != "qwen3_next":  # inputs_embeds = where(positions == 0, 0, inputs_embeds)
            e[:, 0] = 0
        e_n, h_n = norm(e, tensors[own["e"]]), norm(h, tensors[own["h"]])
        x = torch.cat([h_n, e_n] if family == "mimo" else [e_n, h_n], dim=-1) @ tensors[own["proj"]].T
        block = type(model.model.layers[template])(model.config, layer_idx=template)
        block.load_state_dict(pack_experts({k[len(block_prefix):]: v for k, v in tensors.items()
                                            if k.startswith(block_prefix) and k not in own.values()
                                            and k not in copies.values()}))
        s = x.shape[1]
        mask = torch.full((s, s), torch.finfo(x.dtype).min).triu(1)[None, None]  # [1, 1, S, S] causal
        pos = torch.arange(s)[None]
        out = block(x, attention_mask=mask, position_embeddings=model.model.rotary_emb(x, pos))
        out = out[0] if isinstance(out, tuple) else out
        head_w = tensors[copies["head"]] if copies else model.get_output_embeddings().weight
        return norm(out, tensors[own["final"]]) @ head_w.T


def pack_experts(state):
    """Per-expert gate/up/down (disk) -> transformers' fused [E, 2I, H] gate_up_proj and [E, H, I] down_proj."""
    experts = sorted({int(k.split(".")[2]) for k in state if k.startswith("mlp.experts.")})
    if not experts:
        return state
    out = {k: v for k, v in state.items() if not k.startswith("mlp.experts.")}
    get = lambda j, name: state[f"mlp.experts.{j}.{name}.weight"]  # noqa: E731
    out["mlp.experts.gate_up_proj"] = torch.stack([torch.cat([get(j, "gate_proj"), get(j, "up_proj")]) for j in experts])
    out["mlp.experts.down_proj"] = torch.stack([get(j, "down_proj") for j in experts])
    return out


FAMILIES = ["mimo", "deepseek", "glm", "qwen3_next"]


@pytest.fixture(scope="module", params=FAMILIES)
def native(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    tensors = write_native_checkpoint(directory, request.param)
    return request.param, directory, tensors


def test_the_loaded_head_computes_the_engines_mtp_forward(native):
    family, directory, tensors = native
    loaded = load_checkpoint(directory, new_head_if_missing=False)
    ids = torch.tensor([[1, 5, 6, 14, 7, 8, 15, 9, 10, 2], [1, 9, 9, 14, 4, 4, 15, 3, 12, 2]])  # [B, T]
    attn = torch.ones_like(ids)
    with torch.no_grad():
        h = loaded.model.model(input_ids=ids, attention_mask=attn).last_hidden_state
        got = mtp_logits(loaded.model, loaded.mtp_head, h, ids, attn, slice(None))  # [B, T-1, V]
    want = reference_logits(loaded.model, family, tensors, ids)
    # a checkpoint that does not say how its head was trained runs as the engine runs it (position 0 included)
    assert loaded.mtp_head.zero_first_position == (family != "qwen3_next")
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    fresh = MtpHead.for_model(loaded.model)  # negative control: a new head is not the checkpoint's
    assert not torch.allclose(mtp_logits(loaded.model, fresh, h, ids, attn, slice(None)), want, atol=1e-3)


def test_export_then_import_round_trips_bit_exactly(native, tmp_path):
    family, directory, tensors = native
    loaded = load_checkpoint(directory, new_head_if_missing=False)
    out = save_checkpoint(tmp_path / "final", loaded)
    with safe_open(str(out / "model-mtp.safetensors"), framework="pt") as f:
        exported = {k: f.get_tensor(k) for k in f.keys()}
    assert exported.keys() == tensors.keys()  # the engine's names, nothing more, nothing less
    for key, value in tensors.items():
        assert torch.equal(exported[key], value), key
    assert json.loads((out / "config.json").read_text())["num_nextn_predict_layers"] == 1
    again = load_checkpoint(out, new_head_if_missing=False)
    assert again.mtp_head.zero_first_position == loaded.mtp_head.zero_first_position
    for key, value in loaded.mtp_head.state_dict().items():
        assert torch.equal(again.mtp_head.state_dict()[key], value), key


@pytest.mark.parametrize("family", ["deepseek", "glm"])
def test_a_config_built_deepseek_v3_host_exports_the_router_vllm_runs(family, tmp_path):
    """transformers' DeepSeek-V3 routes sigmoid + noaux_tc (e_score_correction_bias) but its config does not write
    topk_method / scoring_func; vLLM's deepseek_v2.py then has no e_score_correction_bias (KeyError loading the export)
    and scores softmax. The export writes them; GLM-4.5 (glm4_moe.py always does this) gets nothing; a value the
    host's config has stays."""
    from occctl.models import LoadedModel
    from occctl.mtp_layouts import build_head, layout_for

    model = host_model(family)
    loaded = LoadedModel(model, build_tokenizer(), build_head(model, layout_for(model.config)))
    config = json.loads((save_checkpoint(tmp_path / "a", loaded) / "config.json").read_text())
    want = {"topk_method": "noaux_tc", "scoring_func": "sigmoid"} if family == "deepseek" else {}
    assert {k: config[k] for k in ("topk_method", "scoring_func") if k in config} == want
    model.config.scoring_func = "softmax"  # a hub checkpoint's own value
    config = json.loads((save_checkpoint(tmp_path / "b", loaded) / "config.json").read_text())
    assert config["scoring_func"] == "softmax"


def test_the_tiny_qwen2_host_exports_the_mimo_layout(tmp_path):
    from occctl.models import build_tiny
    from occctl.spec import TinyModelSpec

    tiny = build_tiny(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), seed=0)
    out = save_checkpoint(tmp_path / "tiny", tiny)
    keys = load_file(str(out / "model-mtp.safetensors")).keys()
    assert {"model.mtp_layers.0.input_proj.weight", "model.mtp_layers.0.token_layernorm.weight",
            "model.mtp_layers.0.self_attn.q_proj.weight"} <= set(keys)
    assert not (out / "mtp_head.safetensors").exists() and has_mtp_head(out)
    config = json.loads((out / "config.json").read_text())
    # what vLLM needs to serve it as it is (MiMoForCausalLM skips model.mtp_layers.*, selects the MiMoMTPModel
    # draft); model_type stays qwen2, which transformers still loads as Qwen2ForCausalLM
    assert (config["architectures"], config["model_type"], config["num_nextn_predict_layers"]) == (
        ["MiMoForCausalLM"], "qwen2", 1)
    assert config["occctl_mtp_zero_first_position"] is False  # how the head was trained
    loaded = load_checkpoint(out, new_head_if_missing=False)
    assert type(loaded.model).__name__ == "Qwen2ForCausalLM" and loaded.mtp_head.zero_first_position is False
    for key, value in tiny.mtp_head.state_dict().items():  # the swapped input_proj halves come back exactly
        assert torch.equal(loaded.mtp_head.state_dict()[key], value), key


def test_a_head_trained_with_position_0_zeroed_exports_and_loads_that_way(tmp_path):
    from occctl.models import build_tiny, set_zero_first_position
    from occctl.spec import TinyModelSpec

    tiny = build_tiny(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), seed=0)
    ids = torch.tensor([[0, 0, 1, 5, 6, 14, 7, 8, 15, 9], [1, 9, 9, 14, 4, 4, 15, 3, 12, 2]])  # row 0 left-padded
    attn = (torch.arange(10) >= torch.tensor([[2], [0]])).long()  # [B, T]
    with torch.no_grad():
        h = tiny.model.model(input_ids=ids, attention_mask=attn).last_hidden_state
        plain = mtp_logits(tiny.model, tiny.mtp_head, h, ids, attn, slice(None))
        set_zero_first_position(tiny, True)
        zeroed = mtp_logits(tiny.model, tiny.mtp_head, h, ids, attn, slice(None))
        # the first real slot's embedding is zeroed, each row's own (row 0's is slot 2); every later slot sees it
        assert not torch.allclose(plain[0, 2], zeroed[0, 2]) and not torch.allclose(plain[1, 0], zeroed[1, 0])
        assert not torch.allclose(plain[:, 3:], zeroed[:, 3:])
        out = save_checkpoint(tmp_path / "tiny", tiny)
        assert json.loads((out / "config.json").read_text())["occctl_mtp_zero_first_position"] is True
        loaded = load_checkpoint(out, new_head_if_missing=False)
        assert loaded.mtp_head.zero_first_position is True
        torch.testing.assert_close(mtp_logits(loaded.model, loaded.mtp_head, h, ids, attn, slice(None)), zeroed)


def test_an_occctl_export_from_before_the_position_0_key_loads_as_it_was_trained(tmp_path):
    """Warm-up caches and runs exported before ``occctl_mtp_zero_first_position`` existed trained the head without
    zeroing; loaded without the key they must run that way (a foreign checkpoint runs as its engines run it)."""
    from occctl.models import build_tiny
    from occctl.spec import TinyModelSpec

    out = save_checkpoint(tmp_path / "old", build_tiny(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2,
                                                                     intermediate_size=64), seed=0))
    config = json.loads((out / "config.json").read_text())
    del config["occctl_mtp_zero_first_position"]
    (out / "config.json").write_text(json.dumps(config))
    assert load_checkpoint(out, new_head_if_missing=False).mtp_head.zero_first_position is False
    (out / "model-mtp.safetensors").rename(out / "model-00002-of-00002.safetensors")  # not occctl's own file
    assert load_checkpoint(out, new_head_if_missing=False).mtp_head.zero_first_position is True


def test_checkpoints_in_occctls_own_format_stay_readable(tmp_path):
    from occctl.models import build_tiny
    from occctl.spec import TinyModelSpec

    tiny = build_tiny(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), seed=1)
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    save_file({k: v.contiguous() for k, v in tiny.mtp_head.state_dict().items()}, str(tmp_path / "mtp_head.safetensors"))
    (tmp_path / "mtp_head.json").write_text(json.dumps({"format": "occctl-mtp-head@1", "depth": 1}))
    loaded = load_checkpoint(tmp_path, new_head_if_missing=False)
    for key, value in tiny.mtp_head.state_dict().items():
        assert torch.equal(loaded.mtp_head.state_dict()[key], value), key


def test_a_checkpoint_without_a_head_gets_a_new_one_and_says_so(tmp_path, caplog):
    host_model("mimo").save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)
    assert not has_mtp_head(tmp_path)
    with caplog.at_level(logging.WARNING, logger="occctl.models"):
        loaded = load_checkpoint(tmp_path)
    assert loaded.mtp_head is not None and "no MTP head" in caplog.text and "new one" in caplog.text
    assert load_checkpoint(tmp_path, new_head_if_missing=False).mtp_head is None


@pytest.mark.parametrize("family, drop, message", [
    ("mimo", "model.mtp_layers.0.input_proj.weight", "partial mimo MTP layer: missing"),
    ("deepseek", "model.layers.2.mlp.experts.3.down_proj.weight", "does not fit this model: missing"),
    ("qwen3_next", "mtp.fc.weight", "partial qwen3_next MTP layer: missing"),
])
def test_partial_or_unknown_layouts_are_refused_naming_the_keys(tmp_path, family, drop, message):
    tensors = write_native_checkpoint(tmp_path, family)
    del tensors[drop]
    save_file(tensors, str(tmp_path / "extra-mtp.safetensors"))
    with pytest.raises(SpecError, match=message) as err:
        load_checkpoint(tmp_path)
    assert err.value.exit_code == 2
    assert drop in str(err.value) or any(k in str(err.value) for k in sorted(tensors)[:8])


def test_an_unknown_layout_is_refused_naming_the_keys(tmp_path):
    host_model("mimo").save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)
    save_file({"model.mtp.0.proj.weight": torch.zeros(H, 2 * H)}, str(tmp_path / "extra-mtp.safetensors"))
    assert has_mtp_head(tmp_path)
    with pytest.raises(SpecError, match=r"unknown MTP layout .*found model\.mtp\.0\.proj\.weight"):
        load_checkpoint(tmp_path)


def test_a_differing_copy_of_the_output_head_is_reported(tmp_path, caplog):
    tensors = write_native_checkpoint(tmp_path, "deepseek")
    tensors["model.layers.2.shared_head.head.weight"] += 1
    save_file(tensors, str(tmp_path / "extra-mtp.safetensors"))
    with caplog.at_level(logging.WARNING, logger="occctl.mtp_layouts"):
        load_checkpoint(tmp_path, new_head_if_missing=False)
    assert "shared_head.head.weight differs from the host's lm_head" in caplog.text


def test_of_several_mtp_layers_the_first_is_loaded_and_the_rest_named(tmp_path, caplog):
    tensors = write_native_checkpoint(tmp_path, "mimo")
    second = {k.replace("mtp_layers.0.", "mtp_layers.1."): torch.randn_like(v) for k, v in tensors.items()}
    save_file({**tensors, **second}, str(tmp_path / "extra-mtp.safetensors"))
    with caplog.at_level(logging.WARNING, logger="occctl.mtp_layouts"):
        loaded = load_checkpoint(tmp_path, new_head_if_missing=False)
    assert "has 2 MTP layers; occctl trains and exports the first one" in caplog.text
    assert torch.equal(loaded.mtp_head.final_norm.weight, tensors["model.mtp_layers.0.final_layernorm.weight"])
