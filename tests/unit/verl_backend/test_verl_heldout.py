"""The runner's held-out numbers for the veRL backend: a veRL checkpoint tree (as veRL writes it, see
test_verl_checkpoints) exported by ``VerlBackend.export`` gets the same ``heldout_*`` / ``mtp_acceptance_*``
summary keys as a TRL run, computed by the runner (``occctl.pipeline``) on the exported checkpoint, on CPU."""

import json

import torch

from occctl.backend import Plan, TrainResult, get_backend
from occctl.rundir import RunDir
from occctl.spec import validate_spec

from test_verl_checkpoints import hf_export  # this folder is on sys.path (pytest prepend import mode)


def tiny_verl_host(tmp_path):
    """A tiny Qwen2 that reads the embedded task (the tiny preset's character tokenizer), its head and the
    start directory (``model.path``), shaped as test_verl_checkpoints' host (vocab 32, width 16)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from occctl.models import build_tokenizer, load_checkpoint
    from occctl.occ.mtp_head import MtpHead

    tok = build_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(config)
    head = MtpHead.for_model(model)
    start = hf_export(model, head, tmp_path / "start", 0, "deepseek")
    tok.save_pretrained(start)
    assert load_checkpoint(start).mtp_head is not None
    return model, head, tok, start


def test_a_verl_checkpoint_tree_gets_heldout_summary_keys_from_the_runner(tmp_path, results_dir, monkeypatch):
    from occctl.pipeline import HeldoutEval, load_export
    from occctl.runner import MetricLog, build_summary, run_pipeline
    from occctl.tracking import Tracker, resolve_store

    model, head, tok, start = tiny_verl_host(tmp_path)
    spec = validate_spec({"name": "verl_heldout", "backend": "verl", "model": {"path": str(start)},
                          "task": {"heldout_problems": 12}, "train": {"steps": 4},
                          "eval": {"samples_per_problem": 2}, "tracking": {"mlflow": False}}, "s.yaml")
    backend = get_backend("verl")
    tree = tmp_path / "verl" / "checkpoints"

    def veRL_trains(self, plan, sink, progress=None):
        """What VerlBackend.train does once veRL's process has run: metrics, then the export of its tree."""
        for step in range(1, 5):
            sink(step, {"reward": 0.1 * step})
        with torch.no_grad():
            model.lm_head.weight.add_(0.5 * torch.randn_like(model.lm_head.weight))  # "training" moved it
        hf = hf_export(model, head, tree, 4, "deepseek")
        tok.save_pretrained(hf)
        return TrainResult(checkpoint=self.export(tree, plan.run_dir.final_checkpoint))

    monkeypatch.setattr(type(backend), "train", veRL_trains)
    run = RunDir.named(spec.name)
    run.path.mkdir(parents=True)
    log = MetricLog(run, Tracker.disabled(resolve_store(None)), None)
    plan, result, heldout = run_pipeline(backend, Plan(spec=spec, run_dir=run, native_config={}), log, None)
    log.close()
    summary = build_summary(spec, log.history, result, 1.0, None, heldout, plan.warm_start)

    evaluate = HeldoutEval(spec)
    after, before = evaluate(load_export(result.checkpoint, spec)), evaluate(load_export(start, spec))
    assert summary["heldout_acc_after"] == after["avg_at_k"] and summary["heldout_acc_before"] == before["avg_at_k"]
    assert summary["mtp_acceptance_after"] == after["mtp_acceptance"]
    assert summary["mtp_acceptance_before"] == before["mtp_acceptance"]
    assert summary["heldout_greedy_after"] == after["greedy"] and summary["heldout_k"] == 2
    assert summary["mtp_acceptance_after"] != summary["mtp_acceptance_before"], "the after numbers are the export's"
    last = json.loads(run.metrics_file.read_text().splitlines()[-1])
    assert last == {"step": 4, **{f"eval/tiny/{k}": v for k, v in after.items()}}
    assert summary["warm_start"] is None and result.checkpoint == run.final_checkpoint
