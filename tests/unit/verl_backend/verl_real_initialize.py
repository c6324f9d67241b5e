"""Probe (not a test): veRL's real ``MegatronEngine.initialize`` through vanilla mbridge from a tiny local MiMo
directory, on CPU. Prints how far it gets; the README's "validated" section records the result.

    pip install --target /tmp/mb --no-deps mbridge==0.15.1 einops
    LOCAL_SPECS=1 PYTHONPATH=.:/tmp/mb VERL_USE_EXTERNAL_MODULES=backends.verl_backend.plugin \
        python tests/unit/verl_backend/verl_real_initialize.py CASES.json

CASES.json: a case list as ``test_verl_training_step.compose`` writes it (the second case is used). Without
``LOCAL_SPECS=1`` mbridge asks megatron-core for Transformer Engine layer specs.
"""
import json, os, sys, tempfile
from pathlib import Path
import torch
import verl  # noqa  (plugin)
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_standins
from cpu_standins import CpuPlatform, _TorchOnCpu

def mimo_dir(root: Path) -> Path:
    from occctl.models import build_tiny, save_checkpoint
    from occctl.spec import TinyModelSpec
    loaded = build_tiny(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64), seed=0)
    save_checkpoint(root, loaded)
    cfg = json.loads((root / "config.json").read_text())
    cfg.update(model_type="mimo", architectures=["MiMoForCausalLM"],
               auto_map={"AutoConfig": "configuration_mimo.MiMoConfig"})
    (root / "config.json").write_text(json.dumps(cfg))
    (root / "configuration_mimo.py").write_text(
        "from transformers import Qwen2Config\n\nclass MiMoConfig(Qwen2Config):\n    model_type = 'mimo'\n\n"
        "    def __init__(self, num_nextn_predict_layers=0, **kwargs):\n"
        "        self.num_nextn_predict_layers = num_nextn_predict_layers\n        super().__init__(**kwargs)\n")
    return root

def main():
    import torch.distributed as dist
    from omegaconf import OmegaConf
    from verl.plugin.platform import set_platform
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers import engine_workers
    from verl.workers.config import TrainingWorkerConfig
    import megatron.core.pipeline_parallel.schedules as schedules
    set_platform(CpuPlatform())
    if os.environ.get("LOCAL_SPECS") == "1":  # mbridge asks for Transformer Engine specs: local specs instead
        import mbridge.core.llm_bridge as llm
        import mbridge.models.mimo as mimo
        from megatron.core.models.gpt import gpt_layer_specs as specs
        def local_spec(self, vp_stage=None):
            spec = specs.get_gpt_layer_local_spec(qk_layernorm=False, normalization="RMSNorm")
            spec.submodules.self_attention.submodules.core_attention = cpu_standins.CausalSdpaAttention
            return spec
        llm.LLMBridge._get_transformer_layer_spec = local_spec
        original = mimo.MimoBridge._weight_name_mapping_mcore_to_hf
        def te_names(self, name):  # local-spec norms carry the names TE's fused layers give them
            name = name.replace("input_layernorm.weight", "self_attention.linear_qkv.layer_norm_weight")
            name = name.replace("pre_mlp_layernorm.weight", "mlp.linear_fc1.layer_norm_weight")
            return original(self, name)
        mimo.MimoBridge._weight_name_mapping_mcore_to_hf = te_names
        mimo.get_gpt_mtp_block_spec = lambda config, spec, use_transformer_engine: specs.get_gpt_mtp_block_spec(
            config, local_spec(None), use_transformer_engine=False)
    os.environ.update(VERL_ENGINE_DEVICE="cuda", VERL_ENGINE_VENDOR="nvidia")
    schedules.torch = _TorchOnCpu()
    torch.cuda.current_device = lambda: "cpu"
    torch.nn.Module.cuda = lambda self, device=None: self  # mbridge's GPU allocation: stays on the CPU
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29611")
    dist.init_process_group("gloo", rank=0, world_size=1)
    case = json.load(open(sys.argv[1]))[-1]
    case["actor"]["megatron"]["vanilla_mbridge"] = os.environ.get("VANILLA", "1") == "1"
    case["actor"]["megatron"]["override_transformer_config"].update(use_cpu_initialization=True,
                                                                    attention_backend="local")
    root = mimo_dir(Path(tempfile.mkdtemp()) / "mimo")
    model_config = omega_conf_to_dataclass(OmegaConf.create({**case["model"], "path": str(root),
                                                             "use_remove_padding": True}))
    actor = omega_conf_to_dataclass(OmegaConf.create(case["actor"]))
    actor.model_config = model_config
    engine = actor.engine
    engine.use_dynamic_bsz = False
    engine.micro_batch_size_per_gpu = engine.infer_micro_batch_size_per_gpu = 2
    worker = engine_workers.TrainingWorker(TrainingWorkerConfig(model_type="language_model", model_config=model_config,
        engine_config=engine, optimizer_config=actor.optim, checkpoint_config=actor.checkpoint))
    print("STAGE: worker built", flush=True)
    worker.reset()
    print("STAGE: initialize done", type(worker.engine.module[0]), type(worker.engine.optimizer), flush=True)

main()
