"""Generation engines: ``hf`` (transformers ``generate``, batched; CPU or one GPU), ``sglang`` (GPU; the offline
engine, or a server on 127.0.0.1 via ``--engine-url``) and ``vllm`` (the offline ``vllm.LLM``; GPU, or CPU with
vllm-cpu, ``backends/vllm/``). All take token-id prompts and return token ids + text, so prompts, truncation and
caching are identical whichever engine ran. sglang and vllm are imported only when used."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import time
from dataclasses import dataclass, field
from typing import Any

from occctl.errors import EnvError, RunError, SpecError, did_you_mean
from occctl.eval.suites import Sampling

ENGINES = ("hf", "sglang", "vllm")


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]  # generated tokens, up to and including the first eos (no padding)
    text: str
    finish_reason: str  # "stop" (eos) or "length"
    # this sample's equal share of its batch's generation: "seconds", and with speculation "drafts", "accepted",
    # "tokens", "forwards" (sums over a benchmark's samples give the benchmark's figures); empty: not measured
    share: dict[str, float] = field(default_factory=dict)


def quiet_transformers() -> None:
    """No per-load progress bars or info logs from transformers in the eval's output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _eos_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    ids = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    ids = ids if ids is not None else tokenizer.eos_token_id
    return [i for i in (ids if isinstance(ids, list) else [ids]) if i is not None]


def cut_at_eos(ids: list[int], eos: list[int]) -> tuple[list[int], str]:
    """Generated ids up to and including the first eos ("stop"); a row without eos ran to the token limit, so it
    holds no padding and is kept whole ("length")."""
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i + 1], "stop"
    return ids, "length"


class HfEngine:
    """transformers ``generate`` on the occctl checkpoint (its MTP head loaded too, for draft acceptance); with
    ``speculative``, self-speculative decoding drafted by that head (``occctl.speculative``: the same
    distribution, greedy token for token)."""

    name = "hf"

    def __init__(self, model_path: str, dtype: str = "auto", batch_size: int = 16,
                 trust_remote_code: bool = False, speculative: bool = False) -> None:
        import torch

        from occctl.models import load_checkpoint

        quiet_transformers()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            dtype = "bfloat16" if self.device == "cuda" else "float32"
        self.loaded = load_checkpoint(model_path, dtype=dtype, trust_remote_code=trust_remote_code,
                                      new_head_if_missing=False)
        self.loaded.model.to(self.device).eval()
        if self.loaded.mtp_head is not None:
            self.loaded.mtp_head.to(self.device).eval()
        elif speculative:
            raise SpecError(f"--speculative drafts with the MTP head, and {model_path} has none",
                            hint="evaluate a checkpoint that carries an MTP head (occctl runs export one), or drop --speculative")
        self.speculative = speculative
        self.tokenizer = self.loaded.tokenizer
        self.batch_size = batch_size
        self.context_length = getattr(self.loaded.model.config, "max_position_embeddings", None)

    def generate(self, prompts: list[list[int]], sampling: Sampling, max_new_tokens: int,
                 seed: int) -> list[Completion]:
        import torch

        from occctl.speculative import Sampling as SpecSampling, speculative_generate

        tok, model = self.tokenizer, self.loaded.model
        eos = _eos_ids(tok, model.generation_config)
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos[0]
        out: list[Completion] = []
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start:start + self.batch_size]
            width = max(len(p) for p in batch)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch], device=self.device)  # [B, P]
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch], device=self.device)  # [B, P]
            sample = sampling.temperature > 0
            kwargs: dict[str, Any] = dict(do_sample=sample, max_new_tokens=max_new_tokens, pad_token_id=pad,
                                          eos_token_id=eos)
            if sample:  # exactly temperature + top-p: neutralise the checkpoint's generation_config extras
                kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0, min_p=None,
                              typical_p=1.0, repetition_penalty=1.0, no_repeat_ngram_size=0)
            clock = time.perf_counter()
            with torch.random.fork_rng(devices=[torch.cuda.current_device()] if self.device == "cuda" else []):
                torch.manual_seed(seed + start)
                with torch.no_grad():
                    if self.speculative:
                        seqs, counts = speculative_generate(
                            model, self.loaded.mtp_head, ids, mask, max_new_tokens, eos, pad,
                            SpecSampling(temperature=sampling.temperature, top_p=sampling.top_p))  # [B, P + C]
                    else:
                        seqs = model.generate(input_ids=ids, attention_mask=mask, **kwargs)  # [B, P + C]
                rows = seqs[:, width:].tolist()  # the copy waits for the device
            share = {"seconds": time.perf_counter() - clock}
            if self.speculative:
                share.update(drafts=counts.drafts, accepted=counts.accepted, tokens=counts.tokens,
                             forwards=counts.forwards)
            share = {key: value / len(batch) for key, value in share.items()}
            for row in rows:
                gen, reason = cut_at_eos(row, eos)
                out.append(Completion(gen, tok.decode(gen, skip_special_tokens=True), reason, share))
        return out

    def close(self) -> None:
        pass


