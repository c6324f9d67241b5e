"""veRL's real training step on CPU, in a process of its own (``python verl_training_step.py CASES.json OUT_DIR``).

The occctl plugin is loaded as a launch loads it: ``VERL_USE_EXTERNAL_MODULES`` in the environment, read by
``import verl``. For each case, veRL's own ``TrainingWorker`` (``verl.workers.engine_workers``) builds its
``MegatronEngine`` (``initialize``: veRL's ``check_mtp_config``, ``patch_engine_mtp``) from the actor config the
dry run composes for a shipped spec, then runs ``infer_batch`` (the old log-probs) and ``train_mini_batch`` on a
V1-layout batch (veRL's ``left_right_2_no_padding``), so ``forward_backward_batch``, ``forward_step``,
``gptmodel_forward_model_engine`` (bshd or thd), the logits processor, ``postprocess_micro_batch_func``, the
plugin's loss and Megatron's schedule all run. The GPU-only calls are replaced by ``cpu_standins`` (listed there).

Writes ``OUT_DIR/<case>.pt``: the logged metrics of every optimizer step, the parameters before and after, and
each micro-batch's loss inputs as the plugin's actor loss saw them (for the comparisons in the test).
"""

from __future__ import annotations

import json
import os
import sys
from functools import partial
from pathlib import Path

import torch

import verl  # noqa: F401  (loads VERL_USE_EXTERNAL_MODULES: the occctl plugin)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_standins  # noqa: E402

PROMPTS, SAMPLES = 4, 2  # 8 sequences; 2 optimizer steps of 4, 2 micro-batches of 2 each
MINI_BATCH, MICRO_BATCH = 4, 2
VOCAB_FIRST = 4  # token ids below are the tokenizer's specials


def tiny_model_dir(root: Path) -> Path:
    """A local HF directory: a Qwen2 config with one MTP layer (``num_nextn_predict_layers``) and occctl's tiny
    tokenizer (what veRL's HFModelConfig loads)."""
    from transformers import Qwen2Config

    from occctl.models import build_tokenizer

    tok = build_tokenizer()
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, num_nextn_predict_layers=1, architectures=["Qwen2ForCausalLM"],
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config.save_pretrained(root)
    tok.save_pretrained(root)
    return root


