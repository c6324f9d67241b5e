"""The plugin's Megatron patch on a real (tiny, CPU) Megatron-core GPTModel with one MTP layer.

Skipped unless ``megatron.core`` is importable: ``install_verl.sh`` installs megatron-core 0.16.1 (CPU, no
Transformer Engine), as CI's veRL venv has it. Three CUDA-only helpers of
Megatron (RNG tracker fork, global memory buffer, MTP loss tracker) are replaced by CPU stand-ins for the test.
"""

import contextlib
import socket

import pytest
import torch

pytest.importorskip("verl")
pytest.importorskip("megatron.core")

V, S, B = 50, 10, 2


@pytest.fixture
def tiny_gpt(monkeypatch):
    import torch.distributed as dist
    from megatron.core import parallel_state
    import megatron.core.tensor_parallel.random as random_
    import megatron.core.utils as mutils
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec, get_gpt_mtp_block_spec
    from megatron.core.models.gpt.gpt_model import GPTModel
    from megatron.core.transformer.transformer_config import TransformerConfig

    import verl.models.mcore.mtp_patch as mtp_patch

    monkeypatch.setattr(random_.CudaRNGStatesTracker, "fork", lambda self, *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(mutils.GlobalMemoryBuffer, "get_tensor",
                        lambda self, shape, dtype, name, *a, **k: torch.empty(tuple(shape), dtype=dtype))
    monkeypatch.setattr(mtp_patch.MTPLossLoggingHelper, "save_loss_to_tracker", staticmethod(lambda *a, **k: None))
    for name in ("_megatron_gptmodel_postprocess", "_process_mtp_loss"):  # the plugin replaces them
        if hasattr(mtp_patch, name):
            monkeypatch.setattr(mtp_patch, name, getattr(mtp_patch, name))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    torch.manual_seed(0)
    config = TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, use_cpu_initialization=True,
                               mtp_num_layers=1, mtp_loss_scaling_factor=0.1, params_dtype=torch.float32,
                               sequence_parallel=False, attention_dropout=0.0, hidden_dropout=0.0)
    spec = get_gpt_layer_local_spec()
    model = GPTModel(config=config, transformer_layer_spec=spec, vocab_size=V, max_sequence_length=64,
                     mtp_block_spec=get_gpt_mtp_block_spec(config, spec, use_transformer_engine=False))
    try:
        yield model, mtp_patch
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def forward_args() -> dict:
    ids = torch.randint(0, V, (B, S))
    return dict(input_ids=ids, position_ids=torch.arange(S)[None].expand(B, S),
                attention_mask=torch.ones(S, S, dtype=torch.bool).tril()[None, None].logical_not(),
                labels=torch.roll(ids, -1, dims=1), loss_mask=torch.ones(B, S))


PARTS = {"trunk": "decoder.layers.0.mlp.linear_fc1.weight", "embeddings": "embedding.word_embeddings.weight",
         "lm_head": "output_layer.weight", "mtp_block": "mtp.layers.0.eh_proj.weight"}


def reached(model) -> dict[str, bool]:
    grads = {name: p.grad for name, p in model.named_parameters()}
    return {part: grads[name] is not None and bool(grads[name].abs().sum() > 0) for part, name in PARTS.items()}


def test_exposed_mtp_logprobs_are_the_native_mtp_cross_entropy(tiny_gpt, monkeypatch):
    from backends.verl_backend import plugin

    model, mtp_patch = tiny_gpt
    plugin.patch_mtp_module(mtp_patch)
    captured = {}
    original_apply = mtp_patch.MTPLossAutoScaler.apply

    def capture(hidden, scaled_loss):  # native path: scale * mask * CE / n_tokens, per token [b, s]
        captured["loss"] = scaled_loss.detach().clone()
        return original_apply(hidden, scaled_loss)

    monkeypatch.setattr(mtp_patch.MTPLossAutoScaler, "apply", capture)
    mtp_patch.patch_postprocess(model)  # what veRL's MegatronEngine.initialize does with mtp.enable
    args = forward_args()

    native = model(**args)  # outside a training step of regime policy/occ: veRL's own postprocess
    assert plugin._State.pending is None
    native_ce = captured.pop("loss") / 0.1 * (B * (S - 1))  # undo scale / n_tokens (mask rolled once)

    monkeypatch.setattr(plugin._State, "regime", "occ")
    monkeypatch.setattr(plugin._State, "exposing", True)
    exposed = model(**args)
    assert "loss" not in captured, "the native MTP cross-entropy must be off in regime occ"
    assert torch.allclose(native, exposed), "the main head's logits are unchanged"
    pending, plugin._State.pending = plugin._State.pending, None
    raw = pending(torch.ones(B, S))  # [B, S]: log q(x_{i+2}) at position i
    assert torch.allclose(raw[:, :S - 2], -native_ce[:, :S - 2], atol=1e-5), (raw + native_ce).abs().max()

    raw[:, :S - 2].sum().backward()  # the MTP policy term reaches trunk, embeddings and lm_head (not detached)
    assert all(reached(model).values()), reached(model)


