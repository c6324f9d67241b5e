"""Self-speculative decoding with the depth-1 MTP head as the drafter, for any HF causal LM + ``MtpHead``.

One round per main-model forward: the head drafts ``d`` for the token after the pending token ``y``; the main
model reads ``[y, d]`` in one forward with its KV cache, which gives p(. | .., y) to verify ``d`` and
p(. | .., y, d) for the token after it. ``d`` is accepted with probability min(1, p(d) / q(d)); on a rejection the
token is resampled from the normalised residual max(0, p - q) (Leviathan et al. 2023, Chen et al. 2023), so every
token has exactly the distribution of plain sampling, and under greedy decoding (one-hot p and q) the output is
token for token that of greedy ``generate``. An accepted round emits two tokens (``d`` and a sample from
p(. | .., y, d)), a rejected one emits one.

Batched without reshuffling: every round appends two cache slots to every row; a rejected draft's slot (and the
slots of finished rows) is switched off in the attention mask and the positions skip it, so rows advance at their
own pace on one shared cache. The head keeps its own cache, slot for slot beside the main model's: at slot i it
reads the trunk state h_i and the embedding of token i+1 (as ``mtp_logits`` does over a whole sequence).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from occctl.occ.mtp_head import MtpHead


@dataclass
class SpecStats:
    """Counts over live rows: a finished row proposes nothing and costs nothing."""

    drafts: int = 0  # draft tokens proposed (one per verifying forward of a live row)
    accepted: int = 0  # drafts accepted
    tokens: int = 0  # tokens generated (kept in the output)
    forwards: int = 0  # main-model forwards per row (the prompt's forward included)
    seconds: float = 0.0  # wall time of the generation

    @property
    def accept_rate(self) -> float:
        return self.accepted / self.drafts if self.drafts else float("nan")

    @property
    def mean_accept_len(self) -> float:
        """Tokens per main-model forward (plain decoding: 1.0)."""
        return self.tokens / self.forwards if self.forwards else float("nan")

    def add(self, other: "SpecStats") -> None:
        self.drafts += other.drafts
        self.accepted += other.accepted
        self.tokens += other.tokens
        self.forwards += other.forwards
        self.seconds += other.seconds

    def metrics(self) -> dict[str, float]:
        return {"spec/accept_rate": self.accept_rate, "spec/mean_accept_len": self.mean_accept_len}


@dataclass(frozen=True)
class Sampling:
    """What plain ``generate`` samples from: temperature 0 = greedy; top_k 0 and top_p 1 = off."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:  # [..., V] -> [..., V] float32
        """The distribution a token is drawn from (one-hot at the argmax when greedy), warped as ``generate``
        warps it: temperature, then top-k, then top-p (transformers' own warpers)."""
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        shape, flat = logits.shape, logits.float().reshape(-1, logits.size(-1))  # [N, V]
        if self.temperature == 0:
            return F.one_hot(flat.argmax(-1), flat.size(-1)).float().reshape(shape)
        if not self.top_k and self.top_p >= 1.0:  # temperature only: what TemperatureLogitsWarper computes
            return torch.softmax(flat / self.temperature, dim=-1).reshape(shape)
        ids = flat.new_zeros((flat.size(0), 1), dtype=torch.long)  # the warpers below ignore input_ids
        flat = TemperatureLogitsWarper(self.temperature)(ids, flat)
        if self.top_k:
            flat = TopKLogitsWarper(self.top_k)(ids, flat)
        if self.top_p < 1.0:
            flat = TopPLogitsWarper(self.top_p)(ids, flat)
        return torch.softmax(flat, dim=-1).reshape(shape)


