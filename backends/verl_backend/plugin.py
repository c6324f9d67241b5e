"""occctl's veRL plugin: loaded by ``import verl`` in every process via ``VERL_USE_EXTERNAL_MODULES`` (veRL
raises on import errors there, so a missing or broken plugin stops the run at start instead of training the
wrong objective).

What it installs (veRL 0.9.1, Megatron engine):

1. Policy-loss modes ``occctl_vanilla`` / ``occctl_gspo`` (veRL's own losses, re-registered under our names).
   The launch selects them, so a worker without the plugin fails with "Unsupported loss mode".
2. A wrapper of the actor loss ``verl.workers.utils.losses.ppo_loss`` (installed before
   ``verl.workers.engine_workers`` imports it): veRL's PPO loss, plus the MTP term of ``hooks.py`` (the OCC
   core) in regimes policy / occ and in ce over the whole model, with ``occ/*`` and ``mtp/*`` metrics.
3. When veRL imports its Megatron modules (never in this process otherwise; no megatron import here):
   * ``verl.models.mcore.mtp_patch``: the GPT postprocess, in a training step whose MTP term is the plugin's, runs
     the MTP block itself, computes the main logits without veRL's native MTP cross-entropy, and leaves a closure
     that turns the MTP hidden states into per-token log-probs; in regime detach the native MTP loss gets a
     detached output layer (lm_head isolation, also on Megatron versions whose ``process_mtp_loss`` lacks it);
   * ``verl.workers.engine.megatron.transformer_impl``: the LM-head logits processor calls that closure with the
     same per-token temperature and vocab-parallel log-prob function as the main head, so ``mtp_log_probs``
     travels through veRL's own unpacking (sequence packing, CP gather) next to ``log_probs``; and
     ``forward_backward_batch`` marks the optimizer-step boundary (for c_hat / v_hat2 accumulation).
"""

from __future__ import annotations

import importlib.abc
import inspect
import sys
from functools import partial
from typing import Any, Callable

import torch

from backends.verl_backend import hooks

MTP_PATCH = "verl.models.mcore.mtp_patch"
ENGINE = "verl.workers.engine.megatron.transformer_impl"


class _State:
    """Per worker process (one actor per process)."""

    regime: str | None = None  # regime of the optimizer step being run; None outside a training step
    exposing = False  # this training step's MTP term is the plugin's: the postprocess exposes the MTP log-probs
    step = 0  # optimizer steps started in this process
    engine_patched = False
    pending: Callable[[torch.Tensor], torch.Tensor] | None = None  # postprocess -> logits processor
    calibrators: dict[Any, tuple[int, Any]] = {}  # (settings, group) -> (step last begun, Calibrator)

    @classmethod
    def calibrator(cls, settings: hooks.OccSettings, group: Any):
        key = (settings, id(group))
        step, cal = cls.calibrators.get(key, (-1, None))
        if cal is None:
            all_reduce = hooks.dp_all_reduce(group) if group is not None and _distributed() else None
            cal = settings.calibrator(all_reduce)
        if step != cls.step:
            cal.begin_step()
        cls.calibrators[key] = (cls.step, cal)
        return cal


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


# --- 1. policy-loss modes -------------------------------------------------------------------------------------


def register_losses() -> None:
    from verl.trainer.ppo.core_algos import get_policy_loss_fn, register_policy_loss

    for base in ("vanilla", "gspo"):
        register_policy_loss(hooks.LOSS_PREFIX + base)(get_policy_loss_fn(base))


# --- 2. the actor loss ----------------------------------------------------------------------------------------


def wrap_actor_loss() -> None:
    import verl.workers.utils.losses as losses

    if getattr(losses.ppo_loss, "_occctl", False):
        return
    if "verl.workers.engine_workers" in sys.modules:
        raise RuntimeError("occctl: verl.workers.engine_workers was imported before the occctl plugin; load the "
                           "plugin through VERL_USE_EXTERNAL_MODULES so it runs inside `import verl`")
    original = losses.ppo_loss

    def ppo_loss(config, model_output, data, dp_group=None):
        loss, metrics = original(config, model_output, data, dp_group)
        settings = hooks.OccSettings.from_profile(getattr(config, "profile", None))
        if settings is None or not settings.plugin_term:
            return loss, metrics
        if not _State.engine_patched:
            raise RuntimeError(f"occctl: regime {settings.regime!r} needs the occctl Megatron engine patch, which is "
                               "not installed in this worker (the verl Megatron engine was never imported?)")
        if _State.regime is None:  # a loss outside a training step (e.g. an evaluation pass): no MTP term
            return loss, metrics
        term = hooks.mtp_term(settings, _State.calibrator(settings, dp_group), config, model_output, data)
        metrics.update(_verl_metrics(term.metrics))
        return loss + term.loss, metrics

    ppo_loss._occctl = True
    ppo_loss.__wrapped__ = original
    losses.ppo_loss = ppo_loss


