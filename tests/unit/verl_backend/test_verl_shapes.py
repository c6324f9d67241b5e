"""The model's shape against the parallel layout (``shapes.py``): every launch-time refusal of Megatron / veRL that
the dry run can see on CPU, with the numbers; the shape from a local config.json, the spec's ``model_shape``, or
neither (checks skipped, said so). No veRL needed."""

import json
from pathlib import Path

import pytest

from occctl.spec import load_spec

from backends.verl_backend.adapter import VerlBackend
from backends.verl_backend.options import parse_options
from backends.verl_backend.shapes import load_shape

REPO = Path(__file__).resolve().parents[3]


def problems(name: str, *sets: str) -> str:
    return "\n".join(VerlBackend().check(load_spec(REPO / "specs" / f"{name}.yaml", list(sets))))


pytestmark = pytest.mark.usefixtures("prompt_files")


@pytest.mark.parametrize("name", ["glm45air_occ", "mimo7b_dapo_occ", "mimo7b_gspo_occ"])
@pytest.mark.parametrize("regime", ["detach", "ce", "policy", "occ"])
def test_shipped_specs_fit_their_models(name, regime):
    assert problems(name, f"mtp.regime={regime}") == ""


def test_tensor_parallel_must_divide_heads_and_kv_heads():
    text = problems("mimo7b_dapo_occ", "backend_options.parallel={tp: 64, pp: 1, cp: 1}")
    assert "parallel.tp = 64 must divide the 32 attention heads of XiaomiMiMo/MiMo-7B-RL" in text
    assert "parallel.tp = 64 must divide the 8 key-value heads" in text
    text = problems("glm45air_occ", "backend_options.parallel.tp=16")
    assert "parallel.tp = 16 must divide the 8 key-value heads (Megatron's num_query_groups) of zai-org/GLM-4.5-Air" \
        in text and "attention heads" not in text  # 96 heads split 16 ways; 8 KV heads do not
    assert "rollout.tp = 64 must divide the 32 attention heads" in problems("mimo7b_dapo_occ",
                                                                             "backend_options.rollout.tp=64")


def test_pipeline_stages_must_split_the_layers():
    assert "parallel.pp = 8 must divide the 36 decoder layers of XiaomiMiMo/MiMo-7B-RL" in \
        problems("mimo7b_dapo_occ", "backend_options.parallel.pp=8")
    assert problems("mimo7b_dapo_occ", "backend_options.parallel={tp: 2, pp: 4, cp: 1, vpp: 3}") == ""  # 9 = 3 x 3
    assert "parallel.vpp = 2 must divide the 9 layers of each of the 4 pipeline ranks" in \
        problems("mimo7b_dapo_occ", "backend_options.parallel={tp: 2, pp: 4, cp: 1, vpp: 2}")
    uneven = "actor_rollout_ref.actor.megatron.override_transformer_config.num_layers_in_{}_pipeline_stage={}"
    assert problems("mimo7b_dapo_occ", "backend_options.parallel={tp: 2, pp: 8, cp: 1}",
                    f"backend_options.overrides=[{uneven.format('first', 1)}, {uneven.format('last', 5)}]") == ""
    assert "leave 31 layers, which do not split into 6 middle pipeline ranks" in \
        problems("mimo7b_dapo_occ", "backend_options.parallel={tp: 2, pp: 8, cp: 1}",
                 f"backend_options.overrides=[{uneven.format('first', 1)}, {uneven.format('last', 4)}]")
    layout = "actor_rollout_ref.actor.megatron.override_transformer_config.pipeline_model_parallel_layout=Et*18|t*18mL"
    assert "pipeline_model_parallel_layout is not supported with mtp.regime = occ" in \
        problems("mimo7b_dapo_occ", f"backend_options.overrides=[{layout}]")
    assert "pipeline_model_parallel_layout" not in problems("mimo7b_dapo_occ", "mtp.regime=detach",
                                                            f"backend_options.overrides=[{layout}]")