def sampling_from(generation_config) -> Sampling:
    """The ``Sampling`` of a transformers ``GenerationConfig``; a logits processor this module does not apply
    (repetition penalty, min-p, ...) is refused rather than silently dropped."""
    from occctl.errors import SpecError

    g = generation_config
    unsupported = {"repetition_penalty": 1.0, "min_p": None, "typical_p": 1.0, "no_repeat_ngram_size": 0,
                   "epsilon_cutoff": 0.0, "eta_cutoff": 0.0}
    used = [k for k, neutral in unsupported.items() if getattr(g, k, neutral) not in (neutral, None, 0)]
    if used:
        raise SpecError(f"speculative decoding applies temperature, top-k and top-p only; the generation config "
                        f"also sets {', '.join(used)}", hint="turn speculation off, or drop those settings")
    if not g.do_sample:
        return Sampling(temperature=0)
    return Sampling(temperature=g.temperature or 1.0, top_p=g.top_p if g.top_p is not None else 1.0,
                    top_k=g.top_k or 0)


def draw(probs: torch.Tensor) -> torch.Tensor:  # [B, V] -> [B]
    return torch.multinomial(probs, 1).squeeze(-1)


def verify_draft(
    p: torch.Tensor,  # [B, V] the main model's distribution for the drafted slot
    q: torch.Tensor,  # [B, V] the head's distribution the draft was drawn from
    draft: torch.Tensor,  # [B]
    uniform: torch.Tensor,  # [B] U[0, 1)
) -> tuple[torch.Tensor, torch.Tensor]:  # accepted [B] bool, the token kept at that slot [B]
    """The speculative-sampling rule: accept with probability min(1, p(d) / q(d)), else a token from the
    normalised residual max(0, p - q); the kept token is then distributed exactly as p."""
    p_d = p.gather(-1, draft[:, None]).squeeze(-1)  # [B]
    q_d = q.gather(-1, draft[:, None]).squeeze(-1)  # [B]
    accepted = uniform * q_d < p_d
    residual = (p - q).clamp(min=0)  # [B, V]
    residual = torch.where(residual.sum(-1, keepdim=True) > 0, residual, p)  # p == q: never rejected anyway
    kept = torch.where(accepted, draft, draw(residual / residual.sum(-1, keepdim=True)))
    return accepted, kept


class _HeadCache:
    """The head's one-layer KV cache (the attention calls ``update`` with its own layer index)."""

    def __init__(self) -> None:
        from transformers.cache_utils import DynamicLayer

        self.layer = DynamicLayer()

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        return self.layer.update(key, value)


def _step_mask(key_valid: torch.Tensor, queries: int, dtype: torch.dtype) -> torch.Tensor:
    """[B, K] validity of the cached slots -> [B, 1, Q, K] additive mask for the last Q slots: causal, invalid
    keys hidden, each query's own slot always open (as ``causal_padding_mask``)."""
    k = key_valid.size(1)
    slots = torch.arange(k, device=key_valid.device)  # [K]
    query_slots = slots[k - queries:, None]  # [Q, 1]
    allowed = (slots[None, :] <= query_slots) & key_valid.bool()[:, None, :]  # [B, Q, K]
    allowed = allowed | (slots[None, :] == query_slots)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=key_valid.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def _head_states(model: nn.Module, head: MtpHead, hidden: torch.Tensor, next_ids: torch.Tensor,
                 positions: torch.Tensor, key_valid: torch.Tensor, cache: _HeadCache) -> torch.Tensor:
    """The head over new slots with its cache (``MtpHead.forward`` step by step): hidden [B, Q, H], next_ids
    [B, Q], positions [B, Q], key_valid [B, K] -> [B, Q, H]."""
    embeds = model.get_input_embeddings()(next_ids)  # [B, Q, H]
    if head.zero_first_position:  # as mtp_logits: position 0 is each row's first real token (pads are masked)
        embeds = embeds.masked_fill((positions == 0)[..., None], 0.0)
    rope = model.base_model.rotary_emb(hidden, positions)
    x = head.eh_proj(torch.cat([head.enorm(embeds), head.hnorm(hidden)], dim=-1))
    out = head.block(x, attention_mask=_step_mask(key_valid, next_ids.size(1), hidden.dtype),
                     position_embeddings=rope, past_key_values=cache, use_cache=True)
    return head.final_norm(out[0] if isinstance(out, tuple) else out)