def tokenizer_and_config(model_path: str, trust_remote_code: bool):
    """The checkpoint's tokenizer and config (an unloadable one: EnvError, one line)."""
    from transformers import AutoConfig, AutoTokenizer

    quiet_transformers()
    try:
        return (AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code),
                AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code))
    except OSError as e:
        raise EnvError(f"cannot load model {model_path}: {str(e).splitlines()[0]}",
                       hint="pass a local HF directory, or a hub id on a machine with network access") from None


class SglangEngine:
    """SGLang: the offline ``sglang.Engine`` in this process, or a running server (``--engine-url``)."""

    name = "sglang"

    def __init__(self, model_path: str, url: str | None = None, tp_size: int = 1, dtype: str = "auto",
                 trust_remote_code: bool = False) -> None:
        self.tokenizer, config = tokenizer_and_config(model_path, trust_remote_code)
        self.context_length = getattr(config, "max_position_embeddings", None)
        self.url = url.rstrip("/") if url else None
        self._engine = None
        if self.url is None:
            try:
                import sglang
            except ImportError:
                raise EnvError("the sglang engine needs the sglang package, which is not installed",
                               hint="pip install 'occctl[sglang]' on a GPU machine, or use --engine hf") from None
            self._engine = sglang.Engine(model_path=model_path, tp_size=tp_size, dtype=dtype,
                                         trust_remote_code=trust_remote_code, log_level="error")

    def _request(self, prompts: list[list[int]], params: dict[str, Any]) -> list[dict[str, Any]]:
        if self._engine is not None:
            outs = self._engine.generate(input_ids=prompts, sampling_params=params)
            return outs if isinstance(outs, list) else [outs]
        body = json.dumps({"input_ids": prompts, "sampling_params": params}).encode()
        req = urllib.request.Request(f"{self.url}/generate", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=24 * 3600) as resp:
                outs = json.loads(resp.read())
        except (urllib.error.URLError, OSError) as e:
            raise RunError(f"sglang server {self.url}: {e}", hint="start it with `python -m sglang.launch_server "
                           "--model-path <model> --host 127.0.0.1 --port 30000`") from None
        return outs if isinstance(outs, list) else [outs]

    def generate(self, prompts: list[list[int]], sampling: Sampling, max_new_tokens: int,
                 seed: int) -> list[Completion]:
        params = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": -1, "min_p": 0.0,
                  "repetition_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
                  "max_new_tokens": max_new_tokens, "skip_special_tokens": True}  # nothing from generation_config
        eos = _eos_ids(self.tokenizer)
        out = []
        for item in self._request(prompts, params):
            ids = item.get("output_ids")
            if ids is None:
                ids = self.tokenizer(item["text"], add_special_tokens=False)["input_ids"]
            reason = (item.get("meta_info", {}).get("finish_reason") or {}).get("type", "")
            gen, cut = cut_at_eos(list(ids), eos)
            out.append(Completion(gen, item["text"], reason if reason in ("stop", "length") else cut))
        return out

    def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


