import pytest
import torch

from occctl.models import build_tiny
from occctl.occ.mtp_head import mtp_logits
from occctl.spec import TinyModelSpec


@pytest.fixture(scope="module")
def tiny():
    return build_tiny(TinyModelSpec(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), seed=0)


def _forward(tiny, isolated, positions=slice(2, 6)):
    model, head = tiny.model, tiny.mtp_head
    model.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    ids = torch.tensor([[1, 5, 6, 14, 7, 8, 15, 9, 10, 2]])
    attn = torch.ones_like(ids)
    h = model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state
    logits = mtp_logits(model, head, h, ids, attn, positions, isolated=isolated)
    return ids, logits


def test_isolated_mtp_loss_leaves_every_main_model_gradient_at_zero(tiny):
    ids, logits = _forward(tiny, isolated=True)
    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in tiny.model.parameters())
    assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in tiny.mtp_head.parameters())


def test_not_isolated_mtp_loss_reaches_trunk_embedding_and_lm_head(tiny):
    ids, logits = _forward(tiny, isolated=False)
    logits.logsumexp(-1).sum().backward()
    model = tiny.model
    for p in (model.get_input_embeddings().weight, model.get_output_embeddings().weight,
              model.base_model.layers[0].mlp.up_proj.weight):
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0


def test_positions_select_the_next_next_token_predictions(tiny):
    _, full = _forward(tiny, isolated=True, positions=slice(None))
    _, part = _forward(tiny, isolated=True, positions=slice(3, 7))
    assert full.shape[1] == 9  # T-1 MTP positions
    torch.testing.assert_close(part, full[:, 3:7])


def test_causal_the_future_does_not_leak(tiny):
    model, head = tiny.model, tiny.mtp_head
    a = torch.tensor([[1, 5, 6, 14, 7, 8, 15, 9, 10, 2]])
    b = a.clone()
    b[0, 8:] = torch.tensor([4, 4])
    outs = []
    for ids in (a, b):
        attn = torch.ones_like(ids)
        h = model.base_model(input_ids=ids, attention_mask=attn).last_hidden_state
        outs.append(mtp_logits(model, head, h, ids, attn, slice(0, 6)))  # uses tokens up to index 7
    torch.testing.assert_close(outs[0], outs[1])