def test_experts_mtp_layers_and_lengths():
    assert "parallel.ep = 3 must divide the 128 routed experts of zai-org/GLM-4.5-Air" in \
        problems("glm45air_occ", "backend_options.parallel.ep=3")
    assert "parallel.ep = 2 needs experts" in problems("mimo7b_dapo_occ", "backend_options.parallel.ep=2")
    text = problems("mimo7b_dapo_occ", "backend_options.model_shape.num_nextn_predict_layers=2")
    assert "the occctl MTP term supports one MTP layer; the config of XiaomiMiMo/MiMo-7B-RL " \
           "(backend_options.model_shape) declares 2" in text
    assert problems("mimo7b_dapo_occ", "mtp.regime=detach", "backend_options.model_shape.num_nextn_predict_layers=2") \
        == ""  # veRL's native MTP loss takes any number of MTP layers
    assert "declares no MTP layer" in problems("mimo7b_dapo_occ",
                                               "backend_options.model_shape.num_nextn_predict_layers=0")
    assert "2048 + 40000 = 42048 exceeds max_position_embeddings = 32768" in \
        problems("mimo7b_dapo_occ", "train.max_new_tokens=40000", "backend_options.overlong_buffer.tokens=4096")
    dynamic = "backend_options.micro_batch={dynamic: true, max_tokens_per_gpu: 4096, log_prob_max_tokens_per_gpu: 8192}"
    text = problems("mimo7b_dapo_occ", dynamic, "train.micro_batches_per_step=1")
    assert "micro_batch.max_tokens_per_gpu = 4096 x parallel.cp = 2 is 8192 tokens, less than one sequence" in text
    assert "log_prob_max_tokens_per_gpu" not in text  # 8192 x 2 >= 10240


def test_local_config_json_wins_and_must_agree(tmp_path):
    model = tmp_path / "mimo"
    model.mkdir()
    config = {"model_type": "mimo", "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
              "num_nextn_predict_layers": 1, "max_position_embeddings": 65536}
    (model / "config.json").write_text(json.dumps(config))
    spec = load_spec(REPO / "specs" / "mimo7b_dapo_occ.yaml", [f"model.path={model}"])
    shape, issues, skipped = load_shape(spec, parse_options(spec.backend_options))
    assert shape.max_positions == 65536 and shape.source == f"{model}/config.json" and skipped is None
    assert issues == ["backend_options.model_shape.max_position_embeddings = 32768 but "
                      f"{model}/config.json says 65536"]
    spec = load_spec(REPO / "specs" / "mimo7b_dapo_occ.yaml",
                     [f"model.path={model}", "backend_options.model_shape=null", "backend_options.parallel.pp=8"])
    assert "must divide the 36 decoder layers" in "\n".join(VerlBackend().check(spec))


def test_keys_left_out_take_the_defaults_of_transformers_config_class():
    """A key the config leaves out means what transformers' config class of that model type says (what the
    bridges read): GLM-4.5's MoE class knows its expert count, a remote-code type falls back to plain keys."""
    from transformers import Glm4MoeConfig

    spec = load_spec(REPO / "specs" / "glm45air_occ.yaml",
                     ["backend_options.model_shape={model_type: glm4_moe, num_hidden_layers: 46, "
                      "num_attention_heads: 96, num_key_value_heads: 8, num_nextn_predict_layers: 1}"])
    shape, _, _ = load_shape(spec, parse_options(spec.backend_options))
    assert shape.experts == Glm4MoeConfig().n_routed_experts and shape.max_positions == \
        Glm4MoeConfig().max_position_embeddings
    spec = load_spec(REPO / "specs" / "mimo7b_dapo_occ.yaml",
                     ["backend_options.model_shape={model_type: mimo, num_hidden_layers: 4, num_attention_heads: 6, "
                      "num_nextn_predict_layers: 1}"])
    shape, _, _ = load_shape(spec, parse_options(spec.backend_options))
    assert (shape.kv_heads, shape.experts, shape.mtp_layers, shape.max_positions) == (6, None, 1, None)


def test_without_a_shape_the_checks_are_skipped_and_said_so(results_dir, capsys):
    spec = load_spec(REPO / "specs" / "mimo7b_dapo_occ.yaml", ["backend_options.model_shape=null",
                                                               "backend_options.parallel.pp=8"])
    assert "decoder layers" not in "\n".join(VerlBackend().check(spec))
    plan = VerlBackend().prepare(spec, results_dir / "runs" / "x")
    assert plan.native_config["shape_check"].startswith(
        "skipped: no config.json for XiaomiMiMo/MiMo-7B-RL here (neither in a local model directory")
    assert "model shape checks skipped" in capsys.readouterr().err