@torch.no_grad()
def speculative_generate(
    model: nn.Module,
    head: MtpHead,
    input_ids: torch.Tensor,  # [B, P] left-padded prompts
    attention_mask: torch.Tensor,  # [B, P]
    max_new_tokens: int,
    eos_token_ids: list[int],
    pad_token_id: int,
    sampling: Sampling = Sampling(),
) -> tuple[torch.Tensor, SpecStats]:  # sequences [B, P + C] (pad after each row's eos), stats
    """Generate like ``model.generate`` (same distribution; greedy: the same tokens), drafting with ``head``."""
    start = time.perf_counter()
    b, device = input_ids.size(0), input_ids.device
    lm_head, base = model.get_output_embeddings(), model.base_model
    eos = torch.tensor(eos_token_ids, device=device, dtype=torch.long)
    stats = SpecStats()

    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, P]
    out = base(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=True)
    cache, hidden = out.past_key_values, out.last_hidden_state  # hidden [B, P, H]
    y = draw(sampling.probs(lm_head(hidden[:, -1])))  # [B] the pending token: emitted, not yet in the cache
    tokens = torch.full((b, max_new_tokens + 1), pad_token_id, dtype=torch.long, device=device)  # +1: a dump slot
    tokens[:, 0] = y
    emitted = torch.ones(b, dtype=torch.long, device=device)  # [B]
    live = ~torch.isin(y, eos) & (emitted < max_new_tokens)  # [B]
    stats.forwards += b
    stats.tokens += b

    valid = attention_mask.bool()  # [B, K] which cache slots are real tokens (K grows by 2 per round)
    head_cache = _HeadCache()
    next_ids = torch.cat([input_ids[:, 1:], y[:, None]], dim=1)  # [B, P]
    z = _head_states(model, head, hidden, next_ids, positions, valid, head_cache)[:, -1]  # [B, H]
    last_pos = positions[:, -1]  # [B] position of the last real token in the cache
    dump = torch.full_like(emitted, max_new_tokens)

    while live.any():
        q = sampling.probs(lm_head(z))  # [B, V]
        draft = draw(q)  # [B]
        step_ids = torch.stack([y, draft], dim=1)  # [B, 2]
        step_pos = last_pos[:, None] + torch.arange(1, 3, device=device)  # [B, 2]
        valid = torch.cat([valid, live[:, None].expand(b, 2)], dim=1)
        out = base(input_ids=step_ids, attention_mask=valid.long(), position_ids=step_pos, past_key_values=cache,
                   use_cache=True)
        cache, hidden = out.past_key_values, out.last_hidden_state  # hidden [B, 2, H]
        p = sampling.probs(lm_head(hidden))  # [B, 2, V]
        accepted, kept = verify_draft(p[:, 0], q, draft, torch.rand(b, device=device))
        bonus = draw(p[:, 1])  # [B] the token after an accepted draft
        accepted = accepted & live
        valid[:, -1] = accepted  # a rejected draft's slot is switched off for every later query

        tokens.scatter_(1, torch.where(live, emitted, dump)[:, None], kept[:, None])
        with_bonus = accepted & ~torch.isin(kept, eos) & (emitted + 1 < max_new_tokens)
        tokens.scatter_(1, torch.where(with_bonus, emitted + 1, dump)[:, None], bonus[:, None])
        stats.forwards += int(live.sum())
        stats.drafts += int(live.sum())
        stats.accepted += int(accepted.sum())
        stats.tokens += int(live.sum() + with_bonus.sum())
        emitted = emitted + live.long() + with_bonus.long()
        ended = torch.isin(kept, eos) | (with_bonus & torch.isin(bonus, eos)) | (emitted >= max_new_tokens)
        live = live & ~ended

        z2 = _head_states(model, head, hidden, torch.stack([kept, bonus], dim=1), step_pos, valid, head_cache)
        z = torch.where(accepted[:, None], z2[:, 1], z2[:, 0])  # [B, H] at the last real token's slot
        y = torch.where(accepted, bonus, kept)
        last_pos = torch.where(accepted, step_pos[:, 1], step_pos[:, 0])

    stats.seconds = time.perf_counter() - start
    return torch.cat([input_ids, tokens[:, :int(emitted.max())]], dim=1), stats
