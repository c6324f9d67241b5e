"""The veRL plugin: loaded by ``import verl`` through VERL_USE_EXTERNAL_MODULES (loud on failure), and its
pieces that need no Megatron: the post-import hook, the engine wrappers, lm_head isolation in regime detach."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("verl")  # importing the plugin imports veRL (it registers into veRL's loss registry)

REPO = Path(__file__).resolve().parents[3]

PROBE = textwrap.dedent("""
    import json, sys
    import verl
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, get_policy_loss_fn
    import verl.workers.utils.losses as losses
    from verl.utils.import_utils import import_external_libs
    out = {
        "losses": sorted(k for k in POLICY_LOSS_REGISTRY if k.startswith("occctl_")),
        "same_gspo": get_policy_loss_fn("occctl_gspo") is get_policy_loss_fn("gspo"),
        "wrapped": getattr(losses.ppo_loss, "_occctl", False),
        "finder": [type(f).__name__ for f in sys.meta_path if type(f).__name__ == "_AfterImport"],
        "megatron_imported": "megatron" in sys.modules,
    }
    try:
        import_external_libs(["backends.verl_backend.no_such_plugin"])  # the same call veRL makes for the env var
        out["loud"] = False
    except ImportError as e:
        out["loud"] = "no_such_plugin" in str(e)
    print("PROBE" + json.dumps(out))
""")


# Started when this module is collected, so the fresh process's ~10 s `import verl` overlaps the other tests.
_PROBE = subprocess.Popen([sys.executable, "-c", PROBE], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          cwd=REPO, env={**os.environ, "VERL_USE_EXTERNAL_MODULES": "backends.verl_backend.plugin",
                                         "PYTHONPATH": str(REPO)})


def test_plugin_loads_in_a_process_that_imports_verl():
    stdout, stderr = _PROBE.communicate(timeout=240)
    assert _PROBE.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.split("PROBE", 1)[1])
    assert out["losses"] == ["occctl_gspo", "occctl_vanilla"] and out["same_gspo"]
    assert out["wrapped"] and out["finder"] == ["_AfterImport"]
    assert not out["megatron_imported"], "the plugin must not import megatron itself"
    assert out["loud"], "a plugin module that cannot be imported must raise (VERL_USE_EXTERNAL_MODULES path)"


def test_after_import_hook_runs_after_the_module_and_propagates_errors(tmp_path, monkeypatch):
    from backends.verl_backend.plugin import _AfterImport

    pkg = tmp_path / "occctl_fakepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text("VALUE = 1\n")
    (pkg / "bad.py").write_text("VALUE = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen = []

    def fail(module):
        raise RuntimeError(f"patch of {module.__name__} failed")

    finder = _AfterImport({"occctl_fakepkg.good": lambda m: seen.append(m.VALUE), "occctl_fakepkg.bad": fail})
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    try:
        import occctl_fakepkg.good  # noqa: F401

        assert seen == [1]
        with pytest.raises(RuntimeError, match="patch of occctl_fakepkg.bad failed"):
            import occctl_fakepkg.bad  # noqa: F401
    finally:
        for name in [n for n in sys.modules if n.startswith("occctl_fakepkg")]:
            del sys.modules[name]


def _fake_engine_module(calls):
    class MegatronEngineWithLMHead:
        def _lm_head_logits_processor(self, logits, label, temperature, **kwargs):
            return {"log_probs": logits.sum(-1)}

    class MegatronEngine:
        def forward_backward_batch(self, data, loss_function, forward_only=False):
            from backends.verl_backend.plugin import _State

            calls.append((_State.regime, _State.step, forward_only))
            if data == "boom":
                raise ValueError("boom")
            return "out"

    return SimpleNamespace(MegatronEngineWithLMHead=MegatronEngineWithLMHead, MegatronEngine=MegatronEngine)


def test_engine_patch_marks_training_steps_of_occctl_losses(monkeypatch, profile_of):
    from functools import partial

    from backends.verl_backend import plugin

    monkeypatch.setattr(plugin._State, "step", 0)
    monkeypatch.setattr(plugin._State, "engine_patched", False)
    calls = []
    module = _fake_engine_module(calls)
    plugin.patch_engine_module(module)
    assert plugin._State.engine_patched
    profile = profile_of("mtp.regime=occ")
    ours = partial(lambda **kw: None, config=SimpleNamespace(profile=profile))
    plain = partial(lambda **kw: None, config=SimpleNamespace(profile={}))
    engine = module.MegatronEngine()
    engine.forward_backward_batch("d", ours)
    engine.forward_backward_batch("d", ours, forward_only=True)  # old log-probs: no MTP term, no new step
    engine.forward_backward_batch("d", plain)
    with pytest.raises(ValueError):
        engine.forward_backward_batch("boom", ours)
    assert calls == [("occ", 1, False), (None, 1, True), (None, 1, False), ("occ", 2, False)]
    assert plugin._State.regime is None and plugin._State.pending is None

    monkeypatch.setattr(plugin._State, "pending", lambda temperature: temperature * 3)
    out = module.MegatronEngineWithLMHead()._lm_head_logits_processor(torch.ones(1, 4, 5), None, torch.ones(1, 4))
    assert torch.equal(out["mtp_log_probs"], torch.full((1, 4), 3.0)) and plugin._State.pending is None


@pytest.mark.parametrize("regime,lm_head_learns", [("detach", False), ("ce", True), (None, True)])
def test_native_mtp_loss_isolates_lm_head_in_detach(regime, lm_head_learns, monkeypatch):
    """New Megatron API path (process_mtp_loss): in regime detach the shared output layer gets no MTP gradient."""
    from backends.verl_backend import plugin

    class OutputLayer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(5, 3))

        def forward(self, hidden, weight=None, runtime_gather_output=None):
            return hidden @ (self.weight if weight is None else weight).t(), None

    def process_mtp_loss(hidden_states, output_layer, output_weight, labels):
        logits, _ = output_layer(hidden_states, weight=output_weight)
        return torch.nn.functional.cross_entropy(logits, labels)

    monkeypatch.setattr(plugin._State, "regime", regime)
    layer, hidden = OutputLayer(), torch.randn(4, 3, requires_grad=True)
    loss = plugin._isolating_mtp_loss(process_mtp_loss)(hidden_states=hidden, output_layer=layer, output_weight=None,
                                                          labels=torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0  # the MTP block still learns
    assert (layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0) == lm_head_learns