def rollout_batch(seed: int, temperature: float):
    """A rollout as veRL's trainer holds it (left-padded prompts, right-padded responses, GRPO advantages), in
    veRL's V1 no-padding layout."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.utils.padding import left_right_2_no_padding

    g = torch.Generator().manual_seed(seed)
    n = PROMPTS * SAMPLES
    prompt_lens = torch.randint(3, 7, (PROMPTS,), generator=g).repeat_interleave(SAMPLES)  # [n]
    response_lens = torch.randint(2, 8, (n,), generator=g)  # [n]
    width_p, width_r = int(prompt_lens.max()), int(response_lens.max())
    prompts = torch.zeros(n, width_p, dtype=torch.long)
    responses = torch.zeros(n, width_r, dtype=torch.long)
    prompt_ids = torch.randint(VOCAB_FIRST, 16, (PROMPTS, width_p), generator=g).repeat_interleave(SAMPLES, 0)
    for i in range(n):
        p, r = int(prompt_lens[i]), int(response_lens[i])
        prompts[i, width_p - p:] = prompt_ids[i, :p]
        responses[i, :r] = torch.randint(VOCAB_FIRST, 16, (r,), generator=g)
    attention = torch.cat([torch.arange(width_p).flip(0)[None] < prompt_lens[:, None],
                           torch.arange(width_r)[None] < response_lens[:, None]], dim=1).long()  # [n, P+R]
    response_mask = attention[:, width_p:].clone()  # [n, R]
    response_mask[0, 1] = 0  # an interior masked token (a tool output)
    rewards = torch.rand(PROMPTS, SAMPLES, generator=g)
    scores = ((rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-6)).reshape(n)
    data = TensorDict({"prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], 1),
                       "attention_mask": attention, "position_ids": (attention.cumsum(1) - 1).clamp(min=0),
                       "response_mask": response_mask,
                       "advantages": scores[:, None] * response_mask}, batch_size=[n])
    data = left_right_2_no_padding(data)
    tu.assign_non_tensor(data, temperature=temperature)
    return data


class Recorder:
    """veRL's actor loss (the plugin's wrapper, as ``engine_workers`` imported it), recording each micro-batch's
    inputs, the term the plugin added (loss - veRL's own ppo_loss) and its metrics."""

    def __init__(self, loss_fn):
        self.loss_fn, self.calls = loss_fn, []

    def __call__(self, config, model_output, data, dp_group=None):
        loss, metrics = self.loss_fn(config, model_output, data, dp_group)
        plugin = sys.modules["backends.verl_backend.plugin"]  # loaded by import verl (the control never gets here)
        base, _ = getattr(self.loss_fn, "__wrapped__", self.loss_fn)(config, model_output, data, dp_group)
        fields = data.select("response_mask", "old_log_probs", "advantages").to_padded_tensor()
        self.calls.append({
            "step": plugin._State.step, "in_training_step": plugin._State.regime is not None,
            "log_probs": [t.detach().clone() for t in model_output["log_probs"].unbind()],
            "mtp_log_probs": [t.detach().clone() for t in model_output["mtp_log_probs"].unbind()]
            if "mtp_log_probs" in model_output else None,
            "prompts": data["prompts"].clone(), "responses": data["responses"].clone(),
            "attention_mask": data["attention_mask"].clone(),
            "response_mask": fields["response_mask"].clone(), "old_log_probs": fields["old_log_probs"].clone(),
            "advantages": fields["advantages"].clone(), "dp_size": int(data["dp_size"]),
            "batch_num_tokens": int(data["batch_num_tokens"]), "global_batch_size": int(data["global_batch_size"]),
            "loss": float(loss.detach()), "term": float((loss - base).detach()),
            "metrics": {k: (float(v.values[0]) if hasattr(v, "values") else float(v)) for k, v in metrics.items()
                        if k.startswith(("mtp/", "occ/"))}})
        return loss, metrics


def run_case(case: dict, model_dir: Path, initial: dict) -> dict:
    from omegaconf import OmegaConf
    from verl.utils import tensordict_utils as tu
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers import engine_workers
    from verl.workers.config import TrainingWorkerConfig
    from verl.workers.utils.padding import no_padding_2_padding

    model_node = {**case["model"], "path": str(model_dir), "use_remove_padding": case["thd"],
                  "override_config": {"attn_implementation": "eager"}}
    model_config = omega_conf_to_dataclass(OmegaConf.create(model_node))
    actor = omega_conf_to_dataclass(OmegaConf.create(case["actor"]))
    actor.model_config = model_config
    engine = actor.engine
    engine.use_dynamic_bsz = False
    engine.micro_batch_size_per_gpu = engine.infer_micro_batch_size_per_gpu = MICRO_BATCH
    engine.use_remove_padding = case["thd"]
    worker = engine_workers.TrainingWorker(TrainingWorkerConfig(
        model_type="language_model", model_config=model_config, engine_config=engine,
        optimizer_config=actor.optim, checkpoint_config=actor.checkpoint))
    worker.reset()  # MegatronEngine.initialize
    recorder = Recorder(engine_workers.ppo_loss)
    worker.set_loss_fn(partial(recorder, config=actor))  # as ActorRolloutRefWorker: partial(ppo_loss, config=...)
    model = worker.engine.module[0]
    before = {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}

    data = rollout_batch(seed=0, temperature=case["temperature"])
    probe = data.clone()
    tu.assign_non_tensor(probe, compute_loss=False, calculate_entropy=False)
    old = worker.infer_batch(probe)  # veRL's old log-probs (forward only)
    data["old_log_probs"] = no_padding_2_padding(tu.get(old, "log_probs"), data) * data["response_mask"]
    tu.assign_non_tensor(data, calculate_entropy=False, global_batch_size=MINI_BATCH, mini_batch_size=MINI_BATCH,
                         epochs=1, seed=42, dataloader_kwargs={"shuffle": False}, compute_loss=True)
    out = worker.train_mini_batch(data)
    metrics = tu.get(out, "metrics")
    after = {k: v.detach().clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    return {"metrics": {k: [float(x) for x in v] for k, v in metrics.items() if isinstance(v, list)},
            "before": before, "after": after, "calls": recorder.calls, "initial": initial is not None}


def main(cases_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    cases = json.loads(Path(cases_file).read_text())
    model_dir = tiny_model_dir(Path(out_dir).parent / "tiny_model")
    state = {}

    cpu_standins.install(initial_state_of=lambda: state.get("initial"))
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("gloo", rank=0, world_size=1)
    for case in cases:
        torch.manual_seed(0)
        result = run_case(case, model_dir, state.get("initial"))
        if "initial" not in state:  # every later case starts from the first case's weights
            state["initial"] = result["before"]
        torch.save(result, Path(out_dir) / f"{case['name']}.pt")
        print(f"case {case['name']}: done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
