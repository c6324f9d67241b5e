"""Held-out accuracy of the embedded task: avg@k (sampled), greedy accuracy, MTP draft acceptance."""

from __future__ import annotations

from typing import Any, Callable

import torch

from occctl.models import LoadedModel
from occctl.occ.mtp_head import draft_acceptance, mtp_logits
from occctl.tasks.arith import Problem, exact_match


def completion_mask(completion_ids: torch.Tensor, eos_id: int) -> torch.Tensor:  # [B, C] -> [B, C]
    """1 on generated tokens up to and including the first eos."""
    is_eos = (completion_ids == eos_id).long()
    after_eos = (is_eos.cumsum(-1) - is_eos) > 0
    return (~after_eos).float()


@torch.no_grad()
def mtp_acceptance_on(loaded: LoadedModel, sequences: torch.Tensor, prompt_len: int) -> float:
    """Share of generated tokens that the MTP head would have drafted (greedy), on the model's own outputs."""
    model, tok = loaded.model, loaded.tokenizer
    attn = (sequences != tok.pad_token_id).long()
    attn[:, prompt_len:] = completion_mask(sequences[:, prompt_len:], tok.eos_token_id).long()
    out = model.base_model(input_ids=sequences, attention_mask=attn)
    c = sequences.size(1) - prompt_len
    logits = mtp_logits(model, loaded.mtp_head, out.last_hidden_state, sequences, attn,
                        slice(prompt_len - 2, prompt_len + c - 2))
    return draft_acceptance(logits, sequences[:, prompt_len:], attn[:, prompt_len:].float())


@torch.no_grad()
def evaluate_heldout(loaded: LoadedModel, problems: list[Problem], samples_per_problem: int,
                     temperature: float, max_new_tokens: int, seed: int,
                     correct: Callable[[str, str], float] = exact_match, reward: Any = None,
                     prompts: list[str] | None = None, problems_per_batch: int | None = None) -> dict[str, float]:
    """avg@k, pass@k and greedy accuracy under ``correct(completion, answer)`` (the task's check) or, when given,
    ``reward.score(completions, answers)`` (``occctl.tasks.rewards.TaskReward``: a math grader in the grading
    pool; its timeouts are ``grader_timeouts``), plus the MTP head's draft acceptance on the greedy outputs.
    ``prompts``: the rendered prompt texts (default: each problem's own); ``problems_per_batch``: generate in
    chunks of that many problems (default: all at once)."""
    model, tok = loaded.model, loaded.tokenizer
    was_training = model.training
    model.eval()
    texts_in = prompts if prompts is not None else [p.prompt for p in problems]
    step = problems_per_batch or len(problems)
    gen = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    k = samples_per_problem
    texts, greedy_texts, acceptance = [], [], []
    with torch.random.fork_rng():  # evaluation must not move the training RNG
        torch.manual_seed(seed)
        for lo in range(0, len(problems), step):
            enc = tok(texts_in[lo:lo + step], return_tensors="pt", padding=True).to(model.device)
            prompt_len = enc["input_ids"].size(1)
            sampled = model.generate(**enc, do_sample=True, temperature=temperature, top_p=1.0,
                                     num_return_sequences=k, **gen)
            greedy = model.generate(**enc, do_sample=False, **gen)
            texts += tok.batch_decode(sampled[:, prompt_len:], skip_special_tokens=True)
            greedy_texts += tok.batch_decode(greedy[:, prompt_len:], skip_special_tokens=True)
            if loaded.mtp_head is not None:
                acceptance.append((mtp_acceptance_on(loaded, greedy, prompt_len), greedy.size(0)))
    answers = [p.answers or p.answer for p in problems]
    stats: dict[str, float] = {}
    if reward is None:
        hits = [correct(t, problems[i // k].answer) for i, t in enumerate(texts)]
        greedy_hits = [correct(t, p.answer) for t, p in zip(greedy_texts, problems)]
    else:
        hits, stats = reward.score(texts + greedy_texts, [answers[i // k] for i in range(len(texts))] + answers)
        hits, greedy_hits = hits[:len(texts)], hits[len(texts):]
    per_problem = [hits[i * k:(i + 1) * k] for i in range(len(problems))]
    result = {
        "avg_at_k": sum(hits) / len(hits),
        "pass_at_k": sum(max(h) for h in per_problem) / len(problems),
        "greedy": sum(greedy_hits) / len(problems),
    }
    if "reward/timeouts" in stats:
        result["grader_timeouts"] = stats["reward/timeouts"]
    if acceptance:
        result["mtp_acceptance"] = (acceptance[0][0] if len(acceptance) == 1 else
                                    sum(a * n for a, n in acceptance) / sum(n for _, n in acceptance))
    model.train(was_training)
    return result
