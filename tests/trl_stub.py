"""A stub of the TRL backend's trainer on which ``MtpGRPOTrainer._mtp_term`` runs for real (no model, no TRL loop):
the state and the helpers the term reads, with the MTP logits handed in by the test (``current["logits"]``)."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace


def stub_trainer(settings, ga: int, temperature: float, current: dict) -> SimpleNamespace:
    """``ga`` micro-batches per optimizer step, generated together (steps_per_generation = ga); the term's own
    parts (``_begin_step``, ``_policy_kwargs``, ``_log_term``) are the real methods, bound to the stub."""
    from backends.trl_backend.hooks import MtpGRPOTrainer

    stub = SimpleNamespace(
        mtp=settings, model=SimpleNamespace(training=True), temperature=temperature,
        state=SimpleNamespace(global_step=0), _calibrated_step=-1, _probe_sums={},
        current_gradient_accumulation_steps=ga, args=SimpleNamespace(steps_per_generation=ga), use_vllm=False,
        accelerator=SimpleNamespace(num_processes=1), _metrics={"train": defaultdict(list)},
        _mtp_logits_for=lambda *args, **kwargs: current["logits"])
    for name in ("_begin_step", "_policy_kwargs", "_log_term"):
        setattr(stub, name, getattr(MtpGRPOTrainer, name).__get__(stub))
    return stub