def _verl_metrics(metrics: dict[str, float]) -> dict[str, Any]:
    """The term's metrics as veRL aggregates them: shares of the step's value (``hooks.SUMMED_METRICS``) summed over
    the step's micro-batches (then averaged over data-parallel ranks), like veRL's ``pg_loss``; the rest averaged."""
    from verl.utils.metric import AggregationType, Metric

    return {key: Metric(value=value, aggregation=AggregationType.SUM) if key in hooks.SUMMED_METRICS else value
            for key, value in metrics.items()}


# --- 3. Megatron: expose the MTP head's log-probs -------------------------------------------------------------


def patch_mtp_module(module) -> None:
    """``verl.models.mcore.mtp_patch``: replace the postprocess veRL binds to every GPT model, and wrap the new
    Megatron API's MTP loss for lm_head isolation in regime detach."""
    original = module._megatron_gptmodel_postprocess
    if getattr(original, "_occctl", False):
        return
    signature = inspect.signature(original)

    def postprocess(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        kw = dict(bound.arguments)
        if (_State.exposing and kw.get("labels") is not None and self.post_process
                and self.config.mtp_num_layers):
            return _postprocess_exposing_mtp(module, original, self, kw)
        return original(*bound.args, **bound.kwargs)

    postprocess._occctl = True
    module._megatron_gptmodel_postprocess = postprocess
    if getattr(module, "_HAS_PROCESS_MTP_LOSS", False):
        module._process_mtp_loss = _isolating_mtp_loss(module._process_mtp_loss)


def _postprocess_exposing_mtp(module, original, model, kw: dict[str, Any]):
    if model.config.mtp_num_layers != 1:
        raise NotImplementedError(f"occctl: the MTP policy term supports one MTP layer; this model has "
                                  f"{model.config.mtp_num_layers}")
    if not kw.get("mtp_in_postprocess"):
        raise NotImplementedError("occctl: the MTP block does not run in this rank's postprocess "
                                  "(mtp_in_postprocess=False); unsupported pipeline layout for the MTP policy term")
    hidden = _run_mtp_block(model, kw)  # [(1 + 1) * s, b, h]: main states, then the MTP layer's
    main, mtp_hidden = torch.chunk(hidden, 2, dim=0)
    packed = kw.get("packed_seq_params")
    labels, _ = module.roll_tensor(kw["labels"].clone(), shifts=-1, dims=-1,
                                   cp_group=module._resolve_cp_group(model, packed), packed_seq_params=packed)
    output_weight = model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights else None
    _State.pending = partial(_mtp_logprobs, model, mtp_hidden, labels, output_weight, kw.get("runtime_gather_output"))
    # the main head exactly as veRL computes it, without the native MTP cross-entropy
    return original(**{**kw, "hidden_states": main, "labels": None, "mtp_in_postprocess": False})


def _run_mtp_block(model, kw: dict[str, Any]) -> torch.Tensor:
    """The MTP block's forward, with the arguments veRL's postprocess passes it."""
    extra = dict(kw.get("extra_block_kwargs") or {})
    if "padding_mask" in inspect.signature(model.mtp.forward).parameters:
        extra["padding_mask"] = kw.get("padding_mask")
    if kw.get("mhc_multistream") is not None:
        extra["mhc_multistream"] = kw["mhc_multistream"]
    return model.mtp(input_ids=kw["input_ids"], position_ids=kw["position_ids"], hidden_states=kw["hidden_states"],
                     attention_mask=kw.get("attention_mask"), inference_params=kw.get("inference_params"),
                     rotary_pos_emb=kw.get("rotary_pos_emb"), rotary_pos_cos=kw.get("rotary_pos_cos"),
                     rotary_pos_sin=kw.get("rotary_pos_sin"), packed_seq_params=kw.get("packed_seq_params"),
                     sequence_len_offset=kw.get("sequence_len_offset"), embedding=model.embedding, **extra)


def _mtp_logprobs(model, hidden, labels, output_weight, runtime_gather_output,
                  temperature: torch.Tensor) -> torch.Tensor:  # [b, s]
    """log q(x_{i+2}) per position, as the main head's: logits / temperature, vocab-parallel log-softmax."""
    from verl.utils.megatron.tensor_parallel import vocab_parallel_log_probs_from_logits

    logits, _ = model.output_layer(hidden, weight=output_weight, runtime_gather_output=runtime_gather_output)
    logits = logits.transpose(0, 1).contiguous()  # [s, b, v/tp] -> [b, s, v/tp]; Megatron CE views it
    logits = logits / temperature.unsqueeze(-1).to(logits.dtype)
    return vocab_parallel_log_probs_from_logits(logits, labels)


def _isolating_mtp_loss(process_mtp_loss):
    """Regime detach: the native MTP cross-entropy must not reach the shared output layer (lm_head)."""

    def wrapper(*args, **kwargs):
        if _State.regime == "detach" and "output_layer" in kwargs:
            layer = kwargs["output_layer"]
            kwargs["output_layer"] = partial(_detached_call, layer)
            if kwargs.get("output_weight") is not None:
                kwargs["output_weight"] = kwargs["output_weight"].detach()
        return process_mtp_loss(*args, **kwargs)

    return wrapper


def _detached_call(layer, hidden, weight=None, runtime_gather_output=None):
    params = {k: v.detach() for k, v in layer.named_parameters()}
    buffers = dict(layer.named_buffers())
    return torch.func.functional_call(layer, {**params, **buffers}, args=(hidden,),
                                      kwargs={"weight": None if weight is None else weight.detach(),
                                              "runtime_gather_output": runtime_gather_output})


def patch_engine_module(module) -> None:
    """``transformer_impl``: hand the pending MTP closure to the logits processor; mark optimizer steps."""
    lm_head = module.MegatronEngineWithLMHead
    original_processor = lm_head._lm_head_logits_processor
    if getattr(original_processor, "_occctl", False):
        return

    def logits_processor(self, logits, label, temperature, **kwargs):
        out = original_processor(self, logits, label, temperature, **kwargs)
        pending, _State.pending = _State.pending, None
        if pending is not None:
            out["mtp_log_probs"] = pending(temperature)
        return out

    logits_processor._occctl = True
    lm_head._lm_head_logits_processor = logits_processor
    engine = module.MegatronEngine
    original_step = engine.forward_backward_batch

    def forward_backward_batch(self, data, loss_function, forward_only=False):
        settings = _settings_of(loss_function)
        if forward_only or settings is None:
            return original_step(self, data, loss_function, forward_only)
        _State.step += 1
        _State.regime, _State.exposing = settings.regime, settings.plugin_term
        try:
            return original_step(self, data, loss_function, forward_only)
        finally:
            _State.regime, _State.exposing = None, False
            _State.pending = None

    engine.forward_backward_batch = forward_backward_batch
    _State.engine_patched = True


def _settings_of(loss_function) -> hooks.OccSettings | None:
    config = getattr(loss_function, "keywords", {}).get("config")
    return hooks.OccSettings.from_profile(getattr(config, "profile", None)) if config is not None else None


# --- install --------------------------------------------------------------------------------------------------


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``callback(module)`` right after veRL imports one of its own modules (exceptions propagate)."""

    def __init__(self, callbacks: dict[str, Callable[[Any], None]]) -> None:
        self.callbacks = callbacks

    def find_spec(self, name, path, target=None):
        if name not in self.callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        callback, execute = self.callbacks.pop(name), spec.loader.exec_module

        def exec_module(module):
            execute(module)
            callback(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    register_losses()
    wrap_actor_loss()
    pending = {}
    for name, callback in ((MTP_PATCH, patch_mtp_module), (ENGINE, patch_engine_module)):
        if name in sys.modules:
            callback(sys.modules[name])
        else:
            pending[name] = callback
    if pending and not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(pending))


install()
