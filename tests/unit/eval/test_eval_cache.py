"""Cache rows (torn lines, keys), metrics (avg@k, pass@k, unweighted suite mean), prompt fitting, eos cutting."""

import json

from occctl.eval import cache as evcache
from occctl.eval.engines import cut_at_eos
from occctl.eval.prompts import fit_prompt, render_prompt
from occctl.eval.runner import plan_lengths, score, suite_label, suite_mean

KEY = {"model": "abc", "suite": "math6", "prompt": {"mode": "plain"},
       "sampling": {"temperature": 1.0, "top_p": 0.7, "max_new_tokens": 8192, "seed": 0}}


def test_a_torn_last_line_is_dropped_and_appending_continues(tmp_path):
    path = tmp_path / "g.jsonl"
    with evcache.RowWriter(path) as w:
        w.write([{"id": "a", "sample": 0, "text": "x"}, {"id": "a", "sample": 1, "text": "y"}])
    with path.open("a") as f:
        f.write('{"id": "a", "sample": 2, "te')  # killed mid-write
    assert set(evcache.read_rows(path)) == {("a", 0), ("a", 1)}
    with evcache.RowWriter(path) as w:
        w.write([{"id": "b", "sample": 0, "text": "z"}])
    rows = evcache.read_rows(path)
    assert set(rows) == {("a", 0), ("a", 1), ("b", 0)} and rows[("b", 0)]["text"] == "z"
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_cache_dir_depends_on_sampling_and_model_but_not_on_k(tmp_path):
    a = evcache.cache_dir_for(tmp_path, KEY)
    assert a == evcache.cache_dir_for(tmp_path, json.loads(json.dumps(KEY)))
    assert a.name.startswith("t1_p0.7_n8192_s0-")
    other_seed = {**KEY, "sampling": {**KEY["sampling"], "seed": 1}}
    other_model = {**KEY, "model": "abd"}
    assert len({a, evcache.cache_dir_for(tmp_path, other_seed), evcache.cache_dir_for(tmp_path, other_model)}) == 3


def test_fingerprint_follows_checkpoint_contents(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 100)
    before = evcache.fingerprint(str(tmp_path))
    assert before == evcache.fingerprint(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"\1" * 100)
    assert evcache.fingerprint(str(tmp_path)) != before
    assert evcache.fingerprint("org/model") == "hub:org/model"


def test_scores():
    # 2 problems x k=4: 3 of 8 samples correct; one problem ever solved
    assert score([[True, False, True, True], [False, False, False, False]]) == (3 / 8, 1 / 2)
    assert score([[False], [False]]) == (0.0, 0.0)
    # the suite mean weights benchmarks equally, whatever their size
    assert suite_mean([1.0, 0.0, 0.5]) == 0.5
    assert suite_label("math6", None) == "math6" and suite_label("math6", 3) == "math6_limit3"


def test_lengths_and_prompt_fitting():
    assert plan_lengths(None, 8192) == (8192, None)
    assert plan_lengths(131072, 8192) == (8192, 131072 - 8192)
    assert plan_lengths(64, 8192) == (32, 32)
    ids, cut = fit_prompt([1, 10, 11, 12, 13, 14], 4, bos_id=1)
    assert (ids, cut) == ([1, 12, 13, 14], True)
    assert fit_prompt([10, 11, 12], 2, bos_id=1) == ([11, 12], True)
    assert fit_prompt([1, 10], 4, bos_id=1) == ([1, 10], False)


def test_cut_at_eos():
    assert cut_at_eos([5, 6, 2, 0, 0], eos=[2]) == ([5, 6, 2], "stop")
    assert cut_at_eos([5, 6, 2, 9, 2], eos=[2, 9]) == ([5, 6, 2], "stop")
    assert cut_at_eos([5, 0, 7], eos=[2]) == ([5, 0, 7], "length")  # no eos: ran to the limit, no padding


class _ChatTok:
    chat_template = "x"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt and len(messages) == 1
        return f"<user>{messages[0]['content']}</user><assistant>"


def test_deepscaler_prompt():
    text = render_prompt(_ChatTok(), "What is 1+1?", "chat")
    assert text == ("<user>What is 1+1? Let's think step by step and output the final answer within \\boxed{}."
                    "</user><assistant>")
    assert render_prompt(None, "Q", "plain").startswith("Q Let's think step by step")
