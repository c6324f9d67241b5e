"""CPU stand-ins for the GPU-only calls on veRL's training path (TrainingWorker -> MegatronEngine -> GPTModel).

Used by ``verl_training_step.py`` (run in a process of its own by ``test_verl_training_step.py``). Each stand-in
names the GPU-only call it replaces and what replaces it on a GPU; everything else on the path is veRL's and
megatron-core's own code. ``install()`` must run after ``import verl`` (which loads the occctl plugin) and before
anything builds a worker.
"""

from __future__ import annotations

import contextlib
import math
import os
from types import ModuleType, SimpleNamespace
from typing import Any

import torch

from verl.plugin.platform import PlatformBase, set_platform

# (stand-in, the GPU-only call it replaces, what runs there on a GPU)
STANDINS = [
    ("CpuPlatform via verl.plugin.platform.set_platform", "veRL 0.9.1's platform detection falls back to 'nvidia' "
     "(torch.cuda device module, nccl, CUDA device ids)", "PlatformCUDA, auto-detected"),
    ("VERL_ENGINE_DEVICE=cuda, VERL_ENGINE_VENDOR=nvidia (veRL's own override of the engine lookup)",
     "EngineRegistry's lookup by the platform's device name (the Megatron engine is registered for cuda/npu)",
     "the detected device"),
    ("a gloo process group (world size 1) created before the worker", "initialize_global_process_group_ray's "
     "'cpu:gloo,cuda:nccl' group started by Ray", "the Ray worker's NCCL group"),
    ("torch.zeros(device='cuda') in megatron.core.pipeline_parallel.schedules -> CPU", "the per-token loss "
     "counter of forward_backward_no_pipelining", "a CUDA tensor"),
    ("torch.cuda.current_device() -> 'cpu' (MTP loss tracker, CP roll buffers)", "multi_token_prediction.py's "
     "device for its loss tracker", "the current CUDA device"),
    ("MegatronEngine._build_tf_config / _build_megatron_module -> a config-built tiny GPTModel (local layer specs, "
     "random weights, no DDP wrapper)", "Megatron-Bridge / mbridge (HF config -> TransformerConfig, HF weights, "
     "Megatron DDP)", "use_mbridge=True with the model's bridge"),
    ("MegatronEngine._build_optimizer / _build_lr_scheduler -> torch AdamW with Megatron's step() contract, "
     "constant lr", "get_megatron_optimizer (TE/Apex fused Adam, distributed optimizer)", "Megatron's optimizer"),
    ("MegatronCheckpointManager -> None (the test saves nothing)", "checkpoint writing through the bridge",
     "MegatronCheckpointManager"),
    ("core attention -> causal SDPA per packed segment (thd) or per row (bshd)", "Transformer Engine's "
     "TEDotProductAttention (flash / fused; local DotProductAttention refuses packed sequences and reads veRL's "
     "bshd keep-mask as a drop-mask)", "TEDotProductAttention"),
]


class CpuPlatform(PlatformBase):
    """veRL's platform abstraction on a CPU (``device_count`` 0, so veRL skips Megatron's CUDA seeding)."""

    device_name = "cpu"
    vendor_name = "cpu"
    device_module = SimpleNamespace(  # what veRL calls on its device module
        is_available=lambda: True, device_count=lambda: 0, current_device=lambda: "cpu", empty_cache=lambda: None,
        synchronize=lambda *a: None, max_memory_allocated=lambda *a: 0, max_memory_reserved=lambda *a: 0,
        memory_allocated=lambda *a: 0, memory_reserved=lambda *a: 0, manual_seed=torch.manual_seed,
        get_device_name=lambda *a: "CPU",
        manual_seed_all=torch.manual_seed, mem_get_info=lambda *a: (0, 0), reset_peak_memory_stats=lambda *a: None)

    def is_available(self) -> bool:
        return True

    def current_device(self):
        return "cpu"

    def device_count(self) -> int:
        return 0

    def set_device(self, device_index) -> None:
        pass

    def synchronize(self, device_index=None) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        pass

    def empty_cache(self) -> None:
        pass

    def get_device_capability(self, device_index: int = 0):
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        return "CUDA_VISIBLE_DEVICES"

    @contextlib.contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        pass

    def profiler_stop(self) -> None:
        pass

    def ray_resource_name(self) -> str:
        return "CPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def cudart(self) -> Any:
        return None


class _TorchOnCpu(ModuleType):
    """``torch`` as ``megatron.core.pipeline_parallel.schedules`` sees it: ``zeros(device='cuda')`` on the CPU."""

    def __init__(self) -> None:
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def zeros(*args, **kwargs):
        if kwargs.get("device") == "cuda":
            kwargs["device"] = "cpu"
        return torch.zeros(*args, **kwargs)


