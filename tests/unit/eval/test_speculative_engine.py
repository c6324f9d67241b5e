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
    with pytest.raises(SpecError, match="hf-engine option"):
        make_engine("sglang", str(checkpoint), speculative=True)
