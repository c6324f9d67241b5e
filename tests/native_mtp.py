"""Tiny config-built hosts of each MTP family with their native MTP layer written under the engines' key names
(vLLM mimo_mtp.py, deepseek_mtp.py / glm4_moe_mtp.py, qwen3_next_mtp.py), for the unit and end-to-end tests.

The block's names come from the host's own ``save_pretrained`` output (per-expert MoE tensors, as on disk); the
values are random, so a head loaded from them differs from a new one.
"""

import json

import torch
from safetensors.torch import load_file, save_file

from occctl.models import build_tokenizer

V, H = 16, 16  # the tiny tokenizer's vocabulary; hidden size


def host_model(family):
    import transformers as tf

    common = dict(vocab_size=V, hidden_size=H, intermediate_size=32, num_attention_heads=2, num_key_value_heads=2,
                  max_position_embeddings=32, tie_word_embeddings=False)
    moe = dict(moe_intermediate_size=8, n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1,
               first_k_dense_replace=1, num_hidden_layers=2)
    if family == "mimo":  # MiMo's modeling code is Qwen2 + model.mtp_layers (remote code); its host is a Qwen2
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(num_hidden_layers=2, **common))
    if family == "deepseek":
        return tf.DeepseekV3ForCausalLM(tf.DeepseekV3Config(kv_lora_rank=8, q_lora_rank=8, qk_rope_head_dim=4,
                                                            v_head_dim=4, qk_nope_head_dim=4, **moe, **common))
    if family == "glm":
        return tf.Glm4MoeForCausalLM(tf.Glm4MoeConfig(head_dim=8, **moe, **common))
    return tf.Qwen3NextForCausalLM(tf.Qwen3NextConfig(
        num_hidden_layers=4, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
        shared_expert_intermediate_size=8, linear_num_value_heads=2, linear_num_key_heads=1, linear_key_head_dim=8,
        linear_value_head_dim=8, **{**common, "num_key_value_heads": 1}))


# the engines' names (vLLM): (own tensors, block prefix, template trunk layer, own copies of host tensors)
def native_names(family, n):
    if family == "mimo":
        p = "model.mtp_layers.0."
        return {"e": p + "token_layernorm.weight", "h": p + "hidden_layernorm.weight", "proj": p + "input_proj.weight",
                "final": p + "final_layernorm.weight"}, p, n - 1, {}
    if family in ("deepseek", "glm"):
        p = f"model.layers.{n}."
        return ({"e": p + "enorm.weight", "h": p + "hnorm.weight", "proj": p + "eh_proj.weight",
                 "final": p + "shared_head.norm.weight"}, p, n - 1,
                {"embed": p + "embed_tokens.weight", "head": p + "shared_head.head.weight"})
    return ({"e": "mtp.pre_fc_norm_embedding.weight", "h": "mtp.pre_fc_norm_hidden.weight", "proj": "mtp.fc.weight",
             "final": "mtp.norm.weight"}, "mtp.layers.0.", n - 1, {})  # layer 3 is the full-attention one


def write_native_checkpoint(directory, family, seed=0):
    """A host saved with save_pretrained + its MTP layer written under the engine's key names (random values)."""
    torch.manual_seed(seed)
    model = host_model(family)
    model.save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    n = model.config.num_hidden_layers
    own, block, template, copies = native_names(family, n)
    trunk = load_file(str(directory / "model.safetensors"))
    tensors = {block + k.removeprefix(f"model.layers.{template}."): torch.randn_like(v)
               for k, v in trunk.items() if k.startswith(f"model.layers.{template}.")}
    tensors.update({own["e"]: 1 + 0.1 * torch.randn(H), own["h"]: 1 + 0.1 * torch.randn(H),
                    own["final"]: 1 + 0.1 * torch.randn(H), own["proj"]: 0.2 * torch.randn(H, 2 * H)})
    if copies:
        tensors[copies["embed"]] = trunk["model.embed_tokens.weight"].clone()
        tensors[copies["head"]] = trunk["lm_head.weight"].clone()
    save_file(tensors, str(directory / "extra-mtp.safetensors"))
    config = json.loads((directory / "config.json").read_text())
    config["num_nextn_predict_layers"] = 1
    (directory / "config.json").write_text(json.dumps(config))
    return tensors