class VllmEngine:
    """vLLM's offline ``vllm.LLM`` in this process. With ``speculative``, vLLM's ``mtp`` method drafts one token with
    the checkpoint's MTP layer (an occctl export loads as it is: ``occctl.mtp_layouts``), and each sample's share of
    its batch's drafts and accepted drafts comes from vLLM's own spec-decode counters (forwards: the prompt's and one
    per draft, as occctl's decoder counts them). On a CPU (vllm-cpu): float32 for ``auto``, eager mode, and a KV cache
    of CPU_KV_CACHE_BYTES unless ``VLLM_CPU_KVCACHE_SPACE`` (GiB) says otherwise (vLLM's own default reserves 92 % of
    the machine's memory, and refuses to start when other processes hold more than 8 %)."""

    name = "vllm"
    CPU_KV_CACHE_BYTES = 1 << 30
    COUNTERS = {"drafts": "vllm:spec_decode_num_draft_tokens", "accepted": "vllm:spec_decode_num_accepted_tokens"}

    def __init__(self, model_path: str, tp_size: int = 1, dtype: str = "auto", trust_remote_code: bool = False,
                 speculative: bool = False) -> None:
        try:
            import vllm
        except ImportError:
            raise EnvError("the vllm engine needs the vllm package, which is not installed",
                           hint="pip install vllm on a GPU machine; on a CPU, bash backends/vllm/install_vllm_cpu.sh "
                           "<venv> and run occctl from that venv") from None
        import os

        import torch
        self.tokenizer, config = tokenizer_and_config(model_path, trust_remote_code)
        if speculative:
            from occctl.models import has_mtp_head, local_directory

            if not has_mtp_head(local_directory(model_path)):  # a hub id: the snapshot from_pretrained filled
                raise SpecError(f"--speculative drafts with the MTP head, and {model_path} has none",
                                hint="evaluate a checkpoint that carries an MTP head, or drop --speculative")
        self.context_length = getattr(config, "max_position_embeddings", None)
        on_cpu = not torch.cuda.is_available()
        if on_cpu:
            _check_cpu_head_size(config, model_path)
        self.speculative = speculative
        self._llm = vllm.LLM(
            model=model_path, tensor_parallel_size=tp_size, dtype="float32" if dtype == "auto" and on_cpu else dtype,
            trust_remote_code=trust_remote_code, enforce_eager=on_cpu,
            kv_cache_memory_bytes=self.CPU_KV_CACHE_BYTES if on_cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE")
            else None,
            generation_config="vllm",  # nothing from the checkpoint's generation_config, as the other engines
            disable_log_stats=not speculative,  # the spec-decode counters are stats
            speculative_config={"method": "mtp", "num_speculative_tokens": 1} if speculative else None)

    def _counters(self) -> dict[str, float]:
        values = {m.name: m.value for m in self._llm.get_metrics() if hasattr(m, "value")}
        return {key: values.get(name, 0) for key, name in self.COUNTERS.items()}

    def generate(self, prompts: list[list[int]], sampling: Sampling, max_new_tokens: int,
                 seed: int | None) -> list[Completion]:
        """``seed`` None: vLLM's own generator, no per-request seed (vllm-cpu 0.32.0 fails seeded sampling with
        speculative decoding once a draft is rejected: "CPU Generator does not use offset")."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        eos = _eos_ids(self.tokenizer)
        top_p = sampling.top_p if sampling.temperature else 1.0
        params = [SamplingParams(temperature=sampling.temperature, top_p=top_p, top_k=0, min_p=0.0,
                                 repetition_penalty=1.0, max_tokens=max_new_tokens, stop_token_ids=eos,
                                 seed=None if seed is None else seed + i, detokenize=False)
                  for i in range(len(prompts))]
        before = self._counters() if self.speculative else {}
        clock = time.perf_counter()
        results = self._llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        rows = [cut_at_eos(list(r.outputs[0].token_ids), eos) for r in results]
        share: dict[str, float] = {"seconds": time.perf_counter() - clock}
        if self.speculative:
            after = self._counters()
            share.update({key: after[key] - before[key] for key in self.COUNTERS})
            share["tokens"] = sum(len(gen) for gen, _ in rows)
            share["forwards"] = len(prompts) + share["drafts"]  # the prompt's, then one per draft verified
        share = {key: value / len(prompts) for key, value in share.items()}
        return [Completion(gen, self.tokenizer.decode(gen, skip_special_tokens=True), reason, share)
                for gen, reason in rows]

    def close(self) -> None:
        import gc

        del self._llm
        gc.collect()


VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vllm-cpu 0.32.0's CPU attention


def _check_cpu_head_size(config: Any, model_path: str) -> None:
    """vLLM's CPU attention serves only some head sizes; the embedded ``tiny`` preset's 16 is not one of them."""
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if head not in VLLM_CPU_HEAD_SIZES:
        raise EnvError(f"{model_path}: attention heads of {head}, which vLLM's CPU attention does not serve "
                       f"(sizes {', '.join(map(str, VLLM_CPU_HEAD_SIZES))})",
                       hint="train with --set model=tiny_vllm (heads of 32), use --engine hf, or a GPU")


def check_engine(name: str) -> str:
    if name not in ENGINES:
        hint = did_you_mean(name, ENGINES)
        raise SpecError(f"unknown engine {name!r}{hint}; valid engines: {', '.join(ENGINES)}")
    return name


def make_engine(name: str, model_path: str, *, dtype: str = "auto", batch_size: int = 16, url: str | None = None,
                tp_size: int = 1, trust_remote_code: bool = False, speculative: bool = False):
    if check_engine(name) == "hf":
        return HfEngine(model_path, dtype=dtype, batch_size=batch_size, trust_remote_code=trust_remote_code,
                        speculative=speculative)
    if name == "vllm":
        return VllmEngine(model_path, tp_size=tp_size, dtype=dtype, trust_remote_code=trust_remote_code,
                          speculative=speculative)
    if speculative:
        raise SpecError("--speculative drafts with the MTP head in the hf engine (occctl's decoder) or the vllm "
                        "engine (vLLM's mtp method); sglang's is not wired", hint="use --engine hf or vllm, or drop "
                        "--speculative")
    return SglangEngine(model_path, url=url, tp_size=tp_size, dtype=dtype, trust_remote_code=trust_remote_code)
