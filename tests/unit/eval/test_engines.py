"""Engines without a GPU: the sglang server mode against a fake /generate endpoint on 127.0.0.1, and the hf
engine's sampling (only temperature + top-p, whatever the checkpoint's generation_config says)."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from occctl.eval.engines import HfEngine, SglangEngine
from occctl.eval.suites import Sampling
from occctl.models import build_tiny, save_checkpoint
from occctl.spec import TinyModelSpec


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_ckpt")
    return save_checkpoint(path, build_tiny(TinyModelSpec(), seed=0))


class _FakeSglang(BaseHTTPRequestHandler):
    requests: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeSglang.requests.append((self.path, body))
        eos = 2
        outs = [{"text": "12", "output_ids": [5, 6, eos], "meta_info": {"finish_reason": {"type": "stop"}}}
                if i % 2 == 0 else
                {"text": "777", "output_ids": [11, 11, 11], "meta_info": {"finish_reason": {"type": "length"}}}
                for i, _ in enumerate(body["input_ids"])]
        data = json.dumps(outs).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_sglang_server_mode(checkpoint):
    server = HTTPServer(("127.0.0.1", 0), _FakeSglang)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        engine = SglangEngine(str(checkpoint), url=f"http://127.0.0.1:{server.server_port}/")
        outs = engine.generate([[1, 5, 6], [1, 7]], Sampling(temperature=1.0, top_p=0.7), 3, seed=0)
    finally:
        server.shutdown()
    path, body = _FakeSglang.requests[-1]
    assert path == "/generate" and body["input_ids"] == [[1, 5, 6], [1, 7]]
    params = body["sampling_params"]
    assert params["temperature"] == 1.0 and params["top_p"] == 0.7 and params["top_k"] == -1
    assert params["max_new_tokens"] == 3 and params["repetition_penalty"] == 1.0
    assert [(o.token_ids, o.text, o.finish_reason) for o in outs] == [([5, 6, 2], "12", "stop"),
                                                                       ([11, 11, 11], "777", "length")]
    assert engine.context_length == 64


def test_hf_engine_samples_with_temperature_and_top_p_only(checkpoint):
    engine = HfEngine(str(checkpoint))
    model = engine.loaded.model
    model.generation_config.repetition_penalty = 5.0  # a checkpoint default that must not leak into sampling
    model.generation_config.top_k = 3
    seen = []
    real = model._get_logits_processor

    def spy(*args, **kwargs):
        processors = real(*args, **kwargs)
        seen.append([type(p).__name__ for p in processors])
        return processors

    model._get_logits_processor = spy
    outs = engine.generate([[1, 5, 6], [1, 7, 8, 9]], Sampling(temperature=0.6, top_p=0.7), 5, seed=0)
    assert seen == [["TemperatureLogitsWarper", "TopPLogitsWarper"]]
    assert len(outs) == 2 and all(len(o.token_ids) <= 5 for o in outs)
    assert all(o.finish_reason == ("stop" if o.token_ids[-1] == 2 else "length") for o in outs)
    again = engine.generate([[1, 5, 6], [1, 7, 8, 9]], Sampling(temperature=0.6, top_p=0.7), 5, seed=0)
    assert [o.token_ids for o in again] == [o.token_ids for o in outs]  # seeded


def test_the_vllm_engine_without_vllm_is_an_environment_error(checkpoint):
    """(Where vllm is installed, tests/e2e/test_vllm.py runs the engine itself.)"""
    import importlib.util

    from occctl.errors import EnvError
    from occctl.eval.engines import make_engine

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here: tests/e2e/test_vllm.py covers the engine")
    with pytest.raises(EnvError, match="needs the vllm package") as info:
        make_engine("vllm", str(checkpoint), speculative=True)
    assert "install_vllm_cpu.sh" in info.value.hint


def test_vllm_on_a_cpu_refuses_head_sizes_its_attention_does_not_serve(checkpoint):
    from transformers import AutoConfig

    from occctl.errors import EnvError
    from occctl.eval.engines import _check_cpu_head_size

    config = AutoConfig.from_pretrained(str(checkpoint))  # the embedded preset: hidden 64, 4 heads of 16
    with pytest.raises(EnvError, match="attention heads of 16") as info:
        _check_cpu_head_size(config, str(checkpoint))
    assert "tiny_vllm" in info.value.hint
    config.num_attention_heads = 2  # heads of 32
    _check_cpu_head_size(config, str(checkpoint))


def test_an_engine_whose_model_cannot_load_says_so_in_one_line_with_a_hint(monkeypatch):
    """The engines and the math scorer share one loader (tokenizer_and_config), so one message and hint."""
    from occctl.errors import EnvError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EnvError, match=r"^cannot load model nobody/no-such-model: [^\n]+$") as info:
        SglangEngine("nobody/no-such-model", url="http://127.0.0.1:1")
    assert info.value.hint == "pass a local HF directory, or a hub id on a machine with network access"
