"""Self-speculative decoding with the MTP head: greedy identity, unbiasedness, acceptance counting."""

import pytest
import torch
from scipy import stats

import occctl.speculative as speculative
from occctl.models import load_model
from occctl.occ.mtp_head import mtp_logits
from occctl.spec import ModelSpec, TaskSpec
from occctl.speculative import Sampling, SpecStats, speculative_generate, verify_draft
from occctl.tasks import get_task


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset with large random weights: varied, peaked next-token distributions (the default init
    only ever repeats one token) and a head that drafts something else than the model."""
    loaded = load_model(ModelSpec(), 0)
    torch.manual_seed(1)
    with torch.no_grad():
        for module in (loaded.model, loaded.mtp_head):
            for p in module.parameters():
                if p.dim() > 1:
                    p.normal_(0, 0.3)
    loaded.model.eval(), loaded.mtp_head.eval()
    return loaded


def _batch(tok, prompts):
    enc = tok(prompts, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask  # [B, P], left-padded


def _task_prompts(name, **kw):
    spec = TaskSpec(name=name, **kw)
    return [p.prompt for p in get_task(spec).heldout_problems(spec)[:24]]


@pytest.mark.parametrize("task", [{"name": "arith"}, {"name": "chain", "digits": 1, "operands": 10}])
def test_greedy_is_token_identical_to_generate(tiny, task):
    tok = tiny.tokenizer
    prompts = _task_prompts(**task)
    prompts = [p[: 3 + i % 7] for i, p in enumerate(prompts)] + prompts  # ragged lengths: left padding
    ids, mask = _batch(tok, prompts)
    plain = tiny.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=28,
                                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    spec, counts = speculative_generate(tiny.model, tiny.mtp_head, ids, mask, 28, [tok.eos_token_id],
                                        tok.pad_token_id, Sampling(temperature=0))
    assert torch.equal(spec, plain)
    ended = (plain[:, ids.size(1):] == tok.eos_token_id).any(-1)
    assert ended.any() and not ended.all(), "both an eos and the token limit must be exercised"
    assert 0 < counts.accepted < counts.drafts, "both the accept and the reject path must be exercised"


@pytest.fixture(params=[False, True], ids=["plain", "zero_first_position"])
def zero_first(tiny, request):
    tiny.mtp_head.zero_first_position = request.param
    yield request.param
    tiny.mtp_head.zero_first_position = False


def test_acceptance_counting_matches_the_head_on_the_finished_sequence(tiny, zero_first):
    """Greedy: the draft of each round is the argmax of ``mtp_logits`` over the final sequence at the last
    accepted token; replaying the rounds from those argmaxes must give the same counts (cache + bookkeeping),
    with the embedding at position 0 zeroed or not (``mtp.zero_first_position``) the same way in both."""
    tok = tiny.tokenizer
    ids, mask = _batch(tok, _task_prompts("chain", digits=1, operands=10)[:8])
    seqs, counts = speculative_generate(tiny.model, tiny.mtp_head, ids, mask, 20, [], tok.pad_token_id,
                                        Sampling(temperature=0))
    p = ids.size(1)
    full_mask = torch.ones_like(seqs)
    full_mask[:, :p] = mask
    with torch.no_grad():
        pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = tiny.model.base_model(input_ids=seqs, attention_mask=full_mask, position_ids=pos).last_hidden_state
        drafts = mtp_logits(tiny.model, tiny.mtp_head, hidden, seqs, full_mask, slice(0, seqs.size(1) - 2),
                            pos).argmax(-1)  # [B, T-2]: drafts[i] predicts token i+2
    expected = SpecStats()
    for row in range(seqs.size(0)):
        n = 1  # tokens emitted; the prompt's forward emitted the first
        expected.forwards += 1
        while n < 20:
            last = p + n - 1  # index of the pending token; the draft is for index last + 1
            hit = bool(drafts[row, last - 1] == seqs[row, last + 1])
            expected.drafts += 1
            expected.forwards += 1
            expected.accepted += hit
            n += 2 if hit and n + 1 < 20 else 1
        expected.tokens += n
    assert (counts.drafts, counts.accepted, counts.tokens, counts.forwards) == \
        (expected.drafts, expected.accepted, expected.tokens, expected.forwards)
    assert counts.accepted > 0


def test_verify_draft_on_a_hand_built_case():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    q = torch.tensor([[0.5, 0.5, 0.0], [0.6, 0.4, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]])
    draft = torch.tensor([1, 0, 1, 0])
    u = torch.tensor([0.99, 0.34, 0.0, 0.99])
    accepted, kept = verify_draft(p, q, draft, u)
    # row 0: p = q, always accepted; row 1: ratio 0.2 / 0.6 = 1/3 > 0.34? no -> rejected, residual [0, 0.4, 0]
    # row 2: p(d) = 0, rejected even at u = 0, residual = [0, 0, 1]; row 3: p(d) / q(d) = 2 >= 1, accepted
    assert accepted.tolist() == [True, False, False, True]
    assert kept.tolist() == [1, 1, 2, 0]
    summary = SpecStats(drafts=4, accepted=3, tokens=9, forwards=6)
    assert summary.accept_rate == 0.75 and summary.mean_accept_len == 1.5


def _exact_joint(model, ids, mask, sampling):
    """P(x1, x2) and P(x3) of plain sampling, from the model's next-token distributions (eos not special)."""
    v = model.config.vocab_size

    def next_probs(prefix):  # [N, T] (one prompt, repeated) -> [N, V]
        m = torch.cat([mask.expand(prefix.size(0), -1), torch.ones_like(prefix[:, ids.size(1):])], dim=1)
        pos = (m.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            return sampling.probs(model(input_ids=prefix, attention_mask=m, position_ids=pos).logits[:, -1])

    p1 = next_probs(ids)[0]  # [V]
    tok1 = torch.arange(v)[:, None]
    p2 = next_probs(torch.cat([ids.expand(v, -1), tok1], dim=1))  # [V, V]  p(x2 | x1)
    pairs = torch.cartesian_prod(torch.arange(v), torch.arange(v))  # [V*V, 2]
    p3 = next_probs(torch.cat([ids.expand(v * v, -1), pairs], dim=1))  # [V*V, V]
    joint12 = p1[:, None] * p2  # [V, V]
    return joint12, (joint12.reshape(-1, 1) * p3).sum(0)  # [V, V], [V]


def _chisquare(observed, expected):
    """Pearson's chi-square, cells with an expected count below 5 pooled into one; a sample in a cell of
    probability 0 (cut by top-p) fails outright."""
    impossible = expected < 1e-9
    if observed[impossible].sum() > 0:
        return 0.0
    observed, expected = observed[~impossible], expected[~impossible]
    small = expected < 5
    obs, exp = observed[~small], expected[~small]
    if small.any():
        obs, exp = torch.cat([obs, observed[small].sum()[None]]), torch.cat([exp, expected[small].sum()[None]])
    return stats.chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue


def _sample_pvalues(tiny, sampling, n=12000):
    tok, v = tiny.tokenizer, tiny.model.config.vocab_size
    ids, mask = _batch(tok, ["1+2+3="])
    torch.manual_seed(0)
    seqs, _ = speculative_generate(tiny.model, tiny.mtp_head, ids.expand(n, -1), mask.expand(n, -1), 3, [],
                                   tok.pad_token_id, sampling)
    x = seqs[:, ids.size(1):]  # [n, 3]
    joint12, marg3 = _exact_joint(tiny.model, ids, mask, sampling)
    obs12 = torch.bincount(x[:, 0] * v + x[:, 1], minlength=v * v).double()
    obs3 = torch.bincount(x[:, 2], minlength=v).double()
    return _chisquare(obs12, joint12.reshape(-1).double() * n), _chisquare(obs3, marg3.double() * n)


# Bound: a correct sampler fails each chi-square test with probability 1e-3 (the seed is fixed, so the test is
# deterministic); 12,000 samples detect the bias of resampling from p instead of the residual (below).
ALPHA = 1e-3


@pytest.mark.parametrize("sampling", [Sampling(temperature=1.0), Sampling(temperature=0.7, top_p=0.8)],
                         ids=["t1", "t0.7-top_p0.8"])
def test_samples_follow_the_plain_sampling_distribution(tiny, sampling):
    p12, p3 = _sample_pvalues(tiny, sampling)
    assert p12 > ALPHA and p3 > ALPHA, (p12, p3)


def test_the_unbiasedness_test_detects_a_wrong_residual(tiny, monkeypatch):
    def biased(p, q, draft, uniform):  # resample from p instead of max(0, p - q): over-weights the draft
        p_d = p.gather(-1, draft[:, None]).squeeze(-1)
        q_d = q.gather(-1, draft[:, None]).squeeze(-1)
        accepted = uniform * q_d < p_d
        return accepted, torch.where(accepted, draft, speculative.draw(p))

    monkeypatch.setattr(speculative, "verify_draft", biased)
    p12, _ = _sample_pvalues(tiny, Sampling(temperature=1.0))
    assert p12 < 1e-6
