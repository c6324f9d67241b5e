"""A DeepSeek-V3-style depth-1 MTP head for any HF decoder-only causal LM (duck-typed, torch only).

At sequence position i the head combines the trunk's last hidden state h_i with the embedding of the
next token x_{i+1}:

    z_i = final_norm(block(eh_proj([enorm(emb(x_{i+1})) ; hnorm(h_i)])))        # predicts x_{i+2}
    logits_i = lm_head(z_i)                                                    # the main model's lm_head

``block`` is one decoder layer of the host architecture (same class as the trunk's layers), run causally
over the whole sequence with the host's rotary embeddings, as Megatron's MultiTokenPredictionLayer does.

The head is the same for every host family; ``HeadLayout`` says the two things that change its arithmetic (the
RMSNorm variant, and whether the embedding at a sequence's first position is zeroed, as vLLM runs the MiMo and
DeepSeek-V3 / GLM-4.5 MTP layers). Key names, the native concat order and config keys of each family live in
``occctl.mtp_layouts``, which converts native checkpoints to and from this head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class HeadLayout:
    """What differs between families inside the head's arithmetic (the default is DeepSeek-V3's / MiMo's)."""

    zero_centred_norms: bool = False  # RMSNorm weights w applied as (1 + w), initialised to 0 (Qwen3-Next)
    # emb(x_1) zeroed at the slot of the sequence's first token (h_0), as vLLM runs MiMo / DeepSeek-V3 MTP
    # layers; every later slot attends to that one, so a head trained otherwise drafts worse there
    zero_first_position: bool = False


class ZeroCentredRMSNorm(nn.Module):
    """y = x / rms(x) * (1 + w), computed in float32 (Qwen3-Next's RMSNorm; vLLM calls it GemmaRMSNorm)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., H] -> [..., H]
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return (normed * (1.0 + self.weight.float())).type_as(x)


class MtpHead(nn.Module):
    def __init__(self, hidden_size: int, block: nn.Module, rms_norm_eps: float = 1e-6,
                 layout: HeadLayout = HeadLayout()) -> None:
        super().__init__()
        norm = ZeroCentredRMSNorm if layout.zero_centred_norms else nn.RMSNorm
        self.enorm = norm(hidden_size, eps=rms_norm_eps)
        self.hnorm = norm(hidden_size, eps=rms_norm_eps)
        self.eh_proj = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.block = block
        self.final_norm = norm(hidden_size, eps=rms_norm_eps)
        self.zero_first_position = layout.zero_first_position  # a plain attribute: the spec may set it

    @classmethod
    def for_model(cls, model: nn.Module, layout: HeadLayout = HeadLayout(),
                  block_index: int | None = None) -> "MtpHead":
        """A head shaped for ``model``: its block is a copy of the trunk's decoder layer ``block_index``
        (default: the last one; hybrid hosts pass a full-attention layer)."""
        cfg = model.config
        index = cfg.num_hidden_layers - 1 if block_index is None else block_index
        template = model.base_model.layers[index]
        block = type(template)(cfg, layer_idx=index)  # an existing index: never cached
        block.load_state_dict(template.state_dict())
        head = cls(cfg.hidden_size, block, getattr(cfg, "rms_norm_eps", 1e-6), layout)
        nn.init.normal_(head.eh_proj.weight, std=getattr(cfg, "initializer_range", 0.02))
        return head.to(dtype=next(model.parameters()).dtype)

    def forward(
        self,
        hidden: torch.Tensor,  # [B, S, H] trunk states h_i
        next_embeds: torch.Tensor,  # [B, S, H] emb(x_{i+1})
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor,  # [B, 1, S, S] additive float mask
    ) -> torch.Tensor:  # [B, S, H]
        x = self.eh_proj(torch.cat([self.enorm(next_embeds), self.hnorm(hidden)], dim=-1))
        out = self.block(x, attention_mask=attention_mask, position_embeddings=position_embeddings)
        x = out[0] if isinstance(out, tuple) else out
        return self.final_norm(x)


def causal_padding_mask(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, S] 0/1 validity -> [B, 1, S, S] additive mask: causal, padded keys hidden, diagonal always open."""
    s = valid.size(1)
    causal = torch.ones(s, s, dtype=torch.bool, device=valid.device).tril()  # [S, S]
    allowed = causal & valid.bool()[:, None, :]  # [B, S, S]
    allowed = allowed | torch.eye(s, dtype=torch.bool, device=valid.device)  # padded rows stay finite
    mask = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def mtp_logits(
    model: nn.Module,
    head: MtpHead,
    hidden: torch.Tensor,  # [B, T, H] last hidden state of the trunk's forward
    input_ids: torch.Tensor,  # [B, T]
    attention_mask: torch.Tensor,  # [B, T]
    positions: slice,
    position_ids: torch.Tensor | None = None,  # [B or 1, T]; None = 0..T-1 as the HF forward uses
    isolated: bool = False,
) -> torch.Tensor:  # [B, len(positions), V]
    """MTP logits for the MTP positions ``positions`` (position i predicts token i+2).

    ``isolated=True`` detaches the trunk states, the token embeddings and the lm_head weight, so the
    resulting loss sends no gradient into any parameter of ``model`` (the ``detach`` regime).
    To score response tokens t = P..P+C-1 of a sequence with prompt length P, use
    ``positions=slice(P - 2, P + C - 2)``.
    """
    t = input_ids.size(1)
    embeds = model.get_input_embeddings()(input_ids[:, 1:])  # [B, T-1, H]
    if head.zero_first_position:  # the slot of each row's first real token (left padding before it)
        first = (attention_mask[:, : t - 1].cumsum(-1) == 1) & attention_mask[:, : t - 1].bool()  # [B, T-1]
        embeds = embeds.masked_fill(first[..., None], 0.0)
    h = hidden[:, : t - 1]
    if isolated:
        h, embeds = h.detach(), embeds.detach()
    if position_ids is None:
        position_ids = torch.arange(t, device=input_ids.device).unsqueeze(0)
    pos = position_ids[:, : t - 1]
    rope = model.base_model.rotary_emb(h, pos)
    valid = attention_mask[:, : t - 1] * attention_mask[:, 1:]  # both h_i and x_{i+1} are real tokens
    z = head(h, embeds, rope, causal_padding_mask(valid, h.dtype))[:, positions]
    lm_head = model.get_output_embeddings()
    weight = lm_head.weight.detach() if isolated else lm_head.weight
    bias = getattr(lm_head, "bias", None)
    if bias is not None and isolated:
        bias = bias.detach()
    return F.linear(z, weight, bias)


def draft_acceptance(
    logits: torch.Tensor,  # [B, C, V] MTP logits aligned to the response tokens
    tokens: torch.Tensor,  # [B, C] the response tokens
    mask: torch.Tensor,  # [B, C]
) -> float:
    """Greedy acceptance: the share of response tokens the MTP head's argmax would have drafted."""
    hits = (logits.argmax(-1) == tokens).to(mask.dtype) * mask
    return float(hits.sum() / mask.sum().clamp(min=1))
