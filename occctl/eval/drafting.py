"""The MTP head's greedy draft acceptance on a suite's prompts, side by side: occctl's own decoder
(``occctl.speculative``) and, with ``--engine vllm``, vLLM's ``mtp`` drafter on the same prompts and checkpoint (its
own spec-decode counters). Both draft one token per main-model forward, so on the same head, run the same way
(``mtp.zero_first_position``, ``occctl.mtp_layouts``), the two rates agree; a difference is the engine serving the
export otherwise than occctl trained it. ``occctl eval --suite tiny --speculative`` reports them."""

from __future__ import annotations

from typing import Any

OCCCTL_KEYS = ("occctl_spec_accept_rate", "occctl_spec_mean_accept_len")


def occctl_greedy_drafting(loaded: Any, prompts: list[list[int]], max_new_tokens: int,
                           batch_size: int = 64) -> tuple[list[list[int]], dict[str, float]]:
    """occctl's decoder, greedy, drafting with ``loaded.mtp_head``: (generated ids up to and including eos per
    prompt, {occctl_spec_accept_rate, occctl_spec_mean_accept_len, occctl_spec_drafts})."""
    import torch

    from occctl.eval.engines import cut_at_eos
    from occctl.speculative import Sampling, SpecStats, speculative_generate

    model, head, tok = loaded.model.eval(), loaded.mtp_head.eval(), loaded.tokenizer
    ids = model.generation_config.eos_token_id
    eos = [i for i in (ids if isinstance(ids, list) else [ids if ids is not None else tok.eos_token_id])
           if i is not None]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
    device = next(model.parameters()).device
    total, outputs = SpecStats(), []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=device)  # [B, P] left-padded
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=device)  # [B, P]
        seqs, stats = speculative_generate(model, head, ids, mask, max_new_tokens, eos, pad, Sampling(temperature=0))
        total.add(stats)
        outputs += [cut_at_eos(row, eos)[0] for row in seqs[:, width:].tolist()]
    return outputs, {"occctl_spec_accept_rate": total.accept_rate,
                     "occctl_spec_mean_accept_len": total.mean_accept_len, "occctl_spec_drafts": float(total.drafts)}


def engine_greedy_drafting(engine: Any, prompts: list[list[int]], max_new_tokens: int,
                           occctl_outputs: list[list[int]]) -> dict[str, float]:
    """An engine built with ``speculative=True`` (vllm), greedy: its acceptance from its own counters, and the
    share of prompts on which its greedy output equals occctl's decoder's (1.0 when both verify exactly)."""
    from occctl.eval.suites import Sampling

    outs = engine.generate(prompts, Sampling(k=1, temperature=0.0, top_p=1.0), max_new_tokens, seed=0)
    totals = {key: sum(c.share.get(key, 0.0) for c in outs) for key in ("drafts", "accepted", "tokens", "forwards")}
    same = sum(c.token_ids == o for c, o in zip(outs, occctl_outputs)) / len(prompts) if prompts else float("nan")
    return {"spec_accept_rate": totals["accepted"] / totals["drafts"] if totals["drafts"] else float("nan"),
            "spec_mean_accept_len": totals["tokens"] / totals["forwards"] if totals["forwards"] else float("nan"),
            "spec_drafts": totals["drafts"], "spec_greedy_agreement": same}