def test_logits_processor_hands_over_mtp_logprobs(tiny_gpt, monkeypatch):
    """veRL's own LM-head logits processor (real transformer_impl), wrapped: log_probs and mtp_log_probs."""
    from types import SimpleNamespace

    import verl.workers.engine.megatron.transformer_impl as engine

    from backends.verl_backend import plugin

    cls = engine.MegatronEngineWithLMHead
    monkeypatch.setattr(cls, "_lm_head_logits_processor", cls._lm_head_logits_processor)
    monkeypatch.setattr(engine.MegatronEngine, "forward_backward_batch", engine.MegatronEngine.forward_backward_batch)
    plugin.patch_engine_module(engine)
    logits, label = torch.randn(1, 7, V), torch.randint(0, V, (1, 7))
    handed = torch.randn(1, 7)
    monkeypatch.setattr(plugin._State, "pending", lambda temperature: handed * temperature)
    out = cls._lm_head_logits_processor(SimpleNamespace(), logits, label, torch.full((1, 7), 2.0),
                                        calculate_sum_pi_squared=False, calculate_entropy=False,
                                        distillation_use_topk=False, distillation_only=False,
                                        logits_processor_func=None, batch=None, data_format="thd")
    assert torch.equal(out["mtp_log_probs"], handed * 2.0) and out["log_probs"].shape == (1, 7)
    assert plugin._State.pending is None


def test_ce_reaches_the_lm_head_only_through_the_plugin(tiny_gpt, monkeypatch, profile_of):
    """Regime ce. veRL's native MTP loss (``ce_gradient: verl_native_no_lm_head``; legacy Megatron path) trains
    trunk, embeddings and MTP block but detaches the output layer; the plugin's CE term (the default,
    ``whole_model``) is coef x the MTP head's mean NLL on the response tokens and reaches all four, as in the
    paper."""
    from tensordict import NonTensorData, TensorDict

    from backends.verl_backend import hooks, plugin

    model, mtp_patch = tiny_gpt
    plugin.patch_mtp_module(mtp_patch)
    mtp_patch.patch_postprocess(model)
    args = forward_args()

    logits = model(**args)  # native: the MTP loss rides on the main output's backward (MTPLossAutoScaler)
    (logits * 0).sum().backward()
    assert reached(model) == {"trunk": True, "embeddings": True, "lm_head": False, "mtp_block": True}
    model.zero_grad(set_to_none=True)

    monkeypatch.setattr(plugin._State, "regime", "ce")
    monkeypatch.setattr(plugin._State, "exposing", True)
    logits = model(**args)  # [B, S, V]
    pending, plugin._State.pending = plugin._State.pending, None
    raw = pending(torch.ones(B, S))  # [B, S]: log q(x_{i+2}) at position i
    main = torch.log_softmax(logits.detach(), -1).gather(-1, args["labels"][..., None]).squeeze(-1)  # [B, S]
    prompt, response = 4, S - 4
    nested = lambda rows: torch.nested.as_nested_tensor(list(rows), layout=torch.jagged)  # noqa: E731
    ids = lambda n: nested([torch.zeros(n, dtype=torch.long)] * B)  # noqa: E731
    data = TensorDict({"prompts": ids(prompt), "responses": ids(response),
                       "response_mask": torch.ones(B, response, dtype=torch.bool),
                       "old_log_probs": main[:, prompt - 1:S - 1].clone(), "advantages": torch.zeros(B, response)},
                      batch_size=[B])
    for name, value in (("dp_size", 1), ("batch_num_tokens", 2 * B * response), ("global_batch_size", 2 * B)):
        data[name] = NonTensorData(value)  # this micro-batch is half of the optimizer step
    settings = hooks.OccSettings.from_profile(profile_of("mtp.regime=ce", "mtp.coef=0.1"))
    assert settings.plugin_term
    term = hooks.mtp_term(settings, settings.calibrator(), None, {"log_probs": nested(main), "mtp_log_probs":
                                                                  nested(raw)}, data)
    nll = -raw[:, prompt - 2:S - 2]  # [B, R]: response token j is predicted at position P + j - 2
    assert torch.allclose(term.loss, 0.1 * nll.sum() / (2 * B * response)), "coef x the step's token mean"
    term.loss.backward()
    assert reached(model) == {"trunk": True, "embeddings": True, "lm_head": True, "mtp_block": True}