class CausalSdpaAttention(torch.nn.Module):
    """Megatron core attention (``DotProductAttention``'s interface): causal softmax attention, per packed segment
    for thd (``packed_seq_params.cu_seqlens_q_padded``), per row for bshd. veRL's padding sits after each sequence,
    so causal attention never lets a real token see it."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, cp_comm_type=None, pg_collection=None, **kwargs):
        super().__init__()
        self.config = config
        self.heads = config.num_attention_heads
        self.groups = config.num_query_groups or config.num_attention_heads
        self.scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        packed = query.dim() == 3  # thd: [t, heads, dim]; bshd: [s, b, heads, dim]
        if packed:
            query, key, value = (t.unsqueeze(1) for t in (query, key, value))
        s, b, h, d = query.shape
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, heads, s, dim]
        k, v = (t.repeat_interleave(h // t.shape[1], dim=1) for t in (k, v))
        if packed_seq_params is not None:
            bounds = packed_seq_params.cu_seqlens_q_padded
            bounds = packed_seq_params.cu_seqlens_q if bounds is None else bounds
            out = torch.zeros_like(q)
            for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
                out[:, :, start:end] = torch.nn.functional.scaled_dot_product_attention(
                    q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], is_causal=True, scale=self.scale)
        else:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        out = out.permute(2, 0, 1, 3).reshape(s, b, h * d)  # [s, b, hidden]
        return out.squeeze(1) if packed else out


class TorchAdamW:
    """torch AdamW behind Megatron's optimizer contract (``step() -> (ok, grad_norm, zeros)``), clipping the global
    gradient norm at ``clip_grad`` as Megatron's optimizer does."""

    def __init__(self, params, lr: float, weight_decay: float, betas: tuple[float, float], eps: float,
                 clip_grad: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.inner = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
        self.clip_grad = clip_grad
        self.param_groups = self.inner.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def step(self):
        grads = [p for p in self.params if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(grads, self.clip_grad) if grads else torch.tensor(0.0)
        self.inner.step()
        return True, float(norm), None


class ConstantLr:
    def step(self, increment: int = 1) -> None:
        pass


def tiny_gpt(engine, hf_config, initial_state: dict | None):
    """A megatron-core GPTModel from the tiny HF config (one MTP layer when veRL's MTP is on), CPU, fp32."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec, get_gpt_mtp_block_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig
    from verl.models.mcore.config_converter import get_hf_rope_theta

    overrides = dict(engine.engine_config.override_transformer_config or {})
    mtp_layers = overrides.get("mtp_num_layers", hf_config.num_nextn_predict_layers)
    config = TransformerConfig(
        num_layers=hf_config.num_hidden_layers, hidden_size=hf_config.hidden_size,
        ffn_hidden_size=hf_config.intermediate_size, num_attention_heads=hf_config.num_attention_heads,
        num_query_groups=hf_config.num_key_value_heads, normalization="RMSNorm", gated_linear_unit=True,
        activation_func=torch.nn.functional.silu, add_bias_linear=False, add_qkv_bias=True,
        layernorm_epsilon=hf_config.rms_norm_eps, use_cpu_initialization=True, params_dtype=torch.float32,
        attention_dropout=0.0, hidden_dropout=0.0, sequence_parallel=False,
        mtp_num_layers=mtp_layers or None,
        mtp_loss_scaling_factor=overrides.get("mtp_loss_scaling_factor", 0.1))
    spec = get_gpt_layer_local_spec(qk_layernorm=False, normalization="RMSNorm")
    spec.submodules.self_attention.submodules.core_attention = CausalSdpaAttention
    mtp_spec = get_gpt_mtp_block_spec(config, spec, use_transformer_engine=False) if mtp_layers else None
    model = GPTModel(config=config, transformer_layer_spec=spec, vocab_size=hf_config.vocab_size,
                     max_sequence_length=hf_config.max_position_embeddings, position_embedding_type="rope",
                     rotary_base=int(get_hf_rope_theta(hf_config)), mtp_block_spec=mtp_spec,
                     share_embeddings_and_output_weights=hf_config.tie_word_embeddings)
    if initial_state is not None:  # the same initial weights in every case (MTP off: the main model's part)
        missing, unexpected = model.load_state_dict({k: v for k, v in initial_state.items()
                                                     if mtp_layers or not k.startswith("mtp.")}, strict=False)
        assert not unexpected and all(k.endswith("_extra_state") for k in missing), (missing, unexpected)
    model.zero_grad_buffer = lambda: None  # Megatron DDP's method; without DDP the grads live in p.grad
    return config, model


def install(initial_state_of) -> None:
    """Install every stand-in of ``STANDINS``; ``initial_state_of()``: the weights every model starts from (None:
    random)."""
    import megatron.core.pipeline_parallel.schedules as schedules
    import verl.workers.engine.megatron.transformer_impl as impl
    from verl.utils.megatron_utils import check_mtp_config

    set_platform(CpuPlatform())
    os.environ.update(VERL_ENGINE_DEVICE="cuda", VERL_ENGINE_VENDOR="nvidia")
    schedules.torch = _TorchOnCpu()
    torch.cuda.current_device = lambda: "cpu"

    def build_tf_config(engine):
        engine.is_value_model = False
        engine.share_embeddings_and_output_weights = engine.model_config.share_embeddings_and_output_weights
        check_mtp_config(engine.model_config, engine.engine_config)  # veRL's: MTP layers and coefficient
        engine.param_dtype = engine.dtype = torch.float32
        engine.provider, engine.bridge, engine.vanilla_bridge, engine.peft_cls = None, None, True, None
        engine.tf_config = None

    def build_module(engine):
        engine.tf_config, model = tiny_gpt(engine, engine.model_config.hf_config, initial_state_of())
        return [model]

    def build_optimizer(engine):
        o = engine.optimizer_config
        return TorchAdamW([p for m in engine.module for p in m.parameters()], lr=o.lr, weight_decay=o.weight_decay,
                          betas=tuple(o.betas), eps=getattr(o, "eps", 1e-8), clip_grad=o.clip_grad)

    impl.MegatronEngine._build_tf_config = build_tf_config
    impl.MegatronEngine._build_megatron_module = build_module
    impl.MegatronEngine._build_optimizer = build_optimizer
    impl.MegatronEngine._build_lr_scheduler = lambda engine: ConstantLr()
    impl.MegatronCheckpointManager = lambda **kwargs: None
