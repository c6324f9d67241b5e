"""`occctl eval --engine hf --speculative`: the engine drafts with the checkpoint's head; greedy is unchanged."""

import pytest

from occctl.errors import SpecError
from occctl.eval.engines import HfEngine, make_engine
from occctl.eval.math_scorer import rollout_figures
from occctl.eval.suites import Sampling
from occctl.models import load_model, save_checkpoint
from occctl.spec import ModelSpec


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(path, load_model(ModelSpec(), 0))
    return path


def test_speculative_greedy_completions_equal_plain_ones(checkpoint):
    prompts = [[1, 5, 14, 6, 15], [1, 9, 9, 14, 4, 15], [1, 7, 15]]  # "<bos>1+2=", ...: ragged, left-padded
    greedy = Sampling(k=1, temperature=0.0, top_p=1.0, max_new_tokens=12, seed=0)
    plain = HfEngine(str(checkpoint)).generate(prompts, greedy, 12, seed=0)
    drafted = HfEngine(str(checkpoint), speculative=True).generate(prompts, greedy, 12, seed=0)
    assert [c.token_ids for c in drafted] == [c.token_ids for c in plain]
    assert set(plain[0].share) == {"seconds"} and {"drafts", "accepted", "forwards"} <= set(drafted[0].share)
    rows = [{"token_ids": c.token_ids, "share": c.share} for c in drafted]
    figures = rollout_figures(rows)
    assert 0 <= figures["spec_accept_rate"] <= 1 and figures["spec_mean_accept_len"] >= 1
    assert figures["tokens_per_s"] > 0 and rollout_figures([{"token_ids": [3]}]) is None


def test_speculation_needs_a_head_and_the_hf_engine(checkpoint, tmp_path):
    (tmp_path / "plain").mkdir()
    for f in checkpoint.iterdir():
        if not f.name.startswith(("mtp_head", "model-mtp")):  # occctl's older format or the native export
            (tmp_path / "plain" / f.name).write_bytes(f.read_bytes())
    with pytest.raises(SpecError, match="has none"):
        HfEngine(str(tmp_path / "plain"), speculative=True)
    with pytest.raises(SpecError, match="sglang's is not wired"):
        make_engine("sglang", str(checkpoint), speculative=True)


def test_the_side_by_side_drafting_figures_agree_for_the_same_decoder(checkpoint):
    """occctl's decoder against an engine drafting with the same head: here the hf engine (occctl's decoder again),
    so the figures must agree exactly; tests/e2e/test_vllm.py puts vLLM in the engine's place."""
    from occctl.eval.drafting import engine_greedy_drafting, occctl_greedy_drafting

    prompts = [[1, 5, 14, 6, 15], [1, 9, 9, 14, 4, 15], [1, 7, 15]]
    engine = HfEngine(str(checkpoint), speculative=True)
    outputs, own = occctl_greedy_drafting(engine.loaded, prompts, 12, batch_size=2)
    assert outputs == [c.token_ids for c in HfEngine(str(checkpoint)).generate(
        prompts, Sampling(k=1, temperature=0.0, top_p=1.0), 12, seed=0)]
    theirs = engine_greedy_drafting(engine, prompts, 12, outputs)
    assert theirs["spec_greedy_agreement"] == 1.0 and own["occctl_spec_drafts"] > 0
    assert theirs["spec_accept_rate"] == pytest.approx(own["occctl_spec_accept_rate"], abs=1e-9)
